"""The signature contract: LiteRT-LM's names for entry points and tensors, as data.

One place for every name the LiteRT-LM runtime matches (see shared/design/LITERT.md), so
the converter that writes artifacts, the manifest that declares them, the simulator that
runs them and the app that ships them cannot drift apart.

| artifact kind        | signatures                                          | inputs -> outputs |
|----------------------|-----------------------------------------------------|-------------------|
| prefill_decode       | prefill_<N> (one per length), decode                | embeddings [1,T,H], per_layer_embeddings [1,T,L,P], input_pos [T] int32, mask [1,1,T,C], kv_cache_k_i [1,Hkv,C,D], kv_cache_v_i [1,Hkv,D,C] -> the caches; decode also logits [1,1,V] |
| embedder             | prefill_embedder_<N>, decode_embedder               | token_ids [1,T] int32 -> embeddings [1,T,H] |
| per_layer_embedder   | prefill_per_layer_embedder_<N>, decode_per_layer_embedder | token_ids [1,T] int32 -> embeddings [1,T,L,P] |
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


def decoder_signatures(
    *,
    hidden_size: int,
    num_hidden_layers: int,
    hidden_size_per_layer_input: int,
    vocab_size: int,
    context_length: int,
    prefill_lengths: Sequence[int],
    kv_heads_and_dims: Sequence[tuple[int, int]],
) -> dict[str, SignatureSpec]:
    """Declared I/O of `prefill_<N>` and `decode` for a decoder with one cache pair per entry.

    `kv_heads_and_dims[i] = (num_kv_heads, head_dim)` of cache i (only non-shared layers own a cache).
    """
    caches = {}
    for i, (hkv, d) in enumerate(kv_heads_and_dims):
        caches[KV_CACHE_K.format(i)] = TensorSpec((1, hkv, context_length, d), "float32")
        caches[KV_CACHE_V.format(i)] = TensorSpec((1, hkv, d, context_length), "float32")  # V transposed

    def sig(t: int, with_logits: bool) -> SignatureSpec:
        inputs = {
            EMBEDDINGS: TensorSpec((1, t, hidden_size), "float32"),
            PER_LAYER_EMBEDDINGS: TensorSpec((1, t, num_hidden_layers, hidden_size_per_layer_input), "float32"),
            INPUT_POS: TensorSpec((t,), "int32"),
            MASK: TensorSpec((1, 1, t, context_length), "float32"),
            **caches,
        }
        outputs = dict(caches)
        if with_logits:
            outputs[LOGITS] = TensorSpec((1, 1, vocab_size), "float32")
        return SignatureSpec(inputs, outputs)

    out = {prefill_name(PREFILL_DECODE, n): sig(n, False) for n in prefill_lengths}
    out[DECODE] = sig(1, True)
    return out


def embedder_signatures(kind: str, prefill_lengths: Sequence[int], output_tail: Sequence[int]) -> dict[str, SignatureSpec]:
    """Declared I/O of an embedder: token_ids [1,T] int32 -> embeddings [1,T,*output_tail] float32.

    output_tail is (H,) for the text embedder and (L, P) for the per-layer embedder.
    """
    if kind not in (EMBEDDER, PER_LAYER_EMBEDDER):
        raise ValueError(f"not an embedder kind: {kind}")

    def sig(t: int) -> SignatureSpec:
        return SignatureSpec(
            {TOKEN_IDS: TensorSpec((1, t), "int32")},
            {EMBEDDINGS: TensorSpec((1, t, *output_tail), "float32")},
        )

    out = {prefill_name(kind, n): sig(n) for n in prefill_lengths}
    out[decode_name(kind)] = sig(1)
    return out
