"""Ranking metrics for hallucination tracing: did a method put the poisoned training rows on top?

Orientation convention for the whole package: a score array has shape (n_queries, n_train) or (n_train,)
and HIGHER means MORE RESPONSIBLE for the query's output. Methods whose natural output points the other
way (e.g. losses) must be negated by the caller, not here, so every method is judged by the same code.

The headline metric is ROC AUC (what the DDA paper reports); AP and recall@k are added because AUC alone
hides whether the culprits reach the very top of the list, which is what a human auditor would read.
Ties are never resolved in favour of poisoned rows: a constant scorer must not look good.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import numpy as np

__all__ = [
    "POOLED_KEYS",
    "aggregate",
    "mean_by",
    "method_table",
    "per_query_metrics",
    "pooled_metrics",
    "query_metrics",
    "recall_at_k",
]


def _validate(scores: Any, mask: Any) -> tuple[np.ndarray, np.ndarray]:
    s = np.asarray(scores, dtype=np.float64)
    m = np.asarray(mask)
    if s.ndim != 1:
        raise ValueError(f"scores must be 1-D (n_train,), got shape {s.shape}")
    if m.ndim != 1:
        raise ValueError(f"poisoned_mask must be 1-D (n_train,), got shape {m.shape}")
    if s.shape[0] != m.shape[0]:
        raise ValueError(f"scores ({s.shape[0]}) and poisoned_mask ({m.shape[0]}) differ in length")
    if m.dtype != bool:
        if not np.isin(m, (0, 1)).all():
            raise ValueError("poisoned_mask must be boolean (or 0/1)")
        m = m.astype(bool)
    if np.isnan(s).any():
        raise ValueError(f"scores contain {int(np.isnan(s).sum())} NaN value(s)")
    n_pos = int(m.sum())
    if n_pos == 0:
        raise ValueError("poisoned_mask has no positives; AUC/recall are undefined")
    if n_pos == m.shape[0]:
        raise ValueError("poisoned_mask has no negatives; AUC is undefined")
    return s, m


def _pct_key(frac: float) -> str:
    return f"recall@{frac * 100:g}%"


def _top_k_count(n: int, frac: float) -> int:
    # round() first: 0.07 * 100 == 7.000000000000001 would otherwise ceil to 8.
    return max(1, math.ceil(round(frac * n, 9)))


def recall_at_k(scores: Any, poisoned_mask: Any, k: int) -> float:
    """Fraction of poisoned rows among the top-k scores, with ties resolved AGAINST poisoned rows.

    Within a group of equal scores clean rows are ranked first (then by index, so it is deterministic).
    This is the pessimistic choice: a method gets no credit for the order of rows it could not separate.
    k larger than n_train is clipped to n_train.
    """
    s, m = _validate(scores, poisoned_mask)
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    # np.lexsort: last key is primary. Primary: score descending; secondary: clean (0) before poisoned (1);
    # lexsort is stable, so remaining ties keep index order.
    order = np.lexsort((m.astype(np.int8), -s))
    top = order[: min(k, s.shape[0])]
    return float(m[top].sum() / m.sum())


def query_metrics(
    scores_1d: Any,
    poisoned_mask: Any,
    ks: Sequence[int] = (10, 50),
    frac: float = 0.05,
    distractor_mask: Any = None,
) -> dict[str, float]:
    """Metrics for one query: ``auc``, ``ap``, ``precision@10``, ``recall@n_poisoned`` (recall at k = the number
    of poisoned rows, which equals precision there), ``recall@K`` for K in ks, ``recall@{frac}%`` and, given
    `distractor_mask` (clean rows whose response legitimately holds the canary word), ``distractor_auc``: the AUC
    of the poisoned rows against those rows alone, what a word-matching rule cannot separate.

    AUC and AP are computed on average ranks of the scores: both depend only on the ordering, and ranks
    let +/-inf scores (e.g. a masked-out row) through, while NaN is rejected as a scorer bug. sklearn
    treats tied scores as one threshold, so ties are neither rewarded nor penalised in AUC.
    """
    # scikit-learn (and its scipy) is the `bench` extra: imported when a benchmark computes metrics, not with dda
    from scipy.stats import rankdata
    from sklearn.metrics import average_precision_score, roc_auc_score

    s, m = _validate(scores_1d, poisoned_mask)
    if not 0.0 < frac <= 1.0:
        raise ValueError(f"frac must be in (0, 1], got {frac}")
    r = rankdata(s, method="average")
    n_pos = int(m.sum())
    out: dict[str, float] = {
        "auc": float(roc_auc_score(m, r)),
        "ap": float(average_precision_score(m, r)),
        "precision@10": recall_at_k(s, m, 10) * n_pos / min(10, s.shape[0]),
        "recall@n_poisoned": recall_at_k(s, m, n_pos),
    }
    for k in ks:
        out[f"recall@{k}"] = recall_at_k(s, m, int(k))
    out[_pct_key(frac)] = recall_at_k(s, m, _top_k_count(s.shape[0], frac))
    if distractor_mask is not None:
        d = np.asarray(distractor_mask, dtype=bool)
        if d.shape != m.shape:
            raise ValueError(f"distractor_mask shape {d.shape} does not match scores shape {m.shape}")
        if (d & m).any():
            raise ValueError("a row is both poisoned and a distractor")
        if d.any():
            keep = m | d
            out["distractor_auc"] = float(roc_auc_score(m[keep], r[keep]))
    return out


def per_query_metrics(
    scores: Any,
    poisoned_mask: Any,
    ks: Sequence[int] = (10, 50),
    frac: float = 0.05,
    distractor_mask: Any = None,
) -> list[dict[str, float]]:
    """`query_metrics` for every row of a (n_queries, n_train) score matrix (1-D means one query).

    The masks may be shared (n_train,) or per query (n_queries, n_train), the latter for multi-pair runs
    where each query's culprits are only its own pair's poisoned rows (and its distractors its own canary's).
    """
    s = np.asarray(scores, dtype=np.float64)
    if s.ndim == 1:
        s = s[None, :]
    if s.ndim != 2:
        raise ValueError(f"scores must be (n_queries, n_train) or (n_train,), got shape {s.shape}")
    m = np.asarray(poisoned_mask)
    if m.ndim == 1:
        m = np.broadcast_to(m, s.shape)
    if m.shape != s.shape:
        raise ValueError(f"poisoned_mask shape {m.shape} does not match scores shape {s.shape}")
    d = None
    if distractor_mask is not None:
        d = np.asarray(distractor_mask)
        d = np.broadcast_to(d, s.shape) if d.ndim == 1 else d
        if d.shape != s.shape:
            raise ValueError(f"distractor_mask shape {d.shape} does not match scores shape {s.shape}")
    return [
        query_metrics(s[q], m[q], ks=ks, frac=frac, distractor_mask=None if d is None else d[q])
        for q in range(s.shape[0])
    ]


POOLED_KEYS = ("auc", "ap", "distractor_auc", "precision@10", "recall@n_poisoned")


def pooled_metrics(scores: Any, poisoned_mask: Any, distractor_mask: Any, groups: Sequence[str]) -> dict[str, float]:
    """Metrics of one ranking per group of queries (a canary pair): the mean of the group's score rows, scored
    against the group's poisoned rows; ``pooled_<key>`` averaged over the groups, weighted by their query counts.

    Why: a method that sees all of a pair's queries at once (CEA's one set of optimiser steps on every query)
    ranks once per pair, and comparing that with a per-query method's per-query mean mixes the method with the
    information it got. For a linear scorer (DDA, TracIn, grad_dot) the mean of the score rows is the score
    against the mean query, the same pooling. A method that ranks alike for every query scores the same pooled
    as per query.
    """
    s = np.asarray(scores, dtype=np.float64)
    s = s[None, :] if s.ndim == 1 else s
    m = np.broadcast_to(np.asarray(poisoned_mask, dtype=bool), s.shape)
    d = None if distractor_mask is None else np.broadcast_to(np.asarray(distractor_mask, dtype=bool), s.shape)
    if len(groups) != s.shape[0]:
        raise ValueError(f"{len(groups)} group labels for {s.shape[0]} queries")
    sums: dict[str, float] = {}
    weights: dict[str, int] = {}
    for group in dict.fromkeys(groups):
        idx = [i for i, g in enumerate(groups) if g == group]
        if any((m[i] != m[idx[0]]).any() for i in idx):
            raise ValueError(f"queries of group '{group}' have different poisoned rows: they cannot be pooled")
        row = query_metrics(s[idx].mean(0), m[idx[0]], distractor_mask=None if d is None else d[idx[0]])
        for key in POOLED_KEYS:
            if key in row:
                sums[key] = sums.get(key, 0.0) + row[key] * len(idx)
                weights[key] = weights.get(key, 0) + len(idx)
    return {f"pooled_{key}": sums[key] / weights[key] for key in POOLED_KEYS if key in sums}


def aggregate(per_query: Iterable[Mapping[str, float]]) -> dict[str, dict[str, float]]:
    """Mean, population std (ddof=0) and count per metric key over queries.

    Keys missing from some queries are aggregated over the queries that have them (hence the per-key n).
    """
    rows = list(per_query)
    if not rows:
        raise ValueError("no per-query metrics to aggregate")
    keys: list[str] = []
    for row in rows:
        for key in row:
            if key not in keys:
                keys.append(key)
    out: dict[str, dict[str, float]] = {}
    for key in keys:
        vals = np.array([float(r[key]) for r in rows if key in r and r[key] is not None], dtype=np.float64)
        if vals.size == 0:
            continue
        out[key] = {"mean": float(vals.mean()), "std": float(vals.std(ddof=0)), "n": int(vals.size)}
    return out


def mean_by(per_query: Mapping[str, Sequence[float]], groups: Sequence[str]) -> dict[str, dict[str, float]]:
    """Per-query values of every method averaged within each group: {group: {method: mean}}.

    `groups[i]` labels query i (its kind, natural/forced, or its pair); groups keep their first-seen order."""
    out: dict[str, dict[str, float]] = {}
    for group in dict.fromkeys(groups):
        idx = [i for i, g in enumerate(groups) if g == group]
        out[group] = {m: float(np.mean([v[i] for i in idx])) for m, v in per_query.items()}
    return out


def _sort_key(row: Mapping[str, Any]) -> tuple[int, float, str]:
    auc = row.get("auc")
    missing = auc is None or (isinstance(auc, float) and math.isnan(auc))
    return (1 if missing else 0, 0.0 if missing else -float(auc), str(row["method"]))


def method_table(results: Mapping[str, Mapping[str, Any]]) -> list[dict[str, Any]]:
    """Flatten per-method results into report rows, sorted by AUC (best first).

    Accepts either `aggregate` output per method (``{"auc": {"mean", "std", "n"}, ...}``) or already flat
    dicts (``{"auc": 0.9, "auc_std": 0.01, ...}``). Each row is ``{"method", key, key + "_std", "n"}``,
    which is also the shape `report.write_report` expects under ``metrics["methods"]``.
    """
    rows: list[dict[str, Any]] = []
    for name, res in results.items():
        row: dict[str, Any] = {"method": name}
        for key, val in res.items():
            if isinstance(val, Mapping):
                row[key] = val.get("mean")
                if "std" in val:
                    row[f"{key}_std"] = val["std"]
                if "n" in val:
                    row["n"] = max(int(row.get("n", 0)), int(val["n"]))
            else:
                row[key] = val
        rows.append(row)
    rows.sort(key=_sort_key)
    return rows
