"""A dynamic slice that lowers to one TFLite SLICE with a runtime `begin` (no transpose, no gather).

litert-torch has a custom op for the write side (`dynamic_update_slice`) but none for reading a
window at a runtime offset: `index_select`/`narrow` with a tensor start lower to TRANSPOSE +
GATHER_ND, which copies the whole KV cache every step. `stablehlo.dynamic_slice` becomes SLICE
with a computed, clamped `begin`: it copies only the window.
"""

from __future__ import annotations

from typing import Sequence

import torch
from litert_converter.mlir import ir
from litert_converter.mlir.dialects import stablehlo
from litert_torch.backend import lowerings


@torch.library.custom_op("gemma3n_edge::dynamic_slice", mutates_args=())
def dynamic_slice(x: torch.Tensor, start_indices: Sequence[torch.Tensor], sizes: Sequence[int]) -> torch.Tensor:
    """x[start_0 : start_0 + sizes_0, ...], starts clamped so the slice fits (stablehlo's rule)."""
    starts = [min(max(int(s.item()), 0), x.shape[d] - n) for d, (s, n) in enumerate(zip(start_indices, sizes))]
    return x[tuple(slice(s, s + n) for s, n in zip(starts, sizes))].clone()


@dynamic_slice.register_fake
def _(x, start_indices, sizes):
    return x.new_empty(tuple(sizes))


@lowerings.lower(torch.ops.gemma3n_edge.dynamic_slice)
def _lower(lctx, x: ir.Value, start_indices: Sequence[ir.Value], sizes: Sequence[int]):
    return stablehlo.dynamic_slice(x, start_indices, ir.DenseI64ArrayAttr.get(list(sizes)))
