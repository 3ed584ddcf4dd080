"""Quantization by op, for graphs whose weights feed convolutions (the vision tower): the splice
writes the weights fp32, then ai-edge-quantizer applies per-op rules to the file, and every
weight op is checked afterwards (the quantizer silently skips a scheme an op does not support).

Quantization is data: `VISION_RULES[recipe]` lists (TFLite op, scheme, why) rules, first match
wins, applied with ai-edge-quantizer 0.10.0. Measured on a real-size encoder (tools/bench_vision.py).
"""

from __future__ import annotations

import copy
import os
import re
from dataclasses import dataclass
from typing import Any

from edge.errors import UserError
from edge.fileio import atomic_write



@dataclass(frozen=True)
class Scheme:
    """One ai-edge-quantizer op config, by the name our rules use."""

    name: str
    algorithm: str
    op_config: dict[str, Any]
    stored: str  # weight dtype in the file once applied


def _int(bits: int, granularity: str, dynamic: bool) -> dict[str, Any]:
    return {"weight_tensor_config": {"num_bits": bits, "symmetric": True, "granularity": granularity, "dtype": "INT"},
            "compute_precision": "INTEGER" if dynamic else "FLOAT", "explicit_dequantize": not dynamic}


SCHEMES = {s.name: s for s in (
    # fp16 weights, fp32 arithmetic (XNNPACK unpacks them to fp32 at load: fp32's RAM).
    Scheme("fp16", "float_casting", {"weight_tensor_config": {"num_bits": 16, "dtype": "FLOAT"},
                                     "compute_precision": "FLOAT", "explicit_dequantize": True}, "float16"),
    # int8 per-output-channel weights, activations quantized on the fly (XNNPACK qd8 kernels; int8 in RAM).
    Scheme("int8", "min_max_uniform_quantize", _int(8, "CHANNELWISE", True), "int8"),
    # int8 per-channel weights dequantized at load: int8's file size, fp32's arithmetic and RAM.
    Scheme("int8_wo", "min_max_uniform_quantize", _int(8, "CHANNELWISE", False), "int8"),
    # int4 per-channel, dynamic: the only int4 ai-edge-quantizer 0.10.0 allows on CONV_2D.
    Scheme("int4", "min_max_uniform_quantize", _int(4, "CHANNELWISE", True), "int4"),
    # int4 blockwise-32 with fp16 block scales: FULLY_CONNECTED (and EMBEDDING_LOOKUP) only.
    Scheme("int4_b32", "min_max_uniform_quantize", _int(4, "BLOCKWISE_32", True), "int4"),
)}

WEIGHT_OPS = ("CONV_2D", "DEPTHWISE_CONV_2D", "FULLY_CONNECTED")
Rule = tuple[str, "str | None", str]  # (TFLite op or "*", scheme name or None = keep fp32, why)

# converters.quant recipe names -> the vision graphs' rules, first match wins. converters.quant's
# rules cover matmul weights and tables only; the encoder is 282 convolutions, which XNNPACK runs
# with int8 weights too (dynamic range), so vision has its own rules. tools/bench_vision.py, real-size
# encoder, random weights, 768 px (relative L2 feature error vs fp32 / MB / s per image on 2 busy cores):
#   fp16 0.13-0.17% / 589-678 / ~13-15      int8 (fp32 depthwise) 3.8-4.1% / 299 / ~8-9
#   int8 everywhere 4.2% / 298 / ~11         int8 weight-only 3.4-4.0% / 299 / ~16-18 (fp32 RAM)
#   int4 per-channel convs 55% / 152 / ~17 (unusable; blockwise int4 does not exist for convs)
# For scale: re-encoding the picture as JPEG q90 moves fp32 features by 1.9-3.2%, a 1-pixel shift
# by 2.8-4.6%. int8 is the phone default (a quarter of fp32's bytes and ~40% of its RAM, the fastest);
# the fp16 recipe is the choice when features must stay within 0.2%.
_INT8 = (
    ("DEPTHWISE_CONV_2D", None, "45 depthwise convs, ~1 MB in all: k*k-tap channels quantize worst; kept fp32"),
    ("*", "int8", "int8 per output channel, dynamic-range kernels: a quarter of the bytes, int8 in RAM, "
                  "~4% feature error (about what a JPEG q90 re-encode of the picture does)"),
)
VISION_RULES: dict[str, tuple[Rule, ...]] = {
    "fp32": (),
    "fp16": (("*", "fp16", "half the bytes at ~0.1% feature error; fp32 arithmetic and RAM"),),
    "int8": _INT8,
    "int4": _INT8,  # int4 convs lose the image (55% feature error)
    "int4-pc": _INT8,
    "int4-b128": _INT8,
    "mixed": _INT8,
}
# An fp16 cast that loses more than this (relative L2) keeps the tensor in fp32. fp16's own rounding
# is <= 2^-11/sqrt(3) ~ 3e-4; beyond that the tensor sits in fp16's subnormal range, which happens
# when the converter folds a small layer-scale gamma (timm init: 1e-5) into the preceding conv.
FP16_GUARD = 1e-3


def rules_for(recipe: str) -> tuple[Rule, ...]:
    """The vision rules of a converters.quant recipe name (unknown names fail before any lowering)."""
    from converters.quant.recipes import get_recipe

    get_recipe(recipe)  # the project-wide error for an unknown recipe name
    try:
        return VISION_RULES[recipe]
    except KeyError:
        raise UserError(f"recipe {recipe!r} has no vision rules: add it to VISION_RULES in "
                        f"converters/quant/by_op.py (known: {', '.join(VISION_RULES)})") from None


def scheme_for(rules: tuple[Rule, ...], op: str) -> str | None:
    return next((s for o, s, _ in rules if o in ("*", op)), None)


@dataclass(frozen=True)
class WeightOp:
    """A weight-carrying op of a .tflite: its scope (output names, as ai-edge-quantizer matches) and weight."""

    op: str
    scope: str
    dtype: str  # stored dtype of its constant weight, seen through a DEQUANTIZE
    fp16_loss: float | None  # relative L2 error of casting an fp32 weight to fp16


def weight_ops(model_file: str | os.PathLike | bytes) -> list[WeightOp]:
    """Every CONV_2D / DEPTHWISE_CONV_2D / FULLY_CONNECTED with a constant weight (input 1), in op order."""
    import mmap

    if isinstance(model_file, (bytes, bytearray)):
        return _weight_ops(model_file)
    with open(model_file, "rb") as f:
        data = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
    return _weight_ops(data)  # the map closes when collected (numpy views into it end with the call)


def _weight_ops(data) -> list[WeightOp]:
    import numpy as np
    from ai_edge_litert import schema_py_generated as schema

    types = {v: k.lower() for k, v in vars(schema.TensorType).items() if not k.startswith("_")}
    builtins = {v: k for k, v in vars(schema.BuiltinOperator).items() if not k.startswith("_")}
    model = schema.Model.GetRootAs(data, 0)

    def opname(o) -> str:
        code = model.OperatorCodes(o.OpcodeIndex())
        return builtins.get(max(code.BuiltinCode(), code.DeprecatedBuiltinCode()), "?")

    out = []
    for s in range(model.SubgraphsLength()):
        sg = model.Subgraphs(s)
        ops = [sg.Operators(j) for j in range(sg.OperatorsLength())]
        producer = {o.Outputs(k): o for o in ops for k in range(o.OutputsLength())}
        for o in ops:
            name = opname(o)
            if name not in WEIGHT_OPS:
                continue
            w = o.Inputs(1)
            p = producer.get(w)
            if p is not None and opname(p) == "DEQUANTIZE":
                w = p.Inputs(0)  # weight-only / fp16: the stored tensor feeds a DEQUANTIZE
            elif p is not None:
                continue  # activation x activation (MQA's q.k and attn.v as FULLY_CONNECTED)
            t = sg.Tensors(w)
            buf = model.Buffers(t.Buffer()) if 0 < t.Buffer() < model.BuffersLength() else None
            if buf is None or (buf.DataLength() == 0 and buf.Offset() <= 1):
                continue  # not a constant
            loss = None
            if t.Type() == schema.TensorType.FLOAT32:
                # Inline data, or (ai-edge-quantizer's output) appended after the flatbuffer at Offset.
                x = (buf.DataAsNumpy() if buf.DataLength() else
                     np.frombuffer(data, np.uint8, buf.Size(), buf.Offset())).view(np.float32)
                norm = float(np.linalg.norm(x))
                loss = float(np.linalg.norm(x - x.astype(np.float16)) / norm) if norm else 0.0
            scope = ";".join(sg.Tensors(o.Outputs(k)).Name().decode() for k in range(o.OutputsLength())) + ";"
            out.append(WeightOp(name, scope, types.get(t.Type(), "?"), loss))
    return out


def weight_dtypes(model_file: str | os.PathLike | bytes) -> dict[str, dict[str, int]]:
    """Per weight op kind, how many weights are stored in each dtype."""
    out: dict[str, dict[str, int]] = {}
    for w in weight_ops(model_file):
        out.setdefault(w.op, {}).setdefault(w.dtype, 0)
        out[w.op][w.dtype] += 1
    return out


def aeq_recipe(rules: tuple[Rule, ...], keep_float: tuple[str, ...] = ()) -> list[dict[str, Any]]:
    """ai-edge-quantizer recipe. Its last matching entry wins: our first-match rules go in reverse,
    the per-op fp32 exceptions (`keep_float` scopes) last."""
    entries = []
    for op, scheme, _ in reversed(rules):
        for o in WEIGHT_OPS if op == "*" else (op,):
            if scheme is None:
                entries.append({"regex": ".*", "operation": o, "algorithm_key": "no_quantize", "op_config": {}})
            else:
                s = SCHEMES[scheme]
                entries.append({"regex": ".*", "operation": o, "algorithm_key": s.algorithm,
                                "op_config": copy.deepcopy(s.op_config)})
    for scope in keep_float:
        entries.append({"regex": "^" + re.escape(scope) + "$", "operation": "*", "algorithm_key": "no_quantize",
                        "op_config": {}})
    return entries


def plan(rules: tuple[Rule, ...], ops: list[WeightOp]) -> tuple[list[str], tuple[str, ...]]:
    """Per weight op the dtype it must end up with, and the scopes kept fp32 by FP16_GUARD."""
    want, keep = [], []
    for w in ops:
        scheme = scheme_for(rules, w.op)
        if scheme == "fp16" and w.fp16_loss is not None and w.fp16_loss > FP16_GUARD:
            scheme = None
            keep.append(w.scope)
        want.append(SCHEMES[scheme].stored if scheme else w.dtype)
    return want, tuple(keep)


def quantize_file(src: str | os.PathLike, dst: str | os.PathLike, rules: tuple[Rule, ...]) -> dict[str, Any]:
    """Quantize `src` by `rules` into `dst`, written atomically once every weight op is checked:
    ai-edge-quantizer silently skips a scheme an op does not support."""
    from ai_edge_quantizer import quantizer

    before = weight_ops(src)
    want, keep = plan(rules, before)
    from edge.quiet import verbose

    qt = quantizer.Quantizer(str(src))
    qt.load_quantization_recipe(aeq_recipe(rules, keep))
    # Its own tqdm bars (drawn for graphs of 100+ ops) only with --verbose: the stage line is ours.
    data = bytes(qt.quantize(enable_progress_report=False, enable_progress_bar=verbose()).quantized_model)
    del qt
    after = weight_ops(data)
    # The quantizer keeps the op order and names; it only inserts DEQUANTIZE ops.
    wrong = [(b.op, b.scope[-80:], d, a.dtype) for b, a, d in zip(before, after, want)
             if (a.scope, a.dtype) != (b.scope, d)]
    if wrong or len(after) != len(before):
        raise RuntimeError(f"ai-edge-quantizer did not apply the vision rules to {len(wrong)} of {len(before)} "
                           f"weight ops ({len(after)} after); (op, scope, wanted, got): {wrong[:3]}")
    atomic_write(dst, data)
    return {"weights": weight_dtypes(data), "kept_fp32_by_fp16_guard": len(keep)}
