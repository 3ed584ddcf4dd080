"""The artifact contract as data: for each artifact kind, the signatures LiteRT-LM looks up and
the tensors each one takes and gives, by name, in binding order, with shapes and dtypes.

Shapes are written with symbols: `T` is the signature's token count (N of `prefill_<N>`, 1 for
the decode signatures), `H` the text width, `L` layers, `P` the per-layer-input width, `C` the
context, `V` the vocabulary; the towers' own sizes (`IH`, `IW` image, `S` soft tokens, `F`
feature width, `R` adapter rows, `WF` audio frames in, `M` mel bins, `A` audio tokens, `D` audio
width) only have to agree between the tensors of one artifact. `{i}` in a tensor name is one
entry per KV cache; `K{i}`/`E{i}` are that cache's heads and head width.

The exporter checks every artifact it writes against its entry (`check`), so a change to a
module that breaks what the phone binds fails the build, not the phone. The runtime-side names
(edge/format/signatures.py) and this table must agree: tests/test_contract.py reads both.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from edge.errors import UserError


@dataclass(frozen=True)
class Tensor:
    name: str
    shape: tuple[str | int, ...]
    dtype: str


@dataclass(frozen=True)
class Signature:
    name: str  # `{T}` stands for the prefill length
    inputs: tuple[Tensor, ...]
    outputs: tuple[Tensor, ...]


@dataclass(frozen=True)
class Kind:
    """One artifact kind: LiteRT-LM's model type and the signatures it must have."""

    signatures: tuple[Signature, ...]
    doc: str
    # The runtime binds the towers' tensors by position (input 0, output 0, ...), so their order is
    # part of the contract; the text artifacts' by name, in any order.
    positional: bool = False


def _t(name: str, shape: str, dtype: str = "float32") -> Tensor:
    return Tensor(name, tuple(int(d) if d.isdigit() else d for d in shape.split(",")) if shape else (), dtype)


def _lookup(prefix: str, tail: str) -> tuple[Signature, ...]:
    io = ((_t("token_ids", "1,T", "int32"),), (_t("embeddings", f"1,T,{tail}"),))
    return (Signature(f"prefill_{prefix}{{T}}", *io), Signature(f"decode_{prefix.rstrip('_')}", *io))


_CACHES = (_t("kv_cache_k_{i}", "1,K{i},C,E{i}"), _t("kv_cache_v_{i}", "1,K{i},E{i},C"))
_STEP_IN = (_t("embeddings", "1,T,H"), _t("per_layer_embeddings", "1,T,L,P"), _t("input_pos", "T", "int32"),
            _t("mask", "1,1,T,C"), *_CACHES)

KINDS: dict[str, Kind] = {
    "embedder": Kind(_lookup("embedder_", "H"), "token ids -> text embeddings (table outside, embedder.weights)"),
    "per_layer_embedder": Kind(_lookup("per_layer_embedder_", "L,P"),
                               "token ids -> per-layer embeddings (the PLE table, per_layer_embedder.weights)"),
    "prefill_decode": Kind((
        Signature("prefill_{T}", _STEP_IN, _CACHES),
        Signature("decode", _STEP_IN, (*_CACHES, _t("logits", "1,1,V"))),
    ), "the decoder: caches updated in place; decode also gives the logits"),
    "vision_encoder": Kind((Signature("vision_{IW}", (_t("images", "1,IH,IW,3"),), (_t("features", "1,S,F"),)),),
                           "pixels NHWC in [0,1] -> MobileNet-V5 features (signature 0 is what the runtime runs)",
                           positional=True),
    "vision_adapter": Kind((Signature("vision_adapter", (_t("soft_tokens", "1,S,F"),), (_t("mm_embedding", "1,R,H"),)),),
                           "features -> text-space rows: the soft tokens, then <end_of_image>", positional=True),
    "audio_encoder_hw": Kind((Signature("audio_encoder", (_t("src_inputs", "1,WF,M"), _t("mask", "1,WF", "bool")),
                                        (_t("features", "1,A,D"), _t("mask", "1,A", "bool"))),),
                             "mel frames + valid mask -> conformer features + token mask", positional=True),
    "audio_adapter": Kind((Signature("audio_adapter", (_t("mask", "1,A", "bool"), _t("features", "1,A,D")),
                                     (_t("mm_embedding", "1,A,H"),)),),
                          "the encoder's mask, then its features", positional=True),
    "end_of_audio": Kind((Signature("end_of_audio", (), (_t("embeddings", "1,1,H"),)),),
                         "no inputs: the <end_of_audio> embedding the runtime caches", positional=True),
}


class ContractError(UserError):
    """An artifact does not have the signatures or tensors its kind declares."""


def _indices(tensors: tuple[Tensor, ...], names) -> list[int]:
    """The `{i}` indices (KV caches) that `names` hold for the declared tensors."""
    patterns = [re.compile("^" + re.escape(t.name).replace(r"\{i\}", r"(\d+)") + "$")
                for t in tensors if "{i}" in t.name]
    return sorted({int(m.group(1)) for n in names for p in patterns if (m := p.match(n))})


def _expand(tensors: tuple[Tensor, ...], indices) -> list[Tensor]:
    """The declared tensors with each run of `{i}` entries repeated once per index (k_0, v_0, k_1, ...)."""
    out, group = [], []
    for t in (*tensors, None):
        if t is not None and "{i}" in t.name:
            group.append(t)
            continue
        out += [Tensor(g.name.format(i=i), tuple(d.format(i=i) if isinstance(d, str) else d for d in g.shape), g.dtype)
                for i in indices for g in group]
        group = []
        if t is not None:
            out.append(t)
    return out


def _match_signature(declared: Signature, name: str) -> dict[str, int] | None:
    pattern = "^" + re.sub(r"\\\{(\w+)\\\}", r"(?P<\1>\\d+)", re.escape(declared.name)) + "$"
    m = re.match(pattern, name)
    return None if m is None else {k: int(v) for k, v in m.groupdict().items()}


def check(kind: str, signatures: dict, known: dict[str, int], where: str) -> None:
    """Raise ContractError unless `signatures` ({name: {"inputs": {tensor: {shape, dtype}},
    "outputs": ...}}, in binding order) is what `kind` declares; `known` fixes symbols (H, C, ...)."""
    if kind not in KINDS:
        raise ContractError(f"{where}: unknown artifact kind {kind!r}; declared: {', '.join(KINDS)}")
    problems = []
    for declared in KINDS[kind].signatures:
        hits = {n: b for n in signatures if (b := _match_signature(declared, n)) is not None}
        if not hits:
            problems.append(f"no signature {declared.name!r}")
        for name, bound in hits.items():
            bound.setdefault("T", 1)  # the decode signatures: one token
            symbols = {**known, **bound}
            for side in ("inputs", "outputs"):
                tensors = getattr(declared, side)
                actual = signatures[name][side]
                problems += _check_tensors(f"{name} {side}", _expand(tensors, _indices(tensors, actual)), actual,
                                           symbols, KINDS[kind].positional)
    extra = [n for n in signatures if not any(_match_signature(d, n) is not None for d in KINDS[kind].signatures)]
    problems += [f"undeclared signature {n!r}" for n in extra]
    if problems:
        raise ContractError(f"{where} breaks the {kind} contract (edge/format/contract.py): " + "; ".join(problems[:6]))


def _check_tensors(where: str, declared: list[Tensor], actual: dict, symbols: dict[str, int],
                   positional: bool) -> list[str]:
    names = [t.name for t in declared]
    if (names != list(actual)) if positional else (sorted(names) != sorted(actual)):
        return [f"{where} are {list(actual)}, declared {names}" + (" (bound by position)" if positional else "")]
    problems = []
    for t in declared:
        got = actual[t.name]
        shape = list(got["shape"])
        if got["dtype"] != t.dtype:
            problems.append(f"{where} {t.name} is {got['dtype']}, declared {t.dtype}")
        if len(shape) != len(t.shape):
            problems.append(f"{where} {t.name} has shape {shape}, declared {list(t.shape)}")
            continue
        for dim, want in zip(shape, t.shape):
            value = symbols.setdefault(want, dim) if isinstance(want, str) else want
            if dim != value:
                problems.append(f"{where} {t.name} has shape {shape}, declared {list(t.shape)} with {want}={value}")
                break
    return problems


def instantiate(kind: str, sizes: dict[str, int], prefill: tuple[int, ...] = (),
                caches: tuple[tuple[int, int], ...] = ()) -> dict[str, dict]:
    """The signatures an artifact of `kind` declares for these sizes, in the form `check` reads:
    one `prefill_..._<N>` per prefill length, `caches[i] = (heads, head width)` of KV cache i.
    What a hand-made artifact (tests' toy models) must declare in its manifest."""
    out = {}
    for declared in KINDS[kind].signatures:
        lengths = prefill if "{T}" in declared.name else (1,)
        for n in lengths:
            symbols = {**sizes, "T": n}
            for i, (heads, width) in enumerate(caches):
                symbols |= {f"K{i}": heads, f"E{i}": width}
            tensors = {side: _expand(ts, range(len(caches)))
                       for side, ts in (("inputs", declared.inputs), ("outputs", declared.outputs))}
            out[declared.name.format(T=n, **sizes)] = {
                side: {t.name: {"shape": [symbols[d] if isinstance(d, str) else d for d in t.shape], "dtype": t.dtype}
                       for t in ts} for side, ts in tensors.items()}
    return out
