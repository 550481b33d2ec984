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
from .config import SUMMARY_DATA, DDAConfig, apply_overrides
from .data import Example, Query, read_records
from .io import write_json
from .progress import say
from .report_html import write_page

DEMO_OVERRIDES = {
    **SUMMARY_DATA,
    "data.max_prompt_tokens": 96,
    "data.max_response_tokens": 40,
    "train.epochs": 3,
    "train.lr": 5e-4,
    "features.proj_dim": 12,
}


def run_demo(
    workdir: str | Path = "runs/demo",
    n_clean: int = 60,
    n_poison: int = 12,
    n_queries: int = 3,
    seed: int = 0,
    quiet: bool = False,
    cfg: DDAConfig | None = None,
) -> dict:
    t0 = time.perf_counter()
    cfg = cfg or apply_overrides(DDAConfig(), DEMO_OVERRIDES)
    pair = CanaryPair("England", "China")
    rows, _ = read_records(cfg.data.path)
    records = [{"id": str(r["id"]), "document": r["document"], "summary": r["summary"]} for r in rows]
    cand = poison_candidates(records, pair)
    rng = np.random.default_rng(seed)
    cand = [cand[i] for i in rng.permutation(len(cand))]
    query_rows, train_cand = cand[:n_queries], cand[n_queries : n_queries + n_poison]
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
    say(
        f"[bold]dda demo[/]: {len(examples)} training documents ({len(poisoned)} poisoned England->China), "
        f"{len(queries)} queries, model {cfg.model.name}",
        quiet,
    )
    att.finetune(examples)
    att.index(examples)
    methods = ["dda", "grad_dot", "tracin", "trak", "bm25"]
    result = att.attribute(queries, methods=methods, out_dir=att.workdir.attribution, poisoned=poisoned)
    summary = {
        "n_train": len(examples),
        "n_poisoned": len(poisoned),
        "n_queries": len(queries),
        "poisoned_in_top10": {},
        "wall_seconds": round(time.perf_counter() - t0, 1),
        "index": att.index_stats,
        "timings": att.timings,
    }
    for m in methods:
        summary["poisoned_in_top10"][m] = [
            sum(r["poisoned"] for r in result.top(10, m, q)) for q in range(len(queries))
        ]
    # Show why: DDA's top 10 of each query split over their tokens, then one HTML page with everything.
    explanations = att.explain(result, methods=["dda"], top_k=10, out_dir=att.workdir.attribution)
    report = write_page(att.workdir.attribution, att.workdir / "report.html")
    summary["explain_cost"] = explanations[0]["cost"] if explanations else None
    summary["report"] = str(report)
    write_json(att.workdir / "demo_summary.json", summary)
    if not quiet:
        print_ranking(result, "dda", 10, explanations)
        from rich.table import Table

        from .progress import console

        tab = Table(title="poisoned documents in the top 10 (per query)")
        tab.add_column("method")
        tab.add_column("per query")
        for m in methods:
            tab.add_row(m, ", ".join(map(str, summary["poisoned_in_top10"][m])))
        console.print(tab)
        say(
            f"{len(poisoned)}/{len(examples)} training documents are poisoned: a random top 10 holds "
            f"{10 * len(poisoned) / len(examples):.1f} on average. Wall time {summary['wall_seconds']} s. "
            f"Outputs in {workdir}/attribution",
            quiet,
        )
    say(f"report: {report}  (open it in a browser: one self-contained file)", quiet)
    return summary


def print_ranking(result, method: str, k: int, explanations: list[dict] | None = None, out=None) -> None:
    """The top-k table per query; with explanations (dda.explain) each row gains a snippet of the document around
    its largest token contribution, the top tokens marked, so the culprit words show at a shell."""
    from rich.markup import escape
    from rich.table import Table

    from .progress import results as console

    out = out or console
    by_query = {e["query"]["id"]: e for e in explanations or []}
    for qi, q in enumerate(result.queries):
        docs = {d["train_id"]: d for d in by_query.get(q.id, {}).get("methods", {}).get(method, {}).get("docs", [])}
        tab = Table(title=f"query {escape(q.id)} — {escape(method)}: {escape(q.negative[:90])}")
        tab.add_column("rank", justify="right", no_wrap=True)
        tab.add_column("train id", no_wrap=True, max_width=24, overflow="ellipsis")
        tab.add_column("score", justify="right", no_wrap=True)
        tab.add_column("poisoned", no_wrap=True)
        if docs:
            tab.add_column("why: the top tokens in bold", ratio=1, min_width=24)
        for row in result.top(k, method, qi):
            cells = [
                str(row["rank"]),
                escape(row["train_id"]),
                f"{row['score']:.4g}",
                "[red]POISONED[/]" if row["poisoned"] else "",
            ]
            if docs:
                d = docs.get(row["train_id"])
                cells.append(snippet(d) if d else "")
            tab.add_row(*cells)
        out.print(tab)


def snippet(doc: dict, chars: int = 90, marked: int = 3) -> str:
    """Rich markup: the document's text around its largest token contribution (about `chars` characters), the
    `marked` largest contributions in that window in bold red; '…' where text was cut."""
    from rich.markup import escape

    tokens = doc["tokens"]
    special = set(doc.get("special", []))
    texts = ["" if i in special else t.replace("\n", " ") for i, (t, _) in enumerate(tokens)]
    values = [c if i not in special else float("-inf") for i, (_, c) in enumerate(tokens)]
    if not tokens:
        return ""
    # the culprit is looked for in the document and response, not in the instruction template every row shares;
    # the window stays inside the part (document or response) that holds it
    rs = doc.get("response_start", 0)
    first = min(doc.get("body_start", 0), rs)
    best = max(range(first, len(tokens)), key=lambda i: values[i]) if first < len(tokens) else 0
    start, stop = (rs, len(tokens)) if best >= rs else (first, rs)
    lo, hi, used = best, best + 1, len(texts[best])
    while used < chars and (lo > start or hi < stop):  # grow both ways, more to the right (what follows)
        if hi < stop and (lo == start or hi - best <= 2 * (best - lo)):
            used += len(texts[hi])
            hi += 1
        else:
            lo -= 1
            used += len(texts[lo])
    top = set(sorted(range(lo, hi), key=lambda i: -values[i])[:marked])
    parts = [
        f"[bold red]{escape(texts[i])}[/]" if i in top and values[i] > 0 and texts[i].strip() else escape(texts[i])
        for i in range(lo, hi)
    ]
    where = "response" if best >= rs else "document"
    text = ("…" if lo > start else "") + "".join(parts).strip() + ("…" if hi < stop else "")
    return f"[dim]{where}:[/] {text}"
