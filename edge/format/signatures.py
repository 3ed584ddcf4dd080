"""LiteRT-LM's names for entry points and tensors, as the simulator and the manifest use them.

One place for every name the LiteRT-LM runtime matches (see shared/design/LITERT.md); what
each artifact kind must declare, tensor by tensor, is edge/format/contract.py, which uses these names.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Iterable, Sequence

# Artifact kinds: LiteRT-LM's model types for the sections of a .litertlm.
PREFILL_DECODE = "prefill_decode"
EMBEDDER = "embedder"
PER_LAYER_EMBEDDER = "per_layer_embedder"

# Decoder signature and tensor names.
DECODE = "decode"
EMBEDDINGS = "embeddings"
PER_LAYER_EMBEDDINGS = "per_layer_embeddings"
INPUT_POS = "input_pos"
MASK = "mask"
LOGITS = "logits"
TOKEN_IDS = "token_ids"
KV_CACHE_K = "kv_cache_k_{}"
KV_CACHE_V = "kv_cache_v_{}"

# kind -> (prefill signature pattern, decode signature name)
_SIGNATURE_NAMES = {
    PREFILL_DECODE: ("prefill_{}", DECODE),
    EMBEDDER: ("prefill_embedder_{}", "decode_embedder"),
    PER_LAYER_EMBEDDER: ("prefill_per_layer_embedder_{}", "decode_per_layer_embedder"),
}
KINDS_WITH_PREFILL = tuple(_SIGNATURE_NAMES)


@dataclass(frozen=True)
class TensorSpec:
    """A declared tensor: shape and numpy-style dtype name."""

    shape: tuple[int, ...]
    dtype: str

    def to_dict(self) -> dict:
        return {"shape": list(self.shape), "dtype": self.dtype}


@dataclass(frozen=True)
class SignatureSpec:
    """A declared signature: input and output tensors by their signature-level names."""

    inputs: dict[str, TensorSpec]
    outputs: dict[str, TensorSpec]

    def to_dict(self) -> dict:
        return {
            "inputs": {k: v.to_dict() for k, v in self.inputs.items()},
            "outputs": {k: v.to_dict() for k, v in self.outputs.items()},
        }


def prefill_name(kind: str, length: int) -> str:
    """`prefill_128`, `prefill_embedder_128`, ... for an artifact kind."""
    return _SIGNATURE_NAMES[kind][0].format(length)


def decode_name(kind: str) -> str:
    """`decode`, `decode_embedder`, `decode_per_layer_embedder` for an artifact kind."""
    return _SIGNATURE_NAMES[kind][1]


def prefill_lengths_of(kind: str, signature_names: Iterable[str]) -> dict[int, str]:
    """{N: name} for every `prefill..._<N>` signature of `kind` among `signature_names`."""
    pattern = re.compile("^" + re.escape(_SIGNATURE_NAMES[kind][0]).replace(r"\{\}", r"(\d+)") + "$")
    found = {}
    for name in signature_names:
        m = pattern.match(name)
        if m:
            found[int(m.group(1))] = name
    return dict(sorted(found.items()))


def expected_signature_names(kind: str, prefill_lengths: Sequence[int]) -> list[str]:
    """The signatures an artifact of `kind` must have for the model's prefill lengths."""
    if kind not in _SIGNATURE_NAMES:
        return []
    return [prefill_name(kind, n) for n in prefill_lengths] + [decode_name(kind)]
