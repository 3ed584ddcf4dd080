"""Which prefill signatures cover a prompt: LiteRT-LM's work groups, kept inside the cache.

LiteRT-LM (`GetOptimizedPrefillWorkGroups`, litert_compiled_model_executor_utils.cc) runs
the longest prefill signature while the remaining tokens fill it, then finishes with the
shortest signature that holds the remainder (padded). One constraint is added here: a
chunk run with signature length N writes N cache rows from its start position, so it must
satisfy start + N <= C — a dynamic-update-slice that overruns the cache is clamped by the
runtime and would overwrite earlier, valid entries. Near the end of the context, where no
prefill signature fits, single tokens go through `decode` (T = 1 always fits).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence


@dataclass(frozen=True)
class Chunk:
    """`count` prompt tokens starting at cache position `start`, run through one signature."""

    start: int
    count: int
    length: int  # signature length N (count <= N; N - count rows are padding); 1 for decode
    via_decode: bool = False  # no prefill signature fits the cache here: use `decode`


def signature_length_for(count: int, start: int, lengths: Sequence[int], context_length: int) -> int | None:
    """Smallest prefill length N >= count with start + N <= context_length, or None."""
    fits = [n for n in lengths if n >= count and start + n <= context_length]
    return min(fits) if fits else None


def plan_prefill(num_tokens: int, start: int, lengths: Sequence[int], context_length: int) -> list[Chunk]:
    """Chunks covering positions [start, start + num_tokens), in order."""
    if num_tokens < 0 or start < 0:
        raise ValueError(f"bad prefill request: {num_tokens} tokens at {start}")
    if start + num_tokens > context_length:
        raise ValueError(f"{num_tokens} tokens at position {start} exceed the context of {context_length}")
    if not lengths:
        raise ValueError("the decoder has no prefill signatures")
    chunks: list[Chunk] = []
    pos, remaining = start, num_tokens
    while remaining > 0:
        fits = [n for n in sorted(lengths) if pos + n <= context_length]
        if not fits:
            chunks.append(Chunk(pos, 1, 1, via_decode=True))
            pos, remaining = pos + 1, remaining - 1
            continue
        longest = fits[-1]
        if remaining >= longest:
            chunks.append(Chunk(pos, longest, longest))
            pos, remaining = pos + longest, remaining - longest
        else:
            n = min(x for x in fits if x >= remaining)
            chunks.append(Chunk(pos, remaining, n))
            pos, remaining = pos + remaining, 0
    return chunks
