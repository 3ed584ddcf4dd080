"""Export-friendly Gemma 3n token embedders: embedder.tflite and per_layer_embedder.tflite.

Both are a single table lookup, so the tables are prepared once at build time (streamed,
row block by row block, in converters/build.py) and the graphs stay trivial:

- embedder: `token_ids` (1, T) -> `embeddings` (1, T, H). Row r of the table is
  `embed_tokens[r] * sqrt(H)` for text ids, and for ids in the vision / audio vocab the
  output of `Gemma3nMultimodalEmbedder`'s hard-token path (embedding(id - offset) ->
  hard norm -> projection -> post-projection norm), exactly what
  `Gemma3nModel.forward` substitutes for those ids (modeling_gemma3n.py). Folding the
  scale and the 2x128 multimodal rows into one table is exact in fp32 (same multiply).
- per-layer embedder: `token_ids` (1, T) -> `embeddings` (1, T, L, P): the PLE table
  `embed_tokens_per_layer * sqrt(P)`, with ids >= vocab_size_per_layer_input mapped to
  row 0 in the graph (HF's `get_per_layer_inputs`). The projection that depends on the
  merged embeddings is in the decoder (see decoder.py).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class Embedder(nn.Module):
    def __init__(self, vocab: int, hidden: int):
        super().__init__()
        self.table = nn.Parameter(torch.empty(vocab, hidden))

    def forward(self, token_ids: torch.Tensor) -> dict[str, torch.Tensor]:
        return {"embeddings": F.embedding(token_ids, self.table)}  # (1, T, H)


class PerLayerEmbedder(nn.Module):
    def __init__(self, vocab_per_layer: int, num_layers: int, per_layer_dim: int):
        super().__init__()
        self.num_layers, self.per_layer_dim = num_layers, per_layer_dim
        self.table = nn.Parameter(torch.empty(vocab_per_layer, num_layers * per_layer_dim))

    def forward(self, token_ids: torch.Tensor) -> dict[str, torch.Tensor]:
        # Multimodal ids (>= the PLE vocab) use row 0, as HF's get_per_layer_inputs does.
        ids = torch.where(token_ids < self.table.shape[0], token_ids, torch.zeros_like(token_ids))
        rows = F.embedding(ids, self.table)  # (1, T, L*P)
        return {"embeddings": rows.reshape(1, -1, self.num_layers, self.per_layer_dim)}


def _rms_norm(x: torch.Tensor, weight: torch.Tensor | None, eps: float) -> torch.Tensor:
    y = x * torch.pow(x.pow(2).mean(-1, keepdim=True) + eps, -0.5)
    return y * weight if weight is not None else y


def multimodal_rows(get, prefix: str, eps: float) -> torch.Tensor:
    """Hard-token embeddings of one multimodal vocab (vocab, H), as Gemma3nMultimodalEmbedder computes them."""
    emb = get(f"{prefix}.embedding.weight").float()
    normed = _rms_norm(emb, get(f"{prefix}.hard_embedding_norm.weight").float(), eps)
    projected = F.linear(normed, get(f"{prefix}.embedding_projection.weight").float())
    return _rms_norm(projected, None, eps)
