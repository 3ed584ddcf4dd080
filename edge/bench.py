"""What an artifact directory costs: sizes, bytes moved per decoded token, phone memory budgets.

Torch-free, reads files only (nothing is executed), so it answers "will this fit and how fast
can it possibly decode on that phone" before anything is installed.

- Sizes: every artifact with its external weight files, the tokenizer and the bundle, next to
  Google's published Gemma 3n bundles (ANCHORS.md).
- Decode traffic (the physics of one decode step): a decode step is a chain of matrix-vector
  products, so every weight the `decode` signature reads is read once per token; plus one row
  of the token embedding table and one row of the PLE table (lookups), plus the KV cache rows
  the step attends over, read from the graph: a cache whose every reader is a SLICE (our
  sliding-window layers read only the W rows in their window) costs its slices, any other
  cache all C rows whatever the position. The updated caches are written out too. Bytes read
  per token / memory bandwidth = the decode speed no implementation can beat on that memory.
- Device budget: what stays resident (the decoder's weights: every page is read every token,
  so memory-mapping does not save any of it; the KV caches, both ping-pong sets) versus what is
  memory-mapped and touched a row at a time (embedding and PLE tables: a row per token, so
  almost none of it is resident), against the phone's RAM; and the decode bound from the phone's
  memory bandwidth. Activations and the runtime's own allocations are not counted (they are in
  the simulator's measured peak RSS, tools/bench.py).

Bandwidth of this machine: `measure_bandwidth` (numpy copies, best of N; counts read + write).
"""

from __future__ import annotations

import math
import mmap
import os
import threading
import time
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path

from edge.errors import UserError, lookup

GIB = 1 << 30

# Google's published Gemma 3n LiteRT-LM bundles (ANCHORS.md): int4, text + vision + audio, context 4096.
GOOGLE_BUNDLES = {
    "E2B": {"file": "gemma-3n-E2B-it-int4.litertlm", "bytes": 3_388_604_416, "later_bytes": 3_655_827_456},
    "E4B": {"file": "gemma-3n-E4B-it-int4.litertlm", "bytes": 4_652_318_720, "later_bytes": 4_919_541_760},
}
# ANCHORS.md: Google's measured CPU speeds (1024 prefill / 256 decode tokens, XNNPACK, 4 threads).
GOOGLE_SPEEDS = {
    ("E2B", "s24"): {"prefill_tok_s": 110.5, "decode_tok_s": 16.1},
    ("E4B", "s24"): {"prefill_tok_s": 73.5, "decode_tok_s": 9.2},
}

_DTYPE_BYTES = {"float32": 4.0, "int32": 4.0, "float16": 2.0, "bfloat16": 2.0, "int16": 2.0, "int8": 1.0,
                "uint8": 1.0, "bool": 1.0, "int4": 0.5, "int64": 8.0, "float64": 8.0}


class BenchError(UserError):
    """The artifact directory lacks what the estimate needs, or the device is unknown."""


# ----------------------------------------------------------------------------- devices


@dataclass(frozen=True)
class DeviceProfile:
    """The numbers a decode bound and a memory budget need, with where they come from."""

    name: str
    label: str
    ram_bytes: int
    bandwidth_bytes_per_s: float  # theoretical peak of the DRAM interface
    memory: str  # what the bandwidth is computed from
    sources: tuple[str, ...]
    caveat: str


DEVICES: dict[str, DeviceProfile] = {
    "pixel8": DeviceProfile(
        name="pixel8", label="Google Pixel 8 (Tensor G3)", ram_bytes=8 * 10**9,
        # 8533 MT/s x 64-bit bus (4 x 16-bit LPDDR5X channels) / 8 bits = 68.3 GB/s.
        bandwidth_bytes_per_s=8533e6 * 8,
        memory="8 GB LPDDR5X; data rate assumed 8533 MT/s on a 64-bit bus (LPDDR5X's common flagship "
               "speed; Google does not publish Tensor G3's)",
        sources=("Made by Google 2023 spec table: Pixel 8 8GB LPDDR5X RAM "
                 "(https://indiashorts.com/google-pixel-8-vs-google-pixel-8-pro-check-out-specifications/147281)",),
        caveat="the data rate is an assumption; at LPDDR5-6400 the peak would be 51.2 GB/s and every bound 25% lower",
    ),
    "s24": DeviceProfile(
        name="s24", label="Samsung Galaxy S24 Ultra (Snapdragon 8 Gen 3 for Galaxy)", ram_bytes=12 * 10**9,
        # 4800 MHz LPDDR5X = 9600 MT/s x 64-bit bus / 8 = 76.8 GB/s.
        bandwidth_bytes_per_s=9600e6 * 8,
        memory="12 GB LPDDR5X; Snapdragon 8 Gen 3 supports LPDDR5X up to 4800 MHz (9600 MT/s) on a 64-bit bus",
        sources=("Qualcomm Snapdragon 8 Gen 3 launch: LPDDR5X up to 4800 MHz "
                 "(https://droidholic.com/snapdragon-8-gen-3-launched/)",
                 "Galaxy S24 Ultra: 12 GB RAM"),
        caveat="peak of the interface; CPU cores reach a fraction of it (Google's own E2B CPU decode on this "
               "phone, 16.1 tok/s, is listed for comparison)",
    ),
}


def device(name: str) -> DeviceProfile:
    return lookup(DEVICES, name, "device", BenchError)


# ----------------------------------------------------------------------------- .tflite weights per signature


@dataclass(frozen=True)
class WeightTensor:
    name: str
    shape: tuple[int, ...]
    dtype: str
    nbytes: int
    external: bool


@contextmanager
def _signature_subgraph(path: str | os.PathLike, signature: str, span: tuple[int, int] | None = None):
    """(schema, model, signature def, subgraph) of `signature`, read from an mmap of the file.
    `span`: the model's [begin, end) bytes inside a larger file (a .litertlm section)."""
    from ai_edge_litert import schema_py_generated as schema

    with open(path, "rb") as f, mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as mm:
        view = memoryview(mm)[slice(*span) if span else slice(None)]
        try:
            model = schema.Model.GetRootAs(view, 0)
            defs = [model.SignatureDefs(i) for i in range(model.SignatureDefsLength())]
            keys = [sd.SignatureKey().decode() for sd in defs]
            if signature not in keys:
                raise BenchError(f"{Path(path).name}: no signature {signature!r} (has: {', '.join(keys)})")
            sd = defs[keys.index(signature)]
            yield schema, model, sd, model.Subgraphs(sd.SubgraphIndex())
        finally:
            model = sd = defs = None  # flatbuffer objects hold the view: drop them before releasing it
            view.release()


def signature_weights(path: str | os.PathLike, signature: str, span: tuple[int, int] | None = None,
                      ) -> list[WeightTensor]:
    """The constant tensors (weights and their scales) the subgraph of `signature` holds, each once.
    `span`: the model's [begin, end) bytes inside a larger file (a .litertlm section)."""
    with _signature_subgraph(path, signature, span) as (schema, model, _, sub):
        dtypes = {v: k.lower() for k, v in vars(schema.TensorType).items() if not k.startswith("_")}
        ext_len = {model.ExternalBuffers(i).Id(): model.ExternalBuffers(i).Length()
                   for i in range(model.ExternalBuffersLength())}
        out, seen = [], set()
        for j in range(sub.TensorsLength()):
            t = sub.Tensors(j)
            ext, buf = t.ExternalBuffer(), t.Buffer()
            if ext:
                key, nbytes = ("ext", ext), ext_len.get(ext, 0)
            elif buf > 0:
                b = model.Buffers(buf)
                key, nbytes = ("buf", buf), (b.DataLength() or (b.Size() if b.Offset() > 1 else 0))
            else:
                continue
            if nbytes == 0 or key in seen:
                continue
            seen.add(key)
            shape = tuple(int(t.Shape(k)) for k in range(t.ShapeLength()))
            out.append(WeightTensor(t.Name().decode(), shape, dtypes.get(t.Type(), str(t.Type())), int(nbytes),
                                    bool(ext)))
    return out


def cache_read_bytes(path: str | os.PathLike, signature: str, caches: list[str],
                     span: tuple[int, int] | None = None) -> dict[str, int]:
    """Bytes of each cache input that `signature` reads. A cache flows through the
    DYNAMIC_UPDATE_SLICE ops that write it (they touch only the update); if every other op that
    reads it is a SLICE, the step reads those slices (a sliding window); otherwise the whole cache."""
    with _signature_subgraph(path, signature, span) as (schema, model, sd, sub):
        ops = {v: k for k, v in vars(schema.BuiltinOperator).items() if not k.startswith("_")}
        dtypes = {v: k.lower() for k, v in vars(schema.TensorType).items() if not k.startswith("_")}
        inputs = {sd.Inputs(i).Name().decode(): sd.Inputs(i).TensorIndex() for i in range(sd.InputsLength())}
        code = [max(model.OperatorCodes(i).BuiltinCode(), model.OperatorCodes(i).DeprecatedBuiltinCode())
                for i in range(model.OperatorCodesLength())]
        readers: dict[int, list] = {}  # tensor -> [(op name, op)] that read it
        for i in range(sub.OperatorsLength()):
            op = sub.Operators(i)
            for t in op.InputsAsNumpy():
                readers.setdefault(int(t), []).append((ops.get(code[op.OpcodeIndex()]), op))

        def nbytes(t: int) -> int:
            tensor = sub.Tensors(t)
            n = math.prod(int(d) for d in tensor.ShapeAsNumpy()) if tensor.ShapeLength() else 1
            return int(n * _DTYPE_BYTES.get(dtypes.get(tensor.Type()), 4.0))

        out = {}
        for name in caches:
            todo, slices, whole = [inputs[name]], set(), False
            while todo and not whole:
                value = todo.pop()
                for kind, op in readers.get(value, []):
                    if kind == "DYNAMIC_UPDATE_SLICE" and op.Inputs(0) == value:
                        todo.append(int(op.Outputs(0)))  # the updated cache: the write touches only the update
                    elif kind == "SLICE" and op.Inputs(0) == value:
                        slices.add(int(op.Outputs(0)))
                    else:
                        whole = True
            out[name] = nbytes(inputs[name]) if whole or not slices else sum(nbytes(t) for t in slices)
    return out


def _tensor_bytes(spec) -> float:
    n = 1
    for d in spec.shape:
        n *= int(d)
    return n * _DTYPE_BYTES.get(spec.dtype, 4.0)


# ----------------------------------------------------------------------------- decode traffic


@dataclass(frozen=True)
class DecodeTraffic:
    """Bytes one decode step moves, from the artifacts."""

    decoder_weight_bytes: int  # every constant the decode signature holds (lm_head included; + tiny graph constants)
    embedding_row_bytes: float  # one row of the token embedding table (+ its scales)
    ple_row_bytes: float  # one row of the PLE table (+ its scales)
    kv_read_bytes: int  # the cache bytes decode reads: all of a cache, or only its SLICE windows
    kv_write_bytes: int  # the updated caches decode writes out
    context: int

    @property
    def read_bytes(self) -> float:
        """Bytes read per decoded token: the number the decode bound divides the bandwidth by."""
        return self.decoder_weight_bytes + self.embedding_row_bytes + self.ple_row_bytes + self.kv_read_bytes

    def bound_tok_s(self, bandwidth_bytes_per_s: float) -> float:
        return bandwidth_bytes_per_s / self.read_bytes

    def to_dict(self) -> dict:
        return {**asdict(self), "read_bytes": self.read_bytes}


@dataclass(frozen=True)
class _Model:
    """One component as bench reads it: an artifact of a directory, or a bundle's model sections."""

    name: str
    kind: str  # LiteRT-LM model type
    files: dict[str, int]  # file (or section label) -> bytes, its external weights included
    path: Path  # the file holding the .tflite flatbuffer
    span: tuple[int, int] | None  # its bytes inside `path` (a bundle section), None for the whole file
    signatures: dict  # key -> SignatureInfo


@dataclass(frozen=True)
class _Layout:
    models: tuple[_Model, ...]
    other_files: dict[str, int]
    bundle_bytes: int | None
    context: int | None
    shape: str | None  # E2B / E4B when known

    def by_kind(self, kind: str) -> _Model | None:
        return next((m for m in self.models if m.kind == kind), None)


def read_layout(path: str | os.PathLike | _Layout) -> _Layout:
    """An artifact directory (its manifest), or any .litertlm bundle (its sections: Google's and
    litert-torch's too), as the components bench measures; read once, pass it to the functions below."""
    from edge.format.litertlm import is_litertlm

    if isinstance(path, _Layout):
        return path
    p = Path(path)
    return _bundle_layout(p) if is_litertlm(p) else _directory_layout(p)


def _directory_layout(d: Path) -> _Layout:
    from edge.format.manifest import read_manifest
    from edge.format.tflite import read_signatures

    m = read_manifest(d)
    models, counted = [], set()
    for name, a in m.artifacts.items():
        files = [a.file, *a.external_weights]
        sizes = {f: (d / f).stat().st_size for f in files if (d / f).is_file()}
        models.append(_Model(name, a.kind, sizes, d / a.file, None, read_signatures(d / a.file)))
        counted.update(sizes)
    other = {f: e.bytes for f, e in m.files.items() if f not in counted}
    bundle = other.pop("model.litertlm", None)
    return _Layout(tuple(models), other, bundle, m.model.context_length, _shape_name(m))


def _bundle_layout(path: Path) -> _Layout:
    from edge.format.litertlm import bundle_manifest, check_structure, llm_metadata, read_bundle, tflite_signatures

    b = read_bundle(path)
    problems = check_structure(b)
    if problems:
        raise BenchError(f"{path}: not a bundle the engine can load:\n  " + "\n  ".join(problems))
    weights = {}
    for s in b.sections:
        if s.data_type == "TFLiteWeights":
            weights.setdefault(s.model_type, {})[s.label] = s.size
    models, other = [], {}
    for s in b.sections:
        if s.data_type == "TFLiteModel":
            sigs, _ = tflite_signatures(b, s)
            kind = s.model_type or f"section {s.index}"
            models.append(_Model(kind, kind, {s.label: s.size, **weights.get(s.model_type, {})}, path,
                                 (s.begin, s.end), sigs))
        elif s.data_type != "TFLiteWeights":
            other[s.label] = s.size
    md, ours = llm_metadata(b), bundle_manifest(b)
    context = ours.model.context_length if ours else (int(md.max_num_tokens) if md and md.max_num_tokens else None)
    return _Layout(tuple(models), other, b.size, context, _shape_name(ours) if ours else None)


def _lookup_row_bytes(model: _Model) -> float:
    """Bytes of one table row, read by the model's single-token signature (the one with the fewest
    token inputs): the table and its scales have one row per token id (the graph's other
    constants, a few shape vectors, are not per token)."""
    sig = min(model.signatures, key=lambda k: (math.prod(next(iter(model.signatures[k].inputs.values())).shape)
                                               if model.signatures[k].inputs else 0, k))
    weights = [w for w in signature_weights(model.path, sig, model.span) if w.shape]
    if not weights:
        raise BenchError(f"{model.name}: signature {sig!r} holds no table")
    rows = max(w.shape[0] for w in weights)
    return sum(w.nbytes for w in weights if w.shape[0] == rows) / rows


def decode_traffic(path: str | os.PathLike | _Layout) -> DecodeTraffic:
    """What one decode step reads, for an artifact directory or a .litertlm bundle."""
    from edge.format.signatures import DECODE, EMBEDDER, PER_LAYER_EMBEDDER, PREFILL_DECODE

    lay = read_layout(path)
    dec = lay.by_kind(PREFILL_DECODE)
    if dec is None:
        raise BenchError(f"{path}: no {PREFILL_DECODE} model; nothing decodes")
    if DECODE not in dec.signatures:
        raise BenchError(f"{path}: the {PREFILL_DECODE} model has no {DECODE!r} signature "
                         f"(has: {', '.join(dec.signatures)})")
    weights = sum(w.nbytes for w in signature_weights(dec.path, DECODE, dec.span))
    sig = dec.signatures[DECODE]
    states = [n for n in sig.inputs if n in sig.outputs]  # the caches: inputs that are also outputs
    kv_read = int(sum(cache_read_bytes(dec.path, DECODE, states, dec.span).values()))
    kv_write = int(sum(_tensor_bytes(sig.outputs[n]) for n in states))
    emb, ple = lay.by_kind(EMBEDDER), lay.by_kind(PER_LAYER_EMBEDDER)
    return DecodeTraffic(weights, _lookup_row_bytes(emb) if emb else 0.0, _lookup_row_bytes(ple) if ple else 0.0,
                         kv_read, kv_write, lay.context or 0)


# ----------------------------------------------------------------------------- sizes


def component_sizes(path: str | os.PathLike | _Layout) -> dict:
    """Bytes per component (model file + its external weight files), other files, bundle, totals."""
    lay = read_layout(path)
    comps = {m.name: {"kind": m.kind, "files": m.files, "bytes": sum(m.files.values())} for m in lay.models}
    artifacts_total = sum(c["bytes"] for c in comps.values()) + sum(lay.other_files.values())
    return {"components": comps, "other_files": lay.other_files, "artifacts_total_bytes": artifacts_total,
            "bundle_bytes": lay.bundle_bytes, "model_params": lay.shape}


def _shape_name(m) -> str | None:
    """E2B / E4B when the manifest's model has a published shape (30 or 35 layers at hidden 2048)."""
    if m.model.hidden_size != 2048:
        return None
    return {30: "E2B", 35: "E4B"}.get(m.model.num_hidden_layers)


def compare_to_google(sizes: dict) -> dict | None:
    """Our bundle (or artifact total) next to Google's bundle of the same shape."""
    shape = sizes.get("model_params")
    if shape not in GOOGLE_BUNDLES:
        return None
    ours = sizes["bundle_bytes"] or sizes["artifacts_total_bytes"]
    g = GOOGLE_BUNDLES[shape]
    return {"shape": shape, "google": g, "ours_bytes": ours, "ours_is": "bundle" if sizes["bundle_bytes"] else
            "artifact files (no model.litertlm)", "ratio_to_google": ours / g["bytes"]}


# ----------------------------------------------------------------------------- device budget


def device_budget(directory: str | os.PathLike | _Layout, dev: DeviceProfile | str) -> dict:
    """Resident vs memory-mapped bytes on `dev`, and its decode bound, for an artifact directory or bundle."""
    from edge.format.signatures import EMBEDDER, PER_LAYER_EMBEDDER, PREFILL_DECODE

    dev = device(dev) if isinstance(dev, str) else dev
    lay = read_layout(directory)
    traffic = decode_traffic(lay)
    all_sizes = component_sizes(lay)
    sizes = all_sizes["components"]
    resident, mapped = {}, {}
    for name, c in sizes.items():
        if c["kind"] == PREFILL_DECODE:
            resident[name] = c["bytes"]  # every weight page is read every token
        elif c["kind"] in (EMBEDDER, PER_LAYER_EMBEDDER):
            mapped[name] = c["bytes"]  # a row per token: pages in only what is looked up
        else:
            resident[name] = c["bytes"]  # encoders: loaded when an image/audio clip is processed
    touched = (traffic.embedding_row_bytes + traffic.ple_row_bytes) * traffic.context
    resident_kv = 2 * traffic.kv_write_bytes  # two ping-pong sets of whole caches (a window is read, all is kept)
    resident_total = sum(resident.values()) + resident_kv + touched
    google = GOOGLE_SPEEDS.get((all_sizes["model_params"], dev.name))
    bound = traffic.bound_tok_s(dev.bandwidth_bytes_per_s)
    return {
        "device": asdict(dev),
        "resident_bytes": {**resident, "kv_caches (2 ping-pong sets)": resident_kv,
                           "table rows touched (a full context of distinct tokens)": touched},
        "resident_total_bytes": resident_total,
        "mmapped_bytes": mapped,
        "mmapped_total_bytes": sum(mapped.values()),
        "resident_share_of_ram": resident_total / dev.ram_bytes,
        "not_counted": "activations, runtime buffers, the OS and other apps (see the simulator's measured peak RSS)",
        "decode": {"read_bytes_per_token": traffic.read_bytes, "bound_tok_s": bound,
                   "google_published_cpu": google,
                   "google_fraction_of_bound": (google["decode_tok_s"] / bound) if google else None},
    }


# ----------------------------------------------------------------------------- this machine's bandwidth


def measure_bandwidth(nbytes: int = GIB, repeats: int = 5, threads: int = 1) -> dict:
    """Copy bandwidth of this machine (numpy, best of `repeats`), counting bytes read + written.

    `threads` copies split the array (numpy releases the GIL while copying), as a 2-thread
    decode would share the memory bus.
    """
    import numpy as np

    n = nbytes // 8
    src = np.ones(n, np.float64)  # touched: no page faults inside the timed copies
    dst = np.zeros(n, np.float64)
    parts = [(i * n // threads, (i + 1) * n // threads) for i in range(threads)]

    def copy(a: int, b: int) -> None:
        np.copyto(dst[a:b], src[a:b])

    best = float("inf")
    for _ in range(repeats):
        workers = [threading.Thread(target=copy, args=p) for p in parts]
        t0 = time.perf_counter()
        for w in workers:
            w.start()
        for w in workers:
            w.join()
        best = min(best, time.perf_counter() - t0)
    moved = 2 * n * 8
    return {"method": f"numpy copyto of {n * 8 / GIB:.2f} GiB, {threads} thread(s), best of {repeats}; "
                      "bytes = read + written", "threads": threads, "seconds": best,
            "bytes_per_s": moved / best}
