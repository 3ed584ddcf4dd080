"""Text-only checkpoints: a Gemma3nForCausalLM (names at the top level, no towers in its config)
and a multimodal checkpoint whose towers were dropped both build a text-only bundle by default,
which parity finds equal to the PyTorch model (HF = simulator = engine); asking for a tower the
checkpoint lacks is a clear error."""

from __future__ import annotations

import json
import shutil

import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

from converters.build import BuildOptions, build  # noqa: E402
from edge.errors import UserError  # noqa: E402

OPTS = dict(recipe="fp32", prefill=(16, 64), context=320)
SIDE = ("tokenizer.model", "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json",
        "chat_template.jinja", "generation_config.json")


def _copy_side_files(src, out):
    for f in SIDE:
        if (src / f).exists():
            shutil.copy(src / f, out / f)


@pytest.fixture(scope="module")
def causal_ckpt(trained_ckpt, tmp_path_factory):
    """The trained tiny's language model saved by transformers as a Gemma3nForCausalLM."""
    full = transformers.Gemma3nForConditionalGeneration.from_pretrained(trained_ckpt, dtype=torch.float32)
    lm = transformers.Gemma3nForCausalLM(full.config.text_config)
    state = {k.replace("model.language_model.", "model."): v for k, v in full.state_dict().items()
             if k.startswith("model.language_model.") or k == "lm_head.weight"}
    lm.load_state_dict(state, strict=True)
    out = tmp_path_factory.mktemp("causal") / "ckpt"
    lm.save_pretrained(out)
    _copy_side_files(trained_ckpt, out)
    return out


@pytest.fixture(scope="module")
def towerless_ckpt(trained_ckpt, tmp_path_factory):
    """The trained tiny multimodal checkpoint with its vision and audio tensors removed."""
    from safetensors.torch import load_file, save_file

    out = tmp_path_factory.mktemp("towerless") / "ckpt"
    out.mkdir()
    tensors = load_file(trained_ckpt / "model.safetensors")
    save_file({k: v for k, v in tensors.items() if k.startswith(("model.language_model.", "lm_head"))},
              out / "model.safetensors", metadata={"format": "pt"})
    shutil.copy(trained_ckpt / "config.json", out / "config.json")
    _copy_side_files(trained_ckpt, out)
    return out


def test_causal_lm_builds_text_only_and_matches_hf(causal_ckpt, tmp_path):
    from edge.parity.run import run_parity, summary_lines

    assert json.loads((causal_ckpt / "config.json").read_text())["architectures"] == ["Gemma3nForCausalLM"]
    art = build(causal_ckpt, tmp_path / "art", BuildOptions(**OPTS))  # default modalities: what it holds
    kinds = {a["kind"] for a in json.loads((art / "manifest.json").read_text())["artifacts"].values()}
    assert kinds == {"prefill_decode", "embedder", "per_layer_embedder"}
    report = run_parity(art, causal_ckpt, max_tokens=16)
    assert report["ok"], "\n".join(summary_lines(report))
    for row in report["cases"]:
        assert all(r["equal"] for r in row["pairs"].values()), "\n".join(summary_lines(report))


def test_towerless_checkpoint_builds_text_only(towerless_ckpt, tmp_path):
    art = build(towerless_ckpt, tmp_path / "art", BuildOptions(**OPTS, bundle=False))
    m = json.loads((art / "manifest.json").read_text())
    assert {a["kind"] for a in m["artifacts"].values()} == {"prefill_decode", "embedder", "per_layer_embedder"}
    assert m["command"][m["command"].index("--modalities") + 1] == "text"


@pytest.mark.parametrize("which", ["causal", "towerless"])
def test_asking_for_a_missing_tower_is_refused(which, causal_ckpt, towerless_ckpt, tmp_path):
    ckpt = causal_ckpt if which == "causal" else towerless_ckpt
    with pytest.raises(UserError, match=r"has no vision tower.*use --modalities text"):
        build(ckpt, tmp_path / "art", BuildOptions(**OPTS, modalities=("text", "vision")))
    assert not (tmp_path / "art").exists()


def test_a_partly_dropped_tower_is_still_an_error(trained_ckpt, tmp_path):
    """Only a whole tower may be absent: half of one is a broken checkpoint, listed as missing."""
    from safetensors.torch import load_file, save_file

    from converters.checkpoint import CheckpointError

    out = tmp_path / "ckpt"
    out.mkdir()
    tensors = load_file(trained_ckpt / "model.safetensors")
    dropped = sorted(k for k in tensors if k.startswith("model.audio_tower."))[:3]
    save_file({k: v for k, v in tensors.items() if k not in dropped}, out / "model.safetensors",
              metadata={"format": "pt"})
    shutil.copy(trained_ckpt / "config.json", out / "config.json")
    _copy_side_files(trained_ckpt, out)
    with pytest.raises(CheckpointError, match=r"3 missing"):
        build(out, tmp_path / "art", BuildOptions(**OPTS, modalities=("text",)))
