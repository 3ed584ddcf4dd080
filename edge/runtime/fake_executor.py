"""A scripted executor for pipeline tests: no model, checked calls, chosen logits.

Mirrors LiteRT-LM's `FakeLlmExecutor` (runtime/executor/fake_llm_executor.h): decode
returns scripted outputs in order, and every call is checked against the executor
contract (consecutive positions continuing where the last call stopped, a signature that
fits the cache) and recorded, so tests can assert on the chunking the pipeline chose.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Sequence

import numpy as np

from edge.runtime.executor import Executor, ExecutorError

# One-hot scripted logits put this much on the scripted id (greedy picks it; sampling
# at temperature 1 picks it with probability ~1 - V·e^-40).
SCRIPT_LOGIT = 40.0


@dataclass(frozen=True)
class Call:
    kind: str  # "prefill" or "decode"
    positions: tuple[int, ...]
    signature_length: int  # N of prefill_<N>; 1 for decode
    embeddings: np.ndarray  # [1, n, H] as received (before padding)
    per_layer_embeddings: np.ndarray | None


class FakeExecutor(Executor):
    """Decode returns `script[i]` on the i-th call: a token id (one-hot logits) or a logits vector.

    `script` may also be a callable `f(call_index, position, embeddings) -> id or logits`.
    """

    def __init__(
        self,
        *,
        vocab_size: int,
        context_length: int,
        prefill_lengths: Sequence[int],
        script: Sequence[int | np.ndarray] | Callable[[int, int, np.ndarray], int | np.ndarray] = (),
        needs_per_layer_embeddings: bool = True,
    ):
        self.vocab_size = vocab_size
        self.context_length = context_length
        self.prefill_lengths = tuple(sorted(prefill_lengths))
        self._script = script
        self.needs_per_layer_embeddings = needs_per_layer_embeddings
        self.calls: list[Call] = []
        self.resets = 0
        self._next_pos = 0
        self._decodes = 0

    def reset(self) -> None:
        self.calls.clear()
        self.resets += 1
        self._next_pos = 0
        self._decodes = 0

    def _expect_start(self, start: int) -> None:
        if start != self._next_pos:
            raise ExecutorError(f"call starts at position {start}, the cache holds {self._next_pos} tokens")

    def _check_ple(self, ple) -> None:
        if self.needs_per_layer_embeddings and ple is None:
            raise ExecutorError("per-layer embeddings missing")

    def prefill(self, embeddings, per_layer_embeddings, positions) -> None:
        n = self._check_prefill(embeddings, positions)
        self._check_ple(per_layer_embeddings)
        positions = tuple(int(p) for p in np.asarray(positions).reshape(-1))
        self._expect_start(positions[0])
        self.calls.append(Call("prefill", positions, n, np.array(embeddings), per_layer_embeddings))
        self._next_pos = positions[-1] + 1

    def decode(self, embeddings, per_layer_embeddings, position: int) -> np.ndarray:
        self._check_decode(embeddings, position)
        self._check_ple(per_layer_embeddings)
        self._expect_start(position)
        self.calls.append(Call("decode", (position,), 1, np.array(embeddings), per_layer_embeddings))
        self._next_pos = position + 1
        i = self._decodes
        self._decodes += 1
        if callable(self._script):
            out = self._script(i, position, embeddings)
        else:
            if i >= len(self._script):
                raise ExecutorError(f"decode call {i + 1} but only {len(self._script)} outputs were scripted")
            out = self._script[i]
        if isinstance(out, (int, np.integer)):
            logits = np.zeros(self.vocab_size, dtype=np.float32)
            logits[int(out)] = SCRIPT_LOGIT
            return logits
        out = np.asarray(out, dtype=np.float32).reshape(-1)
        if out.shape != (self.vocab_size,):
            raise ExecutorError(f"scripted logits have shape {out.shape}, vocab is {self.vocab_size}")
        return out

    @property
    def prefill_calls(self) -> list[Call]:
        return [c for c in self.calls if c.kind == "prefill"]

    @property
    def decode_calls(self) -> list[Call]:
        return [c for c in self.calls if c.kind == "decode"]
