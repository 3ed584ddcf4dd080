"""`gemma3n-edge parity`: run the artifacts and the PyTorch reference on the same prompts.

The report is data, not a bool (STYLE.md §8): per artifact max abs / relative error and
cosine; per decode step the same plus top-1/top-5 agreement and KL(ref || artifacts);
and a free-running greedy comparison (match, tokens compared, first divergence).

Decoder steps are teacher-forced with the reference's own greedy tokens, so every step
compares the same context even after a divergence. The reference is transformers'
Gemma3nForConditionalGeneration in fp32 (converters/reference.py), loaded through the `reference`
entry point (edge/plugins.py): `edge/` itself stays torch-free.
"""

from __future__ import annotations

import html
import math
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from edge import plugins
from edge.parity.compare import compare_logits, compare_rows
from edge.errors import UserError
from edge.parity.forced_decode import decoder_steps, greedy_tokens
from edge.parity.cases import DEFAULT_PROMPTS, Case, default_cases, tower_checks
from edge.parity.reference_check import check_reference_dir, reference_identity

_CHECK_OF_KIND = {"prefill_decode": "decoder", "audio_encoder_hw": "audio_encoder"}
ORDER = ("embedder", "per_layer_embedder", "vision_encoder", "vision_adapter", "audio_encoder", "audio_adapter",
         "end_of_audio", "decoder")  # the order data flows: the first one out of tolerance is the cause


def until_stop(ids: Sequence[int], stops) -> list[int]:
    out = []
    for i in ids:
        if i in stops:
            break
        out.append(int(i))
    return out


def _first_difference(a: Sequence[int], b: Sequence[int]) -> int | None:
    for k, (x, y) in enumerate(zip(a, b)):
        if x != y:
            return k
    return None if len(a) == len(b) else min(len(a), len(b))


def run_parity(artifacts: str | Path, reference: str | Path, *, prompts: Sequence[str] = DEFAULT_PROMPTS,
               max_tokens: int = 32, cases: Sequence[Case] | None = None, engine: bool = True,
               workdir: str | Path | None = None, adapter: str | Path | None = None) -> dict[str, Any]:
    """Compare the artifact directory with the reference checkpoint (with the LoRA `adapter` merged
    by PEFT, for a `build --adapter`) and, when the directory holds model.litertlm, with Google's
    engine on it; returns the report dict (see summary_lines)."""
    import tempfile

    from edge.runtime.session import Session

    try:  # the torch side registers it; without torch (or transformers) importing it fails
        reference_class = plugins.load("reference")
    except ImportError:
        raise UserError("parity needs the PyTorch reference: install gemma3n-edge[convert] (torch, transformers)") from None
    artifacts = Path(artifacts)
    check_reference_dir(reference)  # before anything: a missing path is never taken for a hub id
    session = Session.open(artifacts)
    manifest = session.manifest
    try:
        identity = reference_identity(manifest, reference, adapter)
        ref = reference_class(reference, adapter)
    except BaseException:
        session.close()
        raise
    bundle = artifacts / "model.litertlm"
    runner = None
    with tempfile.TemporaryDirectory(prefix="gemma3n-edge-parity-") as tmp:
        try:
            cases = list(cases) if cases is not None else default_cases(manifest, workdir or tmp, prompts)
            if engine and bundle.is_file():
                from edge.runtime.engine import Engine

                runner = Engine(bundle)
            report = _compare(session.pipeline, manifest, session.media, ref, runner, cases, max_tokens)
        finally:
            session.close()
            if runner is not None:
                runner.close()
    report.update({"artifacts_dir": str(artifacts), "reference": str(reference),
                   "engine": str(bundle) if runner is not None else None, "reference_identity": identity})
    if identity["matches"] is False:  # numbers against another model say nothing about these artifacts
        report["ok"] = False
    return report


def _compare(pipeline, manifest, builder, ref, runner, cases: Sequence[Case], n_max: int) -> dict:
    model = manifest.model
    vocab = pipeline.tokenizer.sp_vocab_size  # what any of the three may emit: text ids
    stops = set(model.stop_tokens)
    checks: dict[str, dict] = {}
    probe = sorted({*pipeline.prompt_ids(cases[0].text),
                    *(v for k, v in model.tokens.items().items() if k in ("eoi", "image_soft", "eoa", "audio_soft"))})
    checks["embedder"] = compare_rows(ref.embeddings(probe), pipeline.embedder.lookup(probe), len(probe))
    if pipeline.per_layer_embedder is not None:
        checks["per_layer_embedder"] = compare_rows(ref.per_layer(probe), pipeline.per_layer_embedder.lookup(probe),
                                                    len(probe))
    steps, rows = [], []
    for ci, case in enumerate(cases):
        prompt = builder.build(case.text, images=case.images, audio=case.audio)
        ids = prompt.ids
        n = min(n_max, model.context_length - len(ids))  # stay inside the KV cache
        if n < 1:
            raise UserError(f"{case.name}: the prompt is {len(ids)} tokens and does not fit the context "
                            f"({model.context_length}); use a shorter prompt or rebuild with a larger --context")
        pixels, clips, gap = tower_checks(pipeline, builder, ref, case, checks)
        known = case.known or (f"HF's image processor and the engine's decoder/resize give other pixels (up to "
                               f"{gap * 255:.0f}/255 apart); the simulator mirrors the engine (docs/ENGINE.md)"
                               if gap > 0 else "")
        hf_ids = ref.greedy(ids, n, vocab, **ref.media_inputs(pixels, clips))
        if not case.images and not case.audio:  # the decoder alone, teacher-forced on HF's path
            ref_logits = ref.logits(ids + hf_ids, vocab)
            for k, g in enumerate(decoder_steps(pipeline, ids + hf_ids, len(ids))):
                steps.append({"case": ci, "step": k, **compare_logits(ref_logits[len(ids) - 1 + k], g)})
        sim_ids = greedy_tokens(pipeline, ids, n, prompt.soft)
        row = {"name": case.name, "prompt": case.text, "images": list(case.images), "audio": list(case.audio),
               "known": known, "prompt_tokens": len(ids), "tokens": n,
               "hf": {"ids": hf_ids, "text": pipeline.tokenizer.decode(until_stop(hf_ids, stops))},
               "simulator": {"ids": sim_ids, "text": pipeline.tokenizer.decode(until_stop(sim_ids, stops))},
               "engine": None, "pairs": {"hf/simulator": {"first_difference": _first_difference(hf_ids, sim_ids)}}}
        if runner is not None:
            text = runner.answer(case.text, images=case.images, audio=case.audio, max_tokens=n)
            row["engine"] = {"text": text}
            for who, got in (("hf", hf_ids), ("simulator", sim_ids)):
                first = runner.first_difference(text, until_stop(got, stops))
                row["pairs"][f"{who}/engine"] = {"first_difference": first}
        rows.append(row)
    return _verdict(manifest, builder.dir, checks, steps, rows)


def _text_tolerances(manifest, directory: Path) -> dict[str, tuple[str, Any]]:
    """check name -> (weight format read from the file, edge/parity/tolerances.py bound): never the manifest's
    numbers or recipe name, which anyone can edit."""
    from edge.parity import tolerances

    return {_CHECK_OF_KIND.get(a.kind, a.kind): tolerances.for_file(directory / a.file, a.kind)
            for a in manifest.artifacts.values() if a.kind in tolerances.TEXT_KINDS}


def _judge(name: str, entry: dict, text_tol: dict, manifest_tol, gen: dict) -> list[str]:
    """Set entry's tolerance fields; return the criteria it exceeds (empty: within tolerance)."""
    if name in text_tol:
        level, t = text_tol[name]
        entry |= {"weights": level, "tolerance": t.max_abs, "why": t.why}
        if t.row_relative:
            entry["tolerance_applies_to"] = "max_row_relative_error"
            # fp32 rows are copied (bound 0, exact); otherwise allow float32 rounding of q * scale
            bound = t.max_abs * (1 + 1e-6) + (1e-7 if t.max_abs else 0.0)
            return [] if entry["max_row_relative_error"] <= bound else [
                f"row error {entry['max_row_relative_error']:.3g} x row max > {t.max_abs:.3g}"]
        bad = [] if entry["max_abs_error"] <= t.max_abs else [f"max abs {entry['max_abs_error']:.3g} > {t.max_abs:g}"]
        if t.min_cosine is not None and entry["cosine"] < t.min_cosine:
            bad.append(f"cosine {entry['cosine']:.4f} < {t.min_cosine:g}")
        if t.min_top1 is not None and gen.get("top1_agreement", 1.0) < t.min_top1:
            bad.append(f"top-1 {gen['top1_agreement']:.1%} < {t.min_top1:.0%}")
        if t.max_kl_mean is not None and gen.get("kl_mean", 0.0) > t.max_kl_mean:
            bad.append(f"KL mean {gen['kl_mean']:.3g} > {t.max_kl_mean:g}")
        entry |= {"min_cosine": t.min_cosine, "min_top1": t.min_top1, "max_kl_mean": t.max_kl_mean}
        return bad
    entry["tolerance"] = manifest_tol.max_abs if manifest_tol is not None else None
    if manifest_tol is None or not math.isfinite(manifest_tol.max_abs):
        return [f"no finite tolerance declared ({None if manifest_tol is None else manifest_tol.max_abs})"]
    return [] if entry["max_abs_error"] <= manifest_tol.max_abs else [
        f"max abs {entry['max_abs_error']:.3g} > {manifest_tol.max_abs:g}"]


def _verdict(manifest, directory: Path, checks: dict, steps: list, rows: list) -> dict:
    """Tolerances, causes and the overall result. Every compared artifact needs a finite tolerance
    (none passes by default); a divergence is blamed on the first artifact out of tolerance."""
    if steps:
        checks["decoder"] = {"max_abs_error": max(s["max_abs_error"] for s in steps),
                             "max_rel_error": max(s["max_rel_error"] for s in steps),
                             "cosine": min(s["cosine"] for s in steps), "inputs": len(steps)}
    gen: dict[str, Any] = {}
    if steps:
        gen |= {"top1_agreement": float(np.mean([s["top1"] for s in steps])),
                "top5_agreement": float(np.mean([s["top5"] for s in steps])),
                "kl_mean": float(np.mean([s["kl"] for s in steps])), "kl_max": float(np.max([s["kl"] for s in steps]))}
    text_tol = _text_tolerances(manifest, Path(directory))
    manifest_tol = {_CHECK_OF_KIND.get(a.kind, a.kind): a.tolerance for a in manifest.artifacts.values()}
    for name, entry in checks.items():
        entry["exceeded"] = _judge(name, entry, text_tol, manifest_tol.get(name), gen)
        entry["within_tolerance"] = not entry["exceeded"]
    failing = [n for n in ORDER if n in checks and not checks[n]["within_tolerance"]]
    fp32 = text_tol.get("decoder", ("",))[0] == "float32"  # read from the file, not the manifest's recipe
    ok = not failing
    for row in rows:
        for pair, res in row["pairs"].items():
            k = res["first_difference"]
            res["equal"] = k is None
            if k is None:
                continue
            with_hf = pair.startswith("hf/")
            if failing:
                res["cause"] = failing[0]
            elif with_hf and row["known"]:
                res["cause"] = row["known"]
            elif pair.endswith("/engine"):
                res["cause"] = "the engine's prompt assembly or preprocessing (every artifact is within tolerance)"
            else:
                res["cause"] = "decoder numerics at a near-tie (every artifact is within tolerance)"
            # fp32 must reproduce HF where the phone's preprocessing is HF's; for any recipe the
            # simulator must say what the engine says.
            must_hold = pair == "simulator/engine" or (fp32 and not row["known"])
            ok = ok and not must_hold
    firsts = [(i, r["pairs"]["hf/simulator"]["first_difference"]) for i, r in enumerate(rows)]
    diverged = [(i, k) for i, k in firsts if k is not None]
    gen = {"greedy_match": not diverged, "tokens_compared": sum(r["tokens"] for r in rows),
           "first_divergence": {"case": diverged[0][0], "step": diverged[0][1]} if diverged else None, **gen}
    return {"recipe": manifest.recipe.get("name"), "artifacts": checks, "steps": steps, "cases": rows,
            "generation": gen, "failing": failing, "ok": ok}


# ----------------------------------------------------------------------------- output


def summary_lines(report: dict[str, Any]) -> list[str]:
    """The artifact table, then one line per prompt: HF / simulator / engine, same or where they part."""
    engine = report.get("engine")
    lines = [f"parity of {report['artifacts_dir']} (recipe {report['recipe']}) against {report['reference']}"
             + ("" if engine else "  [engine not run: no model.litertlm]")]
    identity = report.get("reference_identity") or {}
    if identity.get("matches") is not True and identity.get("detail"):
        lines.append(f"  {'REFERENCE MISMATCH' if identity['matches'] is False else 'note'}: {identity['detail']}")
    for name in [n for n in ORDER if n in report["artifacts"]]:
        a = report["artifacts"][name]
        fmt = f"{a['weights']} weights, " if a.get("weights") else ""
        tol = f"{fmt}EXCEEDED: {'; '.join(a['exceeded'])}" if a["exceeded"] else f"{fmt}within tolerance"
        lines.append(f"  {name:<20} max abs {a['max_abs_error']:.3g}  rel {a['max_rel_error']:.3g}  "
                     f"cosine {a['cosine']:.6f}  ({tol})")
    g = report["generation"]
    if "top1_agreement" in g:
        lines.append(f"  decoder steps: top-1 {g['top1_agreement']:.1%}, top-5 {g['top5_agreement']:.1%}, "
                     f"KL mean {g['kl_mean']:.3g} max {g['kl_max']:.3g}")
    lines.append(f"  {'prompt':<22} {'HF = simulator':<18} {'HF = engine':<18} {'simulator = engine':<18}")
    for row in report["cases"]:
        cells = []
        for pair in ("hf/simulator", "hf/engine", "simulator/engine"):
            r = row["pairs"].get(pair)
            cells.append("not run" if r is None else "same" if r["equal"] else f"token {r['first_difference']}")
        lines.append(f"  {row['name']:<22} {cells[0]:<18} {cells[1]:<18} {cells[2]:<18}")
        causes = {r["cause"] for r in row["pairs"].values() if not r["equal"]}
        lines += [f"      cause: {c}" for c in sorted(causes)]
    lines.append(f"  result: {'PASS' if report['ok'] else 'FAIL'}"
                 + (f" (out of tolerance: {', '.join(report['failing'])})" if report["failing"] else ""))
    return lines


def _error_ratio(a: dict) -> float | None:
    """The measured error as a fraction of its tolerance (1 = at the bound); None when exact."""
    err = a.get("max_row_relative_error") if a.get("tolerance_applies_to") == "max_row_relative_error" \
        else a["max_abs_error"]
    tol = a.get("tolerance")
    if not err:
        return None
    if tol is None or not math.isfinite(tol) or tol <= 0:
        return 1e3  # no bound (or an exact one) and an error: far past it
    return err / tol


def pictures(report: dict[str, Any]) -> str:
    """The report's inline SVGs: error against tolerance per artifact, feature cosine per tower,
    per-token agreement per prompt, and the decoder's error per step."""
    from edge.parity import svg

    arts = {n: report["artifacts"][n] for n in ORDER if n in report["artifacts"]}
    parts = [svg.bars({n: _error_ratio(a) for n, a in arts.items()},
                      "error / tolerance per artifact (bar past the line: out of tolerance)", 1.0, "tolerance")]
    towers = {n: 1 - a["cosine"] for n, a in arts.items() if n.startswith(("vision", "audio", "end_of"))}
    if towers:
        parts.append(svg.bars(towers, "1 - feature cosine per tower output (0 = identical direction)", None))
    for r in report["cases"]:
        pairs = {p.replace("/", " = "): (r["pairs"][p]["first_difference"] if p in r["pairs"] else "not run")
                 for p in ("hf/simulator", "hf/engine", "simulator/engine")}
        parts.append(svg.agreement_strip(pairs, r["tokens"], f"{r['name']}: greedy tokens (green: same; red: first "
                                                              f"difference; grey: after it)"))
    steps = report["steps"]
    if steps:
        parts.append(svg.line_plot({"decoder logits max abs error": [s["max_abs_error"] for s in steps],
                                    "KL(ref || artifacts)": [s["kl"] for s in steps]},
                                   "decoder error per decode step", "decode step (all text prompts)"))
    return "\n".join(parts)


def write_html(report: dict[str, Any], path: str | Path, quality: dict[str, Any] | None = None) -> Path:
    """The parity report as one self-contained page; with `quality` (edge/parity/evaluate.py's report),
    its verdict section too."""
    from edge.fileio import atomic_write

    e = html.escape
    rows = "".join(f"<tr><td>{e(n)}</td><td>{a['max_abs_error']:.3g}</td><td>{a['max_rel_error']:.3g}</td>"
                   f"<td>{a['cosine']:.6f}</td><td>{a['tolerance']}</td><td>{'ok' if a['within_tolerance'] else 'FAIL'}"
                   f"</td></tr>" for n, a in report["artifacts"].items())
    cases = "".join(
        f"<h3>{e(r['name'])}: {e(r['prompt'])}</h3>" + (f"<p><i>{e(r['known'])}</i></p>" if r["known"] else "")
        + "<table class=side><tr><th>HF (PyTorch)</th><th>simulator</th><th>engine (LiteRT-LM)</th></tr>"
        f"<tr><td>{e(r['hf']['text'])}</td><td>{e(r['simulator']['text'])}</td>"
        f"<td>{e(r['engine']['text']) if r['engine'] else 'not run'}</td></tr></table>"
        for r in report["cases"])
    if quality is not None:
        from edge.parity.evaluate import quality_html

        cases += quality_html(quality)
    body = f"""<!doctype html><html><head><meta charset="utf-8"><title>gemma3n-edge parity</title>
<style>body{{font-family:sans-serif;max-width:960px;margin:2em auto}}td,th{{padding:2px 10px;text-align:right}}
table.side td{{text-align:left;vertical-align:top;width:33%;font-family:monospace;white-space:pre-wrap}}</style>
</head><body><h1>Parity report</h1><pre>{e(chr(10).join(summary_lines(report)))}</pre>
<table><tr><th>artifact</th><th>max abs</th><th>max rel</th><th>cosine</th><th>tolerance</th><th></th></tr>{rows}</table>
{pictures(report)}<h2>Answers side by side</h2>{cases}</body></html>"""
    return atomic_write(Path(path), body)
