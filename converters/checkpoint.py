"""Strict, lazy reader of a Hugging Face Gemma 3n checkpoint (safetensors, single or sharded).

Opening reads only the safetensors headers, which this module checks itself against the file
sizes (a truncated download or a corrupt header gets an error naming the file, not a parser
message). Tensors are read one at a time from memory-mapped files, so the model is never in
memory at once; `rows()` reads a row range of a big table (the 2.3B-entry PLE table).

Names: everything is addressed by its canonical name, the one `transformers` 5.23.0
`Gemma3nForConditionalGeneration.state_dict()` uses (`model.language_model.layers.0.self_attn.
q_proj.weight`). `NAME_TABLE` is the one place that relates checkpoint names to canonical ones.
`expected_tensors(config)` builds the HF model on the meta device (no memory, ~0.3 s for E4B), so
the timm vision and conformer audio names come from the real modules. `verify(config)` fails
loudly, listing every missing, unexpected and wrongly shaped tensor (llama.cpp-style).
"""

from __future__ import annotations

import json
import math
import os
import re
import struct
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from edge.errors import UserError

if TYPE_CHECKING:
    import numpy as np
    import torch

    from converters.gemma3n.config import Gemma3nConfig

SINGLE_FILE = "model.safetensors"
INDEX_FILE = "model.safetensors.index.json"
EMBED = "model.language_model.embed_tokens.weight"
LM_HEAD = "lm_head.weight"
_MAX_HEADER = 100 * 1024 * 1024  # the safetensors format's own limit on the JSON header
# Each tower's tensors: the encoder and its embedder into the text space (absent together or not at all).
TOWER_PREFIXES = {"vision": ("model.vision_tower.", "model.embed_vision."),
                  "audio": ("model.audio_tower.", "model.embed_audio.")}
# Bytes per element of each safetensors dtype the reader accepts.
_PREAD_DTYPES = {"BF16": "bfloat16", "F16": "float16", "F32": "float32"}  # read by pread, not the mmap
_ITEMSIZE = {"BOOL": 1, "U8": 1, "I8": 1, "F8_E4M3": 1, "F8_E5M2": 1, "I16": 2, "U16": 2, "F16": 2, "BF16": 2,
             "I32": 4, "U32": 4, "F32": 4, "I64": 8, "U64": 8, "F64": 8}
# What a Gemma 3n weight can be stored as (the reader converts each to the compute dtype).
WEIGHT_DTYPES = frozenset({"F32", "F16", "BF16", "F64"})

# The name table: (regex on a checkpoint name, rule, why). First match wins.
#   "canonical": the name is already the canonical one.
#   "if-untied": expected when tie_word_embeddings is false; when true it may be absent, and if
#                present must equal the embedding (it is then ignored).
#   "if-kv-owner": a k/v tensor; expected on layers that compute K/V, and ignored on KV-shared
#                layers, where Google's releases ship it redundantly but save_pretrained omits it.
# Google's Gemma 3n releases and transformers' save_pretrained (4.53 onward) share one layout, so
# no rename rows are needed; a name no row matches is reported as unexpected.
NAME_TABLE: tuple[tuple[str, str, str], ...] = (
    (r"^lm_head\.weight$", "if-untied", "the output projection, tied to embed_tokens in every release"),
    (r"^model\.language_model\.layers\.(\d+)\.self_attn\.(k_proj|v_proj|k_norm|v_norm)\.",
     "if-kv-owner", "KV-shared layers read the K/V of an earlier layer"),
    (r"^model\.(language_model|vision_tower|audio_tower|embed_vision|embed_audio)\.", "canonical",
     "the multimodal model's five submodules"),
)
_TABLE = tuple((re.compile(p), rule) for p, rule, _ in NAME_TABLE)


class CheckpointError(UserError):
    """The checkpoint's files are unreadable or do not hold the tensors its config describes."""


@dataclass(frozen=True)
class TensorInfo:
    """Where one tensor lives: its file, its name there, safetensors dtype, shape and byte range."""

    name: str  # canonical name
    stored_name: str
    file: Path
    dtype: str  # safetensors dtype, e.g. "BF16"
    shape: tuple[int, ...]
    offsets: tuple[int, int]  # [begin, end) in the data section


def rule_for(name: str) -> str | None:
    """The NAME_TABLE rule matching a checkpoint name, or None (an unknown tensor)."""
    for pattern, rule in _TABLE:
        if pattern.search(name):
            return rule
    return None


# A text-only Gemma3nForCausalLM saves the language model at the top (`model.layers.0...`); the
# multimodal model nests the same modules under `model.language_model.`.
_CAUSAL_LM = re.compile(r"^model\.(?!language_model\.|vision_tower\.|audio_tower\.|embed_vision\.|embed_audio\.)")


def canonical_name(stored: str) -> str:
    """Canonical name of a checkpoint tensor: the multimodal layout's (a CausalLM's names are nested)."""
    return _CAUSAL_LM.sub("model.language_model.", stored, count=1)


# ---------------------------------------------------------------- safetensors headers


def read_header(path: Path) -> dict[str, TensorInfo]:
    """Parse and check one .safetensors header against the file's size; read no tensor data."""
    path = Path(path)
    try:
        size = path.stat().st_size
        with path.open("rb") as f:
            head = f.read(8)
            n = struct.unpack("<Q", head)[0] if len(head) == 8 else None
            raw = f.read(n) if n is not None and n <= min(size - 8, _MAX_HEADER) else None
    except OSError as e:
        raise CheckpointError(f"{path}: cannot read ({e.strerror}).") from None
    fix = "The file is truncated or corrupt: download or export it again."
    if n is None:
        raise CheckpointError(f"{path}: {size} bytes is too short to be a safetensors file. {fix}")
    if n > _MAX_HEADER or n > size - 8:
        raise CheckpointError(f"{path}: header claims {n} bytes but the file has {size - 8} after the length "
                              f"field. {fix}")
    try:
        header = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise CheckpointError(f"{path}: the safetensors header is not valid JSON ({e}). {fix}") from None
    if not isinstance(header, dict):
        raise CheckpointError(f"{path}: the safetensors header is not a JSON object. {fix}")
    data_size = size - 8 - n
    infos: dict[str, TensorInfo] = {}
    for name, meta in header.items():
        if name == "__metadata__":
            continue
        infos[name] = _tensor_info(path, name, meta, data_size, fix)
    spans = sorted(i.offsets for i in infos.values())
    for (_, end), (begin, _) in zip(spans, spans[1:]):
        if begin < end:
            raise CheckpointError(f"{path}: two tensors overlap at byte {begin} of the data section. {fix}")
    return infos


def _tensor_info(path: Path, name: str, meta: Any, data_size: int, fix: str) -> TensorInfo:
    where = f"{path}: tensor {name!r}"
    if not isinstance(meta, dict):
        raise CheckpointError(f"{where}: header entry is not an object. {fix}")
    dtype, shape, offsets = meta.get("dtype"), meta.get("shape"), meta.get("data_offsets")
    if dtype not in _ITEMSIZE:
        raise CheckpointError(f"{where}: unsupported dtype {dtype!r} (supported: {sorted(_ITEMSIZE)}).")
    if not (isinstance(shape, list) and all(isinstance(d, int) and d >= 0 for d in shape)):
        raise CheckpointError(f"{where}: bad shape {shape!r}. {fix}")
    if not (isinstance(offsets, list) and len(offsets) == 2 and all(isinstance(o, int) for o in offsets)
            and 0 <= offsets[0] <= offsets[1]):
        raise CheckpointError(f"{where}: bad data_offsets {offsets!r}. {fix}")
    nbytes = math.prod(shape) * _ITEMSIZE[dtype]
    if offsets[1] - offsets[0] != nbytes:
        raise CheckpointError(f"{where}: {dtype}{shape} needs {nbytes} bytes but data_offsets span "
                              f"{offsets[1] - offsets[0]}. {fix}")
    if offsets[1] > data_size:
        raise CheckpointError(f"{where}: data ends at byte {offsets[1]} but the file holds only {data_size} "
                              f"bytes of tensor data. {fix}")
    return TensorInfo(canonical_name(name), name, path, dtype, tuple(shape), (offsets[0], offsets[1]))


def _shard_files(path: Path) -> tuple[list[Path], dict[str, str] | None, Path | None]:
    """The safetensors files of a checkpoint dir / file / index, and the index's weight map if any."""
    if path.is_dir():
        if (path / SINGLE_FILE).is_file():  # transformers prefers the single file too
            return [path / SINGLE_FILE], None, None
        if not (path / INDEX_FILE).is_file():
            found = sorted(p.name for p in path.glob("*.safetensors"))
            raise CheckpointError(f"{path}: neither {SINGLE_FILE} nor {INDEX_FILE} found"
                                  + (f" (only {found}: restore the index file)" if found else "")
                                  + ". Point at a Hugging Face checkpoint directory.")
        path = path / INDEX_FILE
    if not path.is_file():
        raise CheckpointError(f"{path}: no such file.")
    if path.name.endswith(".safetensors"):
        return [path], None, None
    try:
        index = json.loads(path.read_text(encoding="utf-8"))
        weight_map = index["weight_map"]
        if not isinstance(weight_map, dict) or not all(isinstance(v, str) for v in weight_map.values()):
            raise TypeError("weight_map must map tensor names to file names")
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, KeyError, TypeError) as e:
        raise CheckpointError(f"{path}: not a valid safetensors index ({type(e).__name__}: {e}). "
                              "Download or export the checkpoint again.") from None
    shards = sorted(set(weight_map.values()))
    missing = [s for s in shards if not (path.parent / s).is_file()]
    if missing:
        raise CheckpointError(f"{path}: the index names shard file(s) that do not exist: {missing}. "
                              "Download the missing shards (or the whole checkpoint) again.")
    return [path.parent / s for s in shards], weight_map, path


# ---------------------------------------------------------------- the reader


class TensorNames:
    """The name side of a reader (CheckpointReader, matformer.SlicedCheckpoint): sorted names, `in`,
    iteration and len, all over the name -> entry dict its `_table()` returns."""

    def _table(self) -> dict[str, Any]:
        raise NotImplementedError

    def names(self) -> list[str]:
        """Canonical names of every tensor in the checkpoint, sorted."""
        return sorted(self._table())

    def __contains__(self, name: object) -> bool:
        return name in self._table()

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())

    def __len__(self) -> int:
        return len(self._table())


class CheckpointReader(TensorNames):
    """Lazy, memory-mapped access to a checkpoint's tensors by canonical name.

    `path`: a checkpoint directory, a .safetensors file, or a model.safetensors.index.json.
    """

    def __init__(self, path: str | Path):
        self.path = Path(path)
        files, weight_map, index = _shard_files(self.path)
        self.files: tuple[Path, ...] = tuple(files)
        self._infos: dict[str, TensorInfo] = {}
        for file in files:
            for stored, info in read_header(file).items():
                if weight_map is not None and weight_map.get(stored) != file.name:
                    says = f"puts it in {weight_map[stored]!r}" if stored in weight_map else "does not list it"
                    raise CheckpointError(f"{index}: tensor {stored!r} is in {file.name} but the index {says}. "
                                          "The shards and the index come from different exports.")
                if info.name in self._infos:
                    raise CheckpointError(f"{self.path}: tensor {info.name!r} appears twice "
                                          f"({self._infos[info.name].file.name} and {file.name}).")
                self._infos[info.name] = info
        if weight_map is not None:
            lost = sorted(set(weight_map) - {i.stored_name for i in self._infos.values()})
            if lost:
                raise CheckpointError(f"{index}: {len(lost)} tensor(s) listed in the index are not in their "
                                      f"shard, e.g. {lost[:5]}. A shard is from a different export or truncated.")
        self._handles: dict[Path, Any] = {}
        self._data_start: dict[Path, int] = {}  # byte where each file's data section begins
        self._fds: dict[Path, int] = {}  # pread descriptors

    # ------------------------------------------------------------ metadata

    def info(self, name: str) -> TensorInfo:
        try:
            return self._infos[name]
        except KeyError:
            raise CheckpointError(f"{self.path}: no tensor {name!r} in the checkpoint.") from None

    def _table(self) -> dict[str, TensorInfo]:
        return self._infos

    def shape(self, name: str) -> tuple[int, ...]:
        return self.info(name).shape

    def dtype(self, name: str) -> str:
        """The stored safetensors dtype ("BF16", "F32", ...)."""
        return self.info(name).dtype

    # ------------------------------------------------------------ data

    def tensor(self, name: str, dtype: torch.dtype | None = None) -> torch.Tensor:
        """One tensor; floating types become `dtype` (float32 by default: bf16 has no numpy type).
        Use `raw()` for the stored dtype."""
        import torch

        info = self.info(name)
        if info.dtype in _PREAD_DTYPES and info.shape:
            return self.rows(name, 0, info.shape[0], dtype)
        t = self._handle(info.file).get_tensor(info.stored_name)
        return _as(t, torch.float32 if dtype is None else dtype)

    def raw(self, name: str) -> torch.Tensor:
        """One tensor in its stored dtype (e.g. bf16), for streaming without a float32 copy."""
        info = self.info(name)
        return self._handle(info.file).get_tensor(info.stored_name)

    def rows(self, name: str, start: int, stop: int, dtype: torch.dtype | None = None) -> torch.Tensor:
        """Rows [start, stop) of a tensor, read without loading the rest (for the PLE and embedding tables)."""
        import torch

        info = self.info(name)
        if not (info.shape and 0 <= start <= stop <= info.shape[0]):
            raise IndexError(f"{name}: rows [{start}, {stop}) outside shape {info.shape}")
        if info.dtype in _PREAD_DTYPES:
            t = self._pread_rows(info, start, stop)
        else:
            t = self._handle(info.file).get_slice(info.stored_name)[start:stop]
        return _as(t, torch.float32 if dtype is None else dtype)

    def _pread_rows(self, info: TensorInfo, start: int, stop: int) -> torch.Tensor:
        """Rows read with pread into a private buffer. Not through the mmap: every page a mapping
        touches stays in this process's RSS until the file is closed, so streaming a 10 GB
        checkpoint through it made a build's peak RSS ~9 GB of clean file pages (issue 11)."""
        import torch

        row = math.prod(info.shape[1:]) * _ITEMSIZE[info.dtype]
        buf = bytearray((stop - start) * row)
        if buf:
            if info.file not in self._data_start:
                with open(info.file, "rb") as f:
                    self._data_start[info.file] = 8 + int.from_bytes(f.read(8), "little")
            pos = self._data_start[info.file] + info.offsets[0] + start * row
            if info.file not in self._fds:  # one descriptor per file, kept open like the mmap handles
                self._fds[info.file] = os.open(info.file, os.O_RDONLY)
            view, done = memoryview(buf), 0
            while done < len(buf):
                n = os.preadv(self._fds[info.file], [view[done:]], pos + done)
                if n <= 0:
                    raise CheckpointError(f"{info.file}: ended while reading {info.stored_name}; the file is truncated")
                done += n
        torch_dtype = getattr(torch, _PREAD_DTYPES[info.dtype])
        flat = torch.frombuffer(buf, dtype=torch_dtype) if buf else torch.empty(0, dtype=torch_dtype)
        return flat.reshape(stop - start, *info.shape[1:])

    def numpy(self, name: str) -> np.ndarray:
        """One tensor as a numpy array; floating types as float32."""
        return self.tensor(name).numpy()

    def _handle(self, file: Path) -> Any:
        if file not in self._handles:
            from safetensors import safe_open

            try:
                self._handles[file] = safe_open(str(file), framework="pt")  # memory-mapped
            except Exception as e:  # the header was checked; this is an I/O or format surprise
                raise CheckpointError(f"{file}: safetensors cannot open it ({e}).") from None
        return self._handles[file]

    def close(self) -> None:
        self._handles.clear()
        for fd in self._fds.values():
            os.close(fd)
        self._fds.clear()

    def __enter__(self) -> CheckpointReader:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ------------------------------------------------------------ verification

    def modalities(self) -> tuple[str, ...]:
        """What the checkpoint holds: text, plus each tower with any tensor in it (a text-only
        CausalLM, or a multimodal checkpoint whose towers were dropped, has none)."""
        return ("text", *(m for m, (tower, _) in TOWER_PREFIXES.items()
                          if any(n.startswith(tower) for n in self._infos)))

    def verify(self, config: Gemma3nConfig, modalities: tuple[str, ...] | None = None) -> VerifyReport:
        """Check the checkpoint holds exactly the tensors `config` describes for `modalities` (default:
        the ones it holds); raise listing every problem."""
        present = self.modalities() if modalities is None else modalities
        absent = tuple(p for m, prefixes in TOWER_PREFIXES.items() if m not in present for p in prefixes)
        expected = {k: v for k, v in expected_tensors(config).items() if not k.startswith(absent)}
        missing, wrong, bad_dtype, unexpected, ignored = [], [], [], [], []
        for name, shape in expected.items():
            if name not in self._infos:
                missing.append(f"  {name}  expected {list(shape)}")
            elif self._infos[name].shape != shape:
                wrong.append(f"  {name}  expected {list(shape)}, found {list(self._infos[name].shape)}")
            elif self._infos[name].dtype not in WEIGHT_DTYPES:  # integers would be read bit for bit as weights
                bad_dtype.append(f"  {name}  is {self._infos[name].dtype}; a weight is one of "
                                 f"{', '.join(sorted(WEIGHT_DTYPES))}")
        for name in sorted(set(self._infos) - set(expected)):
            if _optional(name, config) or (absent and name.startswith(absent)):  # e.g. embed_vision without its tower
                ignored.append(name)
            else:
                unexpected.append(f"  {name}  {list(self._infos[name].shape)}")
        problems = []
        for title, items in (("missing", missing), ("wrong shape", wrong), ("wrong dtype", bad_dtype),
                             ("unexpected", unexpected)):
            if items:
                problems.append(f"{len(items)} {title}:\n" + "\n".join(items))
        if LM_HEAD in ignored and EMBED in self._infos:
            problems += self._check_tied()
        if problems:
            raise CheckpointError(
                f"{self.path}: the tensors do not match the config ({len(self)} found, {len(expected)} expected).\n"
                + "\n".join(problems)
                + "\nThe checkpoint and its config.json do not belong together: re-export them with transformers "
                "or fix the config.")
        return VerifyReport(tuple(sorted(expected)), tuple(ignored))

    def _check_tied(self) -> list[str]:
        """A present lm_head under tie_word_embeddings must equal the embedding (transformers would
        otherwise refuse to tie, and an exporter that ties would silently differ)."""
        import torch

        a, b = self.info(LM_HEAD), self.info(EMBED)
        if a.shape != b.shape:
            return [f"lm_head.weight {list(a.shape)} is present but tie_word_embeddings is true and "
                    f"embed_tokens is {list(b.shape)}: set tie_word_embeddings to false or drop lm_head.weight"]
        n = a.shape[0]
        for r in sorted({0, n // 3, n // 2, n - 1}):  # a sample of rows: a full compare reads 1 GB twice
            if not torch.equal(self.rows(LM_HEAD, r, r + 1, torch.float32), self.rows(EMBED, r, r + 1, torch.float32)):
                return [f"lm_head.weight differs from {EMBED} (row {r}) although tie_word_embeddings is true: "
                        "set tie_word_embeddings to false in config.json, or drop lm_head.weight"]
        return []


@dataclass(frozen=True)
class VerifyReport:
    """What verify() accepted: the expected tensors, and the present-but-unused ones it ignored."""

    expected: tuple[str, ...]
    ignored: tuple[str, ...]


def _as(t: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    return t.to(dtype) if t.is_floating_point() and t.dtype != dtype else t


def _optional(name: str, config: Gemma3nConfig) -> bool:
    """True for a tensor the table allows but this config does not use (tied head, shared-layer K/V)."""
    rule = rule_for(name)
    if rule == "if-untied":
        return config.tie_word_embeddings
    if rule == "if-kv-owner":
        layer = int(re.match(r"^model\.language_model\.layers\.(\d+)\.", name).group(1))
        return layer < config.text.num_hidden_layers and config.text.is_kv_shared(layer)
    return False


def expected_tensors(config: Gemma3nConfig) -> dict[str, tuple[int, ...]]:
    """Canonical name -> shape of every tensor a checkpoint for `config` must hold.

    Built from transformers' own modules on the meta device (no weights allocated), so the timm
    MobileNetV5 and conformer names are exact; `lm_head.weight` is left out when tied.
    """
    import torch
    from transformers import Gemma3nForConditionalGeneration
    from transformers.utils import logging

    hf = config.to_transformers()  # a fresh copy: timm mutates the vision block_args while building
    verbosity = logging.get_verbosity()
    logging.set_verbosity_error()
    try:
        with torch.device("meta"):
            model = Gemma3nForConditionalGeneration(hf)
    finally:
        logging.set_verbosity(verbosity)
    out = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    unknown = [k for k in out if rule_for(k) is None]
    if unknown:  # the table must cover every tensor the model itself has
        raise AssertionError(f"NAME_TABLE has no row for the model's tensors {unknown[:5]}")
    if config.tie_word_embeddings:
        out.pop(LM_HEAD, None)
    return out
