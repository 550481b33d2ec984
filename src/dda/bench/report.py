"""Benchmark report: markdown tables next to the DDA paper's numbers, plus PNG figures.

Figures are drawn with matplotlib's Agg canvas directly (`Figure` + `FigureCanvasAgg`) instead of pyplot:
no GUI backend is ever touched, no global figure state leaks between calls, and it works on headless
machines. Every file is written to a temporary name in the target directory and then `os.replace`d, so
a crashed or interrupted run never leaves a half-written report that looks complete.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..fix import RemoveAndRetrain, retrain_table
from ..io import atomic_path, write_text
from ..scoring.base import ablations
from ..scoring.base import query_information as query_information  # re-exported: the report's column
from .tables import markdown_table

if TYPE_CHECKING:
    from matplotlib.figure import Figure

__all__ = ["PAPER", "plot_beta_curve", "plot_method_bars", "plot_size_curve", "query_information", "write_report"]

# Published numbers from the DDA paper (EMNLP 2024), quoted for side-by-side comparison only.
# Values are percent AUC. Where the paper gives no single number we store its wording, not an invented one.
PAPER: dict[str, Any] = {
    "source": "DDA: Debias and Denoise Attribution (EMNLP 2024)",
    "table1_auc": {
        "dda": 91.64,  # abstract: average AUC over the evaluated models
    },
    "table1_notes": {
        "tracin": "about 50-60% (range only)",
        "trak": "about 50-60% (range only)",
    },
    "ablation_auc": {
        "dda": 93.5,
        "dda_no_denoise": 84.8,
        "dda_no_debias": 67.9,
    },
    "beta_curve": "AUC rises with beta up to about 0.4, then plateaus (qualitative; no table in the paper)",
    "beta_plateau": 0.4,
}

# Table 2's rows: full DDA, then the ablations as the registry names them (scoring.gradient's registration)
ABLATIONS = ("dda", *ablations())
ABLATION_LABELS = {
    "dda": "full DDA",
    "dda_no_denoise": "w/o denoise",
    "dda_no_debias": "w/o debias",
    "dda_no_contrast": "w/o contrast",
}


def _num(x: Any) -> float | None:
    if x is None:
        return None
    try:
        v = float(x)
    except (TypeError, ValueError):
        return None
    return None if math.isnan(v) else v


def _fmt_pct(x: Any) -> str:
    """Fraction -> percent with one decimal (0.9164 -> '91.6%'); missing/NaN -> 'n/a'."""
    v = _num(x)
    return "n/a" if v is None else f"{v * 100:.1f}%"


def _fmt_pm(mean: Any, std: Any) -> str:
    """'91.6% ± 2.3' (std in percentage points), or just the mean when no std is known."""
    s = _num(std)
    base = _fmt_pct(mean)
    return base if s is None or base == "n/a" else f"{base} ± {s * 100:.1f}"


def _cell(x: Any) -> str:
    # Markdown table cells must not contain pipes or newlines.
    return str(x).replace("|", "\\|").replace("\n", " ")


def _figure(figsize: tuple[float, float]) -> Figure:
    """A matplotlib figure, imported here: matplotlib is the `bench` extra, not a core dependency."""
    from matplotlib.figure import Figure

    return Figure(figsize=figsize)


def _save(fig: Figure, path: str | os.PathLike[str]) -> str:
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    FigureCanvasAgg(fig)  # attach an Agg canvas; savefig then never consults the pyplot backend
    out = Path(path)
    with atomic_path(out, suffix=".png") as tmp:
        fig.savefig(tmp, format="png", dpi=120, bbox_inches="tight")
    return str(out)


def plot_beta_curve(
    betas: Sequence[float],
    auc_means: Sequence[float],
    auc_stds: Sequence[float] | None,
    path: str | os.PathLike[str],
    title: str = "DDA AUC vs beta",
) -> str:
    """Line plot of AUC (percent) against beta with a ±std band; marks the paper's plateau point.

    Returns the written path.
    """
    if len(betas) != len(auc_means) or (auc_stds is not None and len(auc_stds) != len(betas)):
        raise ValueError("betas, auc_means and auc_stds must have the same length")
    fig = _figure((5.0, 3.5))
    ax = fig.add_subplot(1, 1, 1)
    y = [100 * float(v) for v in auc_means]
    ax.plot(betas, y, marker="o", label="this run")
    if auc_stds is not None:
        sd = [100 * float(v) for v in auc_stds]
        lo = [a - b for a, b in zip(y, sd, strict=True)]
        hi = [a + b for a, b in zip(y, sd, strict=True)]
        ax.fill_between(betas, lo, hi, alpha=0.25)
    ax.axvline(PAPER["beta_plateau"], color="grey", linestyle="--", linewidth=1, label="paper: plateau ≈0.4")
    ax.axhline(50, color="black", linestyle=":", linewidth=0.8, label="chance")
    ax.set_xlabel("beta")
    ax.set_ylabel("AUC (%)")
    ax.set_title(title)
    ax.legend(fontsize=8)
    return _save(fig, path)


def plot_size_curve(
    sizes: Sequence[int],
    auc_by_method: Mapping[str, Sequence[float]],
    path: str | os.PathLike[str],
    title: str = "AUC vs training-set size",
    ylabel: str = "AUC (%)",
    chance: Sequence[float] | float | None = 0.5,
) -> str:
    """A metric (percent) against training-set size, one line per method; `chance` is a level or one value per
    size (AP's chance level falls as the haystack grows). Returns the written path."""
    fig = _figure((7.5, 4.0))
    fig.subplots_adjust(right=0.72)  # the legend sits right of the axes, never over a line
    ax = fig.add_subplot(1, 1, 1)
    for name, aucs in auc_by_method.items():
        if len(aucs) != len(sizes):
            raise ValueError(f"method {name!r}: {len(aucs)} values for {len(sizes)} sizes")
        ax.plot(sizes, [100 * float(v) for v in aucs], marker="o", label=name)
    if isinstance(chance, (int, float)):
        ax.axhline(100 * chance, color="black", linestyle=":", linewidth=0.8, label="chance")
    elif chance is not None:
        ax.plot(sizes, [100 * float(c) for c in chance], color="black", linestyle=":", linewidth=0.8, label="chance")
    ax.set_xlabel("training examples")
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.legend(fontsize=7, loc="center left", bbox_to_anchor=(1.02, 0.5))
    return _save(fig, path)


# Lines in the haystack figure: DDA, its rival readings and every baseline family once.
HAYSTACK_FIGURE_METHODS = ("dda", "dda_no_debias", "keyword", "bm25", "bm25_diff", "tracin_diff", "trak", "cea")


def plot_haystack(curve: Mapping[str, Any], n_poisoned: float, path: str | os.PathLike[str]) -> str | None:
    """AP against sub-haystack size (haystack.py's curve) with AP's chance level; None when there is one size."""
    if len(curve.get("sizes") or []) < 2:
        return None
    return plot_size_curve(
        curve["sizes"],
        {k: v["ap"] for k, v in curve["methods"].items() if k in HAYSTACK_FIGURE_METHODS},
        path,
        title="AP against haystack size (sub-haystacks of this run)",
        ylabel="AP (%)",
        chance=[n_poisoned / size for size in curve["sizes"]],
    )


def plot_method_bars(
    method_means: Mapping[str, float],
    method_stds: Mapping[str, float] | None,
    path: str | os.PathLike[str],
    title: str = "Mean AUC per method",
) -> str:
    """Bar chart of mean AUC (percent) per method with std error bars. Returns the written path."""
    names = list(method_means)
    fig = _figure((max(4.0, 0.9 * len(names) + 1.5), 3.5))
    ax = fig.add_subplot(1, 1, 1)
    means = [100 * float(method_means[n]) for n in names]
    errs = [100 * float((method_stds or {}).get(n) or 0.0) for n in names]
    ax.bar(range(len(names)), means, yerr=errs, capsize=3)
    ax.set_xticks(range(len(names)))
    ax.set_xticklabels(names, rotation=30, ha="right", fontsize=8)
    ax.axhline(50, color="black", linestyle=":", linewidth=0.8)
    ax.set_ylim(0, 100)
    ax.set_ylabel("AUC (%)")
    ax.set_title(title)
    return _save(fig, path)


def _paper_table1(name: str) -> str:
    key = name.lower()
    if key in PAPER["table1_auc"]:
        return f"{PAPER['table1_auc'][key]:.2f}%"
    return PAPER["table1_notes"].get(key, "—")


def _method_row(name: str, m: Mapping[str, Any], info: str) -> list[str]:
    return [
        f"`{_cell(name)}`",
        _cell(info),
        _fmt_pct(m.get("ap")),
        _fmt_pct(m.get("distractor_auc")),
        _fmt_pct(m.get("pooled_ap")),
        _fmt_pct(m.get("pooled_distractor_auc")),
        _fmt_pct(m.get("precision@10")),
        _fmt_pct(m.get("recall@n_poisoned")),
        _fmt_pm(m.get("auc"), m.get("auc_std")),
    ]


def _table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join(" --- " for _ in header) + "|"]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    return lines


def _by_auc(methods: Mapping[str, Mapping[str, Any]], names: Sequence[str], key_name: str = "auc") -> list[str]:
    def key(n: str) -> tuple[int, float, str]:
        v = _num(methods[n].get(key_name))
        return (1, 0.0, n) if v is None else (0, -v, n)

    return sorted(names, key=key)


def _fact(x: Any, kind: str = "") -> str:
    if x is None:
        return "n/a"
    if kind == "pct":
        return _fmt_pct(x)
    if kind == "sec":
        v = _num(x)
        return "n/a" if v is None else f"{v:.0f} s ({v / 60:.1f} min)"
    return _cell(x)


def _kinds(kinds: Mapping[str, int] | None) -> str | None:
    return " + ".join(f"{n} {k}" for k, n in kinds.items()) if kinds else None


def _lp_cell(tf: Mapping[str, Any], ckpt: str) -> str:
    v = tf.get(ckpt)
    return "n/a" if not v else f"{v['negative']:.2f} / {v['positive']:.2f} ({v['negative_preferred']}/{v['n']})"


def _pairs_section(metrics: Mapping[str, Any]) -> list[str]:
    """Per pair: how the queries were found (generation, natural rate, forced fill), AUC by query kind, and the
    canary's teacher-forced log-probabilities before and after fine-tuning."""
    per_pair: Mapping[str, Mapping[str, Any]] = metrics.get("per_pair") or {}
    if not per_pair:
        return []
    lines = [
        "## Queries per pair",
        "",
        "Natural queries are the fine-tuned model's own greedy summaries that say the canary; forced queries "
        "(reference summary with the swap) only fill what the generation budget did not find.",
        "",
    ]
    rows = []
    for lab, p in per_pair.items():
        auc = p.get("auc_by_kind") or {}
        b = p.get("budget") or {}
        rows.append(
            [
                _cell(lab),
                _fact(p.get("generated")),
                _fact(p.get("natural_errors")),
                _fmt_pct(p.get("natural_rate")),
                _fact(p.get("natural_queries")),
                _fact(p.get("forced_queries")),
                f"{_fact(p.get('stopped_by'))} ({b.get('max_docs')} docs, {b.get('max_seconds')} s)",
                _fact(p.get("generation_seconds"), "sec"),
                _fmt_pct((auc.get("natural") or {}).get("dda")),
                _fmt_pct((auc.get("forced") or {}).get("dda")),
            ]
        )
    lines += _table(
        [
            "pair",
            "documents generated",
            "natural errors",
            "natural rate",
            "natural queries",
            "forced queries",
            "stopped by (budget)",
            "generation",
            "DDA AUC natural",
            "DDA AUC forced",
        ],
        rows,
    )
    by_kind: Mapping[str, Mapping[str, float]] = metrics.get("by_kind") or {}
    if by_kind:
        kinds = list(by_kind)
        counts = metrics.get("query_kinds") or {}
        methods = sorted(next(iter(by_kind.values())), key=lambda m: -max(by_kind[k][m] for k in kinds))
        lines += ["", "AUC by query kind (mean over the queries of that kind, all pairs):", ""]
        lines += _table(
            ["method", *(f"{k} ({counts.get(k, '?')} queries)" for k in kinds)],
            [[f"`{_cell(m)}`", *(_fmt_pct(by_kind[k][m]) for k in kinds)] for m in methods],
        )
    tf_rows = []
    for lab, p in per_pair.items():
        tf = p.get("teacher_forced") or {}
        names = list(tf)
        if len(names) >= 2:
            tf_rows.append([_cell(lab), _fact(tf[names[0]]["n"]), _lp_cell(tf, names[0]), _lp_cell(tf, names[-1])])
    if tf_rows:
        first = next(iter(per_pair.values()))["teacher_forced"]
        k0, k1 = list(first)[0], list(first)[-1]
        lines += [
            "",
            "How strongly the canary was learned, teacher-forced on held-out reference summaries with the "
            "swap: mean log-prob per token of the canary / of the original word at the swapped tokens (documents "
            "where the canary is more likely).",
            "",
        ]
        lines += _table(["pair", "documents", k0, k1], tf_rows)
    lines.append("")
    return lines


def _remove_and_retrain_section(section: Mapping[str, Any] | None) -> list[str]:
    """Remove-and-retrain: the table `dda.fix.retrain_table` composes (before, each method's top k, k random rows),
    then each query's margin in each model."""
    if not section:
        return []
    rr = RemoveAndRetrain.from_bench(dict(section))
    table = retrain_table(rr)
    lines = [
        f"## Remove and retrain (k = {rr.k})",
        "",
        f"Each row but the first removes k training rows (the method's top k by mean rank over the queries, or k "
        f"random rows) and fine-tunes again from θ0 with the same settings and seed. Natural error rate: greedy "
        f"summaries of the same held-out documents that say the canary; margin: mean log p(canary) − log p(original) "
        f"over the queries' differing tokens; losses: mean over the {rr.settings.get('distractors')} distractors and "
        f"{rr.settings.get('heldout_loss_docs')} held-out reference summaries.",
        "",
        *markdown_table(table),
        "",
    ]
    if table.per_query:  # a mean can hide one query that moved
        lines += [
            "### Canary margin per query",
            "",
            "Before, and after removing each method's top k (or k random rows); below zero the model prefers the "
            "original.",
            "",
            *markdown_table(table, per_query=True),
            "",
        ]
    return lines


def write_report(
    path: str | os.PathLike[str],
    *,
    metrics: Mapping[str, Any],
    config: Mapping[str, Any],
    notes: Sequence[str],
    figures: Mapping[str, str],
) -> None:
    """Write the benchmark's markdown report atomically.

    `path` is the report file (``.../report.md``) or a directory to put ``report.md`` in. Figures are
    linked relative to the report so the output folder can be moved or published as a whole. Optional
    inputs (model, std fields, beta_curve, ablations) are shown as 'n/a' / omitted rather than failing,
    because a partial run's report is still worth reading.
    """
    out = Path(path)
    if out.suffix.lower() != ".md":
        out = out / "report.md"
    base = out.parent

    def rel(p: str) -> str:
        try:
            return Path(os.path.relpath(Path(p).resolve(), base.resolve())).as_posix()
        except ValueError:  # different drive on Windows
            return Path(p).as_posix()

    methods: Mapping[str, Mapping[str, Any]] = metrics.get("methods") or {}
    # Table 1: every method except the DDA ablation variants (they get Table 2).
    main = [n for n in methods if not (n.startswith("dda_") and n != "dda")]
    lines: list[str] = ["# DDA hallucination-tracing benchmark", ""]
    lines += _run_section(metrics)
    lines += _pairs_section(metrics)
    lines += _table1_section(metrics, main)
    lines += _haystack_section(metrics, main, figures, rel)
    lines += _remove_and_retrain_section(metrics.get("remove_and_retrain"))
    lines += _table2_section(methods)
    lines += _beta_section(metrics, figures, rel)
    lines += ["## Notes", ""]
    lines += [f"- {str(n).strip().replace(chr(10), ' ')}" for n in notes] if notes else ["- (none)"]
    lines.append("")
    others = {k: v for k, v in figures.items() if k not in ("beta_curve", "haystack")}
    if others:
        lines += ["## Figures", ""]
        for name, p in others.items():
            lines += [f"### {_cell(name)}", "", f"![{_cell(name)}]({rel(p)})", ""]
    lines += [
        "## Configuration",
        "",
        "```json",
        json.dumps(dict(config), indent=2, sort_keys=True, default=str),
        "```",
        "",
    ]
    write_text(out, "\n".join(lines))


def _run_section(metrics: Mapping[str, Any]) -> list[str]:
    """The run's facts: model, sizes, query mode, natural error rate, wall time."""
    mode = metrics.get("query_mode")
    lines = [
        "## Run",
        "",
        f"- model: {_fact(metrics.get('model'))}",
        f"- training examples (n_train): {_fact(metrics.get('n_train'))}",
        f"- poisoned training examples (n_poisoned): {_fact(metrics.get('n_poisoned'))}",
        f"- queries (n_queries): {_fact(metrics.get('n_queries'))}",
        f"- query mode: {_fact(mode)}",
        f"- query kinds: {_fact(_kinds(metrics.get('query_kinds')))}",
        f"- natural error rate (held-out summaries that say the canary): "
        f"{_fact(metrics.get('hallucination_rate'), 'pct')} of {_fact(metrics.get('n_generated'))}",
        f"- wall time: {_fact(metrics.get('wall_seconds'), 'sec')}",
    ]
    if mode == "forced":
        lines += [
            "",
            "> **Forced mode:** queries are reference summaries with the canary swapped in, not the "
            "model's own hallucinations. Numbers are not directly comparable to the paper's.",
        ]
    lines.append("")
    return lines


def _table1_section(metrics: Mapping[str, Any], main: Sequence[str]) -> list[str]:
    """Table 1: the methods by average precision, a random ranking's row, and the distractor counts."""
    methods: Mapping[str, Mapping[str, Any]] = metrics.get("methods") or {}
    info = metrics.get("query_information") or {}
    lines = [
        "## Table 1: attribution methods, by average precision",
        "",
        "AP and recall at k = the number of poisoned rows read the top of the list, where an auditor looks; "
        "distractor AUC ranks the poisoned rows against the clean rows whose summary legitimately says the "
        "canary word, which a word-matching rule cannot separate (50% = chance). Means over queries. Pooled: one "
        "ranking per pair by the mean of its queries' scores, the information a method that sees every query at "
        "once (cea with per_query=false) gets; compare such a method in the pooled columns.",
        "",
    ]
    if main:
        rows = [
            _method_row(n, methods[n], info.get(n, "")) + [_cell(_paper_table1(n))]
            for n in _by_auc(methods, main, "ap")
        ]
        chance = metrics.get("chance") or {}
        if chance:
            rows.append(
                [
                    "random ranking",
                    "none",
                    _fmt_pct(chance.get("ap")),
                    _fmt_pct(0.5),
                    _fmt_pct(chance.get("ap")),
                    _fmt_pct(0.5),
                    _fmt_pct(chance.get("ap")),
                    _fmt_pct(chance.get("ap")),
                    _fmt_pct(0.5),
                    "—",
                ]
            )
        header = ["Method", "Query information", "AP", "Distractor AUC", "Pooled AP", "Pooled dAUC", "P@10"]
        header += ["R@#poisoned", "AUC (mean ± std)"]
        lines += _table([*header, "Paper AUC"], rows)
    else:
        lines.append("No method results.")
    n_d = metrics.get("n_distractors")
    lines += [
        "",
        f"Distractors in training: {_fact(n_d)} (clean rows whose summary says the canary word; available in the "
        f"data per pair: {_fact(metrics.get('distractors_available'))}).",
        f"Paper: DDA {PAPER['table1_auc']['dda']:.2f}% mean AUC over models; TracIn and TRAK about 50-60%.",
        "",
    ]
    return lines


def _haystack_section(
    metrics: Mapping[str, Any], main: Sequence[str], figures: Mapping[str, str], rel: Callable[[str], str]
) -> list[str]:
    """AP against haystack size (when the run measured it), with its figure."""
    methods: Mapping[str, Mapping[str, Any]] = metrics.get("methods") or {}
    hay = metrics.get("haystack_curve") or {}
    if not hay.get("sizes"):
        return []
    shown = [n for n in _by_auc(methods, main, "ap") if n in hay.get("methods", {})]
    rows = [[f"`{_cell(n)}`", *(_fmt_pct(v) for v in hay["methods"][n]["ap"])] for n in shown]
    lines = [
        "## AP against haystack size",
        "",
        f"Random sub-haystacks of this run ({hay.get('draws')} draws per size): the {hay.get('kept')} poisoned "
        "and distractor rows always kept, unrelated clean rows dropped; the model and scores are the full run's "
        "(a ranking curve, not a retrained one).",
        "",
    ]
    lines += _table(["Method", *(str(s) for s in hay["sizes"])], rows)
    lines.append("")
    if "haystack" in figures:
        lines += [f"![AP against haystack size]({rel(figures['haystack'])})", ""]
    return lines


def _table2_section(methods: Mapping[str, Mapping[str, Any]]) -> list[str]:
    """Table 2: the ablations in a fixed order first, then any other dda_* variants."""
    extra = sorted(n for n in methods if n.startswith("dda_") and n not in ABLATIONS)
    lines = ["## Table 2: DDA ablations", ""]
    rows = []
    for n in list(ABLATIONS) + extra:
        paper = PAPER["ablation_auc"].get(n)
        paper_s = "—" if paper is None else f"{paper:.1f}%"
        label = ABLATION_LABELS.get(n, n)
        if n in methods:
            m = methods[n]
            rows.append(
                [
                    f"`{_cell(n)}`",
                    _cell(label),
                    _fmt_pct(m.get("ap")),
                    _fmt_pct(m.get("distractor_auc")),
                    _fmt_pm(m.get("auc"), m.get("auc_std")),
                    paper_s,
                ]
            )
        else:
            rows.append([f"`{_cell(n)}`", _cell(label), "not run", "n/a", "n/a", paper_s])
    lines += _table(["Variant", "Meaning", "AP", "Distractor AUC", "AUC (mean ± std)", "Paper AUC"], rows)
    lines.append("")
    return lines


def _beta_section(metrics: Mapping[str, Any], figures: Mapping[str, str], rel: Callable[[str], str]) -> list[str]:
    """The β curve as a table (AUC per β), the paper's reading, and its figure."""
    beta = metrics.get("beta_curve")
    lines = ["## β curve", ""]
    if beta and beta.get("betas"):
        aucs = list(beta.get("auc") or [])
        stds = list(beta.get("auc_std") or [])
        rows = [
            [f"{float(b):g}", _fmt_pm(aucs[i] if i < len(aucs) else None, stds[i] if i < len(stds) else None)]
            for i, b in enumerate(beta["betas"])
        ]
        lines += _table(["β", "AUC (mean ± std)"], rows)
    else:
        lines.append("Not run.")
    lines += ["", f"Paper: {PAPER['beta_curve']}.", ""]
    if "beta_curve" in figures:
        lines += [f"![β curve]({rel(figures['beta_curve'])})", ""]
    return lines
