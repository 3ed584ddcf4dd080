"""Random full-size checkpoints (on a tiny shape), decode physics, device budgets, bench JSON."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]


# ----------------------------------------------------------------------------- random checkpoints


@pytest.fixture(scope="module")
def tiny_config():
    from converters.gemma3n.config import Gemma3nConfig
    from converters.tiny import tiny_config as hf_tiny

    return Gemma3nConfig.from_hf(hf_tiny("tiny"))


def _bf16_to_f32(bits: np.ndarray) -> np.ndarray:
    return (bits.astype(np.uint32) << 16).view(np.float32)


def test_random_checkpoint_streams_shards_and_loads_strictly(tiny_config, tmp_path):
    from converters.checkpoint import CheckpointReader, expected_tensors
    from converters.random_checkpoint import write_random_checkpoint

    block = 1 << 16
    report = write_random_checkpoint(tiny_config, tmp_path / "a", seed=3, max_shard_bytes=300_000,
                                     block_bytes=block, tokenizer=False)
    # Many shards, each within the limit unless it holds a single larger tensor (HF's rule).
    assert len(report.shards) > 3
    index = json.loads((tmp_path / "a" / "model.safetensors.index.json").read_text())
    expected = expected_tensors(tiny_config)
    assert set(index["weight_map"]) == set(expected)
    for shard in report.shards:
        names = [n for n, f in index["weight_map"].items() if f == shard]
        data = sum(2 * math.prod(expected[n]) for n in names)
        assert data <= 300_000 or len(names) == 1, (shard, data, len(names))
    assert index["metadata"]["total_size"] == sum(2 * math.prod(s) for s in expected.values())
    # Streaming: no generated block was larger than asked (every tiny row is far below it).
    assert 0 < report.max_block_bytes <= block
    reader = CheckpointReader(tmp_path / "a")
    reader.verify(tiny_config)  # strict: no missing, unexpected or mis-shaped tensor
    assert {reader.dtype(n) for n in reader.names()} == {"BF16"}
    assert not any(p.name.endswith(".tmp") for p in (tmp_path / "a").iterdir())


def test_random_values_are_sane_and_independent_of_sharding(tiny_config, tmp_path):
    from converters.checkpoint import CheckpointReader
    from converters.random_checkpoint import write_random_checkpoint

    write_random_checkpoint(tiny_config, tmp_path / "a", seed=1, max_shard_bytes=300_000, tokenizer=False)
    write_random_checkpoint(tiny_config, tmp_path / "b", seed=1, tokenizer=False)  # one shard
    a, b = CheckpointReader(tmp_path / "a"), CheckpointReader(tmp_path / "b")
    assert len(b.files) == 1 and len(a.files) > 1
    norm = "model.language_model.layers.0.input_layernorm.weight"
    mat = "model.language_model.layers.0.mlp.gate_proj.weight"
    for name in (norm, mat, "model.language_model.embed_tokens.weight"):
        assert a.tensor(name).equal(b.tensor(name))  # per-tensor seeding: the layout does not matter
    # Norm weights near 1, matrices N(0, 0.02): 2000+ samples put the std within ~10% of 0.02.
    assert abs(float(a.tensor(norm).mean()) - 1.0) < 0.01
    w = a.tensor(mat)
    assert abs(float(w.std()) - 0.02) < 0.002 and abs(float(w.mean())) < 0.002
    write_random_checkpoint(tiny_config, tmp_path / "c", seed=2, tokenizer=False)
    assert not CheckpointReader(tmp_path / "c").tensor(mat).equal(w)


def test_random_checkpoint_refuses_non_empty_dir_and_bad_shape(tiny_config, tmp_path):
    from converters.random_checkpoint import RandomCheckpointError, shape_config, write_random_checkpoint

    (tmp_path / "x").mkdir()
    (tmp_path / "x" / "model-00001-of-00002.safetensors").write_bytes(b"old")
    with pytest.raises(RandomCheckpointError, match="not empty"):
        write_random_checkpoint(tiny_config, tmp_path / "x", tokenizer=False)
    with pytest.raises(RandomCheckpointError, match="E4B, E2B"):
        shape_config("E3B")
    with pytest.raises(RandomCheckpointError, match="1 to 30 layers"):
        shape_config("E2B", 31)


def test_fewer_layers_keep_the_widths_and_a_valid_shared_tail():
    from converters.random_checkpoint import shape_config

    full = shape_config("E2B").text
    ten = shape_config("E2B", 10).text
    assert (ten.hidden_size, ten.intermediate_size[0], ten.vocab_size) == (full.hidden_size, 8192, full.vocab_size)
    assert ten.num_hidden_layers == 10 and ten.num_kv_shared_layers == 3  # 10 of 30 shared, in proportion
    five = shape_config("E2B", 5).text  # one shared layer would be the only full one: none is shared
    assert five.num_hidden_layers == 5 and five.num_kv_shared_layers == 0


def test_bf16_rounding_matches_torch():
    import torch

    from converters.random_checkpoint import to_bf16

    x = np.random.default_rng(0).standard_normal(10_000).astype(np.float32) * 37
    x[:4] = [0.0, -0.0, 1e-40, 3.4e38]
    ours = to_bf16(x)
    ref = torch.from_numpy(x).to(torch.bfloat16).view(torch.int16).numpy().view(np.uint16)
    assert np.array_equal(ours, ref)


def test_plan_shards_gives_an_oversized_tensor_its_own_shard():
    from converters.random_checkpoint import plan_shards

    tensors = [("a", (10,)), ("b", (10,)), ("big", (100,)), ("c", (10,)), ("d", (10,))]
    shards = plan_shards(tensors, max_shard_bytes=50)  # bf16: a = 20 bytes, big = 200
    assert [tuple(n for n, _ in s.tensors) for s in shards] == [("a", "b"), ("big",), ("c", "d")]
    assert [s.file for s in shards] == [f"model-0000{i}-of-00003.safetensors" for i in (1, 2, 3)]


def test_shapes_match_the_published_configs():
    from converters.matformer import param_count, slice_config
    from converters.random_checkpoint import shape_config

    e4b, e2b = shape_config("E4B"), shape_config("E2B")
    # E2B is E4B sliced with Google's E2B preset (30 layers, FFN 8192, 10 KV-shared layers).
    assert slice_config(e4b, "E2B").text == e2b.text
    assert (e2b.text.num_hidden_layers, e2b.text.intermediate_size[0], e2b.text.num_kv_shared_layers) == (30, 8192, 10)
    assert e2b.dtype == "bfloat16"
    assert param_count(e2b) is not None


def test_synthetic_tokenizer_has_gemma_ids_and_round_trips():
    import sentencepiece as spm

    from converters.random_checkpoint import synth_sentencepiece

    sp = spm.SentencePieceProcessor(model_proto=synth_sentencepiece())
    assert sp.get_piece_size() == 262_144
    assert (sp.pad_id(), sp.eos_id(), sp.bos_id(), sp.unk_id()) == (0, 1, 2, 3)
    for piece, i in (("<mask>", 4), ("<start_of_turn>", 105), ("<end_of_turn>", 106),
                     ("<start_of_image>", 255_999), ("<start_of_audio>", 256_000)):
        assert sp.piece_to_id(piece) == i
    text = "<start_of_turn>user\nHello, wörld 42!<end_of_turn>\n"
    ids = sp.encode(text)
    assert ids[0] == 105 and 106 in ids  # user-defined pieces are matched inside text
    assert sp.decode(ids) == text  # byte fallback covers what the filler pieces do not


# ----------------------------------------------------------------------------- physics and budgets


def test_decode_traffic_matches_the_model_shapes(tiny_artifacts, tiny_ckpt):
    """fp32 tiny artifacts: every number recomputed from the config, independently of the files."""
    import torch

    from converters.gemma3n.config import Gemma3nConfig
    from converters.components.text import text_vocab
    from converters.gemma3n.decoder import TextDecoder
    from edge.bench import decode_traffic, signature_weights

    cfg = Gemma3nConfig.from_hf(tiny_ckpt).text
    t = decode_traffic(tiny_artifacts)
    with torch.device("meta"):
        dec = TextDecoder(cfg, text_vocab(tiny_ckpt, cfg))  # the head scores the tokenizer's ids only
    params = sum(p.numel() for p in dec.parameters())  # tied head counted once, as stored once
    consts = signature_weights(Path(tiny_artifacts) / "decoder.tflite", "decode")
    spliced = sum(w.nbytes for w in consts if w.name.startswith("decode/"))  # splice.py's names
    assert spliced == 4 * params
    # The rest are the graph's own constants (shape vectors, RoPE tables): read too, but small.
    assert 0 <= t.decoder_weight_bytes - spliced < 0.01 * spliced
    assert t.embedding_row_bytes == 4 * cfg.hidden_size
    assert t.ple_row_bytes == 4 * cfg.num_hidden_layers * cfg.hidden_size_per_layer_input
    # A sliding layer's cache is read through a SLICE of window + T - 1 rows (decode: the window),
    # a full-attention layer's cache all 96 rows; both are written whole.
    row = 2 * cfg.num_key_value_heads * cfg.head_dim * 4  # K and V, one position
    kinds = [cfg.layer_types[i] for i in dec.cache_layers]
    assert 0 < kinds.count("sliding_attention") < len(kinds)  # the tiny model has both kinds
    assert t.kv_write_bytes == len(kinds) * 96 * row
    assert t.kv_read_bytes == sum((cfg.sliding_window if k == "sliding_attention" else 96) * row for k in kinds)
    assert t.read_bytes == t.decoder_weight_bytes + t.embedding_row_bytes + t.ple_row_bytes + t.kv_read_bytes


def test_a_cache_read_other_than_by_slices_counts_whole(tmp_path_factory):
    """The toy decoder attends over its whole caches (no SLICE): every byte of each is read."""
    from edge.bench import cache_read_bytes
    from edge.format.tflite import read_signatures
    from toy_artifacts import session_toy

    path = session_toy(tmp_path_factory).dir / "decoder.tflite"
    sig = read_signatures(path)["decode"]
    caches = [n for n in sig.inputs if n.startswith("kv_cache_")]
    got = cache_read_bytes(path, "decode", caches)
    assert caches and got == {n: math.prod(sig.inputs[n].shape) * 4 for n in caches}


def test_device_budget_splits_resident_and_mapped(tiny_artifacts):
    from edge.bench import DEVICES, decode_traffic, device_budget

    files = {p.name: p.stat().st_size for p in Path(tiny_artifacts).iterdir()}
    dev = replace(DEVICES["s24"], bandwidth_bytes_per_s=1e9)
    b = device_budget(tiny_artifacts, dev)
    t = decode_traffic(tiny_artifacts)
    assert b["resident_bytes"]["prefill_decode"] == files["decoder.tflite"]
    assert b["mmapped_total_bytes"] == sum(files[f] for f in ("embedder.tflite", "embedder.weights",
                                                              "per_layer_embedder.tflite", "per_layer_embedder.weights"))
    assert b["resident_bytes"]["kv_caches (2 ping-pong sets)"] == 2 * t.kv_write_bytes > 2 * t.kv_read_bytes
    assert b["resident_total_bytes"] == pytest.approx(sum(b["resident_bytes"].values()))
    assert b["decode"]["bound_tok_s"] == pytest.approx(1e9 / t.read_bytes)
    assert b["device"]["sources"]  # every assumption carries its source


def test_bench_cli_json_and_errors(tiny_artifacts, tmp_path, capsys):
    from edge.cli import main

    out = tmp_path / "b.json"
    assert main(["bench", str(tiny_artifacts), "--device", "pixel8", "--json", str(out)]) == 0
    doc = json.loads(out.read_text())
    assert [d["device"]["name"] for d in doc["devices"]] == ["pixel8"]
    assert doc["decode_traffic"]["read_bytes"] > doc["decode_traffic"]["decoder_weight_bytes"] > 0
    assert doc["google_bundle"] is None  # the tiny model has no published counterpart
    printed = capsys.readouterr().out
    assert "assumption:" in printed and "source:" in printed and "decode bound" in printed
    assert main(["bench", str(tiny_artifacts), "--bandwidth-gbs", "-1"]) == 1
    assert "must be positive" in capsys.readouterr().err
    assert main(["bench", str(tmp_path)]) == 1  # no manifest: a clear error, not a traceback


def test_bench_reads_a_bundle_as_it_reads_the_directory(tiny_artifacts):
    """`bench model.litertlm` (any exporter's bundle) measures what the artifact directory does."""
    from edge.bench import component_sizes, decode_traffic, device_budget

    bundle = Path(tiny_artifacts) / "model.litertlm"
    assert decode_traffic(bundle) == decode_traffic(tiny_artifacts)
    by_dir, by_bundle = component_sizes(tiny_artifacts), component_sizes(bundle)
    assert by_bundle["bundle_bytes"] == bundle.stat().st_size
    assert set(by_bundle["components"]) == {c["kind"] for c in by_dir["components"].values()}
    for c in by_dir["components"].values():  # the same bytes, stored as sections (alignment padding aside)
        assert by_bundle["components"][c["kind"]]["bytes"] == pytest.approx(c["bytes"], abs=64 * 1024)
    assert device_budget(bundle, "pixel8")["decode"] == device_budget(tiny_artifacts, "pixel8")["decode"]


def test_measure_bandwidth_reports_a_plausible_rate():
    from edge.bench import measure_bandwidth

    r = measure_bandwidth(nbytes=32 << 20, repeats=2, threads=2)
    assert 1e8 < r["bytes_per_s"] < 1e13  # anything outside is a unit error, not a slow machine


def test_tools_bench_json_schema(tiny_artifacts, tiny_ckpt, tmp_path):
    """tools/bench.py end to end on tiny artifacts: simulator, LiteRT-LM and HF, each in its own process."""
    assert (Path(tiny_artifacts) / "model.litertlm").is_file()  # build writes the bundle by default
    out = tmp_path / "bench.json"
    # Other tests run the LiteRT-LM engine on this shared bundle too (its weight cache lands beside
    # it), so what is checked is that the bench itself adds nothing to the artifact directory.
    before = {p.name for p in Path(tiny_artifacts).iterdir()}
    cmd = [sys.executable, str(ROOT / "tools/bench.py"), str(tiny_artifacts), "--json", str(out), "--litertlm",
           "--reference", str(tiny_ckpt), "--prefill", "8,16", "--decode-tokens", "4", "--threads", "1",
           "--repeats", "2", "--bandwidth-bytes", str(16 << 20)]
    subprocess.run(cmd, check=True, cwd=ROOT, capture_output=True, timeout=300)
    doc = json.loads(out.read_text())
    assert {p.name for p in Path(tiny_artifacts).iterdir()} == before  # kept clean
    for system in ("simulator", "litertlm", "hf"):
        s = doc["systems"][system]
        assert "error" not in s, s.get("error")
        assert set(s["prefill"]) == {"8", "16"} and s["peak_rss_mib"] > 0
        assert all(len(p["all_prefill_s"]) == 2 for p in s["prefill"].values())  # --repeats kept
        assert s["decode"]["tok_s"] > 0 and all(p["prefill_tok_s"] > 0 for p in s["prefill"].values())
    r = doc["ratios"]["simulator/hf"]
    sim, hf = doc["systems"]["simulator"], doc["systems"]["hf"]
    assert r["decode_tok_s"] == pytest.approx(sim["decode"]["tok_s"] / hf["decode"]["tok_s"])
    phys = doc["physics"]
    assert phys["artifact_decode_bound_tok_s"] == pytest.approx(
        phys["bandwidth_bytes_per_s"] / phys["decode_traffic"]["read_bytes"])
    assert phys["fraction_of_bound"]["simulator"] == pytest.approx(sim["decode"]["tok_s"] / phys["artifact_decode_bound_tok_s"])
    assert doc["sizes"]["artifacts_total_bytes"] > 0


def test_bench_adapter_smoke(tmp_path):
    """tools/bench_adapter.py on the tiny model: the record has both kinds of build and its verdict."""
    sys.path.insert(0, str(ROOT / "tools"))
    import bench_adapter

    out = tmp_path / "r.json"
    # The exit status is the record's verdict; on a 0.5 MiB adapter a single repeat's noise can
    # exceed it, so the smoke test checks the record, not the measurement (a benchmark's job).
    rc = bench_adapter.main(["--smoke", "--repeats", "1", "--work", str(tmp_path / "w"), "--json", str(out)])
    r = json.loads(out.read_text())
    assert rc == (0 if r["within_adapter_size"] else 1)
    assert sorted(x["adapter"] for x in r["runs"]) == [False, True]
    assert all(x["peak_rss_mib"] > 0 and x["peak_anon_mib"] > 0 for x in r["runs"])
    assert r["adapter_bytes"] > 0 and r["machine"]["cores"] and isinstance(r["within_adapter_size"], bool)


def test_check_runtimes_smoke(tiny_bundle, tmp_path):
    """tools/check_runtimes.py with the venv's own runtime (no download): a row per case, the verdict."""
    out = tmp_path / "r.json"
    proc = subprocess.run([sys.executable, str(ROOT / "tools/check_runtimes.py"), str(tiny_bundle), "--versions",
                           "installed", "--json", str(out)], capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    r = json.loads(out.read_text())
    (row,) = r["results"]  # text only: the tiny bundle has no towers
    assert row["ok"] and row["case"] == "text" and row["answer"]
    assert r["oldest_same"] == {"text": "installed"} and r["machine"]["cores"]


def test_bench_record_smoke(tmp_path):
    """tools/bench_record.py on the tiny model: one record with every field the speed issue lists."""
    out = tmp_path / "rec.json"
    proc = subprocess.run([sys.executable, str(ROOT / "tools/bench_record.py"), "--smoke", "--work",
                           str(tmp_path / "art"), "--out", str(out)], capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    r = json.loads(out.read_text())
    for key in ("tool", "commit", "date", "machine", "shape", "recipe", "modalities", "bundle_bytes", "threads",
                "load_avg", "cpu_flags"):
        assert r[key] not in (None, ""), key
    assert r["build"]["wall_s"] > 0 and r["build"]["peak_rss_mib"] > 0
    assert r["engine"]["decode_tok_s"] > 0 and r["engine"]["prefill_tok_s"] > 0 and r["engine"]["peak_rss_mib"] > 0
    assert r["simulator"]["decode_tok_s"] > 0 and r["simulator"]["peak_rss_mib"] > 0
    assert r["bound"]["decode_tok_s"] > 0


def test_benchmarks_md_lists_the_latest_record_per_configuration(tmp_path, monkeypatch):
    sys.path.insert(0, str(ROOT / "tools"))
    import benchmarks_md

    def rec(date, decode):
        return {"tool": "tools/bench_record.py", "command": f"run {date}", "commit": "abc", "date": date,
                "machine": {"cpu": "CPU X", "cores": 2, "ram_gib": 8}, "cpu_flags": ["avx2"], "shape": "E2B",
                "recipe": "int4", "modalities": ["text"], "threads": 1, "bundle_bytes": 3_000_000_000,
                "build": {"wall_s": 100, "peak_rss_mib": 2000},
                "engine": {"prefill_tok_s": 50, "decode_tok_s": decode, "peak_rss_mib": 2400},
                "simulator": {"decode_tok_s": 2, "peak_rss_mib": 5000}, "bound": {"decode_tok_s": 20},
                "load_avg": {"engine": [[0.5, 0.5, 0.5], [0.6, 0.6, 0.6]]}}
    (tmp_path / "a.json").write_text(json.dumps(rec("2026-12-01 10:00", 3.0)))
    (tmp_path / "b.json").write_text(json.dumps(rec("2026-12-02 10:00", 7.0)))
    monkeypatch.setattr(benchmarks_md, "BENCHMARKS", tmp_path)
    text = benchmarks_md.render()
    assert "50.0 / 7.00" in text and "35 %" in text  # the newer record: decode 7 of a 20 tok/s bound
    assert "50.0 / 3.00" not in text and "`run 2026-12-02 10:00`" in text
