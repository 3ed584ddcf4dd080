"""Checkpoint arguments given as hub ids: resolved from the local Hugging Face cache only,
with HF_HOME honoured, and a miss names the cache searched and the download command."""

from __future__ import annotations

import shutil
import subprocess
import sys

import pytest

from edge.errors import UserError
from edge.hub import resolve_checkpoint

COMMIT = "0123456789abcdef0123456789abcdef01234567"


def _cache(home, repo, source):
    """A Hugging Face cache under `home` holding `source` as the main snapshot of `repo`."""
    root = home / "hub" / f"models--{repo.replace('/', '--')}"
    shutil.copytree(source, root / "snapshots" / COMMIT)
    (root / "refs").mkdir()
    (root / "refs" / "main").write_text(COMMIT)
    return root / "snapshots" / COMMIT


def test_hub_id_resolves_to_the_cached_snapshot(tmp_path, monkeypatch, trained_ckpt):
    snap = _cache(tmp_path / "hf", "acme/tiny-gemma", trained_ckpt)
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    monkeypatch.delenv("HF_HUB_CACHE", raising=False)
    import huggingface_hub.constants as c

    monkeypatch.setattr(c, "HF_HUB_CACHE", str(tmp_path / "hf" / "hub"))
    for arg in ("acme/tiny-gemma", f"acme/tiny-gemma@{COMMIT}"):
        src = resolve_checkpoint(arg)
        assert src.path == snap and src.repo_id == "acme/tiny-gemma" and src.revision == COMMIT
        assert src.record()["revision"] == COMMIT
    with pytest.raises(UserError, match=r"models--acme--other.*hf download acme/other"):
        resolve_checkpoint("acme/other")
    with pytest.raises(UserError, match=r"hf download acme/tiny-gemma --revision v2"):
        resolve_checkpoint("acme/tiny-gemma@v2")


def test_a_local_directory_wins_and_a_typo_is_not_a_hub_id(tmp_path, monkeypatch):
    (tmp_path / "org" / "model").mkdir(parents=True)
    monkeypatch.chdir(tmp_path)
    assert resolve_checkpoint("org/model").repo_id is None  # the directory, not the hub
    with pytest.raises(UserError, match="no such directory"):
        resolve_checkpoint("./not/there/at/all")


def test_build_by_hub_id_offline(tmp_path, trained_ckpt):
    """`gemma3n-edge build OWNER/NAME` with no network and a populated cache builds, recording the
    repo and commit; with an empty cache it says where it looked and what to run."""
    _cache(tmp_path / "hf", "acme/tiny-gemma", trained_ckpt)
    env = {"HF_HOME": str(tmp_path / "hf"), "HF_HUB_OFFLINE": "1"}
    run = lambda *a, home: subprocess.run(  # noqa: E731
        [sys.executable, "-m", "edge.cli", "build", *a], capture_output=True, text=True,
        env={**__import__("os").environ, **env, "HF_HOME": str(home)})
    out = tmp_path / "art"
    r = run("acme/tiny-gemma", "--out", str(out), "--recipe", "fp32", "--prefill", "16,64", "--context", "320",
            "--no-bundle", home=tmp_path / "hf")
    assert r.returncode == 0, r.stderr
    import json

    m = json.loads((out / "manifest.json").read_text())
    assert m["source"]["repo_id"] == "acme/tiny-gemma" and m["source"]["revision"] == COMMIT
    assert m["command"][2] == "acme/tiny-gemma"
    r = run("acme/tiny-gemma", "--out", str(tmp_path / "x"), home=tmp_path / "empty")
    assert r.returncode == 1 and "hf download acme/tiny-gemma" in r.stderr and str(tmp_path / "empty") in r.stderr
    assert "Traceback" not in r.stderr and not (tmp_path / "x").exists()
