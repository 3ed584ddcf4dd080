"""The artifacts' decoder driven token by token as parity and eval compare it: teacher-forced
logits along a given sequence, and exactly n greedy tokens."""

from __future__ import annotations

from typing import Sequence

import numpy as np


def decoder_steps(pipeline, seq: Sequence[int], prompt_len: int, soft: dict | None = None) -> list[np.ndarray]:
    """Teacher-forced decode logits for positions prompt_len-1 .. len(seq)-2, LiteRT-LM style
    (soft: the prompt's image/audio rows by position)."""
    ex = pipeline.executor
    ex.reset()
    if prompt_len > 1:
        pipeline._prefill(list(seq[: prompt_len - 1]), soft)
    return [pipeline._text_logits(ex.decode(*pipeline.embed_at([seq[pos]], pos, soft), pos))
            for pos in range(prompt_len - 1, len(seq) - 1)]


def greedy_tokens(pipeline, prompt_ids: Sequence[int], n: int, soft: dict | None = None) -> list[int]:
    """Exactly n argmax tokens from the artifacts (no stop tokens), soft-token rows spliced in."""
    ex = pipeline.executor
    ex.reset()
    ids = list(prompt_ids)
    pipeline._prefill(ids[:-1], soft)
    token, pos, out = ids[-1], len(ids) - 1, []
    for _ in range(n):
        token = int(np.argmax(pipeline._text_logits(ex.decode(*pipeline.embed([token]), pos))))
        out.append(token)
        pos += 1
    return out
