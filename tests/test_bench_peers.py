"""tools/bench_peers.py: the table renderer and failure reporting on hand-made results, then the real
tool on the tiny trained model for our own exporter only (the peers take minutes: a benchmark's job)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tools"))
import bench_peers  # noqa: E402

HEADER = ("| exporter | wall s | peak RSS MiB | bundle bytes | modalities | engine loads "
          "| greedy = HF (agree/N, first diff) |")


def _prompt(agree: int, first: int | None, same: bool = True) -> dict:
    return {"prompt": "p", "prompt_tokens": 11, "tokens": 16, "compared": 16, "same_prompt_ids": same,
            "agree": agree, "first_difference": first, "engine_text": "", "hf_text": ""}


def _row(name: str, **kw) -> dict:
    row = {"exporter": name, "version": "1.0", "recipe": "fp32", "command": name, "exit_code": 0, "timed_out": False,
           "wall_s": 12.34, "peak_rss_mib": 900.4, "stderr_tail": [], "error": None,
           "load_avg": {"before": [1.0, 1.0, 1.0], "after": [1.1, 1.0, 1.0]}, "bundle": f"build/{name}.litertlm",
           "bundle_bytes": 3_057_188, "modalities": ["text"], "bundle_problems": [],
           "engine": {"loads": True, "error": None, "prompts": [_prompt(16, None), _prompt(16, None)]}}
    return row | kw


def test_table_renders_each_exporter_and_a_failed_one():
    record = {"exporters": [
        _row("ours"),
        _row("litert-torch", recipe="none", modalities=["text", "vision"],
             engine={"loads": True, "error": None, "prompts": [_prompt(5, 5), _prompt(16, None, same=False)]}),
        _row("odd", engine={"loads": False, "error": "LiteRT-LM could not load x: bad section"}),
        _row("hf-to-litertlm", recipe="int8", exit_code=1, error="FAIL fetch: not a repo id", bundle=None,
             bundle_bytes=None, modalities=None, engine=None),
    ]}
    lines = bench_peers.table(record).splitlines()
    assert lines[0] == HEADER and lines[1] == "|---|---|---|---|---|---|---|"
    assert lines[2] == "| ours 1.0 (fp32) | 12.3 | 900 | 3,057,188 | text | yes | 16/16; 16/16 |"
    assert lines[3] == ("| litert-torch 1.0 (none) | 12.3 | 900 | 3,057,188 | text,vision | yes | "
                        "5/16, first diff 5; 16/16 (other prompt ids) |")
    assert "| no: LiteRT-LM could not load x: bad section | — |" in lines[4]
    assert lines[5] == ("| hf-to-litertlm 1.0 (int8): **failed: FAIL fetch: not a repo id** | 12.3 | 900 | — | — "
                        "| — | — |")
    assert [bench_peers.status(r) for r in record["exporters"]] == ["ok", "ok", "ok",
                                                                    "failed: FAIL fetch: not a repo id"]


def test_failed_exporters_are_reported_as_failed(tmp_path):
    py = sys.executable
    bad = bench_peers.measure([py, "-c", "import sys; print('Traceback', file=sys.stderr); "
                                         "print('ValueError: no such model', file=sys.stderr); sys.exit(3)"],
                              60, tmp_path / "bad.log")
    assert bad["exit_code"] == 3 and bad["error"] == "ValueError: no such model"
    assert bad["stderr_tail"] == ["Traceback", "ValueError: no such model"] and bad["peak_rss_mib"] > 0
    assert bench_peers.status(bad) == "failed: ValueError: no such model"

    slow = bench_peers.measure([py, "-c", "import time; time.sleep(60)"], 1, tmp_path / "slow.log")
    assert slow["timed_out"] and slow["wall_s"] < 30 and bench_peers.status(slow) == "failed: timed out after 1 s"

    killed = bench_peers.measure([py, "-c", "import os, signal; os.kill(os.getpid(), signal.SIGKILL)"], 60,
                                 tmp_path / "oom.log")
    assert killed["exit_code"] == -9 and bench_peers.status(killed).startswith("failed: killed by SIGKILL")

    missing = bench_peers.measure([str(tmp_path / "no-such-exporter")], 60, tmp_path / "missing.log")
    assert bench_peers.status(missing).startswith("failed: ")
    ok = bench_peers.measure([py, "-c", "pass"], 60, tmp_path / "ok.log")
    assert bench_peers.status(ok | {"bundle": None}) == "failed: exit 0 but no .litertlm written"
    assert bench_peers.status(ok | {"bundle": "x.litertlm"}) == "ok"


def test_a_broken_bundle_does_not_load(tmp_path):
    pytest.importorskip("litert_lm")
    junk = tmp_path / "junk.litertlm"
    junk.write_bytes(b"LITERTLM" + bytes(100))
    ref = tmp_path / "ref.json"
    ref.write_text(json.dumps({"prompts": []}))
    got = bench_peers._json_child(["engine", str(junk), str(ref)], 120)
    assert got["loads"] is False and got["error"]


def test_smoke_ours_on_the_trained_tiny_model(trained_ckpt, tmp_path):
    """The real tool, our exporter only: the record's fields, and fp32 greedy = HF 16/16 on every prompt;
    then the same check against a tampered reference must find the planted difference."""
    pytest.importorskip("litert_lm")
    pytest.importorskip("transformers")
    out = tmp_path / "rec.json"
    proc = subprocess.run([sys.executable, str(ROOT / "tools/bench_peers.py"), str(trained_ckpt), "--label", "tiny",
                           "--recipe", "fp32", "--modalities", "text", "--prefill", "8", "--context", "64",
                           "--exporters", "ours", "--work", str(tmp_path / "w"), "--out", str(out)],
                          capture_output=True, text=True, timeout=600, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr[-3000:]
    r = json.loads(out.read_text())
    for key in ("tool", "command", "commit", "date", "machine", "checkpoint", "label", "recipe", "notes"):
        assert r[key] not in (None, ""), key
    assert r["tool"] == "tools/bench_peers.py" and r["reference_error"] is None and r["machine"]["cores"]
    (ours,) = r["exporters"]
    assert ours["exporter"] == "ours" and bench_peers.status(ours) == "ok", ours["stderr_tail"]
    assert ours["wall_s"] > 0 and ours["peak_rss_mib"] > 0 and ours["bundle_bytes"] > 0
    assert ours["modalities"] == ["text"] and ours["bundle_problems"] == []
    assert all(len(ours["load_avg"][k]) == 3 for k in ("before", "after"))
    assert ours["engine"]["loads"] and len(ours["engine"]["prompts"]) == 2
    for p in ours["engine"]["prompts"]:
        assert p["same_prompt_ids"] and p["compared"] == 16 and p["agree"] == 16 and p["first_difference"] is None, p
    assert "| 16/16; 16/16 |" in proc.stdout

    ref = json.loads((tmp_path / "w/reference.json").read_text())
    ref["prompts"][0]["hf"][3] = (ref["prompts"][0]["hf"][3] + 1) % 1000 + 3  # another ordinary text id
    (tmp_path / "tampered.json").write_text(json.dumps(ref))
    got = bench_peers._json_child(["engine", str(ROOT / ours["bundle"]), str(tmp_path / "tampered.json")], 300)
    assert (got["prompts"][0]["agree"], got["prompts"][0]["first_difference"]) == (3, 3)
    assert got["prompts"][1]["first_difference"] is None
