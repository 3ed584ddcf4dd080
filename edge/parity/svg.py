"""Small inline-SVG pictures for the HTML reports (no plotting library): a log-scale line plot,
log-scale bars against a marker, and a per-token agreement strip."""

from __future__ import annotations

import html
import math

COLOURS = ["#1f77b4", "#d62728", "#2ca02c", "#9467bd"]
GOOD, BAD, AFTER, NONE = "#4caf50", "#e53935", "#d0d0d0", "#ffffff"
_e = html.escape


def _svg(width: int, height: int, parts: list[str]) -> str:
    return f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}">' + "".join(parts) + "</svg>"


def line_plot(series: dict[str, list[float]], title: str, xlabel: str, width: int = 640, height: int = 240) -> str:
    """A log-scale line plot of positive series."""
    pts = [v for vs in series.values() for v in vs if v > 0]
    if not pts:
        return f"<p>{_e(title)}: all values are 0</p>"
    lo, hi = math.log10(min(pts)), math.log10(max(pts))
    hi = hi if hi > lo else lo + 1
    n = max(len(v) for v in series.values())
    pad = 40

    def xy(i, v):
        x = pad + (width - 2 * pad) * (i / max(1, n - 1))
        y = height - pad - (height - 2 * pad) * ((math.log10(max(v, 10**lo)) - lo) / (hi - lo))
        return f"{x:.1f},{y:.1f}"

    parts = [f'<text x="{pad}" y="20" font-size="13">{_e(title)} (log scale: 1e{lo:.1f} .. 1e{hi:.1f})</text>',
             f'<line x1="{pad}" y1="{height - pad}" x2="{width - pad}" y2="{height - pad}" stroke="#888"/>',
             f'<text x="{width / 2}" y="{height - 8}" font-size="11">{_e(xlabel)}</text>']
    for k, (name, vs) in enumerate(series.items()):
        c = COLOURS[k % len(COLOURS)]
        parts.append(f'<polyline fill="none" stroke="{c}" points="{" ".join(xy(i, v) for i, v in enumerate(vs))}"/>')
        parts.append(f'<text x="{width - pad - 150}" y="{36 + 14 * k}" font-size="11" fill="{c}">{_e(name)}</text>')
    return _svg(width, height, parts)


def bars(items: dict[str, float | None], title: str, marker: float | None = 1.0, marker_label: str = "bound",
         width: int = 640) -> str:
    """Horizontal bars on a log axis, one per item, with a vertical marker (e.g. the tolerance at
    ratio 1): a bar past the marker is red. None or 0 values are drawn as labelled gaps."""
    vals = [v for v in items.values() if v and v > 0] + ([marker] if marker else [])
    if not vals:
        return f"<p>{_e(title)}: all values are 0</p>"
    lo = math.floor(math.log10(min(vals))) - 0.3
    hi = max(math.ceil(math.log10(max(vals))), lo + 1) + 0.01
    label_w, row, top = 190, 18, 28
    plot_w = width - label_w - 70
    height = top + row * len(items) + 24

    def x(v: float) -> float:
        return label_w + plot_w * (math.log10(v) - lo) / (hi - lo)

    parts = [f'<text x="4" y="16" font-size="13">{_e(title)} (log scale)</text>']
    for i, (name, v) in enumerate(items.items()):
        y = top + row * i
        parts.append(f'<text x="{label_w - 6}" y="{y + 12}" font-size="11" text-anchor="end">{_e(name)}</text>')
        if not v or v <= 0:
            parts.append(f'<text x="{label_w + 4}" y="{y + 12}" font-size="11" fill="#666">exact (0)</text>')
            continue
        colour = BAD if marker and v > marker else COLOURS[0]
        parts.append(f'<rect x="{label_w}" y="{y + 2}" width="{max(1.0, x(v) - label_w):.1f}" height="{row - 5}" '
                     f'fill="{colour}"><title>{_e(name)}: {v:.3g}</title></rect>')
        parts.append(f'<text x="{x(v) + 4:.1f}" y="{y + 12}" font-size="10">{v:.2g}</text>')
    if marker:
        mx = x(marker)
        parts.append(f'<line x1="{mx:.1f}" y1="{top - 4}" x2="{mx:.1f}" y2="{height - 18}" stroke="#000" '
                     f'stroke-dasharray="4,3"/>')
        parts.append(f'<text x="{mx + 3:.1f}" y="{height - 6}" font-size="10">{_e(marker_label)}</text>')
    return _svg(width, height, parts)


def agreement_strip(pairs: dict[str, int | None | str], tokens: int, title: str, cell: int = 10) -> str:
    """One row of cells per pair of systems, one cell per generated token: green while the two
    agree, red at the first token where they part, grey after it (no longer comparable), white
    when the pair was not run. `pairs`: name -> first differing token (None: equal throughout,
    "not run")."""
    label_w, row, top = 150, cell + 4, 22
    width = label_w + cell * max(tokens, 1) + 10
    height = top + row * len(pairs) + 4
    parts = [f'<text x="4" y="14" font-size="12">{_e(title)}</text>']
    for i, (name, first) in enumerate(pairs.items()):
        y = top + row * i
        parts.append(f'<text x="{label_w - 6}" y="{y + cell - 1}" font-size="11" text-anchor="end">{_e(name)}</text>')
        for k in range(tokens):
            if first == "not run":
                colour = NONE
            elif first is None or k < first:
                colour = GOOD
            else:
                colour = BAD if k == first else AFTER
            parts.append(f'<rect x="{label_w + cell * k}" y="{y}" width="{cell - 1}" height="{cell}" fill="{colour}" '
                         f'stroke="#bbb" stroke-width="0.5"/>')
    return _svg(width, height, parts)
