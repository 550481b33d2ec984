"""Combine several benchmark runs (seeds, pairs, models) into one table: `dda bench-summary DIR...`.

Each run directory holds the metrics.json that `dda bench` wrote. The summary reports, per method, the mean
and the spread over runs of each run's mean-over-queries AUC (the issue's "mean and std over queries, pairs
and seeds": a run's own std over queries stays in its report.md), the β curves averaged over runs, and the
checks the benchmark is judged by: DDA's AUC against 0.90, against every baseline and against its ablations.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ..io import write_json, write_text
from . import report
from .presets import DEFAULT_METHODS
from .run_record import read_run

__all__ = ["BASELINES", "summarize_runs"]

# Methods DDA is compared against (ablations are DDA itself, the other debias reading is a DDA variant).
BASELINES: tuple[str, ...] = tuple(m for m in DEFAULT_METHODS if not m.startswith("dda"))
KEYS: tuple[str, ...] = (
    "auc",
    "ap",
    "distractor_auc",
    "pooled_ap",
    "pooled_distractor_auc",
    "precision@10",
    "recall@n_poisoned",
    "recall@10",
)
ABLATIONS: tuple[str, ...] = report.ABLATIONS[1:]  # the registry's ablations (full DDA is the reference)
TARGET_AUC = 0.90


def _load(run: Path) -> dict[str, Any]:
    """A run's metrics.json through the run record: the schema checked, an older run migrated."""
    return read_run(run).to_dict()


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
        # Runs written before a metric existed lack it: that metric is then averaged over the runs that have it.
        per_run = {key: [m["methods"][name].get(key) for m in metrics] for key in KEYS}
        auc_mean, auc_std = _mean_std(per_run["auc"])
        ap_mean, ap_std = _mean_std([v for v in per_run["ap"] if v is not None])
        methods[name] = {
            "auc": auc_mean,
            "auc_std_over_runs": auc_std,
            "auc_per_run": per_run["auc"],
            "ap_std_over_runs": ap_std,
            "ap_per_run": per_run["ap"],
            "distractor_auc_per_run": per_run["distractor_auc"],
        }
        for key in KEYS[1:]:
            have = [float(v) for v in per_run[key] if v is not None]
            methods[name][key] = float(np.mean(have)) if have else None
        methods[name]["ap"] = ap_mean

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
        if "keyword" in methods:
            for key in ("ap", "distractor_auc"):
                a, b = methods["dda"].get(key), methods["keyword"].get(key)
                checks[f"dda_{key}_above_keyword"] = None if a is None or b is None else a > b

    run_rows = [
        {
            "dir": str(p),
            "seed": m.get("seed"),
            "pairs": m.get("pairs"),
            "model": m.get("model"),
            "n_train": m.get("n_train"),
            "n_poisoned": m.get("n_poisoned"),
            "n_distractors": m.get("n_distractors"),
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


def _per_run(values: Sequence[float | None]) -> str:
    return " / ".join("n/a" if v is None else f"{100 * v:.1f}" for v in values)


def _markdown(s: dict[str, Any], figure: str | None) -> str:
    lines = [
        f"# Benchmark summary over {s['n_runs']} run(s)",
        "",
        "## Runs",
        "",
        "| run | seed | pairs | training rows (poisoned, distractors) | queries (kinds) | natural error rate | wall |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in s["runs"]:
        wall = "n/a" if r["wall_seconds"] is None else f"{r['wall_seconds'] / 60:.1f} min"
        kinds = " + ".join(f"{n} {k}" for k, n in (r.get("query_kinds") or {}).items()) or r["query_mode"]
        lines.append(
            f"| {Path(r['dir']).name} | {r['seed']} | {r['pairs']} | {r['n_train']} ({r['n_poisoned']}, "
            f"{r.get('n_distractors', 'n/a')}) | {r['n_queries']} ({kinds}) | {_pct(r['hallucination_rate'])} "
            f"| {wall} |"
        )
    lines += [
        "",
        "## Methods (mean over runs of each run's mean over queries; AP ± std over runs), by AP",
        "",
        "| method | AP | AP per run | distractor AUC | pooled AP | pooled dAUC | P@10 | R@#poisoned | AUC "
        "| AUC per run |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for name, m in sorted(s["methods"].items(), key=lambda kv: -(kv[1]["ap"] or 0.0)):
        lines.append(
            f"| `{name}` | {_pct(m['ap'])} ± {100 * m['ap_std_over_runs']:.1f} | {_per_run(m['ap_per_run'])} | "
            f"{_pct(m['distractor_auc'])} | {_pct(m['pooled_ap'])} | {_pct(m['pooled_distractor_auc'])} | "
            f"{_pct(m['precision@10'])} | {_pct(m['recall@n_poisoned'])} | "
            f"{_pct(m['auc'])} | {_per_run(m['auc_per_run'])} |"
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
