"""Issue 17: parity of quantized builds has finite bounds (edge/parity/tolerances.py) judged by the format the
files hold, and it fails an unrelated reference, an edited manifest, a wrong model."""

from __future__ import annotations

import json
import math
import shutil

import pytest

pytest.importorskip("torch")
from converters.build import BuildOptions, build  # noqa: E402
from edge.parity import tolerances  # noqa: E402
from edge.parity.run import run_parity, summary_lines  # noqa: E402

PROMPTS = ("What does the for statement do?", "Tell me about lambdas in Python.")


@pytest.fixture(scope="module")
def trained_int8(trained_ckpt, tmp_path_factory):
    return build(trained_ckpt, tmp_path_factory.mktemp("t8") / "art",
                 BuildOptions(recipe="int8", prefill=(16, 64), context=320, bundle=False, modalities=("text",)))


def test_every_recipe_bound_is_finite():
    for table in (tolerances.TABLE, tolerances.DECODER):
        for level, t in table.items():
            assert math.isfinite(t.max_abs) and t.why, level
    for level in tolerances.LEVELS[1:]:
        d = tolerances.DECODER[level]
        assert None not in (d.min_cosine, d.min_top1, d.max_kl_mean), level


def test_int8_build_passes_against_its_own_checkpoint(trained_int8, trained_ckpt):
    r = run_parity(trained_int8, trained_ckpt, prompts=PROMPTS, max_tokens=16, engine=False)
    assert r["ok"], "\n".join(summary_lines(r))
    assert r["reference_identity"]["matches"] is True
    dec = r["artifacts"]["decoder"]
    assert dec["weights"] == "int8" and dec["tolerance"] == tolerances.DECODER["int8"].max_abs
    for table in ("embedder", "per_layer_embedder"):  # the analytic bound holds, and is not vacuous
        a = r["artifacts"][table]
        assert a["weights"] == "int8" and 0 < a["max_row_relative_error"] <= 1 / 254 * (1 + 1e-6) + 1e-7, a


def test_int8_build_fails_against_another_checkpoint(trained_int8, tiny_ckpt):
    r = run_parity(trained_int8, tiny_ckpt, prompts=PROMPTS, max_tokens=16, engine=False)
    lines = summary_lines(r)
    assert not r["ok"] and r["reference_identity"]["matches"] is False, "\n".join(lines)
    assert "REFERENCE MISMATCH" in lines[1] and "model.safetensors" in lines[1]
    assert "decoder" in r["failing"], lines  # and the numbers themselves are far outside the int8 bounds
    assert any("top-1" in e for e in r["artifacts"]["decoder"]["exceeded"])


def test_edited_manifest_cannot_loosen_the_bounds(trained_int8, trained_ckpt, tmp_path):
    """Recipe name and tolerances in manifest.json are editable; parity reads the format from the files."""
    d = tmp_path / "edited"
    shutil.copytree(trained_int8, d)
    m = json.loads((d / "manifest.json").read_text())
    m["recipe"]["name"] = "int4"
    for a in m["artifacts"].values():
        a["tolerance"] = {"max_abs": 1e30, "why": "edited"}
    (d / "manifest.json").write_text(json.dumps(m))
    r = run_parity(d, trained_ckpt, prompts=PROMPTS[:1], max_tokens=8, engine=False)
    assert r["artifacts"]["decoder"]["tolerance"] == tolerances.DECODER["int8"].max_abs
    assert r["artifacts"]["embedder"]["tolerance"] == tolerances.TABLE["int8"].max_abs


def test_decoder_bounds_fail_on_broken_numbers():
    """The decoder judge fails each criterion on its own."""
    from edge.parity.run import _judge

    t = {"decoder": ("int8", tolerances.DECODER["int8"])}
    good = {"max_abs_error": 0.5, "cosine": 0.999}
    assert _judge("decoder", dict(good), t, None, {"top1_agreement": 1.0, "kl_mean": 1e-3}) == []
    for entry, gen, word in (({**good, "max_abs_error": 5.0}, {}, "max abs"),
                             ({**good, "cosine": 0.5}, {}, "cosine"),
                             (good, {"top1_agreement": 0.5}, "top-1"),
                             (good, {"kl_mean": 0.5}, "KL")):
        bad = _judge("decoder", dict(entry), t, None, {"top1_agreement": 1.0, "kl_mean": 1e-3, **gen})
        assert len(bad) == 1 and word in bad[0], bad
    inf = type("T", (), {"max_abs": float("inf")})()
    assert _judge("vision_encoder", {"max_abs_error": 0.0}, t, inf, {})  # a tower's infinite bound fails


def test_mixed_build_tables_and_decoder_within_the_int4_bounds(trained_ckpt, tmp_path):
    """The recipe a user ships (PLE int4-b32, decoder int4 with an int8 head): within its format's bounds."""
    art = build(trained_ckpt, tmp_path / "mixed", BuildOptions(recipe="mixed", prefill=(16, 64), context=320,
                                                              bundle=False, modalities=("text",)))
    r = run_parity(art, trained_ckpt, prompts=PROMPTS, max_tokens=16, engine=False)
    assert r["ok"], "\n".join(summary_lines(r))
    assert r["artifacts"]["per_layer_embedder"]["weights"] == "int4"
    assert 1 / 254 < r["artifacts"]["per_layer_embedder"]["max_row_relative_error"] <= 1 / 13
    assert r["artifacts"]["decoder"]["weights"] == "int4"
