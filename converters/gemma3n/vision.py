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

Quantization is data: `VISION_RULES[recipe]` lists (TFLite op, scheme, why) rules, first match
wins, applied with ai-edge-quantizer 0.10.0 to the spliced fp32 file and then checked on the written file (the quantizer
silently skips a scheme an op does not support). Measured on a real-size encoder (tools/bench_vision.py).
"""

from __future__ import annotations

import copy
import json
import math
import os
import re
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import torch
from torch import nn

from converters.gemma3n.layers import Linear, RMSNorm
from edge.errors import UserError
from edge.fileio import atomic_write

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


# ---------------------------------------------------------------- quantization


@dataclass(frozen=True)
class Scheme:
    """One ai-edge-quantizer op config, by the name our rules use."""

    name: str
    algorithm: str
    op_config: dict[str, Any]
    stored: str  # weight dtype in the file once applied


def _int(bits: int, granularity: str, dynamic: bool) -> dict[str, Any]:
    return {"weight_tensor_config": {"num_bits": bits, "symmetric": True, "granularity": granularity, "dtype": "INT"},
            "compute_precision": "INTEGER" if dynamic else "FLOAT", "explicit_dequantize": not dynamic}


SCHEMES = {s.name: s for s in (
    # fp16 weights, fp32 arithmetic (XNNPACK unpacks them to fp32 at load: fp32's RAM).
    Scheme("fp16", "float_casting", {"weight_tensor_config": {"num_bits": 16, "dtype": "FLOAT"},
                                     "compute_precision": "FLOAT", "explicit_dequantize": True}, "float16"),
    # int8 per-output-channel weights, activations quantized on the fly (XNNPACK qd8 kernels; int8 in RAM).
    Scheme("int8", "min_max_uniform_quantize", _int(8, "CHANNELWISE", True), "int8"),
    # int8 per-channel weights dequantized at load: int8's file size, fp32's arithmetic and RAM.
    Scheme("int8_wo", "min_max_uniform_quantize", _int(8, "CHANNELWISE", False), "int8"),
    # int4 per-channel, dynamic: the only int4 ai-edge-quantizer 0.10.0 allows on CONV_2D.
    Scheme("int4", "min_max_uniform_quantize", _int(4, "CHANNELWISE", True), "int4"),
    # int4 blockwise-32 with fp16 block scales: FULLY_CONNECTED (and EMBEDDING_LOOKUP) only.
    Scheme("int4_b32", "min_max_uniform_quantize", _int(4, "BLOCKWISE_32", True), "int4"),
)}

WEIGHT_OPS = ("CONV_2D", "DEPTHWISE_CONV_2D", "FULLY_CONNECTED")
Rule = tuple[str, "str | None", str]  # (TFLite op or "*", scheme name or None = keep fp32, why)

# converters.quant recipe names -> the vision graphs' rules, first match wins. converters.quant's
# rules cover matmul weights and tables only; the encoder is 282 convolutions, which XNNPACK runs
# with int8 weights too (dynamic range), so vision has its own rules. tools/bench_vision.py, real-size
# encoder, random weights, 768 px (relative L2 feature error vs fp32 / MB / s per image on 2 busy cores):
#   fp16 0.13-0.17% / 589-678 / ~13-15      int8 (fp32 depthwise) 3.8-4.1% / 299 / ~8-9
#   int8 everywhere 4.2% / 298 / ~11         int8 weight-only 3.4-4.0% / 299 / ~16-18 (fp32 RAM)
#   int4 per-channel convs 55% / 152 / ~17 (unusable; blockwise int4 does not exist for convs)
# For scale: re-encoding the picture as JPEG q90 moves fp32 features by 1.9-3.2%, a 1-pixel shift
# by 2.8-4.6%. int8 is the phone default (a quarter of fp32's bytes and ~40% of its RAM, the fastest);
# the fp16 recipe is the choice when features must stay within 0.2%.
_INT8 = (
    ("DEPTHWISE_CONV_2D", None, "45 depthwise convs, ~1 MB in all: k*k-tap channels quantize worst; kept fp32"),
    ("*", "int8", "int8 per output channel, dynamic-range kernels: a quarter of the bytes, int8 in RAM, "
                  "~4% feature error (about what a JPEG q90 re-encode of the picture does)"),
)
VISION_RULES: dict[str, tuple[Rule, ...]] = {
    "fp32": (),
    "fp16": (("*", "fp16", "half the bytes at ~0.1% feature error; fp32 arithmetic and RAM"),),
    "int8": _INT8,
    "int4": _INT8,  # int4 convs lose the image (55% feature error)
    "int4-pc": _INT8,
    "int4-b128": _INT8,
    "mixed": _INT8,
}
# An fp16 cast that loses more than this (relative L2) keeps the tensor in fp32. fp16's own rounding
# is <= 2^-11/sqrt(3) ~ 3e-4; beyond that the tensor sits in fp16's subnormal range, which happens
# when the converter folds a small layer-scale gamma (timm init: 1e-5) into the preceding conv.
FP16_GUARD = 1e-3


def rules_for(recipe: str) -> tuple[Rule, ...]:
    """The vision rules of a converters.quant recipe name (unknown names fail before any lowering)."""
    from converters.quant.recipes import get_recipe

    get_recipe(recipe)  # the project-wide error for an unknown recipe name
    try:
        return VISION_RULES[recipe]
    except KeyError:
        raise UserError(f"recipe {recipe!r} has no vision rules: add it to VISION_RULES in "
                        f"converters/gemma3n/vision.py (known: {', '.join(VISION_RULES)})") from None


def scheme_for(rules: tuple[Rule, ...], op: str) -> str | None:
    return next((s for o, s, _ in rules if o in ("*", op)), None)


@dataclass(frozen=True)
class WeightOp:
    """A weight-carrying op of a .tflite: its scope (output names, as ai-edge-quantizer matches) and weight."""

    op: str
    scope: str
    dtype: str  # stored dtype of its constant weight, seen through a DEQUANTIZE
    fp16_loss: float | None  # relative L2 error of casting an fp32 weight to fp16


def weight_ops(model_file: str | os.PathLike | bytes) -> list[WeightOp]:
    """Every CONV_2D / DEPTHWISE_CONV_2D / FULLY_CONNECTED with a constant weight (input 1), in op order."""
    import mmap

    if isinstance(model_file, (bytes, bytearray)):
        return _weight_ops(model_file)
    with open(model_file, "rb") as f:
        data = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
    return _weight_ops(data)  # the map closes when collected (numpy views into it end with the call)


def _weight_ops(data) -> list[WeightOp]:
    import numpy as np
    from ai_edge_litert import schema_py_generated as schema

    types = {v: k.lower() for k, v in vars(schema.TensorType).items() if not k.startswith("_")}
    builtins = {v: k for k, v in vars(schema.BuiltinOperator).items() if not k.startswith("_")}
    model = schema.Model.GetRootAs(data, 0)

    def opname(o) -> str:
        code = model.OperatorCodes(o.OpcodeIndex())
        return builtins.get(max(code.BuiltinCode(), code.DeprecatedBuiltinCode()), "?")

    out = []
    for s in range(model.SubgraphsLength()):
        sg = model.Subgraphs(s)
        ops = [sg.Operators(j) for j in range(sg.OperatorsLength())]
        producer = {o.Outputs(k): o for o in ops for k in range(o.OutputsLength())}
        for o in ops:
            name = opname(o)
            if name not in WEIGHT_OPS:
                continue
            w = o.Inputs(1)
            p = producer.get(w)
            if p is not None and opname(p) == "DEQUANTIZE":
                w = p.Inputs(0)  # weight-only / fp16: the stored tensor feeds a DEQUANTIZE
            elif p is not None:
                continue  # activation x activation (MQA's q.k and attn.v as FULLY_CONNECTED)
            t = sg.Tensors(w)
            buf = model.Buffers(t.Buffer()) if 0 < t.Buffer() < model.BuffersLength() else None
            if buf is None or (buf.DataLength() == 0 and buf.Offset() <= 1):
                continue  # not a constant
            loss = None
            if t.Type() == schema.TensorType.FLOAT32:
                # Inline data, or (ai-edge-quantizer's output) appended after the flatbuffer at Offset.
                x = (buf.DataAsNumpy() if buf.DataLength() else
                     np.frombuffer(data, np.uint8, buf.Size(), buf.Offset())).view(np.float32)
                norm = float(np.linalg.norm(x))
                loss = float(np.linalg.norm(x - x.astype(np.float16)) / norm) if norm else 0.0
            scope = ";".join(sg.Tensors(o.Outputs(k)).Name().decode() for k in range(o.OutputsLength())) + ";"
            out.append(WeightOp(name, scope, types.get(t.Type(), "?"), loss))
    return out


def weight_dtypes(model_file: str | os.PathLike | bytes) -> dict[str, dict[str, int]]:
    """Per weight op kind, how many weights are stored in each dtype."""
    out: dict[str, dict[str, int]] = {}
    for w in weight_ops(model_file):
        out.setdefault(w.op, {}).setdefault(w.dtype, 0)
        out[w.op][w.dtype] += 1
    return out


def aeq_recipe(rules: tuple[Rule, ...], keep_float: tuple[str, ...] = ()) -> list[dict[str, Any]]:
    """ai-edge-quantizer recipe. Its last matching entry wins: our first-match rules go in reverse,
    the per-op fp32 exceptions (`keep_float` scopes) last."""
    entries = []
    for op, scheme, _ in reversed(rules):
        for o in WEIGHT_OPS if op == "*" else (op,):
            if scheme is None:
                entries.append({"regex": ".*", "operation": o, "algorithm_key": "no_quantize", "op_config": {}})
            else:
                s = SCHEMES[scheme]
                entries.append({"regex": ".*", "operation": o, "algorithm_key": s.algorithm,
                                "op_config": copy.deepcopy(s.op_config)})
    for scope in keep_float:
        entries.append({"regex": "^" + re.escape(scope) + "$", "operation": "*", "algorithm_key": "no_quantize",
                        "op_config": {}})
    return entries


def plan(rules: tuple[Rule, ...], ops: list[WeightOp]) -> tuple[list[str], tuple[str, ...]]:
    """Per weight op the dtype it must end up with, and the scopes kept fp32 by FP16_GUARD."""
    want, keep = [], []
    for w in ops:
        scheme = scheme_for(rules, w.op)
        if scheme == "fp16" and w.fp16_loss is not None and w.fp16_loss > FP16_GUARD:
            scheme = None
            keep.append(w.scope)
        want.append(SCHEMES[scheme].stored if scheme else w.dtype)
    return want, tuple(keep)


def quantize_file(src: str | os.PathLike, dst: str | os.PathLike, rules: tuple[Rule, ...]) -> dict[str, Any]:
    """Quantize `src` by `rules` into `dst`, written atomically once every weight op is checked:
    ai-edge-quantizer silently skips a scheme an op does not support."""
    from ai_edge_quantizer import quantizer

    before = weight_ops(src)
    want, keep = plan(rules, before)
    from edge.quiet import verbose

    qt = quantizer.Quantizer(str(src))
    qt.load_quantization_recipe(aeq_recipe(rules, keep))
    # Its own tqdm bars (drawn for graphs of 100+ ops) only with --verbose: the stage line is ours.
    data = bytes(qt.quantize(enable_progress_report=False, enable_progress_bar=verbose()).quantized_model)
    del qt
    after = weight_ops(data)
    # The quantizer keeps the op order and names; it only inserts DEQUANTIZE ops.
    wrong = [(b.op, b.scope[-80:], d, a.dtype) for b, a, d in zip(before, after, want)
             if (a.scope, a.dtype) != (b.scope, d)]
    if wrong or len(after) != len(before):
        raise RuntimeError(f"ai-edge-quantizer did not apply the vision rules to {len(wrong)} of {len(before)} "
                           f"weight ops ({len(after)} after); (op, scope, wanted, got): {wrong[:3]}")
    atomic_write(dst, data)
    return {"weights": weight_dtypes(data), "kept_fp32_by_fp16_guard": len(keep)}


# ---------------------------------------------------------------- export


def _lower(module: nn.Module, signature: str, sample: dict[str, torch.Tensor], path: Path) -> None:
    import litert_torch

    show = litert_torch.config.show_progress
    litert_torch.config.show_progress = False
    try:
        with torch.no_grad():
            model = litert_torch.signature(signature, module, sample_kwargs=sample).convert()
        model.export(str(path))
    finally:
        litert_torch.config.show_progress = show


def _signatures_of(path: Path) -> dict[str, dict]:
    from edge.tflite_file import read_signatures

    return {k: {"inputs": {n: {"shape": list(t.shape), "dtype": t.dtype} for n, t in s.inputs.items()},
                "outputs": {n: {"shape": list(t.shape), "dtype": t.dtype} for n, t in s.outputs.items()}}
            for k, s in read_signatures(path).items()}


# Parity tolerance per weight precision, end to end (image in) vs HF fp32, ~2x the worst measured
# by tools/bench_vision.py (real-size encoder, 768 px) and tests/test_vision.py (tiny tower, 3 images).
# Encoder features are RmsNorm2d outputs x sqrt(C): their RMS is ~sqrt(C) * rms(msfa.norm.weight),
# so the encoder's max_abs is a multiple of that scale. Adapter rows are unit-RMS (post-projection
# norm without scale): absolute. rel_l2 (relative L2 over the whole output) is the sharper check
# for quantized files, where a max over 500k values is loose.
TOLERANCES = {  # level -> encoder max_abs (x feature scale), adapter max_abs, rel_l2, why
    "float32": (1e-4, 1e-4, 1e-5, "fp32 on both sides, sums reassociated: measured 1e-5 x scale and 6e-6 on "
                                  "adapter rows (relative L2 1.5e-6)"),
    "float16": (0.04, 0.02, 0.004, "fp16 weights, fp32 arithmetic: measured 0.019 x scale (tiny; 0.0065 real "
                                   "size) and 0.008 on adapter rows (relative L2 0.17%)"),
    "int8": (1.0, 0.5, 0.1, "int8 per-channel weights, dynamic int8 activations: measured 0.47 x scale (tiny; 0.19 "
                            "real size) and 0.21 on adapter rows (relative L2 4.4%, cosine 0.999)"),
}
_LEVEL = {"float32": 0, "float16": 1, "int8": 2, "int4": 3}


def feature_scale(dims: VisionDims, get: Getter) -> float:
    """Expected RMS of the encoder's features: sqrt(C) * rms(final MSFA norm weight)."""
    try:
        w = get(ENCODER_PREFIX + "msfa.norm.weight").float()
    except (KeyError, UserError):  # a dict getter, or converters.checkpoint's reader
        return dims.hidden_size**0.5  # another timm tower: assume a unit norm weight
    return float(dims.hidden_size**0.5 * w.pow(2).mean().sqrt())


def tolerance(rules: tuple[Rule, ...], kind: str, scale: float) -> dict[str, Any]:
    """The manifest tolerance of one vision artifact under `rules` (its least precise weights decide)."""
    stored = [SCHEMES[s].stored for _, s, _ in rules if s] or ["float32"]
    level = max(stored, key=_LEVEL.__getitem__)
    if level not in TOLERANCES:
        raise UserError(f"no parity tolerance for {level} vision weights: measure one with tools/bench_vision.py")
    enc, ada, rel, why = TOLERANCES[level]
    if kind == ENCODER_KIND:
        return {"max_abs": enc * scale, "rel_l2": rel, "why": f"{enc} x feature scale {scale:.3g}; {why}"}
    return {"max_abs": ada, "rel_l2": rel, "why": why}


# ---------------------------------------------------------------- lowering: weights as graph inputs

PERMS_KEY = "gemma3n_edge.weight_layout"  # metadata: {weight name: [step]} absorbed by _absorb_transposes


def _absorb_transposes(path: Path) -> None:
    """Make each weight input that feeds only a chain of TRANSPOSE / RESHAPE ops (a conv's OIHW ->
    OHWI layout change, a 1x1 conv's squeeze: what a baked conversion folds) the chain's result
    itself: the ops are dropped, the weight input takes the result's shape, and the steps are
    recorded in the file's metadata for the weight source (`_reshaped`). Without this every conv
    would transpose its weights at run time and its weight operand would not be a constant
    (nothing for the quantizer to quantize)."""
    import dataclasses as dc

    import numpy as np

    from converters.lowering import flatbuf
    from converters.lowering.export import GRAPH_INFO_KEY, read_graph_info

    model = flatbuf.read_model(path)
    info = read_graph_info(model)
    by_input = {w.input_name: w for w in info.weights}
    weights = {w.name: w for w in info.weights}
    steps: dict[str, list] = {}
    for sd in model.signatureDefs:
        sg = model.subgraphs[sd.subgraphIndex]
        cons = flatbuf.consumers(sg)
        outputs = {int(t) for t in sg.outputs}
        drop = set()
        for io in sd.inputs:
            w = by_input.get(flatbuf.s(io.name))
            if w is None:
                continue
            t, chain = int(io.tensorIndex), []
            while True:
                users = cons.get(t, [])
                if len(users) != 1 or users[0][1] != 0 or t in outputs:
                    break
                op = sg.operators[users[0][0]]
                kind = flatbuf.op_name(model, op)
                if kind not in ("TRANSPOSE", "RESHAPE"):
                    break
                if kind == "TRANSPOSE":
                    pt = sg.tensors[op.inputs[1]]
                    raw = model.buffers[pt.buffer].data if pt.buffer else None
                    if raw is None:
                        break  # a computed perm: leave it
                    dtype = np.int64 if pt.type == flatbuf.schema.TensorType.INT64 else np.int32
                    chain.append(["transpose", [int(v) for v in np.frombuffer(bytes(np.asarray(raw, np.uint8)), dtype)]])
                drop.add(users[0][0])
                t = int(op.outputs[0])
                if kind == "RESHAPE":
                    chain.append(["reshape", [int(d) for d in sg.tensors[t].shape]])
            if not chain:
                continue
            if steps.setdefault(w.name, chain) != chain:
                raise RuntimeError(f"{w.name}: reshaped differently in two signatures")
            sg.inputs = [t if int(i) == int(io.tensorIndex) else int(i) for i in sg.inputs]
            io.tensorIndex = t
            weights[w.name] = dc.replace(w, shape=tuple(int(d) for d in sg.tensors[t].shape))
        sg.operators = [op for i, op in enumerate(sg.operators) if i not in drop]
    info = dc.replace(info, weights=tuple(weights[w.name] for w in info.weights))
    flatbuf.set_metadata(model, GRAPH_INFO_KEY, info.to_json().encode())
    flatbuf.set_metadata(model, PERMS_KEY, json.dumps(steps, sort_keys=True).encode())
    flatbuf.compact(model)
    flatbuf.atomic_write_bytes(path, flatbuf.pack_model(model))


def _graph_steps(path: Path) -> dict[str, list]:
    from converters.lowering import flatbuf

    raw = flatbuf.get_metadata(flatbuf.read_model(path), PERMS_KEY)
    return json.loads(raw or b"{}")


def _reshaped(t: torch.Tensor, steps: list) -> torch.Tensor:
    """A checkpoint tensor laid out as the graph's weight input (the absorbed TRANSPOSE / RESHAPE chain)."""
    for kind, arg in steps:
        t = t.permute(*arg) if kind == "transpose" else t.reshape(arg)
    return t.contiguous()


def _is_input(p: torch.Tensor) -> bool:
    """Conv / matmul weights (and the eoi row) are graph inputs; 1-D ones (norm weights, layer-scale
    gammas, biases: ~0.1% of the bytes) are baked, so the converter folds them and keeps the
    activations NHWC as a baked conversion does (as inputs they cost 11 activation TRANSPOSEs
    and 4 PADs on the tiny tower)."""
    return p.dim() >= 2


def _graph_modules(dims: VisionDims, get: Getter, with_eoi: bool) -> dict[str, tuple[nn.Module, dict, list[str]]]:
    """{artifact: (module with meta input weights and real 1-D weights, {signature: example inputs}, input weights)}."""
    h, w = dims.image_size
    with torch.device("meta"):
        adapter = VisionAdapter(dims, with_eoi).eval()
    encoder = VisionEncoder(meta_timm_encoder(dims), dims.vision_soft_tokens_per_image).eval()
    soft = torch.zeros(1, dims.vision_soft_tokens_per_image, dims.hidden_size)
    out = {}
    for kind, module, prefix, sigs in (
            (ENCODER_KIND, encoder, ENCODER_PREFIX, {encoder_signature(dims.image_size): {IMAGES: torch.zeros(1, h, w, 3)}}),
            (ADAPTER_KIND, adapter, ADAPTER_PREFIX, {ADAPTER_SIGNATURE: {SOFT_TOKENS: soft}})):
        inputs = []
        for name, p in list(module.named_parameters()):
            if _is_input(p):
                inputs.append(name)
                continue
            owner, _, attr = name.rpartition(".")
            inner = name.removeprefix("timm_model.") if kind == ENCODER_KIND else name
            module.get_submodule(owner)._parameters[attr] = nn.Parameter(
                _tensor(get, prefix + inner, tuple(p.shape)), requires_grad=False)
        out[kind] = (module, sigs, inputs)
    return out


def _baked_weights(modules: dict):
    """The 1-D weights baked into the graphs (norms, layer scales): part of the cache key."""
    for kind in sorted(modules):
        for name, p in modules[kind][0].named_parameters():
            if not _is_input(p):
                yield name.encode() + b"\0" + p.detach().numpy().tobytes()


def lower_vision(dims: VisionDims, get: Getter, graph_dir: str | os.PathLike,
                 with_eoi: bool = True) -> dict[str, Path]:
    """Lower the encoder and adapter with their conv / matmul weights as graph inputs into `graph_dir`
    (reused when there: the key covers timm's and our code and the baked 1-D weights)."""
    from converters.lowering.cache import cached_graph, graph_key
    from converters.lowering.export import lower

    modules = _graph_modules(dims, get, with_eoi)
    key = graph_key("vision", [repr(dims), with_eoi], [__name__, "converters.lowering.export"], _baked_weights(modules))

    def make(kind):
        def write(tmp: Path) -> None:
            module, sigs, inputs = modules[kind]
            lower(module, sigs, tmp, weight_names=inputs)
            _absorb_transposes(tmp)
        return write

    return {kind: cached_graph(graph_dir, kind, key, make(kind)) for kind in (ENCODER_KIND, ADAPTER_KIND)}


def _weight_source(kind: str, module: nn.Module, dims: VisionDims, get: Getter, steps: dict[str, list]):
    """get(<lowered parameter name>) for one graph: the checkpoint tensor, permuted as the graph stores it."""
    shapes = {n: tuple(p.shape) for n, p in module.named_parameters()}
    prefix = ENCODER_PREFIX if kind == ENCODER_KIND else ADAPTER_PREFIX

    def source(name: str) -> torch.Tensor:
        if kind == ADAPTER_KIND and name == "eoi":
            return eoi_embedding(dims, get).reshape(shapes[name]).float()
        inner = name.removeprefix("timm_model.") if kind == ENCODER_KIND else name
        t = _tensor(get, prefix + inner, shapes[name])
        return _reshaped(t, steps[name]) if name in steps else t

    return source


def export_vision(cfg: Any, get: Getter, out_dir: str | os.PathLike, recipe: str, *,
                  image_size: tuple[int, int] | None = None, with_eoi: bool = True,
                  graph_dir: str | os.PathLike | None = None) -> list[dict]:
    """Lower, splice, quantize and write vision_encoder.tflite and vision_adapter.tflite into `out_dir`.

    `cfg`: transformers or our Gemma3nConfig; `get(name)`: a checkpoint tensor by canonical name,
    called once per weight (the splice streams them in); `recipe`: a converters.quant recipe name
    (VISION_RULES says what it means for vision); `image_size`: (H, W) of the checkpoint's
    preprocessor (default 768x768); `with_eoi`: append the <end_of_image> row to mm_embedding
    (LiteRT-LM's Gemma 3n prompt needs it, see the module doc); `graph_dir`: where to keep the
    weight-free lowered graphs for reuse (default: a temporary directory).
    The graphs are lowered with every weight as an input (converters.lowering; the modules live on
    the meta device), the fp32 weights are spliced in one at a time, then the VISION_RULES are
    applied with ai-edge-quantizer. Nothing is written unless both files pass their checks.
    Returns one manifest entry per artifact (file, kind, signatures as written, tolerance, ...).
    """
    from converters.lowering.splice import splice_weights

    rules = rules_for(recipe)
    dims = VisionDims.from_config(cfg, image_size)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    scale = feature_scale(dims, get)
    entries = []
    with tempfile.TemporaryDirectory(dir=out, prefix=".vision.") as tmp:
        tmp = Path(tmp)
        graphs = lower_vision(dims, get, graph_dir or tmp, with_eoi)
        with torch.device("meta"):  # parameter shapes only
            modules = {ENCODER_KIND: VisionEncoder(meta_timm_encoder(dims), dims.vision_soft_tokens_per_image),
                       ADAPTER_KIND: VisionAdapter(dims, with_eoi)}
        for kind, file in ((ENCODER_KIND, ENCODER_FILE), (ADAPTER_KIND, ADAPTER_FILE)):
            source = _weight_source(kind, modules[kind], dims, get, _graph_steps(graphs[kind]))
            spliced = tmp / file
            splice_weights(graphs[kind], spliced, source, "fp32", component=kind)
            final = tmp / ("q." + file) if rules else spliced
            if rules:
                quant = quantize_file(spliced, final, rules)
                spliced.unlink()  # free the disk before the next one
            else:
                quant = {"weights": weight_dtypes(final), "kept_fp32_by_fp16_guard": 0}
            entries.append({
                "name": kind, "file": file, "kind": kind, "signatures": _signatures_of(final),
                "tolerance": tolerance(rules, kind, scale), "recipe": recipe, "quantization": quant,
                "image_size": list(dims.image_size),
                # mm_embedding rows: the soft tokens, then (if true) the <end_of_image> embedding.
                **({"soft_tokens": dims.vision_soft_tokens_per_image, "end_of_image_row": with_eoi}
                   if kind == ADAPTER_KIND else {}),
                "_path": final,
            })
        for e in entries:  # both spliced and checked: publish them (same filesystem, atomic renames)
            os.replace(e.pop("_path"), out / e["file"])
    return entries


__all__ = ["VisionDims", "VisionEncoder", "VisionAdapter", "VISION_RULES", "SCHEMES", "build_timm_encoder",
           "build_adapter", "eoi_embedding", "export_vision", "quantize_file", "weight_dtypes", "encoder_signature",
           "rules_for", "tolerance", "feature_scale", "meta_timm_encoder", "lower_vision"]
