"""Write a MatFormer slice as a Hugging Face checkpoint directory, tensor by tensor.

`export_sliced_hf(ckpt_dir, spec, out_dir)` streams `SlicedCheckpoint` into safetensors files
without holding the model: each file's header is computed from the shapes first, then every
tensor's bytes follow in header order, big tables (the PLE table: 4 GB for E2B in bf16) a row
block at a time. Files over `max_shard_bytes` are split into `model-0000i-of-0000n.safetensors`
with a `model.safetensors.index.json`, as `save_pretrained` does; stored dtypes are kept.

Only the tensors transformers' sliced model holds are written (`expected_tensors`): the KV-shared
layers' redundant k/v tensors that Google's releases ship are dropped, as `save_pretrained` drops
them. config.json is the source's with text_config rewritten (every other field kept);
tokenizer, processor and generation files are copied; `matformer_slice.json` records the spec.
Everything is written into a staging directory next to `out_dir`, checked with
`CheckpointReader.verify`, then renamed into place: a reader never sees half an export.
"""

from __future__ import annotations

import json
import os
import shutil
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

from converters.checkpoint import INDEX_FILE, SINGLE_FILE, CheckpointReader, expected_tensors
from converters.gemma3n.config import Gemma3nConfig
from converters.matformer import SlicedCheckpoint, _torch_dtype, effective_params, resolve_slice, sliced_config_dict
from converters.matformer_spec import SliceError, SliceSpec
from edge.fileio import atomic_write, checkpoint_digests
from edge.outdir import check_out_dir, make_staging, swap_in

SLICE_RECORD = "matformer_slice.json"
# Files copied unchanged from the source checkpoint (the tokenizer and processor do not change).
AUX_FILES = ("tokenizer.model", "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json",
             "added_tokens.json", "preprocessor_config.json", "processor_config.json", "chat_template.jinja",
             "chat_template.json", "generation_config.json")
DEFAULT_SHARD_BYTES = 2_000_000_000  # ≤ 2 GB per file, safe for every filesystem and loader
_ITEMSIZE = {"BOOL": 1, "U8": 1, "I8": 1, "I16": 2, "U16": 2, "F16": 2, "BF16": 2, "I32": 4, "U32": 4, "F32": 4,
             "I64": 8, "U64": 8, "F64": 8}
_BLOCK_BYTES = 64 << 20  # row blocks of big tensors: bounded memory, few reads


@dataclass(frozen=True)
class ExportReport:
    """What export_sliced_hf wrote."""

    out_dir: Path
    spec: SliceSpec
    config: Gemma3nConfig  # the sliced config
    files: tuple[str, ...]  # file names in out_dir
    num_tensors: int
    tensor_bytes: int
    effective_params: int


@dataclass(frozen=True)
class _Entry:
    name: str
    dtype: str
    shape: tuple[int, ...]

    @property
    def nbytes(self) -> int:
        n = _ITEMSIZE[self.dtype]
        for d in self.shape:
            n *= d
        return n


def export_sliced_hf(ckpt_dir: str | os.PathLike, spec: SliceSpec | str | Path, out_dir: str | os.PathLike, *,
                     max_shard_bytes: int = DEFAULT_SHARD_BYTES) -> ExportReport:
    """Slice the checkpoint in `ckpt_dir` by `spec` (SliceSpec, preset name or JSON path) into `out_dir`."""
    src, out = Path(ckpt_dir), Path(out_dir)
    if not (src / "config.json").is_file():
        raise SliceError(f"{src}: not a Hugging Face checkpoint directory (no config.json)")
    if max_shard_bytes <= 0:
        raise SliceError(f"max_shard_bytes must be positive, got {max_shard_bytes}")
    if src.resolve() in out.resolve().parents:
        raise SliceError(f"{out} is inside the source checkpoint {src}: export to a separate directory")
    check_out_dir(out, owned_export_files, inputs=(src,), what="sliced checkpoint", flag="--export-hf")
    spec = resolve_slice(spec)
    config = Gemma3nConfig.from_hf(src)
    with CheckpointReader(src) as reader:
        reader.verify(config)  # a source that does not match its config would slice into nonsense
        sliced = SlicedCheckpoint(reader, spec, config)
        entries = _entries(sliced)
        staging = make_staging(out)
        try:
            files = _write_weights(sliced, entries, staging, max_shard_bytes)
            raw = json.loads((src / "config.json").read_text(encoding="utf-8"))
            files.append(_write_json(staging / "config.json", sliced_config_dict(raw, sliced.plan)))
            for name in AUX_FILES:
                if (src / name).is_file():
                    shutil.copyfile(src / name, staging / name)
                    files.append(name)
            eff = effective_params(sliced.config)
            files.append(SLICE_RECORD)  # the record lists every file: what a later export may replace
            _write_json(staging / SLICE_RECORD, {
                "source": str(src.resolve()), "spec": spec.to_json(), "layers_kept": list(sliced.plan.layers_kept),
                "effective_params": eff, "files": sorted(files), "source_files": checkpoint_digests(src)})
            _check_written(staging, sliced.config)
            swap_in(staging, out, owned_export_files, inputs=(src,), what="sliced checkpoint", flag="--export-hf")
        except BaseException:
            shutil.rmtree(staging, ignore_errors=True)
            raise
    return ExportReport(out, spec, sliced.config, tuple(sorted(files)), len(entries),
                        sum(e.nbytes for e in entries), eff)


def owned_export_files(out: Path) -> set[str] | None:
    """The files an earlier export wrote into `out` (its slice record lists them), or None."""
    try:
        record = json.loads((out / SLICE_RECORD).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, RecursionError):
        return None
    files = record.get("files") if isinstance(record, dict) else None
    if not (isinstance(files, list) and all(isinstance(f, str) for f in files)):
        return None
    return set(files) | {SLICE_RECORD}


def _entries(sliced: SlicedCheckpoint) -> list[_Entry]:
    """The tensors to write: exactly the sliced model's (expected_tensors), with shapes cross-checked."""
    expected = expected_tensors(sliced.config)
    missing = sorted(set(expected) - set(sliced.names()))
    wrong = [f"{n}: view {list(sliced.shape(n))}, model {list(s)}" for n, s in expected.items()
             if n in sliced and sliced.shape(n) != s]
    if missing or wrong:  # the source was verified, so this is a slicing bug, reported in full
        raise AssertionError(f"sliced view disagrees with the sliced model: missing {missing[:5]}, wrong {wrong[:5]}")
    return [_Entry(n, sliced.dtype(n), expected[n]) for n in sorted(expected)]


def _shards(entries: list[_Entry], max_bytes: int) -> list[list[_Entry]]:
    """Greedy in name order; a tensor larger than max_bytes gets a file of its own."""
    shards: list[list[_Entry]] = [[]]
    size = 0
    for e in entries:
        if shards[-1] and size + e.nbytes > max_bytes:
            shards.append([])
            size = 0
        shards[-1].append(e)
        size += e.nbytes
    return shards


def _write_weights(sliced: SlicedCheckpoint, entries: list[_Entry], dst: Path, max_bytes: int) -> list[str]:
    shards = _shards(entries, max_bytes)
    if len(shards) == 1:
        atomic_write(dst / SINGLE_FILE, lambda f: _write_safetensors(f, sliced, shards[0]))
        return [SINGLE_FILE]
    names = [f"model-{k + 1:05d}-of-{len(shards):05d}.safetensors" for k in range(len(shards))]
    weight_map = {}
    for fname, shard in zip(names, shards):
        atomic_write(dst / fname, lambda f, shard=shard: _write_safetensors(f, sliced, shard))
        weight_map.update({e.name: fname for e in shard})
    index = {"metadata": {"total_size": sum(e.nbytes for e in entries)}, "weight_map": weight_map}
    return [*names, _write_json(dst / INDEX_FILE, index)]


def _write_safetensors(f: BinaryIO, sliced: SlicedCheckpoint, shard: list[_Entry]) -> None:
    """Header (offsets from shapes alone, padded to 8 bytes as safetensors does), then each tensor's bytes."""
    header: dict[str, Any] = {"__metadata__": {"format": "pt"}}
    offset = 0
    for e in shard:
        header[e.name] = {"dtype": e.dtype, "shape": list(e.shape), "data_offsets": [offset, offset + e.nbytes]}
        offset += e.nbytes
    blob = json.dumps(header, separators=(",", ":")).encode()
    blob += b" " * (-len(blob) % 8)
    f.write(struct.pack("<Q", len(blob)))
    f.write(blob)
    for e in shard:
        written = sum(f.write(chunk) for chunk in _tensor_bytes(sliced, e))
        if written != e.nbytes:
            raise AssertionError(f"{e.name}: wrote {written} bytes, header says {e.nbytes}")


def _tensor_bytes(sliced: SlicedCheckpoint, e: _Entry):
    """The tensor's little-endian bytes in its stored dtype; big tensors a row block at a time."""
    if not e.shape or e.nbytes <= _BLOCK_BYTES or e.shape[0] == 0:
        yield _as_bytes(sliced.raw(e.name))
        return
    step = max(1, _BLOCK_BYTES // (e.nbytes // e.shape[0]))
    dtype = _torch_dtype(e.dtype)
    for a in range(0, e.shape[0], step):
        yield _as_bytes(sliced.rows(e.name, a, min(a + step, e.shape[0]), dtype))


def _as_bytes(t) -> memoryview:
    import torch

    return memoryview(t.contiguous().reshape(-1).view(torch.uint8).numpy())


def _write_json(path: Path, obj: Any) -> str:
    atomic_write(path, json.dumps(obj, indent=2, sort_keys=True) + "\n")
    return path.name


def _check_written(staging: Path, config: Gemma3nConfig) -> None:
    """Read the export back as a checkpoint: headers, index, names, shapes, and config.json itself."""
    written = Gemma3nConfig.from_hf(staging)
    if written.text != config.text:
        raise AssertionError("config.json written for the slice does not read back as the sliced config")
    with CheckpointReader(staging) as r:
        r.verify(config)
