"""Tiny Gemma 3n checkpoints: they load in transformers cleanly, generate, carry every
feature the exporters must handle, and are byte-for-byte reproducible on any machine."""

from __future__ import annotations

import hashlib
import json

import numpy as np
import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

from converters import tiny  # noqa: E402
from edge.errors import UserError  # noqa: E402

PROMPT = [2, 4, 372, 929, 940, 1003, 592, 327, 947, 414, 928, 949, 363, 581, 928, 935, 1019, 5, 940, 4]


def _load(ckpt):
    model, info = transformers.Gemma3nForConditionalGeneration.from_pretrained(ckpt, output_loading_info=True)
    return model.eval(), info


@pytest.fixture(scope="module")
def tiny_model(tiny_ckpt):
    return _load(tiny_ckpt)


@pytest.fixture(scope="module")
def e4b_model(tiny_e4b_ckpt):
    return _load(tiny_e4b_ckpt)


@pytest.fixture(params=["tiny", "tiny-e4b"])
def loaded(request):
    name = {"tiny": "tiny_model", "tiny-e4b": "e4b_model"}[request.param]
    return request.param, *request.getfixturevalue(name)


def _sha(path):
    return hashlib.sha256(path.read_bytes()).hexdigest()


# --- loading and generation --------------------------------------------------------------


def test_loads_with_no_missing_or_unexpected_keys(loaded):
    name, model, info = loaded
    assert not info["missing_keys"], info["missing_keys"]
    assert not info["unexpected_keys"], info["unexpected_keys"]
    assert not info["mismatched_keys"], info["mismatched_keys"]
    assert not info.get("error_msgs"), info.get("error_msgs")
    assert model.dtype == torch.float32
    # The tied head is the embedding, not a separately initialised matrix.
    assert model.lm_head.weight.data_ptr() == model.model.language_model.embed_tokens.weight.data_ptr()


def test_weights_are_small(tiny_ckpt, tiny_e4b_ckpt):
    assert (tiny_ckpt / "model.safetensors").stat().st_size < 6_000_000  # "well under ~10 MB"
    assert (tiny_e4b_ckpt / "model.safetensors").stat().st_size < 10_000_000


def test_greedy_generation(loaded):
    _, model, _ = loaded
    ids = torch.tensor([PROMPT])
    out = model.generate(input_ids=ids, max_new_tokens=6, min_new_tokens=6, do_sample=False)
    assert out.shape == (1, len(PROMPT) + 6)
    assert torch.equal(out[0, : len(PROMPT)], ids[0])
    assert int(out.max()) < model.config.text_config.vocab_size
    # Greedy decoding with the cache must equal argmax of a full forward (KV sharing, sliding
    # caches and all); the prompt (20) + 6 new tokens goes past the 12-token window.
    with torch.no_grad():
        full = model(input_ids=out[:, :-1]).logits[0, len(PROMPT) - 1 :].argmax(-1)
    assert torch.equal(full, out[0, len(PROMPT) :])


def test_logits_reach_the_softcap_range(tiny_model):
    model, _ = tiny_model
    with torch.no_grad():
        logits = model(input_ids=torch.tensor([PROMPT])).logits
    assert logits.abs().max() < 30.0  # capped by 30 * tanh(x / 30)
    # Uncapped logits differ from the capped ones by > 0.5 somewhere: a missing softcap shows.
    uncapped = 30.0 * torch.atanh(logits / 30.0)
    assert (uncapped - logits).abs().max() > 0.5


def test_image_and_audio_prompt_through_auto_processor(tiny_ckpt, tiny_model):
    from PIL import Image

    model, _ = tiny_model
    processor = transformers.AutoProcessor.from_pretrained(tiny_ckpt)
    image = Image.fromarray((np.random.RandomState(0).rand(120, 90, 3) * 255).astype(np.uint8))
    audio = (np.random.RandomState(1).randn(16_000) * 0.1).astype(np.float32)  # 1 s
    messages = [
        {
            "role": "user",
            "content": [
                {"type": "image", "image": image},
                {"type": "audio", "audio": audio},
                {"type": "text", "text": "What is this?"},
            ],
        }
    ]
    inputs = processor.apply_chat_template(
        messages, add_generation_prompt=True, tokenize=True, return_dict=True, return_tensors="pt"
    )
    ids = inputs["input_ids"][0]
    cfg = model.config
    assert int((ids == cfg.image_token_id).sum()) == cfg.vision_soft_tokens_per_image == 16
    assert int((ids == cfg.audio_token_id).sum()) == cfg.audio_soft_tokens_per_image == 188
    for token in (cfg.boi_token_id, cfg.eoi_token_id, cfg.boa_token_id, cfg.eoa_token_id):
        assert int((ids == token).sum()) == 1
    assert tuple(inputs["pixel_values"].shape) == (1, 3, tiny.IMAGE_SIZE, tiny.IMAGE_SIZE)
    assert 0.0 <= float(inputs["pixel_values"].min()) and float(inputs["pixel_values"].max()) <= 1.0
    out = model.generate(**inputs, max_new_tokens=3, min_new_tokens=3, do_sample=False)
    assert out.shape[1] == ids.shape[0] + 3
    # The image changes the answer's logits: the vision tower is wired in, not ignored.
    with torch.no_grad():
        a = model(**inputs).logits[0, -1]
        b = model(**{**inputs, "pixel_values": 1.0 - inputs["pixel_values"]}).logits[0, -1]
    assert (a - b).abs().max() > 1e-3


# --- config: every feature -------------------------------------------------------------


def test_tiny_config_has_every_feature(tiny_ckpt):
    cfg = transformers.AutoConfig.from_pretrained(tiny_ckpt)
    t = cfg.text_config
    types = t.layer_types
    assert types.count("sliding_attention") >= 2 and types.count("full_attention") >= 1
    modes = t.kv_sharing_modes
    first_shared = t.num_hidden_layers - t.num_kv_shared_layers
    assert t.num_kv_shared_layers > 0
    stores = {types[i]: i for i, m in enumerate(modes) if m == "store"}
    assert set(stores) == {"sliding_attention", "full_attention"}
    assert all(i < first_shared for i in stores.values())
    assert {types[i] for i in range(first_shared, t.num_hidden_layers)} == {"sliding_attention", "full_attention"}
    assert modes[first_shared:] == ["reuse"] * t.num_kv_shared_layers
    assert 0.95 in t.activation_sparsity_pattern and 0.0 in t.activation_sparsity_pattern
    assert t.altup_num_inputs == 4 and t.altup_correct_scale
    assert t.laurel_rank > 0
    assert 0 < t.hidden_size_per_layer_input <= 32
    assert len(set(t.intermediate_size)) > 1
    assert 8 <= t.sliding_window <= 16
    assert t.rope_parameters["sliding_attention"]["rope_theta"] == 1e4
    assert t.rope_parameters["full_attention"]["rope_theta"] == 1e6
    assert t.final_logit_softcapping == 30.0
    assert 64 <= t.hidden_size <= 128
    # Vision: the block kinds of mobilenetv5_300m_enc, MQA with and without kv_stride.
    blocks = [b for stage in cfg.vision_config.model_args["block_args"] for b in stage]
    assert {"er", "uir", "mqa"} <= {b["block_type"] for b in blocks}
    assert {b["kv_stride"] for b in blocks if b["block_type"] == "mqa"} == {1, 2}
    assert cfg.audio_config.conf_num_hidden_layers >= 1


def test_vision_and_audio_token_counts_match_the_towers(tiny_model):
    model, _ = tiny_model
    cfg = model.config
    assert type(model.model.vision_tower.timm_model.msfa).__name__ == "MobileNetV5MultiScaleFusionAdapter"
    pixels = torch.rand(1, 3, tiny.IMAGE_SIZE, tiny.IMAGE_SIZE)
    with torch.no_grad():
        image = model.model.get_image_features(pixels).pooler_output
    assert tuple(image.shape) == (1, cfg.vision_soft_tokens_per_image, cfg.text_config.hidden_size)
    # 30 s is where the feature extractor truncates: the encoder's longest output must fill
    # exactly the audio_soft_tokens_per_image placeholders the processor inserts.
    extractor = transformers.Gemma3nAudioFeatureExtractor()
    feats = extractor(np.random.RandomState(0).randn(16_000 * 31).astype(np.float32) * 0.1, return_tensors="pt")
    with torch.no_grad():
        audio = model.model.get_audio_features(feats["input_features"], ~feats["input_features_mask"]).pooler_output
    assert tuple(audio.shape) == (1, cfg.audio_soft_tokens_per_image, cfg.text_config.hidden_size)


def test_tiny_e4b_is_e4b_in_miniature(tiny_e4b_ckpt):
    cfg = transformers.AutoConfig.from_pretrained(tiny_e4b_ckpt)
    t = cfg.text_config
    preset = tiny.PRESETS["tiny-e4b"]
    assert t.num_hidden_layers == 15
    assert t.layer_types == ["full_attention" if (i + 1) % 5 == 0 else "sliding_attention" for i in range(15)]
    assert t.num_kv_shared_layers == 5
    modes = t.kv_sharing_modes
    assert [i for i, m in enumerate(modes) if m == "store"] == [8, 9]
    assert (t.layer_types[8], t.layer_types[9]) == ("sliding_attention", "full_attention")
    assert modes[10:] == ["reuse"] * 5
    # The E2B analog skips shared layers only (never a store layer), like E4B's 20-24.
    skipped = preset.e2b_layers_skipped
    assert skipped and min(skipped) >= 10 and set(skipped).isdisjoint({8, 9})
    assert t.activation_sparsity_pattern[:3] == [0.95] * 3 and t.activation_sparsity_pattern[-1] == 0.0
    assert all(w == 2 * preset.e2b_ffn_hidden_dim for w in t.intermediate_size)


# --- weights: perturbation reaches everything ---------------------------------------------


def test_every_parameter_is_perturbed(tiny_ckpt):
    from safetensors.torch import load_file

    state = load_file(tiny_ckpt / "model.safetensors")
    # Init constants (norms at 1, scales at 0, layer-scale at 1e-5) have zero spread;
    # after perturbation no tensor does.
    flat = [k for k, v in state.items() if v.numel() > 1 and float(v.float().std()) < 1e-3]
    assert not flat, flat
    assert all(v.dtype == torch.float32 for v in state.values())


def test_perturbation_reaches_ple_and_altup_correction(tiny_model):
    model, _ = tiny_model
    lm = model.model.language_model
    for layer in lm.layers:
        assert float(layer.altup.correct_output_scale.detach().abs().max()) > 0.01
    ids = torch.tensor([PROMPT])
    table = lm.embed_tokens_per_layer.weight
    saved = table.detach().clone()
    try:
        with torch.no_grad():
            base = model(input_ids=ids).logits
            table.zero_()
            no_ple = model(input_ids=ids).logits
    finally:
        with torch.no_grad():
            table.copy_(saved)
    # Random init would give exactly 0 here (correct_output_scale = 0 gates PLE off).
    assert float((no_ple - base).norm() / base.norm()) > 0.02


# --- vocabulary and tokenizer ----------------------------------------------------------


def _sp(ckpt):
    import sentencepiece as spm

    return spm.SentencePieceProcessor(model_file=str(ckpt / "tokenizer.model"))


def test_special_token_ids_agree_everywhere(tiny_ckpt):
    sp = _sp(tiny_ckpt)
    cfg = transformers.AutoConfig.from_pretrained(tiny_ckpt)
    t = cfg.text_config
    tok = transformers.AutoTokenizer.from_pretrained(tiny_ckpt)
    assert sp.get_piece_size() == t.vocab_size_per_layer_input == cfg.vision_config.vocab_offset == 1024
    assert (sp.pad_id(), sp.eos_id(), sp.bos_id(), sp.unk_id()) == (t.pad_token_id, t.eos_token_id, t.bos_token_id, 3)
    assert (t.pad_token_id, t.eos_token_id, t.bos_token_id) == (0, 1, 2)
    pieces = {
        "<start_of_turn>": 4,
        "<end_of_turn>": 5,
        "<start_of_image>": cfg.boi_token_id,
        "<start_of_audio>": cfg.boa_token_id,
    }
    for piece, i in pieces.items():
        assert sp.piece_to_id(piece) == i == tok.convert_tokens_to_ids(piece)
    assert cfg.eoi_token_id == cfg.vision_config.vocab_offset and cfg.image_token_id == cfg.eoi_token_id + 1
    assert cfg.eoa_token_id == cfg.audio_config.vocab_offset and cfg.audio_token_id == cfg.eoa_token_id + 1
    assert cfg.audio_config.vocab_offset == cfg.vision_config.vocab_offset + cfg.vision_config.vocab_size
    assert t.vocab_size == cfg.audio_config.vocab_offset + cfg.audio_config.vocab_size == len(tok)
    assert (tok.image_token_id, tok.audio_token_id) == (cfg.image_token_id, cfg.audio_token_id)
    assert tok.convert_tokens_to_ids([tok.boi_token, tok.eoi_token, tok.boa_token, tok.eoa_token]) == [
        cfg.boi_token_id, cfg.eoi_token_id, cfg.boa_token_id, cfg.eoa_token_id]
    assert (tok.bos_token_id, tok.eos_token_id, tok.pad_token_id) == (2, 1, 0)
    gen = json.loads((tiny_ckpt / "generation_config.json").read_text())
    assert gen["eos_token_id"] == [1, 5] and gen["bos_token_id"] == 2 and gen["pad_token_id"] == 0
    # special_tokens_map.json names the same tokens as tokenizer_config.json.
    stm = json.loads((tiny_ckpt / "special_tokens_map.json").read_text())
    assert all(tok.convert_tokens_to_ids(v) in range(len(tok)) for v in stm.values())


@pytest.mark.parametrize(
    "text",
    [
        "The quick brown fox jumps over the lazy dog.",
        "def f(x):\n\treturn x  +  12345 # tabs, runs of spaces, digits",
        "Café naïve — “quotes” 東京 🙂",  # byte fallback
        "<start_of_turn>user\nHi<end_of_turn>\n<start_of_turn>model\n",
        "a <start_of_image> b <start_of_audio>\n\n",
    ],
)
def test_hf_tokenizer_matches_sentencepiece(tiny_ckpt, text):
    sp = _sp(tiny_ckpt)
    tok = transformers.AutoTokenizer.from_pretrained(tiny_ckpt)
    ids = sp.encode(text)
    assert tok(text, add_special_tokens=False).input_ids == ids
    assert sp.decode(ids) == text and tok.decode(ids) == text


def test_english_tokenizes_compactly(tiny_ckpt):
    text = "The function returns a list of the values in the dictionary."
    ids = _sp(tiny_ckpt).encode(text)
    assert len(ids) < len(text) / 2.5  # merges, not bytes: "big enough for English"
    assert all(i > 264 for i in ids)  # 9..264 are the byte-fallback pieces


def test_chat_template_is_gemmas(tiny_ckpt):
    tok = transformers.AutoTokenizer.from_pretrained(tiny_ckpt)
    messages = [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": " Hi "},
        {"role": "assistant", "content": "Hello."},
        {"role": "user", "content": "Bye"},
    ]
    text = tok.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    assert text == (
        "<bos><start_of_turn>user\nBe brief.\n\nHi<end_of_turn>\n"
        "<start_of_turn>model\nHello.<end_of_turn>\n"
        "<start_of_turn>user\nBye<end_of_turn>\n<start_of_turn>model\n"
    )
    assert json.loads((tiny_ckpt / "tokenizer_config.json").read_text())["chat_template"] == tiny.CHAT_TEMPLATE
    assert (tiny_ckpt / "chat_template.jinja").read_text() == tiny.CHAT_TEMPLATE


def test_preprocessor_config_has_image_and_audio(tiny_ckpt):
    pre = json.loads((tiny_ckpt / "preprocessor_config.json").read_text())
    assert pre["size"] == {"height": tiny.IMAGE_SIZE, "width": tiny.IMAGE_SIZE} and pre["do_normalize"] is False
    assert pre["feature_size"] == 128 and pre["sampling_rate"] == 16_000 and pre["hop_length"] == 160
    proc = json.loads((tiny_ckpt / "processor_config.json").read_text())
    assert (proc["image_seq_length"], proc["audio_seq_length"]) == (16, 188)


# --- determinism, CLI, errors ------------------------------------------------------------


def _tensor_digest(path) -> str:
    """sha256 of every tensor's name, dtype, shape and bytes (not of the file: its header layout
    belongs to the safetensors writer, the values to our generator)."""
    from safetensors.numpy import load_file

    h = hashlib.sha256()
    for name, value in sorted(load_file(path).items()):
        h.update(f"{name}|{value.dtype}|{value.shape}|".encode())
        h.update(value.tobytes())
    return h.hexdigest()


# The generator's values, recorded when it was written. They hold on every machine: the values
# come from PCG64's raw integer stream, integer sums and IEEE multiplies (converters/tiny.py
# `_draw`), with no torch RNG, no libm call and no reduction. If the generator is changed on
# purpose, update these and regenerate converters/data/tiny_trained (tools/train_tiny.py),
# whose frozen towers must equal the preset's (test_trained_tiny.py).
RECORDED_WEIGHTS = {
    "tiny": "902be5977266031547409ae92d1ad3945c60a1f42ba8acd5f30a200f9d0c2ceb",
    "tiny-e4b": "f238b5e7c59d87feaeeb63e5f8ed0646f1603e7ddb2eefcf6c08a1fbc4ee706f",
}


def test_weights_are_the_recorded_values(tiny_ckpt, tiny_e4b_ckpt):
    for preset, ckpt in (("tiny", tiny_ckpt), ("tiny-e4b", tiny_e4b_ckpt)):
        assert _tensor_digest(ckpt / "model.safetensors") == RECORDED_WEIGHTS[preset], preset


def test_same_bytes_in_fresh_processes_and_thread_counts(tmp_path, tiny_ckpt):
    import os
    import subprocess
    import sys

    script = "import sys; from converters.tiny import make_tiny_checkpoint; make_tiny_checkpoint(sys.argv[1])"
    runs = {}
    for threads in ("1", "2"):  # both at once: two fresh interpreters, different thread counts
        env = dict(os.environ, OMP_NUM_THREADS=threads, MKL_NUM_THREADS=threads)
        runs[threads] = subprocess.Popen([sys.executable, "-c", script, str(tmp_path / threads)], env=env,
                                         stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    for threads, proc in runs.items():
        out, _ = proc.communicate(timeout=300)
        assert proc.returncode == 0, out
    names = sorted(p.name for p in tiny_ckpt.iterdir())
    want = {n: _sha(tiny_ckpt / n) for n in names}
    for threads in runs:
        assert {n: _sha(tmp_path / threads / n) for n in names} == want, f"OMP_NUM_THREADS={threads}"


def test_another_seed_gives_other_weights_same_vocabulary(tmp_path, tiny_ckpt):
    other = tiny.make_tiny_checkpoint(tmp_path / "other", seed=1, preset="tiny")
    assert _sha(other / "model.safetensors") != _sha(tiny_ckpt / "model.safetensors")
    assert _sha(other / "tokenizer.model") == _sha(tiny_ckpt / "tokenizer.model")  # vocabulary is seed-free


def test_cli_writes_checkpoint(tmp_path, tiny_e4b_ckpt, capsys):
    import importlib.util
    from pathlib import Path

    script = Path(__file__).parents[1] / "tools" / "make_tiny_checkpoint.py"
    spec = importlib.util.spec_from_file_location("make_tiny_checkpoint", script)
    cli = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(cli)
    out = tmp_path / "cli"
    assert cli.main(["--out", str(out), "--preset", "tiny-e4b"]) == 0
    assert capsys.readouterr().out.strip() == str(out)
    assert _sha(out / "model.safetensors") == _sha(tiny_e4b_ckpt / "model.safetensors")
    with pytest.raises(SystemExit):
        cli.main(["--out", str(out), "--preset", "huge"])
    assert cli.main(["--out", str(tmp_path / "neg"), "--seed", "-1"]) == 2
    assert "non-negative" in capsys.readouterr().err


def test_bad_inputs_are_user_errors(tmp_path):
    with pytest.raises(UserError, match="unknown tiny preset 'e9b'"):
        tiny.make_tiny_checkpoint(tmp_path / "x", preset="e9b")
    (tmp_path / "file").write_text("")
    with pytest.raises(UserError, match="not a directory"):
        tiny.make_tiny_checkpoint(tmp_path / "file")
    with pytest.raises(UserError, match="non-negative"):
        tiny.make_tiny_checkpoint(tmp_path / "y", seed=-1)
