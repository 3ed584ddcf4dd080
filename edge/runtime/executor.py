"""The executor interface: prefill and decode over a decoder that keeps its KV cache.

Mirrors LiteRT-LM's `LlmExecutorBase` (runtime/executor/llm_executor_base.h), one level
lower: our executors take embeddings (the pipeline looks them up, so image/audio soft
embeddings can be spliced in at placeholder positions) rather than token ids.

Contract, for a decoder lowered with context length C:
- `prefill(embeddings [1,n,H], per_layer_embeddings [1,n,L,P], positions [n])` writes the K/V
  of n consecutive tokens. The executor runs the smallest `prefill_<N>` signature with
  N >= n whose rows fit the cache (positions[0] + N <= C) and pads the rest: padded rows
  continue the positions (so their garbage K/V lands beyond the prompt, masked out until
  a later token overwrites it) and see a causal mask like real rows.
- `decode(embeddings [1,1,H], per_layer_embeddings [1,1,L,P], position)` writes one token's K/V
  and returns the logits [V] of the next token.
- the mask is additive over absolute cache positions: 0 where row i may attend (cache
  position <= positions[i]), MASK_NEGATIVE elsewhere. The decoder derives the sliding
  window itself.
"""

from __future__ import annotations

from abc import ABC, abstractmethod

import numpy as np

from edge.runtime.prefill_plan import signature_length_for

# LiteRT-LM fills float masks with -0.7 * FLT_MAX (litert_compiled_model_executor_utils.cc,
# InitializeAttentionMask): finite, so a fully masked row still has a defined softmax. If the
# graph adds a second mask of that size, masked entries overflow to -inf, which is harmless
# while every row keeps one finite entry: a causal row always keeps its own position.
MASK_NEGATIVE = np.float32(-0.7 * np.finfo(np.float32).max)


def causal_mask(positions: np.ndarray, context_length: int) -> np.ndarray:
    """Additive mask [1,1,T,C]: row i attends to cache positions 0..positions[i]."""
    positions = np.asarray(positions, dtype=np.int64).reshape(-1, 1)
    cols = np.arange(context_length, dtype=np.int64).reshape(1, -1)
    mask = np.where(cols <= positions, np.float32(0), MASK_NEGATIVE).astype(np.float32)
    return mask.reshape(1, 1, positions.shape[0], context_length)


def padded_positions(positions: np.ndarray, length: int) -> np.ndarray:
    """Positions [n] extended to [length] by continuing the sequence (see module docstring)."""
    positions = np.asarray(positions, dtype=np.int32).reshape(-1)
    n = positions.shape[0]
    if n == length:
        return positions
    tail = positions[-1] + 1 + np.arange(length - n, dtype=np.int32)
    return np.concatenate([positions, tail]).astype(np.int32)


def pad_rows(x: np.ndarray | None, length: int) -> np.ndarray | None:
    """[1,n,...] -> [1,length,...] with zero rows appended."""
    if x is None or x.shape[1] == length:
        return x
    pad = np.zeros((x.shape[0], length - x.shape[1], *x.shape[2:]), dtype=x.dtype)
    return np.concatenate([x, pad], axis=1)


class ExecutorError(RuntimeError):
    """The pipeline broke the executor contract (a bug, not bad user input)."""


class Executor(ABC):
    """A decoder with a KV cache, driven one prefill chunk or one decode step at a time.

    Implementations set these in their constructor, from the decoder's signatures.
    """

    context_length: int  # C: cache positions available
    prefill_lengths: tuple[int, ...]  # the N of every prefill_<N> signature, ascending
    vocab_size: int  # width of the decode logits
    needs_per_layer_embeddings: bool = True

    @abstractmethod
    def prefill(self, embeddings: np.ndarray, per_layer_embeddings: np.ndarray | None, positions: np.ndarray) -> None:
        """Write the K/V of len(positions) consecutive tokens."""

    @abstractmethod
    def decode(self, embeddings: np.ndarray, per_layer_embeddings: np.ndarray | None, position: int) -> np.ndarray:
        """Write one token's K/V at `position`; return the next token's logits [V] float32."""

    @abstractmethod
    def reset(self) -> None:
        """Zero the KV cache: the next call starts a new sequence."""

    def close(self) -> None:
        """Release native resources (no-op by default)."""

    def _check_prefill(self, embeddings: np.ndarray, positions: np.ndarray) -> int:
        """Validate a prefill call and return the signature length N to run."""
        positions = np.asarray(positions).reshape(-1)
        n = positions.shape[0]
        if n == 0:
            raise ExecutorError("prefill of zero tokens")
        if embeddings.shape[:2] != (1, n):
            raise ExecutorError(f"embeddings {embeddings.shape} do not match {n} positions")
        if np.any(np.diff(positions) != 1):
            raise ExecutorError(f"prefill positions must be consecutive, got {positions.tolist()}")
        start = int(positions[0])
        length = signature_length_for(n, start, self.prefill_lengths, self.context_length)
        if length is None:
            raise ExecutorError(
                f"no prefill signature covers {n} tokens at position {start} within context "
                f"{self.context_length} (lengths {list(self.prefill_lengths)})"
            )
        return length

    def _check_decode(self, embeddings: np.ndarray, position: int) -> None:
        if embeddings.shape[:2] != (1, 1):
            raise ExecutorError(f"decode takes one token, got embeddings {embeddings.shape}")
        if not 0 <= position < self.context_length:
            raise ExecutorError(f"decode position {position} outside the context [0, {self.context_length})")
