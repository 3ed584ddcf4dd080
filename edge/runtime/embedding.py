"""Token ids -> embeddings: the text embedder and the per-layer embedder (PLE) lookups.

Mirrors LiteRT-LM's `EmbeddingLookup` (runtime/components/embedding_lookup.h): the
decoder takes embeddings, not ids, so the lookup is a separate component that can be
backed by a .tflite (`LiteRtEmbeddingLookup`: the `embedder` / `per_layer_embedder`
artifacts) or by a table in memory (`TableEmbeddingLookup`). Multimodal input reuses the
same path: the text lookup embeds the placeholder ids and the pipeline (`Pipeline.embed_at`)
overwrites those rows with the image/audio soft-token embeddings.
"""

from __future__ import annotations

import os
from abc import ABC, abstractmethod
from typing import Sequence

import numpy as np

from edge.errors import UserError
from edge.format.signatures import EMBEDDINGS, TOKEN_IDS, decode_name, prefill_lengths_of


class EmbeddingLookup(ABC):
    """ids [n] -> embeddings [1, n, *output_tail] float32."""

    @property
    @abstractmethod
    def output_tail(self) -> tuple[int, ...]:
        """(H,) for the text embedder, (L, P) for the per-layer embedder."""

    @abstractmethod
    def lookup(self, token_ids: Sequence[int]) -> np.ndarray:
        ...

    def close(self) -> None:
        pass


class TableEmbeddingLookup(EmbeddingLookup):
    """Rows of an in-memory (or memory-mapped) table, optionally scaled.

    ids >= `id_limit` read row 0, which is what Gemma 3n does for the per-layer table
    (ids beyond vocab_size_per_layer_input, i.e. image/audio tokens, use PLE row 0).
    """

    def __init__(self, table: np.ndarray, *, scale: float = 1.0, id_limit: int | None = None, tail=None):
        self._table = table
        self._scale = np.float32(scale)
        self._id_limit = id_limit
        self._tail = tuple(tail) if tail is not None else tuple(table.shape[1:])

    @property
    def output_tail(self) -> tuple[int, ...]:
        return self._tail

    def lookup(self, token_ids: Sequence[int]) -> np.ndarray:
        ids = np.asarray(token_ids, dtype=np.int64).reshape(-1)
        if self._id_limit is not None:
            ids = np.where(ids < self._id_limit, ids, 0)
        if ids.size and (ids.min() < 0 or ids.max() >= self._table.shape[0]):
            raise UserError(f"token id out of range for an embedding table of {self._table.shape[0]} rows")
        rows = np.asarray(self._table[ids], dtype=np.float32) * self._scale
        return rows.reshape(1, ids.size, *self._tail)


class LiteRtEmbeddingLookup(EmbeddingLookup):
    """An embedder .tflite: `prefill_<kind>_<N>` for runs of tokens, `decode_<kind>` for one.

    Runs of n tokens go through the longest signature while they fill it, the remainder
    through the shortest one that holds it (padded with id 0, the pad token; padded rows
    are dropped).
    """

    def __init__(self, model, kind: str, *, id_limit: int | None = None):
        """`model` is an edge.runtime.litert_model.CompiledModelFile; `kind` an artifact kind."""
        self._model = model
        self.kind = kind
        self._id_limit = id_limit
        self._decode = decode_name(kind)
        self._prefill = prefill_lengths_of(kind, model.signatures)
        if self._decode not in model.signatures:
            raise UserError(
                f"{model.path.name}: no '{self._decode}' signature (has: {', '.join(model.signatures)}); "
                f"it is not a {kind} artifact"
            )
        for sig in (self._decode, *self._prefill.values()):
            ins, outs = model.input_details(sig), model.output_details(sig)
            if TOKEN_IDS not in ins or EMBEDDINGS not in outs:
                raise UserError(
                    f"{model.path.name}:{sig}: expected input '{TOKEN_IDS}' and output '{EMBEDDINGS}', "
                    f"got inputs {list(ins)} and outputs {list(outs)}"
                )
        self._tail = tuple(model.output_details(self._decode)[EMBEDDINGS]["shape"][2:])

    @classmethod
    def from_file(cls, path: str | os.PathLike, kind: str, *, id_limit: int | None = None, num_threads: int = 0):
        from edge.runtime.litert_model import CompiledModelFile

        return cls(CompiledModelFile(path, num_threads=num_threads), kind, id_limit=id_limit)

    @property
    def output_tail(self) -> tuple[int, ...]:
        return self._tail

    def _run(self, signature: str, ids: np.ndarray, length: int) -> np.ndarray:
        padded = np.zeros((1, length), dtype=np.int32)
        padded[0, : ids.size] = ids
        out = self._model.run_arrays(signature, {TOKEN_IDS: padded})[EMBEDDINGS]
        return out[:, : ids.size]

    def lookup(self, token_ids: Sequence[int]) -> np.ndarray:
        ids = np.asarray(token_ids, dtype=np.int32).reshape(-1)
        if self._id_limit is not None:
            ids = np.where(ids < self._id_limit, ids, 0).astype(np.int32)
        parts, pos = [], 0
        lengths = sorted(self._prefill)
        while pos < ids.size:
            rest = ids.size - pos
            if rest == 1 or not lengths:
                parts.append(self._run(self._decode, ids[pos : pos + 1], 1))
                pos += 1
                continue
            n = lengths[-1] if rest >= lengths[-1] else min(x for x in lengths if x >= rest)
            take = min(n, rest)
            parts.append(self._run(self._prefill[n], ids[pos : pos + take], n))
            pos += take
        if not parts:
            return np.zeros((1, 0, *self._tail), dtype=np.float32)
        return np.concatenate(parts, axis=1)

    def close(self) -> None:
        self._model.close()

