"""The vision artifacts as components: vision_encoder (MobileNet-V5) and vision_adapter
(embed_vision + the <end_of_image> row), the modules of converters/gemma3n/vision.py lowered
with their conv / matmul weights as graph inputs, spliced fp32, then quantized by op
(converters/quant/by_op.py): the convolutions are outside the splice's matmul formats.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import torch
from torch import nn

from converters.components.spec import Component, Lowered, Source, tower_recipe
from converters.gemma3n.vision import (ADAPTER_FILE, ADAPTER_KIND, ADAPTER_PREFIX, ADAPTER_SIGNATURE, ENCODER_FILE,
                                       ENCODER_KIND, ENCODER_PREFIX, IMAGES, SOFT_TOKENS, Getter, VisionAdapter,
                                       VisionDims, VisionEncoder, _tensor, encoder_signature, eoi_embedding,
                                       meta_timm_encoder)
from converters.quant.by_op import SCHEMES, Rule, quantize_file, rules_for
from edge.errors import UserError
from edge.format.manifest import Tolerance


# Parity tolerance per weight precision, end to end (image in) vs HF fp32, ~2x the worst measured
# by tools/bench_vision.py (real-size encoder, 768 px) and tests/test_vision.py (tiny tower, 3 images).
# Encoder features are RmsNorm2d outputs x sqrt(C): their RMS is ~sqrt(C) * rms(msfa.norm.weight),
# so the encoder's max_abs is a multiple of that scale. Adapter rows are unit-RMS (post-projection
# norm without scale): absolute. rel_l2 (relative L2 over the whole output) is the sharper check
# for quantized files, where a max over 500k values is loose.
TOLERANCES = {  # level -> encoder max_abs (x feature scale), adapter max_abs, rel_l2, why
    "float32": (1e-4, 1e-4, 1e-5, "fp32 on both sides, sums reassociated: measured 1e-5 x scale and 6e-6 on "
                                  "adapter rows (relative L2 1.5e-6)"),
    "float16": (0.04, 0.02, 0.004, "fp16 weights, fp32 arithmetic: measured 0.019 x scale (tiny; 0.0065 real "
                                   "size) and 0.008 on adapter rows (relative L2 0.17%)"),
    "int8": (1.0, 0.5, 0.1, "int8 per-channel weights, dynamic int8 activations: measured 0.47 x scale (tiny; 0.19 "
                            "real size) and 0.21 on adapter rows (relative L2 4.4%, cosine 0.999)"),
}
_LEVEL = {"float32": 0, "float16": 1, "int8": 2, "int4": 3}


def feature_scale(dims: VisionDims, get: Getter) -> float:
    """Expected RMS of the encoder's features: sqrt(C) * rms(final MSFA norm weight)."""
    try:
        w = get(ENCODER_PREFIX + "msfa.norm.weight").float()
    except (KeyError, UserError):  # a dict getter, or converters.checkpoint's reader
        return dims.hidden_size**0.5  # another timm tower: assume a unit norm weight
    return float(dims.hidden_size**0.5 * w.pow(2).mean().sqrt())


def tolerance(rules: tuple[Rule, ...], kind: str, scale: float) -> dict[str, Any]:
    """The manifest tolerance of one vision artifact under `rules` (its least precise weights decide)."""
    stored = [SCHEMES[s].stored for _, s, _ in rules if s] or ["float32"]
    level = max(stored, key=_LEVEL.__getitem__)
    if level not in TOLERANCES:
        raise UserError(f"no parity tolerance for {level} vision weights: measure one with tools/bench_vision.py")
    enc, ada, rel, why = TOLERANCES[level]
    if kind == ENCODER_KIND:
        return {"max_abs": enc * scale, "rel_l2": rel, "why": f"{enc} x feature scale {scale:.3g}; {why}"}
    return {"max_abs": ada, "rel_l2": rel, "why": why}


# ---------------------------------------------------------------- lowering: weights as graph inputs

PERMS_KEY = "gemma3n_edge.weight_layout"  # metadata: {weight name: [step]} absorbed by _absorb_transposes


def _absorb_transposes(path: Path) -> None:
    """Make each weight input that feeds only a chain of TRANSPOSE / RESHAPE ops (a conv's OIHW ->
    OHWI layout change, a 1x1 conv's squeeze: what a baked conversion folds) the chain's result
    itself: the ops are dropped, the weight input takes the result's shape, and the steps are
    recorded in the file's metadata for the weight source (`_reshaped`). Without this every conv
    would transpose its weights at run time and its weight operand would not be a constant
    (nothing for the quantizer to quantize)."""
    import dataclasses as dc

    from converters.lowering import flatbuf
    from converters.lowering.export import GRAPH_INFO_KEY, read_graph_info

    model = flatbuf.read_model(path)
    info = read_graph_info(model)
    by_input = {w.input_name: w for w in info.weights}
    weights = {w.name: w for w in info.weights}
    steps: dict[str, list] = {}
    for sd in model.signatureDefs:
        sg = model.subgraphs[sd.subgraphIndex]
        cons, outputs, drop = flatbuf.consumers(sg), {int(t) for t in sg.outputs}, set()
        for io in sd.inputs:
            w = by_input.get(flatbuf.s(io.name))
            if w is None:
                continue
            t, chain = _layout_chain(model, sg, cons, outputs, int(io.tensorIndex), drop)
            if not chain:
                continue
            if steps.setdefault(w.name, chain) != chain:
                raise RuntimeError(f"{w.name}: reshaped differently in two signatures")
            sg.inputs = [t if int(i) == int(io.tensorIndex) else int(i) for i in sg.inputs]
            io.tensorIndex = t
            weights[w.name] = dc.replace(w, shape=tuple(int(d) for d in sg.tensors[t].shape))
        sg.operators = [op for i, op in enumerate(sg.operators) if i not in drop]
    info = dc.replace(info, weights=tuple(weights[w.name] for w in info.weights))
    flatbuf.set_metadata(model, GRAPH_INFO_KEY, info.to_json().encode())
    flatbuf.set_metadata(model, PERMS_KEY, json.dumps(steps, sort_keys=True).encode())
    flatbuf.compact(model)
    flatbuf.atomic_write_bytes(path, flatbuf.pack_model(model))


def _layout_chain(model, sg, cons, outputs: set[int], t: int, drop: set[int]) -> tuple[int, list]:
    """Follow tensor `t` through the TRANSPOSE / RESHAPE ops that are its only use: the last
    tensor of the chain and its steps; the chain's ops are added to `drop`."""
    import numpy as np

    from converters.lowering import flatbuf

    chain = []
    while True:
        users = cons.get(t, [])
        if len(users) != 1 or users[0][1] != 0 or t in outputs:
            return t, chain
        op = sg.operators[users[0][0]]
        kind = flatbuf.op_name(model, op)
        if kind not in ("TRANSPOSE", "RESHAPE"):
            return t, chain
        if kind == "TRANSPOSE":
            pt = sg.tensors[op.inputs[1]]
            raw = model.buffers[pt.buffer].data if pt.buffer else None
            if raw is None:
                return t, chain  # a computed perm: leave it
            dtype = np.int64 if pt.type == flatbuf.schema.TensorType.INT64 else np.int32
            chain.append(["transpose", [int(v) for v in np.frombuffer(bytes(np.asarray(raw, np.uint8)), dtype)]])
        drop.add(users[0][0])
        t = int(op.outputs[0])
        if kind == "RESHAPE":
            chain.append(["reshape", [int(d) for d in sg.tensors[t].shape]])


def _graph_steps(path: Path) -> dict[str, list]:
    from converters.lowering import flatbuf

    raw = flatbuf.get_metadata(flatbuf.read_model(path), PERMS_KEY)
    return json.loads(raw or b"{}")


def _reshaped(t: torch.Tensor, steps: list) -> torch.Tensor:
    """A checkpoint tensor laid out as the graph's weight input (the absorbed TRANSPOSE / RESHAPE chain)."""
    for kind, arg in steps:
        t = t.permute(*arg) if kind == "transpose" else t.reshape(arg)
    return t.contiguous()


def _is_input(p: torch.Tensor) -> bool:
    """Conv / matmul weights (and the eoi row) are graph inputs; 1-D ones (norm weights, layer-scale
    gammas, biases: ~0.1% of the bytes) are baked, so the converter folds them and keeps the
    activations NHWC as a baked conversion does (as inputs they cost 11 activation TRANSPOSEs
    and 4 PADs on the tiny tower)."""
    return p.dim() >= 2


def _graph_modules(dims: VisionDims, get: Getter, with_eoi: bool) -> dict[str, tuple[nn.Module, dict, list[str]]]:
    """{artifact: (module with meta input weights and real 1-D weights, {signature: example inputs}, input weights)}."""
    h, w = dims.image_size
    with torch.device("meta"):
        adapter = VisionAdapter(dims, with_eoi).eval()
    encoder = VisionEncoder(meta_timm_encoder(dims), dims.vision_soft_tokens_per_image).eval()
    soft = torch.zeros(1, dims.vision_soft_tokens_per_image, dims.hidden_size)
    out = {}
    for kind, module, prefix, sigs in (
            (ENCODER_KIND, encoder, ENCODER_PREFIX, {encoder_signature(dims.image_size): {IMAGES: torch.zeros(1, h, w, 3)}}),
            (ADAPTER_KIND, adapter, ADAPTER_PREFIX, {ADAPTER_SIGNATURE: {SOFT_TOKENS: soft}})):
        inputs = []
        for name, p in list(module.named_parameters()):
            if _is_input(p):
                inputs.append(name)
                continue
            owner, _, attr = name.rpartition(".")
            inner = name.removeprefix("timm_model.") if kind == ENCODER_KIND else name
            module.get_submodule(owner)._parameters[attr] = nn.Parameter(
                _tensor(get, prefix + inner, tuple(p.shape)), requires_grad=False)
        out[kind] = (module, sigs, inputs)
    return out


def _baked_weights(modules: dict):
    """The 1-D weights baked into the graphs (norms, layer scales): part of the cache key."""
    for kind in sorted(modules):
        for name, p in modules[kind][0].named_parameters():
            if not _is_input(p):
                yield name.encode() + b"\0" + p.detach().numpy().tobytes()


def lower_vision(dims: VisionDims, get: Getter, graph_dir: str | os.PathLike,
                 with_eoi: bool = True) -> dict[str, Path]:
    """Lower the encoder and adapter with their conv / matmul weights as graph inputs into `graph_dir`
    (reused when there: the key covers timm's and our code and the baked 1-D weights)."""
    from converters.lowering.cache import cached_graph, graph_key
    from converters.lowering.export import lower

    modules = _graph_modules(dims, get, with_eoi)
    key = graph_key("vision", [repr(dims), with_eoi], [__name__, "converters.lowering.export"], _baked_weights(modules))

    def make(kind):
        def write(tmp: Path) -> None:
            module, sigs, inputs = modules[kind]
            lower(module, sigs, tmp, weight_names=inputs)
            _absorb_transposes(tmp)
        return write

    return {kind: cached_graph(graph_dir, kind, key, make(kind)) for kind in (ENCODER_KIND, ADAPTER_KIND)}


def _weight_source(kind: str, module: nn.Module, dims: VisionDims, get: Getter, steps: dict[str, list]):
    """get(<lowered parameter name>) for one graph: the checkpoint tensor, permuted as the graph stores it."""
    shapes = {n: tuple(p.shape) for n, p in module.named_parameters()}
    prefix = ENCODER_PREFIX if kind == ENCODER_KIND else ADAPTER_PREFIX

    def source(name: str) -> torch.Tensor:
        if kind == ADAPTER_KIND and name == "eoi":
            return eoi_embedding(dims, get).reshape(shapes[name]).float()
        inner = name.removeprefix("timm_model.") if kind == ENCODER_KIND else name
        t = _tensor(get, prefix + inner, shapes[name])
        return _reshaped(t, steps[name]) if name in steps else t

    return source


# ---------------------------------------------------------------- the components


def _dims(source: Source) -> VisionDims:
    return VisionDims.from_config(source.cfg, source.image_size)


def _lowerer(kind: str):
    def lower(source: Source) -> Lowered:
        dims = _dims(source)
        graph = lower_vision(dims, source.get, source.graph_dir)[kind]
        with torch.device("meta"):  # parameter shapes only
            module = (VisionEncoder(meta_timm_encoder(dims), dims.vision_soft_tokens_per_image)
                      if kind == ENCODER_KIND else VisionAdapter(dims))
        return Lowered(graph, _weight_source(kind, module, dims, source.get, _graph_steps(graph)))
    return lower


def _tolerance(kind: str):
    def of(source: Source, path: Path, recipe: str, report) -> Tolerance:
        t = tolerance(rules_for(recipe), kind, feature_scale(_dims(source), source.get))
        return Tolerance(float(t["max_abs"]), t["why"])
    return of


def quantize_by_op(spliced: Path, out: Path, recipe: str) -> dict[str, Any] | None:
    """The recipe's vision rules applied to the spliced fp32 file (fp32: none, the file is final)."""
    rules = rules_for(recipe)
    if not rules:
        os.replace(spliced, out)
        return None
    return quantize_file(spliced, out, rules)


COMPONENTS = tuple(
    Component(key=kind, name=kind, file=file, kind=kind, modality="vision", what=what, lower=_lowerer(kind),
              tolerance=_tolerance(kind), precision=tower_recipe, quantize_by_op=quantize_by_op,
              record_weights=False)
    for kind, file, what in (
        (ENCODER_KIND, ENCODER_FILE, "MobileNet-V5, convolutions quantized by op"),
        (ADAPTER_KIND, ADAPTER_FILE, "embed_vision + the <end_of_image> row"),
    ))
