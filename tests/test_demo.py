"""`gemma3n-edge demo` end to end, as `make demo` runs it: it finishes, shows its stages and
results, fits on one screen, and carries none of the third-party noise users cannot act on."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys

import pytest

pytest.importorskip("torch")

RECORDED_MEDIA = {"picture.png": "a43464f908d6521bba159c0535cee704c05d7e64f001bba36532f572860dcb67",
                  "sentence.flac": "6e1930056a4e13dae141c782c4dd5c5d3dce4b742e6929f2e857fef09142eefe"}

# Noise seen in `make demo` before the filters (issue 15), by substring or pattern: pip's sparse
# indexes, torchao's CUDA probes, torch's pytree Enum deprecation, copyreg's LeafSpec warning,
# the native libraries' INFO logging (LiteRT "INFO:", absl "I0000 ..."/"I1203 ..."), tracebacks.
NOISE = [
    re.compile(p)
    for p in (
        r"is ignored: it is neither a file nor a directory",
        r"torchao/_C_\w+",
        r"is an Enum subclass and is now natively supported",
        r"LeafSpec",
        r"(Future|User|Deprecation|Runtime)Warning",
        r"^INFO: ",
        r"^[IW]\d{4} [\d:.]+ +\d+ ",
        r"All log messages before absl::InitializeLog",
        r"Traceback \(most recent call last\)",
    )
]


def _run_demo(workdir, *extra, env=None):
    # The console script's own entry point (edge.cli:entry), so the stderr filter is the real one.
    cmd = [sys.executable, "-c", "import sys; from edge.cli import entry; sys.exit(entry())",
           "demo", "--workdir", str(workdir), *extra]
    # Bytes, not text mode: universal newlines would turn a progress bar's "\r" into line ends.
    proc = subprocess.run(cmd, capture_output=True, timeout=900, env=env)
    return subprocess.CompletedProcess(cmd, proc.returncode, proc.stdout.decode(), proc.stderr.decode())


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    workdir = tmp_path_factory.mktemp("demo")
    env = {k: v for k, v in os.environ.items() if k not in ("GEMMA3N_EDGE_VERBOSE", "GEMMA3N_EDGE_NATIVE_LOG")}
    return workdir, _run_demo(workdir, env=env)


def _lines(proc) -> list[str]:
    # Progress bars redraw with "\r" inside one line; a line is what ends in "\n" (blank ones too).
    return (proc.stdout + proc.stderr).split("\n")


def test_demo_runs_and_shows_every_stage(demo):
    workdir, proc = demo
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = proc.stdout
    for stage in ("== 1/5 checkpoint", "== 2/5 build", "== 3/5 the same model.litertlm", "== 4/5 three-way parity",
                  "== 5/5 to the phone", "simulator:", "engine:", "result: PASS", "gemma3n-edge install"):
        assert stage in out, stage
    report = json.loads((workdir / "parity.json").read_text())
    assert report["ok"] and (workdir / "parity.html").is_file()
    assert {c["name"] for c in report["cases"]} == {"text", "image", "audio"}
    assert all(c["pairs"]["simulator/engine"]["equal"] for c in report["cases"])


def test_demo_summary_has_three_modalities_engine_equal_simulator(demo):
    workdir, proc = demo
    summary = json.loads((workdir / "summary.json").read_text())
    bundle = workdir / "artifacts" / "model.litertlm"
    assert summary["bundle_bytes"] == bundle.stat().st_size and summary["recipe"] == "int8"
    for kind in ("text", "image", "audio"):
        r = summary[kind]
        assert r["prompt"] and r["equal"] is True, (kind, r)
        assert r["simulator"]["token_ids"] and r["simulator"]["text"] == r["engine"]["text"], (kind, r)
        assert r["engine"]["token_ids"]
    assert summary["image"]["images"] and summary["audio"]["audio"]


def test_demo_media_are_the_committed_files():
    """Made once by tools/make_demo_media.py (espeak-ng + Pillow); pinned so a change is deliberate."""
    import hashlib
    from pathlib import Path

    import edge

    data = Path(edge.__file__).parent / "data"
    digests = {f: hashlib.sha256((data / f).read_bytes()).hexdigest() for f in ("picture.png", "sentence.flac")}
    assert digests == RECORDED_MEDIA, digests


def test_demo_output_fits_on_one_screen_without_noise(demo):
    _, proc = demo
    lines = _lines(proc)
    assert len(lines) <= 60, "\n".join(lines)
    noisy = [ln for ln in lines if any(p.search(ln) for p in NOISE)]
    assert not noisy, "\n".join(noisy)


def test_the_noise_check_can_fail():
    # The same patterns flag the lines the demo printed before the filters existed.
    before = [
        "WARNING: Location 'file:///opt/pypi/simple/torch/' is ignored: it is neither a file nor a directory.",
        "Failed to load /x/.venv/lib/python3.11/site-packages/torchao/_C_mxfp8.cpython-310-x86_64-linux-gnu.so: ...",
        "W1203 13:13:23.788000 3382 torch/utils/_pytree.py:630] <enum 'KernelPreference'> is an Enum subclass and "
        "is now natively supported by torch.compile as an opaque value type.",
        "/usr/lib/python3.11/copyreg.py:105: FutureWarning: `isinstance(treespec, LeafSpec)` is deprecated",
        "INFO: [environment.cc:36] Creating LiteRT environment with options",
        "I0000 00:00:1764767603.788000    3382 port.cc:153] oneDNN custom operations are on.",
    ]
    assert all(any(p.search(ln) for p in NOISE) for ln in before)
