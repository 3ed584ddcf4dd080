"""Weights outside the flatbuffer: external weight files and the byte layout of spliced models.

Two places a spliced weight's bytes can live (LITERT.md "Weights outside the flatbuffer"):
- appended to the .tflite after the flatbuffer: `Buffer.offset/size` (offset from the start
  of the file, > 1), plus the `buffer_location = outside flatbuffers` metadata the LiteRT
  exporter writes for this mode. Works in the Interpreter and in CompiledModel, past 2 GB.
- in an external weight file beside the model: `Tensor.buffer = 0`, `Tensor.external_buffer =
  id` (ids `0x80000000 | index`, the LiteRT exporter's convention), `Model.external_buffers
  {id, group, offset, length, packing="unpacked"}`, `Model.external_buffer_groups{name}` with
  the file name, resolved relative to the model's directory. Only CompiledModel reads these
  (the classic Interpreter fails: "Input tensor ... lacks data"). Inside a `.litertlm` the
  group must be named exactly `tflite_weights`.
Both are 64-byte aligned (LITERT_HOST_MEMORY_BUFFER_ALIGNMENT).
"""

from __future__ import annotations

import mmap
import os
from dataclasses import dataclass, field
from pathlib import Path

from ai_edge_litert import schema_py_generated as schema

from converters.lowering import flatbuf
from edge.errors import UserError

ALIGN = 64
EXTERNAL_ID_BIT = 0x80000000
BUFFER_LOCATION_KEY = "buffer_location"
BUFFER_LOCATION_VALUE = b"outside flatbuffers"
LITERTLM_GROUP = "tflite_weights"  # the group name a .litertlm TFLiteWeights section must carry


class ExternalWeightsError(UserError):
    """An external weight file is missing, short, or misnamed."""


def align(n: int, to: int = ALIGN) -> int:
    return (n + to - 1) // to * to


@dataclass
class Region:
    """A run of bytes in one file: the model (`file=None`) or an external group."""

    nbytes: int
    file: str | None = None
    offset: int = 0


@dataclass
class FileLayout:
    """Where each region goes; offsets in the model are assigned once the flatbuffer size is known."""

    model_regions: list[Region] = field(default_factory=list)
    groups: dict[str, list[Region]] = field(default_factory=dict)

    def add(self, nbytes: int, file: str | None) -> Region:
        region = Region(nbytes, file)
        if file is None:
            self.model_regions.append(region)
        else:
            regions = self.groups.setdefault(file, [])
            region.offset = align(regions[-1].offset + regions[-1].nbytes) if regions else 0
            regions.append(region)
        return region

    def place_model_regions(self, start: int) -> int:
        """Assign offsets after the flatbuffer; returns the model file's total size."""
        end = start
        for r in self.model_regions:
            r.offset = align(end)
            end = r.offset + r.nbytes
        return end

    def group_sizes(self) -> dict[str, int]:
        return {g: (rs[-1].offset + rs[-1].nbytes if rs else 0) for g, rs in self.groups.items()}


def check_group_name(name: str, model_name: str) -> None:
    if not name or os.sep in name or (os.altsep and os.altsep in name) or name in (".", ".."):
        raise ExternalWeightsError(
            f"external weight file name {name!r} must be a plain file name: the runtime resolves it "
            "relative to the model's directory."
        )
    if name == model_name:
        raise ExternalWeightsError(f"external weight file {name!r} has the model's own file name; choose another.")


def add_external_buffer(model: schema.ModelT, group: str, region: Region) -> int:
    """Register `region` of file `group` in the model; returns the id for Tensor.external_buffer."""
    groups = model.externalBufferGroups = model.externalBufferGroups or []
    names = [flatbuf.s(g.name) for g in groups]
    if group in names:
        gi = names.index(group)
    else:
        g = schema.ExternalBufferGroupT()
        g.name = group
        groups.append(g)
        gi = len(groups) - 1
    buffers = model.externalBuffers = model.externalBuffers or []
    eb = schema.ExternalBufferT()
    eb.id = EXTERNAL_ID_BIT | len(buffers)
    eb.group = gi
    eb.offset = region.offset
    eb.length = region.nbytes
    eb.packing = "unpacked"
    buffers.append(eb)
    return eb.id


def mark_appended(model: schema.ModelT) -> None:
    flatbuf.set_metadata(model, BUFFER_LOCATION_KEY, BUFFER_LOCATION_VALUE)


def check_files(model_path: str | os.PathLike) -> dict[str, int]:
    """The external files a model needs, with their sizes; raises naming any missing or short one."""
    model_path = Path(model_path)
    needed: dict[str, int] = {}
    with open(model_path, "rb") as f, mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as mm:
        # The raw accessors touch only the tables read, not the (possibly GBs of) appended data.
        model = schema.Model.GetRootAsModel(mm, 0)
        for i in range(model.ExternalBuffersLength()):
            eb = model.ExternalBuffers(i)
            name = flatbuf.s(model.ExternalBufferGroups(eb.Group()).Name())
            needed[name] = max(needed.get(name, 0), eb.Offset() + eb.Length())
        del model
    problems = []
    for name, size in needed.items():
        p = model_path.parent / name
        if not p.is_file():
            problems.append(f"{p} is missing")
        elif p.stat().st_size < size:
            problems.append(f"{p} has {p.stat().st_size} bytes, the model needs {size}")
    if problems:
        raise ExternalWeightsError(
            f"{model_path.name} keeps weights in external files: {'; '.join(problems)}. "
            "Copy the weight files next to the model (they are written beside it by splice_weights)."
        )
    return needed


def _read_head(src: Path) -> tuple[schema.ModelT, int, int]:
    """(the flatbuffer as ModelT, where the payloads appended after it start, the file's size);
    the raw accessors touch only the tables read, not the (possibly GBs of) appended data."""
    size = src.stat().st_size
    with open(src, "rb") as f, mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as mm:
        raw = schema.Model.GetRootAsModel(mm, 0)
        appended = [raw.Buffers(i).Offset() for i in range(raw.BuffersLength()) if raw.Buffers(i).Offset() > 1]
        del raw
        old_start = min(appended) if appended else size
        return flatbuf.model_from_bytes(bytes(mm[:old_start])), old_start, size


def rewrite_head(src: str | os.PathLike, dst: str | os.PathLike, edit) -> None:
    """Copy model `src` to `dst` after `edit(model)` changed its flatbuffer (ModelT) in place.

    Edits that change the flatbuffer's size (renamed groups, reordered signatures) move the
    payloads appended after it: they are streamed to the new file with their offsets shifted
    (64-byte alignment kept). External weight files are not touched.
    """
    src, dst = Path(src), Path(dst)
    model, old_start, size = _read_head(src)
    appended = old_start < size
    edit(model)
    if any(op.largeCustomOptionsOffset > 1 for sg in model.subgraphs for op in sg.operators):
        raise ExternalWeightsError(f"{src.name} has appended custom options, which cannot be moved.")
    head = flatbuf.pack_model(model)
    if appended:
        new_start = align(len(head))
        for b in model.buffers:
            if b.offset > 1:
                b.offset += new_start - old_start
        head = flatbuf.pack_model(model)  # fixed-width offset fields: the size does not change
        if align(len(head)) != new_start:
            raise AssertionError("flatbuffer size changed when only buffer offsets changed")
    with flatbuf.atomic_open(dst) as out:
        out.write(head)
        if appended:
            out.write(bytes(new_start - len(head)))
            _copy(src, old_start, size - old_start, out, src.name)


def relink(src: str | os.PathLike, dst: str | os.PathLike, groups: dict[str, str]) -> None:
    """Copy model `src` to `dst` with external weight groups renamed ({old file name: new name}).

    For bundling: a `.litertlm` needs the group named LITERTLM_GROUP, while beside a model on
    disk each model wants its own file name.
    """
    name = Path(src).name

    def rename(model) -> None:
        names = [flatbuf.s(g.name) for g in model.externalBufferGroups or []]
        unknown = sorted(set(groups) - set(names))
        if unknown:
            raise ExternalWeightsError(f"{name} has no external group {unknown}; it has {names}.")
        for g in model.externalBufferGroups or []:
            g.name = groups.get(flatbuf.s(g.name), flatbuf.s(g.name))
        if len(set(flatbuf.s(g.name) for g in model.externalBufferGroups or [])) != len(names):
            raise ExternalWeightsError(f"renaming {groups} would merge two external groups of {name}.")

    rewrite_head(src, dst, rename)


def inline(src: str | os.PathLike, dst: str | os.PathLike, edit=None) -> None:
    """Copy model `src` to `dst` self-contained: its external weights appended after the
    flatbuffer (64-byte aligned, after any payloads already appended there) instead of read from
    the group files beside it, for runtimes that predate external weights. `edit(model)` may change
    the flatbuffer first, as in rewrite_head. Payloads are streamed, never held whole."""
    src, dst = Path(src), Path(dst)
    model, old_start, size = _read_head(src)
    appended = old_start < size
    groups = [flatbuf.s(g.name) for g in model.externalBufferGroups or []]
    where = {eb.id: (groups[eb.group], eb.offset, eb.length) for eb in model.externalBuffers or []}
    old = [b for b in model.buffers if b.offset > 1]
    moved: dict[int, schema.BufferT] = {}  # external id -> its new in-model buffer
    for sg in model.subgraphs:
        for t in sg.tensors:
            if t.externalBuffer:
                if t.externalBuffer not in moved:
                    b = schema.BufferT()
                    b.offset, b.size = 1 << 40, where[t.externalBuffer][2]  # placeholder: fixed-width fields
                    model.buffers.append(b)
                    moved[t.externalBuffer] = b
                t.buffer, t.externalBuffer = model.buffers.index(moved[t.externalBuffer]), 0
    model.externalBuffers = model.externalBufferGroups = None
    if moved:
        mark_appended(model)
    if edit is not None:
        edit(model)
    head = flatbuf.pack_model(model)
    new_start = align(len(head))
    for b in old:
        b.offset += new_start - old_start
    end = new_start + (size - old_start) if appended else len(head)
    for b in moved.values():
        b.offset = align(end)
        end = b.offset + b.size
    final = flatbuf.pack_model(model)
    if len(final) != len(head):
        raise AssertionError("flatbuffer size changed when only buffer offsets changed")
    with flatbuf.atomic_open(dst) as out:
        out.write(final)
        pos = len(final)
        if appended:
            out.write(bytes(new_start - pos))
            _copy(src, old_start, size - old_start, out, src.name)
            pos = new_start + (size - old_start)
        for ext_id, b in moved.items():
            group, offset, length = where[ext_id]
            out.write(bytes(b.offset - pos))
            _copy(src.parent / group, offset, length, out, src.name)
            pos = b.offset + b.size


def _copy(path: Path, offset: int, length: int, out, reader: str) -> None:
    with open(path, "rb") as f:
        f.seek(offset)
        left = length
        while left:
            chunk = f.read(min(left, 64 << 20))
            if not chunk:
                raise ExternalWeightsError(f"{path} ends before the {length} bytes at {offset} that {reader} reads; "
                                           "rebuild the artifacts")
            out.write(chunk)
            left -= len(chunk)
