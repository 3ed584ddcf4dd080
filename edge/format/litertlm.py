"""Read a `.litertlm` bundle without running it: header, sections, types, metadata, checks.

The container (LiteRT-LM format 1.x, written by litert-lm-builder): bytes 0-7 magic
`LITERTLM`, then major/minor/patch as little-endian uint32, at byte 24 the uint64 offset
where the header flatbuffer ends, from byte 32 the header flatbuffer (litert-lm-builder's
`litertlm_header_schema_py_generated`: system metadata key/values, and per section its
data type, [begin, end) byte range and key/value items such as `model_type`), then the
16 KiB-aligned section payloads.

`read_bundle` parses and range-checks the header; `check` looks inside every section
(sha256 items written by converters/bundle.py, TFLite models parse and carry the
signatures their model type needs, weights sections pair with a model of their type,
tokenizer and metadata protos parse, the sections an LLM needs are there) of a bundle
`is_ours`, `check_structure` only what holds for any exporter's bundle; `extract`
rebuilds an artifact directory from a bundle written by `gemma3n-edge build`, which is
how `simulate` runs the phone bundle itself. Torch-free: flatbuffers, protobuf and
sentencepiece only.
"""

from __future__ import annotations

import hashlib
import json
import mmap
import os
import struct
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

from edge.errors import UserError

MAGIC = b"LITERTLM"
SUPPORTED_MAJOR = 1
HEADER_BEGIN = 32
HEADER_END_FIELD = 24
TFLITE_IDENTIFIER = b"TFL3"
MODEL_TYPE_KEY = "model_type"
MODEL_TYPE_PREFIX = "tf_lite_"
SHA256_KEY = "sha256"  # our checksum item on every section we write
MANIFEST_SECTION_KEY = "gemma3n_edge"  # GenericBinaryData item naming our bundle manifest
BUNDLE_MANIFEST_NAME = "bundle_manifest.json"
EXTERNAL_GROUP = "tflite_weights"  # the only external group name a bundled model may use

# Section data types (litert-lm-builder's AnySectionDataType), by value.
SECTION_TYPES = {0: "NONE", 1: "GenericBinaryData", 2: "Deprecated", 3: "TFLiteModel", 4: "SP_Tokenizer",
                 5: "LlmMetadataProto", 6: "HF_Tokenizer_Zlib", 7: "TFLiteWeights", 8: "EmbeddingMetadataProto",
                 9: "ExecutorMetadataProto", 10: "TtsMetadataProto", 11: "AsrMetadataProto"}
# What the runtime looks up in each lookup model: its first signature must take one token.
_FIRST_SIGNATURE = {"embedder": "decode_embedder", "per_layer_embedder": "decode_per_layer_embedder"}


class LitertLmError(UserError):
    """A .litertlm file that cannot be read, or whose sections are corrupted or mistyped."""


def bundle_path_of(kind: str, file: str) -> str:
    """Where a bundled model (or its weights) lives in the directory `extract` rebuilds."""
    return f"{kind}/{file}"


@dataclass(frozen=True)
class Section:
    index: int
    data_type: str  # "TFLiteModel", "SP_Tokenizer", ...
    begin: int
    end: int
    items: dict[str, Any] = field(default_factory=dict)

    @property
    def size(self) -> int:
        return self.end - self.begin

    @property
    def model_type(self) -> str | None:
        """LiteRT-LM model type without the `tf_lite_` prefix: prefill_decode, embedder, ..."""
        v = self.items.get(MODEL_TYPE_KEY)
        if not isinstance(v, str):
            return None
        return v[len(MODEL_TYPE_PREFIX):] if v.startswith(MODEL_TYPE_PREFIX) else v

    @property
    def label(self) -> str:
        return f"section {self.index} ({self.data_type}{'/' + self.model_type if self.model_type else ''})"


@dataclass(frozen=True)
class Bundle:
    path: Path
    version: tuple[int, int, int]
    size: int
    header_end: int
    system_metadata: dict[str, Any]
    sections: tuple[Section, ...]

    def read(self, section: Section, limit: int | None = None) -> bytes:
        """The section's payload (its first `limit` bytes with a limit)."""
        with open(self.path, "rb") as f:
            f.seek(section.begin)
            return f.read(section.size if limit is None else min(limit, section.size))

    def chunks(self, section: Section, chunk: int = 8 << 20) -> Iterator[bytes]:
        with open(self.path, "rb") as f:
            f.seek(section.begin)
            left = section.size
            while left > 0:
                data = f.read(min(chunk, left))
                if not data:
                    raise LitertLmError(f"{self.path}: file ends inside {section.label}")
                left -= len(data)
                yield data

    def find(self, data_type: str, model_type: str | None = None) -> list[Section]:
        return [s for s in self.sections if s.data_type == data_type and (model_type is None or s.model_type == model_type)]


def is_litertlm(path: str | os.PathLike) -> bool:
    p = Path(path)
    if not p.is_file():
        return False
    with open(p, "rb") as f:
        return f.read(len(MAGIC)) == MAGIC


def _items(schema, n: int, get) -> dict[str, Any]:
    """Key/value items of a header table (accessor API: the object API of the generated
    schema cannot unpack its value union)."""
    names = {v: k for k, v in vars(schema.VData).items() if not k.startswith("_")}
    out = {}
    for i in range(n):
        kv = get(i)
        table, kind = kv.Value(), names.get(kv.ValueType())
        value = None
        if table is not None and kind and hasattr(schema, kind):
            obj = getattr(schema, kind)()
            obj.Init(table.Bytes, table.Pos)
            value = obj.Value()
        key = kv.Key().decode("utf-8", "replace") if kv.Key() is not None else ""
        out[key] = value.decode("utf-8", "replace") if isinstance(value, bytes) else value
    return out


def read_bundle(path: str | os.PathLike) -> Bundle:
    """Parse and range-check the header of a .litertlm file (section payloads are not read)."""
    from litert_lm_builder import litertlm_header_schema_py_generated as schema

    path = Path(path)
    if not path.is_file():
        raise LitertLmError(f"{path}: no such file")
    size = path.stat().st_size
    with open(path, "rb") as f:
        head = f.read(HEADER_BEGIN)
        if len(head) < HEADER_BEGIN or head[:8] != MAGIC:
            raise LitertLmError(f"{path}: not a .litertlm file (magic {head[:8]!r}, expected {MAGIC!r})")
        version = struct.unpack_from("<III", head, 8)
        (header_end,) = struct.unpack_from("<Q", head, HEADER_END_FIELD)
        if version[0] != SUPPORTED_MAJOR:
            raise LitertLmError(f"{path}: LiteRT-LM format {'.'.join(map(str, version))}; this reader knows "
                                f"{SUPPORTED_MAJOR}.x (update litert-lm-builder and gemma3n-edge)")
        if not HEADER_BEGIN < header_end <= size:
            raise LitertLmError(f"{path}: header end offset {header_end} is outside the file ({size} bytes): "
                                "the file is truncated or corrupted; rebuild it")
        f.seek(HEADER_BEGIN)
        data = f.read(header_end - HEADER_BEGIN)
    try:
        meta = schema.LiteRTLMMetaData.GetRootAs(data, 0)
        sm, sysm = meta.SectionMetadata(), meta.SystemMetadata()
        objects = [sm.Objects(i) for i in range(sm.ObjectsLength())] if sm else []
        parsed = [(o.DataType(), o.BeginOffset(), o.EndOffset(), _items(schema, o.ItemsLength(), o.Items))
                  for o in objects]
        system = _items(schema, sysm.EntriesLength(), sysm.Entries) if sysm else {}
    except Exception as e:  # flatbuffers raises struct/index/unicode errors on garbage
        raise LitertLmError(f"{path}: the header flatbuffer does not parse ({type(e).__name__}: {e}); "
                            "the file is corrupted; rebuild it") from None
    sections = []
    for i, (dtype, begin, end, items) in enumerate(parsed):
        s = Section(i, SECTION_TYPES.get(dtype, f"unknown({dtype})"), begin, end, items)
        if not header_end <= s.begin <= s.end <= size:
            raise LitertLmError(f"{path}: {s.label} spans bytes [{s.begin}, {s.end}) outside the payload area "
                                f"[{header_end}, {size}): truncated or corrupted; rebuild the bundle")
        sections.append(s)
    ordered = sorted(sections, key=lambda s: s.begin)
    for a, b in zip(ordered, ordered[1:]):
        if b.begin < a.end:
            raise LitertLmError(f"{path}: {a.label} and {b.label} overlap; the header is corrupted")
    return Bundle(path, tuple(version), size, header_end, system, tuple(sections))


# ----------------------------------------------------------------------------- section contents


def section_sha256(bundle: Bundle, section: Section) -> str:
    h = hashlib.sha256()
    for chunk in bundle.chunks(section):
        h.update(chunk)
    return h.hexdigest()


def llm_metadata(bundle: Bundle):
    """The parsed LlmMetadata proto, or None when the bundle has none."""
    from litert_lm_builder.runtime.proto import llm_metadata_pb2

    return _parse_section(bundle, "LlmMetadataProto", llm_metadata_pb2.LlmMetadata)


def executor_metadata(bundle: Bundle):
    from litert_lm_builder.runtime.proto import executor_metadata_pb2

    return _parse_section(bundle, "ExecutorMetadataProto", executor_metadata_pb2.ExecutorMetadata)


def _parse_section(bundle: Bundle, data_type: str, message_type):
    """The first `data_type` section parsed as `message_type`, or None when there is none."""
    from google.protobuf.message import DecodeError

    found = bundle.find(data_type)
    if not found:
        return None
    message = message_type()
    try:
        message.ParseFromString(bundle.read(found[0]))
    except DecodeError as e:
        raise LitertLmError(f"{bundle.path}: {found[0].label} is not an {message_type.__name__} proto ({e})") from None
    return message


def _manifest_sections(bundle: Bundle) -> list[Section]:
    return [s for s in bundle.find("GenericBinaryData") if s.items.get(MANIFEST_SECTION_KEY) == BUNDLE_MANIFEST_NAME]


def is_ours(bundle: Bundle) -> bool:
    """Whether gemma3n-edge wrote the bundle: only ours carry the bundle-manifest section
    (converters/bundle.py), so only ours are held to our contract (`check`); any other
    exporter's bundle is held to the format's (`check_structure`)."""
    return bool(_manifest_sections(bundle))


def bundle_manifest(bundle: Bundle):
    """The manifest gemma3n-edge stored in the bundle (None for bundles from other tools)."""
    from edge.format.manifest import Manifest

    found = _manifest_sections(bundle)
    if not found:
        return None
    try:
        return Manifest.from_dict(json.loads(bundle.read(found[0]).decode("utf-8")))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise LitertLmError(f"{bundle.path}: {found[0].label} holds no valid manifest ({e})") from None


def tflite_signatures(bundle: Bundle, section: Section) -> tuple[dict, dict[str, int]]:
    """(signatures, external group -> bytes needed) of a TFLiteModel section, read in place."""
    from ai_edge_litert import schema_py_generated as schema

    from edge.format.tflite import _dtype_names, _signatures  # the reader manifest checks use
    from edge.format.tflite_verify import verify_structure

    with open(bundle.path, "rb") as f, mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as mm:
        view = memoryview(mm)[section.begin:section.end]
        try:
            if bytes(view[4:8]) != TFLITE_IDENTIFIER:
                raise LitertLmError(f"{bundle.path}: {section.label} is not a TFLite model (identifier "
                                    f"{bytes(view[4:8])!r}, expected {TFLITE_IDENTIFIER!r})")
            try:  # the flatbuffer, before anything (here or the native runtime) follows its offsets
                verify_structure(view, name=f"{bundle.path}: {section.label}", fix="rebuild or re-copy the bundle")
            except UserError as e:
                raise LitertLmError(str(e)) from None
            try:
                model = schema.Model.GetRootAs(view, 0)
                sigs = _signatures(model, _dtype_names())
                needs: dict[str, int] = {}
                for i in range(model.ExternalBuffersLength()):
                    eb = model.ExternalBuffers(i)
                    name = model.ExternalBufferGroups(eb.Group()).Name().decode()
                    needs[name] = max(needs.get(name, 0), eb.Offset() + eb.Length())
            except LitertLmError:
                raise
            except Exception as e:
                raise LitertLmError(f"{bundle.path}: {section.label} does not parse as a TFLite model "
                                    f"({type(e).__name__}: {e})") from None
            finally:
                model = None
        finally:
            view.release()
    return sigs, needs


def _check_model(kind: str | None, sigs: dict) -> list[str]:
    """Signatures the runtime looks for in a model of this type."""
    names = list(sigs)
    if kind == "prefill_decode":
        problems = [] if "decode" in sigs else ["no 'decode' signature"]
        if not any(n.startswith("prefill_") and n[len("prefill_"):].isdigit() for n in names):
            problems.append("no prefill_<N> signature")
        if "decode" in sigs and "logits" not in sigs["decode"].outputs:
            problems.append("'decode' has no 'logits' output")
        return problems
    if kind in _FIRST_SIGNATURE:
        want = _FIRST_SIGNATURE[kind]
        if want not in sigs:
            return [f"no '{want}' signature (has {names}): not a {kind} model"]
        if names[0] != want:
            return [f"first signature is '{names[0]}'; the runtime runs the first one per token, so it must be '{want}'"]
        ins = sigs[want].inputs
        if list(ins) != ["token_ids"] or tuple(ins["token_ids"].shape) != (1, 1):
            return [f"'{want}' must take token_ids [1, 1] (has {[(n, list(t.shape)) for n, t in ins.items()]})"]
    return []


def _payload_problems(bundle: Bundle, s: Section) -> list[str]:
    """What is wrong with a section that is not a TFLite model, whoever wrote the bundle (the
    proto readers raise LitertLmError)."""
    import sentencepiece as spm

    if s.data_type == "TFLiteWeights":
        if bundle.read(s, 8)[4:8] == TFLITE_IDENTIFIER:
            return ["holds a TFLite model, not weights (wrong section type)"]
    elif s.data_type == "SP_Tokenizer":
        try:
            spm.SentencePieceProcessor(model_proto=bundle.read(s))
        except (RuntimeError, TypeError) as e:
            return [f"not a SentencePiece model ({str(e).splitlines()[0]})"]
    elif s.data_type == "LlmMetadataProto":
        llm_metadata(bundle)
    elif s.data_type == "ExecutorMetadataProto":
        executor_metadata(bundle)
    elif s.data_type == "HF_Tokenizer_Zlib":
        # The builder stores a .json tokenizer as its 8-byte little-endian size and a zlib stream,
        # a given .zlib file as it is (litert-torch's litertlm_bundle.py reads both the same way).
        data = bundle.read(s)
        for stream in (data[8:], data):
            try:
                zlib.decompress(stream)
                return []
            except zlib.error:
                pass
        return ["not a zlib-compressed Hugging Face tokenizer"]
    return []


def check_structure(bundle: Bundle) -> list[str]:
    """The problems a bundle has whoever wrote it: every TFLite model is a well-formed flatbuffer
    whose signatures read, weights are not models, tokenizers and metadata protos parse (the
    header's byte ranges were checked by `read_bundle`). None of our contract: no sha256 items,
    signature names or sections an LLM needs (litert-torch names its embedder's signature
    `embedder`, which LiteRT-LM loads and `check` refuses)."""
    problems: list[str] = []
    for s in bundle.sections:
        try:
            if s.data_type == "TFLiteModel":
                tflite_signatures(bundle, s)
            else:
                problems += [f"{s.label}: {p}" for p in _payload_problems(bundle, s)]
        except LitertLmError as e:
            problems.append(str(e).replace(f"{bundle.path}: ", ""))
    return problems


def check(bundle: Bundle, *, verify_hashes: bool = True) -> list[str]:
    """Every problem found in the bundle's sections (empty list: the bundle is sound)."""
    problems: list[str] = []
    models: dict[str, tuple[dict, dict[str, int]]] = {}
    for s in bundle.sections:
        where = s.label
        if verify_hashes and isinstance(s.items.get(SHA256_KEY), str):
            digest = section_sha256(bundle, s)
            if digest != s.items[SHA256_KEY]:
                problems.append(f"{where}: sha256 {digest[:16]}… differs from the one recorded at build time "
                                f"({s.items[SHA256_KEY][:16]}…): the section is corrupted; rebuild or re-copy the bundle")
                continue
        try:
            if s.data_type == "TFLiteModel":
                if s.model_type is None:
                    problems.append(f"{where}: no model_type item; the runtime cannot tell what the model is")
                    continue
                if s.model_type in models:
                    problems.append(f"{where}: a second {s.model_type} model")
                sigs, needs = tflite_signatures(bundle, s)
                models[s.model_type] = (sigs, needs)
                problems += [f"{where}: {p}" for p in _check_model(s.model_type, sigs)]
                odd = sorted(set(needs) - {EXTERNAL_GROUP})
                if odd:
                    problems.append(f"{where}: external weight groups {odd}; inside a bundle the group must be "
                                    f"'{EXTERNAL_GROUP}' (the runtime would look for files on disk)")
            elif s.data_type.startswith("unknown"):
                problems.append(f"{where}: unknown section type; written by a newer builder?")
            else:
                problems += [f"{where}: {p}" for p in _payload_problems(bundle, s)]
        except LitertLmError as e:
            problems.append(str(e).replace(f"{bundle.path}: ", ""))
    for s in bundle.find("TFLiteWeights"):
        model = models.get(s.model_type or "")
        if model is None:
            problems.append(f"{s.label}: no TFLiteModel section of model type {s.model_type} uses these weights")
        elif model[1].get(EXTERNAL_GROUP, 0) > s.size:
            problems.append(f"{s.label}: {s.size} bytes, the {s.model_type} model reads up to {model[1][EXTERNAL_GROUP]}")
    for kind, (sigs, needs) in models.items():
        if needs and not bundle.find("TFLiteWeights", kind):
            problems.append(f"{kind} model keeps weights outside the flatbuffer but the bundle has no TFLiteWeights "
                            f"section of that model type")
    problems += _check_llm(bundle, models)
    return problems


def _check_llm(bundle: Bundle, models: dict) -> list[str]:
    if "prefill_decode" not in models:
        return ["no TFLiteModel section of model type prefill_decode: not an LLM bundle"] if not models else []
    problems = []
    if not bundle.find("LlmMetadataProto"):
        problems.append("no LlmMetadataProto section (start/stop tokens, template, max tokens)")
    if not (bundle.find("SP_Tokenizer") or bundle.find("HF_Tokenizer_Zlib")):
        problems.append("no tokenizer section")
    decode = models["prefill_decode"][0].get("decode")
    dec_inputs = decode.inputs if decode else {}
    em = executor_metadata(bundle) if bundle.find("ExecutorMetadataProto") else None
    if em is not None and decode is not None:
        state = {n for n in decode.inputs if n in decode.outputs}
        listed = {name for sb in em.llm_executor_metadata.state_buffers
                  for name in (sb.prefill_input_name, sb.prefill_output_name, sb.decode_input_name,
                               sb.decode_output_name) if name}
        if listed - state:
            problems.append(f"ExecutorMetadata lists state buffers {sorted(listed - state)} the decoder does not have "
                            "(the runtime refuses to load)")
        if state - listed:
            problems.append(f"ExecutorMetadata omits the decoder's caches {sorted(state - listed)} (the runtime "
                            "fails every prefill: 'missing some output TensorBuffers')")
    for tensor, kind in (("embeddings", "embedder"), ("per_layer_embeddings", "per_layer_embedder")):
        if tensor in dec_inputs and kind not in models:
            problems.append(f"the decoder takes '{tensor}' but there is no {kind} TFLiteModel section")
    return problems


# ----------------------------------------------------------------------------- extraction


def extract(bundle: Bundle, directory: str | os.PathLike, *, verify: bool = True):
    """Write the artifact directory a gemma3n-edge bundle was made from (its bundle manifest's
    layout: one folder per model type, weights as `tflite_weights` beside their model)."""
    from edge.fileio import atomic_write
    from edge.format.manifest import write_manifest

    if verify:
        problems = check(bundle, verify_hashes=True)
        if problems:
            raise LitertLmError(f"{bundle.path} failed verification:\n  " + "\n  ".join(problems))
    manifest = bundle_manifest(bundle)
    if manifest is None:
        raise LitertLmError(f"{bundle.path}: no gemma3n-edge manifest section; only bundles written by "
                            "`gemma3n-edge build` can be simulated (inspect shows what this one holds)")
    directory = Path(directory)

    def copy(section: Section, name: str) -> None:
        def write(f) -> None:
            for chunk in bundle.chunks(section):
                f.write(chunk)

        atomic_write(directory / name, write)

    for a in manifest.artifacts.values():
        model = bundle.find("TFLiteModel", a.kind)
        if len(model) != 1:
            raise LitertLmError(f"{bundle.path}: {len(model)} TFLiteModel sections of model type {a.kind}; "
                                f"the bundle manifest lists one ({a.file})")
        copy(model[0], a.file)
        for w in a.external_weights:
            weights = bundle.find("TFLiteWeights", a.kind)
            if len(weights) != 1:
                raise LitertLmError(f"{bundle.path}: {len(weights)} TFLiteWeights sections of model type {a.kind}")
            copy(weights[0], w)
    tok = bundle.find("SP_Tokenizer")
    if len(tok) != 1:
        raise LitertLmError(f"{bundle.path}: {len(tok)} SP_Tokenizer sections; the simulator needs one")
    copy(tok[0], "tokenizer.model")
    for s in bundle.find("GenericBinaryData"):  # side files the bundle manifest lists (preprocessor_config.json)
        name = s.items.get(MANIFEST_SECTION_KEY)
        if name in manifest.files and name != BUNDLE_MANIFEST_NAME:
            copy(s, name)
    write_manifest(directory, manifest)
    return manifest
