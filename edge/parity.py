"""`gemma3n-edge parity`: run the artifacts and the PyTorch reference on the same prompts.

The report is data, not a bool (STYLE.md §8): per artifact max abs / relative error and
cosine; per decode step the same plus top-1/top-5 agreement and KL(ref || artifacts);
and a free-running greedy comparison (match, tokens compared, first divergence).

Decoder steps are teacher-forced with the reference's own greedy tokens, so every step
compares the same context even after a divergence. The reference is transformers'
Gemma3nForConditionalGeneration in fp32, imported lazily: `edge/` itself stays torch-free.
"""

from __future__ import annotations

import html
import json
import math
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from edge.errors import UserError

DEFAULT_PROMPTS = (
    "The for statement is used to iterate over the elements of a sequence.",
    "Explain what a dictionary is.",
)


def _softmax(x: np.ndarray) -> np.ndarray:
    e = np.exp(x - x.max(-1, keepdims=True))
    return e / e.sum(-1, keepdims=True)


def compare(ref: np.ndarray, got: np.ndarray) -> dict[str, float]:
    """Max abs / relative error and cosine of two tensors of the same shape."""
    ref, got = np.asarray(ref, np.float64).ravel(), np.asarray(got, np.float64).ravel()
    err = float(np.max(np.abs(ref - got))) if ref.size else 0.0
    scale = float(np.max(np.abs(ref))) if ref.size else 0.0
    denom = float(np.linalg.norm(ref) * np.linalg.norm(got))
    return {"max_abs_error": err, "max_rel_error": err / scale if scale else err,
            "cosine": float(ref @ got / denom) if denom else 1.0}


def compare_logits(ref: np.ndarray, got: np.ndarray) -> dict[str, float]:
    out = compare(ref, got)
    p, q = _softmax(ref.astype(np.float64)), _softmax(got.astype(np.float64))
    out["kl"] = float(np.sum(p * (np.log(p + 1e-30) - np.log(q + 1e-30))))
    out["top1"] = bool(ref.argmax() == got.argmax())
    out["top5"] = bool(ref.argmax() in np.argsort(-got)[:5])
    return out


# ----------------------------------------------------------------------------- reference side


class Reference:
    """The HF model in fp32 and the few quantities parity needs from it."""

    def __init__(self, checkpoint: str | Path):
        import torch
        from transformers import Gemma3nForConditionalGeneration

        self.torch = torch
        self.model = Gemma3nForConditionalGeneration.from_pretrained(str(checkpoint), dtype=torch.float32).eval()

    def embeddings(self, ids: Sequence[int]) -> np.ndarray:
        """inputs_embeds as Gemma3nModel.forward builds them for token ids (multimodal vocab rows included)."""
        torch, m = self.torch, self.model.model
        t = torch.tensor([list(ids)])
        with torch.no_grad():
            emb = m.get_input_embeddings()(t)
            for tower, lo, hi in ((m.embed_vision, m.embed_vision.vocab_offset, m.embed_audio.vocab_offset),
                                  (m.embed_audio, m.embed_audio.vocab_offset, 1 << 62)):
                sel = (t >= lo) & (t < hi)
                safe = torch.where(sel, t, torch.full_like(t, lo))
                emb = torch.where(sel[..., None], tower(input_ids=safe), emb)
        return emb.numpy()

    def per_layer(self, ids: Sequence[int]) -> np.ndarray:
        with self.torch.no_grad():
            return self.model.model.language_model.get_per_layer_inputs(self.torch.tensor([list(ids)])).numpy()

    def greedy(self, prompt_ids: Sequence[int], n: int, vocab: int | None = None, **media) -> list[int]:
        """n argmax tokens with HF's own KV cache, never stopping early (no eos suppression either),
        over the first `vocab` ids only (the text ids a phone can emit; HF's `suppress_tokens` for the rest).

        media: pixel_values / input_features + input_features_mask for the first forward pass.
        """
        torch = self.torch
        with torch.no_grad():
            out = self.model(torch.tensor([list(prompt_ids)]), use_cache=True, **media)
            tokens = []
            for _ in range(n):
                tokens.append(int(out.logits[0, -1, :vocab].argmax()))
                out = self.model(torch.tensor([[tokens[-1]]]), past_key_values=out.past_key_values, use_cache=True)
        return tokens

    def logits(self, ids: Sequence[int], vocab: int | None = None) -> np.ndarray:
        """(len(ids), vocab) softcapped logits of one forward pass (all ids by default)."""
        with self.torch.no_grad():
            return self.model(self.torch.tensor([list(ids)])).logits[0, :, :vocab].float().numpy()


# ----------------------------------------------------------------------------- artifact side


def _decoder_steps(pipeline, seq: Sequence[int], prompt_len: int) -> list[np.ndarray]:
    """Teacher-forced decode logits for positions prompt_len-1 .. len(seq)-2, LiteRT-LM style."""
    ex = pipeline.executor
    ex.reset()
    if prompt_len > 1:
        pipeline._prefill(list(seq[: prompt_len - 1]))
    return [pipeline._text_logits(ex.decode(*pipeline.embed([seq[pos]]), pos))
            for pos in range(prompt_len - 1, len(seq) - 1)]


def greedy_tokens(pipeline, prompt_ids: Sequence[int], n: int, soft: dict | None = None) -> list[int]:
    """Exactly n argmax tokens from the artifacts (no stop tokens), soft-token rows spliced in."""
    ex = pipeline.executor
    ex.reset()
    ids = list(prompt_ids)
    pipeline._prefill(ids[:-1], soft)
    token, pos, out = ids[-1], len(ids) - 1, []
    for _ in range(n):
        token = int(np.argmax(pipeline._text_logits(ex.decode(*pipeline.embed([token]), pos))))
        out.append(token)
        pos += 1
    return out


def run_parity(artifacts: str | Path, reference: str | Path, *, prompts: Sequence[str] = DEFAULT_PROMPTS,
               max_tokens: int = 32) -> dict[str, Any]:
    """Compare the artifact directory with the reference checkpoint; returns the report dict."""
    from edge.runtime.loader import load_pipeline

    try:
        import torch  # noqa: F401
    except ImportError:
        raise UserError("parity needs the PyTorch reference: install gemma3n-edge[convert] (torch, transformers)") from None
    pipeline, manifest = load_pipeline(artifacts)
    ref = Reference(reference)
    model = manifest.model
    try:
        report: dict[str, Any] = {"artifacts_dir": str(artifacts), "reference": str(reference),
                                  "recipe": manifest.recipe.get("name"), "prompts": list(prompts), "artifacts": {},
                                  "steps": [], "generation": {}}
        # Token embedders: the prompt ids plus the multimodal vocab's special ids.
        probe = sorted({*pipeline.prompt_ids(prompts[0]),
                        *(v for k, v in model.tokens.items().items() if k in ("eoi", "image_soft", "eoa", "audio_soft"))})
        for name, got, want in (("embedder", pipeline.embedder.lookup(probe), ref.embeddings(probe)),
                                ("per_layer_embedder",
                                 pipeline.per_layer_embedder.lookup(probe) if pipeline.per_layer_embedder else None,
                                 ref.per_layer(probe))):
            if got is not None:
                report["artifacts"][name] = {**compare(want, got), "tokens": len(probe)}

        steps, matches, compared, first_div = [], 0, 0, None
        for pi, prompt in enumerate(prompts):
            ids = pipeline.prompt_ids(prompt)
            n = min(max_tokens, model.context_length - len(ids))  # stay inside the KV cache
            if n < 1:
                raise UserError(f"prompt {pi + 1} is {len(ids)} tokens: it does not fit the context "
                                f"({model.context_length}); use a shorter --prompt")
            vocab = pipeline.tokenizer.sp_vocab_size  # what either side may emit: text ids
            ref_tokens = ref.greedy(ids, n, vocab)
            seq = ids + ref_tokens
            ref_logits = ref.logits(seq, vocab)
            got = _decoder_steps(pipeline, seq, len(ids))
            for k, g in enumerate(got):
                s = compare_logits(ref_logits[len(ids) - 1 + k], g)
                steps.append({"prompt": pi, "step": k, "position": len(ids) - 1 + k, **s})
            sim_tokens = greedy_tokens(pipeline, ids, n)
            same = [a == b for a, b in zip(sim_tokens, ref_tokens)]
            compared += len(same)
            if all(same):
                matches += 1
            elif first_div is None:
                first_div = {"prompt": pi, "step": same.index(False)}
            report.setdefault("samples", []).append({"prompt": prompt, "reference_tokens": ref_tokens,
                                                     "artifact_tokens": sim_tokens,
                                                     "reference_text": pipeline.tokenizer.decode(ref_tokens),
                                                     "artifact_text": pipeline.tokenizer.decode(sim_tokens)})
        report["steps"] = steps
        report["artifacts"]["decoder"] = {
            "max_abs_error": max(s["max_abs_error"] for s in steps),
            "max_rel_error": max(s["max_rel_error"] for s in steps),
            "cosine": min(s["cosine"] for s in steps), "steps": len(steps)}
        report["generation"] = {
            "greedy_match": matches == len(prompts), "prompts_matching": matches, "tokens_compared": compared,
            "first_divergence": first_div,
            "top1_agreement": float(np.mean([s["top1"] for s in steps])),
            "top5_agreement": float(np.mean([s["top5"] for s in steps])),
            "kl_mean": float(np.mean([s["kl"] for s in steps])), "kl_max": float(np.max([s["kl"] for s in steps]))}
        for name, spec in manifest.artifacts.items():
            key = {"prefill_decode": "decoder"}.get(spec.kind, spec.kind)
            entry = report["artifacts"].get(key)
            if entry is not None and spec.tolerance is not None:
                entry["tolerance"] = spec.tolerance.max_abs
                entry["within_tolerance"] = bool(entry["max_abs_error"] <= spec.tolerance.max_abs)
        return report
    finally:
        pipeline.close()


# ----------------------------------------------------------------------------- output


def summary_lines(report: dict[str, Any]) -> list[str]:
    lines = [f"parity of {report['artifacts_dir']} (recipe {report['recipe']}) against {report['reference']}"]
    for name, a in report["artifacts"].items():
        tol = f"  (tolerance {a['tolerance']:g}: {'ok' if a['within_tolerance'] else 'EXCEEDED'})" if "tolerance" in a else ""
        lines.append(f"  {name:<20} max abs {a['max_abs_error']:.3g}  rel {a['max_rel_error']:.3g}  "
                     f"cosine {a['cosine']:.6f}{tol}")
    g = report["generation"]
    lines.append(f"  greedy: {'identical' if g['greedy_match'] else 'DIVERGES at ' + json.dumps(g['first_divergence'])}"
                 f" over {g['tokens_compared']} tokens; top-1 {g['top1_agreement']:.1%}, top-5 {g['top5_agreement']:.1%}, "
                 f"KL mean {g['kl_mean']:.3g} max {g['kl_max']:.3g}")
    return lines


def _svg_plot(series: dict[str, list[float]], title: str, width: int = 640, height: int = 240) -> str:
    """A log-scale line plot as inline SVG (no plotting library needed)."""
    pts = [v for vs in series.values() for v in vs if v > 0]
    if not pts:
        return f"<p>{html.escape(title)}: all values are 0</p>"
    lo, hi = math.log10(min(pts)), math.log10(max(pts))
    hi = hi if hi > lo else lo + 1
    n = max(len(v) for v in series.values())
    colours = ["#1f77b4", "#d62728", "#2ca02c", "#9467bd"]
    pad = 40

    def xy(i, v):
        x = pad + (width - 2 * pad) * (i / max(1, n - 1))
        y = height - pad - (height - 2 * pad) * ((math.log10(max(v, 10**lo)) - lo) / (hi - lo))
        return f"{x:.1f},{y:.1f}"

    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}">',
             f'<text x="{pad}" y="20" font-size="13">{html.escape(title)} (log scale: 1e{lo:.1f} .. 1e{hi:.1f})</text>',
             f'<line x1="{pad}" y1="{height - pad}" x2="{width - pad}" y2="{height - pad}" stroke="#888"/>',
             f'<text x="{width / 2}" y="{height - 8}" font-size="11">decode step (all prompts)</text>']
    for k, (name, vs) in enumerate(series.items()):
        c = colours[k % len(colours)]
        parts.append(f'<polyline fill="none" stroke="{c}" points="{" ".join(xy(i, v) for i, v in enumerate(vs))}"/>')
        parts.append(f'<text x="{width - pad - 150}" y="{36 + 14 * k}" font-size="11" fill="{c}">{html.escape(name)}</text>')
    parts.append("</svg>")
    return "".join(parts)


def write_html(report: dict[str, Any], path: str | Path) -> Path:
    from edge.fileio import atomic_write

    steps = report["steps"]
    rows = "".join(f"<tr><td>{html.escape(n)}</td><td>{a['max_abs_error']:.3g}</td><td>{a['max_rel_error']:.3g}</td>"
                   f"<td>{a['cosine']:.6f}</td><td>{a.get('tolerance', '')}</td></tr>"
                   for n, a in report["artifacts"].items())
    samples = "".join(f"<h3>{html.escape(s['prompt'])}</h3><p><b>reference:</b> {html.escape(s['reference_text'])}</p>"
                      f"<p><b>artifacts:</b> {html.escape(s['artifact_text'])}</p>" for s in report.get("samples", []))
    body = f"""<!doctype html><html><head><meta charset="utf-8"><title>gemma3n-edge parity</title>
<style>body{{font-family:sans-serif;max-width:760px;margin:2em auto}}td,th{{padding:2px 10px;text-align:right}}</style>
</head><body><h1>Parity report</h1><pre>{html.escape(chr(10).join(summary_lines(report)))}</pre>
<table><tr><th>artifact</th><th>max abs</th><th>max rel</th><th>cosine</th><th>tolerance</th></tr>{rows}</table>
{_svg_plot({"decoder logits max abs error": [s["max_abs_error"] for s in steps],
            "KL(ref || artifacts)": [s["kl"] for s in steps]}, "decoder error per decode step")}
<h2>Greedy samples</h2>{samples}</body></html>"""
    return atomic_write(Path(path), body)
