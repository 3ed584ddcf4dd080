"""Gemma 3n vision to LiteRT: the MobileNet-V5 encoder and the embed_vision adapter.

Mirrors transformers 5.23.0 `Gemma3nModel.get_image_features` (models/gemma3n/modeling_gemma3n.py):

    pixel_values (B,3,H,W) in [0,1] -> vision_tower.timm_model.forward_features  (timm MobileNetV5Encoder)
      -> (B,2048,16,16) -> reshape (B,2048,256) -> permute (B,256,2048) -> x sqrt(2048)
      -> embed_vision(inputs_embeds=...): soft_embedding_norm -> embedding_projection (2048->H)
         -> embedding_post_projection_norm (no scale) -> (B,256,H), scattered over the image soft tokens

Cut where LiteRT-LM cuts (runtime/executor/vision_litert_compiled_model_executor.cc, and
litert-torch 0.10.0 export_hf/model_ext/gemma3n/vision_exportable.py):

- vision_encoder.tflite, signature `vision_<W>`: `images` (1,H,W,3) float32 NHWC, as the runtime's
  image preprocessor feeds it (resized, /255) -> `features` (1,S,2048) = everything above up to and
  including the x sqrt(2048). The permute to NCHW is the graph's first op.
- vision_adapter.tflite, signature `vision_adapter`: `soft_tokens` (1,S,2048) -> `mm_embedding`
  (1,S+1,H): the embed_vision soft path, plus one constant last row = the embedding of
  <end_of_image> (eoi). Why the extra row: LiteRT-LM's Gemma 3n prompt processing
  (gemma3_data_processor.cc) emits "\\n\\n<start_of_image>", then one vision placeholder per row of
  `mm_embedding`, then "\\n\\n" — it never emits <end_of_image> as text, whereas HF's processor writes
  boi + 256 soft tokens + eoi. The row is what HF puts at the eoi position: eoi (262144) lies in the
  vision vocab, so `Gemma3nModel.forward` embeds it with embed_vision's hard path. (litert-torch's
  exporter appends `get_input_embeddings()(eoi)`, the text table row, instead: not what HF computes.)

The runtime runs signature 0 of each file, writes the image into input 0 and hands the encoder's
output buffers to the adapter unchanged: each graph has exactly one input and one output.

timm's MobileNetV5Encoder lowers as is with litert-torch 0.10.0: RmsNorm2d, MQA with kv stride and
MSFA's nearest resize and avg-pool all map to builtin ops (CONV_2D, DEPTHWISE_CONV_2D, MEAN/RSQRT/MUL,
FULLY_CONNECTED, SOFTMAX, RESIZE_NEAREST_NEIGHBOR, AVERAGE_POOL_2D; fp32 within 1.5e-6 relative of
eager torch at real size), so nothing is re-authored: the timm module is built on the meta device.
Its conv / matmul weights (and the eoi row) are lowered as graph inputs (converters.lowering), the
1-D ones (norm weights, layer-scale gammas: ~0.1% of the bytes) are read and baked, so the
converter keeps activations NHWC as a baked conversion does. Each weight input that reaches its op
through TRANSPOSE / RESHAPE (OIHW -> OHWI) absorbs them (`_absorb_transposes`), and the splice
streams the checkpoint tensors (`model.vision_tower.timm_model.*`, `model.embed_vision.*`) in
fp32 one at a time, laid out as the graph wants; the graphs can be kept in a `graph_dir`.
Real size (294M params, 768 px, fp32 or int8, 2 cores): peak RSS (VmHWM, mapped file pages
included) 3.1 GB and ~50 s, against 6.3 GB and ~70 s with the weights baked.

This file holds the modules; converters/components/vision.py lowers and splices them, and
converters/quant/by_op.py quantizes the convolutions.
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass
from typing import Any, Callable

import torch
from torch import nn

from converters.gemma3n.layers import Linear, RMSNorm
from edge.errors import UserError

Getter = Callable[[str], torch.Tensor]

ENCODER_PREFIX = "model.vision_tower.timm_model."
ADAPTER_PREFIX = "model.embed_vision."
ENCODER_FILE, ADAPTER_FILE = "vision_encoder.tflite", "vision_adapter.tflite"
ENCODER_KIND, ADAPTER_KIND = "vision_encoder", "vision_adapter"  # LiteRT-LM model types
ADAPTER_SIGNATURE = "vision_adapter"
IMAGES, FEATURES, SOFT_TOKENS, MM_EMBEDDING = "images", "features", "soft_tokens", "mm_embedding"
DEFAULT_IMAGE_SIZE = (768, 768)  # the real checkpoints' preprocessor_config.json


def encoder_signature(image_size: tuple[int, int]) -> str:
    """`vision_<W>`: litert-torch's name (the runtime takes signature 0 for a single-signature encoder)."""
    return f"vision_{image_size[1]}"


# ---------------------------------------------------------------- config


@dataclass(frozen=True)
class VisionDims:
    """What the two vision graphs need from the config (HF field names)."""

    architecture: str  # timm model name: mobilenetv5_300m_enc
    model_args: dict[str, Any] | None  # extra timm kwargs (a custom block_args for tiny towers)
    hidden_size: int  # soft-token width (2048: timm's MSFA output width)
    text_hidden_size: int  # H: width of mm_embedding
    rms_norm_eps: float  # embed_vision's norms
    vision_soft_tokens_per_image: int  # S (256)
    vocab_offset: int  # first id of the vision vocab (embed_vision's hard tokens)
    vocab_size: int
    eoi_token_id: int  # <end_of_image>, appended as the adapter's last row
    image_size: tuple[int, int]  # (height, width) the encoder is lowered for

    @classmethod
    def from_config(cls, cfg: Any, image_size: tuple[int, int] | None = None) -> VisionDims:
        """From a transformers Gemma3nConfig or converters.gemma3n.config.Gemma3nConfig."""
        vision = getattr(cfg, "vision_config", None) or cfg.vision
        text = getattr(cfg, "text_config", None) or cfg.text
        size = tuple(int(v) for v in (image_size or DEFAULT_IMAGE_SIZE))
        if len(size) != 2 or min(size) < 32:
            raise UserError(f"vision image_size must be (height, width), each >= 32; got {image_size!r}")
        args = vision.model_args
        if args and any("block_type" not in b for stage in args.get("block_args") or () for b in stage):
            raise UserError("vision_config.model_args.block_args has been consumed by timm (it pops keys while "
                            "building a model from them): pass a config that no model was built from, e.g. "
                            "a fresh Gemma3nConfig.from_pretrained(checkpoint)")
        return cls(
            architecture=vision.architecture,
            model_args=copy.deepcopy(dict(args)) if args else None,  # timm mutates block_args in place
            hidden_size=vision.hidden_size,
            text_hidden_size=text.hidden_size,
            rms_norm_eps=vision.rms_norm_eps,
            vision_soft_tokens_per_image=cfg.vision_soft_tokens_per_image,
            vocab_offset=vision.vocab_offset,
            vocab_size=vision.vocab_size,
            eoi_token_id=cfg.eoi_token_id,
            image_size=size,
        )


# ---------------------------------------------------------------- modules


def _tensor(get: Getter, name: str, shape: tuple[int, ...]) -> torch.Tensor:
    try:
        t = get(name)
    except KeyError as e:
        raise UserError(f"checkpoint has no tensor {name}: the vision tower does not match config.json "
                        "(re-export the checkpoint, or build without the vision modality)") from e
    if tuple(t.shape) != tuple(shape):
        raise UserError(f"checkpoint tensor {name} has shape {list(t.shape)}, the config implies {list(shape)}: "
                        "config.json's vision_config does not match the weights")
    return t.detach().to(torch.float32).contiguous()


def meta_timm_encoder(dims: VisionDims) -> nn.Module:
    """timm's MobileNetV5 encoder on the meta device (no memory, no random init), shapes checked."""
    import timm

    with torch.device("meta"):
        model = timm.create_model(dims.architecture, pretrained=False, num_classes=0,
                                  **copy.deepcopy(dims.model_args or {}))
        f = model.forward_features(torch.empty(1, 3, *dims.image_size))  # (1, C, h, w), shapes only
    h, w = dims.image_size
    if f.shape[1] != dims.hidden_size or math.prod(f.shape[2:]) != dims.vision_soft_tokens_per_image:
        raise UserError(f"at {h}x{w} timm {dims.architecture} gives {math.prod(f.shape[2:])} tokens of width "
                        f"{f.shape[1]}, but config.json says vision_soft_tokens_per_image="
                        f"{dims.vision_soft_tokens_per_image} and vision_config.hidden_size={dims.hidden_size}: "
                        "config.json does not describe this vision tower (check vision_config.model_args)")
    return model.eval()


def build_timm_encoder(dims: VisionDims, get: Getter) -> nn.Module:
    """timm's MobileNetV5 encoder with the checkpoint's weights, read one tensor at a time."""
    model = meta_timm_encoder(dims)
    state = {k: _tensor(get, ENCODER_PREFIX + k, tuple(v.shape)) for k, v in model.state_dict().items()}
    model.load_state_dict(state, strict=True, assign=True)
    return model.eval()


class VisionEncoder(nn.Module):
    """`images` (1,H,W,3) NHWC -> `features` (1,S,C): get_image_features up to embed_vision."""

    def __init__(self, timm_encoder: nn.Module, soft_tokens: int):
        super().__init__()
        self.timm_model = timm_encoder
        self.soft_tokens = soft_tokens

    def forward(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        x = images.permute(0, 3, 1, 2)  # (1, 3, H, W): timm is NCHW
        f = self.timm_model.forward_features(x)  # (1, C, h, w)
        b, c = f.shape[:2]
        f = f.reshape(b, c, self.soft_tokens).permute(0, 2, 1)  # (1, S, C), HF's reshape+permute
        return {FEATURES: f * c**0.5}


class VisionAdapter(nn.Module):
    """`soft_tokens` (1,S,C) -> `mm_embedding` (1,S[+1],H): embed_vision's soft path (+ the eoi row)."""

    def __init__(self, dims: VisionDims, with_eoi: bool = True):
        super().__init__()
        self.soft_embedding_norm = RMSNorm(dims.hidden_size, dims.rms_norm_eps)
        self.embedding_projection = Linear(dims.hidden_size, dims.text_hidden_size)
        self.embedding_post_projection_norm = RMSNorm(dims.text_hidden_size, dims.rms_norm_eps, with_scale=False)
        self.eoi = nn.Parameter(torch.zeros(1, 1, dims.text_hidden_size)) if with_eoi else None

    def forward(self, soft_tokens: torch.Tensor) -> dict[str, torch.Tensor]:
        y = self.embedding_post_projection_norm(self.embedding_projection(self.soft_embedding_norm(soft_tokens)))
        if self.eoi is not None:
            y = torch.cat([y, self.eoi.expand(y.shape[0], 1, -1)], dim=1)  # (1, S+1, H)
        return {MM_EMBEDDING: y}


def eoi_embedding(dims: VisionDims, get: Getter) -> torch.Tensor:
    """(H,) what Gemma3nModel.forward puts at the <end_of_image> position (embed_vision's hard path)."""
    from converters.gemma3n.embedder import multimodal_rows

    row = dims.eoi_token_id - dims.vocab_offset
    if not 0 <= row < dims.vocab_size:
        raise UserError(f"eoi_token_id {dims.eoi_token_id} lies outside the vision vocab [{dims.vocab_offset}, "
                        f"{dims.vocab_offset + dims.vocab_size}); Gemma 3n configs put it at vision_config.vocab_offset")
    return multimodal_rows(get, ADAPTER_PREFIX.rstrip("."), dims.rms_norm_eps)[row]


def build_adapter(dims: VisionDims, get: Getter, with_eoi: bool = True) -> VisionAdapter:
    adapter = VisionAdapter(dims, with_eoi)
    c, h = dims.hidden_size, dims.text_hidden_size
    state = {
        "soft_embedding_norm.weight": _tensor(get, ADAPTER_PREFIX + "soft_embedding_norm.weight", (c,)),
        "embedding_projection.weight": _tensor(get, ADAPTER_PREFIX + "embedding_projection.weight", (h, c)),
    }
    if with_eoi:
        state["eoi"] = eoi_embedding(dims, get).reshape(1, 1, h)
    adapter.load_state_dict(state, strict=True)
    return adapter.eval()


__all__ = ["VisionDims", "VisionEncoder", "VisionAdapter", "build_timm_encoder", "build_adapter",
           "eoi_embedding", "encoder_signature", "meta_timm_encoder"]
