"""The β curve of a bench run as an inline SVG (no script, no external reference), for the report page."""

from __future__ import annotations

import html
from typing import Any


def beta_svg(curves: dict[str, Any], primary: str = "base", width: int = 560, height: int = 300) -> str:
    """AUC (%) against β for every reading in metrics.json's beta_curve, as an inline SVG (no script)."""
    if not curves:
        return ""
    if "betas" in curves:  # a single curve (report.md's shape)
        curves = {primary: curves}
    pts = [
        (float(b), float(a))
        for c in curves.values()
        for b, a in zip(c["betas"], c["auc"], strict=True)
        if a is not None
    ]
    if not pts:
        return ""
    x0, x1 = min(p[0] for p in pts), max(p[0] for p in pts)
    y0 = min(40.0, min(100 * p[1] for p in pts) - 2)
    y1 = 100.0
    left, right, top, bottom = 46, 130, 14, 34
    pw, ph = width - left - right, height - top - bottom

    def sx(x: float) -> float:
        return left + (x - x0) / max(x1 - x0, 1e-9) * pw

    def sy(y: float) -> float:
        return top + (y1 - y) / max(y1 - y0, 1e-9) * ph

    palette = ["#b91c1c", "#1d4ed8", "#047857", "#7c3aed", "#b45309", "#0e7490"]
    out = [
        f'<svg class="beta" viewBox="0 0 {width} {height}" width="{width}" height="{height}" role="img" '
        f'aria-label="DDA AUC against beta">'
    ]
    for y in range(int(y0 // 10 * 10 + 10), 101, 10):
        out.append(
            f'<line x1="{left}" x2="{left + pw}" y1="{sy(y):.1f}" y2="{sy(y):.1f}" class="grid"/>'
            f'<text x="{left - 6}" y="{sy(y) + 4:.1f}" text-anchor="end">{y}</text>'
        )
    ticks = sorted({p[0] for p in pts})
    for b in ticks:
        if b in (x0, x1) or abs(b) >= 0.5 or b == 0:
            out.append(f'<text x="{sx(b):.1f}" y="{top + ph + 16}" text-anchor="middle">{b:g}</text>')
    out.append(f'<text x="{left + pw / 2:.1f}" y="{height - 2}" text-anchor="middle">β</text>')
    out.append(
        f'<text x="12" y="{top + ph / 2:.1f}" transform="rotate(-90 12 {top + ph / 2:.1f})" '
        f'text-anchor="middle">AUC %</text>'
    )
    if y0 < 50:
        out.append(f'<line x1="{left}" x2="{left + pw}" y1="{sy(50):.1f}" y2="{sy(50):.1f}" class="chance"/>')
    if x0 <= 0.4 <= x1:
        out.append(
            f'<line x1="{sx(0.4):.1f}" x2="{sx(0.4):.1f}" y1="{top}" y2="{top + ph}" class="paper"/>'
            f'<text x="{sx(0.4) + 3:.1f}" y="{top + 10}" class="small">paper β≈0.4</text>'
        )
    keys = sorted(curves, key=lambda k: (k != primary, k))
    for i, key in enumerate(keys):
        c = curves[key]
        xy = [(sx(float(b)), sy(100 * float(a))) for b, a in zip(c["betas"], c["auc"], strict=True) if a is not None]
        color = palette[i % len(palette)]
        width_px = 2.6 if key == primary else 1.2
        path = " ".join(f"{x:.1f},{y:.1f}" for x, y in xy)
        out.append(f'<polyline points="{path}" fill="none" stroke="{color}" stroke-width="{width_px}"/>')
        for x, y in xy:
            out.append(f'<circle cx="{x:.1f}" cy="{y:.1f}" r="{2.4 if key == primary else 1.6}" fill="{color}"/>')
        out.append(
            f'<text x="{left + pw + 8}" y="{top + 12 + 15 * i}" fill="{color}">'
            f"{html.escape(key)}{' (dda)' if key == primary else ''}</text>"
        )
    out.append("</svg>")
    return "".join(out)
