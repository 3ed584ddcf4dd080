"""How far the artifacts' tensors are from the reference's: the statistics parity reports and judges."""

from __future__ import annotations

import numpy as np


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


def compare_rows(ref: np.ndarray, got: np.ndarray, rows: int) -> dict[str, float]:
    """compare() of `rows` looked-up table rows, plus the worst row's max |error| / max |reference value|
    (the quantizers' error bounds are per table row: edge/parity/tolerances.py)."""
    out = compare(ref, got)
    ref = np.asarray(ref, np.float64).reshape(rows, -1)
    err = np.abs(ref - np.asarray(got, np.float64).reshape(ref.shape)).max(-1)
    scale = np.abs(ref).max(-1)
    rel = np.where(scale > 0, err / np.where(scale > 0, scale, 1), np.where(err > 0, np.inf, 0.0))
    out["max_row_relative_error"] = float(rel.max()) if rel.size else 0.0
    return out


def compare_logits(ref: np.ndarray, got: np.ndarray) -> dict[str, float]:
    out = compare(ref, got)
    p, q = _softmax(ref.astype(np.float64)), _softmax(got.astype(np.float64))
    out["kl"] = float(np.sum(p * (np.log(p + 1e-30) - np.log(q + 1e-30))))
    out["top1"] = bool(ref.argmax() == got.argmax())
    out["top5"] = bool(ref.argmax() in np.argsort(-got)[:5])
    return out


def merge(checks: dict, name: str, stats: dict) -> None:
    """Worst case over every input the artifact was checked on."""
    old = checks.get(name)
    if old is None:
        checks[name] = {**stats, "inputs": 1}
        return
    checks[name] = {"max_abs_error": max(old["max_abs_error"], stats["max_abs_error"]),
                    "max_rel_error": max(old["max_rel_error"], stats["max_rel_error"]),
                    "cosine": min(old["cosine"], stats["cosine"]), "inputs": old["inputs"] + 1}
