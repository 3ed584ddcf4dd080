"""Reproducible builds: the same checkpoint and options give the same bytes in every file,
model.litertlm included (its uuid is derived from the sections, its timestamp is
SOURCE_DATE_EPOCH or the epoch), wherever the output goes."""

from __future__ import annotations

import pytest

pytest.importorskip("torch")

from converters.build import BuildOptions, build  # noqa: E402
from edge.format.litertlm import read_bundle  # noqa: E402

OPTS = BuildOptions(recipe="int8", prefill=(16, 64), context=320, modalities=("text", "vision", "audio"))


def test_two_builds_are_byte_identical(trained_ckpt, tmp_path, monkeypatch):
    monkeypatch.delenv("SOURCE_DATE_EPOCH", raising=False)
    a = build(trained_ckpt, tmp_path / "a" / "art", OPTS)
    b = build(trained_ckpt, tmp_path / "b" / "elsewhere", OPTS)
    names = sorted(p.name for p in a.iterdir())
    assert names == sorted(p.name for p in b.iterdir()) and "model.litertlm" in names
    differ = [n for n in names if (a / n).read_bytes() != (b / n).read_bytes()]
    assert not differ
    system = read_bundle(a / "model.litertlm").system_metadata
    assert system["creation_timestamp"] == "1970-01-01T00:00:00+00:00"

    # Not vacuous: other content gives another uuid, and SOURCE_DATE_EPOCH sets the time.
    monkeypatch.setenv("SOURCE_DATE_EPOCH", "1764806400")
    c = build(trained_ckpt, tmp_path / "c", BuildOptions(**{**OPTS.__dict__, "recipe": "fp16"}))
    other = read_bundle(c / "model.litertlm").system_metadata
    assert other["uuid"] != system["uuid"]
    assert other["creation_timestamp"] == "2025-12-04T00:00:00+00:00"


def test_bad_source_date_epoch_is_refused(trained_ckpt, tmp_path, monkeypatch):
    from edge.errors import UserError

    monkeypatch.setenv("SOURCE_DATE_EPOCH", "yesterday")
    with pytest.raises(UserError, match="SOURCE_DATE_EPOCH='yesterday'"):
        build(trained_ckpt, tmp_path / "x", OPTS)
    assert not (tmp_path / "x").exists()


def test_the_decoder_graph_does_not_depend_on_the_hash_seed():
    """Two processes differ in their string hash seed; the decoder's rope tables (one per layer
    type) once followed a set's order, so the lowered graph's constants came in either order."""
    import os
    import subprocess
    import sys

    script = ("import converters, torch; from pathlib import Path; "
              "from converters.gemma3n.config import Gemma3nConfig; from converters.gemma3n.decoder import TextDecoder; "
              "cfg = Gemma3nConfig.from_hf(Path(converters.__file__).parent / 'data' / 'tiny_trained').text\n"
              "with torch.device('meta'): print(list(TextDecoder(cfg, 8).inv_freq))")
    runs = [subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True,
                             env={**os.environ, "PYTHONHASHSEED": str(seed)}) for seed in range(6)]  # in parallel
    orders = {run.communicate()[0] for run in runs}
    assert all(run.returncode == 0 for run in runs) and len(orders) == 1, orders
