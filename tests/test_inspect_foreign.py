"""`inspect` on a bundle another exporter wrote: listed in full, held to the format's structure only.

The foreign bundle is laid out the way litert-torch 0.10's exporter writes one
(`litert_torch/generative/export_hf/core/litert_lm_builder.py` `package_model`: system metadata
`Authors`, LlmMetadata, tokenizer, one TFLiteModel section per model type, no items of its own;
its `single_token_embedder` lookups have one signature each, named `embedder` /
`per_layer_embedder` (`model_ext/gemma3n/exportable_module.py`), and their weights inline):
no sha256 items, no bundle manifest, signature names our contract refuses. Its models are
the tiny artifacts' own, rewritten in seconds; nothing is lowered for it.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("litert_lm_builder")

from edge.cli import main  # noqa: E402
from edge.format.litertlm import check, is_ours, read_bundle  # noqa: E402


def _single_token_lookup(src: Path, dst: Path, name: str) -> None:
    """`src` as litert-torch exports a single-token lookup: only its one-token signature, renamed
    `name`, and the external weight file's bytes inline (litert-torch bundles have no TFLiteWeights)."""
    from ai_edge_litert import schema_py_generated as schema

    from converters.lowering import flatbuf

    model = flatbuf.read_model(src)
    model.signatureDefs = [sd for sd in model.signatureDefs if flatbuf.s(sd.signatureKey).startswith("decode_")]
    model.signatureDefs[0].signatureKey = name
    inlined: dict[int, int] = {}  # external buffer id -> new buffer index
    for sg in model.subgraphs:
        for t in (t for t in sg.tensors if t.externalBuffer):
            if t.externalBuffer not in inlined:
                buf = schema.BufferT()
                buf.data = np.frombuffer(flatbuf.buffer_bytes(src, model, t), np.uint8)
                model.buffers.append(buf)
                inlined[t.externalBuffer] = len(model.buffers) - 1
            t.buffer, t.externalBuffer = inlined[t.externalBuffer], 0
    model.externalBuffers = model.externalBufferGroups = None
    dst.write_bytes(flatbuf.pack_model(model))


def _litert_torch_bundle(artifacts: Path, work: Path) -> Path:
    from litert_lm_builder import litertlm_builder as lb
    from litert_lm_builder.runtime.proto import llm_metadata_pb2, llm_model_type_pb2

    work.mkdir()
    for kind in ("embedder", "per_layer_embedder"):
        _single_token_lookup(artifacts / f"{kind}.tflite", work / f"{kind}.tflite", kind)
    md = llm_metadata_pb2.LlmMetadata(max_num_tokens=96, jinja_prompt_template="{{ messages }}")
    md.start_token.token_ids.ids.append(2)
    md.stop_tokens.add().token_ids.ids.append(1)
    md.llm_model_type.CopyFrom(llm_model_type_pb2.LlmModelType(gemma3n=llm_model_type_pb2.Gemma3N()))
    (work / "llm_metadata.pb").write_bytes(md.SerializeToString())

    builder = lb.LitertLmFileBuilder()
    builder.add_system_metadata(lb.Metadata(key="Authors", value="ODML", dtype=lb.DType.STRING))
    builder.add_llm_metadata(str(work / "llm_metadata.pb"))
    builder.add_sentencepiece_tokenizer(str(artifacts / "tokenizer.model"))
    builder.add_tflite_model(str(artifacts / "decoder.tflite"), lb.TfLiteModelType.PREFILL_DECODE)
    builder.add_tflite_model(str(work / "embedder.tflite"), lb.TfLiteModelType.EMBEDDER)
    builder.add_tflite_model(str(work / "per_layer_embedder.tflite"), lb.TfLiteModelType.PER_LAYER_EMBEDDER)
    out = work / "model.litertlm"
    with open(out, "wb") as f:
        builder.build(f)
    return out


@pytest.fixture(scope="module")
def foreign(tiny_artifacts, tmp_path_factory) -> Path:
    return _litert_torch_bundle(tiny_artifacts, tmp_path_factory.mktemp("foreign") / "litert_torch")


def _inspect(capsys, *args) -> tuple[int, str]:
    rc = main(["inspect", *map(str, args)])
    return rc, capsys.readouterr().out


def test_foreign_bundle_is_listed_and_structure_checked(foreign, capsys):
    b = read_bundle(foreign)
    assert not is_ours(b)
    assert any("no 'decode_embedder' signature" in p for p in check(b))  # what inspect reported: FAILED
    rc, out = _inspect(capsys, foreign)
    assert rc == 0, out
    assert "Authors: ODML" in out and "LlmMetadata: model type gemma3n" in out and "start [2], stop [1]" in out
    for section in ("LlmMetadataProto", "SP_Tokenizer", "prefill_decode", "per_layer_embedder"):
        assert section in out
    embedder = b.find("TFLiteModel", "embedder")[0].label
    assert f"signatures of {embedder} (1):\n  embedder\n    in  token_ids" in out
    assert "  decode\n" in out and "  prefill_8\n" in out  # the decoder's signatures, in file order
    assert "not written by gemma3n-edge: structure checked only (no contract)" in out
    assert "verification: OK (byte ranges of 5 sections; 3 TFLite flatbuffers well formed" in out


def test_foreign_bundle_loads_in_the_engine(foreign, tmp_path):
    """The fixture is a bundle LiteRT-LM accepts: what inspect must not call FAILED."""
    litert_lm = pytest.importorskip("litert_lm")

    engine = litert_lm.Engine(str(foreign), backend=litert_lm.Backend.CPU(), cache_dir=str(tmp_path))
    del engine


def test_foreign_bundle_benches(foreign, tiny_artifacts, capsys):
    """bench reads litert-torch's bundle (its embedder signature is `embedder`) as it reads ours."""
    from edge.bench import decode_traffic

    ours = decode_traffic(tiny_artifacts)
    theirs = decode_traffic(foreign)
    assert theirs.embedding_row_bytes == ours.embedding_row_bytes > 0
    assert theirs.kv_read_bytes == ours.kv_read_bytes and theirs.context == ours.context
    assert main(["bench", str(foreign), "--device", "pixel8"]) == 0
    assert "decode bound" in capsys.readouterr().out


def test_foreign_bundle_as_json(foreign, capsys):
    rc, out = _inspect(capsys, foreign, "--json")
    r = json.loads(out)
    assert rc == 0 and r["written_by_gemma3n_edge"] is False and r["problems"] == []
    assert r["system_metadata"]["Authors"] == "ODML" and r["llm_metadata"]["stop_tokens"] == [[1]]
    embedder = next(s for s in r["sections"] if s["model_type"] == "embedder")
    assert list(embedder["signatures"]) == ["embedder"] and embedder["external_weights"] == {}
    assert embedder["signatures"]["embedder"]["inputs"]["token_ids"]["shape"] == [1, 1]


def test_corrupted_foreign_model_section_fails_naming_it(foreign, tmp_path, capsys):
    bad = tmp_path / "bad.litertlm"
    data = bytearray(foreign.read_bytes())
    embedder = read_bundle(foreign).find("TFLiteModel", "embedder")[0]
    start = embedder.begin
    data[start + 40:start + 44] = bytes(x ^ 0xFF for x in data[start + 40:start + 44])  # inside the flatbuffer
    bad.write_bytes(bytes(data))
    rc, out = _inspect(capsys, bad)
    assert rc == 1, out
    assert "verification: FAILED (1 problems)" in out
    assert f"{embedder.label} is not a well-formed TFLite model" in out
    assert f"signatures of {embedder.label} (unreadable):" in out


def test_foreign_bundle_with_a_broken_tokenizer_fails(foreign, tmp_path, capsys):
    bad = tmp_path / "bad.litertlm"
    shutil.copyfile(foreign, bad)
    tok = read_bundle(bad).find("SP_Tokenizer")[0]
    with open(bad, "r+b") as f:
        f.seek(tok.begin)
        f.write(b"\xff" * tok.size)
    rc, out = _inspect(capsys, bad)
    assert rc == 1 and "section 1 (SP_Tokenizer): not a SentencePiece model" in out, out


def test_our_bundle_is_contract_checked(tiny_bundle, capsys):
    rc, out = _inspect(capsys, tiny_bundle)
    assert rc == 0, out
    assert "written by gemma3n-edge: contract checked" in out and "sha256-checked" in out
    assert "signatures of" not in out  # our bundles' output is unchanged but for the line above
    rc, out = _inspect(capsys, tiny_bundle, "--json")
    r = json.loads(out)
    assert rc == 0 and r["written_by_gemma3n_edge"] is True
    assert r["bundle_manifest"]["generator"].startswith("gemma3n-edge")
    assert r["sha256_checked"] == len(r["sections"])


def test_json_for_a_tflite_and_a_manifest(tiny_artifacts, capsys):
    rc, out = _inspect(capsys, tiny_artifacts / "embedder.tflite", "--json")
    assert rc == 0 and "decode_embedder" in json.loads(out)["signatures"]
    rc, out = _inspect(capsys, tiny_artifacts, "--json")
    r = json.loads(out)
    assert rc == 0 and r["problems"] == [] and "artifacts" in r["manifest"]
