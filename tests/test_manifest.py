"""manifest.json: round trip, structural checks, and verification against the files on disk."""

from __future__ import annotations

import hashlib
import json
import shutil
import os

import pytest

from edge.format import manifest as mf
from edge.format import manifest_verify
from edge.fileio import atomic_write, sha256_file
from edge.format.manifest import ManifestError, read_manifest
from edge.format.manifest_verify import load_manifest
from edge.format.tflite import read_signatures, summarize
from toy_artifacts import session_toy


@pytest.fixture(scope="module")
def toy(tmp_path_factory):
    return session_toy(tmp_path_factory)


@pytest.fixture
def art(toy, tmp_path):
    """A private copy of the toy artifact directory that a test may damage."""
    return toy.copy_to(tmp_path / "art")


def edit_json(directory, fn):
    path = directory / "manifest.json"
    d = json.loads(path.read_text())
    fn(d)
    path.write_text(json.dumps(d))


# ---------------------------------------------------------------- fileio


def test_atomic_write_bytes_str_and_streaming_callback(tmp_path):
    p = atomic_write(tmp_path / "sub" / "a.bin", b"\x00\x01")
    assert p.read_bytes() == b"\x00\x01"
    atomic_write(p, "é")
    assert p.read_bytes() == "é".encode()
    atomic_write(p, lambda f: [f.write(b"x" * 10) for _ in range(3)])
    assert p.read_bytes() == b"x" * 30
    assert sha256_file(p, chunk_size=7) == hashlib.sha256(b"x" * 30).hexdigest()


def test_atomic_write_failure_keeps_old_file_and_leaves_no_temp(tmp_path):
    p = tmp_path / "a.json"
    atomic_write(p, "old")

    def boom(f):
        f.write(b"partial")
        raise RuntimeError("disk on fire")

    with pytest.raises(RuntimeError):
        atomic_write(p, boom)
    assert p.read_text() == "old" and sorted(os.listdir(tmp_path)) == ["a.json"]


# ---------------------------------------------------------------- round trip and reading


def test_manifest_round_trips_and_verifies(toy, art):
    m = load_manifest(art)
    assert m.model.prefill_lengths == (8, 16) and m.model.tokens.end_of_turn == 5
    assert m.artifact("decoder").kind == "prefill_decode" and m.artifact("decoder").tolerance.max_abs == 1e-4
    mf.write_manifest(art, m)
    assert read_manifest(art) == m
    assert set(m.files) == {"decoder.tflite", "embedder.tflite", "embedder.weights", "per_layer_embedder.tflite",
                            "per_layer_embedder.weights", "tokenizer.model"}
    assert m.artifact("embedder").external_weights == ("embedder.weights",)


def test_unknown_model_keys_survive_a_round_trip(art):
    edit_json(art, lambda d: d["model"].update(num_kv_caches=20, head_dim=256))
    m = read_manifest(art)
    assert m.model.extra == {"num_kv_caches": 20, "head_dim": 256}
    mf.write_manifest(art, m)
    assert json.loads((art / "manifest.json").read_text())["model"]["head_dim"] == 256


def test_missing_artifact_lookup_names_what_exists(art):
    with pytest.raises(ManifestError, match=r"no 'vision_encoder' artifact \(it has: decoder, embedder"):
        read_manifest(art).artifact("vision_encoder")


# ---------------------------------------------------------------- verification failures


def test_flipped_byte_names_the_file(art):
    p = art / "decoder.tflite"
    data = bytearray(p.read_bytes())
    data[len(data) // 2] ^= 0x01
    p.write_bytes(bytes(data))
    with pytest.raises(ManifestError, match=r"decoder\.tflite: sha256 .* does not match manifest\.json"):
        load_manifest(art, use_cache=False)
    load_manifest(art, verify=False)  # verify=False skips the check


def test_truncated_file_names_size(art):
    p = art / "embedder.tflite"
    p.write_bytes(p.read_bytes()[:-10])
    with pytest.raises(ManifestError, match=r"embedder\.tflite: \d+ bytes on disk, manifest\.json says \d+"):
        load_manifest(art)


@pytest.mark.parametrize("name", ["tokenizer.model", "per_layer_embedder.weights"])
def test_missing_file_names_it(art, name):
    (art / name).unlink()
    with pytest.raises(ManifestError, match=rf"{name}: listed in manifest\.json but missing"):
        load_manifest(art)


def test_other_format_version_says_which_version(art):
    edit_json(art, lambda d: d.update(format_version=2, generator="gemma3n-edge 9.0"))
    with pytest.raises(ManifestError, match=r"format_version 2 \(written by gemma3n-edge 9\.0\); this tool reads format_version 1"):
        load_manifest(art)


def test_other_format_is_refused(art):
    edit_json(art, lambda d: d.update(format="something-else"))
    with pytest.raises(ManifestError, match="not a gemma3n-edge artifact manifest"):
        read_manifest(art)


def test_wrong_signature_shape_names_signature_tensor_and_shapes(art):
    def widen(d):
        d["artifacts"]["decoder"]["signatures"]["prefill_8"]["inputs"]["embeddings"]["shape"] = [1, 8, 17]

    edit_json(art, widen)
    with pytest.raises(
        ManifestError,
        match=r"decoder\.tflite: prefill_8 input 'embeddings' is float32\[1, 8, 16\] in the file, "
        r"manifest\.json declares float32\[1, 8, 17\]",
    ):
        load_manifest(art)


def test_wrong_dtype_and_missing_tensor_and_signature(art):
    def damage(d):
        sigs = d["artifacts"]["decoder"]["signatures"]
        sigs["decode"]["inputs"]["input_pos"]["dtype"] = "int64"
        sigs["decode"]["outputs"]["logits_2"] = {"shape": [1], "dtype": "float32"}
        sigs["prefill_32"] = sigs["prefill_16"]
        d["artifacts"]["embedder"]["signatures"]["decode_embedder"]["outputs"].pop("embeddings")

    edit_json(art, damage)
    with pytest.raises(ManifestError) as e:
        load_manifest(art)
    msg = str(e.value)
    assert "decode input 'input_pos' is int32[1] in the file, manifest.json declares int64[1]" in msg
    assert "decoder.tflite: decode has no output 'logits_2'" in msg
    assert "signature 'prefill_32' declared in manifest.json is missing from the file" in msg
    assert "embedder.tflite: decode_embedder has an undeclared output 'embeddings'" in msg


def test_prefill_lengths_must_have_their_signatures(art):
    edit_json(art, lambda d: d["model"].update(prefill_lengths=[8, 16, 32]))
    with pytest.raises(ManifestError, match=r"artifact decoder \(prefill_decode\): declares no prefill_32"):
        read_manifest(art)


@pytest.mark.parametrize(
    "damage, msg",
    [
        (lambda d: d["model"].pop("hidden_size"), r"model\.hidden_size is missing"),
        (lambda d: d["model"].update(vocab_size="big"), r"model\.vocab_size must be an integer"),
        (lambda d: d["model"].update(context_length=True), r"model\.context_length must be an integer"),
        (lambda d: d["model"]["tokens"].pop("bos"), r"model\.tokens\.bos is missing"),
        (lambda d: d["model"].update(chat_template="no placeholder"), r"must contain '\{prompt\}'"),
        (lambda d: d["model"].update(prefill_lengths=[8, 100]), r"prefill length 100 exceeds context_length 60"),
        (lambda d: d["files"].pop("decoder.tflite"), r"file decoder\.tflite is not listed under files"),
        (lambda d: d["files"].update({"../x": {"bytes": 1, "sha256": "0"}}), r"must be a plain name"),
        (lambda d: d["artifacts"]["decoder"].pop("signatures"), r"artifacts\.decoder\.signatures is missing"),
    ],
)
def test_structural_errors_name_the_field(art, damage, msg):
    edit_json(art, damage)
    with pytest.raises(ManifestError, match=msg):
        read_manifest(art)


def test_not_json_and_no_manifest(art, tmp_path):
    with pytest.raises(ManifestError, match="no manifest.json.*gemma3n-edge build"):
        read_manifest(tmp_path)
    (art / "manifest.json").write_text("{nope")
    with pytest.raises(ManifestError, match="not valid JSON"):
        read_manifest(art)


def test_write_refuses_a_manifest_that_does_not_round_trip(art):
    m = read_manifest(art)
    bad = mf.Manifest(**{**m.__dict__, "recipe": {"name": object()}})
    with pytest.raises(TypeError):
        mf.write_manifest(art, bad)


# ---------------------------------------------------------------- hashing cache


def test_hashes_are_cached_per_process_until_the_file_changes(art, monkeypatch):
    calls = []
    real = manifest_verify.sha256_file
    monkeypatch.setattr(manifest_verify, "sha256_file", lambda p, **kw: calls.append(os.path.basename(p)) or real(p, **kw))
    load_manifest(art)
    assert sorted(calls) == sorted(read_manifest(art).files)
    calls.clear()
    load_manifest(art)
    assert calls == []  # second load in the same process: no re-hash
    load_manifest(art, use_cache=False)
    assert len(calls) == 6
    calls.clear()
    p = art / "decoder.tflite"
    data = bytearray(p.read_bytes())
    data[100] ^= 0xFF
    p.write_bytes(bytes(data))
    st = p.stat()
    os.utime(p, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))  # a later mtime, whatever the clock granularity
    with pytest.raises(ManifestError, match="decoder.tflite: sha256"):
        load_manifest(art)
    assert calls == ["decoder.tflite"]


# ---------------------------------------------------------------- .tflite reader


def test_tflite_reader_matches_compiled_model(toy):
    from ai_edge_litert.compiled_model import CompiledModel

    sigs = read_signatures(toy.dir / "decoder.tflite")
    cm = CompiledModel.from_file(str(toy.dir / "decoder.tflite"))
    assert set(sigs) == set(cm.get_signature_list()) == {"prefill_8", "prefill_16", "decode"}
    for name in sigs:
        details = cm.get_input_tensor_details(name)
        assert {k: (list(v.shape), v.dtype) for k, v in sigs[name].inputs.items()} == {
            k: (list(d["shape"]), d["dtype"]) for k, d in details.items()
        }
    s = summarize(toy.dir / "decoder.tflite")
    assert s.size_bytes == (toy.dir / "decoder.tflite").stat().st_size
    assert s.op_counts.get("DYNAMIC_UPDATE_SLICE", 0) >= 4 and s.external == ()
    # every float32 weight of the toy decoder is stored once: 5 per layer x 2 + the output projection
    n_floats = sum(v.size for k, v in toy.weights.items() if k not in ("embed", "ple"))
    assert s.constant_dtype_bytes["float32"] >= 4 * n_floats
    e = summarize(toy.dir / "embedder.tflite")
    assert [(x.group, x.bytes) for x in e.external] == [("embedder.weights", toy.weights["embed"].nbytes)]
    assert e.constant_dtype_bytes["float32"] == toy.weights["embed"].nbytes  # the table, counted once


def test_tflite_reader_rejects_other_files(tmp_path):
    from edge.errors import UserError

    p = tmp_path / "x.tflite"
    p.write_bytes(b"not a model at all")
    with pytest.raises(UserError, match="not a TFLite flatbuffer"):
        read_signatures(p)
    with pytest.raises(UserError, match="no such file"):
        read_signatures(tmp_path / "missing.tflite")


def test_tflite_summary_counts_quantized_weights(tmp_path):
    """int8 channelwise and int4 blockwise weights: dtype counts, payload bytes, quantization kinds."""
    import torch

    from converters.lowering import lower, splice_weights

    class TwoLinear(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.a = torch.nn.Linear(256, 256, bias=False)
            self.b = torch.nn.Linear(256, 128, bias=False)

        def forward(self, x):
            return {"y": self.b(torch.relu(self.a(x)))}

    m = TwoLinear().eval()
    lower(m, {"run": {"x": torch.zeros(1, 4, 256)}}, tmp_path / "g.tflite")
    w = {k: v.detach().numpy() for k, v in m.named_parameters()}
    n = 256 * 256 + 128 * 256
    splice_weights(tmp_path / "g.tflite", tmp_path / "q8.tflite", w, "int8", component="decoder")
    s8 = summarize(tmp_path / "q8.tflite")
    assert s8.constant_dtype_counts["int8"] == 2 and s8.constant_dtype_bytes["int8"] == n
    assert s8.quantization_counts == {"per-channel": 2}
    splice_weights(tmp_path / "g.tflite", tmp_path / "q4.tflite", w, "int4", component="decoder")
    s4 = summarize(tmp_path / "q4.tflite")
    assert s4.constant_dtype_bytes["int4"] == n // 2  # two values per byte
    assert s4.constant_dtype_bytes["float16"] == 2 * (n // 32)  # one fp16 scale per block of 32
    assert s4.quantization_counts == {"blockwise": 2}
    assert list(s4.signatures["run"].inputs) == ["x"]  # the weight inputs are gone after splicing


def test_symlink_leaving_the_directory_is_refused(art, tmp_path):
    """A link to a file outside must not get that file hashed (or read) as an artifact."""
    outside = tmp_path / "secret.bin"
    shutil.copy(art / "tokenizer.model", outside)
    (art / "tokenizer.model").unlink()
    (art / "tokenizer.model").symlink_to(outside)
    with pytest.raises(ManifestError, match=r"tokenizer\.model: resolves to .*secret\.bin, outside"):
        load_manifest(art)


def test_manifest_not_utf8_or_nested_deeply_is_a_clear_error(art):
    (art / "manifest.json").write_bytes(b'{"format": "\xff\xfe"}')
    with pytest.raises(ManifestError, match="not UTF-8"):
        read_manifest(art)
    (art / "manifest.json").write_text("[" * 200_000 + "]" * 200_000)
    with pytest.raises(ManifestError, match="nested too deeply"):
        read_manifest(art)


def test_context_length_that_disagrees_with_the_graph_is_refused(art):
    """inspect said OK for a manifest whose context_length was edited: the graph's mask decides."""
    edit_json(art, lambda d: d["model"].update(context_length=d["model"]["context_length"] * 2))
    with pytest.raises(ManifestError, match=r"lowered for a context of \d+ tokens, but model.context_length says"):
        read_manifest(art)
