"""Issue 17, data loss: `build --out` and `--export-hf` never replace or delete what the tool did not write."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from edge.errors import UserError
from edge.format.manifest import owned_files
from edge.outdir import check_out_dir, clean_stale, make_staging, swap_in

pytest.importorskip("torch")
from converters.build import BuildOptions, build  # noqa: E402

OPTS = BuildOptions(recipe="fp32", prefill=(8, 16), context=96, bundle=False, modalities=("text",))


def _snapshot(d: Path) -> list[tuple[str, bytes]]:
    return sorted((str(p.relative_to(d)), p.read_bytes() if p.is_file() else b"<dir>") for p in d.rglob("*"))


def _refused(ckpt, out, match, root):
    before = _snapshot(root)
    with pytest.raises(UserError, match=match):
        build(ckpt, out, OPTS)
    assert _snapshot(root) == before, "a refused build changed something"


def test_foreign_manifest_directory_survives_byte_for_byte(tiny_ckpt, tmp_path):
    web = tmp_path / "webapp"
    web.mkdir()
    (web / "manifest.json").write_text('{"name": "My PWA", "start_url": "/"}')
    (web / "index.html").write_text("<html></html>")
    _refused(tiny_ckpt, web, "no record of gemma3n-edge", tmp_path)


def test_old_artifact_directory_with_user_files_is_refused(tiny_artifacts, tiny_ckpt, tmp_path):
    out = tmp_path / "art"
    shutil.copytree(tiny_artifacts, out)
    (out / "NOTES.txt").write_text("my notes")
    (out / "runs").mkdir()
    (out / "runs" / "r1.json").write_text("{}")
    _refused(tiny_ckpt, out, r"also holds NOTES.txt, runs, which gemma3n-edge did not write", tmp_path)


def test_directory_holding_the_checkpoint_is_never_replaced(tiny_ckpt, tmp_path):
    work = tmp_path / "workspace"
    shutil.copytree(tiny_ckpt, work / "ckpt")
    (work / "manifest.json").write_text("{}")
    _refused(work / "ckpt", work, "which this run reads", tmp_path)
    _refused(work / "ckpt", work / "ckpt", "which this run reads", tmp_path)


def test_file_and_current_directory_are_refused(tiny_ckpt, tmp_path, monkeypatch):
    f = tmp_path / "a-file"
    f.write_text("x")
    _refused(tiny_ckpt, f, "is a file, not a directory", tmp_path)
    monkeypatch.chdir(tmp_path)
    _refused(tiny_ckpt, Path("."), "is the current directory", tmp_path)


def test_symlinked_out_is_refused(tiny_ckpt, tmp_path):
    (tmp_path / "real").mkdir()
    (tmp_path / "link").symlink_to(tmp_path / "real")
    _refused(tiny_ckpt, tmp_path / "link", "symbolic link", tmp_path)


def test_swap_removes_only_listed_files(tmp_path):
    """The old copy is removed file by file: a file that appears after the check is kept, not deleted."""
    out = tmp_path / "out"
    out.mkdir()
    (out / "a").write_text("old")
    calls = []

    def owned(d):
        calls.append(d)
        if len(calls) == 2:  # swap_in's own listing, after its check: the user drops a file in now
            (d / "late").write_text("user file")
        return {"a"}

    staging = make_staging(out)
    (staging / "a").write_text("new")
    swap_in(staging, out, owned)
    assert (out / "a").read_text() == "new" and not (out / "late").exists()
    kept = [p for p in tmp_path.iterdir() if p.name.startswith(".out.old-")]
    assert len(kept) == 1 and (kept[0] / "late").read_text() == "user file" and not (kept[0] / "a").exists()


def test_check_out_dir_rules(tmp_path):
    out = tmp_path / "o"
    check_out_dir(out, lambda d: None)  # new
    out.mkdir()
    check_out_dir(out, lambda d: None)  # empty
    (out / "x").write_text("1")
    with pytest.raises(UserError, match="holds x"):
        check_out_dir(out, lambda d: None)
    check_out_dir(out, lambda d: {"x"})  # ours, nothing else
    (out / "sub").mkdir()
    with pytest.raises(UserError, match="also holds sub"):
        check_out_dir(out, lambda d: {"x", "sub"})  # a listed name that is a directory is not ours


def test_stale_staging_of_a_dead_process_is_cleaned(tmp_path):
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    pid = int(dead.stdout)
    stale = tmp_path / f".out.building-{pid}-abcd"
    stale.mkdir()
    (stale / "decoder.tflite").write_bytes(b"half")
    old = tmp_path / f".out.old-{pid}-abcd"
    old.mkdir()
    live = tmp_path / f".out.building-{os.getpid()}-beef"  # a run still going: left alone
    live.mkdir()
    foreign = tmp_path / ".out.building-notes"  # not our pattern: left alone
    foreign.mkdir()
    assert sorted(p.name for p in clean_stale(tmp_path, "out")) == sorted([stale.name, old.name])
    assert live.exists() and foreign.exists() and not stale.exists() and not old.exists()


def test_sigterm_cleans_staging(tmp_path):
    """SIGTERM during the work (the CLI's handler) removes the staging directory before exiting."""
    script = textwrap.dedent(f"""
        import sys, time, shutil
        from pathlib import Path
        from edge.outdir import make_staging, terminate_as_interrupt
        out = Path({str(tmp_path / 'out')!r})
        with terminate_as_interrupt():
            staging = make_staging(out)
            try:
                (staging / "big").write_bytes(b"x" * 1000)
                print("ready", flush=True)
                time.sleep(60)
            except BaseException:
                shutil.rmtree(staging)
                raise
    """)
    p = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True,
                         cwd=Path(__file__).resolve().parents[1])
    assert p.stdout.readline().strip() == "ready"
    p.send_signal(signal.SIGTERM)
    assert p.wait(timeout=30) == 128 + signal.SIGTERM
    assert list(tmp_path.iterdir()) == []


def test_owned_files_needs_our_manifest(tiny_artifacts, tmp_path):
    assert owned_files(tmp_path) is None
    (tmp_path / "manifest.json").write_bytes(b"\xff\xfe not utf-8")
    assert owned_files(tmp_path) is None
    (tmp_path / "manifest.json").write_text("[" * 100_000)
    assert owned_files(tmp_path) is None
    names = owned_files(tiny_artifacts)
    assert "manifest.json" in names and "decoder.tflite" in names


def test_engine_caches_beside_our_files_are_ours(tiny_artifacts, tmp_path):
    """Runtimes write XNNPACK caches beside the bundle under version-dependent names: a rebuild
    (or `make demo` again) replaces them with the directory; anything else stays foreign."""
    import shutil

    d = tmp_path / "art"
    shutil.copytree(tiny_artifacts, d)
    cached = ["model.litertlm.vision_encoder.xnnpack_cache_1796672479_2900567", "decoder.tflite_3.xnnpack_cache"]
    for name in [*cached, "notes.xnnpack_cache_1", "model.litertlmX.xnnpack_cache"]:
        (d / name).write_bytes(b"x")
    names = owned_files(d)
    assert set(cached) <= names
    assert not {"notes.xnnpack_cache_1", "model.litertlmX.xnnpack_cache"} & names


def test_bundle_copy_of_a_killed_simulate_is_cleaned(tiny_bundle, tmp_path, monkeypatch):
    """`simulate model.litertlm` extracts to a pid-named temp dir; a dead run's copy goes on the next load."""
    import tempfile

    from edge.runtime.session import load_pipeline

    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True,
                          check=True)
    stale = tmp_path / f"gemma3n-edge-bundle-{int(dead.stdout)}-x1"
    stale.mkdir()
    (stale / "decoder.tflite").write_bytes(b"a full copy")
    pipeline, _ = load_pipeline(tiny_bundle)
    try:
        assert not stale.exists()
        (live,) = [p for p in tmp_path.iterdir() if p.name.startswith(f"gemma3n-edge-bundle-{os.getpid()}-")]
    finally:
        pipeline.close()
        del pipeline
    import gc

    gc.collect()
    assert not live.exists()
