"""Benchmark evidence from token attribution: where the largest contribution of each poisoned document falls, and
the explanation of a finished `dda bench` run from its own files."""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from ..data import Query

__all__ = ["canary_token_positions", "explain_bench_run", "top_token_stats"]


def top_token_stats(
    explanations: Sequence[dict[str, Any]],
    canary_of: dict[str, str],
    method: str = "dda",
    k: int = 10,
    response_only: bool = False,
) -> dict[str, Any]:
    """For each poisoned document in a query's top k under `method`: does its largest contribution fall on the
    canary word? A token is a hit only when its characters lie inside a whole-word occurrence of the canary in the
    document's text (so ' in' is no hit for 'China', and ' Ch' + 'ina' both are). `canary_of`: query id -> canary
    word. Tokens looked at: the document's own text and its response (the instruction template every row shares is
    left out), or the response only. Counts (query, document) pairs and distinct documents: one document in the
    top k of several queries is one document."""
    hits = total = 0
    docs_seen: set[str] = set()
    docs_hit: set[str] = set()
    texts: Counter[str] = Counter()
    for e in explanations:
        canary = canary_of.get(e["query"]["id"])
        m = e["methods"].get(method)
        if canary is None or m is None:
            continue
        for doc in m["docs"]:
            if doc["rank"] > k or not doc.get("poisoned"):
                continue
            first = doc["response_start"] if response_only else min(doc.get("body_start", 0), doc["response_start"])
            special = set(doc.get("special", []))
            values = [(c, t) for t, (_, c) in enumerate(doc["tokens"]) if t >= first and t not in special]
            if not values:
                continue
            _, best = max(values)
            text = doc["tokens"][best][0]
            hit = best in canary_token_positions([t for t, _ in doc["tokens"]], canary)
            doc_id = str(doc.get("train_id", id(doc)))
            total += 1
            hits += hit
            docs_seen.add(doc_id)
            if hit:
                docs_hit.add(doc_id)
            texts[text.strip() or repr(text)] += 1
    return {
        "method": method,
        "k": k,
        "response_only": response_only,
        "poisoned_docs": total,  # (query, document) pairs, kept under its old key for readers of older files
        "pairs": total,
        "on_canary": hits,
        "fraction": hits / total if total else None,
        "distinct_docs": len(docs_seen),
        "distinct_docs_on_canary": len(docs_hit),
        "top_token_texts": texts.most_common(10),
    }


def canary_token_positions(pieces: Sequence[str], word: str) -> set[int]:
    """Positions of the tokens whose non-space characters all lie inside a whole-word occurrence of `word` in
    the text the pieces spell (case-sensitive, the benchmark's rule: regex \\bWORD\\b)."""
    starts, pos = [], 0
    for piece in pieces:
        starts.append(pos)
        pos += len(piece)
    spans = [m.span() for m in re.finditer(rf"\b{re.escape(word)}\b", "".join(pieces))]
    out: set[int] = set()
    for t, piece in enumerate(pieces):
        stripped = piece.strip()
        if not stripped:
            continue
        lo = starts[t] + piece.index(stripped)
        hi = lo + len(stripped)
        if any(a <= lo and hi <= b for a, b in spans):
            out.add(t)
    return out


def explain_bench_run(
    run_dir: str | Path,
    methods: Sequence[str] = ("dda",),
    top_k: int | None = None,
    query_token_limit: int | None = None,
) -> list[dict[str, Any]]:
    """Explain a finished `dda bench` run from its own files (config.yaml, queries.jsonl, train.jsonl and the
    workdir it names, whose checkpoints and feature stores are reused); writes RUN/attribution/explain/."""
    import json

    import yaml

    from ..api import Attributor
    from ..config import config_from_dict

    run = Path(run_dir)
    for name in ("config.yaml", "queries.jsonl", "train.jsonl"):
        if not (run / name).exists():
            raise FileNotFoundError(f"{run / name}: missing (is {run} a finished `dda bench` run?)")
    cfg_all = yaml.safe_load((run / "config.yaml").read_text(encoding="utf-8"))
    if not isinstance(cfg_all, dict) or "dda" not in cfg_all or "workdir" not in cfg_all.get("bench", {}):
        raise ValueError(f"{run / 'config.yaml'}: expected 'bench.workdir' and 'dda' sections")
    cfg = config_from_dict(cfg_all["dda"], str(run / "config.yaml"))
    workdir = Path(cfg_all["bench"]["workdir"])
    if not workdir.is_dir():  # recorded relative to where the bench ran; the run keeps it under RUN/work/<key>
        workdir = run / "work" / workdir.name
    if not (workdir / "features").is_dir():
        raise FileNotFoundError(f"{workdir}: the bench run's workdir (checkpoints, features) is not there")
    att = Attributor(cfg, workdir)
    rows = [json.loads(line) for line in (run / "queries.jsonl").read_text(encoding="utf-8").splitlines() if line]
    queries = [Query(r["id"], r["prompt"], r["negative"], r.get("positive")) for r in rows]
    poisoned = {
        json.loads(line)["id"]
        for line in (run / "train.jsonl").read_text(encoding="utf-8").splitlines()
        if line and json.loads(line).get("poisoned")
    }
    return att.explain(
        queries,
        list(methods),
        top_k=top_k,
        out_dir=run / "attribution",
        poisoned=poisoned,
        query_token_limit=query_token_limit,
    )
