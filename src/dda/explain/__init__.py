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

import time
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from ..data import Query
from ..scoring import ScoringContext
from ..scoring.base import foldable_methods, method_params, score_defaults
from ..scoring.gradient import evaluate
from .files import EXPLAIN_DIR, ORIENTATION, read_explanations, write_explanations
from .model import Recomputed, TargetRows, query_sides, recompute, target_rows
from .output import Assembly, body_start, query_entry, token_texts
from .terms import MethodPlan, planned, to_targets

if TYPE_CHECKING:
    from ..api import Attributor

# the package's modules by job: terms.py (the term math), model.py (re-running documents at each checkpoint),
# output.py (the JSON entries), files.py (explain/*.json); the names below are its public ones
__all__ = [
    "EXPLAIN_DIR",
    "ORIENTATION",
    "body_start",
    "explain",
    "explainable",
    "query_sides",
    "read_explanations",
    "to_targets",
    "token_texts",
    "write_explanations",
]


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
    queries = _checked_queries(queries, align)
    t_start = time.perf_counter()
    examples = att.train_examples()
    ids = [e.id for e in examples]
    fs = att.feature_set(queries)
    ctx = ScoringContext(
        fs,
        [f"{e.prompt_text}\n{e.response_text}" for e in examples],
        queries,
        default_checkpoints=att.cfg.score.checkpoints,
        train_responses=[e.response_text for e in examples],
        train_prompts=[e.prompt_text for e in examples],
    )
    defaults = score_defaults(att.cfg.score)

    # 1. every method as its terms; the scorer's own scores pick the documents
    plans: dict[str, MethodPlan] = {}
    for spec in methods:
        label, plan = _plan(spec, ctx, fs, defaults, ids, len(queries), train_ids, top_k)
        plans[label] = plan

    # 2. which documents each checkpoint must re-run, and which query targets each query checkpoint must
    need: dict[str, set[int]] = {}
    for plan in plans.values():
        for pt in plan.terms:
            need.setdefault(pt.term.train, set()).update(d for docs in plan.chosen for d in docs)
    sides = query_sides(att, queries)
    targets = target_rows(sides, query_token_limit)

    # 3. per-position features, checkpoint by checkpoint
    rec = recompute(att, examples, plans, need, targets, fs)

    # 4. assemble one explanation per query
    cost = _cost(t_start, rec, need, targets)
    asm = Assembly(att.tokenizer, examples, fs, rec, targets, poisoned, align)
    out = []
    for qi, q in enumerate(queries):
        settings = {
            "align": align,
            "methods": list(plans),
            "top_k": top_k if train_ids is None else None,
            "train_ids": list(train_ids) if train_ids is not None else None,
            "query_token_limit": query_token_limit,
        }
        out.append(query_entry(asm, qi, q, sides, att.cfg.features.query_tokens, plans, cost, settings))
    if out_dir is not None:
        write_explanations(out_dir, out)
    return out


def _checked_queries(queries: Sequence[Query], align: str) -> list[Query]:
    """The queries as a list, refused before any compute when `align` is unknown or a query lacks its texts."""
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
    return queries


def _plan(
    spec: str,
    ctx: ScoringContext,
    fs: Any,
    defaults: dict[str, Any],
    ids: list[str],
    n_queries: int,
    train_ids: Sequence[str] | None,
    top_k: int,
) -> tuple[str, MethodPlan]:
    """A method as its terms and scores, and the documents to explain per query (its top k, or `train_ids`)."""
    label, fn, params = method_params(spec, defaults)
    terms_fn = getattr(fn, "terms", None)
    if terms_fn is None:
        raise ValueError(
            f"method '{label}' is not a sum of gradient dot products, so it has no token "
            f"attribution (explainable: {', '.join(foldable_methods())} and their variants)"
        )
    terms = terms_fn(ctx, **params)
    scores = evaluate(fs, terms)
    if train_ids is not None:
        pos = {t: i for i, t in enumerate(ids)}
        unknown = [t for t in train_ids if t not in pos]
        if unknown:
            raise ValueError(f"unknown training ids {unknown[:5]}")
        chosen = [[pos[t] for t in train_ids] for _ in range(n_queries)]
    else:
        chosen = [list(np.argsort(-scores[qi], kind="stable")[:top_k]) for qi in range(n_queries)]
    ranks = np.argsort(np.argsort(-scores, axis=1, kind="stable"), axis=1) + 1
    return label, MethodPlan(params, [planned(fs, t) for t in terms], scores, chosen, ranks)


def _cost(t_start: float, rec: Recomputed, need: dict[str, set[int]], targets: TargetRows) -> dict[str, Any]:
    """What the explanation cost (shared by every query's entry)."""
    n_target_rows = len(targets.data) * len(rec.target_feats) if targets.data is not None else 0
    return {
        "seconds": round(time.perf_counter() - t_start, 3),
        "model_seconds": round(rec.model_seconds, 3),
        "documents": len(rec.docs),
        "rows_recomputed": rec.n_doc_rows,
        "query_target_rows": n_target_rows,
        "checkpoints": {c: len(s) for c, s in need.items()},
        "note": "each explained document re-run once per checkpoint its method's terms read (top_k x "
        "checkpoints per query and method at most; documents shared between queries are computed "
        "once), plus one gradient row per query target token and query checkpoint",
    }


def explainable(spec: str) -> bool:
    """Whether a method spec names a scorer that splits over tokens (a sum of gradient dot products)."""
    try:
        _, fn, _ = method_params(spec)
    except ValueError:
        return False
    return hasattr(fn, "terms")
