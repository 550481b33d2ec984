"""Show why: a gradient score split exactly over the training document's tokens (and the query's output tokens).

A Linear layer's per-example weight gradient is G = sum_t g_t x_t^T (g_t: loss gradient w.r.t. the layer output
at position t, x_t: the layer input there), and every projection is linear in G, so a stored feature row is a sum
of per-position terms phi_t (GradientFeaturizer.per_position). The gradient scorers (dda and its variants,
grad_dot, grad_cos, tracin) are sums of dot products with fixed query vectors (scoring.gradient.Term); a term's
normalisation divides the training row by constants of the whole document (its module norms, its norm). So

    score(q, z) = sum_terms w * <qhat, phi(z) / c(z)> = sum_t [ sum_terms w * <qhat, phi_t(z) / c(z)> ],

and the bracket is position t's part: the parts sum to the score (float rounding aside).

Which token a part belongs to (`align`): position t's g_t carries the loss of predicting token t+1 (the response
tokens are the loss targets) and, through attention, the losses of every later response token. With
align="target" (the default) position t's part is shown on token t+1, the token it learns to write: a poisoned
summary's ' China' then carries the lesson "write China here", the response sum is exactly the part of the
positions that carry a loss, and the prompt sum is what reaches earlier positions through attention only (prompt
tokens do get contributions: their inputs x_t enter the weight gradient). The first token gets 0, and the last
position has no loss after it (its g is 0), so the parts still sum to the score. align="input" keeps position t
on token t (the input it reads).

The query side splits the same way over its loss targets: the contrastive query vector is
mean_a grad l(neg token a) - mean_b grad l(pos token b) over the tokens the contrast runs over
(features.query_tokens=diff: where the negative and positive differ), so each of those tokens' share of a
document's score is exact too; it costs one extra gradient row per target token and checkpoint, and is skipped
for a side with more than `query_token_limit` targets (the whole-output contrast, non-contrastive methods).

Cost: every document in a top-k list is re-run once per checkpoint its terms read (features are per document,
not per query, so documents shared between queries and methods are computed once).
"""

from __future__ import annotations

import hashlib
import re
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from .data import Query, Tokenized, focus_on_difference
from .features.capture import GradientFeaturizer, freeze, pad_batch
from .features.index import length_sorted_batches
from .io import read_json, write_json
from .models import applied
from .progress import bar
from .scoring import ScoringContext
from .scoring.base import dot_scores, method_params
from .scoring.gradient import Term, evaluate, term_query

if TYPE_CHECKING:
    from .api import Attributor

EXPLAIN_DIR = "explain"
ORIENTATION = (
    "contribution > 0: the token pushes the document's score up (toward the negative output, more "
    "responsible); < 0: against. Token contributions sum to the method's score for the document."
)


# ------------------------------------------------------------------------------------------------ tokens


def token_texts(tokenizer: Any, ids: Sequence[int]) -> list[str]:
    """Per-token text pieces whose concatenation is the decoded sequence (special tokens kept): each piece is
    what decoding one more token adds; a token that splits a multi-byte character falls back to its own text."""
    out: list[str] = []
    prev = ""
    for t in range(len(ids)):
        cur = tokenizer.decode(list(ids[: t + 1]), skip_special_tokens=False, clean_up_tokenization_spaces=False)
        if cur.startswith(prev):
            out.append(cur[len(prev) :])
        else:
            out.append(tokenizer.decode([ids[t]], skip_special_tokens=False, clean_up_tokenization_spaces=False))
        prev = cur
    return out


def body_start(pieces: Sequence[str], document: str, probe: int = 24) -> int:
    """Index of the token where the document's own text begins inside the templated prompt (after the system
    instruction and role markers), found by its first characters; 0 when it cannot be found."""
    text = "".join(pieces)
    words = document.split()
    at = -1
    # a tokenizer may not give the text back verbatim (spacing around punctuation): shorter probes, then a word
    for head in (document.strip()[:probe].strip(), document.strip()[: probe // 2].strip(), *words[:1]):
        at = text.find(head) if head else -1
        if at >= 0:
            break
    if at < 0:
        return 0
    end = 0
    for i, piece in enumerate(pieces):
        end += len(piece)
        if end > at:
            return i
    return 0


def _file_name(query_id: str) -> str:
    """A safe, unique file name for a query id (ids such as 'England->China:123:natural' hold ':' and '>')."""
    stem = re.sub(r"[^A-Za-z0-9._-]+", "_", query_id).strip("_")[:80] or "query"
    return f"{stem}-{hashlib.sha256(query_id.encode()).hexdigest()[:8]}.json"


# ------------------------------------------------------------------------------------------------- terms


@dataclass
class _PlannedTerm:
    """A scorer term with its query-side scale: qhat = query * scale (the normalised query vectors)."""

    term: Term
    query: np.ndarray  # (n_queries, d) the term's query vectors (gradient.term_query)
    scale: np.ndarray  # (n_queries, d) multiplier, so that qhat = query * scale

    @property
    def qhat(self) -> np.ndarray:
        return self.query.astype(np.float64) * self.scale


def _planned(fs: Any, term: Term) -> _PlannedTerm:
    query = term_query(fs, term)
    return _PlannedTerm(term, query, _query_scale(fs, term, query))


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


def _doc_scale(term: Term, row: np.ndarray, blocks: list[int] | None) -> np.ndarray | float:
    """What the term divides a training row by, as a multiplier: per module (module), by its norm (cosine)."""
    if term.normalize == "module":
        return _module_scale(row, blocks)[0]
    if term.normalize == "cosine":
        return 1.0 / max(float(np.linalg.norm(row)), 1e-30)
    return 1.0


# ----------------------------------------------------------------------------------------- query sides


def query_sides(att: Attributor, queries: Sequence[Query]) -> dict[str, Tokenized]:
    """The tokenised query outputs whose loss the stored query features carry, as Attributor.query_features
    builds them: "neg" (whole negative output), and with positives "pos" and "contrast_neg" (the swapped tokens
    only under features.query_tokens=diff; the whole outputs otherwise)."""
    fmt = att.formatter
    neg = fmt.tokenize_pairs([(q.prompt, q.negative) for q in queries])
    sides = {"neg": neg}
    if all(q.positive for q in queries):
        pos = fmt.tokenize_pairs([(q.prompt, q.positive) for q in queries])
        if att.cfg.features.query_tokens == "diff":
            sides["contrast_neg"], sides["pos"] = focus_on_difference(neg, pos)
        else:
            sides["contrast_neg"], sides["pos"] = neg, pos
    return sides


def _targets(mask: Sequence[bool]) -> list[int]:
    return [i for i, m in enumerate(mask) if m]


# -------------------------------------------------------------------------------------------- explain


def explain(
    att: Attributor,
    queries: Sequence[Query],
    methods: Sequence[str] = ("dda",),
    top_k: int = 10,
    poisoned: set[str] | None = None,
    train_ids: Sequence[str] | None = None,
    query_token_limit: int = 8,
    out_dir: str | Path | None = None,
    align: str = "target",
) -> list[dict[str, Any]]:
    """Token-level explanations of the top-k documents of each query under each gradient method.

    Returns one JSON-able dict per query (also written to OUT_DIR/explain/<query>.json when `out_dir` is
    given). `train_ids`: explain these documents (for every query) instead of the top k. `poisoned`: ground
    truth to mark (None: unknown)."""
    if align not in ("target", "input"):
        raise ValueError(
            f"align must be 'target' (a position's part on the token it predicts) or 'input', not '{align}'"
        )
    queries = list(queries)
    empty = [q.id for q in queries if not q.prompt or not q.negative]
    if empty:
        raise ValueError(
            f"queries {empty[:5]} have no prompt or no negative output (a ranking.json read back with "
            f"load_attribution keeps no prompts): pass the queries themselves"
        )
    t_start = time.perf_counter()
    examples = att.train_examples()
    ids = [e.id for e in examples]
    fs = att.feature_set(queries)
    ctx = ScoringContext(
        fs, [f"{e.prompt}\n{e.response}" for e in examples], queries, default_checkpoints=att.cfg.score.checkpoints
    )
    defaults = {k: v for k, v in vars(att.cfg.score).items() if k not in ("methods", "checkpoints", "top_k")}

    # 1. every method as its terms; the scorer's own scores pick the documents
    plans: dict[str, dict[str, Any]] = {}
    for spec in methods:
        label, fn, params = method_params(spec, defaults)
        terms_fn = getattr(fn, "terms", None)
        if terms_fn is None:
            raise ValueError(
                f"method '{label}' is not a sum of gradient dot products, so it has no token "
                f"attribution (explainable: dda and its variants, grad_dot, grad_cos, tracin)"
            )
        terms = terms_fn(ctx, **params)
        scores = evaluate(fs, terms)
        if train_ids is not None:
            pos = {t: i for i, t in enumerate(ids)}
            unknown = [t for t in train_ids if t not in pos]
            if unknown:
                raise ValueError(f"unknown training ids {unknown[:5]}")
            chosen = [[pos[t] for t in train_ids] for _ in queries]
        else:
            chosen = [list(np.argsort(-scores[qi], kind="stable")[:top_k]) for qi in range(len(queries))]
        ranks = np.argsort(np.argsort(-scores, axis=1, kind="stable"), axis=1) + 1
        plans[label] = {
            "params": params,
            "terms": [_planned(fs, t) for t in terms],
            "scores": scores,
            "chosen": chosen,
            "ranks": ranks,
        }

    # 2. which documents each checkpoint must re-run, and which query targets each query checkpoint must
    need: dict[str, set[int]] = {}
    for plan in plans.values():
        for pt in plan["terms"]:
            need.setdefault(pt.term.train, set()).update(d for docs in plan["chosen"] for d in docs)
    sides = query_sides(att, queries)
    target_rows = _target_rows(sides, query_token_limit)
    query_ckpts = {pt.term.query_checkpoint for plan in plans.values() for pt in plan["terms"]}

    # 3. per-position features, checkpoint by checkpoint (each applied once); contributions accumulate per
    #    (method, query, document) and the per-position tensors are dropped after use
    contrib: dict[tuple[str, int, int], np.ndarray] = {}
    rows: dict[tuple[str, int], np.ndarray] = {}  # (checkpoint, doc) -> recomputed row (sum over positions)
    target_feats: dict[str, np.ndarray] = {}  # query checkpoint -> (n target rows, d)
    docs_all = sorted({d for s in need.values() for d in s})
    data = att.tokenize([examples[d] for d in docs_all])
    local = {d: j for j, d in enumerate(docs_all)}
    n_doc_rows = 0
    t_model = time.perf_counter()
    total_rows = sum(len(v) for v in need.values())
    with bar(
        f"token attribution ({len(docs_all)} documents, {len(need)} checkpoints)", total_rows, att.cfg.quiet
    ) as advance:
        for ckpt in att.all_checkpoints():
            n_doc_rows += _explain_checkpoint(
                att, ckpt, need, query_ckpts, target_rows, plans, data, local, fs, contrib, rows, target_feats, advance
            )
    model_seconds = time.perf_counter() - t_model

    # 4. assemble one explanation per query
    tok = att.tokenizer
    texts_cache: dict[int, list[str]] = {}
    special = set(getattr(tok, "all_special_ids", []) or [])
    n_target_rows = len(target_rows.data) * len(target_feats) if target_rows.data is not None else 0
    cost = {
        "seconds": round(time.perf_counter() - t_start, 3),
        "model_seconds": round(model_seconds, 3),
        "documents": len(docs_all),
        "rows_recomputed": n_doc_rows,
        "query_target_rows": n_target_rows,
        "checkpoints": {c: len(s) for c, s in need.items()},
        "note": "each explained document re-run once per checkpoint its method's terms read (top_k x "
        "checkpoints per query and method at most; documents shared between queries are computed "
        "once), plus one gradient row per query target token and query checkpoint",
    }
    out = []
    for qi, q in enumerate(queries):
        entry: dict[str, Any] = {
            "query": {"id": q.id, "prompt": q.prompt, "negative": q.negative, "positive": q.positive},
            "orientation": ORIENTATION,
            "query_tokens": _query_token_info(tok, sides, qi, att.cfg.features.query_tokens),
            "methods": {},
            "cost": cost,
            "settings": {
                "align": align,
                "methods": list(plans),
                "top_k": top_k if train_ids is None else None,
                "train_ids": list(train_ids) if train_ids is not None else None,
                "query_token_limit": query_token_limit,
            },
        }
        for label, plan in plans.items():
            docs_out = []
            for d in plan["chosen"][qi]:
                if d not in texts_cache:
                    texts_cache[d] = token_texts(tok, data.input_ids[local[d]])
                seq = data.input_ids[local[d]]
                mask = np.asarray(data.response_mask[local[d]], dtype=bool)
                c = contrib.get((label, qi, d), np.zeros(len(seq)))
                if align == "target":
                    c = to_targets(c)
                side = _side_parts(plan, qi, d, rows, fs, target_rows, target_feats)
                total = float(c.sum())
                stored_rel = max(
                    (_rel_diff(rows[(pt.term.train, d)], fs.train[pt.term.train][d]) for pt in plan["terms"]),
                    default=0.0,
                )
                order = np.argsort(-c, kind="stable")
                docs_out.append(
                    {
                        "rank": int(plan["ranks"][qi, d]),
                        "train_id": ids[d],
                        "score": float(plan["scores"][qi, d]),
                        "explained_score": total,
                        "poisoned": None if poisoned is None else ids[d] in poisoned,
                        "tokens": [[texts_cache[d][t], float(f"{c[t]:.7g}")] for t in range(len(seq))],
                        "response_start": int(np.argmax(mask)) if mask.any() else len(seq),
                        "body_start": body_start(texts_cache[d], examples[d].prompt),
                        "special": [t for t in range(len(seq)) if seq[t] in special],
                        "sums": {"prompt": float(c[~mask].sum()), "response": float(c[mask].sum())},
                        "abs_share": _abs_share(c, mask),
                        "top_tokens": [
                            {
                                "index": int(t),
                                "text": texts_cache[d][t],
                                "contribution": float(c[t]),
                                "in_response": bool(mask[t]),
                            }
                            for t in order[:5]
                        ],
                        "query_side": side,
                        "stored_row_rel_diff": stored_rel,
                    }
                )
            entry["methods"][label] = {
                "params": {k: v for k, v in plan["params"].items() if _jsonable(v)},
                "terms": [
                    {
                        "weight": pt.term.weight,
                        "train": pt.term.train,
                        "query": pt.term.query_checkpoint,
                        "normalize": pt.term.normalize,
                        "contrastive": pt.term.contrastive,
                    }
                    for pt in plan["terms"]
                ],
                "docs": docs_out,
            }
        out.append(entry)
    if out_dir is not None:
        write_explanations(out_dir, out)
    return out


def _explain_checkpoint(
    att: Attributor,
    ckpt: Any,
    need: dict[str, set[int]],
    query_ckpts: set[str],
    target_rows: _TargetRows,
    plans: dict[str, dict[str, Any]],
    data: Tokenized,
    local: dict[int, int],
    fs: Any,
    contrib: dict[tuple[str, int, int], np.ndarray],
    rows: dict[tuple[str, int], np.ndarray],
    target_feats: dict[str, np.ndarray],
    advance: Any,
) -> int:
    """Apply one checkpoint, re-run the documents that read it (per-position features reduced to dot products
    with the query vectors, accumulated into `contrib`; rows kept in `rows`) and the query target rows there.
    Returns the number of document rows computed."""
    indexer = att.indexer
    pad_id = att.tokenizer.pad_token_id if att.tokenizer.pad_token_id is not None else 0
    wanted = sorted(need.get(ckpt.name, ()))
    want_targets = ckpt.name in query_ckpts and target_rows.data is not None
    n_rows = 0
    if not wanted and not want_targets:
        return 0
    with applied(att.model, ckpt) as model:
        freeze(model)
        fz = GradientFeaturizer(model, indexer.modules, indexer.projector)
        layout, vectors = _vectors_at(plans, ckpt.name)
        reduce = _position_reducer(fz, torch.from_numpy(vectors).to(indexer.device))
        lengths = np.array([len(data.input_ids[local[d]]) for d in wanted])
        for batch in length_sorted_batches(lengths, np.arange(len(wanted)), att.cfg.features.batch_size):
            docs = [wanted[b] for b in batch]
            seqs = [data.input_ids[local[d]] for d in docs]
            masks = [data.response_mask[local[d]] for d in docs]
            reduced = fz.per_position_reduced(*pad_batch(seqs, masks, pad_id, indexer.device), reduce=reduce)
            batch_rows, proj = _combine(fz, reduced)
            for b, d in enumerate(docs):
                rows[(ckpt.name, d)] = batch_rows[b].astype(np.float32)  # kept for the query-side split
                _accumulate(plans, layout, d, proj[b, :, : len(seqs[b])], batch_rows[b], fs.blocks, contrib)
            n_rows += len(docs)
            advance(len(docs))
        if want_targets:
            td = target_rows.data
            feats = []
            for start in range(0, len(td), att.cfg.features.batch_size):
                sl = slice(start, start + att.cfg.features.batch_size)
                feats.append(
                    fz(*pad_batch(td.input_ids[sl], td.response_mask[sl], pad_id, indexer.device)).cpu().numpy()
                )  # float32: (rows, D) per checkpoint
            target_feats[ckpt.name] = np.concatenate(feats)
    return n_rows


def _vectors_at(plans: dict[str, dict[str, Any]], ckpt: str) -> tuple[list[tuple[str, _PlannedTerm, int]], np.ndarray]:
    """The normalised query vectors of every term that reads training features at `ckpt`, as one (D, V) matrix,
    and where each term's block of n_queries columns starts: [(method, term, first column)]."""
    layout, blocks, col = [], [], 0
    for label, plan in plans.items():
        for pt in plan["terms"]:
            if pt.term.train == ckpt:
                layout.append((label, pt, col))
                blocks.append(pt.qhat)
                col += pt.qhat.shape[0]
    if not blocks:
        return layout, np.zeros((0, 0))
    return layout, np.ascontiguousarray(np.concatenate(blocks).T)


def _position_reducer(fz: GradientFeaturizer, vectors: torch.Tensor):
    """Per module: its (B, T, dim) per-position features -> (their sum over T: the module's part of the row,
    their dot products with the query vectors' columns of that module: (B, T, V)), in float64."""
    slices: dict[str, slice] = {}
    start = 0
    for name in fz.names:
        dim = fz.projector.module_dim(*fz.shapes[name])
        slices[name] = slice(0, dim) if fz.projector.combine == "sum" else slice(start, start + dim)
        start += dim

    def reduce(name: str, per_position: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        pp = per_position.double()
        proj = pp @ vectors[slices[name]] if vectors.numel() else pp.new_zeros((*pp.shape[:2], 0))
        return pp.sum(1), proj

    return reduce


def _combine(
    fz: GradientFeaturizer, reduced: dict[str, tuple[torch.Tensor, torch.Tensor]]
) -> tuple[np.ndarray, np.ndarray]:
    """Rows (B, D) and per-module projections (B, M, T, V); a projection that sums modules gives M = 1."""
    if fz.projector.combine == "sum":
        rows = sum(reduced[n][0] for n in fz.names)
        proj = sum(reduced[n][1] for n in fz.names).unsqueeze(1)
    else:
        rows = torch.cat([reduced[n][0] for n in fz.names], dim=1)
        proj = torch.stack([reduced[n][1] for n in fz.names], dim=1)
    return rows.cpu().numpy(), proj.cpu().numpy()


def _module_norms(row: np.ndarray, blocks: list[int]) -> np.ndarray:
    starts = np.concatenate([[0], np.cumsum(blocks)[:-1]]).astype(np.int64)
    return np.sqrt(np.add.reduceat(row.astype(np.float64) ** 2, starts))


def _accumulate(
    plans: dict[str, dict[str, Any]],
    layout: list[tuple[str, _PlannedTerm, int]],
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
        qis = [qi for qi, docs in enumerate(plans[label]["chosen"]) if d in docs]
        if not qis:
            continue
        cols = proj[:, :, [col + qi for qi in qis]]  # (M, T, n selected queries)
        if pt.term.normalize == "module":
            parts = np.einsum("mtv,m->tv", cols, 1.0 / np.maximum(_module_norms(row, blocks), 1e-30))
        else:
            parts = cols.sum(0) * _doc_scale(pt.term, row, blocks)
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


def _rel_diff(recomputed: np.ndarray, stored: np.ndarray) -> float:
    stored = np.asarray(stored, dtype=np.float64)
    return float(np.linalg.norm(recomputed - stored) / max(np.linalg.norm(stored), 1e-30))


def _abs_share(c: np.ndarray, mask: np.ndarray) -> dict[str, float]:
    mass = float(np.abs(c).sum())
    if mass == 0:
        return {"prompt": 0.0, "response": 0.0}
    return {"prompt": float(np.abs(c[~mask]).sum() / mass), "response": float(np.abs(c[mask]).sum() / mass)}


def _jsonable(v: Any) -> bool:
    return v is None or isinstance(v, (str, int, float, bool, list))


# ---------------------------------------------------------------------------------------- query targets


@dataclass
class _TargetRows:
    """One row per (query, side, target token) whose loss is that token's alone; None when nothing to split."""

    data: Tokenized | None
    index: dict[tuple[int, str], list[tuple[int, int]]]  # (query, side) -> [(row, token position)]


def _target_rows(sides: dict[str, Tokenized], limit: int) -> _TargetRows:
    seqs: list[list[int]] = []
    masks: list[list[bool]] = []
    index: dict[tuple[int, str], list[tuple[int, int]]] = {}
    for side in ("neg", "contrast_neg", "pos"):
        tk = sides.get(side)
        if tk is None:
            continue
        if side == "contrast_neg" and tk is sides["neg"]:  # whole-output contrast: the same rows as "neg"
            index.update({(qi, side): rows for (qi, s), rows in list(index.items()) if s == "neg"})
            continue
        for qi, (ids, mask) in enumerate(zip(tk.input_ids, tk.response_mask, strict=True)):
            targets = _targets(mask)
            if not targets or len(targets) > limit:
                continue
            rows = []
            for t in targets:
                rows.append((len(seqs), t))
                seqs.append(list(ids))
                masks.append([i == t for i in range(len(ids))])
            index[(qi, side)] = rows
    data = Tokenized(seqs, masks, 0, 0) if seqs else None
    return _TargetRows(data, index)


def _side_parts(
    plan: dict[str, Any],
    qi: int,
    d: int,
    rows: dict[tuple[str, int], np.ndarray],
    fs: Any,
    targets: _TargetRows,
    target_feats: dict[str, np.ndarray],
) -> dict[str, Any]:
    """The document's score split by query side (negative output vs positive output) and, where the targets
    were featurised, by query target token. Exact: qhat is linear in the query vector."""
    neg_part = pos_part = 0.0
    by_token: dict[tuple[str, int], float] = {}
    complete = True
    for pt in plan["terms"]:
        term = pt.term
        z = rows[(term.train, d)]
        zn = z * _doc_scale(term, z, fs.blocks)
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


def _query_token_info(tok: Any, sides: dict[str, Tokenized], qi: int, mode: str) -> dict[str, Any]:
    """The response tokens of the query's outputs (position in the query sequence, text) and whether the
    contrast's loss runs over each one. Non-contrastive methods use every negative response token."""
    info: dict[str, Any] = {"mode": mode if "pos" in sides else "all (no positive output)"}
    neg = sides["neg"]
    start = next((i for i, m in enumerate(neg.response_mask[qi]) if m), len(neg.input_ids[qi]))  # prompt length
    for name, tk_side, focus in (("negative", "neg", "contrast_neg"), ("positive", "pos", "pos")):
        if tk_side not in sides:
            continue
        ids = sides[tk_side].input_ids[qi]
        targets = sides.get(focus, sides[tk_side]).response_mask[qi]
        texts = token_texts(tok, ids[start:])
        info[name] = [
            {"position": t, "text": texts[t - start], "target": bool(targets[t])} for t in range(start, len(ids))
        ]
    return info


# ------------------------------------------------------------------------------------------------ files


def write_explanations(out_dir: str | Path, explanations: Sequence[dict[str, Any]]) -> Path:
    """OUT_DIR/explain/<query>.json per query (atomic) and explain/index.json listing them."""
    root = Path(out_dir) / EXPLAIN_DIR
    index = {"orientation": ORIENTATION, "queries": []}
    for e in explanations:
        name = _file_name(e["query"]["id"])
        write_json(root / name, e)
        index["queries"].append({"id": e["query"]["id"], "file": name, "methods": list(e["methods"])})
    if explanations:
        index["cost"] = explanations[0]["cost"]
    write_json(root / "index.json", index)
    return root


def read_explanations(out_dir: str | Path) -> list[dict[str, Any]]:
    """The explanations written beside an attribution (in index order); [] when there are none."""
    root = Path(out_dir) / EXPLAIN_DIR
    if not (root / "index.json").exists():
        return []
    index = read_json(root / "index.json")
    out = []
    for item in index.get("queries", []):
        path = root / item["file"]
        if not path.exists():
            raise FileNotFoundError(f"{path}: listed in {root / 'index.json'} but missing")
        out.append(read_json(path))
    return out


def explainable(spec: str) -> bool:
    """Whether a method spec names a scorer that splits over tokens (a sum of gradient dot products)."""
    try:
        _, fn, _ = method_params(spec)
    except ValueError:
        return False
    return hasattr(fn, "terms")
