"""Vision encoder + adapter: the .tflite files against HF's Gemma3nModel on the tiny checkpoint.

The tiny preset's vision tower has the block kinds of mobilenetv5_300m_enc (ER, UIR, MQA with
kv stride, MSFA) at 192 px -> 4x4 = 16 soft tokens; every parameter is perturbed. Lowered once
per module (~20 s); quantization is applied to that fp32 file (what the export does after
lowering), so every recipe is covered without lowering again.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from converters.components import vision as VC
from converters.gemma3n import vision as V
from converters.quant import by_op as Q
from converters.lowering.export import lower_baked
from tower_export import export_modality
from edge.errors import UserError

TINY_SIZE = (192, 192)


@pytest.fixture(scope="module")
def hf(tiny_ckpt):
    from transformers import Gemma3nForConditionalGeneration

    return Gemma3nForConditionalGeneration.from_pretrained(tiny_ckpt, dtype=torch.float32).eval()


@pytest.fixture(scope="module")
def config(tiny_ckpt):
    """A fresh config: building `hf` let timm consume the first one's block_args (GEMMA3N.md)."""
    from transformers import Gemma3nConfig

    return Gemma3nConfig.from_pretrained(tiny_ckpt)


@pytest.fixture(scope="module")
def getter(tiny_ckpt):
    from safetensors import safe_open

    f = safe_open(str(Path(tiny_ckpt) / "model.safetensors"), "pt")
    return f.get_tensor


@pytest.fixture(scope="module")
def exported(tiny_ckpt, getter, tmp_path_factory):
    from converters.gemma3n.config import Gemma3nConfig
    from converters.lowering.cache import cache_dir

    out = tmp_path_factory.mktemp("vision")
    entries = export_modality("vision", Gemma3nConfig.from_hf(tiny_ckpt), getter, out, "fp32",
                              graph_dir=cache_dir(), image_size=TINY_SIZE)  # the suite's: builds share them
    scale = VC.feature_scale(V.VisionDims.from_config(Gemma3nConfig.from_hf(tiny_ckpt), TINY_SIZE), getter)
    for kind, e in entries.items():  # the manifest keeps max_abs; the relative L2 bound is the tower's
        e["tolerance"]["rel_l2"] = VC.tolerance(Q.rules_for("fp32"), kind, scale)["rel_l2"]
    return out, entries


@pytest.fixture(scope="module")
def image(tiny_ckpt, tmp_path_factory):
    """A synthetic photo-like PNG through edge.runtime.image (the simulator's preprocessing): (1, 192, 192, 3)."""
    from PIL import Image

    from edge.runtime.image import ImageProcessorConfig, load_image

    rng = np.random.default_rng(7)
    yy, xx = np.mgrid[0:300, 0:400] / 300.0
    rgb = np.stack([np.sin(5 * xx) * 0.5 + 0.5, np.cos(3 * yy) * 0.5 + 0.5, xx * yy / 1.4], -1)
    for _ in range(10):  # flat patches and edges, as objects give
        x0, y0, r = rng.integers(0, 400), rng.integers(0, 300), rng.integers(10, 60)
        rgb[max(0, y0 - r):y0 + r, max(0, x0 - r):x0 + r] = rng.random(3)
    path = tmp_path_factory.mktemp("img") / "photo.png"
    Image.fromarray((np.clip(rgb, 0, 1) * 255).astype(np.uint8)).save(path)
    cfg = ImageProcessorConfig.from_checkpoint(tiny_ckpt)
    assert cfg.size == TINY_SIZE  # the tiny checkpoint's preprocessor_config.json
    return load_image(path, cfg)


def _runner(path: Path, signature: str):
    from ai_edge_litert.interpreter import Interpreter

    return Interpreter(str(path)).get_signature_runner(signature)


@pytest.fixture(scope="module")
def reference(hf, image) -> tuple[np.ndarray, np.ndarray]:
    """(features before embed_vision, rows HF's forward puts at [soft tokens..., eoi]) for the image."""
    cfg = hf.config
    pixel_values = torch.from_numpy(image).permute(0, 3, 1, 2)  # NHWC -> NCHW, as HF's processor gives
    s, c = cfg.vision_soft_tokens_per_image, cfg.vision_config.hidden_size
    with torch.no_grad():
        last = hf.model.vision_tower(pixel_values=pixel_values, do_pooling=False, return_dict=True).last_hidden_state
        features = last.reshape(1, c, s).permute(0, 2, 1) * c**0.5  # get_image_features before embed_vision
        # What the decoder actually receives: inputs_embeds of a full forward with an image prompt.
        ids = [2, cfg.boi_token_id] + [cfg.image_token_id] * s + [cfg.eoi_token_id, 5]
        seen = {}
        hook = hf.model.language_model.register_forward_pre_hook(
            lambda m, a, kw: seen.update(embeds=kw["inputs_embeds"].clone()), with_kwargs=True)
        try:
            hf(input_ids=torch.tensor([ids]), pixel_values=pixel_values)
        finally:
            hook.remove()
    rows = seen["embeds"][:, 2:2 + s + 1]  # (1, S+1, H): the soft-token positions and the eoi after them
    return features.numpy(), rows.numpy()


def _max_err(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.abs(a - b).max())


def test_encoder_and_adapter_match_hf(exported, hf, image, reference):
    """fp32 artifacts vs HF within their declared tolerances (fp32 relowering: measured 3e-4 on
    features up to ~280, ~1e-5 of their RMS, and 6e-6 on unit-RMS adapter rows; declared: 1e-4 x
    feature RMS and 1e-4, see vision.TOLERANCES)."""
    out, entries = exported
    features_ref, rows_ref = reference
    s, h = hf.config.vision_soft_tokens_per_image, hf.config.text_config.hidden_size
    features = _runner(out / V.ENCODER_FILE, "vision_192")(images=image)["features"]
    assert features.shape == features_ref.shape == (1, s, 2048)
    assert np.abs(features).max() > 10  # real activations, not zeros
    assert _max_err(features, features_ref) <= entries["vision_encoder"]["tolerance"]["max_abs"]

    adapter = _runner(out / V.ADAPTER_FILE, V.ADAPTER_SIGNATURE)
    mm = adapter(soft_tokens=features)["mm_embedding"]
    assert mm.shape == rows_ref.shape == (1, s + 1, h)
    assert _max_err(mm, rows_ref) <= entries["vision_adapter"]["tolerance"]["max_abs"]
    for y, ref, e in ((features, features_ref, "vision_encoder"), (mm, rows_ref, "vision_adapter")):
        assert np.linalg.norm(y - ref) / np.linalg.norm(ref) <= entries[e]["tolerance"]["rel_l2"]
    # The adapter alone, fed HF's own features: fp32 rounding only.
    assert _max_err(adapter(soft_tokens=features_ref)["mm_embedding"], rows_ref) <= 2e-5
    # The last row is the eoi embedding (a constant), not another image row.
    assert _max_err(mm[0, -1], mm[0, -2]) > 0.1
    assert _max_err(adapter(soft_tokens=features * 0.5 + 1)["mm_embedding"][0, -1], rows_ref[0, -1]) <= 1e-6


def test_manifest_entries_follow_the_runtime_contract(exported, hf):
    """One input and one output per graph (the runtime passes the encoder's outputs to the adapter)."""
    out, entries = exported
    s, h = hf.config.vision_soft_tokens_per_image, hf.config.text_config.hidden_size
    enc, ada = entries["vision_encoder"], entries["vision_adapter"]
    assert (enc["file"], enc["kind"], ada["file"], ada["kind"]) == (
        "vision_encoder.tflite", "vision_encoder", "vision_adapter.tflite", "vision_adapter")
    assert enc["signatures"] == {"vision_192": {
        "inputs": {"images": {"shape": [1, 192, 192, 3], "dtype": "float32"}},
        "outputs": {"features": {"shape": [1, s, 2048], "dtype": "float32"}}}}
    assert ada["signatures"] == {"vision_adapter": {
        "inputs": {"soft_tokens": {"shape": [1, s, 2048], "dtype": "float32"}},
        "outputs": {"mm_embedding": {"shape": [1, s + 1, h], "dtype": "float32"}}}}
    for e in (enc, ada):
        assert e["tolerance"]["max_abs"] > 0 and e["tolerance"]["why"]
        json.dumps(e)  # manifest-ready
    assert sorted(p.name for p in out.iterdir()) == ["vision_adapter.tflite", "vision_encoder.tflite"]  # no temp left


def test_every_conv_weight_is_a_constant(exported):
    """Lowered with weights as inputs, every conv / matmul weight must end up a constant operand
    (absorbed OIHW -> OHWI transposes), else it would be transposed at run time and never quantized."""
    from converters.lowering import flatbuf

    out, _ = exported
    model = flatbuf.read_model(out / V.ENCODER_FILE)
    ops = [flatbuf.op_name(model, o) for o in model.subgraphs[0].operators]
    dtypes = Q.weight_dtypes(out / V.ENCODER_FILE)
    for kind in ("CONV_2D", "DEPTHWISE_CONV_2D"):
        assert sum(dtypes[kind].values()) == ops.count(kind) > 0, kind
    assert len(model.subgraphs[0].inputs) == 1  # images only: no weight input left


# Feature error budget per recipe vs the fp32 encoder (relative L2) on the tiny tower, ~2x what
# was measured (fp16 0.13-0.17%, int8 3.9-4.4%; the real-size encoder: 0.13-0.17% and 3.8-4.1%).
RECIPE_BUDGET = {"fp16": 0.005, "int8": 0.1, "int4": 0.1, "mixed": 0.1}


def test_every_project_recipe_has_vision_rules():
    from converters.quant.recipes import RECIPES

    assert set(RECIPES) <= set(Q.VISION_RULES), "add vision rules for the new recipe(s)"
    for name, rules in Q.VISION_RULES.items():
        assert all(scheme is None or scheme in Q.SCHEMES for _, scheme, _ in rules), name
        assert not any(scheme and Q.SCHEMES[scheme].stored == "int4" for _, scheme, _ in rules), (
            f"{name}: int4 convolutions lose the image (55% feature error, tools/bench_vision.py)")


@pytest.mark.parametrize("recipe", sorted(RECIPE_BUDGET))
def test_recipes_quantize_what_they_declare(exported, config, getter, image, reference, recipe, tmp_path):
    """What the export does after lowering (converters/quant/by_op.py), on the fp32 files: every
    weight op gets its rule's format (quantize_file raises otherwise), and the result stays within
    the declared tolerance of HF."""
    out, _ = exported
    rules = Q.rules_for(recipe)
    files = {f: tmp_path / f for f in (V.ENCODER_FILE, V.ADAPTER_FILE)}
    infos = {f: Q.quantize_file(out / f, dst, rules) for f, dst in files.items()}
    n_conv = sum(Q.weight_dtypes(out / V.ENCODER_FILE)["CONV_2D"].values())
    conv_format = Q.SCHEMES[Q.scheme_for(rules, "CONV_2D")].stored
    assert infos[V.ENCODER_FILE]["weights"]["CONV_2D"] == {conv_format: n_conv}
    assert infos[V.ADAPTER_FILE]["weights"] == {"FULLY_CONNECTED": {Q.SCHEMES[Q.scheme_for(rules, "FULLY_CONNECTED")].stored: 1}}
    for f, dst in files.items():
        assert dst.stat().st_size < 0.7 * (out / f).stat().st_size

    features_ref, rows_ref = reference
    f32 = _runner(out / V.ENCODER_FILE, "vision_192")(images=image)["features"]
    got = _runner(files[V.ENCODER_FILE], "vision_192")(images=image)["features"]
    rel = np.linalg.norm(got - f32) / np.linalg.norm(f32)
    assert 0 < rel <= RECIPE_BUDGET[recipe], f"{recipe}: feature error {rel:.4f} vs the fp32 file"
    scale = VC.feature_scale(V.VisionDims.from_config(config, TINY_SIZE), getter)
    mm = _runner(files[V.ADAPTER_FILE], V.ADAPTER_SIGNATURE)(soft_tokens=got)["mm_embedding"]
    for kind, y, ref in ((V.ENCODER_KIND, got, features_ref), (V.ADAPTER_KIND, mm, rows_ref)):
        tol = VC.tolerance(rules, kind, scale)
        assert _max_err(y, ref) <= tol["max_abs"], kind
        assert np.linalg.norm(y - ref) / np.linalg.norm(ref) <= tol["rel_l2"], kind


def test_both_config_kinds_give_the_same_dims(tiny_ckpt, config, hf):
    from converters.gemma3n.config import Gemma3nConfig

    ours = V.VisionDims.from_config(Gemma3nConfig.from_hf(tiny_ckpt), TINY_SIZE)
    theirs = V.VisionDims.from_config(config, TINY_SIZE)
    assert ours == theirs
    assert theirs.vision_soft_tokens_per_image == 16 and theirs.text_hidden_size == config.text_config.hidden_size
    with pytest.raises(UserError, match="consumed by timm"):  # hf.config: a model was built from it
        V.VisionDims.from_config(hf.config, TINY_SIZE)


def test_bad_inputs_get_clear_errors(config, getter, tmp_path):
    with pytest.raises(UserError, match="unknown quantization recipe 'int3'"):
        export_modality("vision", config, getter, tmp_path, "int3", graph_dir=tmp_path, image_size=TINY_SIZE)
    dims = V.VisionDims.from_config(config, TINY_SIZE)
    # MSFA always emits msfa_output_resolution^2 tokens, so only a config that disagrees with the tower fails.
    with pytest.raises(UserError, match="gives 16 tokens.*vision_soft_tokens_per_image=25"):
        V.meta_timm_encoder(dataclasses.replace(dims, vision_soft_tokens_per_image=25))

    def missing(name):
        if name.endswith("conv_stem.conv.weight"):
            raise KeyError(name)
        return getter(name)

    with pytest.raises(UserError, match=r"no tensor model\.vision_tower\.timm_model\.conv_stem\.conv\.weight"):
        V.build_timm_encoder(dims, missing)

    def wrong_shape(name):
        t = getter(name)
        return t[:-1] if name.endswith("embedding_projection.weight") else t

    with pytest.raises(UserError, match="embedding_projection.weight has shape"):
        V.build_adapter(dims, wrong_shape)
    assert not list(tmp_path.iterdir())  # nothing written on failure


def test_fp16_guard_keeps_underflowing_weights_float32(tmp_path):
    """A conv whose weights sit in fp16's subnormal range (what a folded 1e-5 layer-scale gamma gives)
    stays fp32; the other conv becomes fp16 and the output stays within fp16 rounding."""
    from torch import nn

    class Two(nn.Module):
        def __init__(self):
            super().__init__()
            self.a = nn.Conv2d(8, 16, 3, padding=1)
            self.b = nn.Conv2d(16, 8, 1)
            with torch.no_grad():
                self.b.weight.mul_(1e-5)
                self.b.bias.mul_(1e-5)  # the whole branch scaled, as a folded layer-scale gamma does

        def forward(self, x):
            y = self.b(torch.relu(self.a(x.permute(0, 3, 1, 2))))
            return {"y": y * torch.rsqrt(y.pow(2).mean(1, keepdim=True) + 1e-30)}  # a norm, as timm's follow

    torch.manual_seed(0)
    x = torch.rand(1, 12, 12, 8)
    src, dst = tmp_path / "f32.tflite", tmp_path / "f16.tflite"
    src.write_bytes(lower_baked(Two().eval(), "s", {"x": x}))
    ops = Q.weight_ops(src)
    assert [w.fp16_loss > Q.FP16_GUARD for w in ops] == [False, True]
    info = Q.quantize_file(src, dst, Q.rules_for("fp16"))
    assert info["kept_fp32_by_fp16_guard"] == 1
    assert [w.dtype for w in Q.weight_ops(dst)] == ["float16", "float32"]
    ref = _runner(src, "s")(x=x.numpy())["y"]
    got = _runner(dst, "s")(x=x.numpy())["y"]
    assert np.linalg.norm(got - ref) / np.linalg.norm(ref) < 2e-3  # fp16 rounding of one conv: ~3e-4
