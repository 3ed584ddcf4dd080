"""Make the demo's picture and spoken sentence (edge/data/): run once, commit the files.

    .venv/bin/python tools/make_demo_media.py      # needs espeak-ng (apt-get install espeak-ng)

picture.png: a house under a sun, drawn with Pillow's ImageDraw in flat colours (a few KB as PNG).
sentence.flac: espeak-ng (voice en-us, 150 words/min) saying SENTENCE, resampled to 16 kHz with
edge/runtime/audio.py's resampler (the rate the audio tower and LiteRT-LM's front end take, so neither
side resamples) and stored losslessly as 16-bit FLAC, which soundfile and the engine's miniaudio
decode to the same samples. tests/test_demo.py pins both files by sha256.
"""

from __future__ import annotations

import io
import subprocess
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
OUT = ROOT / "edge" / "data"
SENTENCE = "The cat sits on the roof."


def picture(path: Path) -> None:
    from PIL import Image, ImageDraw

    img = Image.new("RGB", (256, 192), (120, 180, 235))  # sky
    d = ImageDraw.Draw(img)
    d.rectangle((0, 140, 256, 192), fill=(70, 150, 60))  # grass
    d.ellipse((190, 18, 236, 64), fill=(250, 210, 40))  # sun
    d.rectangle((60, 90, 150, 150), fill=(200, 60, 50))  # walls
    d.polygon([(50, 92), (105, 45), (160, 92)], fill=(110, 60, 40))  # roof
    d.rectangle((95, 115, 118, 150), fill=(90, 50, 30))  # door
    d.rectangle((70, 100, 88, 116), fill=(240, 240, 200))  # window
    img.save(path, optimize=True)


def sentence(path: Path) -> None:
    import soundfile

    from edge.runtime.audio import resample

    wav = subprocess.run(["espeak-ng", "-v", "en-us", "-s", "150", "--stdout", SENTENCE], check=True,
                         capture_output=True).stdout
    samples, rate = soundfile.read(io.BytesIO(wav), dtype="float32")
    mono = samples if samples.ndim == 1 else samples.mean(axis=1)
    at16 = resample(mono, rate, 16_000)
    peak = float(np.abs(at16).max())
    soundfile.write(path, (at16 * (0.7 / peak)).astype(np.float32), 16_000, format="FLAC", subtype="PCM_16")


def main() -> int:
    OUT.mkdir(parents=True, exist_ok=True)
    picture(OUT / "picture.png")
    sentence(OUT / "sentence.flac")
    for f in ("picture.png", "sentence.flac"):
        print(f"{OUT / f}: {(OUT / f).stat().st_size} bytes")
    return 0


if __name__ == "__main__":
    sys.exit(main())
