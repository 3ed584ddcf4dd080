"""Which prefill signatures a prompt goes through: LiteRT-LM's work groups and call boundaries.

See `plan_prompt_prefill`. One constraint is added: a chunk run with signature length N writes N
cache rows from its start, so it must satisfy start + N <= C (a dynamic-update-slice that overruns
the cache is clamped by the runtime and would overwrite earlier, valid entries); near the end of
the context a shorter signature that fits is used, else single tokens go through `decode`.
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


def plan_prompt_prefill(num_prompt_tokens: int, lengths: Sequence[int], context_length: int) -> list[Chunk]:
    """LiteRT-LM's calls for a whole prompt of N tokens (all but the last, which the first decode runs).

    The engine (`LlmLiteRtCompiledModelExecutorStatic::Prefill`, CPU) plans work groups over all N
    ids, greedily: the longest signature as often as it fits whole, then the next shorter one, the
    shortest taking the final remainder (padded). Each call holds its group's last id back as the
    pending token and runs it first in the next call (`PrefillInternal`: "We always hold one pending
    token"), so call k covers positions [E(k-1) - 1, E(k) - 1) with group k's signature, the first
    call one token fewer. A signature that would write past the cache falls back to `decode`.
    """
    if num_prompt_tokens > context_length:
        raise ValueError(f"{num_prompt_tokens} prompt tokens exceed the context of {context_length}")
    if num_prompt_tokens < 1:
        return []
    if not lengths:
        raise ValueError("the decoder has no prefill signatures")
    groups, remaining = [], num_prompt_tokens
    for n in sorted(set(lengths), reverse=True):
        while remaining >= n:
            groups.append((n, n))
            remaining -= n
    if remaining:
        groups.append((remaining, min(lengths)))
    chunks, end = [], 0
    for count, length in groups:
        start = max(0, end - 1)
        end += count
        stop = end - 1
        if stop <= start:
            continue
        if start + length > context_length:  # (the engine refuses here; we keep the cache intact)
            length = signature_length_for(stop - start, start, lengths, context_length) or 0
        if length:
            chunks.append(Chunk(start, stop - start, length))
        else:
            chunks += [Chunk(p, 1, 1, via_decode=True) for p in range(start, stop)]
    return chunks
