"""Artifact directory -> a ready Pipeline (verified manifest, LiteRT models, tokenizer).

Artifacts are found by LiteRT-LM kind, not by name: the decoder is the one
`prefill_decode` artifact, the lookups are the `embedder` and `per_layer_embedder` ones.
"""

from __future__ import annotations

import os
from pathlib import Path

from edge.errors import UserError
from edge.manifest import ArtifactSpec, Manifest
from edge.manifest_verify import load_manifest
from edge.runtime.pipeline import Pipeline
from edge.signatures import EMBEDDER, PER_LAYER_EMBEDDER, PREFILL_DECODE

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
    """Verify and load an artifact directory (or a gemma3n-edge .litertlm bundle) for text generation."""
    from edge.litertlm import is_litertlm

    if is_litertlm(artifact_dir) or (Path(artifact_dir).is_file() and Path(artifact_dir).suffix == ".litertlm"):
        return _load_bundle(Path(artifact_dir), verify=verify, num_threads=num_threads)
    from edge.runtime.embedding import LiteRtEmbeddingLookup
    from edge.runtime.litert_executor import LiteRtExecutor
    from edge.runtime.tokenizer import Tokenizer

    d = Path(artifact_dir)
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
    pipeline = Pipeline(executor, embedder, per_layer, tokenizer, model)
    pipeline.artifact_dir = d  # where the encoders and preprocessor settings of multimodal prompts live
    return pipeline, manifest


def _load_bundle(path: Path, *, verify: bool, num_threads: int) -> tuple[Pipeline, Manifest]:
    """The bundle's sections extracted to a private temp directory (removed with the pipeline),
    then loaded like any artifact directory: the phone's bytes are what runs."""
    import shutil
    import tempfile
    import weakref

    from edge.litertlm import extract, read_bundle

    from edge.outdir import clean_dead_pid_dirs

    prefix = "gemma3n-edge-bundle-"
    clean_dead_pid_dirs(Path(tempfile.gettempdir()), prefix)  # copies left by a killed run
    tmp = tempfile.mkdtemp(prefix=f"{prefix}{os.getpid()}-")
    try:
        extract(read_bundle(path), tmp, verify=verify)
        pipeline, manifest = load_pipeline(tmp, verify=verify, num_threads=num_threads)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    weakref.finalize(pipeline, shutil.rmtree, tmp, True)
    return pipeline, manifest
