"""Image input for the vision encoder: decode, orient, RGB, resize, rescale. numpy + Pillow only.

Mirrors the image processor transformers 5.23.0 picks for Gemma 3n: `SiglipImageProcessor`
(`models/siglip/image_processing_siglip.py`, torchvision backend; `SiglipImageProcessorPil` without
torchvision) as driven by `image_processing_backends.py`:

    PIL image → `image_transforms.convert_to_rgb` (alpha, or a palette's transparency, composited
    over white; any other mode via Image.convert("RGB"), CMYK included)
      → stretch-resize to size (height, width) — no aspect preservation, no crop — with `resample`
      → × rescale_factor, then (x − mean)/std if do_normalize, in float32 as the torchvision backend

The real E2B/E4B `preprocessor_config.json` says 768×768, resample 2 (bilinear), rescale 1/255,
no normalization: the dataclass defaults below. Keys a config leaves out fall back to the
`SiglipImageProcessor` class defaults, as in HF.

Resizing is Pillow's, so pixel values equal `SiglipImageProcessorPil`'s exactly (to float rounding).
The torchvision backend resizes uint8 with torch's antialiased kernel, whose fixed-point weights
round differently from Pillow's: a few % of values differ by exactly 1/255 (tests measure it).

Differences from HF, on purpose:
- EXIF orientation is always applied. HF applies it when given a path or URL, not a PIL image.
- RGB conversion always happens: real configs carry `"do_convert_rgb": null`, with which HF hands
  an RGBA or grayscale image to the encoder as 4 or 1 channels (it then fails).
- A path is decoded by Pillow; HF's torchvision backend decodes paths with torchvision, which
  drops alpha instead of compositing it. Given a PIL image, HF composites, as here.
- Images over `max_pixels` (100 MP) are refused from the header, before any pixel is decoded.
"""

from __future__ import annotations

import io
import os
import struct
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from edge.errors import UserError
from edge.fileio import read_processor_settings

MAX_PIXELS = 100_000_000  # decompression-bomb guard: 100 MP is ~2.5× a 40 MP phone photo

# SiglipImageProcessor class attributes: what HF uses for a key the config leaves out.
_SIGLIP_DEFAULTS = dict(
    do_resize=True, size={"height": 224, "width": 224}, resample=3, do_rescale=True,
    rescale_factor=1 / 255, do_normalize=True, image_mean=(0.5, 0.5, 0.5), image_std=(0.5, 0.5, 0.5),
)


@dataclass(frozen=True)
class ImageProcessorConfig:
    """The image keys of `preprocessor_config.json` (HF names); defaults = the real Gemma 3n checkpoints."""

    do_resize: bool = True
    size: tuple[int, int] = (768, 768)  # (height, width); HF's {"height": .., "width": ..}
    resample: int = 2  # PIL filter id: 0 nearest, 1 lanczos, 2 bilinear, 3 bicubic, 4 box, 5 hamming
    do_rescale: bool = True
    rescale_factor: float = 1 / 255
    do_normalize: bool = False
    image_mean: tuple[float, float, float] = (0.5, 0.5, 0.5)
    image_std: tuple[float, float, float] = (0.5, 0.5, 0.5)

    @classmethod
    def from_hf(cls, cfg: dict) -> "ImageProcessorConfig":
        """From a `preprocessor_config.json` dict; audio keys are ignored, missing keys as in HF."""
        kw = {k: (cfg[k] if cfg.get(k) is not None else v) for k, v in _SIGLIP_DEFAULTS.items()}
        for k in ("do_center_crop", "do_pad", "do_pan_and_scan"):
            if cfg.get(k):
                raise UserError(f"preprocessor_config.json sets {k}=true, which Gemma 3n's processor never uses")
        size = kw["size"]
        if not isinstance(size, dict) or not {"height", "width"} <= set(size):
            raise UserError(f"preprocessor_config.json: size must be {{'height': H, 'width': W}}, got {size!r}")
        kw["size"] = (int(size["height"]), int(size["width"]))
        for k in ("image_mean", "image_std"):
            v = kw[k]
            kw[k] = tuple(float(x) for x in (v if isinstance(v, (list, tuple)) else [v] * 3))
        if int(kw["resample"]) not in range(6):
            raise UserError(f"preprocessor_config.json: resample {kw['resample']} is not a PIL filter id (0–5)")
        kw["resample"] = int(kw["resample"])
        return cls(**kw)

    @classmethod
    def from_checkpoint(cls, ckpt_dir: str | os.PathLike) -> "ImageProcessorConfig":
        """The checkpoint's settings (preprocessor_config.json, or processor_config.json's nested
        image_processor); the real checkpoints' values when it has neither."""
        raw = read_processor_settings(ckpt_dir)
        return cls() if raw is None else cls.from_hf(raw)


def open_image(path_or_bytes: str | os.PathLike | bytes, *, max_pixels: int = MAX_PIXELS) -> Image.Image:
    """Decode the first frame, upright (EXIF orientation applied). Refuses bombs before decoding."""
    is_bytes = isinstance(path_or_bytes, (bytes, bytearray))
    name = "<bytes>" if is_bytes else str(path_or_bytes)
    if not is_bytes and not Path(path_or_bytes).is_file():
        raise UserError(f"image file {name} does not exist (or is not a file): check the path")
    try:
        with warnings.catch_warnings():
            # Pillow warns above 89 MP and raises above 179 MP; our own limit is checked below.
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            image = Image.open(io.BytesIO(path_or_bytes) if is_bytes else path_or_bytes)  # header only
    except Image.DecompressionBombError as e:
        raise UserError(f"image {name} is too large to decode safely ({e}); downscale it first") from e
    except (UnidentifiedImageError, OSError, ValueError) as e:
        raise UserError(f"{name} is not a readable image ({e}); use JPEG, PNG, WebP, GIF or BMP") from e
    with image:  # closes the file; exif_transpose returns a new image either way
        width, height = image.size
        if width * height > max_pixels:
            raise UserError(
                f"image {name} is {width}×{height} = {width * height / 1e6:.0f} MP, over the "
                f"{max_pixels / 1e6:.0f} MP limit (a decompression bomb, or a needlessly huge image): downscale it"
            )
        try:
            image.seek(0)  # first frame of a GIF / animated WebP
            image.load()
            return ImageOps.exif_transpose(image)
        except (OSError, ValueError, SyntaxError, EOFError, struct.error) as e:
            raise UserError(f"image {name} is corrupt or truncated ({e}); re-export it") from e


def convert_to_rgb(image: Image.Image) -> np.ndarray:
    """HF `image_transforms.convert_to_rgb`: (H, W, 3) uint8, transparency composited over white."""
    if "A" in image.getbands() or image.info.get("transparency") is not None:
        rgba = image.convert("RGBA")
        image = Image.alpha_composite(Image.new("RGBA", rgba.size, (255, 255, 255, 255)), rgba)
    return np.asarray(image.convert("RGB"))


def preprocess(image: Image.Image, config: ImageProcessorConfig | None = None) -> np.ndarray:
    """A decoded PIL image → float32 NHWC (1, H, W, 3), the vision encoder's input."""
    cfg = config or ImageProcessorConfig()
    rgb = convert_to_rgb(image)  # (h, w, 3) uint8
    if cfg.do_resize and rgb.shape[:2] != cfg.size:
        height, width = cfg.size
        rgb = np.asarray(Image.fromarray(rgb).resize((width, height), resample=cfg.resample))
    x = rgb.astype(np.float32)  # (H, W, 3)
    if cfg.do_normalize:
        # torchvision backend fuses rescale into mean/std: (x − mean/r) / (std/r), all float32
        scale = np.float32(1.0 / cfg.rescale_factor) if cfg.do_rescale else np.float32(1.0)
        mean = np.asarray(cfg.image_mean, np.float32) * scale
        std = np.asarray(cfg.image_std, np.float32) * scale
        x = (x - mean) / std
    elif cfg.do_rescale:
        x = x * np.float32(cfg.rescale_factor)
    return x[None]  # (1, H, W, 3)


def load_image(
    path_or_bytes: str | os.PathLike | bytes, config: ImageProcessorConfig | None = None, *,
    max_pixels: int = MAX_PIXELS,
) -> np.ndarray:
    """Any common image file (or its bytes) → float32 NHWC (1, H, W, 3) at the encoder's resolution."""
    return preprocess(open_image(path_or_bytes, max_pixels=max_pixels), config)


# --- what LiteRT-LM does instead ------------------------------------------------------------
# The engine decodes and resizes images itself (support/preprocessor/stb_image_preprocessor.cc):
# stbi_load_from_memory(..., 3 channels), then always stbir_resize (stb_image_resize v1:
# uint8, sRGB colour space, Catmull-Rom both ways, clamped edges, no alpha channel) to the
# encoder's size, then x * (1/255.0f). No EXIF orientation, no alpha compositing, no
# normalisation. Both stb functions are exported by the engine's own library, so the simulator
# calls exactly that code: equal to HF's Pillow path only when no resize is needed.
_STBIR_TYPE_UINT8, _STBIR_EDGE_CLAMP, _STBIR_FILTER_CATMULLROM, _STBIR_COLORSPACE_SRGB = 0, 1, 4, 1


def _engine_library():
    import ctypes

    import litert_lm

    lib = ctypes.CDLL(str(Path(litert_lm.__file__).parent / "liblitert-lm.so"))
    lib.stbi_load_from_memory.restype = ctypes.c_void_p
    lib.stbi_load_from_memory.argtypes = [ctypes.c_char_p, ctypes.c_int] + [ctypes.POINTER(ctypes.c_int)] * 3 + [
        ctypes.c_int]
    lib.stbi_failure_reason.restype = ctypes.c_char_p
    lib.stbi_image_free.argtypes = [ctypes.c_void_p]
    lib.stbir_resize.argtypes = [ctypes.c_void_p, ctypes.c_int, ctypes.c_int, ctypes.c_int, ctypes.c_void_p,
                                 ctypes.c_int, ctypes.c_int, ctypes.c_int] + [ctypes.c_int] * 9 + [ctypes.c_void_p]
    return lib


def load_image_as_engine(path_or_bytes: str | os.PathLike | bytes, size: tuple[int, int], *,
                         max_pixels: int = MAX_PIXELS) -> np.ndarray:
    """What LiteRT-LM feeds its vision encoder for this image file: float32 NHWC (1, H, W, 3)."""
    import ctypes

    open_image(path_or_bytes, max_pixels=max_pixels)  # the same clear errors (missing, corrupt, too large)
    data = bytes(path_or_bytes) if isinstance(path_or_bytes, (bytes, bytearray)) else Path(path_or_bytes).read_bytes()
    lib = _engine_library()
    w, h, c = ctypes.c_int(), ctypes.c_int(), ctypes.c_int()
    ptr = lib.stbi_load_from_memory(data, len(data), ctypes.byref(w), ctypes.byref(h), ctypes.byref(c), 3)
    if not ptr:
        raise UserError(f"LiteRT-LM's decoder cannot read this image ({lib.stbi_failure_reason().decode()}): "
                        "convert it to PNG or baseline JPEG")
    try:
        src = np.ctypeslib.as_array((ctypes.c_uint8 * (w.value * h.value * 3)).from_address(ptr)).copy()
    finally:
        lib.stbi_image_free(ptr)
    height, width = size
    out = np.zeros(height * width * 3, np.uint8)
    if not lib.stbir_resize(src.ctypes.data, w.value, h.value, 0, out.ctypes.data, width, height, 0,
                            _STBIR_TYPE_UINT8, 3, -1, 0, _STBIR_EDGE_CLAMP, _STBIR_EDGE_CLAMP,
                            _STBIR_FILTER_CATMULLROM, _STBIR_FILTER_CATMULLROM, _STBIR_COLORSPACE_SRGB, None):
        raise UserError(f"LiteRT-LM's resize failed for a {w.value}x{h.value} image")
    return (out.reshape(1, height, width, 3).astype(np.float32) * np.float32(1.0 / 255.0))


__all__ = ["ImageProcessorConfig", "MAX_PIXELS", "convert_to_rgb", "load_image", "load_image_as_engine", "open_image",
           "preprocess"]
