"""Reading a run directory into the data the report page shows: one JSON-able dict (embedded in the page).

Only the top-k documents of each query and method are kept, each document's token texts once (shared by every
query and method that lists it), and contributions as integers relative to the document's largest one.
"""

from __future__ import annotations

import difflib
import json
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..bench.evidence import top_token_stats
from ..bench.run_record import read_run
from ..explain import read_explanations
from ..fix import RetrainTable, plain, retrain_table
from ..io import read_json
from ..scoring.base import ablations as registered_ablations
from .svg import beta_svg

QUANT = 999  # contributions are stored as round(QUANT * c / max|c|) per document
SNIPPET_CHARS = 700  # text shown for a document that has no token attribution

# The run's facts the page shows above its tables, as metrics.json names them.
RUN_FACTS = (
    "preset",
    "seed",
    "model",
    "n_train",
    "n_poisoned",
    "n_queries",
    "query_mode",
    "hallucination_rate",
    "wall_seconds",
)


class RunDirError(ValueError):
    """The directory is not something `dda show` can read; the message says what was expected."""


# ------------------------------------------------------------------------------------------- reading runs


def _read_jsonl(path: Path) -> list[dict[str, Any]]:
    rows = []
    with open(path, encoding="utf-8") as fh:
        for lineno, line in enumerate(fh, 1):
            if line.strip():
                try:
                    rows.append(json.loads(line))
                except json.JSONDecodeError as err:
                    raise RunDirError(f"{path}, line {lineno}: invalid JSON ({err.msg})") from None
    return rows


def locate(run_dir: str | Path) -> tuple[str, Path, Path]:
    """(kind, run dir, attribution dir): kind 'bench' (metrics.json) or 'attribute' (ranking.json)."""
    run = Path(run_dir)
    if not run.exists():
        raise RunDirError(f"{run}: no such directory")
    if not run.is_dir():
        raise RunDirError(f"{run}: not a directory")
    if (run / "metrics.json").exists():
        attr = run / "attribution"
        if not (attr / "ranking.json").exists():
            raise RunDirError(f"{attr / 'ranking.json'}: missing (is {run} a finished `dda bench` run?)")
        return "bench", run, attr
    if (run / "ranking.json").exists():
        return "attribute", run, run
    if (run / "attribution" / "ranking.json").exists():
        return "attribute", run, run / "attribution"
    raise RunDirError(
        f"{run}: no ranking.json, attribution/ranking.json or metrics.json; expected the output "
        f"of `dda attribute` (or its workdir) or of `dda bench`"
    )


def _read_ranking(attr: Path) -> dict[str, Any]:
    ranking = read_json(attr / "ranking.json")
    for key in ("train_ids", "queries", "top"):
        if key not in ranking:
            raise RunDirError(f"{attr / 'ranking.json'}: missing field '{key}'")
    return ranking


def _as_text(value: Any) -> str:
    if isinstance(value, list):  # a conversation
        return "\n".join(f"{m.get('role')}: {m.get('content') or ''}" for m in value if isinstance(m, dict))
    return "" if value is None else str(value)


def _row_text(t: dict[str, Any]) -> str:
    """A saved training row as text, in any of the formats dda.data.save_examples writes."""
    if "messages" in t:
        return _as_text(t["messages"])
    if "text" in t and "document" not in t:
        return _as_text(t["text"])
    if "completion" in t:
        return f"{_as_text(t.get('prompt'))}\n→ {_as_text(t['completion'])}"
    return f"{t.get('document', '')}\n→ {t.get('summary', '')}"


def _train_texts(kind: str, run: Path, attr: Path) -> dict[str, dict[str, Any]]:
    """id -> {document, summary, poisoned} from the run's training data, where it can be found."""
    candidates = (
        [run / "train.jsonl"] if kind == "bench" else [attr.parent / "data" / "train.jsonl", attr / "train.jsonl"]
    )
    for path in candidates:
        if path.exists():
            return {str(r.get("id")): r for r in _read_jsonl(path)}
    return {}


# ---------------------------------------------------------------------------------------------- the data


def _word_diff(a: str, b: str) -> tuple[list[list[Any]], list[list[Any]]]:
    """Segments [text, changed] of a and b, changed = 1 for the words outside difflib's equal runs."""
    ta, tb = re.findall(r"\S+|\s+", a), re.findall(r"\S+|\s+", b or "")
    sa, sb = [], []
    for tag, a0, a1, b0, b1 in difflib.SequenceMatcher(None, ta, tb, autojunk=False).get_opcodes():
        changed = int(tag != "equal")
        if a1 > a0:
            sa.append(["".join(ta[a0:a1]), changed])
        if b1 > b0:
            sb.append(["".join(tb[b0:b1]), changed])
    return sa, sb


def _quantize(values: Sequence[float]) -> tuple[list[int], float]:
    peak = max((abs(v) for v in values), default=0.0)
    if peak == 0:
        return [0] * len(values), 0.0
    return [round(QUANT * v / peak) for v in values], peak


def _agreement(top: dict[str, list[list[dict[str, Any]]]], k: int) -> dict[str, Any]:
    """Mean over queries of |top-k(A) & top-k(B)| / k for every pair of methods."""
    methods = list(top)
    sets = {m: [{r["train_id"] for r in rows[:k]} for rows in top[m]] for m in methods}
    matrix = []
    for a in methods:
        row = []
        for b in methods:
            pairs = list(zip(sets[a], sets[b], strict=True))
            row.append(sum(len(x & y) for x, y in pairs) / (k * len(pairs)) if pairs and k else None)
        matrix.append(row)
    return {"k": k, "methods": methods, "matrix": matrix}


def _shown_k(ranking: dict[str, Any], explanations: dict[str, Any], top_k: int | None) -> int:
    """The explained k when there are explanations (every shown document of those methods is shaded), else all
    stored."""
    explained_k = max((len(m["docs"]) for e in explanations.values() for m in e["methods"].values()), default=0)
    return top_k or explained_k or max((len(rows) for per_q in ranking["top"].values() for rows in per_q), default=10)


def _truth_known(kind: str, ranking: dict[str, Any], explanations: dict[str, Any]) -> bool:
    return (
        kind == "bench"
        or any(
            d.get("poisoned") is not None
            for e in explanations.values()
            for m in e["methods"].values()
            for d in m["docs"]
        )
        or any(r.get("poisoned") for per_q in ranking["top"].values() for rows in per_q for r in rows)
    )


@dataclass
class _Docs:
    """The page's documents by id: token texts (from the first explanation that lists one), or a text snippet,
    and the ground truth label."""

    kind: str
    train: dict[str, dict[str, Any]]
    truth_known: bool
    entries: dict[str, dict[str, Any]] = field(default_factory=dict)

    def note(self, train_id: str, poisoned: Any) -> dict[str, Any]:
        entry = self.entries.setdefault(train_id, {"t": None, "rs": None, "text": None, "p": None})
        if self.kind == "bench":
            entry["p"] = (self.train.get(train_id) or {}).get("poisoned")  # pair label or None
        elif self.truth_known and entry["p"] is None:
            entry["p"] = bool(poisoned) or None
        return entry

    def add_snippets(self) -> None:
        """Documents without token texts show the end of their training text instead."""
        for tid, entry in self.entries.items():
            if entry["t"] is None and tid in self.train:
                t = self.train[tid]
                text = _row_text(t)
                entry["text"] = text if len(text) <= SNIPPET_CHARS else "…" + text[-SNIPPET_CHARS:]


def _method_rows(
    ranked: list[dict[str, Any]], explained: dict[str, dict[str, Any]], shown_k: int, docs: _Docs
) -> list[dict[str, Any]]:
    """One method's top documents for one query, with quantized token contributions where explained."""
    rows = []
    for r in ranked[:shown_k]:
        tid = r["train_id"]
        d = explained.get(tid)
        entry = docs.note(tid, r.get("poisoned") if d is None else d.get("poisoned"))
        row: dict[str, Any] = {"r": r["rank"], "id": tid, "s": r["score"]}
        if d is not None:
            if entry["t"] is None:
                entry["t"] = [t for t, _ in d["tokens"]]
                entry["rs"] = d["response_start"]
                entry["sp"] = d.get("special", [])
                entry["bs"] = min(d.get("body_start", 0), d["response_start"])
            row["c"], row["cs"] = _quantize([c for _, c in d["tokens"]])
            row["sums"] = d["sums"]
            row["side"] = {k: d["query_side"][k] for k in ("negative", "positive")}
            row["by_token"] = d["query_side"].get("by_token")
        rows.append(row)
    return rows


def _query_entry(
    q: dict[str, Any],
    qi: int,
    ex: dict[str, Any] | None,
    bq: dict[str, Any],
    ranking: dict[str, Any],
    shown_k: int,
    docs: _Docs,
) -> dict[str, Any]:
    """One query: its prompt and outputs (the swapped words marked), and each method's rows."""
    negative = q.get("negative") or (ex or {}).get("query", {}).get("negative", "")
    positive = q.get("positive") or (ex or {}).get("query", {}).get("positive")
    prompt = _as_text(bq.get("prompt") or (ex or {}).get("query", {}).get("prompt") or "")
    neg_seg, pos_seg = _word_diff(negative, positive or "")
    entry: dict[str, Any] = {
        "id": q["id"],
        "prompt": prompt,
        "neg": neg_seg,
        "pos": pos_seg if positive else None,
        "kind": bq.get("kind"),
        "pair": bq.get("pair"),
        "query_tokens": (ex or {}).get("query_tokens"),
        "methods": {},
    }
    for m in ranking["top"]:
        explained = {d["train_id"]: d for d in (ex or {}).get("methods", {}).get(m, {}).get("docs", [])}
        entry["methods"][m] = _method_rows(ranking["top"][m][qi], explained, shown_k, docs)
    return entry


def collect(run_dir: str | Path, top_k: int | None = None) -> dict[str, Any]:
    """Everything the page shows, as one JSON-able dict (embedded in the page as data)."""
    kind, run, attr = locate(run_dir)
    ranking = _read_ranking(attr)
    explanations = {e["query"]["id"]: e for e in read_explanations(attr)}
    train = _train_texts(kind, run, attr)
    bench_queries = (
        {r["id"]: r for r in _read_jsonl(run / "queries.jsonl")}
        if kind == "bench" and (run / "queries.jsonl").exists()
        else {}
    )
    shown_k = _shown_k(ranking, explanations, top_k)
    truth_known = _truth_known(kind, ranking, explanations)
    docs = _Docs(kind, train, truth_known)
    queries_out = [
        _query_entry(q, qi, explanations.get(q["id"]), bench_queries.get(q["id"], {}), ranking, shown_k, docs)
        for qi, q in enumerate(ranking["queries"])
    ]
    docs.add_snippets()
    data: dict[str, Any] = {
        "title": f"dda: why — {run.name}",
        "kind": kind,
        "run": str(run),
        "methods": list(ranking["top"]),
        "explained": sorted({m for e in explanations.values() for m in e["methods"]}),
        "k": shown_k,
        "truth_known": truth_known,
        "queries": queries_out,
        "docs": docs.entries,
        "agreement": _agreement(ranking["top"], shown_k),
        "orientation": ranking.get("orientation", ""),
        "cost": next(iter(explanations.values()))["cost"] if explanations else None,
    }
    if kind == "bench":
        data["bench"] = _bench_section(run, list(explanations.values()), bench_queries)
    return data


def _bench_section(run: Path, explanations: list[dict[str, Any]], queries: dict[str, Any]) -> dict[str, Any]:
    record = read_run(run)  # the schema checked, an older run migrated
    metrics = record.to_dict()
    methods = metrics.get("methods") or {}
    main = sorted(
        (n for n in methods if not (n.startswith("dda_") and n != "dda")), key=lambda n: -(methods[n].get("auc") or 0)
    )
    ablations = [n for n in ("dda", *registered_ablations()) if n in methods]
    keys = ("auc", "auc_std", "ap", "distractor_auc", "pooled_ap", "recall@10")
    row = lambda n: {"method": n, **{k: methods[n].get(k) for k in keys}}  # noqa: E731
    canary_of = {qid: str(r.get("pair", "")).split("->")[-1] for qid, r in queries.items() if r.get("pair")}
    canary = None
    if explanations and canary_of:
        method = "dda" if any("dda" in e["methods"] for e in explanations) else next(iter(explanations[0]["methods"]))
        canary = {
            "all": top_token_stats(explanations, canary_of, method),
            "response": top_token_stats(explanations, canary_of, method, response_only=True),
        }
    return {
        "facts": {k: metrics.get(k) for k in RUN_FACTS},
        "table1": [row(n) for n in main],
        "table2": [row(n) for n in ablations],
        "beta_svg": beta_svg(metrics.get("beta_curve") or {}, (metrics.get("dda") or {}).get("debias_mode", "base")),
        "notes": metrics.get("notes", []),
        "canary": canary,
        "remove_and_retrain": _plain_table(retrain_table(rr)) if (rr := record.remove_and_retrain) else None,
    }


def _plain_table(table: RetrainTable) -> dict[str, Any]:
    """The remove-and-retrain table as composed by `dda.fix.retrain_table`, its cells as text for page.js."""
    cells = lambda rows: [[plain(c) for c in row] for row in rows]  # noqa: E731
    return {
        "header": table.header,
        "rows": cells(table.rows),
        "per_query_header": [plain(c) for c in table.per_query_header],
        "per_query": cells(table.per_query),
    }
