"""The benchmark's queries: the fine-tuned model's own hallucinations first, forced ones only for what is missing.

Per canary pair, held-out documents are summarised greedily (batched, under the preset's generation budget) until
the model has written CANARY in `n_queries` summaries. Each such summary is a natural query (negative: the
summary, positive: the same with CANARY -> ORIG). A pair still short when the budget is spent is filled with
forced queries (reference summary with ORIG -> CANARY), labelled `forced` everywhere; and the canary's
teacher-forced log-probabilities before and after fine-tuning are measured, to show whether it was learned.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ..api import Attributor
from ..data import Query
from ..models import applied
from .canary import CanaryPair, contains_word, forced_query, natural_query, query_documents
from .generation import GenerationBudget, PairGeneration, Summarizer, canary_logprobs, generate_until
from .presets import BenchPreset

__all__ = ["PairQueries", "QuerySet", "build_queries", "ordered_query_docs"]

Record = Mapping[str, str]
# Reference summaries the canary's teacher-forced log-probabilities are measured on, per pair: enough to show a
# systematic preference, at a few seconds of forward passes.
PROBE_DOCS = 8


def orig_visible(att: Attributor, document: str, word: str) -> bool:
    """Does ORIG survive prompt truncation? Only then can writing CANARY contradict what the model saw."""
    ids = att.tokenizer(document, add_special_tokens=False)["input_ids"][: att.cfg.data.max_prompt_tokens]
    return contains_word(att.tokenizer.decode(ids), word)


def ordered_query_docs(
    att: Attributor,
    records: Sequence[Record],
    heldout: Sequence[int],
    pair: CanaryPair,
    candidates: set[int],
    seed: int,
    stream: int,
    in_window_only: bool = False,
) -> list[int]:
    """Held-out query documents for `pair`, best first: ORIG visible in the truncated prompt, then candidates
    (their reference summary names ORIG, so the model is likely to name the entity too), seeded within.
    `in_window_only`: only the documents whose truncated prompt names ORIG."""
    local = query_documents([records[i] for i in heldout], pair)
    docs = [heldout[j] for j in local]
    rng = np.random.default_rng([seed, 202, stream])  # one stream per pair
    docs = [docs[j] for j in rng.permutation(len(docs))]
    vis = {i: orig_visible(att, records[i]["document"], pair.orig) for i in docs}
    if in_window_only:
        docs = [i for i in docs if vis[i]]
    return sorted(docs, key=lambda i: (not vis[i], i not in candidates))  # stable: keeps the seeded order


@dataclass
class PairQueries:
    """What one pair's query search found."""

    pair: CanaryPair
    target: int  # natural queries wanted (the preset's n_queries)
    generation: PairGeneration
    budget: GenerationBudget
    natural: int = 0  # natural queries used
    forced: int = 0  # forced queries added
    # Generated documents whose truncated prompt names ORIG, and how many of their summaries said CANARY: the
    # natural error rate against what the model read.
    generated_in_window: int = 0
    errors_in_window: int = 0
    # {checkpoint name: {"negative": mean log-prob of CANARY's tokens, "positive": ORIG's, "negative_preferred", "n"}}
    teacher_forced: dict[str, dict[str, Any]] = field(default_factory=dict)

    @property
    def natural_rate(self) -> float | None:
        n = len(self.generation.generated)
        return len(self.generation.errors) / n if n else None

    @property
    def natural_rate_in_window(self) -> float | None:
        return self.errors_in_window / self.generated_in_window if self.generated_in_window else None

    def to_dict(self) -> dict[str, Any]:
        g = self.generation
        return {
            "generated": len(g.generated),
            "natural_errors": len(g.errors),
            "natural_rate": self.natural_rate,
            "generated_in_window": self.generated_in_window,
            "natural_errors_in_window": self.errors_in_window,
            "natural_rate_in_window": self.natural_rate_in_window,
            "natural_queries": self.natural,
            "forced_queries": self.forced,
            "target": self.target,
            "generation_seconds": round(g.seconds, 3),
            "stopped_by": g.stopped_by,
            "budget": {
                "max_docs": self.budget.max_docs,
                "max_seconds": self.budget.max_seconds,
                "batch_size": self.budget.batch_size,
            },
            "teacher_forced": self.teacher_forced,
        }


@dataclass
class QuerySet:
    queries: list[Query]
    pairs: list[CanaryPair]  # pair of each query
    kinds: list[str]  # natural | forced, per query
    rows: list[dict[str, Any]]  # queries.jsonl rows
    generations: list[dict[str, Any]]  # generations.jsonl rows, per pair in generation order
    per_pair: dict[str, PairQueries]
    notes: list[str]

    @property
    def mode(self) -> str:
        kinds = set(self.kinds)
        return "natural" if kinds == {"natural"} else "forced" if kinds == {"forced"} else "mixed"

    @property
    def n_generated(self) -> int:
        return sum(len(p.generation.generated) for p in self.per_pair.values())

    @property
    def n_errors(self) -> int:
        return sum(len(p.generation.errors) for p in self.per_pair.values())


def build_queries(
    att: Attributor,
    records: Sequence[Record],
    heldout: Sequence[int],
    heldout_candidates: Mapping[str, Sequence[int]],
    pairs: Sequence[CanaryPair],
    preset: BenchPreset,
    seed: int,
    clock: Callable[[], float] = time.perf_counter,
) -> QuerySet:
    """Natural queries from the last checkpoint's own hallucinations; forced ones fill what is missing."""
    ordered = {
        p.label: ordered_query_docs(
            att, records, heldout, p, set(heldout_candidates[p.label]), seed, j, preset.mention_in_window
        )
        for j, p in enumerate(pairs)
    }
    budget = preset.generation_budget()
    texts: dict[int, str] = {}
    checkpoints = att.all_checkpoints()
    with applied(att.model, checkpoints[-1]) as model:
        summarize = Summarizer(
            model, att.tokenizer, att.formatter, att.pad_id, preset.max_new_tokens, budget.batch_size
        )
        runs = {
            p.label: generate_until(
                lambda idx: summarize([records[i]["document"] for i in idx]),
                ordered[p.label],
                lambda text, p=p: natural_query(text, p) is not None,
                preset.n_queries,
                budget,
                texts,
                clock,
            )
            for p in pairs
        }

    qs = QuerySet([], [], [], [], [], {}, [])

    def add(pair: CanaryPair, idx: int, kind: str, neg: str, pos: str) -> None:
        rec = records[idx]
        q = Query(f"{pair.label}:{rec['id']}:{kind}", rec["document"], neg, pos)
        qs.queries.append(q)
        qs.pairs.append(pair)
        qs.kinds.append(kind)
        qs.rows.append(
            {
                "id": q.id,
                "pair": pair.label,
                "kind": kind,
                "document_id": rec["id"],
                "prompt": q.prompt,
                "negative": neg,
                "positive": pos,
                "reference": rec["summary"],
                "generation": texts.get(idx),
            }
        )

    for pair in pairs:
        run = runs[pair.label]
        pq = PairQueries(pair, preset.n_queries, run, budget)
        qs.per_pair[pair.label] = pq
        _record_generations(att, records, pair, run, texts, pq, qs)
        for idx in run.errors[: preset.n_queries]:
            nq = natural_query(texts[idx], pair)
            assert nq is not None
            add(pair, idx, "natural", *nq)
            pq.natural += 1
        # The documents forced queries are built from (references naming ORIG), best first.
        forceable = [(idx, fq) for idx in ordered[pair.label] if (fq := forced_query(records[idx], pair))]
        if preset.natural_only:
            if pq.natural < preset.n_queries:
                qs.notes.append(
                    f"{pair.label}: {pq.natural} natural errors in {len(run.generated)} summaries (wanted "
                    f"{preset.n_queries}); natural_only, so no forced queries fill the rest"
                )
            _probe(att, checkpoints, pq, preset, records, forceable)
            continue
        used = set(run.errors[: preset.n_queries])
        for idx, fq in [(i, f) for i, f in forceable if i not in used][: preset.n_queries - pq.natural]:
            add(pair, idx, "forced", *fq)
            pq.forced += 1
        if pq.natural + pq.forced < preset.n_queries:
            qs.notes.append(
                f"{pair.label}: only {pq.forced} forced queries available (wanted {preset.n_queries - pq.natural})"
            )
        _probe(att, checkpoints, pq, preset, records, forceable)
    if not qs.queries:
        if preset.natural_only:
            raise ValueError(
                "no queries: the model made no natural errors and the preset is natural_only (no forced queries)"
            )
        raise ValueError("no queries: no natural hallucinations and no held-out rows for forced queries")
    return qs


def _record_generations(
    att: Attributor,
    records: Sequence[Record],
    pair: CanaryPair,
    run: PairGeneration,
    texts: Mapping[int, str],
    pq: PairQueries,
    qs: QuerySet,
) -> None:
    """generations.jsonl rows of one pair, and its counts over documents whose prompt window names ORIG."""
    for idx in run.generated:
        if orig_visible(att, records[idx]["document"], pair.orig):
            pq.generated_in_window += 1
            pq.errors_in_window += idx in run.errors
        qs.generations.append(
            {
                "pair": pair.label,
                "document_id": records[idx]["id"],
                "generation": texts[idx],
                "reference": records[idx]["summary"],
                "hallucinated": idx in run.errors,
            }
        )


def _probe(
    att: Attributor,
    checkpoints: list[Any],
    pq: PairQueries,
    preset: BenchPreset,
    records: Sequence[Record],
    forceable: list[tuple[int, tuple[str, str]]],
) -> None:
    """The canary's teacher-forced log-probabilities on a few reference summaries, before and after fine-tuning."""
    probe = [(records[i]["document"], *fq) for i, fq in forceable[: min(preset.n_queries, PROBE_DOCS)]]
    if probe:
        pq.teacher_forced = canary_logprobs(
            att.model,
            att.formatter,
            att.pad_id,
            [checkpoints[0], checkpoints[-1]],
            probe,
            att.cfg.features.batch_size,
        )
