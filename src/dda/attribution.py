"""The result of an attribution: every method's scores over (queries x training documents), their rankings,
the notebook views of them, and the files `save` writes and `load_attribution` reads back.

Kept apart from dda.api (which computes it) so that reading, showing and saving a result needs neither the model
code nor torch.
"""

from __future__ import annotations

import csv
import io as _io
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from .data import Query
from .io import read_json, stable_hash, write_json, write_npy, write_text, write_yaml

if TYPE_CHECKING:
    from .scoring import ScoringContext


def method_slug(method: str) -> str:
    """A file name for a method spec: 'dda(beta=0.4)' -> 'dda_beta=0.4'."""
    return re.sub(r"[^A-Za-z0-9.=+-]+", "_", method).strip("_") or "method"


@dataclass
class Attribution:
    """Scores of every method: (n_queries, n_train) arrays, HIGHER = MORE RESPONSIBLE."""

    train_ids: list[str]
    """The training documents' ids, in the order of the score columns."""
    queries: list[Query]
    """The queries, in the order of the score rows."""
    scores: dict[str, np.ndarray]
    """{method spec: (n_queries, n_train) scores}; higher = more responsible."""
    config: dict[str, Any] = field(default_factory=dict)
    """The full config the scores were computed with (saved as config.yaml)."""
    poisoned: set[str] = field(default_factory=set)  # optional ground truth, marked in outputs
    """Ids known to be responsible (a benchmark's ground truth), marked with * in outputs; usually empty."""
    # [natural-queries branch] the features and texts the scores came from, so a caller can score more
    # variants (e.g. a beta sweep) without reading or computing the query features again; not saved
    context: ScoringContext | None = field(default=None, repr=False, compare=False)
    """The features and texts the scores came from, to score more variants without recomputing; not saved."""

    def top(self, k: int = 10, method: str | None = None, query: int = 0) -> list[dict[str, Any]]:
        """The `k` highest-scored documents of `method` (default: the first) for query number `query`, as
        {rank, train_id, score, poisoned} rows; ties keep the training order."""
        method = method or next(iter(self.scores))
        s = self.scores[method][query]
        order = np.argsort(-s, kind="stable")[:k]
        return [
            {
                "rank": r + 1,
                "train_id": self.train_ids[i],
                "score": float(s[i]),
                "poisoned": self.train_ids[i] in self.poisoned,
            }
            for r, i in enumerate(order)
        ]

    def pooled(self) -> Attribution:
        """One ranking for all the queries: each method's scores averaged over them (for DDA, linear in the query,
        the score against the mean query). Meant for several queries of one mistake, where a single query is noisy."""
        if not self.queries:
            raise ValueError("no queries to pool")
        ids = [q.id for q in self.queries]
        shown = ", ".join(ids[:5]) + (f", ... ({len(ids)} in all)" if len(ids) > 5 else "")
        query = Query(f"mean of {len(ids)} queries", "", f"mean over {shown}", None)
        scores = {m: s.mean(axis=0, keepdims=True) for m, s in self.scores.items()}
        return Attribution(self.train_ids, [query], scores, self.config, self.poisoned)

    # a notebook shows the rankings, not the arrays: at most this many queries and rows per method
    SHOW_QUERIES, SHOW_K = 5, 5

    def __repr__(self) -> str:
        shape = f"{len(self.queries)} queries x {len(self.train_ids)} documents"
        lines = [f"Attribution({shape}; methods: {', '.join(self.scores) or 'none'}; higher = more responsible)"]
        for qi, q in enumerate(self.queries[: self.SHOW_QUERIES]):
            for method in self.scores:
                top = ", ".join(
                    f"{r['train_id']}{'*' if r['poisoned'] else ''} {r['score']:.3g}"
                    for r in self.top(self.SHOW_K, method, qi)
                )
                lines.append(f"  {q.id} {method}: {top}")
        if len(self.queries) > self.SHOW_QUERIES:
            lines.append(f"  ... {len(self.queries) - self.SHOW_QUERIES} more queries")
        if self.poisoned:
            lines.append("  * known culprit (poisoned)")
        return "\n".join(lines)

    def _repr_html_(self) -> str:
        """Per query, a table of each method's top documents (rank, id, score); known culprits in bold."""
        import html

        esc = html.escape
        methods = list(self.scores)
        parts = [
            f"<div><p><b>Attribution</b>: {len(self.queries)} queries &times; {len(self.train_ids)} documents; "
            "higher score = more responsible for the query's negative output"
            + ("; <b>bold</b>: known culprit" if self.poisoned else "")
            + "</p>"
        ]
        for qi, q in enumerate(self.queries[: self.SHOW_QUERIES]):
            head = "".join(f'<th colspan="2">{esc(m)}</th>' for m in methods)
            parts.append(
                f"<table><caption style='text-align:left'>{esc(q.id)}: {esc(q.negative[:120])}</caption>"
                f"<thead><tr><th>rank</th>{head}</tr></thead><tbody>"
            )
            tops = {m: self.top(self.SHOW_K, m, qi) for m in methods}
            for r in range(min(self.SHOW_K, len(self.train_ids))):
                cells = []
                for m in methods:
                    row = tops[m][r]
                    tid = esc(row["train_id"])
                    cells.append(f"<td>{f'<b>{tid}</b>' if row['poisoned'] else tid}</td><td>{row['score']:.4g}</td>")
                parts.append(f"<tr><td>{r + 1}</td>{''.join(cells)}</tr>")
            parts.append("</tbody></table>")
        if len(self.queries) > self.SHOW_QUERIES:
            parts.append(
                f"<p>&hellip; {len(self.queries) - self.SHOW_QUERIES} more queries "
                "(<code>.top(k, method, query)</code>)</p>"
            )
        parts.append("</div>")
        return "".join(parts)

    def save(self, out_dir: str | Path, top_k: int = 10, pooled: bool = True) -> Path:
        """`scores/<method>.npy` per method, ranking.json, scores.csv and config.yaml; score files of an earlier
        run into the same folder that this one did not write are removed. With `pooled` and several queries,
        ranking.json also holds `pooled_top`, each method's top_k by the mean of the queries' scores."""
        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        write_yaml(out / "config.yaml", self.config)
        names = {}
        for method in self.scores:
            fname = f"scores/{method_slug(method)}.npy"
            if fname in names.values():
                fname = f"scores/{method_slug(method)}-{stable_hash(method, 6)}.npy"
            write_npy(out / fname, self.scores[method].astype(np.float32))
            names[method] = fname
        for stale in [*out.glob("scores/*.npy"), *out.glob("scores_*.npy")]:
            if str(stale.relative_to(out)) not in names.values():
                stale.unlink()
        ranking = {
            "orientation": "higher score = more responsible for the query's negative output",
            "train_ids": self.train_ids,
            "queries": [
                {"id": q.id, "prompt": q.prompt, "negative": q.negative, "positive": q.positive} for q in self.queries
            ],
            "score_files": names,
            "poisoned": sorted(self.poisoned),
            "top": {m: [self.top(top_k, m, qi) for qi in range(len(self.queries))] for m in self.scores},
        }
        if pooled and len(self.queries) > 1:
            mean = self.pooled()
            ranking["pooled_top"] = {m: mean.top(top_k, m) for m in self.scores}
        write_json(out / "ranking.json", ranking)
        buf = _io.StringIO()
        writer = csv.writer(buf)
        methods = list(self.scores)
        writer.writerow(["query_id", "train_id", *methods])
        for qi, q in enumerate(self.queries):
            for ti, tid in enumerate(self.train_ids):
                writer.writerow([q.id, tid, *(f"{self.scores[m][qi, ti]:.6g}" for m in methods)])
        write_text(out / "scores.csv", buf.getvalue())
        return out


def load_attribution(out_dir: str | Path) -> Attribution:
    """Read back what `Attribution.save` (and `dda attribute`) wrote to `out_dir`: ids, queries and every
    method's scores (plain .npy arrays, never unpickled); the config and the scoring context are not restored."""
    out = Path(out_dir)
    ranking = read_json(out / "ranking.json")
    scores = {m: np.load(out / f, allow_pickle=False) for m, f in ranking["score_files"].items()}
    queries = [Query(q["id"], q.get("prompt", ""), q["negative"], q.get("positive")) for q in ranking["queries"]]
    return Attribution(ranking["train_ids"], queries, scores, poisoned=set(ranking.get("poisoned", [])))


__all__ = ["Attribution", "load_attribution", "method_slug"]
