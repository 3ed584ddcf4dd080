"""Issue 17: a structurally corrupted .tflite (bytes 40-43 inverted, its sha256 recomputed so the
checksum passes) is a clear error in inspect, simulate, parity and bench, never a signal."""

from __future__ import annotations

import shutil
import subprocess
import sys
from dataclasses import replace

import pytest

from edge.format.manifest import file_entry, read_manifest, write_manifest

pytest.importorskip("torch")


@pytest.fixture(scope="module")
def corrupted(tiny_artifacts, tmp_path_factory):
    d = tmp_path_factory.mktemp("crafted") / "art"
    shutil.copytree(tiny_artifacts, d)
    p = d / "decoder.tflite"
    data = bytearray(p.read_bytes())
    data[40:44] = bytes(b ^ 0xFF for b in data[40:44])
    p.write_bytes(bytes(data))
    m = read_manifest(d)
    write_manifest(d, replace(m, files={**m.files, p.name: file_entry(p)}))
    return d


@pytest.mark.parametrize("verb", ["inspect", "simulate", "parity", "bench"])
def test_crafted_flatbuffer_is_an_error_not_a_signal(verb, corrupted, tiny_ckpt):
    args = {"inspect": [corrupted], "simulate": [corrupted, "--prompt", "hi", "--max-tokens", "2"],
            "parity": [corrupted, "--reference", tiny_ckpt, "--no-engine", "--max-tokens", "2"],
            "bench": [corrupted]}[verb]
    proc = subprocess.run([sys.executable, "-m", "edge.cli", verb, *map(str, args)], capture_output=True, text=True,
                          timeout=600)
    out = proc.stdout + proc.stderr
    assert proc.returncode > 0, (proc.returncode, out[-2000:])  # negative = killed by a signal
    assert "decoder.tflite" in out and "Traceback" not in out, out[-2000:]
    assert "verification: OK" not in out


def test_crafted_bundle_section_is_refused_before_the_engine(tiny_bundle, tmp_path):
    """The engine (litert_lm) gets no bundle whose flatbuffers fail the structure check."""
    from edge.errors import UserError
    from edge.format.litertlm import read_bundle
    from edge.runtime.engine import Engine

    bad = tmp_path / "bad.litertlm"
    data = bytearray(tiny_bundle.read_bytes())
    section = next(s for s in read_bundle(tiny_bundle).sections if s.model_type == "prefill_decode")
    start = section.begin
    data[start + 40:start + 44] = bytes(b ^ 0xFF for b in data[start + 40:start + 44])
    bad.write_bytes(bytes(data))
    with pytest.raises(UserError, match="failed verification"):
        Engine(bad)
