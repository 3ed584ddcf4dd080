"""The prompts parity and eval compare on, and the checks each one's media drive: every tower
artifact fed the reference's own inputs."""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path
from typing import Sequence

import numpy as np

from edge.parity.compare import compare, merge

DEFAULT_PROMPTS = (
    "The for statement is used to iterate over the elements of a sequence.",
    "Explain what a dictionary is.",
)


@dataclass(frozen=True)
class Case:
    """One prompt compared across HF, the simulator and the engine."""

    name: str
    text: str
    images: tuple[str, ...] = ()
    audio: tuple[str, ...] = ()
    known: str = ""  # how the phone's preprocessing (mirrored by the simulator) differs from HF's


RESIZE_NOTE = ("the engine resizes images with its own filter (stb, sRGB-aware Catmull-Rom), which the "
               "simulator mirrors; HF uses Pillow bilinear: equal only at the encoder's size (docs/ENGINE.md)")


def default_cases(manifest, workdir: str | Path, prompts: Sequence[str] = DEFAULT_PROMPTS) -> list[Case]:
    """The text prompts, plus for each tower the media that exercise it: an image at the encoder's
    size and one it must resize; a 2.5 s and a 30 s clip (edge/samples.py, written to workdir)."""
    from edge import samples

    workdir = Path(workdir)
    cases = [Case(f"text {i + 1}", p) for i, p in enumerate(prompts)]
    kinds = {a.kind for a in manifest.artifacts.values()}
    if "vision_encoder" in kinds:
        (shape,) = [tuple(t.shape) for s in manifest.artifact("vision_encoder").signatures.values()
                    for t in s.inputs.values()]
        h, w = shape[1:3]
        exact = samples.picture(workdir / "picture_encoder_size.png", h, w)
        other = samples.picture(workdir / "picture_resized.png", h * 3 // 2 + 7, w + 29)
        cases += [Case("image (encoder size)", "What is in this picture?", images=(str(exact),)),
                  Case("image (resized)", "What is in this picture?", images=(str(other),), known=RESIZE_NOTE)]
    if "audio_encoder_hw" in kinds:
        for seconds in (2.5, 30.0):
            clip = samples.voice_clip(workdir / f"clip_{seconds:g}s.wav", seconds)
            cases.append(Case(f"audio {seconds:g} s", "What is said here?", audio=(str(clip),)))
    return cases


def tower_checks(pipeline, builder, ref, case: Case, checks: dict) -> tuple[list, list, float]:
    """Each tower artifact fed the reference's own inputs, against the reference's outputs (so an
    error is attributed to the artifact that makes it). Returns the case's (pixels, clips) for HF,
    and how far HF's pixels are from the ones the phone (and the simulator) use."""
    from edge.runtime.audio import AudioFeatureExtractor, load_audio
    from edge.runtime.image import ImageProcessorConfig, load_image, load_image_as_engine

    pixels, clips, gap = [], [], 0.0
    for path in case.images:
        tower = builder.tower("vision")
        size = tower.input_shape[1:3]
        px = load_image(path, replace(ImageProcessorConfig.from_checkpoint(builder.dir), size=size))
        gap = max(gap, float(np.abs(px - load_image_as_engine(path, size)).max()))
        pixels.append(px)
        features, rows = ref.vision(px)
        merge(checks, "vision_encoder", compare(features, tower.encode(px)))
        merge(checks, "vision_adapter", compare(rows, tower.adapt(features)))
    for path in case.audio:
        tower = builder.tower("audio")
        feats = AudioFeatureExtractor.from_checkpoint(builder.dir)(load_audio(path)).features
        clips.append(feats)
        want = ref.audio(feats)
        enc = tower.encode(feats)
        n, total = want.shape[1], enc["features"].shape[1]
        merge(checks, "audio_encoder", compare(want, enc["features"][:, :n]))
        hf_in = np.zeros_like(enc["features"])
        hf_in[:, :n] = want
        got = tower.adapt({"mask": np.ones((1, total), bool), "features": hf_in})
        merge(checks, "audio_adapter", compare(ref.audio_adapter(want, total), got))
    if case.audio:
        merge(checks, "end_of_audio", compare(ref.embeddings([pipeline.model.tokens.eoa]), _end_of_audio(builder)))
    return pixels, clips, gap


def _end_of_audio(builder) -> np.ndarray:
    from edge.runtime.litert_model import CompiledModelFile

    model = CompiledModelFile(builder.dir / builder.manifest.artifact("end_of_audio").file)
    try:
        (row,) = model.run_arrays(next(iter(model.signatures)), {}).values()
    finally:
        model.close()
    return row
