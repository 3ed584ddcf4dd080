"""Issue 3 acceptance on the perturbed tiny checkpoint: artifacts vs the HF reference, recipes, bad input."""

import json
import re
import shutil

import numpy as np
import pytest
from safetensors.torch import load_file, save_file

from converters.build import BuildOptions, build
from edge.errors import UserError
from edge.format.manifest_verify import load_manifest
from edge.parity.run import run_parity

# Long enough that the prompt needs several prefill chunks of lengths 16 and 8, and that
# 32 generated tokens run well past the sliding window (12).
LONG_PROMPT = ("The for statement is used to iterate over the elements of a sequence such as a string, "
               "tuple or list, or other iterable object.")


@pytest.fixture(scope="module")
def fp32_report(tiny_artifacts, tiny_ckpt):
    return run_parity(tiny_artifacts, tiny_ckpt, prompts=(LONG_PROMPT, "Explain what a dictionary is."),
                      max_tokens=32)


def test_manifest_declares_runtime_contract(tiny_artifacts):
    m = load_manifest(tiny_artifacts)  # verifies sha256 and signatures
    dec = m.artifact("prefill_decode")
    assert set(dec.signatures) == {"prefill_8", "prefill_16", "decode"}
    decode = dec.signatures["decode"]
    # Text ids only: the tokenizer's 1024 pieces, not the 1056-id vocabulary (no undecodable id on a phone).
    assert decode.outputs["logits"].shape == (1, 1, m.model.vocab_size_per_layer_input) == (1, 1, 1024)
    n_caches = len([k for k in decode.inputs if k.startswith("kv_cache_k_")])
    assert n_caches == 3  # tiny: 6 layers, 3 KV-shared -> only 3 layers own a cache
    assert decode.inputs["kv_cache_v_0"].shape[-1] == 96 and decode.inputs["kv_cache_k_0"].shape[2] == 96
    assert set(m.artifact("embedder").signatures) == {"prefill_embedder_8", "prefill_embedder_16", "decode_embedder"}
    assert m.artifact("per_layer_embedder").external_weights == ("per_layer_embedder.weights",)


def test_embedders_exact_in_fp32(fp32_report):
    for name in ("embedder", "per_layer_embedder"):
        a = fp32_report["artifacts"][name]
        assert a["max_abs_error"] == 0.0, (name, a)


def test_decoder_logits_within_tolerance_and_greedy_identical(fp32_report):
    dec = fp32_report["artifacts"]["decoder"]
    # Tolerance 1e-3 (manifest): fp32 both sides, observed ~1e-4 on logits up to ~12.
    assert dec["within_tolerance"], dec
    gen = fp32_report["generation"]
    assert gen["greedy_match"], gen["first_divergence"]
    assert gen["tokens_compared"] >= 64
    assert gen["top1_agreement"] == 1.0


def test_recipes_sizes_and_agreement(build_tiny, tiny_ckpt):
    """Quantized recipes: file sizes shrink as the formats say, and agreement is reported."""
    sizes, gen = {}, {}
    for recipe in ("fp32", "int8", "int4"):
        d = build_tiny(recipe)
        m = json.loads((d / "manifest.json").read_text())
        sizes[recipe] = {f: e["bytes"] for f, e in m["files"].items()}
        if recipe != "fp32":
            gen[recipe] = run_parity(d, tiny_ckpt, prompts=(LONG_PROMPT,), max_tokens=16)["generation"]
    print("sizes", json.dumps(sizes), "generation", json.dumps(gen))
    ple = {r: s["per_layer_embedder.weights"] for r, s in sizes.items()}
    # The PLE table is all big rows: int8 = 1 byte + fp32 scale per row; int4 = 0.5 byte + fp16 scale per 32.
    assert ple["int8"] < 0.3 * ple["fp32"]
    assert ple["int4"] < 0.6 * ple["int8"]
    # The perturbed random tiny model is very sensitive to weight noise: int8 weight rounding
    # alone (fake-quantized in PyTorch, activations fp32) already gives KL 0.037 and top-1 94%
    # on it, and dynamic int8 adds activation rounding. So no absolute bar here (the trained
    # demo model is where agreement is judged); what must hold is the ordering of the formats
    # and that the right token stays in the top 5 with int8.
    assert gen["int8"]["kl_mean"] < gen["int4"]["kl_mean"]
    assert gen["int8"]["top5_agreement"] >= 0.9


def test_build_verdict_measures_each_weights_error(build_tiny, tiny_ckpt):
    """The per-artifact verdict: fp32 weights are exact copies; an int8 build's worst weight error
    is the one recomputed here from the checkpoint with the same per-channel rounding."""
    import numpy as np

    from converters.build import verdict_lines
    from converters.checkpoint import CheckpointReader
    from converters.quant.quantize import dequantize_int8_channelwise, quantize_int8_channelwise
    from edge.format.manifest import read_manifest

    exact = read_manifest(build_tiny("fp32"))
    assert all(a.extra["weights"]["max_rel_error"] == 0 for a in exact.artifacts.values() if "weights" in a.extra)
    d = build_tiny("int8")
    m = read_manifest(d)
    w = m.artifacts["prefill_decode"].extra["weights"]
    assert w["formats"]["int8"] > 0 and w["recipe"] == "int8"
    name = "model.language_model." + w["worst"]
    with CheckpointReader(tiny_ckpt) as reader:
        x = reader.tensor(name).numpy().astype(np.float32)
    if name.endswith("embed_tokens.weight"):  # the tied head scores the tokenizer's ids only
        from converters.components.text import text_vocab
        from converters.gemma3n.config import Gemma3nConfig

        x = x[: text_vocab(tiny_ckpt, Gemma3nConfig.from_hf(tiny_ckpt).text)]
    back = dequantize_int8_channelwise(*quantize_int8_channelwise(x))
    assert w["max_rel_error"] == pytest.approx(np.linalg.norm(back - x) / np.linalg.norm(x), rel=1e-3)
    lines = verdict_lines(d, m)
    assert len(lines) == 1 + len(m.artifacts) and "prefill_decode" in lines[3] and "RMS from the checkpoint" in lines[3]


def _broken_checkpoint(src, dst, drop=None, config_edit=None):
    shutil.copytree(src, dst)
    if drop:
        tensors = load_file(dst / "model.safetensors")
        del tensors[drop]
        save_file(tensors, dst / "model.safetensors")
    if config_edit:
        cfg = json.loads((dst / "config.json").read_text())
        config_edit(cfg)
        (dst / "config.json").write_text(json.dumps(cfg))
    return dst


def _whitespace_eating_tokenizer(path) -> None:
    """A SentencePiece model that normalises whitespace away ("\n\n" -> no ids)."""
    import io

    import sentencepiece as spm

    buf = io.BytesIO()
    spm.SentencePieceTrainer.train(sentence_iterator=iter(["the quick brown fox jumps over the lazy dog"] * 50),
                                   model_writer=buf, vocab_size=40, model_type="bpe", remove_extra_whitespaces=True,
                                   user_defined_symbols=["<start_of_turn>", "<end_of_turn>"], minloglevel=2)
    path.write_bytes(buf.getvalue())


@pytest.mark.parametrize("case", ["missing_tensor", "other_architecture", "unknown_recipe", "prefill_over_context",
                                  "no_tokenizer", "whitespace_tokenizer"])
def test_bad_input_clear_error_and_nothing_written(case, tiny_ckpt, tmp_path):
    ckpt, opts = tiny_ckpt, BuildOptions(recipe="fp32", prefill=(8,), context=32, modalities=("text",))
    if case in ("no_tokenizer", "whitespace_tokenizer"):
        ckpt = _broken_checkpoint(tiny_ckpt, tmp_path / "ck")
        (ckpt / "tokenizer.model").unlink()
        if case == "whitespace_tokenizer":
            _whitespace_eating_tokenizer(ckpt / "tokenizer.model")
            expect = re.escape(f"encodes the image/audio separator {chr(10) * 2!r} to no ids")
        else:
            expect = "has no tokenizer.model"
    elif case == "missing_tensor":
        ckpt = _broken_checkpoint(tiny_ckpt, tmp_path / "ck", drop="model.language_model.layers.1.mlp.up_proj.weight")
        expect = "layers.1.mlp.up_proj.weight"
    elif case == "other_architecture":
        ckpt = _broken_checkpoint(tiny_ckpt, tmp_path / "ck",
                                  config_edit=lambda c: c.update(model_type="llama", architectures=["LlamaForCausalLM"]))
        expect = "llama"
    elif case == "unknown_recipe":
        opts, expect = BuildOptions(recipe="int3", modalities=("text",)), "int3"
    else:
        opts, expect = BuildOptions(recipe="fp32", prefill=(64,), context=32, modalities=("text",)), "--prefill 64"
    out = tmp_path / "out"
    with pytest.raises(UserError, match=expect):
        build(ckpt, out, opts)
    assert not out.exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".out")], "staging directory left behind"


def test_rebuild_into_existing_directory_replaces_it(tiny_artifacts, tiny_ckpt, tmp_path):
    out = tmp_path / "again"
    shutil.copytree(tiny_artifacts, out)
    (out / "decoder.tflite").write_bytes(b"an older build")  # a file the old manifest lists: ours to replace
    build(tiny_ckpt, out, BuildOptions(recipe="fp32", prefill=(8, 16), context=96, modalities=("text",)))
    load_manifest(out)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["again"], "old copy or staging left behind"
    a = np.fromfile(out / "decoder.tflite", np.uint8)
    b = np.fromfile(tiny_artifacts / "decoder.tflite", np.uint8)
    assert np.array_equal(a, b)  # deterministic build


def test_trained_model_fp32_artifacts_greedy_equal_reference(trained_ckpt, tmp_path):
    """Issue 5: on the trained tiny model (peaked, meaningful logits) fp32 artifacts generate what HF does."""
    heldout = (trained_ckpt / "heldout.txt").read_text().split("\n\n")[3][:160]  # text training never saw
    out = build(trained_ckpt, tmp_path / "art", BuildOptions(recipe="fp32", prefill=(8, 16), context=96, bundle=False, modalities=("text",)))
    report = run_parity(out, trained_ckpt, prompts=("What does the for statement do?", heldout), max_tokens=32)
    assert report["artifacts"]["decoder"]["within_tolerance"]
    assert report["generation"]["greedy_match"], report["generation"]["first_divergence"]
    assert report["generation"]["tokens_compared"] >= 32
