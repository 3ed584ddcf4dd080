"""Tiny Gemma 3n checkpoints in the Hugging Face layout, made on the spot in a few seconds.

They stand in for E2B/E4B in every parity test: same classes, same files, every
architectural feature, a few MB of fp32. Two presets:

- ``tiny``: text + vision + audio. 6 decoder layers, period 3 (sliding, sliding, full),
  the last 3 layers KV-shared (store layers 1 = sliding and 2 = full, as E2B's 18/19),
  activation sparsity 0.95 on layers 0-2, AltUp (4 streams), LAuReL, PLE (16 per layer),
  per-layer FFN widths that all differ, sliding window 12, rope 1e4/1e6, softcap 30.
  Vision: a MobileNetV5 encoder with the block kinds of ``mobilenetv5_300m_enc`` (ER,
  UIR, MQA with kv_stride 2 and 1, MSFA), 192 px in, 4x4 = 16 soft tokens out (MSFA
  avg-pools its 12x12 map by 3, as the real one pools 48x48 to 16x16). Audio: a 2-block
  USM conformer (hidden 32) with the real SSCP strides, chunking and reduction, so 30 s
  of audio (the feature extractor's truncation) gives 188 soft tokens, as in E2B.
- ``tiny-e4b``: E4B in miniature for MatFormer slicing: 15 layers, full attention where
  (i+1) % 5 == 0, the last 5 KV-shared (store layers 8 = sliding, 9 = full), sparsity on
  layers 0-4, FFN 256 everywhere. Its E2B analog (``e2b_layers_skipped`` 10-12, FFN 128)
  skips the first shared sliding layers, as E2B skips 20-24 of E4B; 12 layers and
  2 shared layers remain. Same towers and vocabulary as ``tiny``.

Vocabulary (both presets), mirroring the real layout at 1/256 scale:
text 0..1023 from a SentencePiece BPE model (byte fallback) trained on Python's
``pydoc_data.topics`` (so it is fixed per Python minor version): pad 0, eos 1, bos 2,
unk 3, <start_of_turn> 4, <end_of_turn> 5, <start_of_image> (boi) 6,
<start_of_audio> (boa) 7, <mask> 8; vision 1024..1039 (eoi 1024 = vision offset, image
soft token 1025); audio 1040..1055 (eoa 1040 = audio offset, audio soft token 1041);
vocab_size 1056, vocab_size_per_layer_input 1024. Ids >= 1024 exist only in the HF
tokenizer (added tokens), as in the real checkpoint.

Weights: transformers' init, then every parameter is perturbed (random init leaves
``altup.correct_output_scale`` at 0 and norms at 1, which hides PLE and the AltUp
correction; see GEMMA3N.md). The values come from a platform-independent integer generator
(`_draw`), not torch's RNG, so a seed gives the same bytes on every machine and thread count.
Mirrors transformers 5.23 ``models/gemma3n``.
"""

from __future__ import annotations

import copy
import io
import json
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from edge.errors import UserError
from edge.fileio import atomic_write

# --- vocabulary layout (ids shared by config.json, the tokenizer files and tokenizer.model)
TEXT_VOCAB = 1024  # SentencePiece pieces; also vocab_size_per_layer_input (PLE rows)
VISION_VOCAB = 16  # smaller than the real 128: only eoi, the soft token and reserved ids
AUDIO_VOCAB = 16
PAD_ID, EOS_ID, BOS_ID, UNK_ID = 0, 1, 2, 3
# SentencePiece user-defined symbols take the ids right after the four control pieces.
SP_USER_SYMBOLS = ("<start_of_turn>", "<end_of_turn>", "<start_of_image>", "<start_of_audio>", "<mask>")
START_OF_TURN_ID, END_OF_TURN_ID, BOI_ID, BOA_ID, MASK_ID = range(4, 4 + len(SP_USER_SYMBOLS))
EOI_ID = TEXT_VOCAB  # = vision vocab_offset
IMAGE_TOKEN_ID = EOI_ID + 1
EOA_ID = TEXT_VOCAB + VISION_VOCAB  # = audio vocab_offset
AUDIO_TOKEN_ID = EOA_ID + 1
VOCAB_SIZE = TEXT_VOCAB + VISION_VOCAB + AUDIO_VOCAB

# HF attribute name -> token text, as transformers' Gemma 3n conversion names them.
MULTIMODAL_TOKENS = {
    "image_token": "<image_soft_token>",
    "boi_token": "<start_of_image>",
    "eoi_token": "<end_of_image>",
    "audio_token": "<audio_soft_token>",
    "boa_token": "<start_of_audio>",
    "eoa_token": "<end_of_audio>",
}

# --- towers (shared by both presets)
IMAGE_SIZE = 192  # 192 -> stem /2 -> 4 stride-2 stages -> 12x12 and 6x6 maps into the MSFA
MSFA_RESOLUTION = 4  # MSFA output is 4x4: 16 soft tokens per image
VISION_SOFT_TOKENS = MSFA_RESOLUTION**2
VISION_WIDTH = 2048  # timm's MobileNetV5Encoder hard-codes its MSFA output width
# mobilenetv5_300m_enc's stages in miniature: ER stem stage, UIR with/without depthwise
# convs, then MQA (kv_stride 2 in stage 2, 1 in stage 3) interleaved with UIR, as the real one.
VISION_ARCH = (
    ("er_r1_k3_s2_e4_c16", "er_r1_k3_s1_e4_c16"),
    ("uir_r1_a3_k5_s2_e6_c24", "uir_r1_a5_k0_s1_e4_c24"),
    ("uir_r1_a5_k5_s2_e6_c32", "uir_r1_a0_k0_s1_e1_c32", "mqa_r1_k3_h2_v2_s1_d16_c32", "uir_r1_a0_k0_s1_e2_c32"),
    ("uir_r1_a5_k5_s2_e6_c48", "mqa_r1_k3_h2_s1_d16_c48", "uir_r1_a0_k0_s1_e2_c48"),
)
VISION_STEM = 16
# Audio: 30 s (the extractor's max_length) = 2997 mel frames -> SSCP /4 -> 750 -> keep every
# 4th -> 188 soft tokens, exactly as E2B; only widths and depth shrink.
AUDIO_SOFT_TOKENS = 188
AUDIO = dict(
    hidden_size=32,
    conf_num_attention_heads=4,
    conf_num_hidden_layers=2,
    sscp_conv_channel_size=[16, 8],
)

INIT_STD = 0.02  # transformers' Gemma 3n init: N(0, initializer_range) for every matrix, towers included
PERTURB_STD = 0.05  # additive noise floor; wakes zero-initialised scales (correct_output_scale)
PERTURB_REL = 0.25  # plus a share of each tensor's RMS, so unit norms move by ~25% too
# Final-norm gain: random weights give logits of std ~0.5, where 30*tanh(x/30) is the
# identity to 1e-3; x8 brings them to |x| ~ 10-20, where a missing softcap shows.
FINAL_NORM_GAIN = 8.0


@dataclass(frozen=True)
class TinyPreset:
    """What differs between presets: the text decoder (Gemma3nTextConfig field names)."""

    description: str
    num_hidden_layers: int
    layer_types: tuple[str, ...]
    num_kv_shared_layers: int
    intermediate_size: tuple[int, ...]
    activation_sparsity_pattern: tuple[float, ...]
    hidden_size: int = 64
    num_attention_heads: int = 4
    num_key_value_heads: int = 2
    # heads * head_dim (128) != hidden (64) on purpose: code that derives head_dim from
    # hidden_size fails loudly here instead of silently on a real checkpoint.
    head_dim: int = 32
    hidden_size_per_layer_input: int = 16
    laurel_rank: int = 8
    altup_num_inputs: int = 4
    sliding_window: int = 12  # small, so tests go past it with short prompts
    # MatFormer: layers an E2B-style slice of this preset skips, and its FFN width.
    e2b_layers_skipped: tuple[int, ...] = ()
    e2b_ffn_hidden_dim: int | None = None

    def text_config(self) -> dict[str, Any]:
        """Gemma3nTextConfig kwargs."""
        return dict(
            vocab_size=VOCAB_SIZE,
            vocab_size_per_layer_input=TEXT_VOCAB,
            hidden_size=self.hidden_size,
            intermediate_size=list(self.intermediate_size),
            num_hidden_layers=self.num_hidden_layers,
            num_attention_heads=self.num_attention_heads,
            num_key_value_heads=self.num_key_value_heads,
            head_dim=self.head_dim,
            layer_types=list(self.layer_types),
            sliding_window=self.sliding_window,
            num_kv_shared_layers=self.num_kv_shared_layers,
            activation_sparsity_pattern=[float(x) for x in self.activation_sparsity_pattern],
            hidden_size_per_layer_input=self.hidden_size_per_layer_input,
            laurel_rank=self.laurel_rank,
            altup_num_inputs=self.altup_num_inputs,
            rope_parameters={
                "sliding_attention": {"rope_type": "default", "rope_theta": 10_000.0},
                "full_attention": {"rope_type": "default", "rope_theta": 1_000_000.0},
            },
            final_logit_softcapping=30.0,
            pad_token_id=PAD_ID,
            eos_token_id=EOS_ID,
            bos_token_id=BOS_ID,
        )


def _period(n: int, p: int) -> tuple[str, ...]:
    # Gemma 3n's rule with period p: full attention where (i+1) % p == 0.
    return tuple("full_attention" if (i + 1) % p == 0 else "sliding_attention" for i in range(n))


PRESETS: dict[str, TinyPreset] = {
    "tiny": TinyPreset(
        description="every feature, text + vision + audio, 6 layers",
        num_hidden_layers=6,
        layer_types=_period(6, 3),
        num_kv_shared_layers=3,
        intermediate_size=(128, 192, 160, 224, 96, 256),
        activation_sparsity_pattern=(0.95, 0.95, 0.95, 0.0, 0.0, 0.0),
    ),
    "tiny-e4b": TinyPreset(
        description="E4B in miniature for MatFormer slicing, 15 layers",
        num_hidden_layers=15,
        layer_types=_period(15, 5),
        num_kv_shared_layers=5,
        intermediate_size=(256,) * 15,
        activation_sparsity_pattern=(0.95,) * 5 + (0.0,) * 10,
        e2b_layers_skipped=(10, 11, 12),
        e2b_ffn_hidden_dim=128,
    ),
}

# Gemma's chat format: bos, a system message folded into the first user turn, "assistant"
# spoken as "model", image/audio items as one placeholder each (the processor expands them).
CHAT_TEMPLATE = r"""{{- bos_token -}}
{%- if messages and messages[0]['role'] == 'system' -%}
  {%- if messages[0]['content'] is string -%}
    {%- set first_prefix = messages[0]['content'] ~ '\n\n' -%}
  {%- else -%}
    {%- set first_prefix = messages[0]['content'][0]['text'] ~ '\n\n' -%}
  {%- endif -%}
  {%- set turns = messages[1:] -%}
{%- else -%}
  {%- set first_prefix = '' -%}
  {%- set turns = messages -%}
{%- endif -%}
{%- for message in turns -%}
  {%- if (message['role'] == 'user') != (loop.index0 % 2 == 0) -%}
    {{- raise_exception('Conversation roles must alternate user/assistant/user/assistant/...') -}}
  {%- endif -%}
  {%- set role = 'model' if message['role'] == 'assistant' else message['role'] -%}
  {{- '<start_of_turn>' ~ role ~ '\n' ~ (first_prefix if loop.first else '') -}}
  {%- if message['content'] is string -%}
    {{- message['content'] | trim -}}
  {%- else -%}
    {%- for item in message['content'] -%}
      {%- if item['type'] == 'image' -%}
        {{- '<image_soft_token>' -}}
      {%- elif item['type'] == 'audio' -%}
        {{- '<audio_soft_token>' -}}
      {%- elif item['type'] == 'text' -%}
        {{- item['text'] | trim -}}
      {%- endif -%}
    {%- endfor -%}
  {%- endif -%}
  {{- '<end_of_turn>\n' -}}
{%- endfor -%}
{%- if add_generation_prompt -%}
  {{- '<start_of_turn>model\n' -}}
{%- endif -%}
"""


def get_preset(preset: str | TinyPreset) -> TinyPreset:
    """The preset named `preset` (or `preset` itself); a clear error for unknown names."""
    if isinstance(preset, TinyPreset):
        return preset
    if preset not in PRESETS:
        raise UserError(f"unknown tiny preset {preset!r}: choose one of {', '.join(sorted(PRESETS))}")
    return PRESETS[preset]


def vision_block_args() -> list[list[dict[str, Any]]]:
    """A fresh decoded copy of VISION_ARCH (timm pops keys from block args while building)."""
    from timm.models._efficientnet_builder import decode_arch_def

    return decode_arch_def([list(stage) for stage in VISION_ARCH])


def tiny_config(preset: str | TinyPreset = "tiny"):
    """The `transformers.Gemma3nConfig` of a preset (fp32)."""
    import torch
    from transformers import Gemma3nConfig

    p = get_preset(preset)
    vision = dict(
        architecture="mobilenetv5_300m_enc",
        model_args=dict(block_args=vision_block_args(), stem_size=VISION_STEM, msfa_output_resolution=MSFA_RESOLUTION),
        hidden_size=VISION_WIDTH,
        vocab_size=VISION_VOCAB,
        vocab_offset=TEXT_VOCAB,
    )
    audio = dict(AUDIO, vocab_size=AUDIO_VOCAB, vocab_offset=TEXT_VOCAB + VISION_VOCAB)
    config = Gemma3nConfig(
        text_config=p.text_config(),
        vision_config=vision,
        audio_config=audio,
        audio_soft_tokens_per_image=AUDIO_SOFT_TOKENS,
        vision_soft_tokens_per_image=VISION_SOFT_TOKENS,
        boi_token_id=BOI_ID,
        eoi_token_id=EOI_ID,
        image_token_id=IMAGE_TOKEN_ID,
        boa_token_id=BOA_ID,
        eoa_token_id=EOA_ID,
        audio_token_id=AUDIO_TOKEN_ID,
    )
    config.dtype = torch.float32
    return config


def make_tiny_checkpoint(out_dir: str | os.PathLike, seed: int = 0, preset: str = "tiny") -> Path:
    """Write a tiny Gemma 3n checkpoint (HF layout) into `out_dir` and return `out_dir`.

    Deterministic: the same seed and preset give the same bytes in every file, on any machine
    and thread count (the weights come from `_draw`; the tokenizer trains on one thread).
    """
    p = get_preset(preset)
    if not isinstance(seed, int) or seed < 0:
        raise UserError(f"seed must be a non-negative integer, got {seed!r}")
    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise UserError(f"{out} exists and is not a directory: pass a new or existing directory as --out")
    out.mkdir(parents=True, exist_ok=True)
    config = tiny_config(p)
    files: dict[str, bytes] = {}
    # Serialised before any model is built: timm mutates model_args while building.
    files["config.json"] = config.to_json_string().encode()
    files["model.safetensors"] = _weights(config, seed)
    files["generation_config.json"] = _generation_config()
    files.update(_tokenizer_files())
    for name, data in sorted(files.items()):
        atomic_write(out / name, data)
    return out


# --- weights ---------------------------------------------------------------------------


def _weights(config, seed: int) -> bytes:
    """model.safetensors: the model's parameter names and shapes, values from `seed` alone.

    torch's seeded init is not bit-identical across CPUs (vectorised normal sampling, kernel
    dispatch), so torch only says *which* parameters its init leaves constant (norm weights
    1, biases 0, layer scales 1e-5: exact fills on any machine) and with what value; every
    value is then drawn by `_draw`, which uses integer arithmetic and one float multiply.
    """
    import numpy as np
    import torch
    from safetensors.numpy import save

    from transformers import Gemma3nForConditionalGeneration

    with torch.random.fork_rng(devices=[]):  # the init's values are discarded; keep the caller's RNG
        model = Gemma3nForConditionalGeneration(copy.deepcopy(config)).eval()
    tied = {"lm_head.weight"}  # tied to embed_tokens; the real checkpoint does not store it either
    final_norm = "model.language_model.norm.weight"
    state = {}
    for name, param in sorted(model.state_dict().items()):
        if name in tied:
            continue
        init = param.detach().to(torch.float32).numpy()
        flat = init.reshape(-1)
        fill = float(flat[0]) if (flat == flat[0]).all() else None  # random init never repeats one value
        values = perturbed(name, init.shape, fill, seed)
        if name == final_norm:
            values = values * np.float32(FINAL_NORM_GAIN)
        state[name] = values
    return save(state, metadata={"format": "pt"})


def perturbed(name: str, shape: tuple[int, ...], fill: float | None, seed: int):
    """fp32 values of parameter `name`: its init (`fill`, or N(0, INIT_STD) where the init is
    random) plus the perturbation N(0, PERTURB_STD + PERTURB_REL * rms(init)), drawn together."""
    import math

    rms = INIT_STD if fill is None else abs(fill)
    noise = PERTURB_STD + PERTURB_REL * rms
    std = math.hypot(INIT_STD, noise) if fill is None else noise
    return (_draw(name, shape, seed) * std + (fill or 0.0)).astype("float32")


def _draw(name: str, shape: tuple[int, ...], seed: int):
    """Approximately standard normal float64 values, the same bytes on every machine.

    PCG64's raw 64-bit outputs (a fixed integer recurrence, stable across numpy releases,
    unlike Generator.normal) split into four 16-bit uniforms whose sum (Irwin-Hall, n=4) is
    centred and scaled: integer operations, then one exact int->float conversion and one
    IEEE multiply. Each parameter has its own stream, keyed by its name.
    """
    import hashlib
    import math

    import numpy as np

    n = math.prod(shape)
    key = int.from_bytes(hashlib.sha256(name.encode()).digest()[:8], "little")
    raw = np.random.PCG64([seed, key]).random_raw(n)
    parts = raw.view(np.uint16).reshape(n, 4).astype(np.int64)  # bytes as stored: little-endian on x86/ARM
    total = parts.sum(axis=1) - 2 * 65535  # sum of four U{0..65535}, centred: exact in int64
    scale = 1.0 / math.sqrt(4 * (65536**2 - 1) / 12)  # 1 / std of that sum
    return (total.astype(np.float64) * scale).reshape(shape)


def _generation_config() -> bytes:
    # As the instruction-tuned checkpoints: stop on <eos> or <end_of_turn>, Gemma's sampler.
    cfg = dict(
        bos_token_id=BOS_ID,
        pad_token_id=PAD_ID,
        eos_token_id=[EOS_ID, END_OF_TURN_ID],
        do_sample=True,
        temperature=1.0,
        top_k=64,
        top_p=0.95,
    )
    return _json(cfg)


# --- tokenizer and processor -----------------------------------------------------------


def train_sentencepiece() -> bytes:
    """The serialized SentencePiece BPE model (TEXT_VOCAB pieces), Gemma's normalisation."""
    import sentencepiece as spm
    from pydoc_data import topics

    paragraphs = [para for key in sorted(topics.topics) for para in topics.topics[key].split("\n\n") if para.strip()]
    buf = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(paragraphs),
        model_writer=buf,
        model_type="bpe",
        vocab_size=TEXT_VOCAB,
        pad_id=PAD_ID,
        eos_id=EOS_ID,
        bos_id=BOS_ID,
        unk_id=UNK_ID,
        pad_piece="<pad>",
        eos_piece="<eos>",
        bos_piece="<bos>",
        unk_piece="<unk>",
        user_defined_symbols=list(SP_USER_SYMBOLS),
        # Gemma's spec: bytes for anything unseen, digits split, spaces kept verbatim.
        byte_fallback=True,
        split_digits=True,
        add_dummy_prefix=False,
        remove_extra_whitespaces=False,
        normalization_rule_name="identity",
        allow_whitespace_only_pieces=True,
        character_coverage=1.0,
        max_sentence_length=1 << 16,
        shuffle_input_sentence=False,
        num_threads=1,  # one thread: the merge order, hence the model, is reproducible
        minloglevel=2,
    )
    return buf.getvalue()


def _hf_added_tokens() -> dict[int, str]:
    """Ids past the SentencePiece vocabulary: the vision and audio ranges, every id named."""
    tokens = {}
    for offset, size, end, soft, tag in (
        (EOI_ID, VISION_VOCAB, "<end_of_image>", "<image_soft_token>", "image"),
        (EOA_ID, AUDIO_VOCAB, "<end_of_audio>", "<audio_soft_token>", "audio"),
    ):
        tokens[offset] = end
        tokens[offset + 1] = soft
        for i in range(2, size):
            tokens[offset + i] = f"<unused_{tag}_{i}>"
    return tokens


def _tokenizer_files() -> dict[str, bytes]:
    """tokenizer.model, tokenizer.json/_config.json, special_tokens_map.json, processor configs."""
    from tokenizers import AddedToken
    from transformers import Gemma3nAudioFeatureExtractor, GemmaTokenizer, SiglipImageProcessor
    from transformers.image_utils import PILImageResampling

    sp_model = train_sentencepiece()
    with tempfile.TemporaryDirectory() as tmp:
        Path(tmp, "tokenizer.model").write_bytes(sp_model)
        tok = GemmaTokenizer.from_pretrained(tmp, add_bos_token=True)
        added = _hf_added_tokens()
        new = [AddedToken(text, special=True, normalized=False) for _, text in sorted(added.items())]
        tok.add_tokens(new, special_tokens=True)
        got = {i: tok.convert_ids_to_tokens(i) for i in added}
        if got != added:  # the HF tokenizer appends; a gap here would shift every id
            raise RuntimeError(f"added tokens landed on the wrong ids: {got}")
        tokenizer_json = tok.backend_tokenizer.to_str(pretty=True).encode()

    specials = dict(bos_token="<bos>", eos_token="<eos>", unk_token="<unk>", pad_token="<pad>", mask_token="<mask>")
    tokenizer_config = dict(
        tokenizer_class="GemmaTokenizer",
        processor_class="Gemma3nProcessor",
        add_bos_token=True,
        add_eos_token=False,
        padding_side="left",
        clean_up_tokenization_spaces=False,
        spaces_between_special_tokens=False,
        model_max_length=32768,
        **specials,
        **MULTIMODAL_TOKENS,
        extra_special_tokens=MULTIMODAL_TOKENS,
        chat_template=CHAT_TEMPLATE,
    )
    image = SiglipImageProcessor(
        size={"height": IMAGE_SIZE, "width": IMAGE_SIZE},
        resample=PILImageResampling.BILINEAR,
        do_normalize=False,  # the encoder takes [0, 1] pixels, as the real checkpoint's config
        image_mean=(0.5,) * 3,
        image_std=(0.5,) * 3,
    )
    audio = Gemma3nAudioFeatureExtractor()  # class defaults = the real extractor (GEMMA3N.md)
    # The real checkpoint keeps both extractors' settings in one preprocessor_config.json.
    preprocessor = {**json.loads(audio.to_json_string()), **json.loads(image.to_json_string())}
    preprocessor["processor_class"] = "Gemma3nProcessor"
    processor = dict(
        processor_class="Gemma3nProcessor",
        audio_seq_length=AUDIO_SOFT_TOKENS,
        image_seq_length=VISION_SOFT_TOKENS,
    )
    return {
        "tokenizer.model": sp_model,
        "tokenizer.json": tokenizer_json,
        "tokenizer_config.json": _json(tokenizer_config),
        "special_tokens_map.json": _json({**specials, **MULTIMODAL_TOKENS}),
        "preprocessor_config.json": _json(preprocessor),
        "processor_config.json": _json(processor),
        "chat_template.jinja": CHAT_TEMPLATE.encode(),
    }


def _json(obj: Any) -> bytes:
    return (json.dumps(obj, indent=2, sort_keys=True, ensure_ascii=False) + "\n").encode()
