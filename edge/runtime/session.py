"""A model opened once: `Session.open(DIR or model.litertlm)` verifies the manifest, loads the
LiteRT models and tokenizer, and answers text, image and audio prompts (`prompt`, `prefill`,
`decode`, `generate`). A bundle runs from its own sections, extracted to a private temporary
directory (the phone's bytes are what runs), removed when the session closes.

Artifacts are found by LiteRT-LM kind, not by name: the decoder is the one
`prefill_decode` artifact, the lookups are the `embedder` and `per_layer_embedder` ones.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from edge.errors import UserError
from edge.format.manifest import ArtifactSpec, Manifest
from edge.format.manifest_verify import load_manifest
from edge.runtime.pipeline import GenerationConfig, GenerationResult, Pipeline
from edge.format.signatures import EMBEDDER, PER_LAYER_EMBEDDER, PREFILL_DECODE

TOKENIZER_FILE = "tokenizer.model"


def artifact_of_kind(manifest: Manifest, kind: str, *, required: bool = True) -> ArtifactSpec | None:
    found = [a for a in manifest.artifacts.values() if a.kind == kind]
    if len(found) > 1:
        raise UserError(f"manifest.json has {len(found)} artifacts of kind {kind}; the simulator expects one")
    if not found:
        if required:
            kinds = sorted({a.kind for a in manifest.artifacts.values()})
            raise UserError(
                f"manifest.json has no {kind} artifact (kinds present: {', '.join(kinds) or 'none'}); "
                f"rebuild the artifacts with the text modality"
            )
        return None
    return found[0]


def load_pipeline(
    artifact_dir: str | os.PathLike, *, verify: bool = True, num_threads: int = 0
) -> tuple[Pipeline, Manifest]:
    """The text pipeline and manifest of a session on `artifact_dir` (a directory or a bundle);
    for callers that drive the decoder themselves (benchmarks, parity's forced decoding)."""
    session = Session.open(artifact_dir, verify=verify, num_threads=num_threads)
    return session.pipeline, session.manifest


def _is_bundle(path: Path) -> bool:
    from edge.format.litertlm import is_litertlm

    return is_litertlm(path) or (path.is_file() and path.suffix == ".litertlm")


def _load_directory(d: Path, *, verify: bool, num_threads: int) -> tuple[Pipeline, Manifest]:
    """Verify and load an artifact directory for text generation."""
    from edge.runtime.embedding import LiteRtEmbeddingLookup
    from edge.runtime.litert_executor import LiteRtExecutor
    from edge.runtime.tokenizer import Tokenizer

    manifest = load_manifest(d, verify=verify)
    model = manifest.model
    dec = artifact_of_kind(manifest, PREFILL_DECODE)
    emb = artifact_of_kind(manifest, EMBEDDER)
    ple = artifact_of_kind(manifest, PER_LAYER_EMBEDDER, required=False)

    executor = LiteRtExecutor.from_file(d / dec.file, context_length=model.context_length, num_threads=num_threads)
    tokenizer = Tokenizer(d / TOKENIZER_FILE, model.tokens)
    if not tokenizer.sp_vocab_size <= executor.vocab_size <= model.vocab_size:
        raise UserError(f"{dec.file}: decode logits have {executor.vocab_size} entries; expected between the "
                        f"tokenizer's {tokenizer.sp_vocab_size} pieces and the model's vocab_size {model.vocab_size}")
    embedder = LiteRtEmbeddingLookup.from_file(d / emb.file, EMBEDDER, num_threads=num_threads)
    per_layer = None
    if executor.needs_per_layer_embeddings:
        if ple is None:
            raise UserError(f"{dec.file} takes per-layer embeddings but manifest.json has no per_layer_embedder artifact")
        # HF Gemma 3n: ids >= vocab_size_per_layer_input (image/audio tokens) read PLE row 0.
        per_layer = LiteRtEmbeddingLookup.from_file(
            d / ple.file, PER_LAYER_EMBEDDER, id_limit=model.vocab_size_per_layer_input, num_threads=num_threads
        )
    return Pipeline(executor, embedder, per_layer, tokenizer, model), manifest


def _extract_bundle(path: Path, *, verify: bool) -> Path:
    """The bundle's sections in a private temp directory (the caller removes it)."""
    import shutil
    import tempfile

    from edge.format.litertlm import extract, read_bundle
    from edge.outdir import clean_dead_pid_dirs

    prefix = "gemma3n-edge-bundle-"
    clean_dead_pid_dirs(Path(tempfile.gettempdir()), prefix)  # copies left by a killed run
    tmp = Path(tempfile.mkdtemp(prefix=f"{prefix}{os.getpid()}-"))
    try:
        extract(read_bundle(path), tmp, verify=verify)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return tmp


class Session:
    """One model, opened once: text, image and audio prompts through the simulator."""

    def __init__(self, pipeline: Pipeline, manifest: Manifest, directory: Path, num_threads: int = 0):
        self.pipeline, self.manifest, self.directory = pipeline, manifest, Path(directory)
        self._threads = num_threads
        self._media = None  # the encoders, loaded on the first image or audio

    @classmethod
    def open(cls, path: str | os.PathLike, *, verify: bool = True, num_threads: int = 0) -> Session:
        """A session on an artifact directory or a model.litertlm (run from its extracted sections)."""
        import shutil
        import weakref

        path = Path(path)
        if not _is_bundle(path):
            return cls(*_load_directory(path, verify=verify, num_threads=num_threads), path, num_threads)
        tmp = _extract_bundle(path, verify=verify)
        try:
            session = cls(*_load_directory(tmp, verify=verify, num_threads=num_threads), tmp, num_threads)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        # The copy goes when nothing uses the models any more (a caller may keep only the pipeline).
        weakref.finalize(session.pipeline, shutil.rmtree, tmp, True)
        return session

    @property
    def media(self):
        """The image and audio encoders and the prompt layout around them (multimodal.py)."""
        from edge.runtime.multimodal import MultimodalPromptBuilder

        if self._media is None:
            self._media = MultimodalPromptBuilder(self.pipeline, self.directory, self.manifest, self._threads)
        return self._media

    def prompt(self, text: str, *, images=(), audio=(), apply_template: bool = True, raw: bool = False):
        """The prompt's ids (bos included) and the soft-token rows of its images and audio:
        a MultimodalPrompt (`ids`, `soft`: position -> embedding row)."""
        from edge.runtime.multimodal import MultimodalPrompt

        if images or audio:
            return self.media.build(text, images=images, audio=audio, apply_template=apply_template, raw=raw)
        return MultimodalPrompt(self.pipeline.prompt_ids(text, apply_template, raw), {})

    def prefill(self, prompt) -> np.ndarray:
        """Run a prompt from an empty cache: every token but the last in the engine's prefill
        calls, the last through decode; its logits (the first answer token's scores)."""
        return self.pipeline.prefill(prompt.ids, prompt.soft)

    def decode(self, token: int, position: int) -> np.ndarray:
        """One token at `position` after a prefill: the next token's logits."""
        return self.pipeline.decode(token, position)

    def generate(self, text: str | None = None, *, images=(), audio=(), prompt=None,
                 config: GenerationConfig = GenerationConfig(), sampler=None, on_text=None) -> GenerationResult:
        """Answer a user turn of text, images and audio (or a `prompt` made earlier), streaming the
        text to `on_text`."""
        if prompt is None:
            prompt = self.prompt(text, images=images, audio=audio, apply_template=config.apply_template,
                                 raw=config.raw_prompt)
        return self.pipeline.generate(prompt_ids=prompt.ids, soft_embeddings=prompt.soft or None, config=config,
                                      sampler=sampler, on_text=on_text)

    def close(self) -> None:
        if self._media is not None:
            self._media.close()
        self.pipeline.close()

    def __enter__(self) -> Session:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
