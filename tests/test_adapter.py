"""`build --adapter`: a PEFT LoRA made on the trained tiny model, merged as weights stream, gives
what PEFT's own `merge_and_unload` gives (simulator = engine = HF greedy, per-artifact parity),
and adapters the merge cannot reproduce are refused by name."""

from __future__ import annotations

import json
import shutil

import pytest

torch = pytest.importorskip("torch")
peft = pytest.importorskip("peft")

from converters.adapter import AdaptedCheckpoint, AdapterError  # noqa: E402
from converters.checkpoint import CheckpointReader  # noqa: E402

# PEFT's advice about tied embeddings and saving embedding layers: expected for the embedding LoRA case.
pytestmark = [pytest.mark.filterwarnings("ignore:Model with `tie_word_embeddings=True`:UserWarning"),
              pytest.mark.filterwarnings("ignore:Setting `save_embedding_layers` to `True`:UserWarning")]

TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
OPTS = dict(prefill=(16, 64), context=320, modalities=("text", "vision", "audio"))  # the demo's graphs


def _make_adapter(ckpt, out, **config):
    from transformers import Gemma3nForConditionalGeneration

    torch.manual_seed(0)
    model = Gemma3nForConditionalGeneration.from_pretrained(ckpt, dtype=torch.float32)
    # init_lora_weights=False: B random, not zero, so the adapter changes every targeted weight.
    cfg = peft.LoraConfig(**{"r": 4, "lora_alpha": 8, "target_modules": TARGETS, "init_lora_weights": False, **config})
    peft.get_peft_model(model, cfg).save_pretrained(out)
    return out


@pytest.fixture(scope="module")
def adapter(trained_ckpt, tmp_path_factory):
    return _make_adapter(trained_ckpt, tmp_path_factory.mktemp("lora") / "adapter")


@pytest.fixture(scope="module")
def adapted_artifacts(trained_ckpt, adapter, tmp_path_factory):
    from converters.build import BuildOptions, build

    out = tmp_path_factory.mktemp("adapted") / "art"
    return build(trained_ckpt, out, BuildOptions(recipe="fp32", adapter=str(adapter), **OPTS))


def test_merged_build_equals_peft_merge_and_unload(adapted_artifacts, trained_ckpt, adapter):
    from edge.parity.run import run_parity, summary_lines

    report = run_parity(adapted_artifacts, trained_ckpt, adapter=adapter, max_tokens=16)
    lines = "\n".join(summary_lines(report))
    assert report["ok"], lines
    assert report["reference_identity"]["matches"], lines
    assert report["engine"] and report["cases"], lines
    for row in report["cases"]:  # greedy tokens: HF (PEFT-merged) = simulator = engine on every prompt
        assert all(row["pairs"][p]["equal"] for p in ("hf/simulator", "hf/engine", "simulator/engine")), lines


def test_the_adapter_changes_the_model(adapted_artifacts, trained_ckpt, adapter):
    """Not vacuous: the merged reference decodes differently from the base model, and parity
    against the base (without --adapter) reports the mismatch and fails."""
    from converters.reference import Reference
    from edge.parity.run import run_parity

    from transformers import AutoTokenizer

    base, merged = Reference(trained_ckpt), Reference(trained_ckpt, adapter)
    ids = AutoTokenizer.from_pretrained(trained_ckpt)("The for statement")["input_ids"]
    assert base.greedy(ids, 8) != merged.greedy(ids, 8)
    report = run_parity(adapted_artifacts, trained_ckpt, max_tokens=4, engine=False)
    assert not report["ok"] and report["reference_identity"]["matches"] is False
    assert "--adapter" in report["reference_identity"]["detail"]


def test_manifest_records_the_adapter(adapted_artifacts, adapter):
    m = json.loads((adapted_artifacts / "manifest.json").read_text())
    assert set(m["adapter"]["files"]) == {"adapter_config.json", "adapter_model.safetensors"}
    assert m["adapter"]["r"] == 4 and m["adapter"]["modules"] > 0
    assert m["command"][m["command"].index("--adapter") + 1] == str(adapter)


def test_audio_tower_modules_are_merged(trained_ckpt, adapter):
    merged = AdaptedCheckpoint(CheckpointReader(trained_ckpt), adapter).merged_modules()
    assert any(m.startswith("model.audio_tower.") for m in merged)
    assert any(m.endswith("mlp.down_proj") for m in merged)


def test_rows_merge_only_the_rows_asked_for(trained_ckpt, adapter):
    reader = AdaptedCheckpoint(CheckpointReader(trained_ckpt), adapter)
    name = "model.language_model.layers.0.mlp.up_proj.weight"
    whole = reader.tensor(name)
    assert torch.equal(reader.rows(name, 3, 7), whole[3:7])
    assert not torch.equal(whole, CheckpointReader(trained_ckpt).tensor(name))


def test_embedding_lora_and_rslora(trained_ckpt, tmp_path):
    """An Embedding LoRA (lora_embedding_A/B) with use_rslora merges to PEFT's weights."""
    from transformers import Gemma3nForConditionalGeneration

    ad = _make_adapter(trained_ckpt, tmp_path / "emb", target_modules=["embed_tokens", "q_proj"], use_rslora=True)
    model = Gemma3nForConditionalGeneration.from_pretrained(trained_ckpt, dtype=torch.float32)
    want = peft.PeftModel.from_pretrained(model, str(ad)).merge_and_unload().state_dict()
    reader = AdaptedCheckpoint(CheckpointReader(trained_ckpt), ad)
    for name in ("model.language_model.embed_tokens.weight", "model.language_model.layers.2.self_attn.q_proj.weight"):
        assert torch.allclose(reader.tensor(name), want[name], atol=1e-6), name


def _edit_config(src, dst, **changes):
    shutil.copytree(src, dst)
    cfg = json.loads((dst / "adapter_config.json").read_text())
    cfg.update(changes)
    (dst / "adapter_config.json").write_text(json.dumps(cfg))
    return dst


@pytest.mark.parametrize("change, expect", [
    ({"use_dora": True}, "DoRA"),
    ({"peft_type": "IA3"}, "only LoRA"),
    ({"r": 8}, "rank 4 in the weights but 8"),
    ({"alora_invocation_tokens": [5]}, "aLoRA"),
])
def test_unsupported_adapters_are_refused(trained_ckpt, adapter, tmp_path, change, expect):
    bad = _edit_config(adapter, tmp_path / "bad", **change)
    with pytest.raises(AdapterError, match=expect):
        AdaptedCheckpoint(CheckpointReader(trained_ckpt), bad)


def _edit_weights(src, dst, edit):
    from safetensors.torch import load_file, save_file

    shutil.copytree(src, dst)
    tensors = load_file(dst / "adapter_model.safetensors")
    edit(tensors)
    save_file(tensors, dst / "adapter_model.safetensors")
    return dst


def test_adapter_for_another_model_names_the_module(trained_ckpt, adapter, tmp_path):
    """A module the checkpoint lacks, or a LoRA whose shape does not fit: refused, naming the module."""
    key = "base_model.model.model.language_model.layers.0.mlp.up_proj.lora_A.weight"

    def deeper(t):  # a 99-layer model's adapter
        for k in [k for k in t if ".layers.0.mlp.up_proj." in k]:
            t[k.replace(".layers.0.", ".layers.99.")] = t.pop(k)

    def wider(t):  # a wider model's adapter
        t[key] = torch.zeros(t[key].shape[0], t[key].shape[1] * 2)

    for name, edit, expect in (("deeper", deeper, r"layers\.99\.mlp\.up_proj is not in the checkpoint"),
                               ("wider", wider, r"layers\.0\.mlp\.up_proj: lora_A .* does not fit")):
        with pytest.raises(AdapterError, match=expect):
            AdaptedCheckpoint(CheckpointReader(trained_ckpt), _edit_weights(adapter, tmp_path / name, edit))


def test_missing_adapter_files(trained_ckpt, tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(AdapterError, match="no adapter_config.json"):
        AdaptedCheckpoint(CheckpointReader(trained_ckpt), tmp_path / "empty")
    with pytest.raises(AdapterError, match="not a directory"):
        AdaptedCheckpoint(CheckpointReader(trained_ckpt), tmp_path / "nowhere")
