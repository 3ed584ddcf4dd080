"""edge.runtime.image: pixel values equal to transformers' SiglipImageProcessor (Gemma 3n's image processor)."""

from __future__ import annotations

import struct
import time
import zlib

import numpy as np
import pytest
from PIL import Image

from edge.errors import UserError
from edge.runtime.image import ImageProcessorConfig, load_image, open_image, preprocess

# Gemma 3n's preprocessor_config.json image keys (google/gemma-3n-E2B-it and E4B).
GEMMA3N = dict(do_convert_rgb=True, do_resize=True, size={"height": 768, "width": 768}, resample=2,
               do_rescale=True, rescale_factor=0.00392156862745098, do_normalize=False,
               image_mean=[0.5, 0.5, 0.5], image_std=[0.5, 0.5, 0.5])
# Pillow's backend differs from ours only by float rounding (it rescales in float64): one float32 ulp.
PIL_TOL = 1e-6
# The torchvision backend (HF's default when torchvision is installed) resizes uint8 with torch's
# antialiased kernel, whose int16 fixed-point weights round differently from Pillow's 22-bit ones:
# some values differ by exactly one level. Bound: one level in output units, plus float rounding.
ONE_LEVEL = 1 / 255


def _processors(**over):
    pytest.importorskip("transformers")
    from transformers.models.siglip.image_processing_pil_siglip import SiglipImageProcessorPil

    kw = {**GEMMA3N, **over}
    procs = {"pil": SiglipImageProcessorPil(**kw)}
    try:
        from transformers.models.siglip.image_processing_siglip import SiglipImageProcessor

        procs["torchvision"] = SiglipImageProcessor(**kw)
    except ImportError:  # no torchvision: only the Pillow backend exists
        pass
    return procs, ImageProcessorConfig.from_hf(kw)


def _hf(proc, image):
    return proc(image, return_tensors="np")["pixel_values"].transpose(0, 2, 3, 1)  # NCHW → NHWC


def _photo(h, w, seed=0):
    """Smooth content plus noise: like a photo, with edges the resize filter has to work on."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:h, 0:w]
    base = np.stack([np.sin(x / 17 + c) * np.cos(y / 23 - c) for c in range(3)], -1) * 100 + 128
    return np.clip(base + rng.normal(0, 20, (h, w, 3)), 0, 255).astype(np.uint8)


def _check(image, procs, cfg, label):
    got = preprocess(image, cfg)
    assert got.dtype == np.float32 and got.shape == (1, *cfg.size, 3), label
    unit = ONE_LEVEL * (1 / min(cfg.image_std) if cfg.do_normalize else 1)
    for backend, proc in procs.items():
        want = _hf(proc, image)
        assert want.shape == got.shape, (label, backend)
        diff = np.abs(got - want)
        print(f"{label} vs {backend}: max|Δ|={diff.max():.3g} ({diff.max() / unit:.2f} levels), "
              f"{(diff > 1e-6).mean():.2%} differ")
        tol = PIL_TOL if backend == "pil" else unit + 1e-5
        assert diff.max() <= tol, (label, backend, diff.max())


# ------------------------------------------------------------------ parity

@pytest.mark.parametrize("hw", [(480, 640), (1000, 300), (37, 2000), (768, 768), (1, 1), (2448, 3264)])
def test_rgb_sizes_and_aspects_equal_hf(hw):
    procs, cfg = _processors()
    _check(Image.fromarray(_photo(*hw)), procs, cfg, f"rgb {hw}")


@pytest.mark.parametrize("mode", ["L", "LA", "RGBA", "P", "P+transparency", "1", "CMYK", "I;16"])
def test_modes_equal_hf(mode):
    procs, cfg = _processors()
    rgb = Image.fromarray(_photo(300, 420, seed=1))
    if mode == "P+transparency":
        image = rgb.quantize(64)
        image.info["transparency"] = 5  # palette index 5 is transparent: composited over white
    elif mode == "P":
        image = rgb.quantize(64)
    elif mode in ("LA", "RGBA"):
        alpha = Image.fromarray(np.linspace(0, 255, 300 * 420).reshape(300, 420).astype(np.uint8))
        image = rgb.convert(mode[:-1])
        image.putalpha(alpha)
    elif mode == "I;16":
        image = Image.fromarray(np.asarray(rgb.convert("L"), np.uint16) * 3)  # 16-bit grayscale
    else:
        image = rgb.convert(mode)
    _check(image, procs, cfg, mode)


def test_transparency_is_composited_over_white():
    image = Image.new("RGBA", (64, 64), (10, 20, 30, 0))  # fully transparent dark pixels
    np.testing.assert_array_equal(preprocess(image), np.ones((1, 768, 768, 3), np.float32))


@pytest.mark.parametrize("over", [dict(do_normalize=True), dict(resample=3, size={"height": 512, "width": 384}),
                                  dict(do_normalize=True, image_mean=[0.48, 0.45, 0.4], image_std=[0.26, 0.26, 0.27])])
def test_other_settings_equal_hf(over):
    procs, cfg = _processors(**over)
    if cfg.resample == 3:  # torch's bicubic differs from Pillow's by several levels: not Gemma 3n's filter
        procs.pop("torchvision", None)
    _check(Image.fromarray(_photo(500, 333, seed=2)), procs, cfg, str(over))


@pytest.mark.parametrize("fmt", ["JPEG", "PNG", "WEBP", "BMP", "GIF"])
def test_file_formats_equal_hf(tmp_path, fmt):
    procs, cfg = _processors()
    path = tmp_path / f"img.{fmt.lower()}"
    Image.fromarray(_photo(321, 234, seed=3)).save(path, format=fmt)
    with Image.open(path) as image:
        want = _hf(procs["pil"], image)
    got = load_image(path, cfg)
    assert float(np.abs(got - want).max()) <= PIL_TOL
    np.testing.assert_array_equal(load_image(path.read_bytes(), cfg), got)  # bytes work too


def test_gif_uses_the_first_frame(tmp_path):
    frames = [Image.new("RGB", (40, 30), c) for c in ((255, 0, 0), (0, 0, 255))]
    frames[0].save(tmp_path / "anim.gif", save_all=True, append_images=frames[1:], duration=100)
    x = load_image(tmp_path / "anim.gif")
    np.testing.assert_allclose(x[0, 0, 0], (1, 0, 0), atol=1e-6)


def test_exif_orientation_is_applied(tmp_path):
    """Orientation 6 = stored rotated 90° CCW: the upright image is the stored one turned 90° CW.

    HF applies EXIF only when given a path (its `load_image`); parity tests elsewhere pass PIL
    images without an orientation tag, so that HF difference does not arise there.
    """
    procs, cfg = _processors()
    stored = Image.fromarray(_photo(300, 500, seed=4))  # 500 wide, 300 tall as stored
    exif = Image.Exif()
    exif[0x0112] = 6
    path = tmp_path / "rotated.jpg"
    stored.save(path, exif=exif.tobytes(), quality=92)
    upright = open_image(path)
    assert upright.size == (300, 500)  # now 300 wide, 500 tall
    with Image.open(path) as f:
        decoded = f.copy()
    np.testing.assert_array_equal(np.asarray(upright), np.asarray(decoded.transpose(Image.Transpose.ROTATE_270)))
    got = load_image(path, cfg)
    want = _hf(procs["pil"], str(path))  # HF's own path loading: exif_transpose + convert("RGB")
    assert float(np.abs(got - want).max()) <= PIL_TOL
    assert float(np.abs(got - preprocess(decoded, cfg)).max()) > 0.1  # orientation really changed the input


# ------------------------------------------------------------------ config

def test_config_from_checkpoint(tmp_path):
    assert ImageProcessorConfig.from_checkpoint(tmp_path) == ImageProcessorConfig()  # no file: real values
    (tmp_path / "preprocessor_config.json").write_text(__import__("json").dumps(
        {**GEMMA3N, "do_convert_rgb": None, "feature_size": 128, "image_processor_type": "SiglipImageProcessorFast"}))
    assert ImageProcessorConfig.from_checkpoint(tmp_path) == ImageProcessorConfig()
    # keys left out take SiglipImageProcessor's class defaults, as in HF
    assert ImageProcessorConfig.from_hf({}) == ImageProcessorConfig(size=(224, 224), resample=3, do_normalize=True)
    with pytest.raises(UserError, match="size"):
        ImageProcessorConfig.from_hf({"size": {"shortest_edge": 768}})
    with pytest.raises(UserError, match="do_center_crop"):
        ImageProcessorConfig.from_hf({"do_center_crop": True})


# ------------------------------------------------------------------ bad input

def test_not_an_image(tmp_path):
    (tmp_path / "notes.png").write_text("this is text, not a PNG\n")
    (tmp_path / "empty.jpg").write_bytes(b"")
    for name in ("notes.png", "empty.jpg"):
        with pytest.raises(UserError, match="not a readable image") as e:
            load_image(tmp_path / name)
        assert name in str(e.value)
    with pytest.raises(UserError, match="does not exist"):
        load_image(tmp_path / "missing.jpg")
    Image.fromarray(_photo(200, 200)).save(tmp_path / "full.jpg")
    (tmp_path / "cut.jpg").write_bytes((tmp_path / "full.jpg").read_bytes()[:2000])
    with pytest.raises(UserError, match="corrupt or truncated"):
        load_image(tmp_path / "cut.jpg")


def _png_header_only(width, height):
    """A PNG whose header claims width×height RGB and whose pixel data is garbage.

    Refusing it with the size message proves the size is checked before any decoding: decoding
    would fail with a different error (or exhaust memory).
    """
    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", b"garbage") + chunk(b"IEND", b"")


@pytest.mark.parametrize("wh", [(12_000, 10_000), (40_000, 40_000)])  # 120 MP (Pillow only warns), 1.6 GP
def test_decompression_bomb_refused_before_decoding(tmp_path, wh):
    path = tmp_path / "bomb.png"
    path.write_bytes(_png_header_only(*wh))
    start = time.perf_counter()
    with pytest.raises(UserError, match="too large|MP limit") as e:
        load_image(path)
    assert time.perf_counter() - start < 1.0
    assert "bomb.png" in str(e.value) and "downscale" in str(e.value)


def test_max_pixels_is_configurable(tmp_path):
    Image.fromarray(_photo(100, 100)).save(tmp_path / "small.png")
    with pytest.raises(UserError, match="MP limit"):
        load_image(tmp_path / "small.png", max_pixels=5_000)
    assert load_image(tmp_path / "small.png", max_pixels=10_000).shape == (1, 768, 768, 3)
