"""Image and audio prompts: encoders run on the artifacts, soft tokens spliced into the prompt.

Mirrors what transformers' Gemma3nProcessor + Gemma3nModel.forward do (processing_gemma3n.py,
modeling_gemma3n.py), so a simulated multimodal prompt is the reference's prompt:
- each image becomes "\\n\\n<boi>" + N x <image_soft> + "<eoi>\\n\\n" (N = soft tokens per image)
  and its N vision-adapter embeddings replace the placeholders' rows;
- each audio clip becomes "\\n\\n<boa>" + 188 x <audio_soft> + "<eoa>\\n\\n"; the encoder sees the
  clip's features zero-padded to its static window with a validity mask, the adapter emits
  188 rows (encoder outputs first, HF's padding embedding after), all replacing placeholders.
Media come first in the user turn, then the text, as a chat message [media..., text] renders.
Images are decoded and resized as LiteRT-LM does (edge.runtime.image.load_image_as_engine), which equals
HF's processor only at the encoder's size; `parity` measures the difference elsewhere.
Everything here is numpy + LiteRT: no torch.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np

from edge.errors import UserError
from edge.format.manifest import Manifest
from edge.runtime.litert_model import TOWER_XNNPACK_FLAGS, CompiledModelFile


@dataclass
class MultimodalPrompt:
    """Prompt ids plus the embedding rows that replace placeholder positions."""

    ids: list[int]
    soft: dict[int, np.ndarray] = field(default_factory=dict)  # absolute position -> (H,) row


def _single_signature(model: CompiledModelFile) -> str:
    return next(iter(model.signatures))


class VisionTower:
    """vision_encoder -> vision_adapter. The adapter's last row is the <end_of_image> embedding
    (LiteRT-LM emits no eoi token; see converters/gemma3n/vision.py); HF's layout keeps eoi as a
    token, whose embedder row is that same vector, so only the soft rows are spliced here."""

    def __init__(self, directory: Path, manifest: Manifest, num_threads: int = 0):
        self.soft_tokens = manifest.model.image_soft_tokens
        self.encoder = CompiledModelFile(directory / manifest.artifact("vision_encoder").file, num_threads=num_threads,
                                         xnnpack_flags=TOWER_XNNPACK_FLAGS)
        self.adapter = CompiledModelFile(directory / manifest.artifact("vision_adapter").file, num_threads=num_threads,
                                         xnnpack_flags=TOWER_XNNPACK_FLAGS)
        sig = _single_signature(self.encoder)
        (name, details), = self.encoder.input_details(sig).items()
        self.input_name, self.input_shape = name, tuple(details["shape"])

    def encode(self, pixels: np.ndarray) -> np.ndarray:
        """pixels [1,H,W,3] -> the encoder's features [1,S,C]."""
        if tuple(pixels.shape) != self.input_shape:
            raise UserError(f"image tensor {tuple(pixels.shape)} does not match the encoder input {self.input_shape}")
        (features,) = self.encoder.run_arrays(_single_signature(self.encoder), {self.input_name: pixels}).values()
        return features

    def adapt(self, features: np.ndarray) -> np.ndarray:
        """features [1,S,C] -> the adapter's rows [1,S+1,H] (the soft rows, then <end_of_image>)."""
        sig = _single_signature(self.adapter)
        (name, _), = self.adapter.input_details(sig).items()
        (rows,) = self.adapter.run_arrays(sig, {name: features}).values()
        return rows

    def embed(self, pixels: np.ndarray) -> np.ndarray:
        """pixels [1,H,W,3] -> (N, hidden) text-space embeddings of the soft tokens."""
        emb = self.adapt(self.encode(pixels))
        return emb.reshape(-1, emb.shape[-1])[: self.soft_tokens]

    def close(self) -> None:
        self.encoder.close()
        self.adapter.close()


class AudioTower:
    def __init__(self, directory: Path, manifest: Manifest, num_threads: int = 0):
        self.encoder = CompiledModelFile(directory / manifest.artifact("audio_encoder").file, num_threads=num_threads,
                                         xnnpack_flags=TOWER_XNNPACK_FLAGS)
        self.adapter = CompiledModelFile(directory / manifest.artifact("audio_adapter").file, num_threads=num_threads,
                                         xnnpack_flags=TOWER_XNNPACK_FLAGS)
        self.window = tuple(self.encoder.input_details(_single_signature(self.encoder))["src_inputs"]["shape"])

    def encode(self, features: np.ndarray) -> dict[str, np.ndarray]:
        """features [T,128] of one clip (all valid) -> the encoder's {"features", "mask"} over its window."""
        _, frames, bins = self.window
        if features.shape[0] > frames:
            raise UserError(f"the clip has {features.shape[0]} feature frames; the encoder window holds {frames} (30 s)")
        padded = np.zeros((1, frames, bins), np.float32)
        padded[0, : features.shape[0]] = features
        mask = np.zeros((1, frames), bool)
        mask[0, : features.shape[0]] = True
        return self.encoder.run_arrays(_single_signature(self.encoder), {"src_inputs": padded, "mask": mask})

    def adapt(self, encoded: dict[str, np.ndarray]) -> np.ndarray:
        """The encoder's outputs -> the adapter's rows [1,W,H] (HF's padding at the zeroed steps)."""
        out = self.adapter.run_arrays(_single_signature(self.adapter), {"mask": encoded["mask"],
                                                                          "features": encoded["features"]})
        return out["mm_embedding"]

    def embed(self, features: np.ndarray) -> np.ndarray:
        """features [T,128] (all valid) -> (soft tokens, hidden): encoder rows, then HF's padding rows."""
        emb = self.adapt(self.encode(features))
        return emb.reshape(-1, emb.shape[-1])

    def close(self) -> None:
        self.encoder.close()
        self.adapter.close()


class MultimodalPromptBuilder:
    """Builds [media..., text] user turns the way Gemma3nProcessor lays them out."""

    def __init__(self, pipeline, directory: str | os.PathLike, manifest: Manifest, num_threads: int = 0):
        self.pipeline, self.dir, self.manifest = pipeline, Path(directory), manifest
        self._threads = num_threads
        self._vision: VisionTower | None = None
        self._audio: AudioTower | None = None

    def tower(self, kind: str):
        names = {"vision": "vision_encoder", "audio": "audio_encoder"}
        if names[kind] not in self.manifest.artifacts:
            raise UserError(f"{self.dir} has no {kind} encoder: rebuild with --modalities text,{kind}")
        if kind == "vision":
            self._vision = self._vision or VisionTower(self.dir, self.manifest, self._threads)
            return self._vision
        self._audio = self._audio or AudioTower(self.dir, self.manifest, self._threads)
        return self._audio

    def _media_ids(self, begin: int, soft: int, n: int, end: int) -> list[int]:
        enc = self.pipeline.tokenizer.encode
        return enc("\n\n") + [begin] + [soft] * n + [end] + enc("\n\n")

    def build(self, text: str, images: Sequence[str | os.PathLike] = (), audio: Sequence[str | os.PathLike] = (),
              apply_template: bool = True, raw: bool = False) -> MultimodalPrompt:
        from edge.runtime.audio import AudioFeatureExtractor, load_audio
        from edge.runtime.image import load_image_as_engine

        tok, model = self.pipeline.tokenizer, self.pipeline.model
        t = model.tokens
        prefix, suffix = "", ""
        if apply_template:
            prefix, suffix = model.chat_template.split("{prompt}")
        ids = [t.bos] + (tok.encode(prefix) if prefix else [])
        soft: dict[int, np.ndarray] = {}
        for path in images:
            tower = self.tower("vision")
            # As the engine does it (edge.runtime.image.load_image_as_engine: its own decoder and resize,
            # to the encoder's static input size), so the simulator says what the phone will say.
            rows = tower.embed(load_image_as_engine(path, tower.input_shape[1:3]))
            ids += self._splice(ids, rows, soft, t.boi, t.image_soft, t.eoi)
        for path in audio:
            feats = AudioFeatureExtractor.from_checkpoint(self.dir)(load_audio(path)).features
            rows = self.tower("audio").embed(feats)
            ids += self._splice(ids, rows, soft, t.boa, t.audio_soft, t.eoa)
        ids += tok.encode(text + suffix, None if raw else (0, len(text)))  # the user's markers stay text
        return MultimodalPrompt(ids, soft)

    def _splice(self, ids: list[int], rows: np.ndarray, soft: dict, begin: int, placeholder: int, end: int) -> list[int]:
        media = self._media_ids(begin, placeholder, len(rows), end)
        first = len(ids) + media.index(placeholder)
        for k, row in enumerate(rows):
            soft[first + k] = row
        return media

    def close(self) -> None:
        for tower in (self._vision, self._audio):
            if tower is not None:
                tower.close()
