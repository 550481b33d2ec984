"""Committed benchmark results and the tables generated from them: `python tools/results.py` (`make tables`).

Tooling for this repository only (it is not in the installed package): the tables themselves are built by
`dda.bench.tables` from runs read through `dda.bench.run_record`; this script finds the runs and writes the blocks.

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
import re
import shutil
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from dda.bench import tables
from dda.bench.run_record import BenchRun, MethodMetrics, RunDir, read_run, write_run
from dda.io import read_json, write_text

SMALL_FILES = ("metrics.json", "report.md", "config.yaml", "summary.md", "summary.json")


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
    from dda.attribution import load_attribution
    from dda.bench.canary import CanaryPair
    from dda.bench.hallucination import distractor_masks
    from dda.bench.metrics import per_query_metrics, pooled_metrics
    from dda.data import Example
    from dda.scoring.base import query_information

    run = Path(run)
    record = read_run(run)
    att = load_attribution(RunDir(run).attribution)
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
        stored = record.methods[name].ap
        again = float(np.mean([r["ap"] for r in per_query_metrics(scores, masks, distractor_mask=distractors)]))
        if stored is None or abs(again - stored) > 1e-6:
            raise ValueError(f"{run}: {name}'s AP from the stored scores is {again}, metrics.json says {stored}")
        pooled[name] = pooled_metrics(scores, masks, distractors, groups)
        record.methods[name] = MethodMetrics(record.methods[name].values | pooled[name])
    # the information column says cea saw all queries at once, which runs before the pooled metrics did not say
    query_tokens = _yaml(run / "config.yaml")["dda"]["features"]["query_tokens"]
    record.query_information = {name: query_information(name, query_tokens) for name in record.methods}
    write_run(run, record)
    return pooled


def _pct(x: Any) -> str:
    return "n/a" if x is None else f"{100 * float(x):.1f}"


def _yaml(path: Path) -> dict[str, Any]:
    import yaml

    return yaml.safe_load(path.read_text(encoding="utf-8"))


def _jsonl(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def _draw_haystack(dest: Path) -> None:
    """The AP-against-haystack-size figure drawn again from metrics.json with today's plotting code, so every
    committed run's figure looks the same whatever version drew it first."""
    from dda.bench.report import plot_haystack

    run = read_run(dest)
    if run.haystack:
        (dest / "figures").mkdir(exist_ok=True)
        plot_haystack(run.haystack.to_dict(), run.data["n_poisoned"], dest / "figures" / "haystack_ap.png")


# ------------------------------------------------------------------------------------------------ render


def _runs(root: Path, preset: str | None = None) -> list[tuple[str, BenchRun]]:
    """The runs directly under `root` (results/<run>/metrics.json), of `preset` when given."""
    runs = [(path.parent.name, read_run(path.parent)) for path in sorted(root.glob("*/metrics.json"))]
    return [(name, run) for name, run in runs if preset is None or run.preset == preset]


def counterfactual(root: Path) -> str:
    """Every committed run with a remove-and-retrain section."""
    runs = [(name, run) for name, run in _runs(root) if run.remove_and_retrain]
    if not runs:
        return "No run with the remove-and-retrain stage is committed yet.\n"
    return "\n".join(line for name, run in runs for line in tables.remove_and_retrain(name, run))


def text_rules(root: Path) -> str:
    """results/text-rules-on-haystack-runs.json (benchmarks/text_rules_on_runs.py): the text rules rebuilt on each
    committed haystack run beside that run's own DDA, per pair."""
    path = root / "text-rules-on-haystack-runs.json"
    if not path.exists():
        return "No text-rule rebuild is committed yet.\n"
    rows = json.loads(path.read_text(encoding="utf-8"))
    cols = [
        ("dda", "`dda`"),
        ("unsupported", "`unsupported`"),
        ("keyword", "`keyword`"),
        ("signature", "`signature` (knows how the poison was made: a ceiling)"),
    ]
    out = []
    for key, title in (("ap", "AP"), ("distractor_auc", "distractor AUC"), ("pooled_ap", "pooled AP")):
        out.append(f"| {title}: pair (queries) | " + " | ".join(t for _, t in cols) + " |")
        out.append("|---" * (len(cols) + 1) + "|")
        for r in rows:
            pair = r["run"].removeprefix("haystack-")
            out.append(
                f"| {pair} ({r['n_queries']} {r['query_mode']}) | "
                + " | ".join(_pct(r["methods"][m][key]) for m, _ in cols)
                + " |"
            )
        out.append("")
    n = sum(r["n_queries"] for r in rows)
    out.append(
        f"{len(rows)} run(s), {n} queries, percent; per-query metrics are means over a run's queries, pooled ones "
        "rank once per pair. Made by `python benchmarks/text_rules_on_runs.py results/haystack-* "
        "--out results/text-rules-on-haystack-runs.json`, which refuses to write unless its rebuilt `keyword` AUC "
        "and AP equal each run's own."
    )
    return "\n".join(out) + "\n"


def preregistered_roles(root: Path) -> dict[str, str]:
    """`PAIR@SEED` -> development or held-out, from results/preregistered-pairs.yaml (written before the runs)."""
    path = root / "preregistered-pairs.yaml"
    if not path.exists():
        return {}
    reg = _yaml(path)
    dev = reg.get("development") or {}
    roles = {f"{p.replace(':', '->')}@{s}": "development" for p in dev.get("pairs", []) for s in dev.get("seeds", [])}
    roles |= {f"{h['pair'].replace(':', '->')}@{h['seed']}": "held-out" for h in reg.get("heldout") or []}
    return roles


def variant_study(root: Path) -> str:
    """results/variant-study-dev.json (benchmarks/variant_study.py): every DDA variant rescored on the stored
    features of the development runs, means over the runs, beside the run's baselines."""
    path = root / "variant-study-dev.json"
    if not path.exists():
        return "No variant study is committed yet.\n"
    rows = json.loads(path.read_text(encoding="utf-8"))
    keys = ("auc", "ap", "pooled_ap", "distractor_auc")

    def mean(section: str, name: str, key: str) -> float | None:
        vals = [r[section][name][key] for r in rows if name in r[section] and key in r[section][name]]
        return float(np.mean(vals)) if vals else None

    kw_ap, un_pooled = mean("baselines", "keyword", "ap"), mean("baselines", "unsupported", "pooled_ap")
    out = [
        "| variant | what it changes | AUC | AP | pooled AP | distractor AUC | AP − `keyword` AP | pooled AP − "
        "`unsupported` pooled AP |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for name, v in rows[0]["variants"].items():
        cells = [_pct(mean("variants", name, k)) for k in keys]
        ap, pooled = mean("variants", name, "ap"), mean("variants", name, "pooled_ap")
        cells.append("n/a" if ap is None or kw_ap is None else f"{100 * (ap - kw_ap):+.1f}")
        cells.append("n/a" if pooled is None or un_pooled is None else f"{100 * (pooled - un_pooled):+.1f}")
        what = v["what"].replace("|", "\\|")  # a pipe would end the cell
        out.append(f"| {name} | {what} | " + " | ".join(cells) + " |")
    for name in rows[0]["baselines"]:
        label = f"`{name}`" + (" (knows how the poison was made: a ceiling)" if name == "signature" else "")
        cells = " | ".join(_pct(mean("baselines", name, k)) for k in keys)
        out.append(f"| {label} | baseline, the run's own | {cells} | | |")
    runs = ", ".join(
        f"{r['run']} ({', '.join(f'{n} {k}' for k, n in sorted(r['query_kinds'].items()))} queries)" for r in rows
    )
    out += [
        "",
        f"Means over {len(rows)} development run(s): {runs}; percent. Made by `python benchmarks/variant_study.py "
        "RUN ... --out results/variant-study-dev.json`, which refuses to write unless its rebuilt `dda` AUC and AP "
        "equal each run's own.",
    ]
    return "\n".join(out) + "\n"


RENDERERS: dict[str, Callable[[Path], str]] = {
    "haystack-pairs": lambda root: tables.haystack_pairs(_runs(root, "cpu-haystack")),
    "haystack-methods": lambda root: tables.haystack_methods(_runs(root, "cpu-haystack")),
    "haystack-curve": lambda root: tables.haystack_curve(_runs(root, "cpu-haystack")),
    "counterfactual": counterfactual,
    "text-rules": text_rules,
    "natural-pairs": lambda root: tables.natural_pairs(_runs(root, "cpu-haystack-natural"), preregistered_roles(root)),
    "variant-study": variant_study,
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
    parser = argparse.ArgumentParser(prog="python tools/results.py", description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="cmd", required=True)
    ex = sub.add_parser("export", help="copy a finished run's small files to results/<name>")
    ex.add_argument("run")
    ex.add_argument("dest")
    po = sub.add_parser("pool", help="add the pooled metrics to a finished run made before they existed")
    po.add_argument("run")
    rd = sub.add_parser("render", help="regenerate the tables in the READMEs and docs/benchmarks/baselines.md")
    rd.add_argument("--root", default="results")
    rd.add_argument("--check", action="store_true", help="fail when a table differs from its files")
    rd.add_argument("files", nargs="*", default=["README.md", "benchmarks/README.md", "docs/benchmarks/baselines.md"])
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
