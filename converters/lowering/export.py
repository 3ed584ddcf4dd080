"""Lower a torch module to a LiteRT graph whose weights are signature inputs (no weight data).

Why: converting with the weights baked in costs ~3x the fp32 weight bytes of peak memory
(a 613M-param decoder peaked at 8.2 GB; LITERT.md). Here every weight is a graph input fed a
zero-stride example tensor (`zeros((1,)*ndim).expand(shape)`, no memory), so lowering costs
about the same (~0.6 GB) whatever the model size, and the module may live on the meta device.
`converters.lowering.splice.splice_weights` then turns those inputs back into constants,
streaming and quantizing one tensor at a time.

How: the weights are taken off the module for the duration of the export (so torch.export
does not lift them as constants; they are put back afterwards) and `torch.func.functional_call`
feeds the signature inputs in their place. Tied parameters (one tensor under two names, e.g.
`embed_tokens.weight` and `lm_head.weight`) become one input. Module buffers that are not
listed as weights (RoPE tables, constants) stay in the graph as constants.

Names: signature inputs are the caller's input names plus one input per weight, named after the
parameter with every non-identifier character replaced by `_` (`layers.0.q_proj.weight` ->
`layers_0_q_proj_weight`); `GraphInfo.weights` keeps the mapping, and it is stored in the
file's metadata so the splice needs nothing else. Output names come from the module: return a
dict (`{"logits": ..., "kv_cache_k_0": ...}`) and the signature outputs carry its keys; a bare
tensor becomes `output_0`.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Iterable

from converters.lowering import flatbuf
from edge.errors import UserError

GRAPH_INFO_KEY = "gemma3n_edge.graph_info"  # metadata entry the splice reads (and removes)


class LoweringError(UserError):
    """The module or its signatures cannot be lowered as asked."""


@dataclass(frozen=True)
class TensorSpec:
    name: str
    shape: tuple[int, ...]
    dtype: str  # numpy dtype name


@dataclass(frozen=True)
class WeightInput:
    name: str  # parameter name, as in the checkpoint-style module
    input_name: str  # the signature input that carries it
    shape: tuple[int, ...]
    dtype: str
    aliases: tuple[str, ...] = ()  # other names of the same (tied) tensor


@dataclass(frozen=True)
class SignatureIO:
    name: str
    inputs: tuple[TensorSpec, ...]  # the caller's inputs only (weights excluded)
    outputs: tuple[TensorSpec, ...]


@dataclass(frozen=True)
class GraphInfo:
    path: str
    signatures: tuple[SignatureIO, ...]
    weights: tuple[WeightInput, ...]
    seconds: float = 0.0

    def weight(self, name: str) -> WeightInput:
        for w in self.weights:
            if w.name == name:
                return w
        raise KeyError(name)

    def to_json(self) -> str:
        return json.dumps(asdict(self), sort_keys=True)

    @classmethod
    def from_json(cls, text: str | bytes) -> GraphInfo:
        d = json.loads(text)
        spec = lambda t: TensorSpec(t["name"], tuple(t["shape"]), t["dtype"])  # noqa: E731
        return cls(
            path=d["path"],
            signatures=tuple(SignatureIO(s["name"], tuple(map(spec, s["inputs"])), tuple(map(spec, s["outputs"])))
                             for s in d["signatures"]),
            weights=tuple(WeightInput(w["name"], w["input_name"], tuple(w["shape"]), w["dtype"], tuple(w["aliases"]))
                          for w in d["weights"]),
            seconds=d.get("seconds", 0.0),
        )


def input_name_for(weight_name: str) -> str:
    """The signature input name of a weight: a Python identifier (torch.fx needs one)."""
    name = re.sub(r"\W", "_", weight_name)
    return name if name[:1].isalpha() else f"w_{name}"


def _collect_weights(module, weight_names: Iterable[str] | None) -> list[tuple[str, Any, tuple[str, ...]]]:
    """(canonical name, tensor, aliases) for every weight, tied names grouped."""
    by_id: dict[int, list[str]] = {}
    tensors: dict[int, Any] = {}
    members = list(module.named_parameters(remove_duplicate=False)) + list(module.named_buffers(remove_duplicate=False))
    for name, t in members:
        by_id.setdefault(id(t), []).append(name)
        tensors[id(t)] = t
    params = {id(p) for _, p in module.named_parameters(remove_duplicate=False)}
    if weight_names is None:
        chosen = [i for i in by_id if i in params]
    else:
        wanted = list(weight_names)
        known = {n: i for i, names in by_id.items() for n in names}
        unknown = [n for n in wanted if n not in known]
        if unknown:
            raise LoweringError(
                f"weight_names lists {unknown[:5]}{' ...' if len(unknown) > 5 else ''}, which the module has "
                f"neither as a parameter nor as a buffer; check the names against module.state_dict()."
            )
        chosen = list(dict.fromkeys(known[n] for n in wanted))
    out = [(by_id[i][0], tensors[i], tuple(by_id[i][1:])) for i in chosen]
    # Buffers left in the graph become constants: they must hold data.
    chosen_ids = set(chosen)
    meta = [names[0] for i, names in by_id.items() if i not in chosen_ids and tensors[i].device.type == "meta"]
    if meta:
        raise LoweringError(
            f"{meta[:5]} are on the meta device but not passed as weights, so they would be baked into "
            "the graph with no data: materialize them (module.to_empty / real buffers) or list them in weight_names."
        )
    return out


@contextlib.contextmanager
def _detached(module, names: Iterable[str]):
    """Take the named parameters/buffers off their submodules; put them back (in order) afterwards."""
    snapshots = {}
    try:
        for name in names:
            owner_name, _, attr = name.rpartition(".")
            owner = module.get_submodule(owner_name)
            for store in (owner._parameters, owner._buffers):
                if attr in store:
                    snapshots.setdefault(id(store), (store, dict(store)))
                    del store[attr]
                    break
        yield
    finally:
        for store, snapshot in snapshots.values():
            store.clear()
            store.update(snapshot)


def _wrapper(module, weights: list[WeightInput]):
    import torch

    class WeightsAsInputs(torch.nn.Module):
        """Calls `module` with its weights taken from keyword inputs (functional_call)."""

        def __init__(self):
            super().__init__()
            self.inner = module

        def forward(self, **kwargs):
            state = {}
            for w in weights:
                t = kwargs.pop(w.input_name)
                for name in (w.name, *w.aliases):
                    state[name] = t
            return torch.func.functional_call(self.inner, state, args=(), kwargs=kwargs, strict=False,
                                              tie_weights=False)

    # Tensor names in the graph start with the class path: keep it short.
    WeightsAsInputs.__qualname__, WeightsAsInputs.__module__ = "WeightsAsInputs", "lowering"
    return WeightsAsInputs().eval()


def _example(shape: tuple[int, ...], dtype):
    import torch

    # A zero-stride view of one element: the exporter sees the shape, memory sees 4 bytes.
    return torch.zeros((1,) * len(shape), dtype=dtype).expand(shape) if shape else torch.zeros((), dtype=dtype)


def _np_dtype(torch_dtype) -> str:
    return str(torch_dtype).replace("torch.", "")


def lower(module, signatures: dict[str, dict[str, Any]], out_path: str | os.PathLike, *,
          weight_names: Iterable[str] | None = None, verbose: bool = False) -> GraphInfo:
    """Lower `module` with litert-torch, one signature per entry, weights as signature inputs.

    signatures: {signature name: {input name: example tensor}}; the module is called as
        `module(**inputs)` (e.g. {"prefill_128": {...}, "decode": {...}}).
    weight_names: parameters/buffers to pass as inputs; default every parameter. They must be
        float32; the module may be on the meta device (buffers left in the graph may not).
    The module is put in eval mode. Returns the GraphInfo that is also stored in the file for
    `splice_weights`.
    """
    import litert_torch
    import torch

    if not signatures:
        raise LoweringError("lower() needs at least one signature: {name: {input name: example tensor}}.")
    t0 = time.perf_counter()
    collected = _collect_weights(module, weight_names)
    weights = [WeightInput(name, input_name_for(name), tuple(t.shape), _np_dtype(t.dtype), aliases)
               for name, t, aliases in collected]
    _check_names(signatures, weights)
    not_f32 = [f"{w.name} ({w.dtype})" for w in weights if w.dtype != "float32"]
    if not_f32:
        raise LoweringError(f"weights {not_f32[:5]} are not float32: lower the module in float32 (module.float()); "
                            "the splice stores each weight in the recipe's format from float32 values.")

    out_path = Path(out_path)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    all_names = [n for w in weights for n in (w.name, *w.aliases)]
    show = litert_torch.config.show_progress
    with _detached(module, all_names), tempfile.TemporaryDirectory(dir=out_path.parent) as tmp:
        litert_torch.config.show_progress = verbose
        try:
            wrapper = _wrapper(module, weights)
            builder = litert_torch
            for sig_name, inputs in signatures.items():
                kwargs = dict(inputs)
                for w, (_, t, _) in zip(weights, collected):
                    kwargs[w.input_name] = _example(w.shape, t.dtype)
                builder = builder.signature(sig_name, wrapper, sample_kwargs=kwargs)
            with torch.no_grad():
                raw = Path(tmp) / "raw.tflite"
                builder.convert().export(str(raw))
        finally:
            litert_torch.config.show_progress = show
        model = flatbuf.read_model(raw)
    info = GraphInfo(str(out_path), _signature_io(model, weights), tuple(weights), time.perf_counter() - t0)
    flatbuf.set_metadata(model, GRAPH_INFO_KEY, info.to_json().encode())
    flatbuf.atomic_write_bytes(out_path, flatbuf.pack_model(model))
    return info


def _check_names(signatures: dict[str, dict[str, Any]], weights: list[WeightInput]) -> None:
    seen: dict[str, str] = {}
    for w in weights:
        if w.input_name in seen:
            raise LoweringError(f"weights {seen[w.input_name]!r} and {w.name!r} both map to input {w.input_name!r}; rename one.")
        seen[w.input_name] = w.name
    for sig, inputs in signatures.items():
        clash = sorted(set(inputs) & set(seen))
        if clash:
            raise LoweringError(f"signature {sig!r}: inputs {clash} have the names of weight inputs; rename them.")


def _signature_io(model, weights: list[WeightInput]) -> tuple[SignatureIO, ...]:
    weight_inputs = {w.input_name for w in weights}
    out = []
    for sd in model.signatureDefs:
        sg = model.subgraphs[sd.subgraphIndex]
        spec = lambda io: TensorSpec(flatbuf.s(io.name), tuple(int(d) for d in sg.tensors[io.tensorIndex].shape),  # noqa: E731
                                     flatbuf.numpy_dtype(sg.tensors[io.tensorIndex].type))
        out.append(SignatureIO(flatbuf.s(sd.signatureKey),
                               tuple(spec(io) for io in sd.inputs if flatbuf.s(io.name) not in weight_inputs),
                               tuple(spec(io) for io in sd.outputs)))
    return tuple(out)


def read_graph_info(model) -> GraphInfo:
    """The GraphInfo stored in a graph written by `lower` (a flatbuf ModelT)."""
    raw = flatbuf.get_metadata(model, GRAPH_INFO_KEY)
    if raw is None:
        raise LoweringError(
            "this .tflite carries no weight-input map: it was not written by converters.lowering.lower "
            "(or was already spliced). Lower the module with lower() first."
        )
    return GraphInfo.from_json(raw)


def lower_baked(module, signature: str, sample_kwargs: dict[str, Any]) -> bytes:
    """Convert `module(**sample_kwargs)` with its weights baked in: the .tflite bytes. For graphs of
    a few constants (end_of_audio), and as the reference the weights-as-inputs lowering is tested against."""
    import litert_torch
    import torch

    show = litert_torch.config.show_progress
    litert_torch.config.show_progress = False
    try:
        with torch.no_grad():
            return litert_torch.signature(signature, module, sample_kwargs=sample_kwargs).convert().model_content()
    finally:
        litert_torch.config.show_progress = show
