"""Export-friendly Gemma 3n audio tower: audio_encoder.tflite, audio_adapter.tflite, end_of_audio.tflite.

Mirrors transformers 5.23.0 `models/gemma3n/modeling_gemma3n.py` (`Gemma3nAudioEncoder`,
`Gemma3nMultimodalEmbedder`, the audio branch of `Gemma3nModel.forward`) with static shapes:

- SSCP: two Conv2d 3x3 / stride 2 with time pad (0, k-1) and freq pad (1, 1), each followed by the
  cumulative group norm (running mean/variance over time, written with CUMSUM) and ReLU, then
  Linear(C*F -> D).
- Conformer blocks: FFN (x0.5 residual), chunked local attention (chunk 12, 12 frames of left
  context, per-dim query scale, sinusoidal relative positions through pos_proj + the "relative
  shift", tanh logit cap), light conv (GLU + causal depthwise conv + norm), FFN, norm. HF's
  `unfold` of the key/value context becomes a GATHER with a constant index; everything is B=1.
- Keep every `conf_reduction_factor`-th step, zero the invalid ones.

The window is fixed: `window_frames` mel frames in, `window_frames / 16` tokens out. The default
(3008 frames -> 188 tokens) covers the 2997 frames HF's extractor makes of 30 s, rounded up to
a multiple of 16 so that LiteRT-LM's `audio_shrink_factor` (input frames / output tokens) is
exactly 16 and its chunking of longer inputs lines up. Shorter clips: frames past the clip are
masked (`mask` False). The graph then equals HF on the *unpadded* clip (what HF's processor gives
by default, padding="longest"): frames that the mask marks invalid are zeroed (HF's conv padding
sees zeros there), the first conv's output rows past the clip are zeroed (HF's second conv pads
with zeros), and every later stage is causal (cumulative norm, left-only attention, causal conv),
so steps past the clip cannot reach the valid ones. With all frames valid there is nothing to
mask and the graph is HF's computation on the window.

The runtime contract (LiteRT-LM `runtime/executor/audio_litert_compiled_model_executor.cc`,
`audio_executor_utils.cc`, `embedding_lookup_end_of_multi_modal.cc`):
- audio_encoder (model type `audio_encoder_hw`): one signature; inputs `src_inputs` [1, W, 128]
  float32 and `mask` [1, W] (1 byte: bool, written by the runtime as uint8, 1 = valid frame);
  exactly two outputs `features` [1, W/16, D] and `mask` [1, W/16]. The runtime inserts rows up
  to the last nonzero mask entry; HF always inserts all W/16 (padding past the clip), so the mask
  is all ones and the features of the steps past the clip are zero, which the adapter turns
  into HF's padding embedding.
- audio_adapter (`audio_adapter`): one signature, exactly two inputs, the runtime binds them by
  position: input 0 = the encoder's `mask`, input 1 = its `features` (LiteRT orders signature
  inputs as the subgraph does, i.e. as the module's arguments); one output [1, W/16, H].
- end_of_audio (`end_of_audio`): one signature, no inputs, one float32 output [1, 1, H] whose
  value the runtime caches and splices after the audio tokens (the `<end_of_audio>` embedding).

The encoder and adapter are lowered with every weight as a graph input (converters/lowering: the
module lives on the meta device; the graphs depend only on shapes and code and can be kept in a
graph_dir), then `splice_weights` streams the checkpoint tensors in one at a time, storing the
FULLY_CONNECTED weights in the recipe's format (int8 per channel / int4 blockwise, as
ai-edge-quantizer would) and every other weight (convs, depthwise taps, norms) as fp32.
Two constant products of weights that a baked conversion folds are folded in the weight source
instead (`LocalAttention.fold_constants`). Real size (681M params, int8): peak RSS 1.1 GB and
98 s, against 13.6 GB for the former baked conversion + ai-edge-quantizer. end_of_audio, one
constant, is still baked. The lowering and splicing live in converters/components/audio.py.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from converters.gemma3n.layers import Linear, RMSNorm
from edge.errors import UserError

TOWER_PREFIX = "model.audio_tower."
EMBED_PREFIX = "model.embed_audio."
SAMPLE_RATE = 16_000
WINDOW_SECONDS = 30  # HF's feature extractor truncates at max_length = 480000 samples
# HF's extractor defaults: frames of 512 + 1 samples (one extra for pre-emphasis) every 160.
FRAME_SAMPLES, HOP_SAMPLES = 513, 160
HF_NORM_EPS = 1e-6  # Gemma3nRMSNorm's default, which HF uses for every audio norm but the light conv's


class AudioExportError(UserError):
    """The audio tower cannot be exported as asked (window, config, weights)."""


# ---------------------------------------------------------------------------------------------
# Geometry (pure functions: what the integrator needs to splice the soft tokens)


def frame_stride(audio_cfg) -> int:
    """Mel frames per output token: product of the SSCP time strides x conf_reduction_factor (16)."""
    return math.prod(s[0] for s in audio_cfg.sscp_conv_stride_size) * audio_cfg.conf_reduction_factor


def frames_for_samples(num_samples: int) -> int:
    """Mel frames HF's extractor makes of `num_samples` (padding="longest" pads to a multiple of 128)."""
    padded = -(-num_samples // 128) * 128
    return max(0, (padded - FRAME_SAMPLES) // HOP_SAMPLES + 1)


def default_window_frames(audio_cfg) -> int:
    """Frames of 30 s (2997) rounded up to a multiple of the frame stride: 3008 for Gemma 3n."""
    s = frame_stride(audio_cfg)
    return -(-frames_for_samples(WINDOW_SECONDS * SAMPLE_RATE) // s) * s


def num_soft_tokens(num_frames: int, audio_cfg) -> int:
    """Encoder outputs HF makes of a clip of `num_frames` valid mel frames: ceil(frames / 16).

    Each SSCP conv maps T -> ceil(T / stride) (time pad k-1), then one step in
    conf_reduction_factor is kept, and nested ceilings of divisions are one ceiling. Every one of
    them is real audio (their features are nonzero; the encoder zeroes the rest).
    """
    if num_frames < 0:
        raise AudioExportError(f"num_frames must be >= 0, got {num_frames}")
    return -(-num_frames // frame_stride(audio_cfg))


def soft_token_layout(num_frames: int, cfg) -> dict:
    """Where a clip's embeddings go among the `audio_soft_tokens_per_image` placeholders.

    HF's processor always inserts `<start_of_audio>`, audio_soft_tokens_per_image (188) copies of
    the audio placeholder, `<end_of_audio>`. Gemma3nModel.forward puts encoder output k (through
    embed_audio's soft path) at placeholder k for k < valid, and the embedding of the last audio
    vocab id (`text vocab_size - 1`, hard path) at every later placeholder. The adapter emits
    exactly that for all rows, so splice its rows 0..total-1; LiteRT-LM inserts as many rows as
    the encoder's mask reports valid, which is all of them (AudioEncoder.forward).
    """
    total = cfg.audio_soft_tokens_per_image
    valid = num_soft_tokens(num_frames, cfg.audio)
    if valid > total:
        raise AudioExportError(
            f"a clip of {num_frames} frames gives {valid} soft tokens but the prompt holds {total} "
            f"(audio_soft_tokens_per_image): split the audio into clips of at most {WINDOW_SECONDS} s")
    return {"total": total, "valid": valid, "encoder_rows": (0, valid), "padding_rows": (valid, total),
            "padding_token_id": cfg.text.vocab_size - 1}


# ---------------------------------------------------------------------------------------------
# SSCP subsampler


class CumulativeGroupNorm(nn.Module):
    """Gemma3nAudioCumulativeGroupNorm on NCHW: running statistics over time (H) of all C x W values."""

    def __init__(self, channels: int, eps: float):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(channels))

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # x (1, C, T, F)
        _, c, t, f = x.shape
        # HF's count of valid elements: its mask is all ones, so (t + 1) * F * C, a constant.
        count = (torch.arange(1, t + 1, dtype=torch.float32) * float(c * f)).reshape(1, 1, t, 1)
        cum_mean = torch.cumsum(x.sum(dim=(1, 3), keepdim=True), dim=2) / count  # (1, 1, T, 1)
        diff = x - cum_mean
        cum_var = torch.cumsum(diff.pow(2).sum(dim=(1, 3), keepdim=True), dim=2) / count
        return diff * torch.rsqrt(cum_var + self.eps) * self.weight.reshape(1, c, 1, 1)


class SSCPConvBlock(nn.Module):
    def __init__(self, in_ch: int, out_ch: int, kernel: tuple[int, int], stride: tuple[int, int], eps: float):
        super().__init__()
        self.conv = nn.Conv2d(in_ch, out_ch, kernel, stride=stride, bias=False)
        self.norm = CumulativeGroupNorm(out_ch, eps)
        self.padding = (1, 1, 0, kernel[0] - 1)  # (freq left, freq right, time top, time bottom) as HF

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (1, Cin, T, F) -> (1, Cout, T/s, F')
        return F.relu(self.norm(self.conv(F.pad(x, self.padding))))


class SubSampleConvProjection(nn.Module):
    def __init__(self, cfg):
        super().__init__()
        (k0, k1), (s0, s1) = cfg.sscp_conv_kernel_size, cfg.sscp_conv_stride_size
        c0, c1 = cfg.sscp_conv_channel_size
        self.conv_0 = SSCPConvBlock(1, c0, tuple(k0), tuple(s0), cfg.sscp_conv_group_norm_eps)
        self.conv_1 = SSCPConvBlock(c0, c1, tuple(k1), tuple(s1), cfg.sscp_conv_group_norm_eps)
        self.time_stride_0 = s0[0]
        f = cfg.input_feat_size
        for (_, kw), (_, sw) in ((k0, s0), (k1, s1)):
            f = (f + 2 - kw) // sw + 1
        self.input_proj_linear = Linear(c1 * f, cfg.hidden_size)

    def forward(self, features: torch.Tensor, frame_valid: torch.Tensor) -> torch.Tensor:
        """features (1, W, F) with invalid frames zeroed; frame_valid (1, W) float -> (1, W/4, D)."""
        x = self.conv_0(features.unsqueeze(1))  # (1, C0, W/2, F/2)
        # HF's second conv pads the first conv's output (of an unpadded clip) with zeros:
        # rows whose first frame is past the clip must read as zeros.
        x = x * frame_valid[:, None, :: self.time_stride_0, None]
        x = self.conv_1(x)  # (1, C1, W/4, F/4)
        _, c, t, f = x.shape
        x = x.permute(0, 2, 3, 1).reshape(1, t, f * c)  # HF flattens (F, C), channels fastest
        return self.input_proj_linear(x)


# ---------------------------------------------------------------------------------------------
# Conformer


def _clip(x: torch.Tensor, limit: float) -> torch.Tensor:
    return torch.clamp(x, -limit, limit)


class RelativePositionEmbedding(nn.Module):
    def __init__(self, cfg):
        super().__init__()
        self.pos_proj = Linear(cfg.hidden_size, cfg.hidden_size)
        max_back, max_fwd = max(0, cfg.conf_attention_context_left - 1), cfg.conf_attention_context_right
        # Same float32 expressions as Gemma3nAudioRelativePositionEmbedding (sin | cos of pos * inv_ts).
        n = cfg.hidden_size // 2
        inc = math.log(1.0e4) / max(n - 1, 1)
        inv_timescales = torch.exp(torch.arange(n) * -inc).float()
        position = torch.arange(max_back, -max_fwd - 1, -1).float().unsqueeze(-1)  # (F, 1): L..-R
        scaled = position * inv_timescales
        self.register_buffer("timing_signal", torch.cat([torch.sin(scaled), torch.cos(scaled)], -1), persistent=False)


class LocalAttention(nn.Module):
    """Gemma3nAudioAttention (+ its relative position term) for B = 1 and a static length."""

    def __init__(self, cfg):
        super().__init__()
        d, self.num_heads = cfg.hidden_size, cfg.conf_num_attention_heads
        self.head_dim = d // self.num_heads
        self.chunk = cfg.conf_attention_chunk_size
        self.max_past = max(0, cfg.conf_attention_context_left - 1)
        self.max_future = cfg.conf_attention_context_right
        self.context = self.chunk + self.max_past + self.max_future
        self.cap = float(cfg.conf_attention_logit_cap)
        self.relative_position_embedding = RelativePositionEmbedding(cfg)
        self.per_dim_scale = nn.Parameter(torch.zeros(self.head_dim))
        self.q_proj, self.k_proj, self.v_proj = Linear(d, d), Linear(d, d), Linear(d, d)
        q_scale = self.head_dim**-0.5 / F.softplus(torch.tensor(0.0))
        self.register_buffer("q_scale", q_scale.clone().detach(), persistent=False)
        # HF's local_causal_valid_mask: query w may see context c iff w <= c <= w + past + future.
        w, c = torch.arange(self.chunk)[:, None], torch.arange(self.context)[None, :]
        self.register_buffer("causal", (c >= w) & (c <= w + self.max_past + self.max_future), persistent=False)
        # Lowering only (fold_constants): the constant products of weights as parameters of their own.
        self.register_parameter("sin_emb", None)
        self.register_parameter("query_scale", None)

    def fold_constants(self) -> None:
        """Make pos_proj(timing_signal) (N, H, F) and q_scale * softplus(per_dim_scale) (H,) parameters.

        With weights baked in, the converter folds both products into constants; with weights as
        graph inputs it cannot, so they are computed in the weight source (`_fold_source`) instead:
        pos_proj stays off the FULLY_CONNECTED ops (fp32, as before) and no softplus runs at inference.
        """
        span = self.relative_position_embedding.timing_signal.shape[0]
        self.sin_emb = nn.Parameter(torch.empty(self.num_heads, self.head_dim, span, device="meta"))
        self.query_scale = nn.Parameter(torch.empty(self.head_dim, device="meta"))
        del self.relative_position_embedding.pos_proj, self.per_dim_scale

    def folded(self, name: str, get) -> torch.Tensor:
        """The value of parameter `sin_emb` or `query_scale` from get(<original parameter name>)."""
        with torch.no_grad():
            if name == "query_scale":
                return self.q_scale * F.softplus(get("per_dim_scale").float())
            rpe = self.relative_position_embedding
            span = rpe.timing_signal.shape[0]
            proj = F.linear(rpe.timing_signal, get("relative_position_embedding.pos_proj.weight").float())
            return proj.reshape(span, self.num_heads, self.head_dim).permute(1, 2, 0).contiguous()

    def _blocks(self, t: int) -> tuple[int, torch.Tensor]:
        """Number of query blocks U and the (U * C,) index that gathers each block's key context."""
        u = -(-t // self.chunk)
        idx = torch.arange(u)[:, None] * self.chunk + torch.arange(self.context)[None, :]
        return u, idx.reshape(-1)

    def _context(self, x: torch.Tensor, idx: torch.Tensor, u: int) -> torch.Tensor:
        """(T, ...) -> (U, C, ...): HF's pad + unfold(step=chunk, size=C) as one GATHER."""
        pad = [0, 0] * (x.dim() - 1) + [self.max_past, self.max_future + self.chunk - 1]
        return torch.index_select(F.pad(x, pad), 0, idx).reshape(u, self.context, *x.shape[1:])

    def forward(self, x: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
        """x (1, T, D), valid (1, T) float -> (1, T, D) context vectors (heads flattened)."""
        t, n, h, w, c = x.shape[1], self.num_heads, self.head_dim, self.chunk, self.context
        u, idx = self._blocks(t)
        q = self.q_proj(x).reshape(t, n, h)
        k = self.k_proj(x).reshape(t, n, h)
        v = self.v_proj(x).reshape(t, n, h)
        if self.query_scale is not None:
            q = q * self.query_scale
        else:
            q = q * self.q_scale * F.softplus(self.per_dim_scale)
        q = F.pad(q, (0, 0, 0, 0, 0, u * w - t)).reshape(u, w, n, h).permute(2, 0, 1, 3)  # (N, U, W, H)
        k = self._context(k, idx, u).permute(2, 0, 3, 1)  # (N, U, H, C)
        v = self._context(v, idx, u).permute(2, 0, 1, 3)  # (N, U, C, H)
        key_valid = self._context(valid[0], idx, u) > 0.5  # (U, C); padding reads as invalid
        allowed = key_valid[:, None, :] & self.causal[None]  # (U, W, C)

        rpe = self.relative_position_embedding
        span = rpe.timing_signal.shape[0]
        if self.sin_emb is not None:
            sin_emb = self.sin_emb
        else:
            sin_emb = rpe.pos_proj(rpe.timing_signal).reshape(span, n, h).permute(1, 2, 0)  # (N, H, F)
        term_ac = torch.matmul(q, k)  # (N, U, W, C)
        term_bd = torch.matmul(q.reshape(n, u * w, h), sin_emb).reshape(n, u, w, span)
        # HF's relative shift: pad F -> C + 1, flatten (W, C+1), keep W * C, unflatten.
        term_bd = F.pad(term_bd, (0, c + 1 - span)).reshape(n, u, w * (c + 1))[:, :, : w * c].reshape(n, u, w, c)
        logits = torch.tanh((term_ac + term_bd) / self.cap) * self.cap
        logits = torch.where(allowed[None], logits, torch.finfo(torch.float32).min)
        probs = torch.softmax(logits, dim=-1)
        out = torch.matmul(probs, v)  # (N, U, W, H)
        return out.permute(1, 2, 0, 3).reshape(u * w, n * h)[:t].unsqueeze(0)


class ConformerAttention(nn.Module):
    def __init__(self, cfg):
        super().__init__()
        self.clip = float(min(cfg.gradient_clipping, torch.finfo(torch.float32).max))
        self.pre_attn_norm = RMSNorm(cfg.hidden_size, HF_NORM_EPS)
        self.attn = LocalAttention(cfg)
        self.post = Linear(cfg.hidden_size, cfg.hidden_size)
        self.post_norm = RMSNorm(cfg.hidden_size, HF_NORM_EPS)

    def forward(self, x: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
        y = self.attn(self.pre_attn_norm(_clip(x, self.clip)), valid)
        return x + self.post_norm(_clip(self.post(y), self.clip))


class ConformerFeedForward(nn.Module):
    def __init__(self, cfg):
        super().__init__()
        d = cfg.hidden_size
        self.clip = float(min(cfg.gradient_clipping, torch.finfo(torch.float32).max))
        self.pre_layer_norm = RMSNorm(d, HF_NORM_EPS)
        self.ffw_layer_1, self.ffw_layer_2 = Linear(d, 4 * d), Linear(4 * d, d)
        self.post_layer_norm = RMSNorm(d, HF_NORM_EPS)
        self.scale = cfg.conf_residual_weight

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.ffw_layer_2(F.silu(self.ffw_layer_1(self.pre_layer_norm(_clip(x, self.clip)))))
        return x + self.post_layer_norm(_clip(y, self.clip)) * self.scale


class LightConv1d(nn.Module):
    def __init__(self, cfg):
        super().__init__()
        d, self.kernel = cfg.hidden_size, cfg.conf_conv_kernel_size
        self.clip = float(min(cfg.gradient_clipping, torch.finfo(torch.float32).max))
        self.pre_layer_norm = RMSNorm(d, cfg.rms_norm_eps)
        self.linear_start = Linear(d, 2 * d)
        self.depthwise_conv1d = nn.Conv1d(d, d, self.kernel, groups=d, bias=False)
        self.conv_norm = RMSNorm(d, cfg.rms_norm_eps)
        self.linear_end = Linear(d, d)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (1, T, D)
        t = x.shape[1]
        y = F.glu(self.linear_start(self.pre_layer_norm(x)), dim=-1)
        # Causal depthwise conv as K shifted multiply-adds on (1, T, D): no NCHW transposes.
        y = F.pad(y, (0, 0, self.kernel - 1, 0))
        w = self.depthwise_conv1d.weight[:, 0, :]  # (D, K)
        acc = y[:, 0:t] * w[:, 0]
        for j in range(1, self.kernel):
            acc = acc + y[:, j : j + t] * w[:, j]
        y = F.silu(self.conv_norm(_clip(acc, self.clip)))
        return self.linear_end(y) + x


class ConformerBlock(nn.Module):
    def __init__(self, cfg):
        super().__init__()
        self.clip = float(min(cfg.gradient_clipping, torch.finfo(torch.float32).max))
        self.ffw_layer_start = ConformerFeedForward(cfg)
        self.attention = ConformerAttention(cfg)
        self.lconv1d = LightConv1d(cfg)
        self.ffw_layer_end = ConformerFeedForward(cfg)
        self.norm = RMSNorm(cfg.hidden_size, HF_NORM_EPS)

    def forward(self, x: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
        x = self.attention(self.ffw_layer_start(x), valid)
        x = self.lconv1d(x * valid[..., None])
        return self.norm(_clip(self.ffw_layer_end(x), self.clip))


class AudioEncoder(nn.Module):
    """Gemma3nAudioEncoder with a fixed window: (src_inputs, mask) -> {features, mask}."""

    def __init__(self, cfg, window_frames: int):
        super().__init__()
        stride = frame_stride(cfg)
        if window_frames <= 0 or window_frames % stride:
            raise AudioExportError(
                f"window_frames={window_frames}: must be a positive multiple of {stride} (SSCP time strides x "
                f"conf_reduction_factor), so that each output token covers exactly {stride} frames; e.g. "
                f"{default_window_frames(cfg)} for {WINDOW_SECONDS} s")
        self.window_frames, self.frame_stride = window_frames, stride
        self.sscp_stride = math.prod(s[0] for s in cfg.sscp_conv_stride_size)
        self.reduction = cfg.conf_reduction_factor
        self.subsample_conv_projection = SubSampleConvProjection(cfg)
        self.conformer = nn.ModuleList(ConformerBlock(cfg) for _ in range(cfg.conf_num_hidden_layers))

    def forward(self, src_inputs: torch.Tensor, mask: torch.Tensor) -> dict[str, torch.Tensor]:
        """src_inputs (1, W, F) float32 log-mel; mask (1, W) bool, True = a frame of the clip."""
        frame_valid = mask.to(torch.float32)
        x = self.subsample_conv_projection(src_inputs * frame_valid[..., None], frame_valid)
        valid = frame_valid[:, :: self.sscp_stride]  # (1, W/4): HF's mask gathered at 4t
        for block in self.conformer:
            x = block(x, valid)
        x = x[:, :: self.reduction] * valid[:, :: self.reduction, None]  # HF's masked_fill(0)
        # Every output step is reported valid: LiteRT-LM inserts rows up to the last valid one,
        # HF always inserts all of them (padding embedding at masked steps, which the adapter
        # recognises by their zeroed features). Written from the input so it is not a constant.
        steps = mask[:, :: self.frame_stride]
        return {"features": x, "mask": torch.logical_or(steps, torch.logical_not(steps))}


class AudioAdapter(nn.Module):
    """embed_audio's soft path, with HF's padding embedding at the rows HF masks.

    Arguments in the order LiteRT-LM binds them: mask first, features second. A row is padding
    where the mask says so or where the encoder zeroed its features (the steps past the clip:
    the encoder reports every step valid, see AudioEncoder.forward); a real step's features come
    out of a norm and are never all zero.
    """

    def __init__(self, audio_cfg, text_hidden: int):
        super().__init__()
        eps = audio_cfg.rms_norm_eps
        self.soft_embedding_norm = RMSNorm(audio_cfg.hidden_size, eps)
        self.embedding_projection = Linear(audio_cfg.hidden_size, text_hidden)
        self.embedding_post_projection_norm = RMSNorm(text_hidden, eps, with_scale=False)
        self.register_buffer("padding_embedding", torch.zeros(text_hidden))

    def forward(self, mask: torch.Tensor, features: torch.Tensor) -> dict[str, torch.Tensor]:
        y = self.embedding_post_projection_norm(self.embedding_projection(self.soft_embedding_norm(features)))
        valid = mask[..., None] & (features.abs().sum(-1, keepdim=True) > 0)
        return {"mm_embedding": torch.where(valid, y, self.padding_embedding)}


class EndOfAudio(nn.Module):
    """No inputs; the `<end_of_audio>` embedding [1, 1, H] (embed_audio's hard path of eoa_token_id)."""

    def __init__(self, text_hidden: int):
        super().__init__()
        self.register_buffer("embedding", torch.zeros(1, 1, text_hidden))

    def forward(self) -> dict[str, torch.Tensor]:
        return {"embeddings": self.embedding * 1.0}  # an op, so the output is not the constant itself


# ---------------------------------------------------------------------------------------------
# Building from a checkpoint


def hard_embedding(get, cfg, token_id: int) -> torch.Tensor:
    """embed_audio(input_ids=token_id): embedding -> hard norm -> projection -> norm without scale (H,)."""
    a = cfg.audio
    row = token_id - a.vocab_offset
    if not 0 <= row < a.vocab_size:
        raise AudioExportError(f"token {token_id} is outside the audio vocab [{a.vocab_offset}, "
                               f"{a.vocab_offset + a.vocab_size}): check the config's audio_config.vocab_offset")
    emb = get(EMBED_PREFIX + "embedding.weight")[row].float()
    norm = RMSNorm(a.hidden_size, a.rms_norm_eps)
    norm.weight.data = get(EMBED_PREFIX + "hard_embedding_norm.weight").float()
    proj = F.linear(norm(emb), get(EMBED_PREFIX + "embedding_projection.weight").float())
    return RMSNorm(cfg.text.hidden_size, a.rms_norm_eps, with_scale=False)(proj)


def _load(module: nn.Module, get, prefix: str) -> nn.Module:
    missing = []
    with torch.no_grad():
        for name, p in module.named_parameters():
            try:
                t = get(prefix + name)
            except KeyError:
                missing.append(prefix + name)
                continue
            if tuple(t.shape) != tuple(p.shape):
                raise AudioExportError(f"{prefix + name}: checkpoint shape {tuple(t.shape)}, the config implies "
                                       f"{tuple(p.shape)}: the config.json does not describe these weights")
            p.copy_(t.float())
    if missing:
        raise AudioExportError(f"the checkpoint lacks {len(missing)} audio tensors, e.g. {missing[:3]}: it has no "
                               "audio tower (export text-only with --modalities text,vision)")
    return module.eval()


def build_encoder(cfg, get, window_frames: int | None = None) -> AudioEncoder:
    a = cfg.audio
    enc = AudioEncoder(a, window_frames or default_window_frames(a))
    return _load(enc, get, TOWER_PREFIX)


def build_end_of_audio(cfg, get) -> EndOfAudio:
    eoa = EndOfAudio(cfg.text.hidden_size).eval()
    eoa.embedding.copy_(hard_embedding(get, cfg, cfg.eoa_token_id).reshape(1, 1, -1))
    return eoa
