"""DDA's beta sweep over the debias readings, on the features the attribution already used, and its reading.

DDA is linear in beta (mean_k IS_k - beta * IS_0), so two scorer runs per reading give every point of a curve.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from ..scoring import ScoringContext, run_method
from .canary import CanaryPair
from .metrics import aggregate, per_query_metrics
from .presets import PAPER_BETA

__all__ = ["best_point", "beta_sweep", "debias_notes", "per_pair_best", "score_metrics"]


def _flat(agg: dict[str, dict[str, float]]) -> dict[str, float]:
    """aggregate() output -> {"auc": mean, "auc_std": std, ..., "n": n} (the shape report.py reads)."""
    out: dict[str, float] = {}
    for key, v in agg.items():
        out[key] = v["mean"]
        out[f"{key}_std"] = v["std"]
        out["n"] = max(int(out.get("n", 0)), int(v["n"]))
    return out


def score_metrics(
    scores: np.ndarray, masks: np.ndarray, distractors: np.ndarray | None = None
) -> tuple[dict[str, float], list[dict[str, float]]]:
    pq = per_query_metrics(scores, masks, distractor_mask=distractors)
    return _flat(aggregate(pq)), pq


def beta_sweep(
    ctx: ScoringContext, masks: np.ndarray, betas: Sequence[float], distractors: np.ndarray | None = None
) -> dict[str, dict[str, Any]]:
    """DDA at every beta for the three debias readings, module-normalised (the default) and raw, on the features
    of `ctx` (the attribution's own): every point is a few dot products."""
    fs = ctx.features
    if fs is None:
        raise ValueError("the beta sweep needs gradient features in the scoring context")
    curves: dict[str, dict[str, Any]] = {}
    # key suffix -> normalize value; "" is the library default ("module" when the features are per module)
    norms = {"": "auto", "_raw": "none"} if fs.blocks is not None else {"": "none"}
    for mode in ("base", "cross", "query0"):
        for suffix, normalize in norms.items():
            key = mode + suffix
            aucs, stds, aps, dis, per_query = [], [], [], [], []
            # Two scorer runs give every point: at beta=0 the mean term, at beta=1 the mean minus the debias
            # term; exact up to float rounding.
            spec = f"dda(beta={{}},debias_mode={mode},normalize={normalize})"
            mean_term = run_method(spec.format(0.0), ctx)
            bias_term = mean_term - run_method(spec.format(1.0), ctx)
            for b in betas:
                flat, pq = score_metrics(mean_term - b * bias_term, masks, distractors)
                aucs.append(flat["auc"])
                stds.append(flat["auc_std"])
                aps.append(flat["ap"])
                dis.append(flat.get("distractor_auc"))
                per_query.append([r["auc"] for r in pq])
            curves[key] = {
                "debias_mode": mode,
                "normalize": normalize,
                "betas": list(betas),
                "auc": aucs,
                "auc_std": stds,
                "ap": aps,
                "distractor_auc": dis,
                "per_query_auc": per_query,
            }
    return curves


def best_point(curves: dict[str, dict[str, Any]]) -> tuple[str, float, float]:
    best = max(
        ((k, b, a) for k, c in curves.items() for b, a in zip(c["betas"], c["auc"], strict=True)),
        key=lambda t: (t[2], -abs(t[1])),
    )  # ties: the smaller |beta| (the simpler score)
    return best


def debias_notes(curves: dict[str, dict[str, Any]], pairs_curves: dict[str, Any]) -> list[str]:
    """Plain-language reading of the beta sweep: which reading and which sign of beta did best."""
    key, beta, auc = best_point(curves)
    c0 = curves["base"]
    at0 = c0["auc"][c0["betas"].index(0.0)] if 0.0 in c0["betas"] else None
    lines = [
        f"β sweep best: {auc * 100:.1f}% AUC at β = {beta:g} with the '{key}' reading "
        f"(base: both gradients at θ0; cross: query at θk, training at θ0; query0: query at θ0, training at "
        f"θk; no suffix: module-normalised gradients, the default; _raw: plain dot products)."
    ]
    parts = []
    for k, c in curves.items():
        pos = [(a, b) for b, a in zip(c["betas"], c["auc"], strict=True) if b > 0]
        neg = [(a, b) for b, a in zip(c["betas"], c["auc"], strict=True) if b < 0]
        zero = [a for b, a in zip(c["betas"], c["auc"], strict=True) if b == 0]
        bp, bn = max(pos) if pos else None, max(neg) if neg else None
        desc = f"{k}: β=0 {zero[0] * 100:.1f}%" if zero else f"{k}:"
        if bp:
            desc += f", best β>0 {bp[0] * 100:.1f}% (β={bp[1]:g})"
        if bn:
            desc += f", best β<0 {bn[0] * 100:.1f}% (β={bn[1]:g})"
        if zero and bp and bn:
            options = sorted(
                [
                    (bp[0], "subtracting the base score (β>0, the paper's sign)"),
                    (bn[0], "adding the base score (β<0)"),
                    (zero[0], "no debiasing (β=0)"),
                ],
                reverse=True,
            )
            margin = options[0][0] - options[1][0]
            # With a handful of queries a sub-point difference is noise, so it is not called a win.
            desc += (
                f" → {options[0][1]} did best (+{margin * 100:.1f} points)"
                if margin >= 0.01
                else " → no sign clearly better (within 1 AUC point)"
            )
        parts.append(desc)
    lines.append("β sign by reading — " + "; ".join(parts) + ".")
    if at0 is not None:
        paper = [a for b, a in zip(c0["betas"], c0["auc"], strict=True) if b == PAPER_BETA]
        if paper:
            trend = "rises" if paper[0] > at0 else "falls" if paper[0] < at0 else "stays flat"
            lines.append(
                f"Paper check: the paper reports AUC rising with β to a plateau near {PAPER_BETA:g}; here "
                f"(base reading) AUC {trend} from {at0 * 100:.1f}% at β=0 to {paper[0] * 100:.1f}% at "
                f"β={PAPER_BETA:g}."
            )
    if pairs_curves:
        per = "; ".join(
            f"{p}: best β={v['beta']:g} ({v['reading']}, {v['auc'] * 100:.1f}%)" for p, v in pairs_curves.items()
        )
        lines.append(f"Best β per pair (a choice made on one pair should be confirmed on the others): {per}.")
    return lines


def per_pair_best(curves: dict[str, dict[str, Any]], qpairs: list[CanaryPair]) -> dict[str, Any]:
    labels = sorted({p.label for p in qpairs})
    if len(labels) < 2:
        return {}
    out = {}
    for lab in labels:
        idx = [i for i, p in enumerate(qpairs) if p.label == lab]
        best = max(
            (
                (k, b, float(np.mean([c["per_query_auc"][j][i] for i in idx])))
                for k, c in curves.items()
                for j, b in enumerate(c["betas"])
            ),
            key=lambda t: (t[2], -abs(t[1])),
        )
        out[lab] = {"reading": best[0], "beta": best[1], "auc": best[2]}
    return out


# -------------------------------------------------------------------------------------------------- main
