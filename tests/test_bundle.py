"""model.litertlm in Google's LiteRT-LM runtime (litert-lm-api 0.18.1, CPU) vs our simulator and HF.

- layout and metadata: the sections, types, LlmMetadata and ExecutorMetadata the runtime reads;
- generation: the runtime's greedy text equals our simulator's on the same bundle (fp32, int8,
  int4) for raw prompts (one and several prefill chunks, past the sliding window) and for the
  chat template through the Conversation API; equals HF's for fp32; for int8 (trained tiny
  model) the logits track HF's within quantization error and greedy leaves HF's path only at
  near-ties;
- text scoring: runtime 0.18.1's `run_text_scoring` scores as if the second-to-last prompt
  token were absent (it re-decodes the pending last prompt token one position early, over
  that token's cache row): pinned down exactly against HF, and the workaround (a second
  prefill of the last prompt piece) gives HF's log-likelihoods;
- rejection: a corrupted section, a truncated or foreign file, a wrong section type or an
  ExecutorMetadata that misses a cache fails `check`/inspect/simulate naming the section.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

litert_lm = pytest.importorskip("litert_lm")

from converters.bundle import BUNDLE_NAME  # noqa: E402
from edge.fileio import sha256_file  # noqa: E402
from edge.format.litertlm import (LitertLmError, check, executor_metadata, extract, llm_metadata, read_bundle,  # noqa: E402
                           section_sha256)
from edge.format.manifest_verify import load_manifest  # noqa: E402
from edge.runtime.session import load_pipeline  # noqa: E402
from edge.runtime.pipeline import GenerationConfig  # noqa: E402

TRAINED = Path(__file__).resolve().parents[1] / "converters" / "data" / "tiny_trained"
# Short (one prefill chunk) and long (27 prefill tokens: prefill_16 + a padded prefill_16);
# 12+ generated tokens run past the tiny model's sliding window of 12.
PROMPTS = ("The quick brown fox",
           "The for statement is used to iterate over the elements of a sequence such as a string, tuple or list.")
NEW_TOKENS = 16
INT8_PROMPTS = ('The "for" statement', "A class definition", "The quick brown fox", "def main():", "import os")
MIN_COMPARED = 8  # greedy tokens compared at least (a stop token may end a reply early)
# fp32 end to end: logits agree to 1e-3 (manifest tolerance; observed <2e-4), so a log-softmax
# value moves by at most 2e-3 (the logit and the log-normaliser each move by <= 1e-3).
LOGPROB_TOL = 2e-3


def _greedy_config():
    from litert_lm import interfaces

    # Runtime 0.18.1 implements only the top-p sampler; k = 1 makes it greedy.
    return interfaces.SamplerConfig(top_k=1, top_p=1.0, temperature=1.0, seed=0)


@pytest.fixture(scope="module")
def engine_for():
    engines = {}

    def get(bundle: Path):
        if bundle not in engines:
            engines[bundle] = litert_lm.Engine(str(bundle), backend=litert_lm.Backend.CPU())
        return engines[bundle]

    yield get
    for e in engines.values():
        e.close()


@pytest.fixture(scope="module")
def hf_reference():
    from converters.reference import Reference

    refs = {}

    def get(ckpt: Path):
        if ckpt not in refs:
            refs[ckpt] = Reference(ckpt)
        return refs[ckpt]

    return get


def runtime_greedy(engine, prompt: str, n: int) -> str:
    session = engine.create_session(apply_prompt_template=False, max_output_tokens=n,
                                    sampler_config=_greedy_config())
    try:
        session.run_prefill([prompt])
        return session.run_decode().texts[0]
    finally:
        session.close()


def simulator_greedy(pipeline, prompt: str, n: int = NEW_TOKENS, template: bool = False) -> list[int]:
    ids = list(pipeline.generate(prompt, config=GenerationConfig(max_tokens=n, apply_template=template)).token_ids)
    vocab = pipeline.tokenizer.sp_vocab_size
    # The decoder scores text ids only: nothing the tokenizer cannot decode is ever generated.
    assert all(t < vocab for t in ids), f"{prompt!r}: greedy ids {ids} leave the tokenizer's {vocab} pieces"
    assert len(ids) >= MIN_COMPARED, (prompt, ids)
    return ids


@pytest.fixture(scope="module")
def simulate():
    pipelines = {}

    def get(path: Path):
        if path not in pipelines:
            pipelines[path] = load_pipeline(path)[0]
        return pipelines[path]

    yield get
    for p in pipelines.values():
        p.close()


# ----------------------------------------------------------------------------- layout


def test_bundle_sections_and_metadata(tiny_artifacts, tiny_ckpt):
    bundle = tiny_artifacts / BUNDLE_NAME
    b = read_bundle(bundle)
    assert check(b) == []
    assert [(s.data_type, s.model_type) for s in b.sections if s.data_type != "GenericBinaryData"] == [
        ("LlmMetadataProto", None), ("ExecutorMetadataProto", None), ("SP_Tokenizer", None),
        ("TFLiteModel", "prefill_decode"), ("TFLiteModel", "embedder"), ("TFLiteModel", "per_layer_embedder")]
    assert all(s.begin % 16384 == 0 for s in b.sections), "sections are 16 KiB aligned (mmap-able on the phone)"

    manifest = load_manifest(tiny_artifacts)
    # Ours, ignored by the runtime: the bundle manifest and the directory's side files.
    side = {f for f in manifest.files if f.endswith((".json", ".jinja"))} - {"manifest.json"}
    assert "chat_template.jinja" in side  # the checkpoint's template, carried for rebundling
    assert {s.items.get("gemma3n_edge") for s in b.find("GenericBinaryData")} == {"bundle_manifest.json", *side}
    assert manifest.files[BUNDLE_NAME].sha256 == sha256_file(bundle)
    # The decoder goes in byte for byte; the lookups are self-contained copies with their table
    # appended (no TFLiteWeights: runtimes before 0.16 cannot load those), 64-byte aligned.
    assert section_sha256(b, b.find("TFLiteModel", "prefill_decode")[0]) == manifest.files["decoder.tflite"].sha256
    for kind in ("embedder", "per_layer_embedder"):
        table = (tiny_artifacts / f"{kind}.weights").read_bytes()
        at = b.read(b.find("TFLiteModel", kind)[0]).find(table)
        assert at > 0 and at % 64 == 0, kind

    md = llm_metadata(b)
    tokens = manifest.model.tokens
    assert md.llm_model_type.WhichOneof("model_type") == "gemma3n"
    assert md.min_runtime_version == "0.11.0"  # measured: tools/check_runtimes.py
    assert list(md.start_token.token_ids.ids) == [tokens.bos]
    assert [list(t.token_ids.ids) for t in md.stop_tokens] == [[tokens.eos], [tokens.end_of_turn]]
    assert md.max_num_tokens == manifest.model.context_length == 96
    assert md.jinja_prompt_template == (tiny_ckpt / "chat_template.jinja").read_text()
    assert (md.prompt_templates.user.prefix, md.prompt_templates.user.suffix, md.prompt_templates.model.prefix) == (
        "<start_of_turn>user\n", "<end_of_turn>\n", "<start_of_turn>model\n")
    gen = json.loads((tiny_ckpt / "generation_config.json").read_text())
    sp = md.sampler_params
    assert (sp.k, sp.p, sp.temperature) == pytest.approx((gen["top_k"], gen["top_p"], gen["temperature"]))
    assert md.supports_thinking is False and md.supports_function_calling is False
    em = executor_metadata(b).llm_executor_metadata
    caches = [f"kv_cache_{kv}_{i}" for i in range(len(manifest.artifact("prefill_decode").extra["cache_layers"]))
              for kv in "kv"]
    assert [sb.prefill_input_name for sb in em.state_buffers] == caches
    assert all(sb.maximum_sequence_length == 96 and sb.sequence_axis == (2 if "_k_" in sb.decode_output_name else 3)
               for sb in em.state_buffers)


def test_engine_reads_the_metadata(tiny_bundle, engine_for):
    engine = engine_for(tiny_bundle)
    manifest = load_manifest(tiny_bundle.parent)
    assert engine.bos_token_id == manifest.model.tokens.bos
    assert engine.eos_token_ids == [[t] for t in manifest.model.stop_tokens]


def test_build_without_bundle(tiny_ckpt, tmp_path):
    import argparse

    from converters.build import BuildOptions, build
    from converters.commands import build as build_cmd

    p = argparse.ArgumentParser()
    build_cmd.configure(p)
    assert p.parse_args(["ckpt", "--out", "x", "--no-bundle"]).no_bundle is True
    out = build(tiny_ckpt, tmp_path / "out", BuildOptions(recipe="fp32", prefill=(8, 16), context=96, bundle=False, modalities=("text",)))
    assert not (out / BUNDLE_NAME).exists()
    assert BUNDLE_NAME not in load_manifest(out).files


# ----------------------------------------------------------------------------- generation


@pytest.mark.parametrize("recipe", ["fp32", "int8", "int4", "int4-pc"])
def test_runtime_greedy_equals_simulator(recipe, build_tiny, engine_for, simulate):
    bundle = build_tiny(recipe) / BUNDLE_NAME
    engine, pipeline = engine_for(bundle), simulate(bundle)
    for prompt in PROMPTS:
        ids = simulator_greedy(pipeline, prompt)
        assert runtime_greedy(engine, prompt, len(ids)) == engine.detokenize(ids), (recipe, prompt, ids)


@pytest.mark.parametrize("recipe", ["fp32", "int8", "int4"])
def test_engine_never_meets_an_undecodable_id(recipe, build_tiny, engine_for):
    """The random tiny model often picks its image/audio ids (the engine used to abort: "Token id
    … is out of range"); with the text-only head, 64 greedy tokens of every prompt decode."""
    engine = engine_for(build_tiny(recipe) / BUNDLE_NAME)
    for prompt in (*PROMPTS, "<start_of_turn>user\nHello<end_of_turn>\n<start_of_turn>model\n"):
        assert isinstance(runtime_greedy(engine, prompt, 64), str)


def test_cli_inspects_and_simulates_the_bundle(tiny_bundle, simulate, tmp_path, capsys):
    from edge.cli import main

    assert main(["inspect", str(tiny_bundle)]) == 0
    out = capsys.readouterr().out
    assert "TFLiteWeights" not in out and "per_layer_embedder" in out and "verification: OK" in out
    ids = simulator_greedy(simulate(tiny_bundle), PROMPTS[0])
    report = tmp_path / "sim.json"
    assert main(["simulate", str(tiny_bundle), "--prompt", PROMPTS[0], "--no-template",
                 "--max-tokens", str(len(ids)), "--json", str(report)]) == 0
    assert json.loads(report.read_text())["token_ids"] == ids
    bad = tmp_path / "bad.litertlm"
    bad.write_bytes(tiny_bundle.read_bytes()[:100_000])
    assert main(["simulate", str(bad), "--prompt", "x"]) == 1
    assert "outside the payload area" in capsys.readouterr().err


def test_bundle_simulates_like_its_directory(tiny_artifacts, tiny_bundle, simulate):
    for prompt in PROMPTS:
        assert simulator_greedy(simulate(tiny_bundle), prompt) == simulator_greedy(simulate(tiny_artifacts), prompt)


def test_fp32_runtime_greedy_equals_hf(tiny_bundle, tiny_ckpt, engine_for, simulate, hf_reference):
    engine, pipeline, ref = engine_for(tiny_bundle), simulate(tiny_bundle), hf_reference(tiny_ckpt)
    for prompt in PROMPTS:
        hf = ref.greedy(pipeline.prompt_ids(prompt, apply_template=False), NEW_TOKENS, pipeline.tokenizer.sp_vocab_size)
        ids = simulator_greedy(pipeline, prompt)
        assert hf[: len(ids)] == ids
        assert runtime_greedy(engine, prompt, len(ids)) == engine.detokenize(hf[: len(ids)])


@pytest.fixture(scope="module")
def trained_int8(tmp_path_factory):
    if not (TRAINED / "model.safetensors").is_file():
        pytest.skip(f"{TRAINED} (the trained tiny checkpoint) is not in this checkout")
    from converters.build import BuildOptions, build

    return build(TRAINED, tmp_path_factory.mktemp("trained") / "int8",
                 BuildOptions(recipe="int8", prefill=(8, 16), context=96, modalities=("text",)))


def test_int8_bundle_tracks_hf_on_trained_tiny(trained_int8, engine_for, simulate, hf_reference):
    """int8 (dynamic, per-channel) on the trained tiny model: the runtime's greedy text equals the
    simulator's; teacher-forced along HF's greedy path the int8 logits stay within 0.5 of HF's
    (observed <= 0.26; the softcapped logits span +-30) and pick HF's token at >= 90% of the
    steps (observed 96%); where free-running greedy leaves HF's tokens, HF's top-2 margin there
    is below the int8 error (a near-tie: observed margins ~0.01 against errors ~0.12). The random
    tiny model is no judge here: its int8 errors reach 1-5 against margins below 0.6."""
    from edge.parity.forced_decode import decoder_steps

    bundle = trained_int8 / BUNDLE_NAME
    engine, pipeline, ref = engine_for(bundle), simulate(bundle), hf_reference(TRAINED)
    agree = steps = 0
    for prompt in INT8_PROMPTS:
        prompt_ids = pipeline.prompt_ids(prompt, apply_template=False)
        ids = simulator_greedy(pipeline, prompt)
        assert runtime_greedy(engine, prompt, len(ids)) == engine.detokenize(ids), prompt
        vocab = pipeline.tokenizer.sp_vocab_size
        hf = ref.greedy(prompt_ids, len(ids), vocab)
        seq = prompt_ids + hf
        want = ref.logits(seq, vocab)[len(prompt_ids) - 1: -1]
        got = np.stack(decoder_steps(pipeline, seq, len(prompt_ids)))
        err = np.abs(want - got).max(-1)
        assert err.max() <= 0.5, f"{prompt!r}: int8 logits {err.max():.3f} from HF's"
        agree += int(np.sum(want.argmax(-1) == got.argmax(-1)))
        steps += len(hf)
        if hf != ids:
            i = next(i for i, (a, b) in enumerate(zip(hf, ids)) if a != b)
            margin = float(np.diff(np.sort(want[i])[-2:])[0])
            assert margin < err[i], f"{prompt!r}: leaves HF at step {i} with margin {margin:.3f} > error {err[i]:.3f}"
    assert agree >= 0.9 * steps, f"int8 picks HF's token at {agree}/{steps} steps"


def test_conversation_uses_the_chat_template(tiny_bundle, engine_for, simulate):
    engine, pipeline = engine_for(tiny_bundle), simulate(tiny_bundle)
    prompt = "Tell me about lists."
    ids = simulator_greedy(pipeline, prompt, template=True)
    conv = engine.create_conversation(sampler_config=_greedy_config(), max_output_tokens=len(ids))
    try:
        message = {"role": "user", "content": [{"type": "text", "text": prompt}]}
        assert conv.render_message_to_string(message) == pipeline.model.chat_template.replace("{prompt}", prompt)
        reply = conv.send_message(message)
    finally:
        conv.close()
    content = reply["content"]
    text = content if isinstance(content, str) else "".join(c.get("text", "") for c in content)
    assert text == engine.detokenize(ids)


# ----------------------------------------------------------------------------- scoring


def _logprobs(logits: np.ndarray, targets) -> np.ndarray:
    x = np.asarray(logits, np.float64)
    x = x - x.max(-1, keepdims=True)
    lp = x - np.log(np.exp(x).sum(-1, keepdims=True))
    return lp[np.arange(len(targets)), targets]


def test_text_scoring_matches_reference(tiny_bundle, tiny_ckpt, engine_for, simulate, hf_reference):
    engine, pipeline, ref = engine_for(tiny_bundle), simulate(tiny_bundle), hf_reference(tiny_ckpt)
    prompt, target = PROMPTS[1], " It stops at the end."
    ids = pipeline.prompt_ids(prompt, apply_template=False)
    tgt = pipeline.tokenizer.encode(target)
    assert engine.tokenize(target) == tgt

    def reference(context):
        return _logprobs(ref.logits(context + tgt, pipeline.tokenizer.sp_vocab_size)[len(context) - 1: -1], tgt)

    def runtime(extra_prefill=()):
        session = engine.create_session(apply_prompt_template=False)
        try:
            for text in (prompt, *extra_prefill):
                session.run_prefill([text])
            r = session.run_text_scoring([target], store_token_lengths=True)
        finally:
            session.close()
        assert r.token_lengths == [len(tgt)]
        assert r.scores[0] == pytest.approx(sum(r.token_scores[0]), abs=1e-3)
        return np.array(r.token_scores[0])

    true, dropped = reference(ids), reference(ids[:-2] + ids[-1:])
    assert np.mean(np.abs(true - dropped)) > 10 * LOGPROB_TOL, "dropping a prompt token must be visible here"
    # As called: the runtime scores without the second-to-last prompt token, exactly.
    np.testing.assert_allclose(runtime(), dropped, atol=LOGPROB_TOL, rtol=0)
    # Workaround: prefill the last prompt piece once more; the runtime then overwrites the
    # duplicate and the scores are the true conditional log-likelihoods.
    last_piece = engine.detokenize(ids[-1:])
    assert engine.tokenize(last_piece) == ids[-1:]
    np.testing.assert_allclose(runtime([last_piece]), true, atol=LOGPROB_TOL, rtol=0)


# ----------------------------------------------------------------------------- rejection


def _flip(path: Path, offset: int) -> None:
    with open(path, "r+b") as f:
        f.seek(offset)
        byte = f.read(1)
        f.seek(offset)
        f.write(bytes([byte[0] ^ 0xFF]))


def test_corrupted_section_is_rejected(tiny_bundle, tmp_path, capsys):
    from edge.commands.inspect import inspect_litertlm

    bad = tmp_path / "corrupt.litertlm"
    shutil.copyfile(tiny_bundle, bad)
    dec = read_bundle(bad).find("TFLiteModel", "prefill_decode")[0]
    _flip(bad, dec.begin + dec.size // 2)  # inside the weights: the flatbuffer still parses
    problems = check(read_bundle(bad))
    assert len(problems) == 1 and "section 3 (TFLiteModel/prefill_decode)" in problems[0]
    assert "corrupted" in problems[0]
    assert inspect_litertlm(bad) == 1
    assert "verification: FAILED" in capsys.readouterr().out
    with pytest.raises(LitertLmError, match=r"prefill_decode\): sha256 .* corrupted"):
        load_pipeline(bad)


def test_truncated_or_foreign_file_is_rejected(tiny_bundle, tmp_path):
    cut = tmp_path / "cut.litertlm"
    cut.write_bytes(tiny_bundle.read_bytes()[: tiny_bundle.stat().st_size // 2])
    with pytest.raises(LitertLmError, match="outside the payload area"):
        read_bundle(cut)
    with pytest.raises(LitertLmError, match="outside the payload area"):
        load_pipeline(cut)
    foreign = tmp_path / "notes.litertlm"
    foreign.write_text("not a bundle")
    with pytest.raises(LitertLmError, match="not a .litertlm file"):
        load_pipeline(foreign)
    garbled = tmp_path / "garbled.litertlm"
    data = bytearray(tiny_bundle.read_bytes())
    data[40:400] = bytes(360)  # zero the header flatbuffer's tables
    garbled.write_bytes(bytes(data))
    assert check(read_bundle(garbled)), "a zeroed header table must not pass as a bundle"
    with pytest.raises(LitertLmError, match="failed verification"):
        load_pipeline(garbled)


def _rebundle(extracted: Path, out: Path, metadata: bytes, models: list[tuple[str, str, str]],
              executor: bytes | None = None) -> Path:
    """A bundle of extracted files with chosen section types: (builder method, file, model type)."""
    from litert_lm_builder import litertlm_builder as lb

    b = lb.LitertLmFileBuilder()
    md = out.with_suffix(".pb")
    md.write_bytes(metadata)
    b.add_llm_metadata(str(md))
    if executor is not None:
        ex = out.with_suffix(".exec.pb")
        ex.write_bytes(executor)
        b.add_executor_metadata(str(ex))
    b.add_sentencepiece_tokenizer(str(extracted / "tokenizer.model"))
    for method, file, kind in models:
        getattr(b, method)(str(extracted / file), lb.TfLiteModelType("tf_lite_" + kind))
    with open(out, "wb") as f:
        b.build(f)
    return out


def test_wrong_section_types_are_rejected(tiny_bundle, tmp_path):
    ex = tmp_path / "x"
    extract(read_bundle(tiny_bundle), ex)
    metadata = llm_metadata(read_bundle(tiny_bundle)).SerializeToString()
    dec, emb, ple = "prefill_decode/decoder.tflite", "embedder/embedder.tflite", "per_layer_embedder/per_layer_embedder.tflite"

    def rebuilt(name, models):  # the new bundle and what check() finds in it
        path = _rebundle(ex, tmp_path / name, metadata, models)
        return path, "\n".join(check(read_bundle(path)))

    _, problems = rebuilt("swapped.litertlm", [
        ("add_tflite_model", dec, "prefill_decode"),
        ("add_tflite_model", emb, "per_layer_embedder"), ("add_tflite_model", ple, "embedder")])
    assert "TFLiteModel/embedder): no 'decode_embedder' signature" in problems
    assert "TFLiteModel/per_layer_embedder): no 'decode_per_layer_embedder' signature" in problems

    as_weights, problems = rebuilt("as_weights.litertlm", [
        ("add_tflite_weights", dec, "prefill_decode"),
        ("add_tflite_model", emb, "embedder"), ("add_tflite_model", ple, "per_layer_embedder")])
    assert "TFLiteWeights/prefill_decode): holds a TFLite model, not weights" in problems
    assert "no TFLiteModel section of model type prefill_decode" in problems
    with pytest.raises(LitertLmError, match="holds a TFLite model, not weights"):
        load_pipeline(as_weights)


def test_executor_metadata_must_list_every_cache(tiny_artifacts, tiny_bundle, engine_for, tmp_path):
    """A state buffer list that misses a cache makes the runtime fail every prefill with an
    opaque message; `check` names the missing caches instead."""
    from litert_lm_builder.runtime.proto import executor_metadata_pb2

    em = executor_metadata(read_bundle(tiny_bundle))
    del em.llm_executor_metadata.state_buffers[-2:]  # drop the last layer's K and V
    ex = tmp_path / "x"
    extract(read_bundle(tiny_bundle), ex)
    bad = _rebundle(ex, tmp_path / "short_state.litertlm", llm_metadata(read_bundle(tiny_bundle)).SerializeToString(), [
        ("add_tflite_model", "prefill_decode/decoder.tflite", "prefill_decode"),
        ("add_tflite_model", "embedder/embedder.tflite", "embedder"),
        ("add_tflite_model", "per_layer_embedder/per_layer_embedder.tflite", "per_layer_embedder")],
        executor=em.SerializeToString())
    assert isinstance(em, executor_metadata_pb2.ExecutorMetadata)
    problems = check(read_bundle(bad))
    assert problems == ["ExecutorMetadata omits the decoder's caches ['kv_cache_k_2', 'kv_cache_v_2'] (the runtime "
                        "fails every prefill: 'missing some output TensorBuffers')"]
    with pytest.raises(RuntimeError):
        runtime_greedy(engine_for(bad), PROMPTS[0], 4)


def test_inlined_lookup_reads_as_the_external_one(build_tiny, tmp_path):
    """external.inline (the bundle's lookups): same outputs as the model with its .weights file,
    whose table and (int4) appended scales both move; a short weights file is a clear error."""
    import shutil

    from converters.lowering.external import ExternalWeightsError, inline
    from edge.runtime.litert_model import CompiledModelFile

    d = build_tiny("int4")
    inline(d / "per_layer_embedder.tflite", tmp_path / "ple.tflite")
    ids = np.array([[0, 5, 17, 2, 40, 63, 1, 9]], np.int32)
    outs = []
    for path in (d / "per_layer_embedder.tflite", tmp_path / "ple.tflite"):
        model = CompiledModelFile(path)
        try:
            outs.append(model.run_arrays("prefill_per_layer_embedder_8", {"token_ids": ids}))
        finally:
            model.close()
    assert outs[0] and outs[0].keys() == outs[1].keys()
    for k in outs[0]:
        assert np.abs(outs[0][k]).max() > 0
        np.testing.assert_array_equal(outs[0][k], outs[1][k])
    short = tmp_path / "short"
    short.mkdir()
    shutil.copy(d / "per_layer_embedder.tflite", short)
    (short / "per_layer_embedder.weights").write_bytes((d / "per_layer_embedder.weights").read_bytes()[:100])
    with pytest.raises(ExternalWeightsError, match="ends before"):
        inline(short / "per_layer_embedder.tflite", tmp_path / "bad.tflite")
    assert not (tmp_path / "bad.tflite").exists()
