"""What the phone computes is what HF computes: Google's LiteRT-LM engine (litert_lm 0.18.1, CPU,
greedy, fp32 activations) on our fp32 all-modality bundle answers a text, an image (at the
encoder's size), a 2.5 s and a 30 s audio prompt with HF's greedy tokens, and never emits an id
the tokenizer cannot decode.

The engine builds the multimodal prompt and computes the audio features itself (docs/ENGINE.md),
so this holds only because the bundle's metadata makes it compute the checkpoint extractor's
features and HF's layout; the negative control shows the audio reaches the answer at all.
"""

from __future__ import annotations

import numpy as np
import pytest
import soundfile as sf

litert_lm = pytest.importorskip("litert_lm")
torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

from converters.bundle import BUNDLE_NAME  # noqa: E402

TOKENS = 16
STOPS = (1, 5)  # the tiny preset's <eos>, <end_of_turn>


def _speechlike(path, seconds: float, sr: int = 16000):
    t = np.arange(int(seconds * sr)) / sr
    wave = 0.3 * np.sin(2 * np.pi * (200 + 300 * t) * t) * (0.6 + 0.4 * np.sin(2 * np.pi * 3 * t))
    sf.write(path, wave.astype(np.float32), sr)
    return path


@pytest.fixture(scope="module")
def media(tmp_path_factory):
    from PIL import Image

    d = tmp_path_factory.mktemp("media")
    picture = d / "picture.png"  # exactly the encoder's size: no resize on either side
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (192, 192, 3), dtype=np.uint8)).save(picture)
    return {"image": picture, "audio2.5": _speechlike(d / "short.wav", 2.5), "audio30": _speechlike(d / "long.wav", 30.0)}


@pytest.fixture(scope="module")
def engine(mm_artifacts):
    eng = litert_lm.Engine(str(mm_artifacts / BUNDLE_NAME), backend=litert_lm.Backend.CPU(),
                           vision_backend=litert_lm.Backend.CPU(), audio_backend=litert_lm.Backend.CPU(),
                           activation_data_type=litert_lm.ActivationDataType.FLOAT32)
    yield eng
    eng.close()


@pytest.fixture(scope="module")
def hf(tiny_ckpt):
    model = transformers.Gemma3nForConditionalGeneration.from_pretrained(tiny_ckpt).eval()
    return model, transformers.AutoProcessor.from_pretrained(tiny_ckpt)


def _hf_greedy(hf, content) -> list[int]:
    import sentencepiece as spm

    model, proc = hf
    vocab = spm.SentencePieceProcessor(model_file=str(proc.tokenizer.name_or_path + "/tokenizer.model")).get_piece_size()
    inputs = proc.apply_chat_template([{"role": "user", "content": content}], add_generation_prompt=True,
                                      tokenize=True, return_dict=True, return_tensors="pt")
    with torch.no_grad():  # the phone's output space: text ids only (HF's suppress_tokens for the rest)
        out = model.generate(**inputs, max_new_tokens=TOKENS, do_sample=False, eos_token_id=list(STOPS), pad_token_id=0,
                             suppress_tokens=list(range(vocab, model.config.text_config.vocab_size)))
    return [i for i in out[0, inputs["input_ids"].shape[1]:].tolist() if i not in STOPS]


def _engine_text(engine, items) -> str:
    from litert_lm import interfaces

    conv = engine.create_conversation(sampler_config=interfaces.SamplerConfig(top_k=1, top_p=1.0, temperature=1.0,
                                                                              seed=0), max_output_tokens=TOKENS)
    try:
        reply = conv.send_message({"role": "user", "content": items})
    finally:
        conv.close()
    content = reply["content"]
    return content if isinstance(content, str) else "".join(c.get("text", "") for c in content)


def _case(kind: str, path, question: str):
    if kind == "text":
        return [{"type": "text", "text": question}], [{"type": "text", "text": question}]
    if kind == "image":
        from PIL import Image

        hf_item = {"type": "image", "image": Image.open(path)}
    else:
        hf_item = {"type": "audio", "audio": sf.read(path, dtype="float32")[0]}
    return [hf_item, {"type": "text", "text": question}], [{"type": kind, "path": str(path)},
                                                           {"type": "text", "text": question}]


@pytest.mark.parametrize("name", ["text", "image", "audio2.5", "audio30"])
def test_engine_answers_what_hf_answers(name, media, engine, hf):
    kind = name.rstrip(".0123456789")
    hf_content, engine_content = _case(kind, media.get(name), "What is this?" if kind != "text" else "The quick fox")
    want = _hf_greedy(hf, hf_content)
    assert len(want) >= 8, want  # enough tokens to compare
    # The engine returns text: compare with its own detokenization of HF's ids.
    assert _engine_text(engine, engine_content) == engine.detokenize(want)


def test_audio_reaches_the_engines_answer(media, engine, hf):
    # Negative control: a different clip changes HF's answer, and the engine follows it.
    a = _engine_text(engine, _case("audio", media["audio2.5"], "What is this?")[1])
    b = _engine_text(engine, _case("audio", media["audio30"], "What is this?")[1])
    assert a != b


def test_the_bundle_says_which_runtime_and_precision_it_needs(mm_artifacts):
    from edge.format.litertlm import llm_metadata, read_bundle

    bundle = read_bundle(mm_artifacts / BUNDLE_NAME)
    md = llm_metadata(bundle)
    # Audio features through the generic model type's audio_* fields: runtime >= 0.14.0.
    assert md.min_runtime_version == "0.14.0"
    assert md.llm_model_type.WhichOneof("model_type") == "generic_model"
    g = md.llm_model_type.generic_model
    assert g.audio_mel_high_hz == pytest.approx(7600.0) and g.audio_input_scale == 1.0 and not g.audio_normalize_mel
    precision = {s.model_type: s.items.get("prefer_activation_type") for s in bundle.sections
                 if s.data_type == "TFLiteModel"}
    assert precision["prefill_decode"] == precision["vision_encoder"] == precision["audio_encoder_hw"] == "fp32"


def test_simulate_runtime_engine_says_what_the_simulator_says(mm_artifacts, media, capsys):
    from edge.cli import main

    answers = {}
    for runtime in ("simulator", "engine"):
        assert main(["simulate", str(mm_artifacts / BUNDLE_NAME), "--runtime", runtime, "--prompt", "What is this?",
                     "--audio", str(media["audio2.5"]), "--max-tokens", "12"]) == 0
        answers[runtime] = capsys.readouterr().out
    assert answers["engine"] == answers["simulator"] and answers["engine"].strip()
