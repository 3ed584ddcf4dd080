"""The vision and audio towers' configs (`Gemma3nVisionConfig`, `Gemma3nAudioConfig`), with the
Hugging Face field names and defaults; see converters/gemma3n/config.py for the whole model's.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Any, ClassVar

from converters.gemma3n.config_fields import _check_types, _f, _Invalid, _positive, _Section, _tuple


@dataclass(frozen=True)
class VisionConfig(_Section):
    """`Gemma3nVisionConfig`: a timm MobileNetV5 encoder (via TimmWrapper) + its embedder."""

    model_type: ClassVar[str] = "gemma3n_vision"

    # timm model name built by transformers' TimmWrapperModel.
    architecture: str = _f("mobilenetv5_300m_enc", "str")
    # Std of the random init (unused by export).
    initializer_range: float = _f(0.02, "num")
    # Whether TimmWrapper pools the last feature map (Gemma 3n keeps the 16x16 map).
    do_pooling: bool = _f(False, "bool")
    # Extra kwargs for timm.create_model (e.g. a custom block_args); None for the stock model.
    model_args: dict[str, Any] | None = _f(None, "dict?")
    # Channels of the encoder output = width of one soft token.
    hidden_size: int = _f(2048, "int")
    # Hard vision tokens embedded by embed_vision.
    vocab_size: int = _f(128, "int")
    # First token id of the vision range (ids - offset index embed_vision).
    vocab_offset: int = _f(262_144, "int")
    # Epsilon of embed_vision's norms.
    rms_norm_eps: float = _f(1e-6, "num")

    def __post_init__(self) -> None:
        if self.model_args is not None and isinstance(self.model_args, dict):
            object.__setattr__(self, "model_args", copy.deepcopy(self.model_args))  # timm mutates it in place
        _check_types(self, "vision_config")
        _positive(self, "vision_config", "hidden_size", "vocab_size")


@dataclass(frozen=True)
class AudioConfig(_Section):
    """`Gemma3nAudioConfig`: the USM Conformer (SSCP subsampler + conformer blocks) + its embedder."""

    model_type: ClassVar[str] = "gemma3n_audio"

    # Hard audio tokens embedded by embed_audio.
    vocab_size: int = _f(128, "int")
    # First token id of the audio range.
    vocab_offset: int = _f(262_272, "int")
    # Mel bins per input frame.
    input_feat_size: int = _f(128, "int")
    # Conformer width = width of one audio soft token.
    hidden_size: int = _f(1536, "int")
    # Epsilon of the conformer's RMSNorms.
    rms_norm_eps: float = _f(1e-6, "num")
    # Activations are clamped to ±this inside the conformer.
    gradient_clipping: float = _f(10_000_000_000.0, "num")
    # Chunk length of the chunked local attention.
    conf_attention_chunk_size: int = _f(12, "int")
    # Left context of local attention (includes the current frame).
    conf_attention_context_left: int = _f(13, "int")
    # Right (future) context of local attention.
    conf_attention_context_right: int = _f(0, "int")
    # Attention logits become cap·tanh(logits/cap).
    conf_attention_logit_cap: float = _f(50.0, "num")
    # Conformer attention heads.
    conf_num_attention_heads: int = _f(8, "int")
    # Conformer blocks.
    conf_num_hidden_layers: int = _f(12, "int")
    # Kernel of the causal depthwise conv in the light-conv module.
    conf_conv_kernel_size: int = _f(5, "int")
    # Keep every Nth frame after the conformer (4 -> 6.25 tokens/s).
    conf_reduction_factor: int = _f(4, "int")
    # Weight of the FFN half-step residuals.
    conf_residual_weight: float = _f(0.5, "num")
    # Output channels of the two SSCP convolutions.
    sscp_conv_channel_size: tuple[int, int] = _f((128, 32), "ints")
    # Epsilon of the SSCP cumulative group norm.
    sscp_conv_group_norm_eps: float = _f(1e-3, "num")
    # (time, freq) kernel of each SSCP convolution.
    sscp_conv_kernel_size: tuple[tuple[int, int], tuple[int, int]] = _f(((3, 3), (3, 3)), "pairs")
    # (time, freq) stride of each SSCP convolution.
    sscp_conv_stride_size: tuple[tuple[int, int], tuple[int, int]] = _f(((2, 2), (2, 2)), "pairs")

    def __post_init__(self) -> None:
        for k in ("sscp_conv_channel_size", "sscp_conv_kernel_size", "sscp_conv_stride_size"):
            object.__setattr__(self, k, _tuple(getattr(self, k)))
        s = "audio_config"
        _check_types(self, s)
        _positive(self, s, "vocab_size", "input_feat_size", "hidden_size", "conf_num_attention_heads",
                  "conf_num_hidden_layers", "conf_conv_kernel_size", "conf_reduction_factor",
                  "conf_attention_chunk_size")
        for k in ("sscp_conv_channel_size", "sscp_conv_kernel_size", "sscp_conv_stride_size"):
            if len(getattr(self, k)) != 2:
                raise _Invalid(f"{s}.{k}", f"needs exactly 2 entries (one per SSCP conv), got {len(getattr(self, k))}")
        if self.hidden_size % self.conf_num_attention_heads:
            raise _Invalid(f"{s}.hidden_size", f"{self.hidden_size} is not a multiple of conf_num_attention_heads "
                           f"({self.conf_num_attention_heads})")
