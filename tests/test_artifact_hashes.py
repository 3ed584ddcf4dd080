"""tools/artifact_hashes.py, the byte-identity check of refactors: it names every file that
differs or is missing, and ignores only the manifest's version fields."""

from __future__ import annotations

import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tools"))

import artifact_hashes as ah  # noqa: E402


def test_compare_names_each_difference():
    before = {"int8": {"a.tflite": "1", "b.weights": "2", "gone.tflite": "3"}}
    after = {"int8": {"a.tflite": "1", "b.weights": "9", "new.tflite": "4"}}
    assert ah.compare(after, before) == ["int8/b.weights", "int8/gone.tflite", "int8/new.tflite"]
    assert ah.compare(before, before) == []


def test_manifest_digest_ignores_only_version_fields(tmp_path):
    m = {"generator": "gemma3n-edge 1.0", "recipe": {"name": "int8"}, "extra": {"toolchain": {"torch": "2"}, "x": 1}}
    p = tmp_path / "manifest.json"
    p.write_text(json.dumps(m))
    base = ah.manifest_digest(p)
    p.write_text(json.dumps({**m, "generator": "gemma3n-edge 2.0", "extra": {"toolchain": {"torch": "3"}, "x": 1}}))
    assert ah.manifest_digest(p) == base
    p.write_text(json.dumps({**m, "recipe": {"name": "int4"}}))
    assert ah.manifest_digest(p) != base
