"""Read a .tflite flatbuffer's interface and weight summary without executing it.

The file is memory-mapped and walked with the accessor API of
`ai_edge_litert.schema_py_generated` (lazy: only the pages holding metadata are touched),
so a multi-GB model with weights appended after the flatbuffer (Buffer.offset/size) or in
an external weight file (Tensor.external_buffer) costs milliseconds to read.

Used by manifest verification (declared signatures vs. the file) and by `inspect`. Every
file is checked by edge/format/tflite_verify.py before the accessors here read it.
"""

from __future__ import annotations

import mmap
import os
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from edge.errors import UserError
from edge.format.tflite_verify import TFLITE_IDENTIFIER, verify_structure


@dataclass(frozen=True)
class TensorInfo:
    """One tensor as the file declares it."""

    name: str
    shape: tuple[int, ...]  # -1 for a dynamic dimension (from shape_signature)
    dtype: str  # numpy-style name: "float32", "int8", "int4", ...


@dataclass(frozen=True)
class SignatureInfo:
    """A signature def: the named entry point a runtime calls (e.g. `prefill_128`)."""

    key: str
    subgraph_index: int
    inputs: dict[str, TensorInfo]  # signature-level name -> tensor
    outputs: dict[str, TensorInfo]


@dataclass(frozen=True)
class ExternalWeights:
    """Weights kept outside the flatbuffer, in a file named by the group."""

    group: str  # file name, resolved relative to the model's directory
    buffers: int
    bytes: int


@dataclass(frozen=True)
class TfliteSummary:
    """Everything `inspect` prints about a .tflite, read without running it."""

    path: str
    size_bytes: int
    signatures: dict[str, SignatureInfo]
    num_subgraphs: int
    num_tensors: int
    num_buffers: int
    constant_dtype_counts: dict[str, int]  # constant (weight) tensors per dtype
    constant_dtype_bytes: dict[str, int]  # payload bytes per dtype, each buffer counted once
    quantization_counts: dict[str, int]  # "per-tensor", "per-channel", "blockwise", ...
    external: tuple[ExternalWeights, ...]
    op_counts: dict[str, int] = field(default_factory=dict)


def _dtype_names() -> dict[int, str]:
    from ai_edge_litert import schema_py_generated as schema

    return {v: k.lower() for k, v in vars(schema.TensorType).items() if not k.startswith("_")}


def _op_names() -> dict[int, str]:
    from ai_edge_litert import schema_py_generated as schema

    return {v: k for k, v in vars(schema.BuiltinOperator).items() if not k.startswith("_")}


def _s(b: bytes | None) -> str:
    return b.decode("utf-8", "replace") if b is not None else ""


class _Mapped:
    """An mmap of the file with the flatbuffer root; close() releases it."""

    def __init__(self, path: Path):
        from ai_edge_litert import schema_py_generated as schema

        self.path = path
        try:
            self._f = open(path, "rb")
        except FileNotFoundError:
            raise UserError(f"{path}: no such file") from None
        size = os.fstat(self._f.fileno()).st_size
        if size < 8:
            self._f.close()
            raise UserError(f"{path}: {size} bytes is too short to be a .tflite file")
        self.size = size
        self.buf = mmap.mmap(self._f.fileno(), 0, access=mmap.ACCESS_READ)
        ident = bytes(self.buf[4:8])
        if ident != TFLITE_IDENTIFIER:
            self.close()
            raise UserError(
                f"{path}: not a TFLite flatbuffer (file identifier {ident!r}, expected {TFLITE_IDENTIFIER!r})"
            )
        try:
            verify_structure(self.buf, name=str(path))
        except UserError:
            self.close()
            raise
        self.model = schema.Model.GetRootAs(self.buf, 0)

    def close(self) -> None:
        self.model = None
        try:
            self.buf.close()
        except (BufferError, AttributeError):  # a view still alive: the GC will unmap it
            pass
        self._f.close()

    def __enter__(self) -> "_Mapped":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def _tensor_info(tensor, dtypes: dict[int, str]) -> TensorInfo:
    # shape_signature carries -1 for dynamic dims; shape has the static placeholder.
    if tensor.ShapeSignatureLength() > 0:
        shape = tuple(int(tensor.ShapeSignature(j)) for j in range(tensor.ShapeSignatureLength()))
    else:
        shape = tuple(int(tensor.Shape(j)) for j in range(tensor.ShapeLength()))
    return TensorInfo(_s(tensor.Name()), shape, dtypes.get(tensor.Type(), f"type{tensor.Type()}"))


def _signatures(model, dtypes: dict[int, str], binding_order: bool = False) -> dict[str, SignatureInfo]:
    out: dict[str, SignatureInfo] = {}
    for i in range(model.SignatureDefsLength()):
        sd = model.SignatureDefs(i)
        sg = model.Subgraphs(sd.SubgraphIndex())

        def tensors(n, get, subgraph_order):
            items = [(get(j).TensorIndex(), _s(get(j).Name())) for j in range(n)]
            if binding_order and items:  # as the subgraph lists them
                order = subgraph_order().tolist()
                items.sort(key=lambda item: order.index(item[0]))
            return {name: _tensor_info(sg.Tensors(t), dtypes) for t, name in items}

        key = _s(sd.SignatureKey())
        out[key] = SignatureInfo(
            key=key,
            subgraph_index=sd.SubgraphIndex(),
            inputs=tensors(sd.InputsLength(), sd.Inputs, sg.InputsAsNumpy),
            outputs=tensors(sd.OutputsLength(), sd.Outputs, sg.OutputsAsNumpy),
        )
    if not out and model.SubgraphsLength() > 0:
        # A model converted without signature defs: expose the main subgraph's I/O under its tensor names.
        sg = model.Subgraphs(0)
        ins = {t.name: t for t in (_tensor_info(sg.Tensors(sg.Inputs(j)), dtypes) for j in range(sg.InputsLength()))}
        outs = {t.name: t for t in (_tensor_info(sg.Tensors(sg.Outputs(j)), dtypes) for j in range(sg.OutputsLength()))}
        out["serving_default"] = SignatureInfo("serving_default", 0, ins, outs)
    return out


def read_signatures(path: str | os.PathLike, *, binding_order: bool = False) -> dict[str, SignatureInfo]:
    """Signature defs of a .tflite: names, shapes and dtypes of every input and output, as the
    signature defs list them, or with `binding_order` as the subgraph does (the order LiteRT
    binds positional tensors in)."""
    with _Mapped(Path(path)) as m:
        return _signatures(m.model, _dtype_names(), binding_order)


def _quant_kind(q) -> str | None:
    from ai_edge_litert import schema_py_generated as schema

    if q is None:
        return None
    if q.DetailsType() == schema.QuantizationDetails.BlockwiseQuantization:
        return "blockwise"
    if q.DetailsType() != schema.QuantizationDetails.NONE:
        return "custom"
    n = q.ScaleLength()
    if n == 0:
        return None
    return "per-channel" if n > 1 else "per-tensor"


def summarize(path: str | os.PathLike) -> TfliteSummary:
    """Signatures, tensor counts, weight bytes per dtype, quantization and external weights."""
    dtypes = _dtype_names()
    with _Mapped(Path(path)) as m:
        model = m.model
        groups = [_s(model.ExternalBufferGroups(i).Name()) for i in range(model.ExternalBufferGroupsLength())]
        counts, dbytes, quant, ext_stats = _constants(model, dtypes)
        external = tuple(
            ExternalWeights(groups[g] if 0 <= g < len(groups) else f"<group {g}>", n, b)
            for g, (n, b) in sorted(ext_stats.items())
        )
        return TfliteSummary(
            path=str(path),
            size_bytes=m.size,
            signatures=_signatures(model, dtypes),
            num_subgraphs=model.SubgraphsLength(),
            num_tensors=sum(model.Subgraphs(s).TensorsLength() for s in range(model.SubgraphsLength())),
            num_buffers=model.BuffersLength(),
            constant_dtype_counts=dict(counts.most_common()),
            constant_dtype_bytes=dict(dbytes.most_common()),
            quantization_counts=dict(quant.most_common()),
            external=external,
            op_counts=dict(_op_counts(model).most_common()),
        )


def _op_counts(model) -> Counter:
    """Operators per name (builtin, or the custom code) over every subgraph."""
    ops = _op_names()
    op_counts: Counter = Counter()
    for s in range(model.SubgraphsLength()):
        sg = model.Subgraphs(s)
        for j in range(sg.OperatorsLength()):
            code = model.OperatorCodes(sg.Operators(j).OpcodeIndex())
            builtin = max(code.BuiltinCode(), code.DeprecatedBuiltinCode())
            name = _s(code.CustomCode()) if code.CustomCode() else ops.get(builtin, f"op{builtin}")
            op_counts[name] += 1
    return op_counts


def _buffer_bytes(model) -> list[int]:
    """Payload bytes of each buffer (0: none)."""
    out = []
    for i in range(model.BuffersLength()):
        b = model.Buffers(i)
        # Offset > 1 means the payload was appended after the flatbuffer (files over 2 GB).
        out.append(b.DataLength() if b.DataLength() else (b.Size() if b.Offset() > 1 else 0))
    return out


def _constants(model, dtypes: dict[int, str]) -> tuple[Counter, Counter, Counter, dict[int, list[int]]]:
    """Constant (weight) tensors per dtype, their payload bytes per dtype and their quantization
    kinds, each buffer counted once; and per external weight group, [buffers, bytes]."""
    ext_by_id = {}
    for i in range(model.ExternalBuffersLength()):
        eb = model.ExternalBuffers(i)
        ext_by_id[eb.Id()] = (eb.Group(), eb.Length())
    buffer_bytes = _buffer_bytes(model)
    counts: Counter = Counter()
    dbytes: Counter = Counter()
    quant: Counter = Counter()
    seen_buffers: set[int] = set()
    seen_ext: set[int] = set()
    ext_stats: dict[int, list[int]] = {}
    for s in range(model.SubgraphsLength()):
        sg = model.Subgraphs(s)
        for j in range(sg.TensorsLength()):
            t = sg.Tensors(j)
            dtype = dtypes.get(t.Type(), f"type{t.Type()}")
            ext = t.ExternalBuffer()
            if ext:
                if ext in seen_ext:
                    continue
                seen_ext.add(ext)
                group, length = ext_by_id.get(ext, (-1, 0))
                st = ext_stats.setdefault(group, [0, 0])
                st[0] += 1
                st[1] += length
                nbytes = length
            elif 0 < t.Buffer() < len(buffer_bytes) and buffer_bytes[t.Buffer()] > 0:
                if t.Buffer() in seen_buffers:
                    continue
                seen_buffers.add(t.Buffer())
                nbytes = buffer_bytes[t.Buffer()]
            else:
                continue  # an activation / graph input: no payload
            counts[dtype] += 1
            dbytes[dtype] += nbytes
            kind = _quant_kind(t.Quantization())
            if kind:
                quant[kind] += 1
    return counts, dbytes, quant, ext_stats
