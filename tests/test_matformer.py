"""MatFormer slicing: presets, validation, the streaming view, the HF export (reload + parity
against a truncated copy of the original model), and Google's effective-parameter count."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

from safetensors.torch import load_file, save_file  # noqa: E402
from torch import nn  # noqa: E402

from converters.checkpoint import INDEX_FILE, SINGLE_FILE, CheckpointReader, expected_tensors  # noqa: E402
from converters.gemma3n.config import Gemma3nConfig  # noqa: E402
from converters.gemma3n.tower_config import AudioConfig, VisionConfig  # noqa: E402
from converters.matformer import (  # noqa: E402
    PLE_PROJECTION, PLE_TABLE, SlicedCheckpoint, effective_params, param_count, plan_slice, preset, presets,
    resolve_slice,
)
from converters.matformer_export import export_sliced_hf  # noqa: E402
from converters.matformer_spec import SliceError, SliceSpec, load_spec  # noqa: E402
from converters.tiny import PRESETS  # noqa: E402
from edge.errors import UserError  # noqa: E402

SHARED_CSV = Path(__file__).resolve().parents[2] / "shared" / "data" / "matformer_slicing_configs.csv"
PACKAGED_CSV = Path(__file__).resolve().parents[1] / "converters" / "data" / "matformer_slicing_configs.csv"
PROMPT = [2, 4, 372, 929, 940, 1003, 592, 327, 947, 414, 928, 949, 363, 581, 928, 935, 1019, 5, 940, 4]  # > window 12
TINY = PRESETS["tiny-e4b"]
# The E2B analog of tiny-e4b: skip the first shared block's sliding layers, halve every FFN.
E2B_ANALOG = SliceSpec(ffn_hidden_dims=(TINY.e2b_ffn_hidden_dim,) * (15 - len(TINY.e2b_layers_skipped)),
                       layers_skipped=TINY.e2b_layers_skipped, name="tiny-E2B")
# A mix-n-match slice: one layer skipped before the shared region (renumbers the store layers
# 8, 9 to 7, 8), one inside it, widths that are full, halved and odd, on sparse and dense layers.
MIXED = SliceSpec(ffn_hidden_dims=(256, 100, 64, 200, 128, 256, 17, 256, 129, 64, 255, 32, 128),
                  layers_skipped=(2, 13), name="tiny-mixed")


# ---------------------------------------------------------------- fixtures


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """Tiny matmuls: a second intra-op thread only adds spin-waiting, which on a loaded 2-core
    machine turns a 50 ms forward into seconds."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def src_cfg(tiny_e4b_ckpt):
    return Gemma3nConfig.from_hf(tiny_e4b_ckpt)


@pytest.fixture(scope="module")
def src_model(tiny_e4b_ckpt):
    return transformers.Gemma3nForConditionalGeneration.from_pretrained(tiny_e4b_ckpt, dtype=torch.float32).eval()


@pytest.fixture(scope="module")
def e4b_cfg():
    """The real E4B shape: transformers' Gemma3nTextConfig defaults (the towers do not matter here;
    transformers.Gemma3nConfig() would spend seconds resolving the timm vision config)."""
    return Gemma3nConfig.from_hf({"model_type": "gemma3n", "text_config": transformers.Gemma3nTextConfig().to_dict(),
                                  "vision_config": VisionConfig().to_hf_dict(),
                                  "audio_config": AudioConfig().to_hf_dict()})


@pytest.fixture(scope="module")
def refs(src_model):
    """Reference models by spec name, built once per module (a deep copy of the whole model)."""
    cache = {}

    def get(spec):
        if spec.name not in cache:
            cache[spec.name] = reference(src_model, spec)
        return cache[spec.name]
    return get


@pytest.fixture(scope="module")
def loaded(exports):
    """The exported slices, reloaded in transformers once per module: name -> (model, loading info)."""
    out = {}
    for name, report in exports.items():
        model, info = transformers.Gemma3nForConditionalGeneration.from_pretrained(
            report.out_dir, dtype=torch.float32, output_loading_info=True)
        out[name] = (model.eval(), info)
    return out


@pytest.fixture(scope="module")
def exports(tiny_e4b_ckpt, tmp_path_factory):
    out = tmp_path_factory.mktemp("sliced")
    # Small shards for the E2B analog, so the index path is exercised too; one file for the other.
    return {"e2b": export_sliced_hf(tiny_e4b_ckpt, E2B_ANALOG, out / "e2b", max_shard_bytes=1 << 20),
            "mixed": export_sliced_hf(tiny_e4b_ckpt, MIXED, out / "mixed")}


def reference(model, spec: SliceSpec):
    """The original model with the skipped layers bypassed and the FFNs truncated, built from the
    in-memory HF modules (not from the slicer): each kept layer keeps the attributes it was built
    with, including its KV-sharing role (store / reuse), so shared layers still read the K/V of
    their source store layers. Truncated, not masked (the sparse layers' top-k statistics differ)."""
    ref = copy.deepcopy(model)
    lm = ref.model.language_model
    cfg = lm.config
    n, p, h = cfg.num_hidden_layers, cfg.hidden_size_per_layer_input, cfg.hidden_size
    kept = list(spec.layers_kept)
    lm.layers = nn.ModuleList([lm.layers[i] for i in kept])
    with torch.no_grad():
        for layer, d in zip(lm.layers, spec.ffn_hidden_dims):
            mlp = layer.mlp
            for lin in (mlp.gate_proj, mlp.up_proj):
                lin.weight = nn.Parameter(lin.weight[:d].clone())
                lin.out_features = d
            mlp.down_proj.weight = nn.Parameter(mlp.down_proj.weight[:, :d].clone())
            mlp.down_proj.in_features = d
        table = lm.embed_tokens_per_layer.weight  # (V, L*P) -> the kept layers' P-blocks
        lm.embed_tokens_per_layer.weight = nn.Parameter(table.reshape(table.shape[0], n, p)[:, kept].reshape(
            table.shape[0], -1).clone())
        proj = lm.per_layer_model_projection.weight  # (L*P, H)
        lm.per_layer_model_projection.weight = nn.Parameter(proj.reshape(n, p, h)[kept].reshape(-1, h).clone())
    types = list(cfg.layer_types)
    cfg.num_hidden_layers = len(kept)  # the forward loop and the PLE reshape read these two
    cfg.layer_types = [types[i] for i in kept]
    return ref.eval()


def _logits(model, ids, **kw):
    with torch.no_grad():
        return model(input_ids=torch.tensor([ids]), use_cache=False, **kw).logits[0]


# ---------------------------------------------------------------- presets


def test_packaged_table_is_googles_and_names_are_unambiguous():
    if SHARED_CSV.is_file():  # the package carries a copy; it must not drift from the shared data
        assert PACKAGED_CSV.read_bytes() == SHARED_CSV.read_bytes()
    table = presets()
    assert len(table) == 16
    assert list(table)[:3] == ["E4B", "E2B", "E1.96B"]
    assert {"E2.69B", "E2.98B-layer", "E2.98B-block", "E3.74B"} <= set(table)
    assert table["E2.98B-layer"].ffn_hidden_dims != table["E2.98B-block"].ffn_hidden_dims
    e2b = preset("e2b")  # case-insensitive
    assert e2b.name == "E2B" and e2b.layers_skipped == (20, 21, 22, 23, 24) and e2b.ffn_hidden_dims == (8192,) * 30
    assert (e2b.effective_params_b, e2b.mmlu_pt_percent) == (1.91, 50.9)
    with pytest.raises(SliceError, match=r"unknown MatFormer slice 'E2\.98B'.*E2\.98B-layer, .*E2\.98B-block"):
        preset("E2.98B")


def test_every_preset_validates_against_e4b(e4b_cfg):
    src = e4b_cfg.text
    assert src.kv_store_layers == {"sliding_attention": 18, "full_attention": 19}
    for name, spec in presets().items():
        plan = plan_slice(spec, e4b_cfg)
        t = plan.text
        assert t.num_hidden_layers == spec.num_layers and t.intermediate_size == spec.ffn_hidden_dims
        assert t.num_kv_shared_layers == 15 - sum(1 for i in spec.layers_skipped if i >= 20), name
        assert t.layer_types == tuple(src.layer_types[i] for i in plan.layers_kept)
        # transformers derives the same sharing: the store layers stay 18/19, every shared layer reuses.
        hf = t.to_hf_dict()
        hf.pop("model_type")
        modes = transformers.Gemma3nTextConfig(**hf).kv_sharing_modes
        assert [j for j, m in enumerate(modes) if m == "store"] == [18, 19], name
        assert modes.count("reuse") == t.num_kv_shared_layers
    e2b = plan_slice(preset("E2B"), e4b_cfg).text
    assert e2b.num_kv_shared_layers == 10 and e2b.activation_sparsity_pattern == (0.95,) * 10 + (0.0,) * 20
    assert e2b.layer_types == tuple("full_attention" if (i + 1) % 5 == 0 else "sliding_attention" for i in range(30))
    assert plan_slice(preset("E4B"), e4b_cfg).text == src  # the main model is the identity slice


# ---------------------------------------------------------------- effective parameters


def test_effective_params_match_googles_table(e4b_cfg):
    """Google's figure = the text model without embed_tokens and the PLE table (towers excluded),
    counting k/v on the KV-shared layers: E4B 3.98B and E2B 1.91B to the table's rounding."""
    assert round(effective_params(e4b_cfg) / 1e9, 2) == 3.98
    assert round(effective_params(plan_slice(preset("E2B"), e4b_cfg).text) / 1e9, 2) == 1.91
    assert effective_params(plan_slice(preset("E2B"), e4b_cfg).text) == 1_905_495_648  # MatFormer Lab's printout
    # Mixed widths: the table's figures sit up to 0.02B above this exact count (Google's rounding
    # or method for the intermediate sizes; E1.96B and E3.18B round exactly), never below.
    for name, spec in presets().items():
        ours = effective_params(plan_slice(spec, e4b_cfg).text) / 1e9
        assert -0.005 <= spec.effective_params_b - ours < 0.025, (name, ours)


@pytest.mark.parametrize("which", ["E2B", "tiny-mixed"])
def test_param_count_equals_transformers(which, e4b_cfg, src_cfg):
    """The config-only count against transformers' own module tree (built on the meta device)."""
    from transformers.models.gemma3n.modeling_gemma3n import Gemma3nTextModel

    text = plan_slice(preset("E2B"), e4b_cfg).text if which == "E2B" else plan_slice(MIXED, src_cfg).text
    hf = text.to_hf_dict()
    hf.pop("model_type")
    with torch.device("meta"):
        model = Gemma3nTextModel(transformers.Gemma3nTextConfig(**hf))
    c = param_count(text)
    assert c.decoder_layers + c.text_other == model.num_parameters(exclude_embeddings=True)
    assert c.embed_tokens + c.ple_table == model.num_parameters() - model.num_parameters(exclude_embeddings=True)
    assert c.effective == c.decoder_layers + c.text_other + c.shared_kv
    k = model.layers[0].self_attn  # what a KV-shared layer would carry in Google's count
    per_layer = sum(x.numel() for x in (k.k_proj.weight, k.v_proj.weight, k.k_norm.weight))
    assert c.shared_kv == per_layer * text.num_kv_shared_layers > 0


# ---------------------------------------------------------------- validation


@pytest.mark.parametrize("skipped, dims, match", [
    ((10, 11, 12), (128,) * 11, r"11 FFN widths for 12 kept layers"),
    ((10, 11, 12), (128,) * 11 + (257,), r"exceed.*layer 14 \(ffn_hidden_dims\[11\]\): 257 > 256"),
    ((8, 11, 12), (128,) * 12, r"cannot skip KV store layer\(s\) 8 \(sliding_attention\).*Keep \[8, 9\]"),
    ((9,), (128,) * 14, r"cannot skip KV store layer\(s\) 9 \(full_attention\)"),
    ((15,), (128,) * 14, r"layers_skipped \[15\] out of range.*15 layers \(0\.\.14\)"),
    ((10, 10), (128,) * 13, r"layer\(s\) \[10\] more than once"),
    ((-1,), (128,) * 14, r"negative index"),
    ((), (128,) * 14 + (0,), r"must be positive"),
    ((), [128.0] * 15, r"list of integers"),
    (tuple(range(15)), (1,), r"skips all 15 layers"),
])
def test_invalid_specs_are_refused_with_the_reason(src_cfg, skipped, dims, match):
    with pytest.raises(SliceError, match=match) as e:
        plan_slice(SliceSpec(ffn_hidden_dims=dims, layers_skipped=skipped), src_cfg)
    assert isinstance(e.value, UserError)


def test_a_preset_for_another_model_says_so(src_cfg):
    with pytest.raises(SliceError, match=r"'E2B': layers_skipped \[20, .*out of range.*for a 35-layer model"):
        plan_slice(preset("E2B"), src_cfg)
    with pytest.raises(SliceError, match=r"'E2.54B': 35 FFN widths for 15 kept layers.*for a 35-layer model"):
        plan_slice(preset("E2.54B"), src_cfg)


def test_json_specs(tmp_path, src_cfg):
    good = tmp_path / "my_slice.json"
    good.write_text(json.dumps({"ffn_hidden_dims": list(MIXED.ffn_hidden_dims), "layers_skipped": [13, 2]}))
    spec = resolve_slice(str(good))
    assert spec.name == "my_slice" and spec.layers_skipped == (2, 13) and spec.layers_kept == MIXED.layers_kept
    assert SliceSpec.from_json(spec.to_json()) == spec
    assert plan_slice(spec, src_cfg).text == plan_slice(MIXED, src_cfg).text
    cases = {"typo": ({"ffn_hidden_dim": [1]}, r"unknown field\(s\) \['ffn_hidden_dim'\]"),
             "count": ({"ffn_hidden_dims": [1, 2], "num_layers": 3}, r"num_layers is 3 but ffn_hidden_dims has 2"),
             "none": ({"layers_skipped": [1]}, r"ffn_hidden_dims is missing"),
             "list": ([1, 2], r"expected a JSON object")}
    for stem, (obj, match) in cases.items():
        (tmp_path / f"{stem}.json").write_text(json.dumps(obj))
        with pytest.raises(SliceError, match=rf"{stem}\.json: {match}"):
            load_spec(tmp_path / f"{stem}.json")
    (tmp_path / "broken.json").write_text("{")
    with pytest.raises(SliceError, match="not valid JSON"):
        resolve_slice(tmp_path / "broken.json")
    with pytest.raises(SliceError, match="cannot read"):
        resolve_slice(tmp_path / "absent.json")


# ---------------------------------------------------------------- the streaming view


@pytest.mark.parametrize("spec", [E2B_ANALOG, MIXED], ids=lambda s: s.name)
def test_view_equals_the_reference_weights(tiny_e4b_ckpt, refs, spec):
    ref = refs(spec).state_dict()
    with SlicedCheckpoint(tiny_e4b_ckpt, spec) as view:
        expected = expected_tensors(view.config)
        assert set(expected) <= set(view.names())
        for name, shape in expected.items():
            assert view.shape(name) == shape, name
            assert torch.equal(view.tensor(name), ref[name]), name
        # Row blocks that straddle the kept layers' P-blocks read the same values as the whole tensor.
        p = view.config.text.hidden_size_per_layer_input
        for name in (PLE_PROJECTION, PLE_TABLE, "model.language_model.layers.1.mlp.down_proj.weight"):
            whole = view.tensor(name)
            for a, b in ((0, 0), (3, p + 5), (p - 1, 3 * p + 1), (whole.shape[0] - 7, whole.shape[0])):
                assert torch.equal(view.rows(name, a, b), whole[a:b]), (name, a, b)
            assert torch.equal(view.view(name)[5:9], whole[5:9])
        assert view.source_name("model.language_model.layers.10.self_attn.q_proj.weight") == (
            f"model.language_model.layers.{spec.layers_kept[10]}.self_attn.q_proj.weight")
        with pytest.raises(SliceError, match="no tensor"):
            view.shape(f"model.language_model.layers.{spec.num_layers}.mlp.up_proj.weight")


# ---------------------------------------------------------------- the HF export


@pytest.mark.parametrize("which", ["e2b", "mixed"])
def test_export_reloads_and_equals_the_truncated_original(exports, loaded, refs, src_model, which):
    spec = exports[which].spec
    model, info = loaded[which]
    for key in ("missing_keys", "unexpected_keys", "mismatched_keys"):
        assert not info[key], (key, info[key])
    assert model.config.text_config.num_hidden_layers == spec.num_layers
    got, want = _logits(model, PROMPT), _logits(refs(spec), PROMPT)
    # Same fp32 weights and the same ops in the same order; 1e-5 leaves room only for BLAS
    # choosing another kernel for differently laid-out (cloned vs loaded) weights.
    assert (got - want).abs().max().item() <= 1e-5
    # The comparison can fail: the unsliced model is far away (logits span ~±20 under softcap 30).
    assert (got - _logits(src_model, PROMPT)).abs().max().item() > 0.1


def test_truncating_is_not_masking(loaded, src_model):
    """GEMMA3N.md's gotcha, shown on the E2B analog: zeroing the FFN tail of sparse layers is not
    the slice (the Gaussian top-k cutoff is computed over the full width)."""
    masked = copy.deepcopy(src_model)
    with torch.no_grad():
        for i in range(TINY.num_hidden_layers):
            mlp = masked.model.language_model.layers[i].mlp
            mlp.gate_proj.weight[TINY.e2b_ffn_hidden_dim:] = 0
            mlp.up_proj.weight[TINY.e2b_ffn_hidden_dim:] = 0
    bypass = reference(masked, SliceSpec(ffn_hidden_dims=(256,) * 12, layers_skipped=TINY.e2b_layers_skipped))
    assert (_logits(bypass, PROMPT) - _logits(loaded["e2b"][0], PROMPT)).abs().max().item() > 1e-3


def test_export_decodes_with_the_cache_like_the_reference(loaded, refs):
    """Token by token with the KV cache (the shared layers reading the store layers' cache), the
    sliced model picks what the reference recomputed from scratch picks, at every step."""
    sliced, ref = loaded["mixed"][0], refs(MIXED)
    ids, got = list(PROMPT), list(PROMPT)
    with torch.no_grad():
        out = sliced(input_ids=torch.tensor([PROMPT]), use_cache=True)
        for _ in range(6):  # past the sliding window (12) with the prompt (20)
            got.append(int(out.logits[0, -1].argmax()))
            ids.append(int(_logits(ref, ids)[-1].argmax()))
            out = sliced(input_ids=torch.tensor([[got[-1]]]), past_key_values=out.past_key_values, use_cache=True)
    assert got == ids
    assert len(set(got[len(PROMPT):])) > 1  # not a degenerate repeat of one token


def test_export_files(exports, tiny_e4b_ckpt):
    e2b, mixed = exports["e2b"], exports["mixed"]
    index = json.loads((e2b.out_dir / INDEX_FILE).read_text())
    shards = sorted(set(index["weight_map"].values()))
    assert len(shards) > 1 and not (e2b.out_dir / SINGLE_FILE).exists()
    assert index["metadata"]["total_size"] == e2b.tensor_bytes
    assert (mixed.out_dir / SINGLE_FILE).is_file() and not (mixed.out_dir / INDEX_FILE).exists()
    for name in ("tokenizer.model", "tokenizer.json", "tokenizer_config.json", "preprocessor_config.json",
                 "generation_config.json", "chat_template.jinja"):
        assert (e2b.out_dir / name).read_bytes() == (tiny_e4b_ckpt / name).read_bytes(), name
    src_raw = json.loads((tiny_e4b_ckpt / "config.json").read_text())
    out_raw = json.loads((e2b.out_dir / "config.json").read_text())
    assert {k: v for k, v in out_raw.items() if k != "text_config"} == {
        k: v for k, v in src_raw.items() if k != "text_config"}
    t = out_raw["text_config"]
    assert (t["num_hidden_layers"], t["num_kv_shared_layers"], t["intermediate_size"]) == (12, 2, [128] * 12)
    assert t["layer_types"] == [src_raw["text_config"]["layer_types"][i] for i in E2B_ANALOG.layers_kept]
    record = json.loads((e2b.out_dir / "matformer_slice.json").read_text())
    assert record["spec"] == E2B_ANALOG.to_json() and record["effective_params"] == e2b.effective_params
    assert e2b.effective_params == effective_params(e2b.config) < effective_params(Gemma3nConfig.from_hf(tiny_e4b_ckpt))
    assert not [p for p in e2b.out_dir.parent.iterdir() if p.name.startswith(".")]  # no staging left behind


def test_export_keeps_bf16_and_refuses_to_clobber(tiny_e4b_ckpt, tmp_path):
    src = tmp_path / "bf16"
    src.mkdir()
    for f in tiny_e4b_ckpt.iterdir():
        if f.name != SINGLE_FILE:
            (src / f.name).write_bytes(f.read_bytes())
    state = {k: v.to(torch.bfloat16) for k, v in load_file(tiny_e4b_ckpt / SINGLE_FILE).items()}
    save_file(state, src / SINGLE_FILE, metadata={"format": "pt"})
    out = tmp_path / "out"
    export_sliced_hf(src, E2B_ANALOG, out)
    with CheckpointReader(out) as r, SlicedCheckpoint(src, E2B_ANALOG) as view:
        assert {r.dtype(n) for n in r.names()} == {"BF16"}
        for name in r.names():
            assert torch.equal(r.raw(name), view.raw(name)), name
            assert view.raw(name).dtype == torch.bfloat16
    (out / "marker").write_text("x")  # a file the export did not write: the directory is not replaced
    before = sorted((p.name, p.read_bytes()) for p in out.iterdir())
    with pytest.raises(UserError, match="also holds marker, which gemma3n-edge did not write"):
        export_sliced_hf(src, E2B_ANALOG, out)
    assert sorted((p.name, p.read_bytes()) for p in out.iterdir()) == before
    with pytest.raises(SliceError, match="inside the source checkpoint"):
        export_sliced_hf(src, E2B_ANALOG, src / "sliced")
    (out / "marker").unlink()
    report = export_sliced_hf(src, MIXED, out)  # an earlier export, nothing else: replaced
    assert report.config.text.num_hidden_layers == 13
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bf16", "out"]


def test_cli_lists_checks_and_exports(tiny_e4b_ckpt, tmp_path, capsys):
    from edge.cli import main

    assert main(["slice", "--list"]) == 0
    out = capsys.readouterr().out
    assert "E2B                30     1.91B   1.905B   50.9%  [20, 21, 22, 23, 24]" in out
    assert main(["slice", str(tiny_e4b_ckpt), "--slice", "E2B"]) == 1
    assert "for a 35-layer model" in capsys.readouterr().err
    spec = tmp_path / "e2b.json"
    spec.write_text(json.dumps({"ffn_hidden_dims": [128] * 12, "layers_skipped": [10, 11, 12]}))
    assert main(["slice", str(tiny_e4b_ckpt), "--slice", str(spec)]) == 0
    assert "15 -> 12 layers (skipped [10, 11, 12]), 2 KV-shared" in capsys.readouterr().out
    out_dir = tmp_path / "out"
    assert main(["slice", str(tiny_e4b_ckpt), "--slice", str(spec), "--export-hf", str(out_dir),
                 "--max-shard-size", "1MB"]) == 0
    assert f"wrote {out_dir}: slice 'e2b', 12 layers" in capsys.readouterr().out
    with CheckpointReader(out_dir) as r:  # tensor bytes per shard ≤ 1 MB, unless one tensor alone is larger
        per_file = {}
        for name in r.names():
            info = r.info(name)
            per_file.setdefault(info.file, []).append(info.offsets[1] - info.offsets[0])
        assert len(per_file) > 1
        assert all(sum(sizes) <= 10**6 or len(sizes) == 1 for sizes in per_file.values()), per_file
