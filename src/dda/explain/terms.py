"""The term math of token attribution: each scorer term's normalised query vectors, what it divides a training
row by, and how per-position dot products add up to a document's token contributions and query-side parts.

Pure numpy: the per-position dot products come from dda.explain.model, which drives the model."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from ..scoring.base import dot_scores
from ..scoring.gradient import Term, term_query

if TYPE_CHECKING:
    from .model import TargetRows


@dataclass
class PlannedTerm:
    """A scorer term with its query-side scale: qhat = query * scale (the normalised query vectors)."""

    term: Term
    query: np.ndarray  # (n_queries, d) the term's query vectors (gradient.term_query)
    scale: np.ndarray  # (n_queries, d) multiplier, so that qhat = query * scale

    @property
    def qhat(self) -> np.ndarray:
        return self.query.astype(np.float64) * self.scale


@dataclass
class MethodPlan:
    """One method to explain: its terms, its own scores (which pick the documents) and the documents picked."""

    params: dict[str, Any]
    terms: list[PlannedTerm]
    scores: np.ndarray  # (n_queries, n_train) the method's scores
    chosen: list[list[int]]  # per query: the documents to explain
    ranks: np.ndarray  # (n_queries, n_train) 1-based rank of each document under the method


def planned(fs: Any, term: Term) -> PlannedTerm:
    query = term_query(fs, term)
    return PlannedTerm(term, query, _query_scale(fs, term, query))


def _query_scale(fs: Any, term: Term, query: np.ndarray) -> np.ndarray:
    q = query.astype(np.float64)
    if term.normalize == "module":  # as module_normalized divides each module slice by its norm
        return _module_scale(q, fs.blocks)
    if term.normalize == "std":
        std = dot_scores(fs.train[term.train], query).std(axis=1)
        return np.repeat((1.0 / np.maximum(std, 1e-30))[:, None], q.shape[1], axis=1)
    if term.normalize == "cosine":
        return np.repeat((1.0 / np.maximum(np.linalg.norm(q, axis=1), 1e-30))[:, None], q.shape[1], axis=1)
    return np.ones_like(q)


def _module_scale(x: np.ndarray, blocks: list[int]) -> np.ndarray:
    """1 / (module norm) per column, as module_normalized divides (an all-zero module keeps scale 1e30)."""
    x = np.atleast_2d(x)
    starts = np.concatenate([[0], np.cumsum(blocks)[:-1]]).astype(np.int64)
    norms = np.sqrt(np.add.reduceat(x.astype(np.float64) ** 2, starts, axis=1))
    return np.repeat(1.0 / np.maximum(norms, 1e-30), blocks, axis=1)


def doc_scale(term: Term, row: np.ndarray, blocks: list[int] | None) -> np.ndarray | float:
    """What the term divides a training row by, as a multiplier: per module (module), by its norm (cosine)."""
    if term.normalize == "module":
        return _module_scale(row, blocks)[0]
    if term.normalize == "cosine":
        return 1.0 / max(float(np.linalg.norm(row)), 1e-30)
    return 1.0


def _module_norms(row: np.ndarray, blocks: list[int]) -> np.ndarray:
    starts = np.concatenate([[0], np.cumsum(blocks)[:-1]]).astype(np.int64)
    return np.sqrt(np.add.reduceat(row.astype(np.float64) ** 2, starts))


def vectors_at(plans: dict[str, MethodPlan], ckpt: str) -> tuple[list[tuple[str, PlannedTerm, int]], np.ndarray]:
    """The normalised query vectors of every term that reads training features at `ckpt`, as one (D, V) matrix,
    and where each term's block of n_queries columns starts: [(method, term, first column)]."""
    layout, blocks, col = [], [], 0
    for label, plan in plans.items():
        for pt in plan.terms:
            if pt.term.train == ckpt:
                layout.append((label, pt, col))
                blocks.append(pt.qhat)
                col += pt.qhat.shape[0]
    if not blocks:
        return layout, np.zeros((0, 0))
    return layout, np.ascontiguousarray(np.concatenate(blocks).T)


def accumulate(
    plans: dict[str, MethodPlan],
    layout: list[tuple[str, PlannedTerm, int]],
    d: int,
    proj: np.ndarray,
    row: np.ndarray,
    blocks: list[int] | None,
    contrib: dict[tuple[str, int, int], np.ndarray],
) -> None:
    """Add the terms in `layout` to the token contributions of document d, for each query whose list under the
    term's method holds d: weight * sum over modules of (phi_t,m . qhat_m) / (what the term divides the row by).
    proj: (M, T, V) dot products of the document's per-position features with the query vectors."""
    for label, pt, col in layout:
        qis = [qi for qi, docs in enumerate(plans[label].chosen) if d in docs]
        if not qis:
            continue
        cols = proj[:, :, [col + qi for qi in qis]]  # (M, T, n selected queries)
        if pt.term.normalize == "module":
            parts = np.einsum("mtv,m->tv", cols, 1.0 / np.maximum(_module_norms(row, blocks), 1e-30))
        else:
            parts = cols.sum(0) * doc_scale(pt.term, row, blocks)
        parts = pt.term.weight * parts
        for j, qi in enumerate(qis):
            key = (label, qi, d)
            contrib[key] = contrib.get(key, 0.0) + parts[:, j]


def to_targets(parts: np.ndarray) -> np.ndarray:
    """Per-position parts -> per-token parts with position t's part on token t+1 (the token it predicts). The last
    position predicts nothing (no loss reaches it; its part is 0 up to rounding) and is kept on the last token so
    the sum is unchanged."""
    out = np.zeros_like(parts)
    if len(parts):
        out[1:] = parts[:-1]
        out[-1] += parts[-1]
    return out


def side_parts(
    plan: MethodPlan,
    qi: int,
    d: int,
    rows: dict[tuple[str, int], np.ndarray],
    fs: Any,
    targets: TargetRows,
    target_feats: dict[str, np.ndarray],
) -> dict[str, Any]:
    """The document's score split by query side (negative output vs positive output) and, where the targets
    were featurised, by query target token. Exact: qhat is linear in the query vector."""
    neg_part = pos_part = 0.0
    by_token: dict[tuple[str, int], float] = {}
    complete = True
    for pt in plan.terms:
        term = pt.term
        z = rows[(term.train, d)]
        zn = z * doc_scale(term, z, fs.blocks)
        scale = pt.scale[qi]
        c = term.query_checkpoint
        if term.contrastive:
            neg_vec = np.asarray(fs.contrast_neg.get(c, fs.neg[c])[qi], dtype=np.float64)
            pos_vec = np.asarray(fs.pos[c][qi], dtype=np.float64)
            parts = {"contrast_neg": neg_vec, "pos": -pos_vec}
        else:
            side_feats = fs.neg if term.negative_side == "neg" else fs.contrast_neg
            parts = {term.negative_side: np.asarray(side_feats[c][qi], dtype=np.float64)}
        for side, vec in parts.items():
            value = term.weight * float(zn @ (vec * scale))
            if side == "pos":
                pos_part += value
            else:
                neg_part += value
            rows_of = targets.index.get((qi, side))
            if rows_of is None or c not in target_feats:
                complete = False
                continue
            sign = -1.0 if side == "pos" else 1.0
            for r, t in rows_of:  # the side's loss is the mean over its targets
                f = target_feats[c][r].astype(np.float64) * sign / len(rows_of)
                key = ("positive" if side == "pos" else "negative", t)
                by_token[key] = by_token.get(key, 0.0) + term.weight * float(zn @ (f * scale))
    out: dict[str, Any] = {"negative": neg_part, "positive": pos_part}
    out["by_token"] = (
        [{"side": s, "position": t, "contribution": v} for (s, t), v in sorted(by_token.items())] if complete else None
    )
    return out
