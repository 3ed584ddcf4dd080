"""Small building blocks shared by the export-friendly Gemma 3n modules.

Mirrors `transformers/models/gemma3n/modeling_gemma3n.py` (5.23.0) op for op where it
matters for parity (RMSNorm via pow(-0.5) in fp32, RoPE's rotate_half), written so that
litert-torch lowers it to plain TFLite ops and every weight can be a graph input
(`F.linear(x, w)` with `w` stored [out, in] -> FULLY_CONNECTED).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

# Additive mask value for "do not attend". Finite, so that adding two masks cannot
# produce inf - inf = nan; softmax of it underflows to exactly 0 in fp32.
MASK_NEG = -1e30


class RMSNorm(nn.Module):
    """Gemma3nRMSNorm: x * (mean(x^2) + eps)^-0.5 * weight (weight, not 1 + weight)."""

    def __init__(self, dim: int, eps: float = 1e-6, with_scale: bool = True):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim)) if with_scale else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = x * torch.pow(x.pow(2).mean(-1, keepdim=True) + self.eps, -0.5)
        return y * self.weight if self.weight is not None else y


class Linear(nn.Module):
    """Bias-free linear with the checkpoint's [out, in] layout (FULLY_CONNECTED when lowered)."""

    def __init__(self, in_features: int, out_features: int):
        super().__init__()
        self.weight = nn.Parameter(torch.empty(out_features, in_features))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x, self.weight)


def rope_inv_freq(head_dim: int, theta: float) -> torch.Tensor:
    # Same expression as Gemma3nRotaryEmbedding.compute_default_rope_parameters. Explicitly on
    # the CPU: modules are built on the meta device for lowering, but this is a graph constant.
    return 1.0 / (theta ** (torch.arange(0, head_dim, 2, dtype=torch.float, device="cpu") / head_dim))


def rope_cos_sin(positions: torch.Tensor, inv_freq: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """positions (T,) int -> cos, sin (T, D)."""
    freqs = positions.float()[:, None] * inv_freq[None, :]  # (T, D/2)
    emb = torch.cat((freqs, freqs), dim=-1)  # (T, D)
    return emb.cos(), emb.sin()


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """x (..., T, D); cos/sin (T, D) broadcast over the leading dims."""
    half = x.shape[-1] // 2
    rotated = torch.cat((-x[..., half:], x[..., :half]), dim=-1)
    return x * cos + rotated * sin


def update_cache(cache: torch.Tensor, update: torch.Tensor, start: torch.Tensor, dim: int) -> torch.Tensor:
    """Write `update` into `cache` at `start` along `dim` as one DYNAMIC_UPDATE_SLICE."""
    from litert_torch.generative.custom_ops.dynamic_update_slice import dynamic_update_slice

    zero = torch.zeros((), dtype=torch.int32)
    indices = [start if d == dim else zero for d in range(cache.dim())]
    return dynamic_update_slice(cache, update, indices)


def read_window(x: torch.Tensor, start: torch.Tensor, size: int, dim: int) -> torch.Tensor:
    """`size` entries of `x` from `start` along `dim` as one SLICE with a runtime begin (start is
    clamped so the window fits)."""
    from converters.lowering.dynamic_slice import dynamic_slice

    zero = torch.zeros((), dtype=torch.int32)
    starts = [start if d == dim else zero for d in range(x.dim())]
    return dynamic_slice(x, starts, [size if d == dim else n for d, n in enumerate(x.shape)])
