"""`gemma3n-edge eval`: a quality verdict for one artifact directory against its reference model.

Teacher-forced, so both models score the same tokens: held-out text in windows (perplexity of
the reference and of the artifacts, top-1 agreement, mean and max KL(reference || artifacts)
per next-token distribution), and the media prompts whose preprocessing is HF's too (an image
at the encoder's size, audio clips) along the reference's greedy continuation. Distributions
are over the text ids, the ones a phone can sample (edge/parity/run.py). The verdict holds the
decoder's numbers against the bounds for the weight format read from its file
(edge/parity/tolerances.py), the same bounds parity applies.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from edge.errors import UserError
from edge.parity.forced_decode import decoder_steps
from edge.parity.cases import default_cases, tower_checks
from edge.parity.reference_check import check_reference_dir, reference_identity

DEFAULT_TEXT = Path(__file__).parents[1] / "data" / "heldout.txt"


def _log_softmax(x: np.ndarray) -> np.ndarray:
    x = x.astype(np.float64)
    m = x.max(axis=-1, keepdims=True)
    return x - m - np.log(np.exp(x - m).sum(axis=-1, keepdims=True))


def score(ref_logits: np.ndarray, got_logits: np.ndarray, targets: Sequence[int]) -> dict[str, Any]:
    """Per-position statistics of two [n, V] next-token logit arrays for the true `targets`."""
    lp, lq = _log_softmax(np.asarray(ref_logits)), _log_softmax(np.asarray(got_logits))
    t = np.asarray(targets)
    rows = np.arange(len(t))
    kl = (np.exp(lp) * (lp - lq)).sum(axis=-1)
    return {"tokens": int(len(t)), "nll_ref": float(-lp[rows, t].sum()), "nll_art": float(-lq[rows, t].sum()),
            "top1_agree": int((lp.argmax(-1) == lq.argmax(-1)).sum()), "kl_sum": float(kl.sum()),
            "kl_max": float(kl.max(initial=0.0))}


def _combine(parts: list[dict]) -> dict[str, Any]:
    n = sum(p["tokens"] for p in parts)
    if not n:
        return {"tokens": 0}
    return {"tokens": n, "ppl_ref": math.exp(sum(p["nll_ref"] for p in parts) / n),
            "ppl_art": math.exp(sum(p["nll_art"] for p in parts) / n),
            "top1": sum(p["top1_agree"] for p in parts) / n, "kl_mean": sum(p["kl_sum"] for p in parts) / n,
            "kl_max": max(p["kl_max"] for p in parts)}


def _windows(ids: list[int], bos: int, length: int, limit: int) -> list[list[int]]:
    body = [i for i in ids if i != bos]
    step = length - 1
    return [[bos, *body[i:i + step]] for i in range(0, len(body), step) if len(body[i:i + step]) > 1][:limit]


def _text_rows(pipeline, ref, text: str, window: int, limit: int, vocab: int) -> list[dict]:
    ids = pipeline.prompt_ids(text, apply_template=False)
    parts = []
    for w in _windows(ids, pipeline.model.tokens.bos, window, limit):
        ref_logits = ref.logits(w, vocab)[:-1]
        got = np.stack(decoder_steps(pipeline, w, 1))
        parts.append(score(ref_logits, got, w[1:]))
    return parts


def _media_rows(pipeline, builder, ref, cases, n: int, vocab: int) -> dict[str, dict]:
    """Each media case: the reference's greedy continuation of the prompt, scored by both."""
    out = {}
    for case in cases:
        prompt = builder.build(case.text, images=case.images, audio=case.audio)
        pixels, clips, _ = tower_checks(pipeline, builder, ref, case, {})
        media = ref.media_inputs(pixels, clips)
        cont = ref.greedy(prompt.ids, n, vocab, **media)
        seq = prompt.ids + cont
        ref_logits = ref.logits(seq, vocab, **media)[len(prompt.ids) - 1:-1]
        got = np.stack(decoder_steps(pipeline, seq, len(prompt.ids), prompt.soft))
        out[case.name] = _combine([score(ref_logits, got, cont)])
    return out


def run_eval(artifacts: str | Path, reference: str | Path, *, text: str | Path | None = None,
             adapter: str | Path | None = None, window: int = 128, max_windows: int = 8,
             media_tokens: int = 16, workdir: str | Path | None = None) -> dict[str, Any]:
    """The evaluation report of `artifacts` against `reference` (see the module docstring)."""
    import tempfile

    from edge import plugins

    from edge.parity import tolerances
    from edge.runtime.session import Session

    path = Path(text) if text else DEFAULT_TEXT
    try:
        body = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise UserError(f"--text {path}: cannot read it as UTF-8 text ({e})") from None
    check_reference_dir(reference)
    session = Session.open(artifacts)
    pipeline, manifest = session.pipeline, session.manifest
    try:
        identity = reference_identity(manifest, reference, adapter)
        ref = plugins.load("reference")(reference, adapter)
        vocab = pipeline.tokenizer.sp_vocab_size
        window = min(window, manifest.model.context_length)
        rows = {"held-out text": _combine(_text_rows(pipeline, ref, body, window, max_windows, vocab))}
        if rows["held-out text"]["tokens"] == 0:
            raise UserError(f"--text {path}: fewer than 2 tokens of text to score")
        with tempfile.TemporaryDirectory(prefix="gemma3n-edge-eval-") as tmp:
            cases = [c for c in default_cases(manifest, workdir or tmp, ()) if not c.known]
            rows |= _media_rows(pipeline, session.media, ref, cases, media_tokens, vocab)
        dec = manifest.artifact("prefill_decode")
        level, bound = tolerances.for_file(session.directory / dec.file, dec.kind)
    finally:
        session.close()
    bad = [f"{name}: {what}" for name, r in rows.items() for what in _exceeded(r, bound)]
    return {"artifacts_dir": str(artifacts), "reference": str(reference), "text": str(path),
            "recipe": manifest.recipe.get("name"), "decoder_weights": level,
            "bounds": {"min_top1": bound.min_top1, "max_kl_mean": bound.max_kl_mean, "why": bound.why},
            "reference_identity": identity, "rows": rows, "exceeded": bad,
            "ok": not bad and identity.get("matches") is not False}


def _exceeded(row: dict, bound) -> list[str]:
    out = []
    if bound.min_top1 is not None and row["top1"] < bound.min_top1:
        out.append(f"top-1 {row['top1']:.1%} < {bound.min_top1:.0%}")
    if bound.max_kl_mean is not None and row["kl_mean"] > bound.max_kl_mean:
        out.append(f"KL mean {row['kl_mean']:.3g} > {bound.max_kl_mean:g}")
    return out


def verdict_lines(report: dict[str, Any]) -> list[str]:
    """The verdict table: one row per scored prompt, then the result against the format's bounds."""
    b = report["bounds"]
    lines = [f"eval of {report['artifacts_dir']} (recipe {report['recipe']}, decoder weights "
             f"{report['decoder_weights']}) against {report['reference']}"]
    identity = report["reference_identity"]
    if identity.get("matches") is False:
        lines.append(f"  REFERENCE MISMATCH: {identity['detail']}")
    lines.append(f"  {'prompt':<20} {'tokens':>6} {'ppl ref':>9} {'ppl art':>9} {'top-1':>7} {'KL mean':>9} {'KL max':>9}")
    for name, r in report["rows"].items():
        lines.append(f"  {name:<20} {r['tokens']:>6} {r['ppl_ref']:>9.3f} {r['ppl_art']:>9.3f} {r['top1']:>7.1%} "
                     f"{r['kl_mean']:>9.3g} {r['kl_max']:>9.3g}")
    lines.append(f"  bounds for {report['decoder_weights']} weights: top-1 >= {b['min_top1']:.0%}, "
                 f"KL mean <= {b['max_kl_mean']:g}")
    lines.append(f"  verdict: {'PASS' if report['ok'] else 'FAIL'}"
                 + (f" ({'; '.join(report['exceeded'])})" if report["exceeded"] else ""))
    return lines


def quality_html(report: dict[str, Any]) -> str:
    """The verdict as an HTML section (for the parity page): the table and KL against its bound."""
    import html

    from edge.parity import svg

    e, b = html.escape, report["bounds"]
    rows = "".join(f"<tr><td>{e(n)}</td><td>{r['tokens']}</td><td>{r['ppl_ref']:.3f}</td><td>{r['ppl_art']:.3f}</td>"
                   f"<td>{r['top1']:.1%}</td><td>{r['kl_mean']:.3g}</td><td>{r['kl_max']:.3g}</td></tr>"
                   for n, r in report["rows"].items())
    kl = svg.bars({n: r["kl_mean"] / b["max_kl_mean"] if b["max_kl_mean"] else None
                   for n, r in report["rows"].items()}, "KL mean / its bound per prompt", 1.0, "bound")
    return (f"<h2>Quality verdict: {'PASS' if report['ok'] else 'FAIL'}</h2>"
            f"<p>{e(report['recipe'] or '')} ({e(report['decoder_weights'])} decoder weights) on {e(report['text'])}; "
            f"bounds: top-1 &ge; {b['min_top1']:.0%}, KL mean &le; {b['max_kl_mean']:g}</p>"
            "<table><tr><th>prompt</th><th>tokens</th><th>ppl ref</th><th>ppl art</th><th>top-1</th><th>KL mean</th>"
            f"<th>KL max</th></tr>{rows}</table>{kl}"
            + (f"<p>exceeded: {e('; '.join(report['exceeded']))}</p>" if report["exceeded"] else ""))
