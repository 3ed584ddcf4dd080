"""Audio tower parity: audio_encoder / audio_adapter / end_of_audio .tflite against transformers.

The tiny checkpoint's audio tower (2 conformer blocks, hidden 32, the real SSCP strides, chunking
and reduction; every parameter perturbed) is exported once per module at the real 30 s window
(3008 frames -> 188 tokens; a tiny tower lowers in ~30 s whatever the window). References:
`Gemma3nModel.get_audio_features` on the *unpadded* clip (HF's processor default, padding=
"longest"), and the inputs_embeds that `Gemma3nModel.forward` hands the language model.
"""

import math

import numpy as np
import pytest
import torch

transformers = pytest.importorskip("transformers")
pytest.importorskip("litert_torch")

from ai_edge_litert.interpreter import Interpreter  # noqa: E402
from safetensors.torch import load_file  # noqa: E402

from converters.components import audio as AC  # noqa: E402
from converters.gemma3n import audio as A  # noqa: E402
from converters.gemma3n.config import Gemma3nConfig  # noqa: E402
from converters.gemma3n.tower_config import AudioConfig  # noqa: E402
from converters.lowering.cache import cache_dir  # noqa: E402
from edge.errors import UserError  # noqa: E402
from tower_export import export_modality  # noqa: E402

# fp32 on both sides; the graph reorders sums (XNNPACK GEMMs, CUMSUM, softmax) and the encoder
# feeds 2 blocks of norms; observed <= 2e-6 on outputs of magnitude ~4. 1e-4 is 50x that and
# still 1000x below what a wrong mask, shift or norm produces (>= 7e-2, see the short-clip test).
ATOL = 1e-4


@pytest.fixture(scope="module")
def tiny(tiny_ckpt):
    cfg = Gemma3nConfig.from_hf(tiny_ckpt)
    weights = load_file(str(tiny_ckpt / "model.safetensors"))
    hf = transformers.Gemma3nForConditionalGeneration.from_pretrained(tiny_ckpt, dtype=torch.float32).eval()
    return cfg, weights.__getitem__, hf


@pytest.fixture(scope="module")
def exported(tiny, tmp_path_factory):
    cfg, get, _ = tiny
    out = tmp_path_factory.mktemp("audio")
    # The weight-free graphs are kept for the other recipes (test_recipes_quantize_every_matmul).
    arts = export_modality("audio", cfg, get, out, "fp32", graph_dir=cache_dir())  # the suite's: builds share them
    runners = {n: Interpreter(model_path=str(out / a["file"]), num_threads=2).get_signature_runner(n)
               for n, a in arts.items()}
    return out, arts, runners


def _hf_encoder(hf, feats: np.ndarray) -> np.ndarray:
    """HF's encoder output rows (all valid) for one unpadded clip (T, F)."""
    x = torch.from_numpy(feats)[None]
    with torch.no_grad():
        out = hf.model.get_audio_features(x, torch.zeros(x.shape[:2], dtype=torch.bool), return_dict=True)
    assert not out.audio_mel_mask.any()  # every row of an unpadded clip is real audio
    return out.last_hidden_state[0].numpy()


def _window(feats: np.ndarray, window: int, junk: float = 0.0):
    """Features padded to the window (pad frames filled with `junk` noise) and the frame mask."""
    t = len(feats)
    x = np.random.default_rng(7).normal(0.0, junk, (1, window, feats.shape[1])).astype(np.float32)
    x[0, :t] = feats
    mask = np.zeros((1, window), bool)
    mask[0, :t] = True
    return x, mask


def _speech_like_features() -> np.ndarray:
    """Log-mel of 30 s of a chirp plus noise through the project's extractor (HF-equal), or HF's."""
    rng = np.random.default_rng(0)
    t = np.arange(30 * 16000) / 16000
    wave = (0.3 * np.sin(2 * np.pi * (200 + 40 * t) * t) + 0.05 * rng.standard_normal(t.size)).astype(np.float32)
    try:
        from edge.runtime.audio import AudioFeatureExtractor
    except ImportError:
        fe = transformers.Gemma3nAudioFeatureExtractor()
        return fe(wave, return_tensors="np")["input_features"][0].astype(np.float32)
    return AudioFeatureExtractor()(wave).features


# ---------------------------------------------------------------------------------------------


def test_geometry_matches_hf(tiny):
    cfg, _, hf = tiny
    real = AudioConfig()
    assert A.frames_for_samples(480_000) == 2997  # what HF's extractor gives for 30 s
    assert A.default_window_frames(real) == 3008 and A.num_soft_tokens(2997, real) == 188
    # HF's encoder output length for every short length (all three stages round up).
    rng = np.random.default_rng(1)
    for t in (1, 16, 17, 33, 257):
        n = len(_hf_encoder(hf, rng.normal(size=(t, 128)).astype(np.float32)))
        assert A.num_soft_tokens(t, cfg.audio) == n == math.ceil(t / 16), t
    lay = A.soft_token_layout(500, cfg)
    assert lay == {"total": 188, "valid": 32, "encoder_rows": (0, 32), "padding_rows": (32, 188),
                   "padding_token_id": cfg.text.vocab_size - 1}
    with pytest.raises(UserError, match="split the audio"):
        A.soft_token_layout(3009, cfg)


def test_encoder_full_window_matches_hf(tiny, exported):
    _, _, hf = tiny
    _, arts, run = exported
    feats = _speech_like_features()
    assert feats.shape == (2997, 128)
    ref = _hf_encoder(hf, feats)
    x, mask = _window(feats, 3008)
    out = run["audio_encoder"](src_inputs=x, mask=mask)
    assert ref.shape[0] == 188 and out["mask"].all()
    np.testing.assert_allclose(out["features"][0], ref, atol=ATOL, rtol=0)


@pytest.mark.parametrize("frames", [17, 500])
def test_encoder_short_clip_with_mask_matches_hf(tiny, exported, frames):
    """A clip shorter than the window equals HF on the unpadded clip, whatever the pad frames hold.

    Features have a positive mean here so the first conv's rows past the clip are nonzero after
    the cumulative norm and ReLU: without the graph's masking of those rows (HF's second conv
    sees zero padding), 17 frames differ by 0.7 and 500 by 0.07.
    """
    _, _, hf = tiny
    _, _, run = exported
    feats = np.random.default_rng(frames).normal(3.0, 2.0, (frames, 128)).astype(np.float32)
    ref = _hf_encoder(hf, feats)
    n = len(ref)
    x, mask = _window(feats, 3008, junk=5.0)
    out = run["audio_encoder"](src_inputs=x, mask=mask)
    # Every step reported valid (LiteRT-LM then inserts all 188 rows, as HF does); the steps past
    # the clip are zero, which the adapter turns into HF's padding embedding.
    assert out["mask"].all()
    np.testing.assert_allclose(out["features"][0, :n], ref, atol=ATOL, rtol=0)
    assert not out["features"][0, n:].any() and (np.abs(out["features"][0, :n]).sum(-1) > 0).all()


def test_adapter_and_end_of_audio_splice_like_hf_forward(tiny, exported):
    """Encoder -> adapter rows land exactly where Gemma3nModel.forward puts audio embeddings."""
    cfg, _, hf = tiny
    _, _, run = exported
    frames = 500
    feats = np.random.default_rng(3).normal(-2.0, 2.0, (frames, 128)).astype(np.float32)
    ids = [cfg.boa_token_id] + [cfg.audio_token_id] * cfg.audio_soft_tokens_per_image + [cfg.eoa_token_id, 10]
    captured = {}
    hook = hf.model.language_model.register_forward_pre_hook(
        lambda mod, args, kwargs: captured.update(embeds=kwargs["inputs_embeds"]), with_kwargs=True)
    try:
        with torch.no_grad():
            hf.model(input_ids=torch.tensor([ids]), input_features=torch.from_numpy(feats)[None],
                     input_features_mask=torch.ones(1, frames, dtype=torch.bool))
    finally:
        hook.remove()
    embeds = captured["embeds"][0].numpy()
    start = ids.index(cfg.audio_token_id)
    lay = A.soft_token_layout(frames, cfg)

    x, mask = _window(feats, 3008)
    enc = run["audio_encoder"](src_inputs=x, mask=mask)
    rows = run["audio_adapter"](mask=enc["mask"], features=enc["features"])["mm_embedding"][0]
    np.testing.assert_allclose(rows, embeds[start : start + lay["total"]], atol=ATOL, rtol=0)
    # Rows past the clip are HF's padding embedding (the last audio vocab id), all equal.
    assert lay["valid"] == 32 and np.ptp(rows[lay["valid"]:], axis=0).max() == 0
    eoa = run["end_of_audio"]()["embeddings"]
    assert eoa.shape == (1, 1, cfg.text.hidden_size)
    np.testing.assert_allclose(eoa[0, 0], embeds[start + lay["total"]], atol=1e-6, rtol=0)


def test_signatures_follow_litert_lm(exported):
    """Names, order, shapes and dtypes LiteRT-LM's audio executor looks up (module docstring)."""
    from ai_edge_litert.compiled_model import CompiledModel

    out, arts, run = exported
    enc = arts["audio_encoder"]["signatures"]
    adp = arts["audio_adapter"]["signatures"]
    assert list(enc) == ["audio_encoder"] and list(adp) == ["audio_adapter"]
    e, a = enc["audio_encoder"], adp["audio_adapter"]
    assert e["inputs"] == {"src_inputs": {"shape": [1, 3008, 128], "dtype": "float32"},
                           "mask": {"shape": [1, 3008], "dtype": "bool"}}
    assert e["outputs"] == {"features": {"shape": [1, 188, 32], "dtype": "float32"},
                            "mask": {"shape": [1, 188], "dtype": "bool"}}
    # The runtime binds adapter inputs by position: 0 = encoder mask, 1 = encoder features.
    assert list(a["inputs"]) == ["mask", "features"] and len(a["outputs"]) == 1
    assert a["outputs"]["mm_embedding"] == {"shape": [1, 188, 64], "dtype": "float32"}
    # audio_shrink_factor = input frames / adapter output rows must be the 16 frames per token.
    assert 3008 // a["outputs"]["mm_embedding"]["shape"][-2] == 16
    eoa = arts["end_of_audio"]["signatures"]["end_of_audio"]
    assert eoa["inputs"] == {} and eoa["outputs"] == {"embeddings": {"shape": [1, 1, 64], "dtype": "float32"}}
    # LiteRT's CompiledModel (what LiteRT-LM runs) sees the same order...
    sig = CompiledModel.from_file(str(out / "audio_adapter.tflite")).get_signature_list()
    assert sig["audio_adapter"]["inputs"] == ["mask", "features"]
    # ...and accepts the mask as the runtime writes it (uint8 bytes into the bool buffer).
    cm = CompiledModel.from_file(str(out / "audio_encoder.tflite"))
    ins, outs = cm.create_input_buffers(0), cm.create_output_buffers(0)
    x, mask = _window(np.random.default_rng(9).normal(0.0, 2.0, (100, 128)).astype(np.float32), 3008)
    ins[0].write(x)
    ins[1].write(mask.astype(np.uint8))
    cm.run_by_index(0, ins, outs)
    feats, valid = outs[0].read(188 * 32, np.float32).reshape(1, 188, 32), outs[1].read(188, np.uint8)
    want = run["audio_encoder"](src_inputs=x, mask=mask)
    assert valid.all() and np.array_equal(valid.astype(bool), want["mask"][0])  # every step: HF's 188 rows
    assert (np.abs(feats[0]).sum(-1) > 0).sum() == 7  # ceil(100 / 16) steps of real audio
    np.testing.assert_allclose(feats, want["features"], atol=1e-6, rtol=0)
    assert {a["kind"] for a in arts.values()} == {"audio_encoder_hw", "audio_adapter", "end_of_audio"}
    assert arts["audio_encoder"]["tolerance"]["max_abs"] == ATOL == AC.TOLERANCES["fp32"]


@pytest.mark.parametrize("recipe,expect,max_rel", [
    # Relative RMS error vs fp32 on the tiny tower (in-dims 32-256, so few blocks per row):
    # observed 6e-4 / 2.3% / 23%; bounds ~3x that. Real-size numbers: tools/bench_audio.py.
    ("fp16", "fp16", 2e-3), ("int8", "int8", 0.07), ("int4", "int4-b32", 0.6),
])
def test_recipes_quantize_every_matmul(tiny, exported, recipe, expect, max_rel):
    cfg, get, _ = tiny
    out, arts, run = exported
    # Splices only: the graphs lowered by the fp32 export are reused (the graph cache).
    # An explicit override: a build's int4 keeps the towers at int8 (their default precision).
    qarts = export_modality("audio", cfg, get, out / recipe, f"{recipe},audio={recipe}", graph_dir=cache_dir())
    counts = qarts["audio_encoder"]["weights"]
    assert counts == {expect: arts["audio_encoder"]["weights"]["fp32"]} and sum(counts.values()) == 21  # every FC
    assert qarts["audio_adapter"]["weights"] == {expect: 1}
    assert qarts["audio_encoder"]["bytes"] < arts["audio_encoder"]["bytes"]
    assert qarts["audio_encoder"]["tolerance"]["max_abs"] == AC.TOLERANCES[recipe]  # the bound follows the format
    assert qarts["audio_encoder"]["signatures"] == arts["audio_encoder"]["signatures"]
    x, mask = _window(np.random.default_rng(5).normal(-2.0, 2.0, (3008, 128)).astype(np.float32), 3008)
    ref = run["audio_encoder"](src_inputs=x, mask=mask)["features"]
    got = Interpreter(model_path=str(out / recipe / "audio_encoder.tflite"),
                      num_threads=2).get_signature_runner("audio_encoder")(src_inputs=x, mask=mask)
    rel = np.sqrt(np.mean((got["features"] - ref) ** 2) / np.mean(ref**2))
    assert 0 < rel < max_rel


def test_bad_inputs_are_clear_errors(tiny, tmp_path):
    cfg, get, _ = tiny
    with pytest.raises(UserError, match="multiple of 16"):
        A.build_encoder(cfg, get, window_frames=3000)
    with pytest.raises(UserError, match="lacks .* audio tensors"):
        A.build_encoder(cfg, lambda name: (_ for _ in ()).throw(KeyError(name)))
    with pytest.raises(UserError, match="unknown quantization recipe"):
        export_modality("audio", cfg, get, tmp_path, "int3", graph_dir=tmp_path.parent / "graphs")
    assert not any(tmp_path.iterdir())
