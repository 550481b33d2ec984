"""The results tables, built once from typed runs (`run_record.BenchRun`) and only formatted by their readers.

The README and benchmarks README blocks (`make tables`, tools/results.py), the docs' results page and report.md
take their tables from here; the remove-and-retrain table is `dda.fix.retrain_table`, which `dda fix` prints too.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from ..fix import RetrainTable, markdown, retrain_table
from .run_record import BenchRun

__all__ = [
    "PAIR_METHODS",
    "haystack_curve",
    "haystack_methods",
    "haystack_pairs",
    "markdown_table",
    "natural_pairs",
    "remove_and_retrain",
]

# Methods shown per pair, in this order: DDA, the rules with the same information, then the other families.
PAIR_METHODS = ("dda", "keyword", "bm25_diff", "bm25", "tracin_diff", "trak", "cea")
NAMED_RUN = tuple[str, BenchRun]


def _pct(x: float | None) -> str:
    return "n/a" if x is None else f"{100 * float(x):.1f}"


def _wall(run: BenchRun) -> str:
    mins = (run.wall_seconds or 0) / 60
    return f"{mins:.1f} min" + (f" ({run.machine.cores} cores)" if run.machine.cores else "")


def _method_cells(run: BenchRun, methods: Sequence[str], keys: tuple[str, str]) -> list[str]:
    """'A / B' per method: two of its metrics in percent, or a dash for a method the run did not score."""
    cells = []
    for method in methods:
        r = run.methods.get(method)
        cells.append("–" if r is None else f"{_pct(r.get(keys[0]))} / {_pct(r.get(keys[1]))}")
    return cells


def haystack_pairs(runs: Sequence[NAMED_RUN]) -> str:
    """One row per run: the split, the queries, the wall time, then AP / distractor AUC per method."""
    if not runs:
        return "No cpu-haystack results are committed yet.\n"
    head = ["run", "pair", "seed", "rows (poisoned, distractors)", "queries natural / forced", "natural rate", "wall"]
    head += [f"{m} AP / dAUC" for m in PAIR_METHODS] + ["dda pooled AP / dAUC"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for name, run in runs:
        d, q = run.data, run.queries
        kinds = q.get("query_kinds") or {}
        cells = [
            f"`{name}`",
            ", ".join(run.pairs),
            str(d.get("seed")),
            f"{d.get('n_train')} ({d.get('n_poisoned')}, {d.get('n_distractors')})",
            f"{kinds.get('natural', 0)} / {kinds.get('forced', 0)}",
            _pct(q.get("hallucination_rate")) + "%",
            _wall(run),
        ]
        cells += _method_cells(run, PAIR_METHODS, ("ap", "distractor_auc"))
        cells += _method_cells(run, ("dda",), ("pooled_ap", "pooled_distractor_auc"))
        lines.append("| " + " | ".join(cells) + " |")
    cpus = sorted({run.machine.describe() for _, run in runs})
    lines += [
        "",
        f"AP and distractor AUC (dAUC) in percent, means over each run's queries; {len(runs)} run(s) on "
        f"{'; '.join(cpus)}. Files: results/<run>/metrics.json.",
    ]
    return "\n".join(lines) + "\n"


METHOD_KEYS = ("ap", "distractor_auc", "pooled_ap", "pooled_distractor_auc", "precision@10", "recall@n_poisoned", "auc")


def haystack_methods(runs: Sequence[NAMED_RUN]) -> str:
    """Every method over the runs: mean AP, distractor AUC, pooled AP and dAUC, P@10, R@#poisoned and AUC, by AP."""
    if not runs:
        return "No cpu-haystack results are committed yet.\n"
    names = sorted(set.intersection(*(set(run.methods) for _, run in runs)))

    def mean(name: str, key: str) -> float | None:
        vals = [v for v in (run.methods[name].get(key) for _, run in runs) if v is not None]
        return float(np.mean(vals)) if vals else None

    rows = sorted(names, key=lambda n: -(mean(n, "ap") or 0.0))
    info = runs[0][1].query_information
    chance = float(np.mean([run.chance_ap or 0.0 for _, run in runs]))
    lines = [
        "| method | query information | AP | distractor AUC | pooled AP | pooled dAUC | P@10 | R@#poisoned | AUC |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for n in rows:
        lines.append(f"| `{n}` | {info.get(n, '')} | " + " | ".join(_pct(mean(n, k)) for k in METHOD_KEYS) + " |")
    c = _pct(chance)
    lines.append(f"| random ranking | none | {c} | 50.0 | {c} | 50.0 | {c} | {c} | 50.0 |")
    n_queries = sum(int(run.queries.get("n_queries") or 0) for _, run in runs)
    lines += [
        "",
        f"Means over {len(runs)} run(s) ({n_queries} queries in all), percent. AP, distractor AUC, P@10, R and AUC "
        "rank once per query; *pooled* ranks once per pair by the mean of its queries' scores, the information "
        "`cea` gets (one set of optimiser steps on all of a pair's queries), so the pooled columns compare it "
        "with the others on equal terms.",
    ]
    return "\n".join(lines) + "\n"


def haystack_curve(runs: Sequence[NAMED_RUN]) -> str:
    """AP against sub-haystack size for every run that has the curve (the ranking curve each report draws)."""
    runs = [(name, run) for name, run in runs if run.haystack and run.haystack.sizes]
    if not runs:
        return "No cpu-haystack results are committed yet.\n"
    lines = []
    for name, run in runs:
        c = run.haystack
        assert c is not None
        shown = [n for n in PAIR_METHODS if n in c.ap]
        lines += [
            f"`{name}` ({', '.join(run.pairs)}), AP in percent against rows ranked:",
            "",
            "| method | " + " | ".join(str(s) for s in c.sizes) + " |",
            "|---|" + "---|" * len(c.sizes),
        ]
        lines += [f"| `{n}` | " + " | ".join(_pct(v) for v in c.ap[n]) + " |" for n in shown]
        lines.append("")
    return "\n".join(lines)


# The natural-query tables: DDA, then the baselines issue 29 asks for in every table; `signature` last, a ceiling.
NATURAL_METHODS = ("dda", "keyword", "unsupported", "repsim", "cea", "bm25_diff", "signature")


def natural_rate(run: BenchRun) -> tuple[int, int]:
    """(errors, generations) over every pair's held-out documents that name ORIG inside the prompt window."""
    per_pair = run.extra.get("per_pair") or {}
    errors = sum(int(p.get("natural_errors_in_window") or 0) for p in per_pair.values())
    return errors, sum(int(p.get("generated_in_window") or 0) for p in per_pair.values())


def natural_pairs(runs: Sequence[NAMED_RUN], roles: dict[str, str]) -> str:
    """One row per natural-query run: its role (development or held-out, from results/preregistered-pairs.yaml),
    the in-window natural error rate, the wall time, then per-query AP and pooled AP per method."""
    if not runs:
        return "No cpu-haystack-natural results are committed yet.\n"
    head = ["run", "role", "seed", "natural queries", "natural rate in window", "wall"]
    head += [f"{m} AP / pooled AP" for m in NATURAL_METHODS] + ["dda AUC / dAUC"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for name, run in runs:
        errors, generated = natural_rate(run)
        kinds = run.queries.get("query_kinds") or {}
        cells = [
            f"`{name}`",
            roles.get(f"{','.join(run.pairs)}@{run.data.get('seed')}", "not registered"),
            str(run.data.get("seed")),
            str(kinds.get("natural", 0)),
            f"{errors}/{generated} ({_pct(errors / generated if generated else None)}%)",
            _wall(run),
        ]
        cells += _method_cells(run, NATURAL_METHODS, ("ap", "pooled_ap"))
        cells += _method_cells(run, ("dda",), ("auc", "distractor_auc"))
        lines.append("| " + " | ".join(cells) + " |")
    cpus = sorted({run.machine.describe() for _, run in runs})
    lines += [
        "",
        f"Percent; AP is the mean over a run's queries, pooled AP ranks once per pair by the mean of its queries' "
        f"scores. `signature` knows how the poison was made: a ceiling, not a competitor. The natural rate counts "
        f"the held-out summaries whose document names ORIG inside the prompt window and that say CANARY, up to "
        f"the point where generation stopped (once the queries wanted were found). {len(runs)} run(s) on "
        f"{'; '.join(cpus)}. Files: results/<run>/metrics.json.",
    ]
    return "\n".join(lines) + "\n"


def markdown_table(table: RetrainTable, per_query: bool = False) -> list[str]:
    """The remove-and-retrain table (or its per-query margins) as markdown lines."""
    header, rows = (table.per_query_header, table.per_query) if per_query else (table.header, table.rows)
    lines = ["| " + " | ".join(markdown(c) for c in header) + " |", "|" + "---|" * len(header)]
    return lines + ["| " + " | ".join(markdown(c) for c in row) + " |" for row in rows]


def remove_and_retrain(name: str, run: BenchRun) -> list[str]:
    """One run's remove-and-retrain table with what the stage cost (README, docs' results page)."""
    rr = run.remove_and_retrain
    if rr is None:
        return []
    before = next((m for m in rr.models if m.label == "before"), None)
    stage = run.timings.get("remove_and_retrain") or 0
    lines = [
        f"`{name}` ({run.preset}, {', '.join(run.pairs)}, seed {run.data.get('seed')}; "
        f"k = {rr.k} of {run.data.get('n_train')} rows, {run.data.get('n_poisoned')} poisoned; "
        f"{before.probes.get('generated') if before else None} held-out summaries per model; the stage took "
        f"{stage / 60:.1f} of the run's {(run.wall_seconds or 0) / 60:.1f} min on {run.machine.describe()}):",
        "",
    ]
    return [*lines, *markdown_table(retrain_table(rr)), ""]
