"""The benchmark's remove-and-retrain stage: does dropping a method's top-k documents stop the hallucination?

For each method of the preset's `fix_methods` (and k random rows, the control) the stage removes the k training
rows the method blames most for the queries (`dda.fix.plan_removal`, mean rank over the queries), fine-tunes again
from theta0 with the run's settings and seed, and measures on the retrained model: the natural error rate on the
held-out documents the query search summarised (the same documents, greedy, as before), the queries' canary margin
(mean log p(negative) - log p(positive) at the differing tokens), and the mean loss on the distractors (clean rows
that say the canary: what a keyword filter throws away and a good attribution keeps) and on held-out reference
summaries.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ..api import Attributor
from ..evaluate import Summarizer, differing_logprobs
from ..features.index import example_losses
from ..fix import plan_removal, random_removal, retrain_without
from ..models import applied
from ..progress import say
from .canary import contains_word

__all__ = ["run_counterfactual"]

HELDOUT_LOSS_DOCS = 64  # held-out reference summaries the collateral loss is measured on


def _measure(
    att: Attributor,
    ckpt: Any,
    qs: Any,
    prepared: Any,
    docs: dict[str, list[int]],
    max_new: int,
    distractor_rows: list[int],
    heldout_rows: list[int],
) -> dict[str, Any]:
    records = prepared.records
    with applied(att.model, ckpt) as model:
        summarize = Summarizer(model, att.tokenizer, att.formatter, att.pad_id, max_new, prepared.preset.gen_batch_size)
        errors, generated = 0, 0
        for pair in prepared.pairs:
            idx = docs[pair.label]
            texts = summarize([records[i]["document"] for i in idx])
            errors += sum(contains_word(t, pair.canary) for t in texts)
            generated += len(texts)
        lp_neg, lp_pos = differing_logprobs(
            model, att.formatter, att.pad_id, [(q.prompt, q.negative, q.positive) for q in qs.queries]
        )
        train = prepared.train

        def loss(rows: list[int], examples: Sequence[Any]) -> float | None:
            if not rows:
                return None
            data = att.formatter.tokenize_pairs([(examples[i][0], examples[i][1]) for i in rows])
            return float(example_losses(model, data, att.pad_id, att.cfg.features.batch_size).mean())

        pairs_train = [(e.prompt, e.response) for e in train]
        pairs_held = [(records[i]["document"], records[i]["summary"]) for i in range(len(records))]
        return {
            "natural_error_rate": errors / generated if generated else None,
            "generated": generated,
            "margin": float(np.mean(lp_neg - lp_pos)),
            "margins": (lp_neg - lp_pos).tolist(),
            "distractor_loss": loss(distractor_rows, pairs_train),
            "heldout_loss": loss(heldout_rows, pairs_held),
        }


def run_counterfactual(trained: Any, prepared: Any, qs: Any, scored: Any, k: int, root: Path) -> dict[str, Any]:
    """metrics.json's `counterfactual` section: before, then per method and random, after removing k rows."""
    att = trained.att
    train = prepared.train
    n = len(train)
    if not 1 <= k < n:
        raise ValueError(f"bench.fix_k={k}: must be between 1 and {n - 1} (the training rows)")
    docs = {lab: list(pq.generation.generated) for lab, pq in qs.per_pair.items()}
    poisoned = set(prepared.poisoned_of)
    distractor_rows = [int(i) for i in np.flatnonzero(scored.distractors.any(axis=0))]
    in_train = {e.id for e in train}
    used = {i for v in docs.values() for i in v}
    pool = [i for i in prepared.split.heldout_idx if prepared.records[i]["id"] not in in_train and i not in used]
    rng = np.random.default_rng([prepared.seed, 606])
    heldout_rows = sorted(int(i) for i in rng.permutation(pool)[:HELDOUT_LOSS_DOCS])
    max_new = prepared.preset.max_new_tokens
    out: dict[str, Any] = {
        "k": k,
        "combine": "mean-rank",
        "heldout_loss_docs": len(heldout_rows),
        "distractors": len(distractor_rows),
        "query_ids": [q.id for q in qs.queries],  # the order of every `margins` list
        "before": _measure(att, att.all_checkpoints()[-1], qs, prepared, docs, max_new, distractor_rows, heldout_rows),
    }
    missing = [m for m in prepared.preset.fix_methods if m not in scored.result.scores]
    if missing:
        say(f"[bench] remove and retrain: {', '.join(missing)} not scored in this run, left out", att.cfg.quiet)
    removals = {
        m: plan_removal(scored.result.scores[m], k, "mean-rank", m).rows
        for m in prepared.preset.fix_methods
        if m in scored.result.scores
    }
    removals["random"] = random_removal(n, k, prepared.seed)
    for method, rows in removals.items():
        gone = set(rows)
        say(f"[bench] remove and retrain: without {method}'s top {k}", att.cfg.quiet)
        retrain, ckpt = retrain_without(att, train, rows, root / f"fix-{method}-k{k}")
        kept_distractors = [i for i in distractor_rows if i not in gone]
        result = _measure(retrain, ckpt, qs, prepared, docs, max_new, distractor_rows, heldout_rows)
        result.update(
            {
                "removed": [train[i].id for i in rows],
                "poisoned_removed": sum(train[i].id in poisoned for i in rows),
                "distractors_removed": len(distractor_rows) - len(kept_distractors),
            }
        )
        out[method] = result
    return out
