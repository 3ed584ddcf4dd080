"""edge.format.tflite_verify.verify_structure: a corrupted or crafted .tflite is a UserError, never a signal.

The native LiteRT loader follows a flatbuffer's offsets and indices without checking them
(bytes 40..43 of the toy decoder inverted: SIGSEGV), so every path that hands a file to it
(CompiledModelFile, `inspect`, manifest verification, bundle checks) verifies the flatbuffer
first. The files corrupted here are the toy artifacts (tests/toy_artifacts.py, built once
per session); field positions are found with the schema's accessors.
"""

from __future__ import annotations

import random
import struct
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from edge.errors import UserError
from edge.format.tflite import read_signatures, summarize
from edge.format.tflite_verify import verify_structure
from toy_artifacts import session_toy

REPO = Path(__file__).resolve().parents[1]
FIX = "rebuild or re-copy it"


@pytest.fixture(scope="module")
def toy(tmp_path_factory):
    return session_toy(tmp_path_factory)


@pytest.fixture(scope="module")
def decoder_bytes(toy) -> bytes:
    return (toy.dir / "decoder.tflite").read_bytes()


def _model(data):
    from ai_edge_litert import schema_py_generated as schema

    return schema.Model.GetRootAs(data, 0)


def _field(obj, slot: int) -> int:
    """Byte position of a table's field (slot as in schema_py_generated: `self._tab.Offset(slot)`)."""
    o = obj._tab.Offset(slot)
    assert o, f"field slot {slot} is absent"
    return obj._tab.Pos + o


def _vector_length_pos(obj, slot: int) -> int:
    return obj._tab.Vector(obj._tab.Offset(slot)) - 4


def _write(tmp_path: Path, data: bytes | bytearray, name: str = "decoder.tflite") -> Path:
    p = tmp_path / name
    p.write_bytes(bytes(data))
    return p


def _patched(data: bytes, pos: int, fmt: str, value) -> bytearray:
    b = bytearray(data)
    struct.pack_into(fmt, b, pos, value)
    return b


def _rejects(path: Path, match: str = "") -> str:
    with pytest.raises(UserError) as e:
        verify_structure(path)
    msg = str(e.value)
    assert msg.startswith(str(path)) and msg.endswith(FIX) and "\n" not in msg, msg
    assert match in msg, msg
    return msg


def _inverted_40_43(data: bytes) -> bytearray:
    b = bytearray(data)
    for i in range(40, 44):
        b[i] ^= 0xFF
    return b


# ---------------------------------------------------------------- good files


def test_toy_artifacts_pass_and_still_read(toy):
    for name in ("decoder.tflite", "embedder.tflite", "per_layer_embedder.tflite"):
        verify_structure(toy.dir / name)
    # The embedders keep their tables outside the flatbuffer (Tensor.external_buffer): accepted.
    assert summarize(toy.dir / "embedder.tflite").external
    assert "decode" in read_signatures(toy.dir / "decoder.tflite")


def test_bytes_and_memoryview_of_a_section(decoder_bytes):
    verify_structure(decoder_bytes)
    padded = bytes(16384) + decoder_bytes + bytes(100)  # a .tflite section inside a larger file
    view = memoryview(padded)[16384:16384 + len(decoder_bytes)]
    verify_structure(view, name="bundle.litertlm: section 3")
    bad = bytes(16384) + bytes(_inverted_40_43(decoder_bytes))
    with pytest.raises(UserError, match=r"^bundle\.litertlm: section 3 is not a well-formed TFLite model .*re-copy it$"):
        verify_structure(memoryview(bad)[16384:], name="bundle.litertlm: section 3")


# ---------------------------------------------------------------- the reported corruption


def test_inverted_bytes_40_43_are_a_user_error(decoder_bytes, tmp_path):
    p = _write(tmp_path, _inverted_40_43(decoder_bytes))
    _rejects(p, "points outside the buffer")
    for reader in (read_signatures, summarize):  # `inspect` and manifest verification
        with pytest.raises(UserError, match="not a well-formed TFLite model"):
            reader(p)


def test_compiled_model_file_refuses_it_in_process(decoder_bytes, tmp_path):
    from edge.runtime.litert_model import CompiledModelFile

    p = _write(tmp_path, _inverted_40_43(decoder_bytes))
    with pytest.raises(UserError, match=r"decoder\.tflite is not a well-formed TFLite model .*rebuild or re-copy it"):
        CompiledModelFile(p)


def test_native_loader_crashes_on_it_without_the_check(decoder_bytes, tmp_path):
    """Why the check exists: LiteRT itself, given the same file, dies of a signal."""
    p = _write(tmp_path, _inverted_40_43(decoder_bytes))
    code = f"from ai_edge_litert.compiled_model import CompiledModel; CompiledModel.from_file({str(p)!r})"
    rc = subprocess.run([sys.executable, "-c", code], capture_output=True, timeout=120).returncode
    if rc >= 0:
        pytest.skip(f"this LiteRT build no longer crashes on the file (exit code {rc})")
    assert rc < 0  # killed by a signal (SIGSEGV with ai-edge-litert 2.x)


def test_manifest_verification_reports_it(toy, tmp_path):
    from edge.format.manifest import read_manifest
    from edge.format.manifest_verify import check_signatures

    d = toy.copy_to(tmp_path / "art")
    (d / "decoder.tflite").write_bytes(bytes(_inverted_40_43((d / "decoder.tflite").read_bytes())))
    problems = check_signatures(read_manifest(d), d)
    assert any("decoder.tflite is not a well-formed TFLite model" in p and p.endswith(FIX) for p in problems), problems


def test_bundle_check_verifies_every_model_section(toy, tmp_path):
    """A crafted bundle (hashes not checked: --no-verify, or recomputed) is refused by check/extract."""
    from converters.bundle import write_bundle
    from edge.format.litertlm import LitertLmError, check, extract, read_bundle

    d = toy.copy_to(tmp_path / "art")
    bundle = write_bundle(d).path
    assert check(read_bundle(bundle)) == []
    for kind in ("prefill_decode", "embedder"):
        section = read_bundle(bundle).find("TFLiteModel", kind)[0]
        data = bytearray(bundle.read_bytes())
        struct.pack_into("<I", data, section.begin, section.size + 64)  # root offset past the section
        bad = tmp_path / f"bad_{kind}.litertlm"
        bad.write_bytes(bytes(data))
        problems = check(read_bundle(bad), verify_hashes=False)
        assert any(p.startswith(f"{section.label} is not a well-formed TFLite model (root table offset")
                   and p.endswith("rebuild or re-copy the bundle") for p in problems), problems
    with pytest.raises(LitertLmError, match="failed verification"):
        extract(read_bundle(bad), tmp_path / "out")


# ---------------------------------------------------------------- targeted corruptions


@pytest.mark.parametrize("keep", [0, 7, 40, 1000, -1])
def test_truncated_file(decoder_bytes, tmp_path, keep):
    p = _write(tmp_path, decoder_bytes[: keep if keep >= 0 else len(decoder_bytes) // 2])
    _rejects(p)


@pytest.mark.parametrize("root", [0, 2, 6, 0xFFFFFFF0])
def test_root_offset_out_of_range_or_misaligned(decoder_bytes, tmp_path, root):
    _rejects(_write(tmp_path, _patched(decoder_bytes, 0, "<I", root)), "root table offset")


def test_file_identifier(decoder_bytes, tmp_path):
    _rejects(_write(tmp_path, decoder_bytes[:4] + b"TFL2" + decoder_bytes[8:]), "file identifier")


@pytest.mark.parametrize("length", [0x7FFFFFFF, 0xFFFFFFFF])
def test_huge_vector_length(decoder_bytes, tmp_path, length):
    sg = _model(decoder_bytes).Subgraphs(0)
    _rejects(_write(tmp_path, _patched(decoder_bytes, _vector_length_pos(sg, 4), "<I", length)),
             "model.subgraphs[0].tensors: vector of")


def test_huge_string_length(decoder_bytes, tmp_path):
    t = _model(decoder_bytes).Subgraphs(0).Tensors(0)
    _rejects(_write(tmp_path, _patched(decoder_bytes, _vector_length_pos(t, 10), "<I", 1 << 30)),
             "model.subgraphs[0].tensors[0].name: string of")


def test_vtable_out_of_range(decoder_bytes, tmp_path):
    t = _model(decoder_bytes).Subgraphs(0).Tensors(0)
    _rejects(_write(tmp_path, _patched(decoder_bytes, t._tab.Pos, "<i", -(1 << 30))), "vtable")


def test_tensor_buffer_index_out_of_range(decoder_bytes, tmp_path):
    m = _model(decoder_bytes)
    sg = m.Subgraphs(0)
    j = next(j for j in range(sg.TensorsLength()) if sg.Tensors(j)._tab.Offset(8))
    p = _write(tmp_path, _patched(decoder_bytes, _field(sg.Tensors(j), 8), "<I", m.BuffersLength() + 5))
    _rejects(p, f"model.subgraphs[0].tensors[{j}].buffer: index {m.BuffersLength() + 5} is past the "
                f"{m.BuffersLength()} buffers")


def test_operator_opcode_index_out_of_range(decoder_bytes, tmp_path):
    m = _model(decoder_bytes)
    sg = m.Subgraphs(0)
    j = next(j for j in range(sg.OperatorsLength()) if sg.Operators(j)._tab.Offset(4))
    p = _write(tmp_path, _patched(decoder_bytes, _field(sg.Operators(j), 4), "<I", m.OperatorCodesLength()))
    _rejects(p, f"model.subgraphs[0].operators[{j}].opcode_index: index {m.OperatorCodesLength()} is past")


@pytest.mark.parametrize("value", [-2, 10**6])
def test_operator_input_index_out_of_range(decoder_bytes, tmp_path, value):
    sg = _model(decoder_bytes).Subgraphs(0)
    op = sg.Operators(0)
    first = _vector_length_pos(op, 6) + 4
    _rejects(_write(tmp_path, _patched(decoder_bytes, first, "<i", value)),
             f"model.subgraphs[0].operators[0].inputs[0]: index {value} is neither -1 nor below the "
             f"{sg.TensorsLength()} tensors")


def test_subgraph_output_index_out_of_range(decoder_bytes, tmp_path):
    sg = _model(decoder_bytes).Subgraphs(0)
    first = _vector_length_pos(sg, 8) + 4
    _rejects(_write(tmp_path, _patched(decoder_bytes, first, "<i", sg.TensorsLength())),
             "model.subgraphs[0].outputs[0]: index")


def test_signature_indices_out_of_range(decoder_bytes, tmp_path):
    m = _model(decoder_bytes)
    sd = m.SignatureDefs(0)
    n = m.Subgraphs(sd.SubgraphIndex()).TensorsLength()
    tm = sd.Inputs(0)
    if tm._tab.Offset(6):
        _rejects(_write(tmp_path, _patched(decoder_bytes, _field(tm, 6), "<I", n)),
                 f"model.signature_defs[0].inputs[0].tensor_index: index {n} is past the {n} tensors")
    if sd._tab.Offset(12):
        _rejects(_write(tmp_path, _patched(decoder_bytes, _field(sd, 12), "<I", m.SubgraphsLength())),
                 "model.signature_defs[0].subgraph_index: index")


def test_negative_shape_dimension(decoder_bytes, tmp_path):
    t = _model(decoder_bytes).Subgraphs(0).Tensors(0)
    first = _vector_length_pos(t, 4) + 4
    _rejects(_write(tmp_path, _patched(decoder_bytes, first, "<i", -3)),
             "model.subgraphs[0].tensors[0].shape[0]: -3 is below 0")


# ---------------------------------------------------------------- fuzz


def _weight_payloads(data: bytes) -> list[tuple[int, int]]:
    """[begin, end) of every Buffer.data payload: the bytes the verifier never reads."""
    m = _model(data)
    out = []
    for i in range(m.BuffersLength()):
        b = m.Buffers(i)
        if b.DataLength():
            begin = b._tab.Vector(b._tab.Offset(4))
            out.append((begin, begin + b.DataLength()))
    return out


def test_fuzz_metadata_corruptions_never_crash(decoder_bytes, tmp_path):
    """300 single-byte / 4-byte corruptions of the flatbuffer's metadata (fixed seed): the verifier
    returns or raises UserError, nothing else; 20 of the files it accepts load in one subprocess
    without a signal."""
    payloads = _weight_payloads(decoder_bytes)
    rng = random.Random(20240611)
    accepted, rejected = [], 0
    for k in range(300):
        while True:
            pos = rng.randrange(0, len(decoder_bytes) - 4)
            if not any(a <= pos < b + 4 for a, b in payloads):
                break
        b = bytearray(decoder_bytes)
        if rng.random() < 0.5:
            b[pos] = rng.randrange(256)
        else:
            value = rng.choice([0, 1, 0xFFFFFFFF, 0x7FFFFFFF, rng.randrange(1 << 32), rng.randrange(len(b))])
            struct.pack_into("<I", b, pos, value)
        try:
            verify_structure(bytes(b), name=f"case {k} (byte {pos})")
        except UserError:
            rejected += 1
            continue
        if len(accepted) < 20 and bytes(b) != decoder_bytes:
            accepted.append(_write(tmp_path, b, f"case{k}.tflite"))
    assert rejected > 50 and accepted, (rejected, len(accepted))

    script = textwrap.dedent("""
        import sys
        from edge.errors import UserError
        from edge.runtime.litert_model import CompiledModelFile
        for p in sys.argv[1:]:
            try:
                CompiledModelFile(p).close()
                print("loaded", p, flush=True)
            except UserError as e:
                print("refused", p, str(e).splitlines()[0][:100], flush=True)
        print("done", flush=True)
    """)
    proc = subprocess.run([sys.executable, "-c", script, *map(str, accepted)], cwd=REPO, capture_output=True,
                          text=True, timeout=600)
    assert proc.returncode >= 0, f"killed by signal {-proc.returncode} after:\n{proc.stdout[-2000:]}"
    assert proc.returncode == 0 and proc.stdout.rstrip().endswith("done"), proc.stdout[-2000:] + proc.stderr[-2000:]
    outcomes = [line.split()[0] for line in proc.stdout.splitlines() if line.startswith(("loaded", "refused"))]
    assert len(outcomes) == len(accepted) == 20, proc.stdout
    print(f"fuzz: {rejected}/300 rejected; of 20 accepted, {outcomes.count('loaded')} loaded, "
          f"{outcomes.count('refused')} refused by LiteRT (an error, not a signal)")


# ---------------------------------------------------------------- a multi-GB file


def _appended_weights_model(src: bytes, path: Path, copies: int, file_size: int) -> int:
    """The toy decoder's graph `copies` times over, every weight moved after the flatbuffer
    (Buffer.offset/size, as the converter writes files over 2 GB), in a sparse file."""
    import copy

    import flatbuffers
    from ai_edge_litert import schema_py_generated as schema

    m = schema.ModelT.InitFromPackedBuf(bytearray(src), 0)
    m.subgraphs = [copy.deepcopy(sg) for _ in range(copies) for sg in m.subgraphs]
    start = 1 << 24
    step = (file_size - start) // (len(m.buffers) + 1)
    for i, b in enumerate(m.buffers):
        n = len(b.data) if b.data is not None else 0
        b.data = None
        if n:
            b.offset, b.size = start + i * step, n
    builder = flatbuffers.Builder(1 << 20)
    builder.Finish(m.Pack(builder), file_identifier=b"TFL3")
    fb = builder.Output()
    assert len(fb) < start
    with open(path, "wb") as f:
        f.write(fb)
        f.truncate(file_size)
    return sum(len(sg.tensors) for sg in m.subgraphs)


def test_multi_gb_file_with_appended_weights_verifies_fast(decoder_bytes, tmp_path):
    p = tmp_path / "big.tflite"
    tensors = _appended_weights_model(decoder_bytes, p, 150, 3 << 30)  # ~32k tensors, ~25k operators
    assert p.stat().st_size == 3 << 30 and tensors > 30_000
    elapsed = []
    for _ in range(3):  # the best of three: the machine may be busy
        t = time.perf_counter()
        verify_structure(p)
        elapsed.append(time.perf_counter() - t)
    assert min(elapsed) < 1.0, f"{min(elapsed):.2f} s for {tensors} tensors"
    assert summarize(p).constant_dtype_bytes  # payloads counted from Buffer.offset/size
    # The same file cut short: the last weights now lie past the end.
    with open(p, "r+b") as f:
        f.truncate((3 << 30) - (64 << 20))
    _rejects(p, "payload bytes")
