"""Small helpers over the TFLite flatbuffer object API (`ai_edge_litert.schema_py_generated`).

Reading, packing, metadata, op names, tensor consumers, and compaction (dropping tensors and
buffers no op refers to after a graph rewrite). Payloads stored after the flatbuffer
(`Buffer.offset/size`) and in external weight files are resolved by `buffer_bytes`.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from pathlib import Path
from typing import Iterator

import flatbuffers
import numpy as np
from ai_edge_litert import schema_py_generated as schema

TFL3 = b"TFL3"
_OP_NAMES = {v: k for k, v in vars(schema.BuiltinOperator).items() if not k.startswith("_")}
_TYPE_NAMES = {v: k for k, v in vars(schema.TensorType).items() if not k.startswith("_")}
_NUMPY = {"FLOAT32": "float32", "FLOAT16": "float16", "INT32": "int32", "INT64": "int64", "INT8": "int8",
          "UINT8": "uint8", "INT16": "int16", "BOOL": "bool", "INT4": "int4", "FLOAT64": "float64"}


def s(x: bytes | str | None) -> str:
    return x.decode() if isinstance(x, (bytes, bytearray)) else (x or "")


def read_model(path: str | os.PathLike) -> schema.ModelT:
    with open(path, "rb") as f:
        data = f.read()
    return model_from_bytes(data)


def model_from_bytes(data: bytes) -> schema.ModelT:
    return schema.ModelT.InitFromObj(schema.Model.GetRootAsModel(data, 0))


def pack_model(model: schema.ModelT) -> bytes:
    builder = flatbuffers.Builder(1 << 16)
    builder.Finish(model.Pack(builder), file_identifier=TFL3)
    return bytes(builder.Output())


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    with atomic_open(path) as f:
        f.write(data)


@contextlib.contextmanager
def atomic_open(path: str | os.PathLike) -> Iterator:
    """A binary file written under a temporary name in the same directory, renamed on success."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def type_name(tensor_type: int) -> str:
    return _TYPE_NAMES[tensor_type]


def numpy_dtype(tensor_type: int) -> str:
    name = _TYPE_NAMES[tensor_type]
    return _NUMPY.get(name, name.lower())


def op_name(model: schema.ModelT, op: schema.OperatorT) -> str:
    code = model.operatorCodes[op.opcodeIndex]
    return _OP_NAMES[max(code.builtinCode, code.deprecatedBuiltinCode)]


def opcode_index(model: schema.ModelT, builtin: int, version: int = 1) -> int:
    """Index of the operator code for `builtin`, added if the model lacks it."""
    for i, code in enumerate(model.operatorCodes):
        if max(code.builtinCode, code.deprecatedBuiltinCode) == builtin:
            return i
    code = schema.OperatorCodeT()
    code.builtinCode = builtin
    code.deprecatedBuiltinCode = min(builtin, 127)  # the int8 legacy field saturates at 127
    code.version = version
    model.operatorCodes.append(code)
    return len(model.operatorCodes) - 1


def consumers(sg: schema.SubGraphT) -> dict[int, list[tuple[int, int]]]:
    """tensor index -> [(op index, operand index)] for every op input."""
    out: dict[int, list[tuple[int, int]]] = {}
    for oi, op in enumerate(sg.operators):
        for k, t in enumerate(op.inputs):
            if t >= 0:
                out.setdefault(int(t), []).append((oi, k))
    return out


# ---------------------------------------------------------------------------------------------
# metadata


def get_metadata(model: schema.ModelT, name: str) -> bytes | None:
    for md in model.metadata or []:
        if s(md.name) == name:
            data = model.buffers[md.buffer].data
            return None if data is None else bytes(np.asarray(data, dtype=np.uint8))
    return None


def set_metadata(model: schema.ModelT, name: str, value: bytes) -> None:
    remove_metadata(model, name)
    buf = schema.BufferT()
    buf.data = np.frombuffer(value, dtype=np.uint8)
    model.buffers.append(buf)
    md = schema.MetadataT()
    md.name = name
    md.buffer = len(model.buffers) - 1
    model.metadata = (model.metadata or []) + [md]


def remove_metadata(model: schema.ModelT, name: str) -> None:
    # The buffer is left orphaned; `compact` drops it.
    model.metadata = [md for md in (model.metadata or []) if s(md.name) != name] or None


# ---------------------------------------------------------------------------------------------
# compaction


def compact(model: schema.ModelT) -> None:
    """Drop tensors no op/input/output uses and buffers no tensor/metadata uses; reindex."""
    for sg in model.subgraphs:
        used = set(int(t) for t in sg.inputs) | set(int(t) for t in sg.outputs)
        for op in sg.operators:
            used |= {int(t) for t in op.inputs if t >= 0} | {int(t) for t in op.outputs}
        for t in list(used):
            q = sg.tensors[t].quantization
            if q is not None and q.detailsType == schema.QuantizationDetails.BlockwiseQuantization:
                used.add(int(q.details.scales))
        order = sorted(used)
        remap = {old: new for new, old in enumerate(order)}
        sg.tensors = [sg.tensors[i] for i in order]
        sg.inputs = [remap[int(t)] for t in sg.inputs]
        sg.outputs = [remap[int(t)] for t in sg.outputs]
        for op in sg.operators:
            op.inputs = [remap[int(t)] if t >= 0 else -1 for t in op.inputs]
            op.outputs = [remap[int(t)] for t in op.outputs]
        for t in sg.tensors:
            q = t.quantization
            if q is not None and q.detailsType == schema.QuantizationDetails.BlockwiseQuantization:
                q.details.scales = remap[int(q.details.scales)]
        for sd in model.signatureDefs or []:
            if model.subgraphs[sd.subgraphIndex] is sg:
                for io in list(sd.inputs) + list(sd.outputs):
                    io.tensorIndex = remap[int(io.tensorIndex)]
    used_buffers = {0} | {t.buffer for sg in model.subgraphs for t in sg.tensors}
    used_buffers |= {md.buffer for md in model.metadata or []}
    order = sorted(used_buffers)
    remap = {old: new for new, old in enumerate(order)}
    model.buffers = [model.buffers[i] for i in order]
    for sg in model.subgraphs:
        for t in sg.tensors:
            t.buffer = remap[t.buffer]
    for md in model.metadata or []:
        md.buffer = remap[md.buffer]
    if model.metadataBuffer is not None:
        model.metadataBuffer = [remap[b] for b in model.metadataBuffer if b in remap]


# ---------------------------------------------------------------------------------------------
# reading payloads back (tests, inspection)


def buffer_bytes(path: str | os.PathLike, model: schema.ModelT, tensor: schema.TensorT) -> bytes:
    """The stored bytes of a constant tensor: inline, appended (offset/size) or external."""
    path = Path(path)
    if tensor.externalBuffer:
        ext = next(e for e in model.externalBuffers if e.id == tensor.externalBuffer)
        group = s(model.externalBufferGroups[ext.group].name)
        with open(path.parent / group, "rb") as f:
            f.seek(ext.offset)
            return f.read(ext.length)
    buf = model.buffers[tensor.buffer]
    if buf.offset > 1:
        with open(path, "rb") as f:
            f.seek(buf.offset)
            return f.read(buf.size)
    return b"" if buf.data is None else bytes(np.asarray(buf.data, dtype=np.uint8))
