"""Shared, session-scoped fixtures: tiny checkpoints are made (and artifacts built) once per run."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

# The suite owns its cache (lowered graphs, APK signing key): in the checkout's ignored build/,
# empty on a fresh clone, never the user's ~/.cache. Set before anything reads it; child
# processes (CLI tests) inherit it.
TEST_CACHE = Path(__file__).resolve().parents[1] / "build" / "test-cache"
os.environ["GEMMA3N_EDGE_CACHE"] = str(TEST_CACHE)
os.environ["HF_HUB_OFFLINE"] = "1"  # nothing in the suite may reach for the network


@pytest.fixture(scope="session")
def tiny_ckpt(tmp_path_factory):
    """The default tiny preset (text + vision + audio, every feature), every parameter perturbed."""
    from converters.tiny import make_tiny_checkpoint

    return make_tiny_checkpoint(tmp_path_factory.mktemp("tiny") / "ckpt", seed=0, preset="tiny")


@pytest.fixture(scope="session")
def tiny_e4b_ckpt(tmp_path_factory):
    """E4B-shaped miniature (KV-shared tail, a block an E2B-style slice can skip)."""
    from converters.tiny import make_tiny_checkpoint

    return make_tiny_checkpoint(tmp_path_factory.mktemp("tiny_e4b") / "ckpt", seed=0, preset="tiny-e4b")


@pytest.fixture(scope="session")
def build_tiny(tiny_ckpt, tmp_path_factory):
    """build_tiny(recipe) -> artifact dir of the tiny checkpoint, built once per recipe per session.

    Prefill lengths 8 and 16 with context 96: the test prompts need several prefill chunks,
    and generation runs past the tiny model's sliding window (12).
    """
    from converters.build import BuildOptions, build

    built = {}

    def get(recipe: str = "fp32"):
        if recipe not in built:
            out = tmp_path_factory.mktemp(f"artifacts_{recipe}") / "out"
            built[recipe] = build(tiny_ckpt, out, BuildOptions(recipe=recipe, prefill=(8, 16), context=96, modalities=("text",)))
        return built[recipe]

    return get


@pytest.fixture(scope="session")
def mm_artifacts(tiny_ckpt, tmp_path_factory):
    """fp32 artifacts + model.litertlm of the tiny checkpoint with all three modalities.

    Context 320: the 188 audio soft tokens plus the text fit with room to generate.
    """
    from converters.build import BuildOptions, build

    out = tmp_path_factory.mktemp("mm") / "art"
    return build(tiny_ckpt, out, BuildOptions(recipe="fp32", prefill=(16, 64), context=320,
                                              modalities=("text", "vision", "audio")))


@pytest.fixture(scope="session")
def tiny_artifacts(build_tiny):
    """fp32 artifacts of the tiny checkpoint."""
    return build_tiny("fp32")


@pytest.fixture(scope="session")
def tiny_bundle(tiny_artifacts):
    """The fp32 tiny model.litertlm that `build` writes beside the artifacts (converters/bundle.py)."""
    bundle = tiny_artifacts / "model.litertlm"
    assert bundle.is_file(), f"build wrote no {bundle}"
    return bundle


@pytest.fixture(scope="session")
def tiny_bundle_greedy(tiny_bundle):
    """(bundle, prompt, expected ids): our simulator's greedy tokens on the bundle itself, with the
    convention of the Android/JNI test: raw prompt text (no chat template), the runtime adds
    bos, prefill all but the last token, then decode. 8 tokens: the tiny model's continuation
    of this prompt stays inside the SentencePiece vocabulary (LiteRT-LM cannot detokenize the
    image/audio ids above it)."""
    import sentencepiece as spm

    from edge.runtime.session import load_pipeline
    from edge.runtime.pipeline import GenerationConfig

    prompt = "The quick brown fox"
    pipeline, _ = load_pipeline(tiny_bundle)
    try:
        ids = list(pipeline.generate(prompt, config=GenerationConfig(max_tokens=8, apply_template=False)).token_ids)
    finally:
        pipeline.close()
    vocab = spm.SentencePieceProcessor(model_file=str(tiny_bundle.parent / "tokenizer.model")).get_piece_size()
    assert all(i < vocab for i in ids), f"greedy ids {ids} leave the tokenizer's {vocab} pieces; pick another prompt"
    return tiny_bundle, prompt, ids


@pytest.fixture(scope="session")
def trained_ckpt():
    """The committed tiny *trained* Gemma 3n (converters/data/tiny_trained; tools/train_tiny.py)."""
    from pathlib import Path

    import converters

    return Path(converters.__file__).parent / "data" / "tiny_trained"


def pytest_unconfigure(config):
    """After the summary, the native libraries log their teardown (INFO lines) from C++ static
    destructors: route fd 2 through the CLI's known-noise filter for that, as `gemma3n-edge` does."""
    from edge import quiet

    quiet.filter_native_stderr()
