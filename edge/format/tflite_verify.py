"""Check a .tflite flatbuffer's structure before anything reads it.

A corrupted or crafted flatbuffer makes the native runtime read out of bounds (a segfault,
not an error), and the accessor API edge/format/tflite.py reads with would read garbage:
`verify_structure` checks the file first, like flatbuffers' C++ Verifier /
tflite::VerifyModelBuffer, plus the indices the runtime follows without checking. Only
metadata is walked: weight payloads (Buffer.data contents, bytes appended after the
flatbuffer) are range-checked, never read.
"""

from __future__ import annotations

import mmap
import os
import struct
from pathlib import Path

from edge.errors import UserError

TFLITE_IDENTIFIER = b"TFL3"

# The schema as data: table -> vtable slot -> (field name, kind), slot numbers as in
# ai_edge_litert/schema_py_generated.py (`self._tab.Offset(slot)`). Kinds:
#   "u8" "i8" "bool" "u16" "i16" "u32" "i32" "f32" "u64" "i64"   an inline scalar
#   "u32<buffers"     a scalar index that must be below a count (the vectors marked "#buffers" ...);
#                     "|0" also allows 0 (buffer 0 is the empty sentinel)
#   "u64+size"        a payload offset whose byte count is field `size`: offset > 1 means the
#                     bytes were appended after the flatbuffer and must lie inside the file
#   "str"             a string;  "[i32]" a vector of scalars, ">=0" / ">=-1" bound its elements,
#                     "<tensors" makes each element -1 (optional) or an index below the count
#   "Tensor"          a table;   "[Tensor]" a vector of tables, "#tensors" names its length as a
#                     count for this table and everything below it
#   "@BuiltinOptions:builtin_options_type"  a union: its table type is in the named field
# Tables not listed here (most option tables, or unknown union members) are checked
# generically: vtable and table inside the buffer, every field inside the table.
_TABLES: dict[str, dict[int, tuple[str, str]]] = {
    "Model": {
        4: ("version", "u32"), 6: ("operator_codes", "[OperatorCode]#operator_codes"),
        8: ("subgraphs", "[SubGraph]#subgraphs"), 10: ("description", "str"), 12: ("buffers", "[Buffer]#buffers"),
        14: ("metadata_buffer", "[i32]<buffers"), 16: ("metadata", "[Metadata]"),
        18: ("signature_defs", "[SignatureDef]"), 20: ("external_buffer_groups", "[ExternalBufferGroup]#groups"),
        22: ("external_buffers", "[ExternalBuffer]"),
    },
    "OperatorCode": {4: ("deprecated_builtin_code", "i8"), 6: ("custom_code", "str"), 8: ("version", "i32"),
                     10: ("builtin_code", "i32")},
    "SubGraph": {
        4: ("tensors", "[Tensor]#tensors"), 6: ("inputs", "[i32]<tensors"), 8: ("outputs", "[i32]<tensors"),
        10: ("operators", "[Operator]"), 12: ("name", "str"), 14: ("debug_metadata_index", "i32"),
    },
    "Tensor": {
        4: ("shape", "[i32]>=0"), 6: ("type", "i8"), 8: ("buffer", "u32<buffers|0"), 10: ("name", "str"),
        12: ("quantization", "QuantizationParameters"), 14: ("is_variable", "bool"),
        16: ("sparsity", "SparsityParameters"), 18: ("shape_signature", "[i32]>=-1"), 20: ("has_rank", "bool"),
        22: ("variant_tensors", "[VariantSubType]"), 24: ("external_buffer", "u32"),
    },
    "Operator": {
        4: ("opcode_index", "u32<operator_codes"), 6: ("inputs", "[i32]<tensors"), 8: ("outputs", "[i32]<tensors"),
        10: ("builtin_options_type", "u8"), 12: ("builtin_options", "@BuiltinOptions:builtin_options_type"),
        14: ("custom_options", "[u8]"), 16: ("custom_options_format", "i8"),
        18: ("mutating_variable_inputs", "[bool]"), 20: ("intermediates", "[i32]<tensors"),
        22: ("large_custom_options_offset", "u64+large_custom_options_size"),
        24: ("large_custom_options_size", "u64"), 26: ("builtin_options_2_type", "u8"),
        28: ("builtin_options_2", "@BuiltinOptions2:builtin_options_2_type"), 30: ("debug_metadata_index", "i32"),
    },
    "Buffer": {4: ("data", "[u8]"), 6: ("offset", "u64+size"), 8: ("size", "u64")},
    "Metadata": {4: ("name", "str"), 6: ("buffer", "u32<buffers")},
    "SignatureDef": {4: ("inputs", "[TensorMap]"), 6: ("outputs", "[TensorMap]"), 8: ("signature_key", "str"),
                     12: ("subgraph_index", "u32<subgraphs")},  # tensor maps: checked per subgraph after the walk
    "TensorMap": {4: ("name", "str"), 6: ("tensor_index", "u32")},
    "ExternalBufferGroup": {4: ("name", "str")},
    "ExternalBuffer": {4: ("id", "u32"), 6: ("group", "u32<groups"), 8: ("offset", "u64"), 10: ("length", "u64"),
                       12: ("packing", "str")},
    "QuantizationParameters": {
        4: ("min", "[f32]"), 6: ("max", "[f32]"), 8: ("scale", "[f32]"), 10: ("zero_point", "[i64]"),
        12: ("details_type", "u8"), 14: ("details", "@QuantizationDetails:details_type"),
        16: ("quantized_dimension", "i32"),
    },
    "CustomQuantization": {4: ("custom", "[u8]")},
    "BlockwiseQuantization": {4: ("scales", "i32"), 6: ("zero_points", "i32"), 8: ("block_size", "i32"),
                              10: ("block_shape", "[i32]")},
    "MultiAxisQuantization": {4: ("scales", "i32"), 6: ("zero_points", "i32"), 8: ("block_size", "i32"),
                              10: ("quantized_dimensions", "[i32]")},
    "SparsityParameters": {4: ("traversal_order", "[i32]"), 6: ("block_map", "[i32]"),
                           8: ("dim_metadata", "[DimensionMetadata]")},
    "DimensionMetadata": {
        4: ("format", "i8"), 6: ("dense_size", "i32"), 8: ("array_segments_type", "u8"),
        10: ("array_segments", "@SparseIndexVector:array_segments_type"), 12: ("array_indices_type", "u8"),
        14: ("array_indices", "@SparseIndexVector:array_indices_type"),
    },
    "Int32Vector": {4: ("values", "[i32]")},
    "Uint16Vector": {4: ("values", "[u16]")},
    "Uint8Vector": {4: ("values", "[u8]")},
    "VariantSubType": {4: ("shape", "[i32]"), 6: ("type", "i8"), 8: ("has_rank", "bool")},
    # The option tables that hold more than scalars (the rest are checked generically).
    "ConcatEmbeddingsOptions": {4: ("num_channels", "i32"), 6: ("num_columns_per_channel", "[i32]"),
                                8: ("embedding_dim_per_channel", "[i32]")},
    "FullyConnectedOptions": {14: ("quant_spec", "[u8]")},
    "ReshapeOptions": {4: ("new_shape", "[i32]")},
    "SqueezeOptions": {4: ("squeeze_dims", "[i32]")},
    "VarHandleOptions": {4: ("container", "str"), 6: ("shared_name", "str")},
    "BucketizeOptions": {4: ("boundaries", "[f32]")},
    "StablehloBroadcastInDimOptions": {4: ("broadcast_dimensions", "[i64]")},
    "StablehloSliceOptions": {4: ("start_indices", "[i64]"), 6: ("limit_indices", "[i64]"), 8: ("strides", "[i64]")},
    "StablehloConvolutionOptions": {
        4: ("window_strides", "[i64]"), 6: ("padding", "[i64]"), 8: ("lhs_dilation", "[i64]"),
        10: ("rhs_dilation", "[i64]"), 12: ("window_reversal", "[bool]"), 18: ("input_spatial_dimensions", "[i64]"),
        24: ("kernel_spatial_dimensions", "[i64]"), 30: ("output_spatial_dimensions", "[i64]"),
        36: ("precision_config", "[u32]"),
    },
    "StablehloCustomCallOptions": {4: ("call_target_name", "str"), 8: ("backend_config", "str"),
                                   12: ("called_computations", "[i32]"), 14: ("custom_attributes", "[u8]")},
    "StablehloReduceOptions": {4: ("dimensions", "[i64]")},
    "StablehloScatterOptions": {6: ("update_window_dims", "[i64]"), 8: ("inserted_window_dims", "[i64]"),
                                10: ("scatter_dims_to_operand_dims", "[i64]")},
    "StablehloDynamicSliceOptions": {4: ("slice_sizes", "[i64]")},
    "StablehloPadOptions": {4: ("edge_padding_low", "[i64]"), 6: ("edge_padding_high", "[i64]"),
                            8: ("interior_padding", "[i64]")},
    "StablehloDotGeneralOptions": {
        4: ("lhs_batching_dimensions", "[i64]"), 6: ("rhs_batching_dimensions", "[i64]"),
        8: ("lhs_contracting_dimensions", "[i64]"), 10: ("rhs_contracting_dimensions", "[i64]"),
        12: ("precision_config", "[u32]"),
    },
    "StablehloReduceWindowOptions": {4: ("window_dimensions", "[i64]"), 6: ("window_strides", "[i64]"),
                                     8: ("base_dilations", "[i64]"), 10: ("window_dilations", "[i64]"),
                                     12: ("padding", "[i64]")},
    "StablehloGatherOptions": {4: ("offset_dims", "[i64]"), 6: ("collapsed_slice_dims", "[i64]"),
                               8: ("start_index_map", "[i64]"), 12: ("slice_sizes", "[i64]")},
    "StablehloTransposeOptions": {4: ("permutation", "[i64]")},
    "StableHLOCompositeOptions": {4: ("name", "str"), 8: ("composite_attributes", "[u8]")},
    "StablehloCaseOptions": {4: ("branch_subgraph_indices", "[i32]")},
}
_UNIONS = ("BuiltinOptions", "BuiltinOptions2", "QuantizationDetails", "SparseIndexVector")
_SCALARS = {"u8": "B", "i8": "b", "bool": "B", "u16": "H", "i16": "h", "u32": "I", "i32": "i", "f32": "f",
            "u64": "Q", "i64": "q"}
_GENERIC = "<table>"  # a table checked without a field list
_MAX_UOFFSET = 1 << 31  # flatbuffers offsets are uint32 read as positive soffsets
_MAX_TABLES = 4_000_000  # C++ Verifier: 1M; a 46k-tensor, 37k-operator graph has 150k tables

# A table's field ops, compiled from _TABLES as (op, slot, name, width, arg); per vtable, the
# fields present become (op, offset in the table, name, arg). op None: a scalar, nothing to do.
_OP_ALIGN8, _OP_INDEX, _OP_EXTENT, _OP_STR, _OP_VEC, _OP_TABLE, _OP_TABLES, _OP_UNION = range(8)


class _Bad(Exception):
    """A verification failure: 'where: what'."""


def _compile_schema() -> tuple[dict, dict]:
    """(table -> [(op, slot, name, width, arg)], table -> {count name: 0}) from _TABLES."""
    from ai_edge_litert import schema_py_generated as schema

    unions = {u: {v: (k if k in _TABLES else _GENERIC) for k, v in vars(getattr(schema, u)).items()
                  if not k.startswith("_") and v != 0} for u in _UNIONS}
    specs: dict[str, list[tuple]] = {_GENERIC: []}
    counted: dict[str, dict[str, int]] = {}
    for table, fields in _TABLES.items():
        slots = {name: slot for slot, (name, _) in fields.items()}
        ops = []
        for slot, (name, kind) in fields.items():
            kind, _, count = kind.partition("#")
            kind, _, limit = kind.partition("<")
            if count:
                counted.setdefault(table, {})[count] = 0
            if kind in _SCALARS:
                fmt = "<" + _SCALARS[kind]
                width = struct.calcsize(fmt)
                if limit:
                    ops.append((_OP_INDEX, slot, name, width, (fmt, limit.removesuffix("|0"), limit.endswith("|0"))))
                else:  # nothing to check per table but the alignment of 8-byte fields
                    ops.append((_OP_ALIGN8 if width == 8 else None, slot, name, width, None))
            elif "+" in kind:
                ops.append((_OP_EXTENT, slot, name, 8, slots[kind.partition("+")[2]]))
            elif kind == "str":
                ops.append((_OP_STR, slot, name, 4, None))
            elif kind.startswith("@"):
                union, type_field = kind[1:].split(":")
                ops.append((_OP_UNION, slot, name, 4, (slots[type_field], unions[union])))
            elif kind.startswith("["):
                elem, _, bound = kind[1:].partition("]")
                if elem in _SCALARS:
                    lo = int(bound[2:]) if bound.startswith(">=") else None
                    fmt = _SCALARS[elem]
                    ops.append((_OP_VEC, slot, name, 4, (fmt, struct.calcsize(fmt), lo, limit or None)))
                else:
                    assert elem in _TABLES, elem
                    ops.append((_OP_TABLES, slot, name, 4, (elem, count or None)))
            else:
                assert kind in _TABLES, kind
                ops.append((_OP_TABLE, slot, name, 4, kind))
        # Counted vectors first: the counts are set before the fields that use them are checked.
        ops.sort(key=lambda op: not (op[0] == _OP_TABLES and op[4][1]))
        specs[table] = ops
    return specs, counted


_COMPILED: tuple[dict, dict] | None = None


def _where(path) -> str:
    parts = []
    while path is not None:
        path, name, index = path
        parts.append(f"{name}[{index}]" if index is not None else name)
    return ".".join(reversed(parts))


class _Walker:
    """One pass over the tables reachable from the root, with a worklist (no recursion; offsets
    only point forward, so there are no cycles, and a budget bounds shared subtrees)."""

    def __init__(self, buf):
        global _COMPILED
        if _COMPILED is None:
            _COMPILED = _compile_schema()
        self.specs, self.counted = _COMPILED
        self.buf = buf
        self.size = len(buf)
        self.plans: dict[tuple[str, int], tuple] = {}  # (table, vtable position) -> (table size, ops present)

    def plan(self, table: str, pos: int, path) -> tuple:
        """Check a table's vtable: (table size, ops of the fields it has as (op, offset, name, arg))."""
        buf, size = self.buf, self.size
        (soff,) = struct.unpack_from("<i", buf, pos)
        vt = pos - soff
        cached = self.plans.get((table, vt))
        if cached is None:
            if vt < 0 or vt % 2 or vt + 4 > size:
                raise _Bad(f"{_where(path)}: the vtable of the table at byte {pos} would be at byte {vt}, "
                           "outside the buffer")
            vsize, tsize = struct.unpack_from("<HH", buf, vt)
            if vsize < 4 or vsize % 2 or vt + vsize > size or tsize < 4:
                raise _Bad(f"{_where(path)}: malformed vtable at byte {vt} (size {vsize}, table size {tsize})")
            slots = struct.unpack_from(f"<{(vsize - 4) // 2}H", buf, vt + 4)
            for k, off in enumerate(slots):
                if off and not 4 <= off < tsize:
                    raise _Bad(f"{_where(path)}: field slot {4 + 2 * k} at offset {off} lies outside its "
                               f"{tsize}-byte table")

            def offset(slot: int) -> int:
                k = (slot - 4) // 2
                return slots[k] if k < len(slots) else 0

            present = []
            for op, slot, name, width, arg in self.specs[table]:
                off = offset(slot)
                if not off:
                    continue
                if off + width > tsize or off % min(width, 4):
                    raise _Bad(f"{_where(path)}.{name}: field at offset {off} does not fit its {tsize}-byte table")
                if op == _OP_EXTENT:
                    arg = offset(arg)
                elif op == _OP_UNION:
                    arg = (offset(arg[0]), arg[1])
                if op is not None:
                    present.append((op, off, name, arg))
            cached = self.plans[(table, vt)] = (tsize, tuple(present))
        return cached

    def walk(self, root: int) -> None:
        buf, size, counted, plans, unpack = self.buf, self.size, self.counted, self.plans, struct.unpack_from
        limits: dict[str, int] = {}  # count name -> length of the vector marked "#name" above this table
        stack = [("Model", root, limits, (None, "model", None))]
        budget = _MAX_TABLES
        while stack:
            table, pos, limits, path = stack.pop()
            budget -= 1
            if not budget:  # shared tables could make a small file expand into billions of visits
                raise _Bad(f"{_where(path)}: more than {_MAX_TABLES} tables")
            # The table's header and vtable: checked once per vtable (plan), the fast path inline.
            if pos % 4 or pos + 4 > size:
                raise _Bad(f"{_where(path)}: table at byte {pos} is misaligned or past the end")
            cached = plans.get((table, pos - unpack("<i", buf, pos)[0])) or self.plan(table, pos, path)
            if pos + cached[0] > size:
                raise _Bad(f"{_where(path)}: table at byte {pos} ({cached[0]} bytes) runs past the end")
            if table in counted:  # this table's counts hold for its own fields and everything below it
                limits = {**limits, **counted[table]}
            for op, off, name, arg in cached[1]:
                at = pos + off
                if op >= _OP_STR:  # a uoffset to a string, a vector or a table
                    (o,) = unpack("<I", buf, at)
                    ref = at + o
                    if not 0 < o < _MAX_UOFFSET or ref >= size:
                        raise _Bad(f"{_where(path)}.{name}: offset {o} at byte {at} points outside the buffer "
                                   f"({size} bytes)")
                    if op == _OP_TABLE:
                        stack.append((arg, ref, limits, (path, name, None)))
                        continue
                    if op == _OP_UNION:
                        type_off, members = arg
                        utype = buf[pos + type_off] if type_off else 0
                        if utype:  # NONE: the value is ignored (as the C++ verifier does)
                            stack.append((members.get(utype, _GENERIC), ref, limits, (path, name, None)))
                        continue
                    if ref % 4 or ref + 4 > size:
                        raise _Bad(f"{_where(path)}.{name}: vector at byte {ref} is misaligned or past the end")
                    (n,) = unpack("<I", buf, ref)
                    first = ref + 4
                    if op == _OP_STR:
                        if first + n >= size or buf[first + n] != 0:
                            raise _Bad(f"{_where(path)}.{name}: string of {n} bytes at byte {ref} runs past the "
                                       "end or has no NUL terminator")
                    elif op == _OP_VEC:
                        self._scalar_vector(arg, ref, n, limits, path, name)
                    else:  # _OP_TABLES
                        self._table_vector(arg, ref, n, stack, limits, path, name)
                else:
                    self._scalar(op, arg, pos, at, limits, path, name)

    def _scalar_vector(self, arg, ref: int, n: int, limits: dict, path, name: str) -> None:
        """A vector of n scalars at ref: inside the buffer, its elements within their bounds."""
        fmt, elem_size, lo, limit = arg
        first = ref + 4
        if first + n * elem_size > self.size:
            raise _Bad(f"{_where(path)}.{name}: vector of {n} elements at byte {ref} runs past "
                       f"the end ({self.size} bytes)")
        if n and (lo is not None or limit is not None):
            values = struct.unpack_from(f"<{n}{fmt}", self.buf, first)
            least = min(values)
            if lo is not None and least < lo:
                raise _Bad(f"{_where((path, name, values.index(least)))}: {least} is below {lo}")
            if limit is not None:
                cap, most = limits.get(limit, 0), max(values)
                if least < -1 or most >= cap:
                    bad = least if least < -1 else most
                    raise _Bad(f"{_where((path, name, values.index(bad)))}: index {bad} is "
                               f"neither -1 nor below the {cap} {limit}")

    def _table_vector(self, arg, ref: int, n: int, stack: list, limits: dict, path, name: str) -> None:
        """A vector of n tables at ref: its offsets inside the buffer, each table pushed on the stack
        (and its length recorded when it is a count for the tables below)."""
        child, count = arg
        buf, size, first = self.buf, self.size, ref + 4
        if first + 4 * n > size:
            raise _Bad(f"{_where(path)}.{name}: vector of {n} tables at byte {ref} runs past the "
                       f"end ({size} bytes)")
        if count is not None:
            limits[count] = n
        e = first
        for i, o in enumerate(struct.unpack_from(f"<{n}I", buf, first)):
            if not 0 < o < _MAX_UOFFSET or e + o >= size:
                raise _Bad(f"{_where((path, name, i))}: offset {o} at byte {e} points outside the "
                           f"buffer ({size} bytes)")
            stack.append((child, e + o, limits, (path, name, i)))
            e += 4

    def _scalar(self, op: int, arg, pos: int, at: int, limits: dict, path, name: str) -> None:
        """An inline field at byte `at` of the table at pos: an index below its count, a payload
        extent inside the file, or an 8-byte field's alignment."""
        buf, size, unpack = self.buf, self.size, struct.unpack_from
        if op == _OP_INDEX:
            fmt, limit, allow0 = arg
            (v,) = unpack(fmt, buf, at)
            n = limits.get(limit, 0)
            if v >= n and not (allow0 and v == 0):
                raise _Bad(f"{_where(path)}.{name}: index {v} is past the {n} {limit}")
        elif op == _OP_EXTENT:
            (start,) = unpack("<Q", buf, at)
            (length,) = unpack("<Q", buf, pos + arg) if arg else (0,)
            if at % 8 or (arg and (pos + arg) % 8):
                raise _Bad(f"{_where(path)}.{name}: 8-byte field at byte {at} is misaligned")
            if start > 1 and start + length > size:
                raise _Bad(f"{_where(path)}.{name}: payload bytes [{start}, {start + length}) lie past "
                           f"the end of the file ({size} bytes)")
        elif at % 8:  # _OP_ALIGN8
            raise _Bad(f"{_where(path)}.{name}: 8-byte field at byte {at} is misaligned")


def _check_signature_tensors(buf) -> None:
    """Signature tensor maps index the tensors of their own subgraph (after the walk: safe to read)."""
    from ai_edge_litert import schema_py_generated as schema

    model = schema.Model.GetRootAs(buf, 0)
    subgraphs = model.SubgraphsLength()
    for i in range(model.SignatureDefsLength()):
        sd = model.SignatureDefs(i)
        if sd.SubgraphIndex() >= subgraphs:
            raise _Bad(f"model.signature_defs[{i}].subgraph_index: index {sd.SubgraphIndex()} is past the "
                       f"{subgraphs} subgraphs")
        n = model.Subgraphs(sd.SubgraphIndex()).TensorsLength()
        for side, count, get in (("inputs", sd.InputsLength(), sd.Inputs), ("outputs", sd.OutputsLength(), sd.Outputs)):
            for j in range(count):
                t = get(j).TensorIndex()
                if t >= n:
                    raise _Bad(f"model.signature_defs[{i}].{side}[{j}].tensor_index: index {t} is past the {n} "
                               f"tensors of subgraph {sd.SubgraphIndex()}")


def _verify_buffer(buf, name: str, fix: str) -> None:
    size = len(buf)
    if size < 8:
        raise UserError(f"{name}: {size} bytes is too short to be a .tflite file; {fix}")
    ident = bytes(buf[4:8])
    if ident != TFLITE_IDENTIFIER:
        raise UserError(f"{name}: not a TFLite flatbuffer (file identifier {ident!r}, expected "
                        f"{TFLITE_IDENTIFIER!r}); {fix}")
    try:
        (root,) = struct.unpack_from("<I", buf, 0)
        if root % 4 or not 8 <= root <= size - 4:
            raise _Bad(f"root table offset {root} is misaligned or outside the {size}-byte buffer")
        _Walker(buf).walk(root)
        _check_signature_tensors(buf)
    except _Bad as e:
        raise UserError(f"{name} is not a well-formed TFLite model ({e}): the file is corrupted or truncated; "
                        f"{fix}") from None


def verify_structure(path_or_buffer, *, name: str | None = None, fix: str = "rebuild or re-copy it") -> None:
    """Check that a .tflite (a path, or bytes / memoryview / mmap of one) is a well-formed TFLite
    flatbuffer whose indices stay in range, before anything native reads it.

    Raises UserError naming the file (or `name`), the first problem found and `fix`. Only
    metadata is read: weight payloads are range-checked, never touched, so a multi-GB model
    costs what its graph costs (milliseconds for a small model).
    """
    if isinstance(path_or_buffer, (str, os.PathLike)):
        path = Path(path_or_buffer)
        try:
            f = open(path, "rb")
        except FileNotFoundError:
            raise UserError(f"{name or path}: no such file") from None
        with f:
            if os.fstat(f.fileno()).st_size < 8:
                return _verify_buffer(f.read(), name or str(path), fix)
            with mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as mm:
                _verify_buffer(mm, name or str(path), fix)
        return
    buf = path_or_buffer
    if isinstance(buf, memoryview) and (buf.format != "B" or buf.ndim != 1):
        buf = buf.cast("B")
    _verify_buffer(buf, name or "<tflite buffer>", fix)
