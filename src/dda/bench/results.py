"""Committed benchmark results and the tables generated from them: `python -m dda.bench.results`.

A finished `dda bench` run holds large and borrowed files (checkpoints, feature stores, the training rows, which
are XSum text from shared data). `export` copies only what a reader needs to check a number: metrics.json,
report.md, config.yaml, the figures, and queries.jsonl without the documents. `render` rewrites every table block
in README.md and benchmarks/README.md from the files under results/, so a table that no longer matches its files
shows up as a diff (and `--check` fails, as the test suite does).

A block is the text between ``<!-- table:NAME -->`` and ``<!-- /table:NAME -->``; NAME picks the renderer.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ..io import read_json, write_json, write_text

__all__ = ["RENDERERS", "add_pooled", "export_run", "machine_info", "render_blocks", "render_file"]

SMALL_FILES = ("metrics.json", "report.md", "config.yaml", "summary.md", "summary.json")
# Methods shown per pair, in this order: DDA, the rules with the same information, then the other families.
PAIR_METHODS = ("dda", "keyword", "bm25_diff", "bm25", "tracin_diff", "trak", "cea")


def machine_info() -> dict[str, Any]:
    """The CPU a wall time was measured on (model name, vector extensions, cores): times differ ~3x across hosts."""
    model, flags = None, set()
    try:
        for line in Path("/proc/cpuinfo").read_text(encoding="utf-8").splitlines():
            key, _, value = line.partition(":")
            if key.strip() == "model name" and model is None:
                model = value.strip()
            elif key.strip() == "flags" and not flags:
                flags = set(value.split())
    except OSError:
        pass
    vector = sorted(f for f in flags if f in ("avx2", "avx512f", "avx512_bf16", "avx512_vnni", "amx_tile", "fma"))
    return {"cpu": model, "vector_flags": vector, "cores": os.cpu_count()}


def export_run(run: str | Path, dest: str | Path) -> Path:
    """Copy a finished run's small files to `dest` (results/<run>); queries keep ids, kinds and the model's own
    outputs, never the documents (shared XSum text stays out of the repository)."""
    run, dest = Path(run), Path(dest)
    if not (run / "metrics.json").is_file():
        raise FileNotFoundError(f"{run / 'metrics.json'}: not a finished `dda bench` run")
    dest.mkdir(parents=True, exist_ok=True)
    for name in SMALL_FILES:
        if (run / name).is_file():
            shutil.copyfile(run / name, dest / name)
    for fig in sorted((run / "figures").glob("*.png")) if (run / "figures").is_dir() else []:
        (dest / "figures").mkdir(exist_ok=True)
        shutil.copyfile(fig, dest / "figures" / fig.name)
    for png in sorted(run.glob("*.png")):  # bench-summary's figures
        shutil.copyfile(png, dest / png.name)
    _draw_haystack(dest)
    if (run / "queries.jsonl").is_file():
        rows = []
        for line in (run / "queries.jsonl").read_text(encoding="utf-8").splitlines():
            if not line.strip():
                continue
            row = json.loads(line)
            natural = row.get("kind") == "natural"
            rows.append(
                {
                    k: v
                    for k, v in row.items()
                    # A natural query's texts are the model's generation; a forced one's are an XSum summary, and
                    # the reference summary and the document are XSum text either way.
                    if k not in ("prompt", "document", "reference")
                    and (natural or k not in ("negative", "positive", "generation"))
                }
            )
        write_text(dest / "queries.jsonl", "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))
    return dest


def add_pooled(run: str | Path) -> dict[str, dict[str, float]]:
    """Add the pooled metrics (`metrics.pooled_metrics`) to a finished run's metrics.json, computed from its stored
    score arrays, for runs made before the benchmark wrote them; returns {method: pooled metrics}.

    The masks are rebuilt from poisoned.json, train.jsonl and queries.jsonl, and checked first: every method's
    per-query AP recomputed from the same arrays must equal the one in metrics.json, or nothing is written."""
    from ..attribution import load_attribution
    from ..data import Example
    from .canary import CanaryPair
    from .hallucination import distractor_masks
    from .metrics import per_query_metrics, pooled_metrics

    run = Path(run)
    metrics = read_json(run / "metrics.json")
    att = load_attribution(run / "attribution")
    train = _jsonl(run / "train.jsonl")
    if [r["id"] for r in train] != list(att.train_ids):
        raise ValueError(f"{run / 'train.jsonl'}: rows are not in the order of the stored scores")
    pair_of = {q["id"]: q["pair"] for q in _jsonl(run / "queries.jsonl")}
    groups = [pair_of[q.id] for q in att.queries]
    poisoned = {label: set(ids) for label, ids in read_json(run / "poisoned.json").items()}
    masks = np.array([[r["id"] in poisoned[g] for r in train] for g in groups], dtype=bool)
    # the benchmark's own rule for which clean rows are distractors, on the run's rows and pairs
    examples = [Example(r["id"], r["document"], r["summary"]) for r in train]
    distractors = distractor_masks(examples, [CanaryPair(*g.split("->", 1)) for g in groups], masks)
    pooled = {}
    for name, scores in att.scores.items():
        stored = metrics["methods"][name]["ap"]
        again = float(np.mean([r["ap"] for r in per_query_metrics(scores, masks, distractor_mask=distractors)]))
        if abs(again - stored) > 1e-6:
            raise ValueError(f"{run}: {name}'s AP from the stored scores is {again}, metrics.json says {stored}")
        pooled[name] = pooled_metrics(scores, masks, distractors, groups)
        metrics["methods"][name].update(pooled[name])
    # the information column says cea saw all queries at once, which runs before the pooled metrics did not say
    from .report import query_information

    query_tokens = _yaml(run / "config.yaml")["dda"]["features"]["query_tokens"]
    metrics["query_information"] = {name: query_information(name, query_tokens) for name in metrics["methods"]}
    write_json(run / "metrics.json", metrics)
    return pooled


def _yaml(path: Path) -> dict[str, Any]:
    import yaml

    return yaml.safe_load(path.read_text(encoding="utf-8"))


def _jsonl(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def _draw_haystack(dest: Path) -> None:
    """The AP-against-haystack-size figure drawn again from metrics.json with today's plotting code, so every
    committed run's figure looks the same whatever version drew it first."""
    from .report import plot_haystack

    m = read_json(dest / "metrics.json")
    if m.get("haystack_curve"):
        (dest / "figures").mkdir(exist_ok=True)
        plot_haystack(m["haystack_curve"], m["n_poisoned"], dest / "figures" / "haystack_ap.png")


# ------------------------------------------------------------------------------------------------ render


def _pct(x: Any) -> str:
    return "n/a" if x is None else f"{100 * float(x):.1f}"


def _runs(root: Path, preset: str | None = None) -> list[tuple[Path, dict[str, Any]]]:
    out = []
    for path in sorted(root.glob("*/metrics.json")):
        m = read_json(path)
        if preset is None or m.get("preset") == preset:
            out.append((path.parent, m))
    return out


def _wall(m: dict[str, Any]) -> str:
    mins = (m.get("wall_seconds") or 0) / 60
    machine = m.get("machine") or {}
    return f"{mins:.1f} min" + (f" ({machine.get('cores')} cores)" if machine.get("cores") else "")


def _cpu(machine: dict[str, Any]) -> str:
    flags = ", ".join(machine.get("vector_flags") or []) or "flags unknown"
    return f"{machine.get('cpu') or 'unknown CPU'} ({flags})"


def haystack_pairs(root: Path) -> str:
    """One row per cpu-haystack run: the split, the queries, the wall time, then AP / distractor AUC per method."""
    runs = _runs(root, "cpu-haystack")
    if not runs:
        return "No cpu-haystack results are committed yet.\n"
    head = ["run", "pair", "seed", "rows (poisoned, distractors)", "queries natural / forced", "natural rate", "wall"]
    head += [f"{m} AP / dAUC" for m in PAIR_METHODS] + ["dda pooled AP / dAUC"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for path, m in runs:
        kinds = m.get("query_kinds") or {}
        cells = [
            f"`{path.name}`",
            ", ".join(m.get("pairs") or []),
            str(m.get("seed")),
            f"{m.get('n_train')} ({m.get('n_poisoned')}, {m.get('n_distractors')})",
            f"{kinds.get('natural', 0)} / {kinds.get('forced', 0)}",
            _pct(m.get("hallucination_rate")) + "%",
            _wall(m),
        ]
        for name in PAIR_METHODS:
            r = (m.get("methods") or {}).get(name)
            cells.append("–" if r is None else f"{_pct(r.get('ap'))} / {_pct(r.get('distractor_auc'))}")
        r = (m.get("methods") or {}).get("dda") or {}
        cells.append(f"{_pct(r.get('pooled_ap'))} / {_pct(r.get('pooled_distractor_auc'))}")
        lines.append("| " + " | ".join(cells) + " |")
    cpus = sorted({_cpu(m.get("machine") or {}) for _, m in runs})
    lines += [
        "",
        f"AP and distractor AUC (dAUC) in percent, means over each run's queries; {len(runs)} run(s) on "
        f"{'; '.join(cpus)}. Files: results/<run>/metrics.json.",
    ]
    return "\n".join(lines) + "\n"


def haystack_methods(root: Path) -> str:
    """Every method over the cpu-haystack runs: mean AP, distractor AUC, P@10, R@#poisoned and AUC, by AP."""
    runs = _runs(root, "cpu-haystack")
    if not runs:
        return "No cpu-haystack results are committed yet.\n"
    names = sorted(set.intersection(*(set(m.get("methods") or {}) for _, m in runs)))
    keys = ("ap", "distractor_auc", "pooled_ap", "pooled_distractor_auc", "precision@10", "recall@n_poisoned", "auc")

    def mean(name: str, key: str) -> float | None:
        vals = [m["methods"][name].get(key) for _, m in runs]
        vals = [float(v) for v in vals if v is not None]
        return float(np.mean(vals)) if vals else None

    rows = sorted(names, key=lambda n: -(mean(n, "ap") or 0.0))
    info = runs[0][1].get("query_information") or {}
    chance = float(np.mean([(m.get("chance") or {}).get("ap") or 0.0 for _, m in runs]))
    lines = [
        "| method | query information | AP | distractor AUC | pooled AP | pooled dAUC | P@10 | R@#poisoned | AUC |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for n in rows:
        lines.append(f"| `{n}` | {info.get(n, '')} | " + " | ".join(_pct(mean(n, k)) for k in keys) + " |")
    c = _pct(chance)
    lines.append(f"| random ranking | none | {c} | 50.0 | {c} | 50.0 | {c} | {c} | 50.0 |")
    n_queries = sum(int(m.get("n_queries") or 0) for _, m in runs)
    lines += [
        "",
        f"Means over {len(runs)} run(s) ({n_queries} queries in all), percent. AP, distractor AUC, P@10, R and AUC "
        "rank once per query; *pooled* ranks once per pair by the mean of its queries' scores, the information "
        "`cea` gets (one set of optimiser steps on all of a pair's queries), so the pooled columns compare it "
        "with the others on equal terms.",
    ]
    return "\n".join(lines) + "\n"


def haystack_curve(root: Path) -> str:
    """AP against sub-haystack size for every cpu-haystack run (the ranking curve each report draws)."""
    runs = [(p, m) for p, m in _runs(root, "cpu-haystack") if (m.get("haystack_curve") or {}).get("sizes")]
    if not runs:
        return "No cpu-haystack results are committed yet.\n"
    lines = []
    for path, m in runs:
        c = m["haystack_curve"]
        shown = [n for n in PAIR_METHODS if n in c["methods"]]
        lines += [
            f"`{path.name}` ({', '.join(m.get('pairs') or [])}), AP in percent against rows ranked:",
            "",
            "| method | " + " | ".join(str(s) for s in c["sizes"]) + " |",
            "|---|" + "---|" * len(c["sizes"]),
        ]
        lines += [f"| `{n}` | " + " | ".join(_pct(v) for v in c["methods"][n]["ap"]) + " |" for n in shown]
        lines.append("")
    return "\n".join(lines)


def _loss(x: Any) -> str:
    return "n/a" if x is None else f"{float(x):.3f}"


def counterfactual_table(name: str, m: dict[str, Any]) -> list[str]:
    """One run's remove-and-retrain rows (before, each method's top k, k random), with what the stage cost."""
    cf, t = m["counterfactual"], m.get("timings") or {}
    labels = ["before", *[k for k, v in cf.items() if isinstance(v, dict) and k != "before"]]
    lines = [
        f"`{name}` ({m.get('preset')}, {', '.join(m.get('pairs') or [])}, seed {m.get('seed')}; "
        f"k = {cf.get('k')} of {m.get('n_train')} rows, {m.get('n_poisoned')} poisoned; "
        f"{cf['before'].get('generated')} held-out summaries per model; the stage took "
        f"{(t.get('counterfactual') or 0) / 60:.1f} of the run's {(m.get('wall_seconds') or 0) / 60:.1f} min "
        f"on {_cpu(m.get('machine') or {})}):",
        "",
        "| removed | poisoned removed | distractors removed | natural error rate | canary margin "
        "| distractor loss | held-out loss |",
        "|---|---|---|---|---|---|---|",
    ]
    for label in labels:
        r = cf[label]
        first = "nothing removed" if label == "before" else f"`{label}` top {cf.get('k')}"
        if label == "random":
            first = f"{cf.get('k')} random rows"
        removed = [str(r.get(k, "–")) for k in ("poisoned_removed", "distractors_removed")]
        cells = [first, *removed, _pct(r.get("natural_error_rate")) + "%", f"{r['margin']:+.2f}"]
        cells += [_loss(r.get("distractor_loss")), _loss(r.get("heldout_loss"))]
        lines.append("| " + " | ".join(cells) + " |")
    return [*lines, ""]


def counterfactual(root: Path) -> str:
    """Every committed run with a remove-and-retrain section."""
    runs = [(p, m) for p, m in _runs(root) if m.get("counterfactual")]
    if not runs:
        return "No run with the remove-and-retrain stage is committed yet.\n"
    return "\n".join(line for path, m in runs for line in counterfactual_table(path.name, m))


RENDERERS: dict[str, Callable[[Path], str]] = {
    "haystack-pairs": haystack_pairs,
    "haystack-methods": haystack_methods,
    "haystack-curve": haystack_curve,
    "counterfactual": counterfactual,
}
_BLOCK = re.compile(r"(<!-- table:([\w-]+) -->\n)(.*?)(<!-- /table:\2 -->)", re.S)


def render_blocks(text: str, root: Path, source: str = "<text>") -> str:
    """`text` with every table block replaced by its renderer's output over the results under `root`."""

    def sub(m: re.Match[str]) -> str:
        name = m.group(2)
        if name not in RENDERERS:
            line = text[: m.start()].count("\n") + 1
            raise ValueError(f"{source}: line {line}: unknown table '{name}' (known: {', '.join(RENDERERS)})")
        return m.group(1) + RENDERERS[name](root) + m.group(4)

    return _BLOCK.sub(sub, text)


def render_file(path: Path, root: Path, check: bool = False) -> bool:
    """Rewrite `path`'s table blocks (or, with `check`, only compare); True when the file was up to date."""
    text = path.read_text(encoding="utf-8")
    new = render_blocks(text, root, str(path))
    if new != text and not check:
        write_text(path, new)
    return new == text


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m dda.bench.results", description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="cmd", required=True)
    ex = sub.add_parser("export", help="copy a finished run's small files to results/<name>")
    ex.add_argument("run")
    ex.add_argument("dest")
    po = sub.add_parser("pool", help="add the pooled metrics to a finished run made before they existed")
    po.add_argument("run")
    rd = sub.add_parser("render", help="regenerate the tables in README.md and benchmarks/README.md")
    rd.add_argument("--root", default="results")
    rd.add_argument("--check", action="store_true", help="fail when a table differs from its files")
    rd.add_argument("files", nargs="*", default=["README.md", "benchmarks/README.md"])
    args = parser.parse_args(argv)
    if args.cmd == "export":
        print(export_run(args.run, args.dest))
        return 0
    if args.cmd == "pool":
        for name, m in add_pooled(args.run).items():
            print(
                f"{name}: pooled AP {_pct(m.get('pooled_ap'))}, distractor AUC {_pct(m.get('pooled_distractor_auc'))}"
            )
        return 0
    stale = [f for f in args.files if Path(f).is_file() and not render_file(Path(f), Path(args.root), args.check)]
    if stale and args.check:
        print(f"stale tables in {', '.join(stale)}: run `make tables`", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
