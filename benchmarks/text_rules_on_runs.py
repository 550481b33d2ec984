"""The text baselines (`keyword`, `unsupported`, `signature`, `bm25_diff`) on committed benchmark runs, without a model.

Each run's training set is rebuilt from its config.yaml (preset, pairs, seed: the split and the injection are
deterministic) and its queries from queries.jsonl (natural ones carry their text; forced ones are the document's
reference summary with the swap). The rebuild is checked first: `keyword`'s AUC and AP recomputed here must equal
the run's own, else the script stops. Then every text rule is scored with the benchmark's own metrics.

Usage: DDA_SHARED_DATA=../shared/data python benchmarks/text_rules_on_runs.py results/haystack-* [--out FILE.json]
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from run_rebuild import print_metrics, rebuild

from dda.bench.metrics import pooled_metrics
from dda.bench.sweep import score_metrics
from dda.scoring import run_method

RULES = ("keyword", "unsupported", "signature", "bm25_diff")
KEYS = ("auc", "ap", "distractor_auc", "pooled_ap", "pooled_distractor_auc")


def rule_metrics(run: Path) -> dict[str, Any]:
    rebuilt = rebuild(run)
    metrics, queries = rebuilt.metrics, rebuilt.queries
    ctx = rebuilt.context()
    masks, distractors, qpairs = rebuilt.masks, rebuilt.distractors, rebuilt.pairs
    out: dict[str, Any] = {}
    for rule in RULES:
        m, _ = score_metrics(run_method(rule, ctx), masks, distractors)
        m.update(pooled_metrics(run_method(rule, ctx), masks, distractors, [p.label for p in qpairs]))
        out[rule] = {k: m[k] for k in KEYS if k in m}
    theirs = metrics["methods"]["keyword"]
    for k in ("auc", "ap"):
        if abs(out["keyword"][k] - theirs[k]) > 1e-9:
            raise RuntimeError(f"{run}: rebuilt keyword {k} {out['keyword'][k]} != the run's {theirs[k]}")
    out["dda"] = {k: metrics["methods"]["dda"][k] for k in KEYS if k in metrics["methods"]["dda"]}
    return {"run": run.name, "query_mode": metrics["query_mode"], "n_queries": len(queries), "methods": out}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("runs", nargs="+", type=Path)
    ap.add_argument("--out", type=Path)
    args = ap.parse_args()
    rows = [rule_metrics(r) for r in args.runs]
    for row in rows:
        title = f"{row['run']} ({row['n_queries']} {row['query_mode']} queries; dda is the run's own)"
        print_metrics(title, row["methods"], KEYS)
    if args.out:
        args.out.write_text(json.dumps(rows, indent=2) + "\n", encoding="utf-8")


if __name__ == "__main__":
    main()
