"""manifest.json: the contract between the converter (writer) and the simulator/app (readers).

An artifact directory holds .tflite files, external weight files, `tokenizer.model` and
`manifest.json`, which records:

- `format` / `format_version`: readers refuse other formats and versions by name;
- `model`: the facts a runtime needs (Hugging Face field names: hidden_size, ...), the
  prefill lengths, special token ids, stop tokens and the chat template;
- `recipe` and `slice`: how the artifacts were made (free-form, for humans and reports);
- `files`: every file's byte count and sha256 — readers verify before use;
- `artifacts`: per artifact its file, LiteRT-LM kind, external weight files, signatures
  with input/output names, shapes and dtypes, and its parity tolerance.

`read_manifest(dir)` parses it and checks its structure; edge/format/manifest_verify.py's
`load_manifest(dir)` also verifies the files against it. Every problem gets a message
naming the file and the fix.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from edge.errors import UserError
from edge.fileio import atomic_write, sha256_file
from edge.format.signatures import KINDS_WITH_PREFILL, SignatureSpec, TensorSpec, expected_signature_names

FORMAT = "gemma3n-edge-artifacts"
FORMAT_VERSION = 1
MANIFEST_NAME = "manifest.json"


class ManifestError(UserError):
    """manifest.json is missing, malformed, from another version, or disagrees with the files."""


# ---------------------------------------------------------------- model


@dataclass(frozen=True)
class SpecialTokens:
    """Token ids the runtime treats specially (Gemma 3n values in comments)."""

    pad: int  # 0
    eos: int  # 1
    bos: int  # 2
    start_of_turn: int  # 105
    end_of_turn: int  # 106
    boi: int | None = None  # 255999: start of image
    eoi: int | None = None  # 262144: end of image (beyond the SentencePiece vocab)
    image_soft: int | None = None  # 262145: placeholder for one image soft token
    boa: int | None = None  # 256000: start of audio
    eoa: int | None = None  # 262272
    audio_soft: int | None = None  # 262273

    def items(self) -> dict[str, int]:
        return {k: v for k, v in self.__dict__.items() if v is not None}


@dataclass(frozen=True)
class ModelSummary:
    """What a runtime needs to know about the model, with Hugging Face config field names."""

    architecture: str  # "Gemma3nForConditionalGeneration"
    hidden_size: int  # H: width of `embeddings`
    num_hidden_layers: int  # L: layers of `per_layer_embeddings` (after slicing)
    hidden_size_per_layer_input: int  # P: width of one per-layer embedding
    vocab_size: int  # V: every id the embedder maps (text + vision + audio); the logits cover the text ids only
    vocab_size_per_layer_input: int  # ids at or above this use PLE row 0 (HF semantics)
    context_length: int  # C: KV cache length the decoder was lowered with
    sliding_window: int  # the decoder derives the sliding mask itself; recorded for reports
    final_logit_softcapping: float | None  # already applied inside the decode graph
    prefill_lengths: tuple[int, ...]  # one prefill_<N> signature each
    tokens: SpecialTokens
    stop_tokens: tuple[int, ...]  # generation stops on any of these
    chat_template: str  # contains "{prompt}"
    image_soft_tokens: int | None = None  # soft tokens per image (256)
    audio_soft_tokens_per_second: float | None = None  # 6.25
    extra: dict[str, Any] = field(default_factory=dict)  # other keys, kept for round trips


@dataclass(frozen=True)
class Tolerance:
    """Parity tolerance of one artifact and the reason for its size (text artifacts: edge/parity/tolerances.py,
    which parity applies by the format it reads from the file; these fields are for the reader)."""

    max_abs: float
    why: str
    row_relative: bool = False  # max_abs is relative to each reference row's max |value| (tables)
    min_cosine: float | None = None  # decoder logits, worst step
    min_top1: float | None = None  # decoder: share of steps whose argmax agrees with the reference
    max_kl_mean: float | None = None  # decoder: mean KL(reference || artifact), nats

    def to_dict(self) -> dict:
        d = {"max_abs": self.max_abs, "why": self.why}
        if self.row_relative:
            d["row_relative"] = True
        for k in ("min_cosine", "min_top1", "max_kl_mean"):
            if getattr(self, k) is not None:
                d[k] = getattr(self, k)
        return d


@dataclass(frozen=True)
class ArtifactSpec:
    """One lowered model file and its declared interface."""

    file: str
    kind: str  # LiteRT-LM model type: prefill_decode, embedder, per_layer_embedder, vision_encoder, ...
    signatures: dict[str, SignatureSpec]
    external_weights: tuple[str, ...] = ()
    tolerance: Tolerance | None = None
    extra: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class FileEntry:
    bytes: int
    sha256: str


@dataclass(frozen=True)
class Manifest:
    format: str
    format_version: int
    generator: str
    model: ModelSummary
    recipe: dict[str, Any]
    slice: dict[str, Any] | None
    files: dict[str, FileEntry]
    artifacts: dict[str, ArtifactSpec]
    extra: dict[str, Any] = field(default_factory=dict)

    def artifact(self, name: str) -> ArtifactSpec:
        if name not in self.artifacts:
            raise ManifestError(
                f"{MANIFEST_NAME} has no '{name}' artifact (it has: {', '.join(self.artifacts) or 'none'}); "
                f"rebuild the artifact directory with the part that provides it"
            )
        return self.artifacts[name]

    def to_dict(self) -> dict:
        m = self.model
        model = {
            "architecture": m.architecture,
            "hidden_size": m.hidden_size,
            "num_hidden_layers": m.num_hidden_layers,
            "hidden_size_per_layer_input": m.hidden_size_per_layer_input,
            "vocab_size": m.vocab_size,
            "vocab_size_per_layer_input": m.vocab_size_per_layer_input,
            "context_length": m.context_length,
            "sliding_window": m.sliding_window,
            "final_logit_softcapping": m.final_logit_softcapping,
            "prefill_lengths": list(m.prefill_lengths),
            "tokens": m.tokens.items(),
            "stop_tokens": list(m.stop_tokens),
            "chat_template": m.chat_template,
            "image_soft_tokens": m.image_soft_tokens,
            "audio_soft_tokens_per_second": m.audio_soft_tokens_per_second,
            **m.extra,
        }
        artifacts = {}
        for name, a in self.artifacts.items():
            artifacts[name] = {
                "file": a.file,
                "kind": a.kind,
                "external_weights": list(a.external_weights),
                "signatures": {k: s.to_dict() for k, s in a.signatures.items()},
                "tolerance": None if a.tolerance is None else a.tolerance.to_dict(),
                **a.extra,
            }
        return {
            "format": self.format,
            "format_version": self.format_version,
            "generator": self.generator,
            "model": model,
            "recipe": self.recipe,
            "slice": self.slice,
            "files": {k: {"bytes": f.bytes, "sha256": f.sha256} for k, f in self.files.items()},
            "artifacts": artifacts,
            **self.extra,
        }

    @classmethod
    def from_dict(cls, d: Any) -> "Manifest":
        return _parse_manifest(d)


# ---------------------------------------------------------------- parsing


def _get(d: dict, key: str, where: str, types, required: bool = True, default=None):
    if key not in d or (d[key] is None and not required):
        if required:
            raise ManifestError(f"{MANIFEST_NAME}: {where}{key} is missing (required); rebuild the artifacts")
        return default
    v = d[key]
    if isinstance(v, bool) and bool not in (types if isinstance(types, tuple) else (types,)):
        raise ManifestError(f"{MANIFEST_NAME}: {where}{key} must be {_tname(types)}, got {v!r}")
    if not isinstance(v, types):
        raise ManifestError(f"{MANIFEST_NAME}: {where}{key} must be {_tname(types)}, got {type(v).__name__} {v!r}")
    return v


def _tname(types) -> str:
    types = types if isinstance(types, tuple) else (types,)
    return " or ".join({int: "an integer", float: "a number", str: "a string", dict: "an object",
                        list: "a list", bool: "true/false"}.get(t, t.__name__) for t in types)


def _int_list(d: dict, key: str, where: str) -> tuple[int, ...]:
    v = _get(d, key, where, list)
    if not all(isinstance(x, int) and not isinstance(x, bool) for x in v):
        raise ManifestError(f"{MANIFEST_NAME}: {where}{key} must be a list of integers, got {v!r}")
    return tuple(v)


def _tensor(d: Any, where: str) -> TensorSpec:
    if not isinstance(d, dict):
        raise ManifestError(f"{MANIFEST_NAME}: {where} must be an object with shape and dtype")
    return TensorSpec(_int_list(d, "shape", where + "."), _get(d, "dtype", where + ".", str))


def _signature(d: Any, where: str) -> SignatureSpec:
    if not isinstance(d, dict):
        raise ManifestError(f"{MANIFEST_NAME}: {where} must be an object with inputs and outputs")
    ins = _get(d, "inputs", where + ".", dict)
    outs = _get(d, "outputs", where + ".", dict)
    return SignatureSpec(
        {k: _tensor(v, f"{where}.inputs.{k}") for k, v in ins.items()},
        {k: _tensor(v, f"{where}.outputs.{k}") for k, v in outs.items()},
    )


_TOKEN_FIELDS = ("pad", "eos", "bos", "start_of_turn", "end_of_turn")
_OPT_TOKEN_FIELDS = ("boi", "eoi", "image_soft", "boa", "eoa", "audio_soft")
_MODEL_KEYS = (
    "architecture", "hidden_size", "num_hidden_layers", "hidden_size_per_layer_input", "vocab_size",
    "vocab_size_per_layer_input", "context_length", "sliding_window", "final_logit_softcapping",
    "prefill_lengths", "tokens", "stop_tokens", "chat_template", "image_soft_tokens", "audio_soft_tokens_per_second",
)


def _model(d: dict) -> ModelSummary:
    w = "model."
    tok = _get(d, "tokens", w, dict)
    tokens = SpecialTokens(
        **{k: _get(tok, k, w + "tokens.", int) for k in _TOKEN_FIELDS},
        **{k: _get(tok, k, w + "tokens.", int, required=False) for k in _OPT_TOKEN_FIELDS},
    )
    template = _get(d, "chat_template", w, str)
    if "{prompt}" not in template:
        raise ManifestError(f"{MANIFEST_NAME}: model.chat_template must contain '{{prompt}}', got {template!r}")
    prefill = _int_list(d, "prefill_lengths", w)
    if not prefill or any(n <= 0 for n in prefill):
        raise ManifestError(f"{MANIFEST_NAME}: model.prefill_lengths must be positive lengths, got {list(prefill)}")
    m = ModelSummary(
        architecture=_get(d, "architecture", w, str),
        hidden_size=_get(d, "hidden_size", w, int),
        num_hidden_layers=_get(d, "num_hidden_layers", w, int),
        hidden_size_per_layer_input=_get(d, "hidden_size_per_layer_input", w, int),
        vocab_size=_get(d, "vocab_size", w, int),
        vocab_size_per_layer_input=_get(d, "vocab_size_per_layer_input", w, int),
        context_length=_get(d, "context_length", w, int),
        sliding_window=_get(d, "sliding_window", w, int),
        final_logit_softcapping=_get(d, "final_logit_softcapping", w, (int, float), required=False),
        prefill_lengths=prefill,
        tokens=tokens,
        stop_tokens=_int_list(d, "stop_tokens", w),
        chat_template=template,
        image_soft_tokens=_get(d, "image_soft_tokens", w, int, required=False),
        audio_soft_tokens_per_second=_get(d, "audio_soft_tokens_per_second", w, (int, float), required=False),
        extra={k: v for k, v in d.items() if k not in _MODEL_KEYS},
    )
    if max(prefill) > m.context_length:
        raise ManifestError(
            f"{MANIFEST_NAME}: prefill length {max(prefill)} exceeds context_length {m.context_length}"
        )
    return m


def _artifact(name: str, d: Any) -> ArtifactSpec:
    w = f"artifacts.{name}."
    if not isinstance(d, dict):
        raise ManifestError(f"{MANIFEST_NAME}: artifacts.{name} must be an object")
    tol = d.get("tolerance")
    if tol is not None:
        if not isinstance(tol, dict):
            raise ManifestError(f"{MANIFEST_NAME}: {w}tolerance must be an object with max_abs and why")
        t = w + "tolerance."
        tol = Tolerance(float(_get(tol, "max_abs", t, (int, float))), _get(tol, "why", t, str),
                        bool(_get(tol, "row_relative", t, bool, required=False, default=False)),
                        *(_get(tol, k, t, (int, float), required=False) for k in ("min_cosine", "min_top1",
                                                                                  "max_kl_mean")))
    ext = d.get("external_weights") or []
    if not isinstance(ext, list) or not all(isinstance(x, str) for x in ext):
        raise ManifestError(f"{MANIFEST_NAME}: {w}external_weights must be a list of file names")
    sigs = _get(d, "signatures", w, dict)
    known = ("file", "kind", "external_weights", "signatures", "tolerance")
    return ArtifactSpec(
        file=_get(d, "file", w, str),
        kind=_get(d, "kind", w, str),
        signatures={k: _signature(v, f"{w}signatures.{k}") for k, v in sigs.items()},
        external_weights=tuple(ext),
        tolerance=tol,
        extra={k: v for k, v in d.items() if k not in known},
    )


def _parse_manifest(d: Any) -> Manifest:
    if not isinstance(d, dict):
        raise ManifestError(f"{MANIFEST_NAME}: top level must be a JSON object")
    fmt = d.get("format")
    if fmt != FORMAT:
        raise ManifestError(
            f"{MANIFEST_NAME}: format is {fmt!r}, expected {FORMAT!r}: this is not a gemma3n-edge artifact manifest"
        )
    version = d.get("format_version")
    if version != FORMAT_VERSION:
        raise ManifestError(
            f"{MANIFEST_NAME} has format_version {version!r} (written by {d.get('generator', 'an unknown generator')}); "
            f"this tool reads format_version {FORMAT_VERSION}. Rebuild the artifacts with this gemma3n-edge, "
            f"or use the gemma3n-edge version that wrote them."
        )
    files = {}
    for k, v in _get(d, "files", "", dict).items():
        if not isinstance(v, dict):
            raise ManifestError(f"{MANIFEST_NAME}: files.{k} must be an object with bytes and sha256")
        files[k] = FileEntry(_get(v, "bytes", f"files.{k}.", int), _get(v, "sha256", f"files.{k}.", str))
    model = _model(_get(d, "model", "", dict))
    artifacts = {k: _artifact(k, v) for k, v in _get(d, "artifacts", "", dict).items()}
    known = ("format", "format_version", "generator", "model", "recipe", "slice", "files", "artifacts")
    slice_ = d.get("slice")
    if slice_ is not None and not isinstance(slice_, dict):
        raise ManifestError(f"{MANIFEST_NAME}: slice must be an object or null")
    manifest = Manifest(
        format=fmt,
        format_version=version,
        generator=_get(d, "generator", "", str),
        model=model,
        recipe=_get(d, "recipe", "", dict),
        slice=slice_,
        files=files,
        artifacts=artifacts,
        extra={k: v for k, v in d.items() if k not in known},
    )
    _check_consistency(manifest)
    return manifest


def _check_consistency(m: Manifest) -> None:
    problems = []
    for name, a in m.artifacts.items():
        for f in (a.file, *a.external_weights):
            if f not in m.files:
                problems.append(f"artifact {name}: file {f} is not listed under files (no size/hash to verify it with)")
        if a.kind in KINDS_WITH_PREFILL:
            missing = [s for s in expected_signature_names(a.kind, m.model.prefill_lengths) if s not in a.signatures]
            if missing:
                problems.append(
                    f"artifact {name} ({a.kind}): declares no {', '.join(missing)} for prefill_lengths "
                    f"{list(m.model.prefill_lengths)}"
                )
        if a.kind == "prefill_decode":  # the KV cache length is the mask's last dimension in every signature
            for sig_name, sig in a.signatures.items():
                mask = sig.inputs.get("mask")
                if mask is not None and mask.shape and mask.shape[-1] != m.model.context_length:
                    problems.append(f"artifact {name}: {sig_name} was lowered for a context of {mask.shape[-1]} "
                                    f"tokens, but model.context_length says {m.model.context_length}")
    for name in m.files:
        if Path(name).is_absolute() or ".." in Path(name).parts:
            problems.append(f"files.{name}: must be a plain name inside the artifact directory")
    if problems:
        raise ManifestError(f"{MANIFEST_NAME} is inconsistent:\n  " + "\n  ".join(problems))


# ---------------------------------------------------------------- writing


def file_entry(path: str | os.PathLike) -> FileEntry:
    """Size and sha256 of a file, for the writer's `files` table."""
    return FileEntry(os.path.getsize(path), sha256_file(path))


def write_manifest(directory: str | os.PathLike, manifest: Manifest) -> Path:
    """Write manifest.json atomically after checking that it parses back to the same thing."""
    d = manifest.to_dict()
    if _parse_manifest(json.loads(json.dumps(d))) != manifest:
        raise ValueError("manifest does not round-trip through JSON (a field holds a non-JSON value)")
    return atomic_write(Path(directory) / MANIFEST_NAME, json.dumps(d, indent=2) + "\n")


# ---------------------------------------------------------------- reading


def read_manifest(directory: str | os.PathLike) -> Manifest:
    """Parse and structurally check manifest.json (no file verification)."""
    path = Path(directory) / MANIFEST_NAME
    if not path.is_file():
        hint = " (it is a file; pass the artifact directory)" if Path(directory).is_file() else ""
        raise ManifestError(
            f"{directory}: no {MANIFEST_NAME}{hint}; pass an artifact directory made by `gemma3n-edge build`"
        )
    try:
        data = json.loads(path.read_bytes().decode("utf-8"))
    except UnicodeDecodeError as e:
        raise ManifestError(f"{path}: not UTF-8 text (byte {e.start}); it is not a manifest written by "
                            "gemma3n-edge — rebuild the artifacts") from None
    except json.JSONDecodeError as e:
        raise ManifestError(f"{path}: not valid JSON ({e}); rebuild the artifacts") from None
    except RecursionError:
        raise ManifestError(f"{path}: nested too deeply to be a manifest; rebuild the artifacts") from None
    try:
        return _parse_manifest(data)
    except RecursionError:
        raise ManifestError(f"{path}: nested too deeply to be a manifest; rebuild the artifacts") from None


def owned_files(directory: str | os.PathLike) -> set[str] | None:
    """The names in `directory` that gemma3n-edge wrote (manifest.json and the files it lists), or None
    when it holds no manifest of ours (edge/outdir.py replaces a directory only if it holds nothing else)."""
    try:
        manifest = read_manifest(directory)
    except ManifestError:
        return None
    names = set(manifest.files) | {MANIFEST_NAME}
    # XNNPACK weight caches the engine (or Gallery's runtime) writes beside a listed file: derived data.
    # Their names vary by runtime version: `<file>_<n>.xnnpack_cache`, or
    # `<file>.<section>.xnnpack_cache_<stamp>_<size>` (LiteRT-LM 0.1x with its cache beside the bundle).
    caches = {p.name for p in Path(directory).glob("*.xnnpack_cache*")
              if any(p.name.startswith(n + sep) for n in names for sep in "_.")}
    return names | caches
