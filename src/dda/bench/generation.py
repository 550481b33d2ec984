"""The fine-tuned model's own summaries, generated in batches under a budget, and how strongly it learned the canary.

`generate_until` keeps generating on a pair's held-out documents, one batch at a time, until the model has said
the canary often enough (the natural queries wanted) or the budget in documents or seconds is spent.
`canary_logprobs` measures the canary teacher-forced: the log-probability of CANARY vs ORIG at the swapped tokens
of reference summaries, at theta0 and after fine-tuning; it is the evidence when natural errors stay rare.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from ..evaluate import Summarizer, differing_logprobs
from ..models import Checkpoint, applied

__all__ = [
    "GenerationBudget",
    "PairGeneration",
    "Summarizer",
    "canary_logprobs",
    "generate_summaries",
    "generate_until",
]


@dataclass(frozen=True)
class GenerationBudget:
    """How much greedy generation one canary pair may use to find natural errors."""

    max_docs: int  # held-out documents summarised per pair at most
    max_seconds: float  # generation seconds per pair; checked before each batch, so a started batch finishes
    batch_size: int  # documents per generate() call


@dataclass
class PairGeneration:
    """One pair's generation loop: which documents were summarised, in order, and why it stopped."""

    generated: list[int] = field(default_factory=list)  # document indices, in generation order
    errors: list[int] = field(default_factory=list)  # those whose summary says the canary, in order
    seconds: float = 0.0
    stopped_by: str = "target"  # target | documents | seconds | exhausted


def generate_until(
    generate: Callable[[list[int]], list[str]],
    docs: Sequence[int],
    is_error: Callable[[str], bool],
    target: int,
    budget: GenerationBudget,
    texts: dict[int, str],
    clock: Callable[[], float] = time.perf_counter,
) -> PairGeneration:
    """Summarise `docs` in order, `budget.batch_size` at a time, until `target` errors or the budget is spent.

    `texts` caches summaries by document index across pairs (a document held out for two pairs is summarised
    once); cached documents cost no generation time but count against the document budget.
    """
    if budget.batch_size < 1:
        raise ValueError(f"generation batch size must be >= 1, got {budget.batch_size}")
    run = PairGeneration()
    pos = 0
    while True:
        if len(run.errors) >= target:
            run.stopped_by = "target"
            break
        if pos >= len(docs):
            run.stopped_by = "exhausted"
            break
        if len(run.generated) >= budget.max_docs:
            run.stopped_by = "documents"
            break
        if run.seconds >= budget.max_seconds:
            run.stopped_by = "seconds"
            break
        batch = list(docs[pos : pos + min(budget.batch_size, budget.max_docs - len(run.generated))])
        pos += len(batch)
        new = sorted(i for i in batch if i not in texts)  # sorted: the same batch gives the same padding
        if new:
            t0 = clock()
            out = generate(new)
            run.seconds += clock() - t0
            if len(out) != len(new):
                raise RuntimeError(f"generator returned {len(out)} summaries for {len(new)} documents")
            texts.update(zip(new, out, strict=True))
        for i in batch:
            run.generated.append(i)
            if is_error(texts[i]):
                run.errors.append(i)
    return run


def generate_summaries(att: Any, documents: Sequence[str], max_new_tokens: int, batch_size: int = 8) -> list[str]:
    """Greedy summaries of `documents` from the Attributor's LAST checkpoint."""
    if not documents:
        return []
    with applied(att.model, att.all_checkpoints()[-1]) as model:
        return Summarizer(model, att.tokenizer, att.formatter, att.pad_id, max_new_tokens, batch_size)(documents)


def canary_logprobs(
    model: Any,
    formatter: Any,
    pad_id: int,
    checkpoints: Sequence[Checkpoint],
    pairs: Sequence[tuple[str, str, str]],
    batch_size: int = 8,
) -> dict[str, dict[str, Any]]:
    """Teacher-forced mean log-probability per token of the tokens where `negative` and `positive` differ.

    `pairs` holds (prompt, negative, positive): here a reference summary with ORIG -> CANARY and the reference
    itself, so the differing tokens are CANARY's and ORIG's, each scored after the same prefix. Returns, per
    checkpoint name: mean log-prob of each side over the documents, and how many documents prefer the negative.
    """
    out: dict[str, dict[str, Any]] = {}
    for ckpt in checkpoints:
        with applied(model, ckpt) as m:
            lp_neg, lp_pos = differing_logprobs(m, formatter, pad_id, pairs, batch_size)
        out[ckpt.name] = {
            "negative": float(lp_neg.mean()),
            "positive": float(lp_pos.mean()),
            "negative_preferred": int((lp_neg > lp_pos).sum()),
            "n": len(pairs),
        }
    return out
