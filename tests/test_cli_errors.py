"""Issue 17: what users mistype or what the machine does to them is one clear line, never a traceback."""

from __future__ import annotations

import errno
import shutil

import pytest

from edge import cli
from edge.errors import UserError

pytest.importorskip("torch")


def _run(capsys, *argv):
    rc = cli.main([str(a) for a in argv])
    captured = capsys.readouterr()
    assert "Traceback" not in captured.err
    return rc, captured.out, captured.err


def test_reference_that_does_not_exist_is_an_error_before_anything(tiny_artifacts, tmp_path, capsys):
    rc, _, err = _run(capsys, "parity", tiny_artifacts, "--reference", tmp_path / "ck" / "nope", "--no-engine")
    assert rc == 1 and "no such directory" in err


def test_truncated_reference_checkpoint_is_named(tiny_artifacts, tiny_ckpt, tmp_path, capsys):
    ref = tmp_path / "ref"
    shutil.copytree(tiny_ckpt, ref)
    f = ref / "model.safetensors"
    f.write_bytes(f.read_bytes()[: f.stat().st_size // 2])
    rc, _, err = _run(capsys, "parity", tiny_artifacts, "--reference", ref, "--no-engine")
    assert rc == 1 and "truncated or corrupt" in err and "model.safetensors" in err


@pytest.mark.parametrize("flag", ["--json", "--html"])
def test_report_into_a_directory_is_refused_before_the_work(flag, tiny_artifacts, tiny_ckpt, tmp_path, capsys):
    rc, _, err = _run(capsys, "parity", tiny_artifacts, "--reference", tiny_ckpt, "--no-engine", flag, tmp_path)
    assert rc == 1 and f"{flag} {tmp_path} is a directory" in err
    blocker = tmp_path / "a-file"
    blocker.write_text("x")
    rc, _, err = _run(capsys, "parity", tiny_artifacts, "--reference", tiny_ckpt, "--no-engine", flag,
                      blocker / "sub" / "r.json")
    assert rc == 1 and "is a file" in err


def test_disk_full_and_unexpected_errors_are_one_line_with_a_log(monkeypatch, tmp_path, capsys):
    monkeypatch.setenv("GEMMA3N_EDGE_CACHE", str(tmp_path / "cache"))
    from edge.commands import inspect as inspect_cmd

    def full(args):
        raise OSError(errno.ENOSPC, "No space left on device", "out/decoder.tflite")

    monkeypatch.setattr(inspect_cmd, "run", full)
    rc, _, err = _run(capsys, "inspect", tmp_path)
    assert rc == 1 and "the disk is full (writing out/decoder.tflite)" in err

    def bug(args):
        raise KeyError("surprise")

    monkeypatch.setattr(inspect_cmd, "run", bug)
    rc, _, err = _run(capsys, "inspect", tmp_path)
    log = tmp_path / "cache" / "logs" / "last-error.log"
    assert rc == 1 and "KeyError" in err and str(log) in err
    assert "Traceback" in log.read_text() and "surprise" in log.read_text()


def test_corrupt_tokenizer_is_refused_before_lowering(tiny_ckpt, tmp_path):
    from converters.build import BuildOptions, build

    ck = tmp_path / "ck"
    shutil.copytree(tiny_ckpt, ck)
    (ck / "tokenizer.model").write_bytes(b"\x00garbage" * 100)
    with pytest.raises(UserError, match="tokenizer"):
        build(ck, tmp_path / "out", BuildOptions(recipe="fp32", prefill=(8,), context=32, modalities=("text",)))
    assert not (tmp_path / "out").exists()


def test_context_beyond_the_model_and_too_little_disk_are_refused_before_work(tiny_ckpt, tmp_path, monkeypatch):
    from collections import namedtuple

    import converters.build as B

    with pytest.raises(UserError, match="longer than the model's max_position_embeddings"):
        B.build(tiny_ckpt, tmp_path / "out", B.BuildOptions(recipe="fp32", prefill=(8,), context=100_000_000, modalities=("text",)))
    usage = namedtuple("usage", "total used free")
    monkeypatch.setattr(B.shutil, "disk_usage", lambda p: usage(10**6, 10**6 - 1000, 1000))
    with pytest.raises(UserError, match=r"needs about .* GiB and .* has 0\.00 GiB free"):
        B.build(tiny_ckpt, tmp_path / "out", B.BuildOptions(recipe="fp32", prefill=(8,), context=32, modalities=("text",)))
    assert sorted(p.name for p in tmp_path.iterdir()) == []
