"""Splice weights into a graph lowered by `export.lower`: inputs become (quantized) constants.

For every signature, each weight input tensor becomes a constant and leaves the subgraph's and
the SignatureDef's inputs, so the result has the interface of a baked conversion (only the
caller's inputs). Every signature's copy of a weight points at one shared Buffer (or one
external buffer); tensor names are `<signature>/<weight name>`, unique across the model
(ai-edge-quantizer and some tools refuse duplicate names).

Per weight the recipe picks a format from the op kinds it feeds (see converters.quant.recipes):
- FULLY_CONNECTED weight operand, EMBEDDING_LOOKUP table: fp32, fp16 (+ DEQUANTIZE), int8
  per channel or int4 blockwise, byte-identical to ai-edge-quantizer 0.10.0;
- anything else (RMSNorm weight in MUL, bias, coefficient matrix in BATCH_MATMUL, GATHER_ND
  table): float only.

Graph repairs, because weights-as-inputs defeat the converter's folding:
- a bias (`F.linear(x, w, b)`) lowers to FULLY_CONNECTED without bias + ADD (+ RESHAPE back to
  the input rank); the splice fuses them into one FULLY_CONNECTED with a bias operand and
  keep_num_dims (fuse_bias.py), which is what a baked conversion emits (same ops, bit-identical
  output);
- other folds that involved a weight (`1 + w`, `w * c`, `w.T`) stay in the graph: feed the
  folded value through the weight callable (sources.py) and write the module accordingly.

Streaming (LITERT.md "Streaming past 2 GB"): the flatbuffer is packed with placeholder offsets
and scales (fixed-width fields, so its size is final), the weights are read a row chunk at a
time, quantized and written with pwrite after it (or into external files), then the flatbuffer
is packed again with the real offsets and int8 scales and written at the start. Peak memory is
the graph plus one chunk (64 MiB by default) whatever the model size.
"""

from __future__ import annotations

import json
import os
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
from ai_edge_litert import schema_py_generated as schema

from converters.lowering import external as ext
from converters.lowering import flatbuf
from converters.lowering.export import GRAPH_INFO_KEY, GraphInfo, LoweringError, read_graph_info
from converters.lowering.fuse_bias import fuse_fc_bias
from converters.lowering.sources import WeightSource, getter, row_chunks
from converters.quant import quantize as qz
from converters.quant.recipes import EMB, FC, OTHER, QuantSpec, Recipe, get_recipe

_T = schema.TensorType
_OPS = schema.BuiltinOperator
_STORED_TYPE = {"fp32": _T.FLOAT32, "fp16": _T.FLOAT16, "int8": _T.INT8, "int4": _T.INT4}
DEFAULT_CHUNK_BYTES = 64 << 20


@dataclass(frozen=True)
class WeightRecord:
    name: str
    shape: tuple[int, ...]
    consumers: tuple[str, ...]  # the ops it feeds, e.g. ("FULLY_CONNECTED",), ("MUL",)
    kinds: tuple[str, ...]  # FULLY_CONNECTED / EMBEDDING_LOOKUP / OTHER
    format: str  # fp32, fp16, int8, int4-b32, ...
    why: str  # the deciding rule's reason
    nbytes: int  # stored bytes, scales included
    location: str  # "model" or the external file name
    signatures: tuple[str, ...]
    skipped: tuple[str, ...] = ()  # rules that matched but could not hold it
    rel_error: float = 0.0  # RMS of (stored - checkpoint) / RMS of the checkpoint's values, as the runtime reads them


@dataclass(frozen=True)
class SpliceReport:
    path: str
    nbytes: int
    external: dict[str, int]  # external file name -> bytes
    recipe: str
    component: str
    weights: tuple[WeightRecord, ...]
    unused: tuple[str, ...] = ()  # weights no signature reads (not stored)
    fused_biases: int = 0
    seconds: float = 0.0
    warnings: tuple[str, ...] = ()  # large weights that feed non-matmul ops (stay float)

    def by_name(self) -> dict[str, WeightRecord]:
        return {w.name: w for w in self.weights}

    def formats(self) -> dict[str, int]:
        out: dict[str, int] = {}
        for w in self.weights:
            out[w.format] = out.get(w.format, 0) + 1
        return out

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=1)

    def weight_error(self) -> tuple[float, str]:
        """The worst weight's relative RMS error against the checkpoint, and its name."""
        worst = max(self.weights, key=lambda w: w.rel_error, default=None)
        return (worst.rel_error, worst.name) if worst else (0.0, "")

    def fallbacks(self) -> int:
        """Weights stored in a later rule's format because an earlier matching one could not hold them."""
        return sum(1 for w in self.weights if w.skipped)

    def summary(self) -> str:
        lines = [f"{self.path}: {self.nbytes / 2**20:.1f} MiB, recipe {self.recipe}, {len(self.weights)} weights "
                 f"{self.formats()}, {self.fused_biases} biases fused, {self.seconds:.1f} s"]
        lines += [f"  external {k}: {v / 2**20:.1f} MiB" for k, v in self.external.items()]
        lines += [f"  warning: {w}" for w in self.warnings]
        return "\n".join(lines)


@dataclass
class _Weight:
    """One weight during the splice: its copies in each signature and where its bytes go."""

    name: str
    shape: tuple[int, ...]
    copies: list[tuple[str, schema.SubGraphT, schema.TensorT]] = field(default_factory=list)  # read by some op
    idle: list[schema.TensorT] = field(default_factory=list)  # inputs of signatures that never read it
    consumers: set[str] = field(default_factory=set)
    kinds: set[str] = field(default_factory=set)
    spec: QuantSpec | None = None
    why: str = ""
    skipped: tuple[str, ...] = ()
    data: ext.Region | None = None
    scales: ext.Region | None = None
    data_buffer: schema.BufferT | None = None
    scales_buffer: schema.BufferT | None = None
    location: str = "model"
    err2: float = 0.0  # sum of squared (stored - source) over the rows written
    ref2: float = 0.0  # sum of squared source values


def splice_weights(graph_path: str | os.PathLike, out_path: str | os.PathLike, weights: WeightSource,
                   recipe: str | Recipe, *, component: str = "model", external: dict[str, str] | None = None,
                   progress: Callable[[int, int, str], None] | None = None, fuse_bias: bool = True,
                   chunk_bytes: int = DEFAULT_CHUNK_BYTES) -> SpliceReport:
    """Write `out_path`: the graph at `graph_path` with its weight inputs made constants.

    weights: mapping or callable `name -> array-like` (see sources.py), read a chunk at a time.
    recipe: a name from converters.quant.RECIPES or a Recipe; `component` is what its rules
        match on (decoder, embedder, per_layer_embedder, ...).
    external: {weight name: file name}: those weights go to that file beside the model
        (CompiledModel reads it; use ext.LITERTLM_GROUP as the name for a .litertlm bundle).
    progress: called as progress(i, n, weight name) before each weight is written.
    """
    t0 = time.perf_counter()
    out_path = Path(out_path)
    recipe = get_recipe(recipe)
    get = getter(weights)
    model = flatbuf.read_model(graph_path)
    info = read_graph_info(model)
    flatbuf.remove_metadata(model, GRAPH_INFO_KEY)
    external = dict(external or {})
    _check_external(info, external, out_path)

    by_name = _find_weight_tensors(model, info)
    fused = sum(fuse_fc_bias(model, sg, {id(t) for w in by_name.values() for _, g, t in w.copies if g is sg})
                for sg in model.subgraphs) if fuse_bias else 0
    _classify_uses(model, by_name)
    used = {n: w for n, w in by_name.items() if w.kinds}
    unused = tuple(n for n, w in by_name.items() if not w.kinds)
    for w in used.values():
        d = recipe.decide(component, w.name, w.shape, frozenset(w.kinds))
        w.spec, w.why, w.skipped = d.spec, d.why, d.skipped

    layout = ext.FileLayout()
    for w in used.values():
        _plan(model, w, layout, external.get(w.name))
    _drop_weight_inputs(model, by_name)
    flatbuf.compact(model)
    _attach(model, used)
    ext.mark_appended(model)
    total = _write_files(model, used, layout, out_path, get, progress, chunk_bytes)
    records = tuple(_record(w) for w in used.values())
    return SpliceReport(str(out_path), total, layout.group_sizes(), recipe.name, component, records, unused, fused,
                        time.perf_counter() - t0, _warnings(used.values()))


def _write_files(model, used: dict[str, _Weight], layout: ext.FileLayout, out_path: Path, get, progress,
                 chunk_bytes: int) -> int:
    """Stream every weight to its place, then write the flatbuffer at the start; returns the model size."""
    # Pack once with placeholders (offsets, int8 scales) to learn the final flatbuffer size.
    for w in used.values():
        _set_int8_scales(w, np.ones(w.shape[0], np.float32) if _per_channel(w.spec) else None)
    head_size = len(flatbuf.pack_model(model))
    data_start = ext.align(head_size)
    total = layout.place_model_regions(data_start)
    for w in used.values():
        for region, buf in ((w.data, w.data_buffer), (w.scales, w.scales_buffer)):
            if buf is not None:
                buf.offset, buf.size = region.offset, region.nbytes
    with _TempFiles(out_path, {g: out_path.parent / g for g in layout.groups}) as files:
        os.ftruncate(files.model, total)
        for i, w in enumerate(used.values()):
            if progress:
                progress(i, len(used), w.name)
            _write_weight(w, get(w.name), files, chunk_bytes)
        head = flatbuf.pack_model(model)  # now with the real offsets and int8 scales
        if len(head) != head_size:
            raise RuntimeError(f"flatbuffer size changed between packs ({head_size} -> {len(head)} bytes)")
        os.pwrite(files.model, head, 0)
        os.pwrite(files.model, bytes(data_start - head_size), head_size)
    return total


# ---------------------------------------------------------------------------------------------
# graph analysis


def _check_external(info: GraphInfo, external: dict[str, str], out_path: Path) -> None:
    names = {w.name for w in info.weights}
    unknown = sorted(set(external) - names)
    if unknown:
        raise LoweringError(f"external lists {unknown}, which are not weights of this graph; known: {sorted(names)[:8]} ...")
    for file in set(external.values()):
        ext.check_group_name(file, out_path.name)


def _find_weight_tensors(model: schema.ModelT, info: GraphInfo) -> dict[str, _Weight]:
    by_input = {w.input_name: w for w in info.weights}
    out = {w.name: _Weight(w.name, tuple(w.shape)) for w in info.weights}
    seen_subgraphs = set()
    for sd in model.signatureDefs:
        if sd.subgraphIndex in seen_subgraphs:
            raise LoweringError("two signatures share one subgraph; the splice expects one subgraph per signature.")
        seen_subgraphs.add(sd.subgraphIndex)
        sg = model.subgraphs[sd.subgraphIndex]
        for io in sd.inputs:
            w = by_input.get(flatbuf.s(io.name))
            if w is not None:
                out[w.name].copies.append((flatbuf.s(sd.signatureKey), sg, sg.tensors[io.tensorIndex]))
    return out


def _kind(op: str, operand: int) -> str:
    if op == "FULLY_CONNECTED" and operand == 1:
        return FC
    if op == "EMBEDDING_LOOKUP" and operand == 1:
        return EMB
    return OTHER


def _classify_uses(model: schema.ModelT, weights: dict[str, _Weight]) -> None:
    cache = {id(sg): (_indices(sg), flatbuf.consumers(sg), {int(t) for t in sg.outputs}) for sg in model.subgraphs}
    for w in weights.values():
        for sig, sg, tensor in w.copies:
            indices, cons, outputs = cache[id(sg)]
            index = indices[id(tensor)]
            if index in outputs:
                raise LoweringError(f"signature {sig!r} returns weight {w.name!r} as an output; return a computed value.")
            for oi, k in cons.get(index, []):
                op = flatbuf.op_name(model, sg.operators[oi])
                w.consumers.add(op)
                w.kinds.add(_kind(op, k))
        # e.g. the lm_head in prefill signatures that return no logits: dropped, not stored twice
        w.idle = [t for _, sg, t in w.copies if not cache[id(sg)][1].get(cache[id(sg)][0][id(t)])]
        w.copies = [c for c in w.copies if c[2] not in w.idle]


def _indices(sg: schema.SubGraphT) -> dict[int, int]:
    """id(tensor) -> its index in the subgraph (tensor objects survive compaction, indices do not)."""
    return {id(t): i for i, t in enumerate(sg.tensors)}


# ---------------------------------------------------------------------------------------------
# graph rewrite


def _nbytes(spec: QuantSpec, shape: tuple[int, ...]) -> tuple[int, int]:
    n = int(np.prod(shape, dtype=np.int64)) if shape else 1
    if spec.dtype == "int4":
        return (n + 1) // 2, (shape[0] * (shape[1] // spec.block_size) * 2 if spec.block_size else 0)
    return n * {"fp32": 4, "fp16": 2, "int8": 1}[spec.dtype], 0


def _plan(model: schema.ModelT, w: _Weight, layout: ext.FileLayout, group: str | None) -> None:
    data_bytes, scale_bytes = _nbytes(w.spec, w.shape)
    if data_bytes == 0:
        raise LoweringError(f"weight {w.name!r} has shape {w.shape}, with no elements; drop it from the module.")
    w.location = group or "model"
    w.data = layout.add(data_bytes, group)
    if group is None:
        w.data_buffer = _new_buffer(model)
    if scale_bytes:
        w.scales = layout.add(scale_bytes, None)  # scales stay in the model (small, read at init)
    ext_id = ext.add_external_buffer(model, group, w.data) if group else 0
    data_index = len(model.buffers) - 1 if w.data_buffer is not None else 0
    for sig, _sg, t in w.copies:
        t.name = f"{sig}/{w.name}"
        t.type = _STORED_TYPE[w.spec.dtype]
        t.buffer = data_index
        t.externalBuffer = ext_id
        t.isVariable = False
        t.quantization = None


def _new_buffer(model: schema.ModelT) -> schema.BufferT:
    buf = schema.BufferT()
    buf.offset, buf.size = 1, 1  # non-zero placeholders: the packed size must not change later
    model.buffers.append(buf)
    return buf


def _drop_weight_inputs(model: schema.ModelT, weights: dict[str, _Weight]) -> None:
    ids = {id(t) for w in weights.values() for t in [*(c[2] for c in w.copies), *w.idle]}
    for sd in model.signatureDefs:
        sg = model.subgraphs[sd.subgraphIndex]
        sd.inputs = [io for io in sd.inputs if id(sg.tensors[io.tensorIndex]) not in ids]
        sg.inputs = [t for t in sg.inputs if id(sg.tensors[t]) not in ids]


def _attach(model: schema.ModelT, weights: dict[str, _Weight]) -> None:
    """int4: a scales tensor + BlockwiseQuantization per copy; fp16: a DEQUANTIZE per copy."""
    fp16: dict[int, list[schema.TensorT]] = {}
    for w in weights.values():
        if w.spec.dtype == "int4" and w.spec.block_size:
            w.scales_buffer = _new_buffer(model)  # made after compaction, which drops unreferenced buffers
            for _sig, sg, t in w.copies:
                _add_block_scales(sg, t, w, len(model.buffers) - 1)
        elif w.spec.dtype == "fp16":
            for _sig, sg, t in w.copies:
                fp16.setdefault(id(sg), []).append(t)
    for sg in model.subgraphs:
        if id(sg) in fp16:
            _insert_dequantize(model, sg, fp16[id(sg)])


def _add_block_scales(sg: schema.SubGraphT, t: schema.TensorT, w: _Weight, buffer: int) -> None:
    scales = schema.TensorT()
    scales.name = f"{flatbuf.s(t.name)}_scales"
    scales.shape = [w.shape[0], w.shape[1] // w.spec.block_size]
    scales.type, scales.buffer, scales.hasRank = _T.FLOAT16, buffer, True
    sg.tensors.append(scales)
    details = schema.BlockwiseQuantizationT()
    details.scales, details.zeroPoints, details.blockSize = len(sg.tensors) - 1, -1, w.spec.block_size
    q = schema.QuantizationParametersT()
    q.detailsType, q.details = schema.QuantizationDetails.BlockwiseQuantization, details
    t.quantization = q


def _insert_dequantize(model: schema.ModelT, sg: schema.SubGraphT, tensors: list[schema.TensorT]) -> None:
    """float16 constants feed their users through DEQUANTIZE (placed before the first user)."""
    indices, cons = _indices(sg), flatbuf.consumers(sg)
    opcode = flatbuf.opcode_index(model, _OPS.DEQUANTIZE, version=3)  # v3: float16 input
    before: dict[int, list[schema.OperatorT]] = {}
    for t in tensors:
        index = indices[id(t)]
        users = cons.get(index, [])
        out = schema.TensorT()
        out.name, out.shape, out.type, out.hasRank, out.buffer = f"{flatbuf.s(t.name)}_dequant", list(t.shape), _T.FLOAT32, True, 0
        sg.tensors.append(out)
        for oi, k in users:
            sg.operators[oi].inputs[k] = len(sg.tensors) - 1
        op = schema.OperatorT()
        op.opcodeIndex, op.inputs, op.outputs = opcode, [index], [len(sg.tensors) - 1]
        op.builtinOptionsType, op.builtinOptions = schema.BuiltinOptions.DequantizeOptions, schema.DequantizeOptionsT()
        before.setdefault(min(oi for oi, _ in users), []).append(op)
    sg.operators = [x for i, op in enumerate(sg.operators) for x in (*before.get(i, ()), op)]


def _per_channel(spec: QuantSpec) -> bool:
    """int8, and int4 without blocks: one float32 scale per output channel in the tensor's quantization."""
    return spec.dtype == "int8" or (spec.dtype == "int4" and not spec.block_size)


def _set_int8_scales(w: _Weight, scales: np.ndarray | None) -> None:
    if scales is None:
        return
    for _sig, _sg, t in w.copies:
        q = schema.QuantizationParametersT()
        q.scale = np.asarray(scales, dtype=np.float32)
        q.zeroPoint = np.zeros(len(scales), dtype=np.int64)
        q.quantizedDimension = 0
        t.quantization = q


# ---------------------------------------------------------------------------------------------
# streaming


class _TempFiles:
    """The model and external files, written under temporary names and renamed together."""

    def __init__(self, model_path: Path, groups: dict[str, Path]):
        self.paths = {None: model_path, **groups}
        self.fds: dict[str | None, int] = {}
        self.tmps: dict[str | None, str] = {}

    def __enter__(self) -> _TempFiles:
        for key, path in self.paths.items():
            path.parent.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
            self.fds[key], self.tmps[key] = fd, tmp
        return self

    @property
    def model(self) -> int:
        return self.fds[None]

    def fd(self, group: str | None) -> int:
        return self.fds[group]

    def __exit__(self, exc_type, exc, tb) -> None:
        ok = exc_type is None
        for key, fd in self.fds.items():
            if ok:
                os.fsync(fd)
            os.close(fd)
        if not ok:
            for tmp in self.tmps.values():
                if os.path.exists(tmp):
                    os.unlink(tmp)
            return
        # External files first: a model never appears before the weights it points to.
        for key in sorted(self.tmps, key=lambda k: k is None):
            os.chmod(self.tmps[key], 0o644)
            os.replace(self.tmps[key], self.paths[key])


def _write_weight(w: _Weight, source, files: _TempFiles, chunk_bytes: int) -> None:
    fd = files.fd(None if w.location == "model" else w.location)
    spec, shape = w.spec, w.shape
    int8_scales = np.empty(shape[0], np.float32) if _per_channel(spec) else None
    written = 0
    for start, chunk in row_chunks(source, w.name, shape, chunk_bytes):
        if not np.all(np.isfinite(chunk)):
            raise qz.QuantizationError(f"weight {w.name!r} has NaN or infinite values (rows from {start}); fix the checkpoint.")
        stored = None  # what the runtime will read back, to measure the format's error on this weight
        if spec.dtype == "fp32":
            data = chunk.astype("<f4", copy=False).tobytes()
        elif spec.dtype == "fp16":
            stored = qz.to_fp16(chunk)
            data = stored.tobytes()
        elif spec.dtype == "int8":
            q, sc = qz.quantize_int8_channelwise(chunk)
            int8_scales[start:start + len(sc)] = sc
            data = q.tobytes()
            stored = qz.dequantize_int8_channelwise(q, sc)
        elif not spec.block_size:  # int4 per channel: packed nibbles, scales in the quantization params
            q, sc = qz.quantize_int4_channelwise(chunk)
            int8_scales[start:start + len(sc)] = sc
            data = qz.pack_int4(q).tobytes()
            stored = qz.dequantize_int8_channelwise(q, sc)
        else:
            q, sc = qz.quantize_int4_blockwise(chunk, spec.block_size)
            data = qz.pack_int4(q).tobytes()
            sc_row = (shape[1] // spec.block_size) * 2
            half = sc.astype("<f2")
            os.pwrite(files.model, half.tobytes(), w.scales.offset + start * sc_row)
            stored = qz.dequantize_int4_blockwise(q, half)
        ref = np.ascontiguousarray(chunk, dtype=np.float32).reshape(-1)
        w.ref2 += float(np.dot(ref, ref))  # float32 dot per chunk, summed in float64: ample for a verdict
        if stored is not None:
            diff = np.asarray(stored, dtype=np.float32).reshape(-1)  # fresh (the payload bytes are already taken)
            diff -= ref
            w.err2 += float(np.dot(diff, diff))
            del diff
        os.pwrite(fd, data, w.data.offset + written)
        written += len(data)
    if written != w.data.nbytes:
        raise RuntimeError(f"{w.name}: wrote {written} bytes, planned {w.data.nbytes}")
    _set_int8_scales(w, int8_scales)


LARGE_FLOAT_WARNING = 1 << 16  # elements: far above any norm weight or bias, below any real matmul


def _warnings(weights) -> tuple[str, ...]:
    return tuple(
        f"{w.name} {tuple(w.shape)} feeds {sorted(w.consumers - {'FULLY_CONNECTED', 'EMBEDDING_LOOKUP'})} and stays "
        f"{w.spec.label}: a matmul weight must reach FULLY_CONNECTED directly (F.linear(x, w), w [out, in]) and a table "
        "EMBEDDING_LOOKUP (F.embedding) to be quantized"
        for w in weights if OTHER in w.kinds and int(np.prod(w.shape, dtype=np.int64)) >= LARGE_FLOAT_WARNING)


def _record(w: _Weight) -> WeightRecord:
    return WeightRecord(w.name, w.shape, tuple(sorted(w.consumers)), tuple(sorted(w.kinds)), w.spec.label, w.why,
                        w.data.nbytes + (w.scales.nbytes if w.scales else 0), w.location,
                        tuple(sig for sig, _, _ in w.copies), w.skipped,
                        (w.err2 / w.ref2) ** 0.5 if w.ref2 > 0 else 0.0)
