"""Numpy weight quantizers that reproduce ai-edge-quantizer 0.10.0 byte for byte.

What the runtime (XNNPACK / the builtin kernels of ai-edge-litert 2.3.0) runs, and what
ai-edge-quantizer (AEQ) writes for it (read from `algorithms/uniform_quantize/
uniform_quantize_tensor.py` and checked on real files, see tests/test_quant.py):

- int8, dynamic range, per output channel (row of a [out, in] FULLY_CONNECTED weight or of an
  EMBEDDING_LOOKUP table): scale = max(absmax(row), 1e-9) / 127 in float32, zero point 0
  (stored as int64), values clip(rint(w / scale), -127, 127) (narrow range).
- int4, dynamic range, blockwise along the input dimension (block 32/64/128/256):
  scale = max(absmax(block), 1e-9) / 7, rounded to bfloat16 then stored as float16, values
  clip(rint(w / scale), -8, 7) using the rounded scale, packed two per byte with the even
  element in the low nibble. The scales are a FLOAT16 constant tensor [out, in / block].
- float16: a plain cast (round to nearest even); the graph gets a DEQUANTIZE op.

One deliberate difference from AEQ: an int4 block whose rounded scale underflows to 0 in
float16 (an all-zero block, e.g. the pad row of an embedding table, or absmax < ~4e-7) gets
the smallest normal float16 scale (2^-14) instead. XNNPACK rejects a zero scale
(`unsupported scale value (0.000000)`), and with a zero scale AEQ would divide 0 by 0. The
int8 path needs no clamp: 1e-9 / 127 is a normal float32, which XNNPACK accepts.

All functions work on 2-D row chunks, so a multi-GB table can be quantized a few MB at a time
with results identical to quantizing it whole (every statistic is per row or per block).
"""

from __future__ import annotations

import numpy as np

from edge.errors import UserError

INT8_QMAX = 127  # narrow range: AEQ uses [-127, 127] for >= 8 bits (legacy TFLite kernels)
INT4_QMIN, INT4_QMAX = -8, 7  # full range below 8 bits (unpacked to int8 by the kernels)
MIN_BOUND = np.float32(1e-9)  # AEQ's floor on absmax, so no int8 scale is 0
FP16_MIN_NORMAL = np.float32(2.0**-14)  # our floor on int4 scales that underflow to 0
BLOCK_SIZES = (32, 64, 128, 256)  # what AEQ and the runtime accept


class QuantizationError(UserError):
    """A weight cannot be quantized as asked (shape, block size, dtype)."""


def _as_2d_f32(w: np.ndarray, what: str) -> np.ndarray:
    w = np.asarray(w)
    if w.ndim != 2:
        raise QuantizationError(
            f"{what} quantizes 2-D [out, in] weights; got shape {tuple(w.shape)}. "
            "Reshape it to [out, in] or keep it float in the recipe."
        )
    if w.dtype != np.float32:
        w = w.astype(np.float32)
    return w


def check_blockwise(shape: tuple[int, ...], block_size: int) -> str | None:
    """Why `shape` cannot be int4-blockwise quantized with `block_size`, or None if it can."""
    if block_size not in BLOCK_SIZES:
        return f"block size {block_size} is not one of {BLOCK_SIZES}"
    if len(shape) != 2:
        return f"blockwise quantization needs a 2-D [out, in] weight, not shape {tuple(shape)}"
    if shape[1] % block_size:
        return f"the input dimension {shape[1]} of shape {tuple(shape)} is not a multiple of {block_size}"
    return None


# ---------------------------------------------------------------------------------------------
# int8 per channel


def int8_channel_scales(w: np.ndarray) -> np.ndarray:
    """float32 scale per row: max(absmax, 1e-9) / 127 (AEQ's `tensor_zp_scale_from_min_max`)."""
    w = _as_2d_f32(w, "int8 per-channel quantization")
    bound = np.maximum(np.abs(w.min(axis=1)), np.abs(w.max(axis=1)))
    bound = np.maximum(bound, MIN_BOUND)
    return (bound / np.float32(INT8_QMAX)).astype(np.float32)


def quantize_int8_channelwise(w: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Rows of `w` [out, in] -> (int8 values [out, in], float32 scales [out])."""
    w = _as_2d_f32(w, "int8 per-channel quantization")
    scales = int8_channel_scales(w)
    q = np.divide(w, scales[:, None])
    np.rint(q, out=q)
    np.clip(q, -INT8_QMAX, INT8_QMAX, out=q)
    return q.astype(np.int8), scales


def dequantize_int8_channelwise(q: np.ndarray, scales: np.ndarray) -> np.ndarray:
    return q.astype(np.float32) * scales.astype(np.float32)[:, None]


def quantize_int4_channelwise(w: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Rows of `w` [out, in] -> (int8 values in [-8, 7] [out, in], float32 scales [out]): one
    scale per output channel, max(absmax, 1e-9) / 7 (XNNPACK's qc4w weights; Google's int4 choice
    for decode speed)."""
    w = _as_2d_f32(w, "int4 per-channel quantization")
    bound = np.maximum(np.maximum(np.abs(w.min(axis=1)), np.abs(w.max(axis=1))), MIN_BOUND)
    scales = (bound / np.float32(INT4_QMAX)).astype(np.float32)
    q = np.divide(w, scales[:, None])
    np.rint(q, out=q)
    np.clip(q, INT4_QMIN, INT4_QMAX, out=q)
    return q.astype(np.int8), scales


# ---------------------------------------------------------------------------------------------
# int4 blockwise


def _round_bf16(x: np.ndarray) -> np.ndarray:
    """float32 -> nearest bfloat16 (ties to even), returned as float32 (what ml_dtypes does)."""
    bits = np.ascontiguousarray(x, dtype=np.float32).view(np.uint32)
    rounded = (bits + np.uint32(0x7FFF) + ((bits >> np.uint32(16)) & np.uint32(1))) & np.uint32(0xFFFF0000)
    return rounded.view(np.float32)


def int4_block_scales(w: np.ndarray, block_size: int) -> np.ndarray:
    """float16 scales [out, in / block]: max(absmax, 1e-9) / 7 through bf16, zero-clamped."""
    w = _as_2d_f32(w, "int4 blockwise quantization")
    why = check_blockwise(w.shape, block_size)
    if why:
        raise QuantizationError(f"cannot int4-quantize blockwise: {why}.")
    blocks = w.reshape(w.shape[0], w.shape[1] // block_size, block_size)
    bound = np.maximum(np.abs(blocks.min(axis=2)), np.abs(blocks.max(axis=2)))
    bound = np.maximum(bound, MIN_BOUND)
    scale = _round_bf16(bound / np.float32(INT4_QMAX)).astype(np.float16)
    # The clamp (see the module docstring): only scales that rounded to exactly 0.
    scale[scale == 0] = np.float16(FP16_MIN_NORMAL)
    return scale


def quantize_int4_blockwise(w: np.ndarray, block_size: int) -> tuple[np.ndarray, np.ndarray]:
    """Rows of `w` [out, in] -> (int8 values in [-8, 7] [out, in], float16 scales [out, in/B])."""
    w = _as_2d_f32(w, "int4 blockwise quantization")
    scales = int4_block_scales(w, block_size)
    blocks = w.reshape(w.shape[0], -1, block_size)  # (out, in/B, B): divide by the broadcast scale
    q = np.divide(blocks, scales.astype(np.float32)[:, :, None])
    np.rint(q, out=q)
    np.clip(q, INT4_QMIN, INT4_QMAX, out=q)
    return q.astype(np.int8).reshape(w.shape), scales


def pack_int4(q: np.ndarray) -> np.ndarray:
    """int8 values in [-8, 7] -> bytes, two per byte, even element in the low nibble."""
    flat = np.ascontiguousarray(q, dtype=np.int8).reshape(-1)
    if flat.size % 2:
        flat = np.concatenate([flat, np.zeros(1, np.int8)])
    nib = flat.view(np.uint8) & np.uint8(0x0F)
    return (nib[0::2] | (nib[1::2] << np.uint8(4))).astype(np.uint8)


def unpack_int4(packed: np.ndarray, count: int) -> np.ndarray:
    """Inverse of `pack_int4`: the first `count` int4 values as int8."""
    packed = np.asarray(packed, dtype=np.uint8)
    out = np.empty(packed.size * 2, np.uint8)
    out[0::2] = packed & 0x0F
    out[1::2] = packed >> 4
    signed = out.astype(np.int8)
    signed[signed > 7] -= 16
    return signed[:count]


def dequantize_int4_blockwise(q: np.ndarray, scales: np.ndarray) -> np.ndarray:
    block = q.shape[1] // scales.shape[1]
    return q.astype(np.float32) * np.repeat(scales.astype(np.float32), block, axis=1)


# ---------------------------------------------------------------------------------------------
# float


def to_fp16(w: np.ndarray) -> np.ndarray:
    """float16 cast (AEQ's float_casting). Values beyond the float16 range are an error, not inf."""
    w = np.asarray(w, dtype=np.float32)
    if w.size and float(np.max(np.abs(w))) > 65504.0:
        raise QuantizationError(
            f"a weight of shape {tuple(w.shape)} has values beyond the float16 range "
            f"(max |w| = {float(np.max(np.abs(w))):.4g} > 65504); keep it float32 in the recipe."
        )
    return w.astype(np.float16)
