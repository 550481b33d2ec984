"""`dda demo`: a fresh machine to a finished attribution on a real model in minutes.

SmolLM2-135M-Instruct is LoRA fine-tuned on real XSum pairs in which a few summaries had 'England' swapped
for 'China' (the CEA canary protocol). A held-out England summary with the same swap is the query: which
training documents taught the model to say China? The poisoned documents are marked in the ranking.
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np

from .api import Attributor
from .bench.canary import CanaryPair, forced_query, inject_canaries, poison_candidates
from .config import DDAConfig, apply_overrides
from .data import Example, Query, read_records
from .io import write_json
from .progress import say

DEMO_OVERRIDES = {
    "data.max_prompt_tokens": 96,
    "data.max_response_tokens": 40,
    "train.epochs": 3,
    "train.lr": 5e-4,
    "features.proj_dim": 12,
}


def run_demo(workdir: str | Path = "runs/demo", n_clean: int = 60, n_poison: int = 12, n_queries: int = 3,
             seed: int = 0, quiet: bool = False, cfg: DDAConfig | None = None) -> dict:
    t0 = time.perf_counter()
    cfg = cfg or apply_overrides(DDAConfig(), DEMO_OVERRIDES)
    pair = CanaryPair("England", "China")
    rows, _ = read_records(cfg.data.path)
    records = [{"id": str(r["id"]), "document": r["document"], "summary": r["summary"]} for r in rows]
    cand = poison_candidates(records, pair)
    rng = np.random.default_rng(seed)
    cand = [cand[i] for i in rng.permutation(len(cand))]
    query_rows, train_cand = cand[:n_queries], cand[n_queries:n_queries + n_poison]
    others = [i for i in rng.permutation(len(records)) if i not in set(cand)][:n_clean]
    train_records = [records[i] for i in sorted(train_cand + others)]
    injected = inject_canaries(train_records, [pair], k=len(train_cand), seed=seed)
    poisoned = set(injected.poisoned[pair.label])
    examples = [Example(r["id"], r["document"], r["summary"]) for r in injected.records]
    queries = []
    for i in query_rows:
        neg_pos = forced_query(records[i], pair)
        if neg_pos:
            queries.append(Query(records[i]["id"], records[i]["document"], *neg_pos))

    att = Attributor(cfg, workdir)
    say(f"[bold]dda demo[/]: {len(examples)} training documents ({len(poisoned)} poisoned England->China), "
        f"{len(queries)} queries, model {cfg.model.name}", quiet)
    att.finetune(examples)
    att.index(examples)
    methods = ["dda", "grad_dot", "tracin", "trak", "bm25"]
    result = att.attribute(queries, methods=methods, out_dir=Path(workdir) / "attribution", poisoned=poisoned)
    summary = {"n_train": len(examples), "n_poisoned": len(poisoned), "n_queries": len(queries),
               "poisoned_in_top10": {}, "wall_seconds": round(time.perf_counter() - t0, 1),
               "index": att.index_stats, "timings": att.timings}
    for m in methods:
        summary["poisoned_in_top10"][m] = [sum(r["poisoned"] for r in result.top(10, m, q))
                                           for q in range(len(queries))]
    write_json(Path(workdir) / "demo_summary.json", summary)
    if not quiet:
        print_ranking(result, "dda", 10)
        from rich.table import Table

        from .progress import console

        tab = Table(title="poisoned documents in the top 10 (per query)")
        tab.add_column("method")
        tab.add_column("per query")
        for m in methods:
            tab.add_row(m, ", ".join(map(str, summary["poisoned_in_top10"][m])))
        console.print(tab)
        say(f"{len(poisoned)}/{len(examples)} training documents are poisoned: a random top 10 holds "
            f"{10 * len(poisoned) / len(examples):.1f} on average. Wall time {summary['wall_seconds']} s. "
            f"Outputs in {workdir}/attribution", quiet)
    return summary


def print_ranking(result, method: str, k: int) -> None:
    from rich.table import Table

    from .progress import results as console

    for qi, q in enumerate(result.queries):
        tab = Table(title=f"query {q.id} — {method}: {q.negative[:90]}")
        for col in ("rank", "train id", "score", "poisoned"):
            tab.add_column(col)
        for row in result.top(k, method, qi):
            tab.add_row(str(row["rank"]), row["train_id"], f"{row['score']:.4g}",
                        "[red]POISONED[/]" if row["poisoned"] else "")
        console.print(tab)
