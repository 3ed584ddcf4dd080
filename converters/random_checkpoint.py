"""Full-size Gemma 3n checkpoints with random weights, written shard by shard (never in memory).

Real E2B/E4B weights cannot be downloaded here, but what a build or a benchmark costs depends on
shapes, not values: this writes a checkpoint with Google's exact layout and shapes so that every
stage meets its real-size problem (a 4 GB PLE table, a 1 GB tied embedding, 30-35 layers, the
timm MobileNetV5 and the USM conformer towers).

- config.json: our config dataclasses (`Gemma3nConfig`, E4B defaults; E2B = 30 layers, FFN 8192,
  10 KV-shared layers, which equals the E4B config sliced with the published E2B preset),
  `dtype` bfloat16.
- Weights: every tensor transformers' `Gemma3nForConditionalGeneration.state_dict()` holds
  (`checkpoint.expected_tensors`, tied lm_head left out as in the releases), bf16, generated
  one row block at a time straight into the shard file: N(0, 0.02) for matrices, biases and
  scales, 1 + N(0, 0.02) for norm weights (Gemma 3n's RMSNorm multiplies by `weight`, and timm's
  norms too), so activations stay finite through 35 layers. Each tensor has its own seeded
  generator (seed, crc32 of its name): a tensor's values do not depend on the sharding.
- Shards: `model-0000i-of-0000n.safetensors`, at most `max_shard_bytes` (2 GB) each, filled in
  state-dict order; a tensor larger than that (the PLE table) gets a shard of its own, as
  transformers' save_pretrained does. `model.safetensors.index.json` is written last, so a
  half-written directory is never mistaken for a checkpoint.
- Tokenizer: a SentencePiece BPE ModelProto with the real vocabulary size (262144 pieces),
  built programmatically (training one that large would take hours): the control and special
  pieces at Gemma's ids (pad 0, eos 1, bos 2, unk 3, <mask> 4, <start_of_turn> 105,
  <end_of_turn> 106, <start_of_image> 255999, <start_of_audio> 256000), 256 byte-fallback
  pieces, single characters, then filler pieces (letter strings, shortest first, so BPE merges
  reach all of them). Ids >= 262144 (vision/audio) are added tokens of the HF tokenizer only,
  as in the real checkpoint. Plus tokenizer_config.json, special_tokens_map.json,
  preprocessor_config.json (real 768 px images, the class-default audio extractor),
  processor_config.json, generation_config.json, chat_template.jinja.
"""

from __future__ import annotations

import itertools
import json
import os
import string
import struct
import time
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from edge.errors import UserError
from edge.fileio import atomic_write

SHAPES = ("E4B", "E2B")
DEFAULT_MAX_SHARD_BYTES = 2_000_000_000  # transformers' "2GB" (decimal)
DEFAULT_BLOCK_BYTES = 32 << 20  # float32 bytes generated at once: the writer's working memory
WEIGHT_STD = 0.02  # the models' initializer_range
INDEX_FILE = "model.safetensors.index.json"

# Gemma's tokenizer layout (ids the configs and the chat template rely on).
PAD_ID, EOS_ID, BOS_ID, UNK_ID, MASK_ID = 0, 1, 2, 3, 4
START_OF_TURN_ID, END_OF_TURN_ID = 105, 106
BOI_ID, BOA_ID = 255_999, 256_000
TEXT_VOCAB = 262_144
IMAGE_SIZE = 768  # mobilenetv5_300m_enc's input (GEMMA3N.md)


class RandomCheckpointError(UserError):
    """A bad request for a random checkpoint (unknown shape, unusable output directory)."""


# ----------------------------------------------------------------------------- configs


def shape_config(shape: str, layers: int | None = None):
    """The `Gemma3nConfig` of a published size: E4B (the defaults) or E2B; `layers` keeps the
    widths with fewer decoder layers (the KV-shared tail in proportion), for tools whose peers
    cannot hold the full size."""

    from converters.gemma3n.config import Gemma3nConfig, TextConfig

    if shape == "E4B":
        text = TextConfig()
    elif shape == "E2B":
        # Google's E2B config.json: 30 layers of FFN 8192, the last 10 KV-shared; layer types and
        # sparsity follow the HF rules (full every 5th layer, the first 10 layers sparse).
        text = TextConfig(num_hidden_layers=30, intermediate_size=8192, num_kv_shared_layers=10)
    else:
        raise RandomCheckpointError(f"unknown shape {shape!r}: choose one of {', '.join(SHAPES)}")
    if layers is not None:
        if not 1 <= layers <= text.num_hidden_layers:
            raise RandomCheckpointError(f"--layers {layers}: {shape} has 1 to {text.num_hidden_layers} layers")
        text = _fewer_layers(text, layers)
    return Gemma3nConfig(text=text, dtype="bfloat16")


def _fewer_layers(text, layers: int):
    """The same widths with `layers` layers: the KV-shared tail in proportion, shortened until every
    shared layer has an earlier layer of its type to read (a short stack may share none)."""
    from converters.gemma3n.config import TextConfig
    from converters.gemma3n.config_fields import ConfigError

    shared = text.num_kv_shared_layers * layers // text.num_hidden_layers
    while True:
        try:
            return TextConfig(num_hidden_layers=layers, intermediate_size=text.intermediate_size[0],
                              num_kv_shared_layers=shared)
        except ConfigError:
            if shared == 0:
                raise
            shared -= 1


# ----------------------------------------------------------------------------- weights


def init_of(name: str, shape: tuple[int, ...]) -> tuple[float, float]:
    """(mean, std) of a tensor's random values: norm weights near 1, everything else near 0."""
    leaf = name.rsplit(".", 2)
    is_norm = len(shape) == 1 and name.endswith(".weight") and (
        "norm" in leaf[-2] or leaf[-2] in ("bn", "bn1", "bn2"))
    return (1.0 if is_norm else 0.0), WEIGHT_STD


def to_bf16(x: np.ndarray) -> np.ndarray:
    """float32 -> bf16 bits (uint16), round to nearest even (as torch's .to(bfloat16))."""
    u = np.ascontiguousarray(x, dtype=np.float32).view(np.uint32)
    u = u + (np.uint32(0x7FFF) + ((u >> np.uint32(16)) & np.uint32(1)))
    return (u >> np.uint32(16)).astype(np.uint16)


def tensor_blocks(name: str, shape: tuple[int, ...], seed: int, block_bytes: int) -> Iterator[np.ndarray]:
    """The tensor's bf16 bits, a block of whole rows at a time (at most block_bytes of float32)."""
    rng = np.random.default_rng([seed, zlib.crc32(name.encode())])
    mean, std = init_of(name, shape)
    rows = shape[0] if shape else 1
    row_elems = int(np.prod(shape[1:], dtype=np.int64)) if len(shape) > 1 else 1
    step = max(1, block_bytes // (4 * row_elems))
    for start in range(0, rows, step):
        n = min(step, rows - start) * row_elems
        x = rng.standard_normal(n, dtype=np.float32)
        x *= np.float32(std)
        if mean:
            x += np.float32(mean)
        yield to_bf16(x)


@dataclass(frozen=True)
class Shard:
    file: str
    tensors: tuple[tuple[str, tuple[int, ...]], ...]

    @property
    def nbytes(self) -> int:
        return sum(2 * int(np.prod(s, dtype=np.int64)) for _, s in self.tensors)


def plan_shards(tensors: list[tuple[str, tuple[int, ...]]], max_shard_bytes: int) -> list[Shard]:
    """Greedy in order: a shard closes when the next tensor would overflow it (HF's rule)."""
    groups: list[list[tuple[str, tuple[int, ...]]]] = [[]]
    size = 0
    for name, shape in tensors:
        n = 2 * int(np.prod(shape, dtype=np.int64))
        if groups[-1] and size + n > max_shard_bytes:
            groups.append([])
            size = 0
        groups[-1].append((name, shape))
        size += n
    total = len(groups)
    return [Shard(f"model-{i + 1:05d}-of-{total:05d}.safetensors", tuple(g)) for i, g in enumerate(groups)]


def _header(shard: Shard) -> bytes:
    header: dict[str, Any] = {"__metadata__": {"format": "pt"}}
    offset = 0
    for name, shape in shard.tensors:
        n = 2 * int(np.prod(shape, dtype=np.int64))
        header[name] = {"dtype": "BF16", "shape": list(shape), "data_offsets": [offset, offset + n]}
        offset += n
    blob = json.dumps(header, separators=(",", ":")).encode()
    blob += b" " * (-len(blob) % 8)  # safetensors pads the header to 8 bytes with spaces
    return struct.pack("<Q", len(blob)) + blob


@dataclass
class WriteReport:
    out: Path
    shards: list[str] = field(default_factory=list)
    tensors: int = 0
    weight_bytes: int = 0
    max_block_bytes: int = 0  # the largest float32 block ever materialised
    seconds: float = 0.0


def _write_shard(path: Path, shard: Shard, seed: int, block_bytes: int, report: WriteReport,
                 progress: Callable[[str], None] | None) -> None:
    def write(f) -> None:
        f.write(_header(shard))
        for name, shape in shard.tensors:
            if progress:
                progress(name)
            for bits in tensor_blocks(name, shape, seed, block_bytes):
                report.max_block_bytes = max(report.max_block_bytes, 4 * bits.size)
                f.write(memoryview(bits).cast("B"))

    atomic_write(path, write)


def write_random_checkpoint(config, out_dir: str | os.PathLike, *, seed: int = 0,
                            max_shard_bytes: int = DEFAULT_MAX_SHARD_BYTES, block_bytes: int = DEFAULT_BLOCK_BYTES,
                            tokenizer: bool = True, progress: Callable[[str], None] | None = None) -> WriteReport:
    """Write a Hugging Face checkpoint for `config` (a Gemma3nConfig) with random bf16 weights.

    Memory: one block of `block_bytes` float32 (+ its bf16 copy) whatever the model size.
    tokenizer: also write the synthetic full-vocabulary tokenizer and processor files (needs
    Gemma 3n's real vocabulary; turn off for miniature configs).
    """
    from converters.checkpoint import expected_tensors

    if not isinstance(seed, int) or seed < 0:
        raise RandomCheckpointError(f"seed must be a non-negative integer, got {seed!r}")
    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise RandomCheckpointError(f"{out} exists and is not a directory: pass a new or empty directory as --out")
    if out.is_dir() and any(out.iterdir()):
        raise RandomCheckpointError(f"{out} is not empty: pass a new or empty directory (old shards would mix in)")
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    report = WriteReport(out)

    files = {"config.json": _json(config.to_hf_dict()), **(tokenizer_files(config) if tokenizer else {})}
    for name, data in sorted(files.items()):
        atomic_write(out / name, data)

    tensors = list(expected_tensors(config).items())
    shards = plan_shards(tensors, max_shard_bytes)
    weight_map = {}
    for shard in shards:
        _write_shard(out / shard.file, shard, seed, block_bytes, report, progress)
        weight_map.update({name: shard.file for name, _ in shard.tensors})
        report.shards.append(shard.file)
        report.weight_bytes += shard.nbytes
    report.tensors = len(tensors)
    index = {"metadata": {"total_size": report.weight_bytes}, "weight_map": dict(sorted(weight_map.items()))}
    atomic_write(out / INDEX_FILE, _json(index))  # last: the directory is a checkpoint from here on
    report.seconds = time.perf_counter() - t0
    return report


# ----------------------------------------------------------------------------- tokenizer


def _filler_pieces() -> Iterator[str]:
    """Letter strings, shortest first; '▁' (a space) only as the first character, as in real pieces.

    Every piece of length n >= 2 splits into two shorter pieces that come earlier, so SentencePiece's
    BPE (merge the best-scored adjacent pair) can reach it."""
    letters = string.ascii_lowercase + string.ascii_uppercase
    for n in itertools.count(2):
        for first in "▁" + letters:
            for rest in itertools.product(letters, repeat=n - 1):
                yield first + "".join(rest)


def synth_sentencepiece(vocab_size: int = TEXT_VOCAB) -> bytes:
    """A serialized SentencePiece BPE model with `vocab_size` pieces and Gemma's special ids."""
    from sentencepiece import sentencepiece_model_pb2 as pb

    T = pb.ModelProto.SentencePiece.Type
    fixed = {PAD_ID: ("<pad>", T.CONTROL), EOS_ID: ("<eos>", T.CONTROL), BOS_ID: ("<bos>", T.CONTROL),
             UNK_ID: ("<unk>", T.UNKNOWN), MASK_ID: ("<mask>", T.USER_DEFINED),
             5: ("[multimodal]", T.USER_DEFINED),
             START_OF_TURN_ID: ("<start_of_turn>", T.USER_DEFINED), END_OF_TURN_ID: ("<end_of_turn>", T.USER_DEFINED),
             BOI_ID: ("<start_of_image>", T.USER_DEFINED), BOA_ID: ("<start_of_audio>", T.USER_DEFINED)}
    fixed.update({i: (f"<unused{i - 6}>", T.USER_DEFINED) for i in range(6, START_OF_TURN_ID)})
    if vocab_size <= max(fixed) + 256 + 100:
        raise RandomCheckpointError(f"vocab_size {vocab_size} is too small for Gemma's special ids")
    singles = ["▁", "\n", "\t", *(chr(c) for c in range(33, 127))]
    free = (i for i in range(vocab_size) if i not in fixed)
    pieces: dict[int, tuple[str, int]] = {i: v for i, v in fixed.items()}
    for b in range(256):
        pieces[next(free)] = (f"<0x{b:02X}>", T.BYTE)
    for text in itertools.chain(singles, _filler_pieces()):
        i = next(free, None)
        if i is None:
            break
        pieces[i] = (text, T.NORMAL)

    m = pb.ModelProto()
    for i in range(vocab_size):
        text, kind = pieces[i]
        p = m.pieces.add()
        p.piece, p.type = text, kind
        p.score = -float(i) if kind == T.NORMAL else 0.0  # BPE: earlier pieces merge first
    t = m.trainer_spec
    t.model_type = pb.TrainerSpec.BPE
    t.vocab_size = vocab_size
    t.byte_fallback, t.split_digits, t.allow_whitespace_only_pieces = True, True, True
    t.pad_id, t.eos_id, t.bos_id, t.unk_id = PAD_ID, EOS_ID, BOS_ID, UNK_ID
    t.pad_piece, t.eos_piece, t.bos_piece, t.unk_piece = "<pad>", "<eos>", "<bos>", "<unk>"
    n = m.normalizer_spec  # Gemma: text as is, spaces as '▁', no dummy prefix
    n.name, n.add_dummy_prefix, n.remove_extra_whitespaces, n.escape_whitespaces = "identity", False, False, True
    return m.SerializeToString()


def _added_tokens(config) -> dict[int, str]:
    """HF-only ids past the SentencePiece vocabulary: the vision and audio ranges, every id named."""
    tokens = {}
    for sub, end, soft, tag in ((config.vision, "<end_of_image>", "<image_soft_token>", "image"),
                                (config.audio, "<end_of_audio>", "<audio_soft_token>", "audio")):
        tokens[sub.vocab_offset] = end
        tokens[sub.vocab_offset + 1] = soft
        for i in range(2, sub.vocab_size):
            tokens[sub.vocab_offset + i] = f"<unused_{tag}_{i}>"
    return tokens


def tokenizer_files(config) -> dict[str, bytes]:
    """tokenizer.model and the HF tokenizer/processor/generation configs of a full-size checkpoint."""
    from converters.tiny import CHAT_TEMPLATE, MULTIMODAL_TOKENS

    text = config.text
    if text.vocab_size_per_layer_input != TEXT_VOCAB or config.boi_token_id != BOI_ID or config.boa_token_id != BOA_ID:
        raise RandomCheckpointError("the synthetic tokenizer has Gemma 3n's real ids; the config's vocabulary differs")
    specials = dict(bos_token="<bos>", eos_token="<eos>", unk_token="<unk>", pad_token="<pad>", mask_token="<mask>")
    added = {str(i): {"content": t, "special": True, "normalized": False, "lstrip": False, "rstrip": False,
                      "single_word": False} for i, t in sorted(_added_tokens(config).items())}
    tokenizer_config = dict(
        tokenizer_class="GemmaTokenizer", processor_class="Gemma3nProcessor", add_bos_token=True,
        add_eos_token=False, padding_side="left", clean_up_tokenization_spaces=False,
        spaces_between_special_tokens=False, model_max_length=32768, **specials, **MULTIMODAL_TOKENS,
        extra_special_tokens=MULTIMODAL_TOKENS, added_tokens_decoder=added, chat_template=CHAT_TEMPLATE)
    # The real checkpoint keeps the audio extractor's and the image processor's settings in one file.
    from transformers import Gemma3nAudioFeatureExtractor, SiglipImageProcessor
    from transformers.image_utils import PILImageResampling

    image = SiglipImageProcessor(size={"height": IMAGE_SIZE, "width": IMAGE_SIZE},
                                 resample=PILImageResampling.BILINEAR, do_normalize=False,
                                 image_mean=(0.5,) * 3, image_std=(0.5,) * 3)
    audio = Gemma3nAudioFeatureExtractor()  # class defaults = the real extractor (GEMMA3N.md)
    preprocessor = {**json.loads(audio.to_json_string()), **json.loads(image.to_json_string()),
                    "processor_class": "Gemma3nProcessor"}
    generation = dict(bos_token_id=BOS_ID, pad_token_id=PAD_ID, eos_token_id=[EOS_ID, END_OF_TURN_ID],
                      do_sample=True, temperature=1.0, top_k=64, top_p=0.95)
    return {
        "tokenizer.model": synth_sentencepiece(TEXT_VOCAB),
        "tokenizer_config.json": _json(tokenizer_config),
        "special_tokens_map.json": _json({**specials, **MULTIMODAL_TOKENS}),
        "preprocessor_config.json": _json(preprocessor),
        "processor_config.json": _json(dict(processor_class="Gemma3nProcessor",
                                            audio_seq_length=config.audio_soft_tokens_per_image,
                                            image_seq_length=config.vision_soft_tokens_per_image)),
        "generation_config.json": _json(generation),
        "chat_template.jinja": CHAT_TEMPLATE.encode(),
    }


def _json(obj: Any) -> bytes:
    return (json.dumps(obj, indent=2, sort_keys=True, ensure_ascii=False) + "\n").encode()
