"""model.litertlm: every artifact of an artifact directory in one LiteRT-LM bundle for the phone.

Written with litert-lm-builder's own `LitertLmFileBuilder` (format 1.7: magic, flatbuffer
header, 16 KiB-aligned sections). What the pinned runtime (litert-lm 0.18.1) requires of a
Gemma 3n bundle, checked against it (tests/test_bundle.py) and its sources:

- sections by LiteRT-LM model type: `prefill_decode` (decoder.tflite), `embedder`,
  `per_layer_embedder`, the vision/audio kinds. The lookups' tables, external `*.weights`
  files in the artifact directory, are appended to their bundled model (buffers "outside
  flatbuffers", 64-bit offsets, no 2 GB limit) rather than carried as `TFLiteWeights`
  sections: runtimes before 0.16 (AI Edge Gallery 1.0.18 ships 0.11.0) cannot create an engine
  from a bundle with TFLiteWeights ("embedding_lookup_text.cc:274"), and 0.18.1 loads both
  layouts at the same peak RSS and speed (measured: tools/check_runtimes.py, docs/ENGINE.md
  "Runtime versions").
- the runtime's CPU embedding lookup (`EmbeddingLookupText`) is given no signature key and
  runs the model's *first* signature once per token, requiring a 4-byte (one token) input:
  the bundled embedder copies list `decode_embedder` / `decode_per_layer_embedder` first.
  (Without it: "Input tensor bytes must be 4 but got 32".)
- prefill: the runtime prefills all prompt tokens but the last (it keeps that one pending
  and feeds it to `decode`), pads a short chunk with token 0 at input_pos 0 and a fully
  masked mask row, and fills float masks with 0 (attend) / -0.7*FLT_MAX (masked). Our
  decoder derives the sliding window from `input_pos` and combines masks with `where`, so
  it needs no `local_mask` input and never overflows.
- `LlmMetadata`: model type Gemma3N, start token bos, stop tokens eos and <end_of_turn>,
  the checkpoint's Jinja chat template plus the user/model prompt affixes, sampler defaults
  from generation_config.json (the runtime implements top-p only, so greedy is top-p with
  k = 1), max tokens = the context the decoder was lowered with.
- `ExecutorMetadata`: one state buffer per KV cache (K sequence axis 2, V axis 3, full
  context), as litert-torch writes them. The runtime checks every name against the decoder
  and fails a prefill whose caches the metadata does not all list ("The given map is
  missing some output TensorBuffers"), so the list is read from the decode signature.

Runtime behaviours no bundle field changes (pinned in tests/test_bundle.py): `run_text_scoring`
scores as if the second-to-last prompt token were absent (a second `run_prefill` of the last
prompt piece restores the true context); the detokenizer refuses ids at or above the
SentencePiece vocabulary (Gemma 3n's image/audio ids), so the decoder's logits cover the
tokenizer's ids only (converters/gemma3n/decoder.py `logit_rows`); a prefill whose padded chunk would run
past the cache is refused ("exceeds available state entries") where our simulator decodes
the tail token by token.

Two sections are ours and ignored by the runtime: every section carries a `sha256`
metadata item (the format has no checksum; `edge.format.litertlm` verifies them), and a
`GenericBinaryData` section holds the bundle manifest — the artifact directory's
manifest rewritten for the bundle's own bytes — so `gemma3n-edge simulate model.litertlm`
can rebuild the artifact directory from the sections alone.

Reproducible: the builder stamps every file with a random uuid and the wall clock; ours are
derived instead (`_system_metadata`), so the same inputs give the same bytes.
"""

from __future__ import annotations

import datetime
import hashlib
import json
import os
import tempfile
import uuid
from unittest import mock
from dataclasses import dataclass, replace
from pathlib import Path

from edge.errors import UserError
from edge.fileio import atomic_write, sha256_file
from edge.format.litertlm import BUNDLE_MANIFEST_NAME, MANIFEST_SECTION_KEY, SHA256_KEY, bundle_path_of
from edge.format.manifest import FileEntry, Manifest, read_manifest
from edge.format.signatures import EMBEDDER, PER_LAYER_EMBEDDER, PREFILL_DECODE

BUNDLE_NAME = "model.litertlm"
# The first signature of each lookup model must take one token (see module docstring).
_FIRST_SIGNATURE = {EMBEDDER: "decode_embedder", PER_LAYER_EMBEDDER: "decode_per_layer_embedder"}
_VISION_KINDS = ("vision_encoder", "vision_adapter", "end_of_vision")
_AUDIO_KINDS = ("audio_frontend", "audio_encoder_hw", "audio_adapter", "end_of_audio")


# The engine's activation precision, set per model section (it reads it for the text decoder and
# the two encoders; unset, its CPU backend runs the decoder with fp16 activations). Every recipe
# is validated against HF with fp32 activations (the simulator's), so that is what the bundle asks
# for; written as a plain metadata item (the builder's own argument prints to stdout).
ACTIVATION_KEY, ACTIVATION_TYPE = "prefer_activation_type", "fp32"
_ACTIVATION_KINDS = (PREFILL_DECODE, "vision_encoder", "audio_encoder_hw")


class BundleError(UserError):
    """The artifact directory cannot be bundled as it is."""


@dataclass(frozen=True)
class BundleReport:
    path: Path
    bytes: int
    sections: tuple[tuple[str, str | None, int], ...]  # (section type, model type, payload bytes)

    def summary(self) -> str:
        parts = ", ".join(f"{t}{'/' + m if m else ''} {n / 2**20:.2f} MiB" for t, m, n in self.sections)
        return f"{self.path.name}: {self.bytes / 2**20:.2f} MiB, {len(self.sections)} sections ({parts})"


# ----------------------------------------------------------------------------- model copies


def _rewrite_tflite(src: Path, dst: Path, kind: str, group: str | None) -> None:
    """Copy a .tflite self-contained (its external weights appended to it: see the module doc) and,
    for the lookups, with the one-token signature first (LiteRT-LM runs a lookup's first
    signature per token)."""
    from converters.lowering import external, flatbuf

    model = flatbuf.read_model(src)  # small: the lookups' tables are in their .weights files
    groups = [flatbuf.s(g.name) for g in model.externalBufferGroups or []]
    if groups != ([group] if group else []):
        raise BundleError(f"{src.name}: external weight groups {groups}, the manifest lists "
                          f"{[group] if group else []}; rebuild the artifact directory")
    first = _FIRST_SIGNATURE.get(kind)
    keys = [flatbuf.s(sd.signatureKey) for sd in model.signatureDefs or []]
    if first and first not in keys:
        raise BundleError(f"{src.name}: no '{first}' signature (has {keys}); LiteRT-LM's {kind} lookup needs it")

    def order(m) -> None:
        if first:
            m.signatureDefs.sort(key=lambda sd: flatbuf.s(sd.signatureKey) != first)

    external.inline(src, dst, order)


def litertlm_type(kind: str):
    """The builder's TfLiteModelType for an artifact kind (prefill_decode -> PREFILL_DECODE, ...)."""
    from litert_lm_builder.litertlm_builder import TfLiteModelType

    try:
        return TfLiteModelType("tf_lite_" + kind)
    except ValueError:
        known = ", ".join(t.value[len("tf_lite_"):] for t in TfLiteModelType)
        raise BundleError(f"artifact kind {kind!r} is not a LiteRT-LM model type ({known})") from None


# ----------------------------------------------------------------------------- metadata


def chat_template_jinja(checkpoint: str | os.PathLike | None) -> str | None:
    """The checkpoint's own Jinja chat template (chat_template.jinja or tokenizer_config.json)."""
    if checkpoint is None:
        return None
    ckpt = Path(checkpoint)
    if (ckpt / "chat_template.jinja").is_file():
        return (ckpt / "chat_template.jinja").read_text(encoding="utf-8")
    cfg = ckpt / "tokenizer_config.json"
    if cfg.is_file():
        template = json.loads(cfg.read_text(encoding="utf-8")).get("chat_template")
        if isinstance(template, str):
            return template
    return None


def _sampler_defaults(checkpoint: str | os.PathLike | None) -> tuple[int, float, float]:
    """(top_k, top_p, temperature) from generation_config.json; greedy when it does not sample."""
    gen = {}
    if checkpoint is not None and (Path(checkpoint) / "generation_config.json").is_file():
        gen = json.loads((Path(checkpoint) / "generation_config.json").read_text(encoding="utf-8"))
    if not gen.get("do_sample", False):
        return 1, 1.0, 1.0
    return int(gen.get("top_k") or 1), float(gen.get("top_p") or 1.0), float(gen.get("temperature") or 1.0)


_SPECIAL_TOKEN_STRINGS = {"boi_token": "<start_of_image>", "eoi_token": "<end_of_image>",
                          "boa_token": "<start_of_audio>", "eoa_token": "<end_of_audio>"}


def _special_token_strings(checkpoint: str | os.PathLike | None) -> dict[str, str]:
    """Gemma 3n's image/audio delimiter strings, from the checkpoint's special_tokens_map.json."""
    names = dict(_SPECIAL_TOKEN_STRINGS)
    path = Path(checkpoint) / "special_tokens_map.json" if checkpoint is not None else None
    if path is not None and path.is_file():
        found = json.loads(path.read_text(encoding="utf-8"))
        names.update({k: v for k, v in found.items() if k in names and isinstance(v, str)})
    return names


def _affixes(template: str) -> tuple[str, str, str]:
    """(user prefix, user suffix, model prefix) of a `{prompt}` chat template."""
    if template.count("{prompt}") != 1:
        raise BundleError(f"chat template {template!r} must contain {{prompt}} once")
    user, model = template.split("{prompt}")
    # Gemma: "<start_of_turn>user\n" {prompt} "<end_of_turn>\n" "<start_of_turn>model\n"
    cut = model.find("\n") + 1 if "\n" in model else len(model)
    return user, model[:cut], model[cut:]


# LiteRT-LM computes audio features itself. Its Gemma3N model type hard-codes USM-style features
# (x 32768, Hann(i + 0.5), 125-7500 Hz, built-in per-bin normalisation: gemma3_data_processor.cc),
# which are not what the checkpoint's Gemma3nAudioFeatureExtractor computes, so an audio bundle
# uses the generic model type, whose audio_* fields (runtime >= 0.14.0; docs/ENGINE.md) set
# the extractor's own settings. Text and vision bundles keep Gemma3N (any runtime, Gallery's 0.11 too).
GENERIC_AUDIO_MIN_RUNTIME = "0.14.0"
# The oldest runtime that loads our text/vision bundles and answers as 0.18.1 does (measured
# with tools/check_runtimes.py on 0.11.0 ... 0.18.1; 0.10 was not tried).
MIN_RUNTIME = "0.11.0"
_MEDIA_PIECE = "\n\n"  # what Gemma 3n's processor puts around each image/audio block


def check_image_frontend(cfg) -> None:
    """A BundleError when the checkpoint's image settings are not what LiteRT-LM applies: it feeds
    the encoder pixels x / 255 at the encoder's size, with no normalisation (docs/ENGINE.md)."""
    bad = []
    if cfg.do_normalize:
        bad.append("do_normalize=true (image_mean/image_std)")
    if not cfg.do_rescale or abs(cfg.rescale_factor - 1 / 255) > 1e-12:
        bad.append(f"rescale {cfg.rescale_factor if cfg.do_rescale else 'off'} (the engine always divides by 255)")
    if bad:
        raise BundleError(f"the image processor sets {', '.join(bad)}: LiteRT-LM cannot preprocess images that way, "
                          "so the phone's vision encoder would see other pixels than HF's; build with "
                          "--modalities text,audio, or fold the normalisation into the encoder")


def check_audio_frontend(fe) -> None:
    """A BundleError naming each extractor setting LiteRT-LM's audio front end cannot reproduce."""
    unsupported = {
        "per_bin_mean/per_bin_stddev": fe.per_bin_mean is not None or fe.per_bin_stddev is not None,
        "dither": fe.dither > 0.0,
        "preemphasis_htk_flavor=false": fe.preemphasis > 0.0 and not fe.preemphasis_htk_flavor,
        "padding_value": fe.padding_value != 0.0,
    }
    bad = [k for k, v in unsupported.items() if v]
    if bad:
        raise BundleError(f"the audio feature extractor sets {', '.join(bad)}: LiteRT-LM's audio front end "
                          "cannot compute those features, so the phone would feed the encoder other inputs than "
                          "HF does; build with --modalities text,vision, or keep the checkpoint's original settings")


def _generic_model(gm, names: dict[str, str], image_size: tuple[int, int] | None, fe) -> None:
    """GenericModel fields that make the runtime assemble Gemma 3n's prompt and compute the
    checkpoint's own audio features; a setting it cannot reproduce is a BundleError naming it."""
    import math
    import re

    from litert_lm_builder.runtime.proto import llm_model_type_pb2

    check_audio_frontend(fe)
    soft = {"image": "<image_soft_token>", "audio": "<audio_soft_token>"}
    gm.delimiter_regex = "(" + "|".join(re.escape(t) for t in soft.values()) + ")"
    if image_size is not None:
        gm.image_enabled = True
        gm.image_token_regex = re.escape(soft["image"])
        gm.image_tensor_height, gm.image_tensor_width = image_size
        gm.start_of_image_token.token_str, gm.end_of_image_token.token_str = names["boi_token"], names["eoi_token"]
        gm.image_prefix = gm.image_suffix = _MEDIA_PIECE
        gm.add_image_end = False  # the adapter's last row is <end_of_image> (vision.py)
    gm.audio_enabled = True
    gm.audio_token_regex = re.escape(soft["audio"])
    gm.start_of_audio_token.token_str, gm.end_of_audio_token.token_str = names["boa_token"], names["eoa_token"]
    gm.audio_prefix = gm.audio_suffix = _MEDIA_PIECE
    gm.add_audio_end = True  # the end_of_audio model's row
    gm.audio_sample_rate_hz = fe.sampling_rate
    gm.audio_num_channels = 1
    gm.audio_frame_length, gm.audio_hop_length, gm.audio_fft_length = fe.frame_length, fe.hop_length, fe.fft_length
    gm.audio_num_mel_bins = fe.feature_size
    gm.audio_input_scale = fe.input_scale_factor
    gm.audio_pre_emphasis_factor = fe.preemphasis
    gm.audio_mel_low_hz, gm.audio_mel_high_hz = fe.min_frequency, fe.max_frequency
    gm.audio_mel_floor = math.log(fe.mel_floor)  # the runtime clamps in the log domain: max(log x, floor)
    gm.audio_normalize_mel = False
    gm.audio_add_floor_to_mel_before_log = False
    gm.audio_semicausal_padding = False
    gm.audio_non_zero_hanning = False  # HF: periodic Hann, 0.5 - 0.5 cos(2 pi n / N)
    gm.audio_periodic_hanning = True
    gm.audio_fft_padding_type = llm_model_type_pb2.FFT_PADDING_TYPE_RIGHT  # HF: rfft(frame, n=fft_length)


def llm_metadata(manifest: Manifest, checkpoint: str | os.PathLike | None = None,
                 directory: str | os.PathLike | None = None):
    """The LlmMetadata proto for the bundle (see the module docstring for each field). The image
    size for a vision bundle comes from preprocessor_config.json (checkpoint, else directory)."""
    from litert_lm_builder.runtime.proto import llm_metadata_pb2, sampler_params_pb2

    m = manifest.model
    md = llm_metadata_pb2.LlmMetadata()
    md.start_token.token_ids.ids.append(m.tokens.bos)
    for stop in m.stop_tokens:
        md.stop_tokens.add().token_ids.ids.append(stop)
    user_prefix, user_suffix, model_prefix = _affixes(m.chat_template)
    md.prompt_templates.user.prefix, md.prompt_templates.user.suffix = user_prefix, user_suffix
    md.prompt_templates.model.prefix, md.prompt_templates.model.suffix = model_prefix, user_suffix
    carried = Path(directory) / "chat_template.jinja" if directory is not None else None  # converters/chat_template.py
    jinja = carried.read_text(encoding="utf-8") if carried and carried.is_file() else chat_template_jinja(checkpoint)
    if jinja:
        md.jinja_prompt_template = jinja
    k, p, t = _sampler_defaults(checkpoint)
    md.sampler_params.type = sampler_params_pb2.SamplerParameters.TOP_P  # the only one runtime 0.18.1 implements
    md.sampler_params.k, md.sampler_params.p, md.sampler_params.temperature = k, p, t
    md.sampler_params.seed = 0
    md.max_num_tokens = m.context_length
    kinds = {a.kind for a in manifest.artifacts.values()}
    # The runtime's prompt processors take these as strings ("token_str field is not set in
    # TokenUnion" otherwise), as litert-torch writes them.
    names = _special_token_strings(checkpoint)
    vision, audio = bool(kinds & set(_VISION_KINDS)), bool(kinds & set(_AUDIO_KINDS))
    source = checkpoint if checkpoint is not None else directory  # where the processor settings are
    size = None
    if vision:
        from edge.runtime.image import ImageProcessorConfig

        size = ImageProcessorConfig.from_checkpoint(source).size
    if audio:
        from edge.runtime.audio import AudioFeatureExtractor

        _generic_model(md.llm_model_type.generic_model, names, size, AudioFeatureExtractor.from_checkpoint(source))
        md.min_runtime_version = GENERIC_AUDIO_MIN_RUNTIME
    else:
        md.min_runtime_version = MIN_RUNTIME
        g = md.llm_model_type.gemma3n
        g.SetInParent()
        if vision:
            g.start_of_image_token.token_str, g.end_of_image_token.token_str = names["boi_token"], names["eoi_token"]
            g.image_tensor_height, g.image_tensor_width = size
    md.supports_thinking = False
    md.supports_function_calling = False
    return md


def executor_metadata(manifest: Manifest):
    """ExecutorMetadata: one state buffer per KV cache input of the decoder, full context long.

    Sliding-window layers keep full-length caches (the mask applies the window), so every
    cache is a GLOBAL one, as litert-torch writes them without a ring buffer.
    """
    from litert_lm_builder.runtime.proto import executor_metadata_pb2 as pb

    dec = _one(manifest, PREFILL_DECODE)
    # Every decode input that is also an output is state; interleaved k_0, v_0, k_1, ... as litert-torch lists them.
    dec_sig = dec.signatures["decode"]
    caches = sorted((n for n in dec_sig.inputs if n in dec_sig.outputs),
                    key=lambda n: (int(n.rsplit("_", 1)[1]) if n.rsplit("_", 1)[1].isdigit() else -1, n))
    em = pb.ExecutorMetadata()
    lm = em.llm_executor_metadata
    c = manifest.model.context_length
    for name in caches:
        key = name.startswith("kv_cache_k_")
        if not key and not name.startswith("kv_cache_v_"):
            raise BundleError(f"decoder state tensor {name!r} is not a kv_cache_k_i / kv_cache_v_i cache")
        sb = lm.state_buffers.add()
        sb.prefill_input_name = sb.prefill_output_name = sb.decode_input_name = sb.decode_output_name = name
        sb.type = pb.StateBuffer.TYPE_GLOBAL_KEY_CACHE if key else pb.StateBuffer.TYPE_GLOBAL_VALUE_CACHE
        sb.sequence_axis = 2 if key else 3  # K [1,Hkv,C,D], V [1,Hkv,D,C]
        sb.maximum_sequence_length = c
    lm.max_history_size = c
    return em


def _one(manifest: Manifest, kind: str):
    found = [a for a in manifest.artifacts.values() if a.kind == kind]
    if len(found) != 1:
        raise BundleError(f"manifest.json has {len(found)} {kind} artifacts; a bundle needs exactly one")
    return found[0]


# ----------------------------------------------------------------------------- bundle


def _side_files(manifest: Manifest) -> list[str]:
    """Other files of the directory the simulator reads (preprocessor_config.json): carried as
    GenericBinaryData sections named by the `gemma3n_edge` item, ignored by the runtime."""
    used = {"tokenizer.model", BUNDLE_NAME}
    for a in manifest.artifacts.values():
        used.update((a.file, *a.external_weights))
    return sorted(f for f in manifest.files if f not in used and "/" not in f)


def _bundle_manifest(manifest: Manifest, staged: dict[str, Path], tokenizer: Path) -> Manifest:
    """The manifest of the directory `edge.format.litertlm.extract` rebuilds from the bundle's sections
    (the lookups self-contained: their tables appended to the model)."""
    artifacts, files = {}, {f: manifest.files[f] for f in _side_files(manifest)}
    for name, a in manifest.artifacts.items():
        new_file = bundle_path_of(a.kind, a.file)
        artifacts[name] = replace(a, file=new_file, external_weights=())
        files[new_file] = FileEntry(staged[a.file].stat().st_size, sha256_file(staged[a.file]))
    files["tokenizer.model"] = FileEntry(tokenizer.stat().st_size, sha256_file(tokenizer))
    return replace(manifest, files=files, artifacts=artifacts)


def source_date() -> str:
    """The bundle's creation time: SOURCE_DATE_EPOCH (reproducible-builds.org) or the Unix epoch."""
    epoch = os.environ.get("SOURCE_DATE_EPOCH", "0")
    try:
        return datetime.datetime.fromtimestamp(int(epoch), datetime.timezone.utc).isoformat()
    except (ValueError, OverflowError, OSError):
        raise BundleError(f"SOURCE_DATE_EPOCH={epoch!r}: expected whole seconds since 1970 (e.g. "
                          "`git log -1 --format=%ct`)") from None


def _system_metadata(digests: list[str]):
    """litert-lm-builder's `populate_system_metadata`, made reproducible: the uuid is derived from
    the sha256 of every section, the creation time is `SOURCE_DATE_EPOCH` (the reproducible-builds
    convention) or, unset, the Unix epoch."""
    from litert_lm_builder import litertlm_builder as lb

    ident = uuid.uuid5(uuid.NAMESPACE_OID, hashlib.sha256("\n".join(digests).encode()).hexdigest())
    when = source_date()

    def populate(system: list) -> list:
        kept = [m for m in system if m.key not in ("uuid", "creation_timestamp")]
        return kept + [lb.Metadata("uuid", str(ident), lb.DType.STRING),
                       lb.Metadata("creation_timestamp", when, lb.DType.STRING)]

    return populate


def _add_models(builder, manifest: Manifest, directory: Path, tmp: Path, meta) -> dict[str, Path]:
    """One TFLiteModel section per artifact, the decoder first; a file with external weights (or
    whose signature must come first) is rewritten into `tmp` for the bundle. Returns {file: staged}."""
    staged: dict[str, Path] = {}
    for a in sorted(manifest.artifacts.values(), key=lambda a: a.kind != PREFILL_DECODE):
        model_type = litertlm_type(a.kind)
        if len(a.external_weights) > 1:
            raise BundleError(f"{a.file}: {len(a.external_weights)} external weight files; a bundle holds one "
                              f"TFLiteWeights section per model type")
        src = directory / a.file
        if a.external_weights or a.kind in _FIRST_SIGNATURE:
            staged[a.file] = tmp / f"{a.kind}.tflite"
            _rewrite_tflite(src, staged[a.file], a.kind, a.external_weights[0] if a.external_weights else None)
        else:
            staged[a.file] = src
        extra = {ACTIVATION_KEY: ACTIVATION_TYPE} if a.kind in _ACTIVATION_KINDS else {}
        builder.add_tflite_model(str(staged[a.file]), model_type, additional_metadata=meta(staged[a.file], **extra))
    return staged


def write_bundle(directory: str | os.PathLike, manifest: Manifest | None = None, *,
                 checkpoint: str | os.PathLike | None = None, out: str | os.PathLike | None = None) -> BundleReport:
    """Bundle the artifact directory `directory` (its manifest, or `manifest` while building) into
    `out` (default: directory/model.litertlm), written atomically. `checkpoint` supplies the
    Jinja chat template and sampler defaults (generation_config.json); without it the bundle
    has the `{prompt}` affixes only and greedy defaults."""
    from litert_lm_builder import litertlm_builder as lb

    directory = Path(directory)
    manifest = manifest or read_manifest(directory)
    out = Path(out) if out else directory / BUNDLE_NAME
    for kind in (PREFILL_DECODE, EMBEDDER):
        _one(manifest, kind)
    tokenizer = directory / "tokenizer.model"
    if not tokenizer.is_file():
        raise BundleError(f"{directory}: no tokenizer.model to bundle")

    digests: list[str] = []

    def meta(path: Path, **extra) -> list:
        digests.append(sha256_file(path))
        items = [lb.Metadata(SHA256_KEY, digests[-1], lb.DType.STRING)]
        items += [lb.Metadata(k, v, lb.DType.STRING) for k, v in extra.items()]
        return items

    with tempfile.TemporaryDirectory(prefix=".bundle-", dir=out.parent) as tmp:
        tmp = Path(tmp)
        builder = lb.LitertLmFileBuilder()
        llm = tmp / "llm_metadata.pb"
        llm.write_bytes(llm_metadata(manifest, checkpoint, directory).SerializeToString())
        builder.add_llm_metadata(str(llm), additional_metadata=meta(llm))
        ex = tmp / "executor_metadata.pb"
        ex.write_bytes(executor_metadata(manifest).SerializeToString())
        builder.add_executor_metadata(str(ex), additional_metadata=meta(ex))
        builder.add_sentencepiece_tokenizer(str(tokenizer), additional_metadata=meta(tokenizer))

        staged = _add_models(builder, manifest, directory, tmp, meta)
        for name in _side_files(manifest):
            builder.add_generic_binary_data(str(directory / name), additional_metadata=meta(
                directory / name, **{MANIFEST_SECTION_KEY: name}))
        bundled = tmp / BUNDLE_MANIFEST_NAME
        bundled.write_text(json.dumps(_bundle_manifest(manifest, staged, tokenizer).to_dict(), indent=1) + "\n")
        builder.add_generic_binary_data(str(bundled), additional_metadata=meta(bundled, **{
            MANIFEST_SECTION_KEY: BUNDLE_MANIFEST_NAME}))
        with mock.patch.object(lb, "populate_system_metadata", _system_metadata(digests)):
            atomic_write(out, lambda f: builder.build(f, validate_metadata=True))

    from edge.format.litertlm import read_bundle

    b = read_bundle(out)
    return BundleReport(out, out.stat().st_size, tuple((s.data_type, s.model_type, s.size) for s in b.sections))
