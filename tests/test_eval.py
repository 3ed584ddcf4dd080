"""`gemma3n-edge eval`: the quality verdict. Its statistics are right on known inputs, an int8
build of the trained tiny model passes with perplexity close to the reference's, and a build
checked against another model fails (the checker is not vacuous)."""

from __future__ import annotations

import math

import numpy as np
import pytest

from edge.parity.evaluate import _combine, _windows, score


def test_score_on_known_distributions():
    ref = np.log(np.array([[0.5, 0.25, 0.25], [0.1, 0.8, 0.1]]))
    same = score(ref, ref, [0, 1])
    assert same["kl_sum"] == pytest.approx(0, abs=1e-12) and same["top1_agree"] == 2
    assert same["nll_ref"] == pytest.approx(-math.log(0.5) - math.log(0.8))
    other = np.log(np.array([[0.25, 0.5, 0.25], [0.1, 0.8, 0.1]]))
    s = score(ref, other, [0, 1])
    assert s["top1_agree"] == 1
    assert s["kl_max"] == pytest.approx(0.5 * math.log(2) + 0.25 * math.log(0.5))
    row = _combine([s])
    assert row["ppl_ref"] == pytest.approx(math.exp(s["nll_ref"] / 2)) and row["top1"] == 0.5


def test_windows_start_with_bos_and_cover_the_text():
    w = _windows([2, *range(10, 30)], bos=2, length=8, limit=10)
    assert all(x[0] == 2 and len(x) <= 8 for x in w)
    assert [t for x in w for t in x[1:]] == list(range(10, 30))


torch = pytest.importorskip("torch")


@pytest.fixture(scope="module")
def int8_artifacts(trained_ckpt, tmp_path_factory):
    from converters.build import BuildOptions, build

    return build(trained_ckpt, tmp_path_factory.mktemp("eval") / "art",
                 BuildOptions(recipe="int8", prefill=(16, 64), context=320, modalities=("text", "vision", "audio")))


def test_int8_build_passes(int8_artifacts, trained_ckpt):
    from edge.parity.evaluate import run_eval, verdict_lines

    r = run_eval(int8_artifacts, trained_ckpt, text=trained_ckpt / "heldout.txt", max_windows=2)
    lines = "\n".join(verdict_lines(r))
    assert r["ok"], lines
    text = r["rows"]["held-out text"]
    assert text["tokens"] > 200 and text["top1"] >= 0.9
    assert abs(math.log(text["ppl_art"] / text["ppl_ref"])) < 0.05, lines  # within 5 % of the reference's
    assert {"image (encoder size)", "audio 30 s"} <= set(r["rows"]), lines
    assert "verdict: PASS" in lines


def test_a_build_of_another_model_fails(int8_artifacts, tiny_ckpt, tmp_path):
    """The same artifacts against a different checkpoint: top-1 and KL far outside the bounds."""
    import subprocess
    import sys

    out = subprocess.run([sys.executable, "-m", "edge.cli", "eval", str(int8_artifacts), "--reference", str(tiny_ckpt),
                          "--max-windows", "1", "--json", str(tmp_path / "r.json"), "--html", str(tmp_path / "r.html")],
                         capture_output=True, text=True)
    assert out.returncode == 1, out.stdout + out.stderr
    assert "verdict: FAIL" in out.stdout and "REFERENCE MISMATCH" in out.stdout
    import json

    assert json.loads((tmp_path / "r.json").read_text())["exceeded"]
    from edge.parity.svg import BAD

    page = (tmp_path / "r.html").read_text()
    assert "Quality verdict: FAIL" in page and f'fill="{BAD}"' in page  # KL bars past their bound


def test_parity_report_carries_the_verdict(int8_artifacts, trained_ckpt, tmp_path, capsys):
    import json

    from edge.cli import main

    html, js = tmp_path / "p.html", tmp_path / "p.json"
    rc = main(["parity", str(int8_artifacts), "--reference", str(trained_ckpt), "--no-engine", "--max-tokens", "4",
               "--prompt", "The for statement", "--eval", "--text", str(trained_ckpt / "heldout.txt"),
               "--html", str(html), "--json", str(js)])
    out = capsys.readouterr().out
    assert rc == 0, out
    assert "verdict: PASS" in out and "Quality verdict: PASS" in html.read_text()
    assert json.loads(js.read_text())["quality"]["rows"]["held-out text"]["tokens"] > 200
    assert main(["parity", str(int8_artifacts), "--reference", str(trained_ckpt), "--text", "x.txt"]) == 1
    assert "add --eval" in capsys.readouterr().err


def test_unreadable_text_is_a_clear_error(int8_artifacts, trained_ckpt, tmp_path):
    from edge.errors import UserError
    from edge.parity.evaluate import run_eval

    (tmp_path / "bin.txt").write_bytes(b"\xff\xfe\x00bad")
    with pytest.raises(UserError, match="--text .*bin.txt: cannot read it as UTF-8"):
        run_eval(int8_artifacts, trained_ckpt, text=tmp_path / "bin.txt")
