"""The benchmark's files: ground truth, inputs, scores, figures, metrics.json, config.yaml and report.md."""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..api import Attributor
from ..families import family_of
from ..io import write_json, write_text, write_yaml
from ..progress import say
from ..scoring import parse_method
from . import report
from .canary import poison_candidates
from .metrics import mean_by
from .notes import FeatureFacts, config_notes, pair_notes, timing_note
from .queries import QuerySet, orig_visible
from .run_record import BenchRun, machine_info, write_run
from .sweep import best_point, debias_notes, per_pair_best

if TYPE_CHECKING:  # the stage types; hallucination.py imports this module
    from .hallucination import Prepared, Scored, Trained

__all__ = ["feature_facts", "write_outputs"]


def _pct(x: float | None) -> str:
    return "n/a" if x is None else f"{x * 100:.1f}%"


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
        family_of(att.model),
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
    per_pair = _per_pair(qs, scored.per_query)
    pair_best = per_pair_best(curves, qs.pairs)
    primary = p.dda_mode  # the raw curve of the reading "dda" uses is the report's headline curve
    figures = _figures(out / "figures", scored, primary)
    _write_inputs(out, prepared, qs, scored, cfg.score.top_k)

    split_info, split_notes = _split_info(prepared, trained, qs)
    facts = feature_facts(att)
    notes = _notes(prepared, trained, qs, scored, facts, split_info, split_notes, per_pair, pair_best)
    timings["total"] = wall = time.perf_counter() - started
    notes.append(timing_note(timings, facts, len(att.all_checkpoints()), qs.n_generated))
    metrics = _metrics(prepared, trained, qs, scored, per_pair, pair_best, split_info, counterfactual, wall)
    metrics["timings"] = {k: round(v, 3) for k, v in timings.items()}
    metrics["notes"] = notes
    record = BenchRun.from_dict(metrics)
    write_run(out, record)
    metrics = record.to_dict()
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


def _per_pair(qs: QuerySet, per_query: dict[str, list[float]]) -> dict[str, dict[str, Any]]:
    """Per pair: how its queries were found, and its mean AUC by query kind."""
    labels = [q.label for q in qs.pairs]
    per_pair = {}
    for lab, pq in qs.per_pair.items():
        idx = [i for i, q in enumerate(labels) if q == lab]
        per_pair[lab] = {
            **pq.to_dict(),
            "auc_by_kind": mean_by({m: [v[i] for i in idx] for m, v in per_query.items()}, [qs.kinds[i] for i in idx]),
        }
    return per_pair


def _figures(fig_dir: Path, scored: Scored, primary: str) -> dict[str, str]:
    """The PNG figures: the headline β curve, the other readings' curves, AP against haystack size, the methods."""
    curves, method_metrics = scored.curves, scored.methods
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
    return figures


def _write_inputs(out: Path, prepared: Prepared, qs: QuerySet, scored: Scored, top_k: int) -> None:
    """Ground truth and inputs, written before the report so a reader can check every number against them."""
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
    scored.result.save(out / "attribution", top_k, pooled=False)  # pooled per pair: metrics.json


def _notes(
    prepared: Prepared,
    trained: Trained,
    qs: QuerySet,
    scored: Scored,
    facts: FeatureFacts,
    split_info: dict[str, Any],
    split_notes: list[str],
    per_pair: dict[str, dict[str, Any]],
    pair_best: dict[str, Any],
) -> list[str]:
    """The report's notes, timing aside: query mode, preset, config, data, per pair, debias and the best methods."""
    p, cfg, method_metrics = prepared.preset, trained.cfg, scored.methods
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
    notes.append(
        f"Data: {len(prepared.records)} unique records from "
        + ", ".join(f"{Path(d['path']).name} ({d['kept']} kept of {d['rows']})" for d in prepared.data.sources)
        + "."
    )
    if any(parse_method(sp)[1] == "cea" and not parse_method(sp)[2].get("per_query") for sp in scored.specs):
        notes.append(
            "cea runs with per_query=false (one set of optimiser steps on all queries together, as the "
            "affordable CPU setting), so it ranks the training rows the same for every query and its "
            "std over queries is 0."
        )
    notes += debias_notes(scored.curves, pair_best)
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
    return notes


def _metrics(
    prepared: Prepared,
    trained: Trained,
    qs: QuerySet,
    scored: Scored,
    per_pair: dict[str, dict[str, Any]],
    pair_best: dict[str, Any],
    split_info: dict[str, Any],
    counterfactual: dict[str, Any] | None,
    wall: float,
) -> dict[str, Any]:
    """metrics.json, but for its timings and notes (the caller adds them last, in that order)."""
    att, cfg, curves, method_metrics = trained.att, trained.cfg, scored.curves, scored.methods
    labels = [q.label for q in qs.pairs]
    return {
        "preset": prepared.preset.name,
        "seed": prepared.seed,
        "pairs": [pp.label for pp in prepared.pairs],
        "model": cfg.model.name,
        "n_records": len(prepared.records),
        "n_train": len(prepared.train),
        "n_poisoned": len(prepared.poisoned_of),
        "n_distractors": int(scored.distractors.any(axis=0).sum()),
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
        "machine": machine_info().to_dict(),
        "methods": method_metrics,
        "dda": {"beta": cfg.score.beta, "debias_mode": cfg.score.debias_mode, "normalize": cfg.score.normalize},
        "beta_curve": curves,
        "beta_best": dict(zip(("reading", "beta", "auc"), best_point(curves), strict=True)),
        "beta_best_by_pair": pair_best,
        "per_query_auc": scored.per_query,
        "per_query_ap": scored.per_query_ap,
        "haystack_curve": scored.haystack,
        "query_kind": qs.kinds,
        "by_kind": mean_by(scored.per_query, qs.kinds),
        "by_pair": mean_by(scored.per_query, labels),
        "per_pair": per_pair,
        "split": split_info,
        "data": {"sources": prepared.data.sources, "requested": prepared.sources},
        "checkpoints": [c.name for c in att.all_checkpoints()],
        "index": getattr(att, "index_stats", {}),
        "remove_and_retrain": counterfactual,
    }
