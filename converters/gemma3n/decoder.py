"""Export-friendly Gemma 3n text decoder: the `prefill_<N>` / `decode` graph of decoder.tflite.

Mirrors `Gemma3nTextModel` / `Gemma3nTextDecoderLayer` of transformers 5.23.0
(`models/gemma3n/modeling_gemma3n.py`), with the pieces a phone runtime needs made explicit:

- inputs are what LiteRT-LM feeds (LITERT.md): `embeddings` (1, T, H) after the
  multimodal merge, `per_layer_embeddings` (1, T, L, P) = the scaled PLE table rows,
  `input_pos` (T,), an additive causal `mask` (1, 1, T, C), and one K and one V cache
  per layer that owns a cache. The PLE *projection* depends on the merged embeddings,
  so it lives here, at the decoder input (GEMMA3N.md "PLE").
- KV caches: K (1, Hkv, C, D), V transposed (1, Hkv, D, C), written in place with one
  DYNAMIC_UPDATE_SLICE each. Only non-shared layers own a cache; a KV-shared layer
  reads the cache of its store layer (the last non-shared layer of its type), as HF's
  `kv_sharing_modes` defines. Caches are full length C for sliding layers too (every
  LiteRT-LM from 0.11 runs the bundle; window-sized ring caches need 0.17), but a sliding
  layer attends only over the W + T - 1 rows its T queries can see, read with one SLICE at
  a runtime offset: attending over all C rows cost ~4 ms per layer per decode step at
  C = 4096 (the cache is copied and packed as a matmul operand every step), the window
  ~0.6 ms (measured with tools/profile_decode.py; docs/notes/engine_speed_research.md). The
  sliding window itself is applied through the mask, derived in the graph from `input_pos`.
- AltUp predict/correct, LAuReL, Gaussian top-k sparsity (Phi^-1(p) computed exactly as
  HF does, in fp32), QK/V norms, dual RoPE, final norm, tied LM head and the final
  logit softcap 30*tanh(x/30) are all inside the graph.

Parameters carry the checkpoint's names below `model.language_model.` (the LM head is
the tied `embed_tokens.weight`), so loading is the identity.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from converters.gemma3n.layers import (MASK_NEG, Linear, RMSNorm, apply_rope, read_window, rope_cos_sin, rope_inv_freq,
                                      update_cache)

CHECKPOINT_PREFIX = "model.language_model."


def kv_sharing(layer_types, num_kv_shared_layers: int) -> list[int]:
    """For each layer, the index of the layer whose K/V it attends to (itself unless KV-shared).

    Same rule as HF's `Gemma3nTextConfig.kv_sharing_modes`: from layer L - shared on, every
    layer reuses the last non-shared layer of its own type.
    """
    n = len(layer_types)
    first_shared = n - num_kv_shared_layers
    source = list(range(n))
    for i in range(first_shared, n):
        source[i] = max(j for j in range(first_shared) if layer_types[j] == layer_types[i])
    return source


def gaussian_std_multiplier(sparsity: float) -> float:
    """Phi^-1(sparsity) evaluated exactly as HF does (torch Normal.icdf in fp32): 1.6448536 for 0.95."""
    p = torch.tensor(sparsity, dtype=torch.float32, device="cpu")  # cpu: modules may be built on meta
    return float(torch.distributions.normal.Normal(torch.tensor(0.0, device="cpu"), 1.0).icdf(p))


class MLP(nn.Module):
    def __init__(self, hidden: int, intermediate: int, sparsity: float):
        super().__init__()
        self.std_multiplier = gaussian_std_multiplier(sparsity) if sparsity > 0 else None  # None: a dense FFN
        self.gate_proj = Linear(hidden, intermediate)
        self.up_proj = Linear(hidden, intermediate)
        self.down_proj = Linear(intermediate, hidden)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        gate = self.gate_proj(x)
        if self.std_multiplier is not None:
            # Gaussian top-k over this layer's own FFN width; biased std like HF.
            mean = gate.mean(-1, keepdim=True)
            std = torch.sqrt((gate - mean).pow(2).mean(-1, keepdim=True))
            gate = F.relu(gate - (mean + std * self.std_multiplier))
        return self.down_proj(F.gelu(gate, approximate="tanh") * self.up_proj(x))


class Laurel(nn.Module):
    def __init__(self, hidden: int, rank: int, eps: float):
        super().__init__()
        self.linear_left = Linear(hidden, rank)
        self.linear_right = Linear(rank, hidden)
        self.post_laurel_norm = RMSNorm(hidden, eps)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.post_laurel_norm(self.linear_right(self.linear_left(x)))


class AltUp(nn.Module):
    """Alternating updates over n streams, kept as a stacked tensor (n, T, H)."""

    def __init__(self, hidden: int, n: int, eps: float):
        super().__init__()
        self.n = n
        self.hidden = hidden
        self.correct_output_scale = nn.Parameter(torch.zeros(hidden))
        self.correction_coefs = Linear(n, n)
        self.prediction_coefs = Linear(n, n * n)
        self.modality_router = Linear(hidden, n)
        self.router_norm = RMSNorm(hidden, eps)

    def _modalities(self, x: torch.Tensor) -> torch.Tensor:
        return torch.tanh(self.modality_router(self.router_norm(x) * (1.0 / self.hidden)))  # (T, n)

    def predict(self, streams: torch.Tensor) -> torch.Tensor:
        coefs = self.prediction_coefs(self._modalities(streams[0]))  # (T, n*n)
        coefs = coefs.reshape(-1, self.n, self.n).permute(0, 2, 1)  # (T, n, n)
        mixed = torch.matmul(streams.permute(1, 2, 0), coefs)  # (T, H, n)
        return mixed.permute(2, 0, 1) + streams

    def correct(self, predictions: torch.Tensor, activated: torch.Tensor) -> torch.Tensor:
        coefs = self.correction_coefs(self._modalities(activated)) + 1.0  # (T, n)
        innovation = activated - predictions[0]  # (T, H)
        return innovation[None] * coefs.permute(1, 0)[:, :, None] + predictions


class Attention(nn.Module):
    def __init__(self, cfg, layer: int, owns_kv: bool):
        super().__init__()
        h, d = cfg.hidden_size, cfg.head_dim
        self.num_heads, self.num_kv_heads, self.head_dim = cfg.num_attention_heads, cfg.num_key_value_heads, d
        self.q_proj = Linear(h, self.num_heads * d)
        self.q_norm = RMSNorm(d, cfg.rms_norm_eps)
        if owns_kv:
            self.k_proj = Linear(h, self.num_kv_heads * d)
            self.v_proj = Linear(h, self.num_kv_heads * d)
            self.k_norm = RMSNorm(d, cfg.rms_norm_eps)
            self.v_norm = RMSNorm(d, cfg.rms_norm_eps, with_scale=False)
        self.o_proj = Linear(self.num_heads * d, h)
        self.owns_kv = owns_kv

    def new_kv(self, x, cos, sin):
        """Keys (1, Hkv, T, D) and transposed values (1, Hkv, D, T) for the current tokens."""
        t = x.shape[0]
        k = self.k_norm(self.k_proj(x).reshape(t, self.num_kv_heads, self.head_dim))
        k = apply_rope(k.permute(1, 0, 2), cos, sin)  # (Hkv, T, D)
        v = self.v_norm(self.v_proj(x).reshape(t, self.num_kv_heads, self.head_dim))
        return k[None], v.permute(1, 2, 0)[None]

    def forward(self, x, cos, sin, k_cache, v_cache, mask):
        """x (T, H); caches already hold this step's K/V; mask (T, C) additive."""
        t = x.shape[0]
        groups = self.num_heads // self.num_kv_heads
        q = self.q_norm(self.q_proj(x).reshape(t, self.num_heads, self.head_dim))
        q = apply_rope(q.permute(1, 0, 2), cos, sin)  # (Hq, T, D)
        q = q.reshape(self.num_kv_heads, groups * t, self.head_dim)  # heads grouped per KV head
        scores = torch.matmul(q, k_cache[0].transpose(1, 2))  # (Hkv, g*T, C); scaling is 1.0
        scores = scores.reshape(self.num_kv_heads, groups, t, -1) + mask
        probs = torch.softmax(scores, dim=-1).reshape(self.num_kv_heads, groups * t, -1)
        out = torch.matmul(probs, v_cache[0].transpose(1, 2))  # (Hkv, g*T, D)
        out = out.reshape(self.num_heads, t, self.head_dim).permute(1, 0, 2).reshape(t, -1)
        return self.o_proj(out)


class DecoderLayer(nn.Module):
    def __init__(self, cfg, layer: int, owns_kv: bool):
        super().__init__()
        h, eps = cfg.hidden_size, cfg.rms_norm_eps
        self.self_attn = Attention(cfg, layer, owns_kv)
        self.mlp = MLP(h, cfg.intermediate_size[layer], cfg.activation_sparsity_pattern[layer])
        self.input_layernorm = RMSNorm(h, eps)
        self.post_attention_layernorm = RMSNorm(h, eps)
        self.pre_feedforward_layernorm = RMSNorm(h, eps)
        self.post_feedforward_layernorm = RMSNorm(h, eps)
        self.altup = AltUp(h, cfg.altup_num_inputs, eps)
        self.laurel = Laurel(h, cfg.laurel_rank, eps)
        self.per_layer_input_gate = Linear(h, cfg.hidden_size_per_layer_input)
        self.per_layer_projection = Linear(cfg.hidden_size_per_layer_input, h)
        self.post_per_layer_input_norm = RMSNorm(h, eps)
        self.altup_correct_scale = cfg.altup_correct_scale

    def forward(self, streams, per_layer_input, attend):
        """streams (n, T, H); per_layer_input (T, P); attend(x) -> attention output (T, H)."""
        predictions = self.altup.predict(streams)
        active = predictions[0]
        normed = self.input_layernorm(active)
        laurel = self.laurel(normed)
        attn = self.post_attention_layernorm(attend(self.self_attn, normed))
        attn_laurel = (active + attn + laurel) / math.sqrt(2)
        ffw = self.post_feedforward_layernorm(self.mlp(self.pre_feedforward_layernorm(attn_laurel)))
        corrected = self.altup.correct(predictions, attn_laurel + ffw)

        first = corrected[0]
        if self.altup_correct_scale:
            first = first * self.altup.correct_output_scale
        gated = F.gelu(self.per_layer_input_gate(first), approximate="tanh") * per_layer_input
        ple = self.post_per_layer_input_norm(self.per_layer_projection(gated))  # (T, H)
        return torch.cat([corrected[:1], corrected[1:] + ple[None]], dim=0)


def rms_matched(x: torch.Tensor, target_rms: torch.Tensor) -> torch.Tensor:
    return x * target_rms / torch.sqrt(torch.clamp(x.pow(2).mean(-1, keepdim=True), min=1e-5))


class TextDecoder(nn.Module):
    """One module for every signature: T tokens at absolute positions `input_pos`.

    forward(embeddings (1,T,H), per_layer_embeddings (1,T,L,P), input_pos (T,) int32,
            mask (1,1,T,C), **kv caches) -> {updated caches, and for decode (T == 1) logits}.
    Prefill signatures return only the caches, as LiteRT-LM expects: the runtime prefills
    all prompt tokens but the last and gets the first logits from `decode`.

    logit_rows: how many vocabulary rows the LM head scores (default all). The build passes the
    tokenizer's size: the vocabulary's tail (image/audio ids, 262,144..262,399 in the real model)
    cannot be decoded to text, and LiteRT-LM aborts a conversation that samples one, so the
    head never scores them (and reads 256 fewer rows per token).
    """

    def __init__(self, cfg, logit_rows: int | None = None):
        super().__init__()
        self.cfg = cfg
        self.logit_rows = logit_rows or cfg.vocab_size
        n = cfg.num_hidden_layers
        self.kv_source = kv_sharing(cfg.layer_types, cfg.num_kv_shared_layers)
        self.cache_layers = [i for i in range(n) if self.kv_source[i] == i]  # layers that own a cache
        self.layers = nn.ModuleList(DecoderLayer(cfg, i, self.kv_source[i] == i) for i in range(n))
        h, p = cfg.hidden_size, cfg.hidden_size_per_layer_input
        self.per_layer_model_projection = Linear(h, n * p)
        self.per_layer_projection_norm = RMSNorm(p, cfg.rms_norm_eps)
        self.altup_projections = nn.ModuleList(Linear(h, h) for _ in range(cfg.altup_num_inputs - 1))
        self.altup_unembed_projections = nn.ModuleList(Linear(h, h) for _ in range(cfg.altup_num_inputs - 1))
        self.norm = RMSNorm(h, cfg.rms_norm_eps)
        self.embed_tokens = nn.Module()  # holds the tied LM head under its checkpoint name
        self.embed_tokens.weight = nn.Parameter(torch.empty(self.logit_rows, h))  # the first logit_rows rows
        # Sorted: a set's order varies per process (string hash seed), and with it the order of the
        # rope tables in the lowered graph, so builds in two processes gave different bytes.
        thetas = {t: cfg.rope_parameters[t]["rope_theta"] for t in sorted(set(cfg.layer_types))}
        self.inv_freq = {t: rope_inv_freq(cfg.head_dim, theta) for t, theta in thetas.items()}

    def cache_names(self) -> list[str]:
        return [f"kv_cache_{kv}_{c}" for c in range(len(self.cache_layers)) for kv in ("k", "v")]

    def cache_shapes(self, context: int) -> dict[str, tuple[int, ...]]:
        hkv, d = self.cfg.num_key_value_heads, self.cfg.head_dim
        shapes = {}
        for c in range(len(self.cache_layers)):
            shapes[f"kv_cache_k_{c}"] = (1, hkv, context, d)
            shapes[f"kv_cache_v_{c}"] = (1, hkv, d, context)
        return shapes

    def _per_layer_inputs(self, x: torch.Tensor, ple: torch.Tensor) -> torch.Tensor:
        """(T, H), (T, L, P) -> (T, L, P): project the merged embeddings, norm, combine with the table rows."""
        n, p = self.cfg.num_hidden_layers, self.cfg.hidden_size_per_layer_input
        proj = self.per_layer_model_projection(x) * (self.cfg.hidden_size**-0.5)
        proj = self.per_layer_projection_norm(proj.reshape(-1, n, p))
        return (proj + ple) * (2.0**-0.5)

    def _initial_streams(self, x: torch.Tensor) -> torch.Tensor:
        target = torch.mean(x.pow(2), dim=-1, keepdim=True) ** 0.5
        return torch.stack([x] + [rms_matched(proj(x), target) for proj in self.altup_projections])

    def _final_hidden(self, streams: torch.Tensor) -> torch.Tensor:
        target = torch.mean(streams[0].pow(2), dim=-1, keepdim=True) ** 0.5
        outs = [streams[0]] + [rms_matched(proj(streams[k + 1]), target) for k, proj in enumerate(self.altup_unembed_projections)]
        return self.norm(torch.stack(outs).mean(0))

    def forward(self, embeddings, per_layer_embeddings, input_pos, mask, **caches: torch.Tensor):
        cfg = self.cfg
        with_logits = embeddings.shape[1] == 1  # static at trace time: decode vs prefill_<N>
        x = embeddings[0]  # (T, H)
        per_layer = self._per_layer_inputs(x, per_layer_embeddings[0])  # (T, L, P)
        streams = self._initial_streams(x)  # (n, T, H)

        rope = {t: rope_cos_sin(input_pos, f) for t, f in self.inv_freq.items()}
        start = input_pos[0]  # the T tokens sit at start .. start + T - 1
        full_mask = mask[0, 0]  # (T, C)
        t, context = full_mask.shape
        span = cfg.sliding_window + t - 1  # cache rows the T queries of a sliding layer can see
        window_start = None
        if span < context:
            window_start = torch.clamp(start - (cfg.sliding_window - 1), 0, context - span)
            near_mask = read_window(full_mask, window_start, span, dim=1)  # (T, span)
            kv_pos = window_start + torch.arange(span, dtype=torch.int32)[None, :]
        else:
            near_mask, kv_pos = full_mask, torch.arange(context, dtype=torch.int32)[None, :]
        in_window = kv_pos > (input_pos[:, None] - cfg.sliding_window)  # HF: kv_idx > q_idx - W
        masks = {"full_attention": full_mask, "sliding_attention": torch.where(in_window, near_mask, MASK_NEG)}

        out_caches: dict[str, torch.Tensor] = {}
        windows: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}  # cache -> its window rows, read once
        cache_of_layer = {layer: c for c, layer in enumerate(self.cache_layers)}

        def kv_for(c: int, kind: str) -> tuple[torch.Tensor, torch.Tensor]:
            k, v = out_caches[f"kv_cache_k_{c}"], out_caches[f"kv_cache_v_{c}"]
            if kind != "sliding_attention" or window_start is None:
                return k, v
            if c not in windows:
                windows[c] = (read_window(k, window_start, span, dim=2), read_window(v, window_start, span, dim=3))
            return windows[c]

        for i, layer in enumerate(self.layers):
            kind = cfg.layer_types[i]
            cos, sin = rope[kind]
            c = cache_of_layer[self.kv_source[i]]

            def attend(attn, normed, c=c, cos=cos, sin=sin, kind=kind):
                if attn.owns_kv:
                    k_new, v_new = attn.new_kv(normed, cos, sin)
                    out_caches[f"kv_cache_k_{c}"] = update_cache(caches[f"kv_cache_k_{c}"], k_new, start, dim=2)
                    out_caches[f"kv_cache_v_{c}"] = update_cache(caches[f"kv_cache_v_{c}"], v_new, start, dim=3)
                return attn(normed, cos, sin, *kv_for(c, kind), masks[kind])

            streams = layer(streams, per_layer[:, i, :], attend)

        outputs = dict(out_caches)
        if with_logits:
            logits = F.linear(self._final_hidden(streams), self.embed_tokens.weight)  # tied LM head
            cap = cfg.final_logit_softcapping
            if cap:
                logits = torch.tanh(logits / cap) * cap
            outputs["logits"] = logits[None]  # (1, T, logit_rows)
        return outputs
