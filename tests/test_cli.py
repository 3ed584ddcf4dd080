import subprocess
import sys

from edge import __version__
from edge.cli import main


def test_version(capsys):
    try:
        main(["--version"])
    except SystemExit as e:
        assert e.code == 0
    assert __version__ in capsys.readouterr().out


def test_help_lists_verbs():
    out = subprocess.run([sys.executable, "-m", "edge.cli", "--help"], capture_output=True, text=True, check=True)
    assert "gemma3n-edge" in out.stdout


def test_json_on_every_verb():
    """Each verb offers --json (a JSON object on stdout, or a JSON report file)."""
    import argparse

    from edge.cli import _verbs

    for mod in _verbs():
        p = argparse.ArgumentParser()
        mod.configure(p)
        assert any("--json" in a.option_strings for a in p._actions), f"{mod.NAME} has no --json"


def test_slice_list_and_build_json(tiny_ckpt, tmp_path, capsys):
    import json

    assert main(["slice", "--list", "--json"]) == 0
    presets = json.loads(capsys.readouterr().out)["presets"]
    assert presets["E2B"]["layers"] == 30
    out = tmp_path / "art"
    assert main(["build", str(tiny_ckpt), "--out", str(out), "--recipe", "int8", "--prefill", "8,16", "--context", "96",
                 "--modalities", "text", "--json"]) == 0
    r = json.loads(capsys.readouterr().out)
    dec = next(a for a in r["artifacts"].values() if a["kind"] == "prefill_decode")
    assert dec["weight_format"] == "int8" and dec["file"] == "decoder.tflite" and r["context"] == 96
    assert r["files"]["model.litertlm"]["bytes"] == (out / "model.litertlm").stat().st_size
