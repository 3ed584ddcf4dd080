"""`gemma3n-edge simulate` and `gemma3n-edge inspect` end to end on the toy artifacts."""

from __future__ import annotations

import json

import numpy as np
import pytest

from edge.cli import main
from toy_artifacts import session_toy


@pytest.fixture(scope="module")
def toy(tmp_path_factory):
    return session_toy(tmp_path_factory)


def simulate(capsys, *args):
    rc = main(["simulate", *map(str, args)])
    out = capsys.readouterr()
    return rc, out.out, out.err


def test_simulate_streams_text_reports_metrics_and_writes_json(toy, tmp_path, capsys):
    f = tmp_path / "run.json"
    rc, out, err = simulate(capsys, toy.dir, "--prompt", "hello world", "--max-tokens", "10", "--json", f)
    assert rc == 0
    doc = json.loads(f.read_text())
    assert out == doc["text"] + "\n"
    for key in ("TTFT:", "prefill:", "decode:", "peak RSS:"):
        assert key in err
    m = doc["metrics"]
    assert m["prompt_tokens"] == len(doc["prompt_ids"]) and m["generated_tokens"] == len(doc["token_ids"])
    assert m["ttft_s"] > 0 and m["prefill_tokens_per_s"] > 0 and m["peak_rss_mib"] > 10
    assert doc["stop_reason"] in ("max_tokens", "stop_token")
    # greedy output is the reference model's greedy continuation
    seq = list(doc["prompt_ids"])
    for tok in doc["token_ids"]:
        assert tok == int(np.argmax(toy.reference_logits(seq)))
        seq.append(tok)


def test_simulate_sampling_is_reproducible_per_seed(toy, tmp_path, capsys):
    def run(seed, name):
        f = tmp_path / name
        args = [toy.dir, "--prompt", "hi", "--max-tokens", "12", "--temperature", "1.0", "--seed", seed, "--json", f]
        assert simulate(capsys, *args)[0] == 0
        return json.loads(f.read_text())["token_ids"]

    assert run(7, "a.json") == run(7, "b.json")
    assert run(7, "a.json") != run(8, "c.json")  # distinct seeds: same 12-token draw has negligible probability


def test_no_template_feeds_the_raw_prompt(toy, tmp_path, capsys):
    f = tmp_path / "raw.json"
    assert simulate(capsys, toy.dir, "--prompt", "hello", "--no-template", "--max-tokens", "2", "--json", f)[0] == 0
    import sentencepiece as spm

    sp = spm.SentencePieceProcessor(model_file=str(toy.dir / "tokenizer.model"))
    assert json.loads(f.read_text())["prompt_ids"] == [2] + sp.encode("hello")


def test_prompt_too_long_is_a_clean_error_unless_truncated(toy, tmp_path, capsys):
    long = "hello world " * 40
    rc, out, err = simulate(capsys, toy.dir, "--prompt", long)
    assert rc == 1 and "error: the prompt is" in err and "--truncate" in err and "Traceback" not in err
    f = tmp_path / "t.json"
    rc, out, err = simulate(capsys, toy.dir, "--prompt", long, "--truncate", "--max-tokens", "4", "--json", f)
    doc = json.loads(f.read_text())
    assert rc == 0 and "dropped the oldest" in err and len(doc["prompt_ids"]) == 56 and doc["truncated_tokens"] > 0


@pytest.mark.parametrize("args, msg", [(["--top-p", "0"], "--top-p"), (["--max-tokens", "0"], "--max-tokens"),
                                       (["--seed", "-1"], "--seed"), (["--threads", "-3"], "--threads"),
                                       (["--temperature", "nan"], "--temperature"),
                                       (["--prompt", "caf\udcff"], "--prompt is not valid UTF-8")])
def test_bad_flags_are_clean_usage_errors(toy, capsys, args, msg):
    with pytest.raises(SystemExit) as e:  # argparse's usage error: exit 2, one line, no traceback
        simulate(capsys, toy.dir, "--prompt", "x", *args)
    err = capsys.readouterr().err
    assert e.value.code == 2 and msg in err and "Traceback" not in err


def test_simulate_refuses_corrupted_artifacts(toy, tmp_path, capsys):
    d = toy.copy_to(tmp_path / "bad")
    p = d / "per_layer_embedder.tflite"
    data = bytearray(p.read_bytes())
    data[-5] ^= 0x10
    p.write_bytes(bytes(data))
    rc, _, err = simulate(capsys, d, "--prompt", "x")
    assert rc == 1 and "per_layer_embedder.tflite: sha256" in err
    rc, _, err = simulate(capsys, tmp_path / "nowhere", "--prompt", "x")
    assert rc == 1 and "no manifest.json" in err


def test_inspect_artifact_dir_and_tflite(toy, tmp_path, capsys):
    assert main(["inspect", str(toy.dir)]) == 0
    out = capsys.readouterr().out
    assert "verification: OK" in out and "prefill_decode" in out and "prefill [8, 16]" in out
    assert main(["inspect", str(toy.dir / "manifest.json")]) == 0
    capsys.readouterr()
    assert main(["inspect", str(toy.dir / "decoder.tflite")]) == 0
    out = capsys.readouterr().out
    for s in ("prefill_8", "prefill_16", "decode", "kv_cache_v_1", "float32  [1, 1, 8, 60]", "DYNAMIC_UPDATE_SLICE"):
        assert s in out
    assert out.index("prefill_8\n") < out.index("prefill_16\n") < out.index("  decode\n")
    assert main(["inspect", str(toy.dir / "embedder.tflite")]) == 0
    assert "external weights: embedder.weights (present): 1 buffers, 20.5 KiB" in capsys.readouterr().out


def test_inspect_reports_failed_verification(toy, tmp_path, capsys):
    d = toy.copy_to(tmp_path / "bad")
    (d / "embedder.tflite").unlink()
    assert main(["inspect", str(d)]) == 1
    out = capsys.readouterr().out
    assert "verification: FAILED" in out and "embedder.tflite: listed in manifest.json but missing" in out
    assert main(["inspect", str(tmp_path / "x.bin")]) == 1
    assert "no such file" in capsys.readouterr().err
    (tmp_path / "x.bin").write_bytes(b"1")
    assert main(["inspect", str(tmp_path / "x.bin")]) == 1
    assert "don't know how to inspect" in capsys.readouterr().err


# ---------------------------------------------------------------- real Gemma 3n artifacts


@pytest.fixture
def built_tiny(request):
    """fp32 artifacts of the tiny Gemma 3n checkpoint, from the suite's `tiny_artifacts` fixture when it exists."""
    try:
        art = request.getfixturevalue("tiny_artifacts")
    except pytest.FixtureLookupError:
        pytest.skip("needs a `tiny_artifacts` session fixture (tiny_ckpt built by `gemma3n-edge build --recipe fp32`)")
    from edge.format.manifest import read_manifest

    m = read_manifest(art)
    if m.recipe.get("name") != "fp32":
        pytest.skip(f"greedy agreement with transformers needs fp32 artifacts, got {m.recipe.get('name')}")
    return art, m


def test_simulator_greedy_equals_transformers_on_built_gemma3n(built_tiny, request):
    """The whole protocol (template-free ids, chunked + padded prefill, sliding window, KV sharing,
    context end) on real Gemma 3n artifacts: greedy tokens equal HF `generate`."""
    import torch
    import transformers

    from edge.runtime.session import load_pipeline
    from edge.runtime.pipeline import GenerationConfig

    art, m = built_tiny
    ckpt = m.extra.get("source", {}).get("checkpoint") or request.getfixturevalue("tiny_ckpt")
    hf = transformers.AutoModelForImageTextToText.from_pretrained(ckpt, torch_dtype=torch.float32).eval()
    pipe, _ = load_pipeline(art)
    c, longest = m.model.context_length, max(m.model.prefill_lengths)
    g = np.random.default_rng(0)
    try:
        for n in sorted({3, min(longest + 5, c - 20), c - 10}):
            ids = [m.model.tokens.bos] + [int(x) for x in g.integers(10, m.model.vocab_size_per_layer_input, n - 1)]
            r = pipe.generate(prompt_ids=ids, config=GenerationConfig(max_tokens=16))
            t = torch.tensor([ids])
            with torch.no_grad():
                out = hf.generate(input_ids=t, attention_mask=torch.ones_like(t), do_sample=False,
                                  max_new_tokens=len(r.token_ids), min_new_tokens=len(r.token_ids))
            assert out[0, n:].tolist() == list(r.token_ids), f"prompt of {n} tokens"
    finally:
        pipe.close()
