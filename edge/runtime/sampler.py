"""Token sampling from logits: greedy, temperature, top-k, top-p, seeded and reproducible.

Mirrors LiteRT-LM's CPU sampler (top-k, then top-p over the renormalised survivors, then
a draw at the given temperature). All arithmetic is float64 on the host; randomness comes
from one `numpy.random.Generator` seeded once, so the same seed and the same logits give
the same tokens on every run and machine.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from edge.errors import UserError


@dataclass(frozen=True)
class SamplerConfig:
    """Sampling parameters; the defaults are greedy decoding."""

    temperature: float = 0.0  # 0 = greedy (argmax, lowest id on ties)
    top_k: int = 0  # keep the k most likely tokens; 0 = no limit
    top_p: float = 1.0  # keep the smallest set whose probability reaches p; 1 = no limit
    seed: int | None = None  # None = a fresh random seed (not reproducible)

    def __post_init__(self):
        if not np.isfinite(self.temperature) or self.temperature < 0:
            raise UserError(f"--temperature must be >= 0 (0 = greedy), got {self.temperature}")
        if self.top_k < 0:
            raise UserError(f"--top-k must be >= 0 (0 = no limit), got {self.top_k}")
        if not 0 < self.top_p <= 1:
            raise UserError(f"--top-p must be in (0, 1], got {self.top_p}")

    @property
    def greedy(self) -> bool:
        return self.temperature == 0 or self.top_k == 1


class Sampler:
    """Draws one token id per call from a logits vector."""

    def __init__(self, config: SamplerConfig = SamplerConfig()):
        self.config = config
        self._rng = np.random.default_rng(config.seed)

    def candidates(self, logits: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(ids, probabilities) that survive temperature, top-k and top-p, most likely first.

        The probabilities are renormalised over the survivors and sum to 1.
        """
        x = _as_vector(logits)
        if self.config.greedy:
            return np.array([int(np.argmax(x))]), np.array([1.0])
        z = x / self.config.temperature
        # Stable descending order: equal logits keep ascending id order, so ties are deterministic.
        order = np.argsort(-z, kind="stable")
        if self.config.top_k:
            order = order[: self.config.top_k]
        z = z[order]
        p = np.exp(z - z[0])
        p /= p.sum()
        if self.config.top_p < 1.0:
            # Keep a token while the mass before it is below p: the token that crosses p stays.
            before = np.cumsum(p) - p
            keep = max(1, int(np.count_nonzero(before < self.config.top_p)))
            order, p = order[:keep], p[:keep]
            p = p / p.sum()
        return order, p

    def sample(self, logits: np.ndarray) -> int:
        ids, p = self.candidates(logits)
        if len(ids) == 1:
            return int(ids[0])
        cdf = np.cumsum(p)
        i = int(np.searchsorted(cdf, self._rng.random() * cdf[-1], side="right"))
        return int(ids[min(i, len(ids) - 1)])


def _as_vector(logits: np.ndarray) -> np.ndarray:
    x = np.asarray(logits, dtype=np.float64).reshape(-1)
    if x.size == 0:
        raise ValueError("empty logits")
    if np.isnan(x).any():
        raise UserError(
            f"the decoder produced NaN logits ({int(np.isnan(x).sum())} of {x.size}); "
            "the artifacts are broken (check `gemma3n-edge parity`) or the KV cache overflowed"
        )
    return x
