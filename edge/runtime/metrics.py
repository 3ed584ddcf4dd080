"""Generation metrics: time to first token, prefill and decode throughput, peak memory.

Definitions (as LiteRT-LM's benchmark reports them):
- TTFT: from the start of `generate` (tokenization included) to the first token sampled;
- prefill: every prompt token, i.e. the chunked prefill calls plus the decode call on the
  last prompt token that yields the first token's logits; tok/s = prompt tokens / time;
- decode: the remaining generated tokens, one decode call each; tok/s = those tokens / time
  (None when only one token was generated);
- peak RSS: the process's maximum resident set size so far (getrusage), which includes
  the mapped model weights.
"""

from __future__ import annotations

import resource
import sys
from dataclasses import asdict, dataclass


def peak_rss_mib() -> float:
    """Peak resident set size of this process in MiB."""
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    # Linux reports KiB, macOS bytes.
    return rss / (1024 * 1024) if sys.platform == "darwin" else rss / 1024


@dataclass(frozen=True)
class GenerationMetrics:
    prompt_tokens: int
    generated_tokens: int
    prefill_calls: int  # prefill_<N> invocations (plus decode steps used to prefill near the context end)
    ttft_s: float
    prefill_s: float
    decode_s: float
    peak_rss_mib: float

    @property
    def prefill_tokens_per_s(self) -> float | None:
        return self.prompt_tokens / self.prefill_s if self.prefill_s > 0 else None

    @property
    def decode_tokens_per_s(self) -> float | None:
        n = self.generated_tokens - 1
        return n / self.decode_s if n > 0 and self.decode_s > 0 else None

    def to_dict(self) -> dict:
        d = asdict(self)
        d["prefill_tokens_per_s"] = self.prefill_tokens_per_s
        d["decode_tokens_per_s"] = self.decode_tokens_per_s
        return d

    def lines(self) -> list[str]:
        def rate(x: float | None) -> str:
            return f"{x:.1f} tok/s" if x is not None else "n/a"

        return [
            f"TTFT:        {self.ttft_s * 1000:.1f} ms",
            f"prefill:     {rate(self.prefill_tokens_per_s)} ({self.prompt_tokens} tokens, {self.prefill_calls} calls)",
            f"decode:      {rate(self.decode_tokens_per_s)} ({self.generated_tokens} tokens)",
            f"peak RSS:    {self.peak_rss_mib:.0f} MiB",
        ]
