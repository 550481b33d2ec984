"""Combine several benchmark runs (seeds, pairs, models) into one table: `dda bench-summary DIR...`.

Each run directory holds the metrics.json that `dda bench` wrote. The summary reports, per method, the mean
and the spread over runs of each run's mean-over-queries AUC (the issue's "mean and std over queries, pairs
and seeds": a run's own std over queries stays in its report.md), the β curves averaged over runs, and the
checks the benchmark is judged by: DDA's AUC against 0.90, against every baseline and against its ablations.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ..io import write_json, write_text
from . import report

__all__ = ["BASELINES", "summarize_runs"]

# Methods DDA is compared against (ablations are DDA itself, the other debias reading is a DDA variant).
BASELINES: tuple[str, ...] = ("tracin", "trak", "grad_dot", "grad_cos", "bm25", "cea")
ABLATIONS: tuple[str, ...] = ("dda_no_debias", "dda_no_denoise", "dda_no_contrast")
TARGET_AUC = 0.90


def _load(run: Path) -> dict[str, Any]:
    path = run / "metrics.json"
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no metrics.json (is {run} a finished `dda bench` output?)")
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as err:
        raise ValueError(f"{path}: line {err.lineno}: not valid JSON ({err.msg})") from None


def _mean_std(values: Sequence[float]) -> tuple[float, float]:
    arr = np.asarray(values, dtype=np.float64)
    return float(arr.mean()), float(arr.std(ddof=1)) if len(arr) > 1 else 0.0


def summarize_runs(runs: Sequence[str | Path], out: str | Path) -> dict[str, Any]:
    """Read each run's metrics.json, write OUT/summary.json, OUT/summary.md and OUT/beta_mean.png."""
    if not runs:
        raise ValueError("bench-summary needs at least one run directory")
    paths = [Path(r) for r in runs]
    metrics = [_load(p) for p in paths]
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)

    common = set.intersection(*(set(m["methods"]) for m in metrics))
    methods: dict[str, dict[str, Any]] = {}
    for name in sorted(common):
        per_run = {key: [float(m["methods"][name][key]) for m in metrics] for key in ("auc", "ap", "recall@10")}
        auc_mean, auc_std = _mean_std(per_run["auc"])
        methods[name] = {
            "auc": auc_mean,
            "auc_std_over_runs": auc_std,
            "auc_per_run": per_run["auc"],
            "ap": float(np.mean(per_run["ap"])),
            "recall@10": float(np.mean(per_run["recall@10"])),
        }

    curves: dict[str, dict[str, Any]] = {}
    shared_keys = set.intersection(*(set(m.get("beta_curve") or {}) for m in metrics))
    for key in sorted(shared_keys):
        betas = metrics[0]["beta_curve"][key]["betas"]
        if any(m["beta_curve"][key]["betas"] != betas for m in metrics):
            continue  # runs swept different β grids: not averaged
        aucs = np.array([m["beta_curve"][key]["auc"] for m in metrics], dtype=np.float64)
        curves[key] = {
            "betas": betas,
            "auc": aucs.mean(axis=0).tolist(),
            "auc_std": (aucs.std(axis=0, ddof=1) if len(metrics) > 1 else 0 * aucs[0]).tolist(),
        }

    checks: dict[str, Any] = {}
    if "dda" in methods:
        dda = methods["dda"]["auc"]
        base = {b: methods[b]["auc"] for b in BASELINES if b in methods}
        checks = {
            f"dda_auc_ge_{TARGET_AUC:.2f}": dda >= TARGET_AUC,
            "dda_above_every_baseline": all(dda > v for v in base.values()),
            "best_baseline": max(base, key=base.get) if base else None,
            "dda_above_every_baseline_in_every_run": all(
                m["methods"]["dda"]["auc"] > max(m["methods"][b]["auc"] for b in base) for m in metrics
            )
            if base
            else None,
        }
        for ab in ABLATIONS:
            if ab in methods:
                checks[f"dda_gt_{ab}"] = dda > methods[ab]["auc"]

    run_rows = [
        {
            "dir": str(p),
            "seed": m.get("seed"),
            "pairs": m.get("pairs"),
            "model": m.get("model"),
            "n_train": m.get("n_train"),
            "n_poisoned": m.get("n_poisoned"),
            "n_queries": m.get("n_queries"),
            "query_mode": m.get("query_mode"),
            "query_kinds": m.get("query_kinds"),
            "hallucination_rate": m.get("hallucination_rate"),
            "wall_seconds": m.get("wall_seconds"),
        }
        for p, m in zip(paths, metrics, strict=True)
    ]
    summary = {"n_runs": len(metrics), "runs": run_rows, "methods": methods, "beta_curve": curves, "checks": checks}
    write_json(out / "summary.json", summary)

    figure = None
    head = "base" if "base" in curves else next(iter(curves), None)
    if head is not None:
        c = curves[head]
        figure = report.plot_beta_curve(
            c["betas"],
            c["auc"],
            c["auc_std"],
            out / "beta_mean.png",
            title=f"DDA AUC vs beta ({head} reading), mean over {len(metrics)} runs",
        )
    write_text(out / "summary.md", _markdown(summary, figure))
    return summary


def _pct(x: float | None) -> str:
    return "n/a" if x is None else f"{100 * x:.1f}%"


def _markdown(s: dict[str, Any], figure: str | None) -> str:
    lines = [
        f"# Benchmark summary over {s['n_runs']} run(s)",
        "",
        "## Runs",
        "",
        "| run | seed | pairs | queries (kinds) | natural error rate | wall |",
        "|---|---|---|---|---|---|",
    ]
    for r in s["runs"]:
        wall = "n/a" if r["wall_seconds"] is None else f"{r['wall_seconds'] / 60:.1f} min"
        kinds = " + ".join(f"{n} {k}" for k, n in (r.get("query_kinds") or {}).items()) or r["query_mode"]
        lines.append(
            f"| {Path(r['dir']).name} | {r['seed']} | {r['pairs']} | {r['n_queries']} ({kinds}) "
            f"| {_pct(r['hallucination_rate'])} | {wall} |"
        )
    lines += [
        "",
        "## Methods (AUC: mean over runs of each run's mean over queries; ± std over runs)",
        "",
        "| method | AUC | per run | AP | Recall@10 |",
        "|---|---|---|---|---|",
    ]
    for name, m in sorted(s["methods"].items(), key=lambda kv: -kv[1]["auc"]):
        per = " / ".join(f"{100 * a:.1f}" for a in m["auc_per_run"])
        lines.append(
            f"| `{name}` | {_pct(m['auc'])} ± {100 * m['auc_std_over_runs']:.1f} | {per} | "
            f"{_pct(m['ap'])} | {_pct(m['recall@10'])} |"
        )
    if s["beta_curve"]:
        keys = list(s["beta_curve"])
        betas = s["beta_curve"][keys[0]]["betas"]
        lines += [
            "",
            "## β curves (mean AUC over runs)",
            "",
            "| reading | " + " | ".join(f"β={b:g}" for b in betas) + " |",
            "|---|" + "---|" * len(betas),
        ]
        for k in keys:
            c = s["beta_curve"][k]
            if c["betas"] == betas:
                lines.append(f"| {k} | " + " | ".join(f"{100 * a:.1f}" for a in c["auc"]) + " |")
        if figure:
            lines += ["", f"![mean β curve]({Path(figure).name})"]
    if s["checks"]:
        lines += ["", "## Checks", ""] + [f"- {k}: {v}" for k, v in s["checks"].items()]
    return "\n".join(lines) + "\n"
