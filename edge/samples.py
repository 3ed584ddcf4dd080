"""Small, deterministic media for parity and the demo: a drawn picture and a synthetic voice-like clip.

Made from formulas (no random numbers), so the same call gives the same file on every machine.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np


def picture(path: str | os.PathLike, height: int, width: int) -> Path:
    """A PNG of a sunset-like scene: sky gradient, a disc, stripes of ground; any size."""
    from PIL import Image

    y, x = np.mgrid[0:height, 0:width].astype(np.float64)
    v, u = y / max(height - 1, 1), x / max(width - 1, 1)
    rgb = np.stack([0.9 - 0.4 * v, 0.5 + 0.3 * u * (1 - v), 0.3 + 0.6 * v], axis=-1)
    sun = (u - 0.65) ** 2 + ((v - 0.35) * height / width) ** 2 < 0.02
    rgb[sun] = (1.0, 0.85, 0.2)
    ground = v > 0.7
    rgb[ground] = np.stack([0.2 + 0.1 * np.sin(40 * u[ground]), 0.45 + 0.05 * np.sin(25 * v[ground]),
                            0.15 + 0 * u[ground]], axis=-1)
    Image.fromarray((np.clip(rgb, 0, 1) * 255).round().astype(np.uint8)).save(path)
    return Path(path)


def voice_clip(path: str | os.PathLike, seconds: float, sample_rate: int = 16_000) -> Path:
    """A 16 kHz WAV: a gliding harmonic tone with syllable-rate amplitude modulation."""
    import soundfile

    t = np.arange(int(round(seconds * sample_rate))) / sample_rate
    f0 = 140 + 60 * np.sin(2 * np.pi * 0.7 * t)
    phase = 2 * np.pi * np.cumsum(f0) / sample_rate
    wave = sum(np.sin(k * phase) / k for k in (1, 2, 3, 4))
    envelope = 0.5 + 0.5 * np.sin(2 * np.pi * 4 * t) ** 2
    soundfile.write(path, (0.2 * wave * envelope).astype(np.float32), sample_rate, subtype="FLOAT")
    return Path(path)
