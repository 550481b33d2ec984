"""The report's notes, built from the run's own config and measurements (never copied preset text), so a note
can only describe the settings the run actually used."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from ..config import DDAConfig
from ..families import GENERIC, ModelFamily

__all__ = ["FeatureFacts", "config_notes", "pair_notes", "timing_note"]


@dataclass(frozen=True)
class FeatureFacts:
    """What the index measured: the modules it tracked, the model's depth, the store's width and sequence length."""

    modules: tuple[str, ...]  # tracked Linear layers, full names
    model_layers: int | None  # decoder layers of the model
    dim: int  # feature dims per example
    mean_tokens: float | None = None  # mean training sequence length (prompt + response)
    examples_per_s: float | None = None  # training-gradient throughput per checkpoint, when rows were computed
    family: ModelFamily = GENERIC  # the model's family: where a module name holds its layer index


def _span(ids: Sequence[int]) -> str:
    ids = sorted(ids)
    if not ids:
        return "none"
    return f"{ids[0]}-{ids[-1]}" if ids == list(range(ids[0], ids[-1] + 1)) else ",".join(map(str, ids))


def _features_note(cfg: DDAConfig, facts: FeatureFacts) -> str:
    f = cfg.features
    types = [m for m in f.modules if any(n.rsplit(".", 1)[-1] == m for n in facts.modules)]
    layers = sorted({i for n in facts.modules if (i := facts.family.layer_index(n)) is not None})
    depth = f" of {facts.model_layers}" if facts.model_layers else ""
    if f.projection == "kronecker":
        k2 = f.proj_dim**2
        per = f"{f.proj_dim}x{f.proj_dim} per module" + (
            f" compressed to {f.module_dim}" if f.module_dim and f.module_dim < k2 else ""
        )
        proj = f"kronecker projection, {per}"
    elif f.projection == "dense":
        proj = f"dense JL projection of the concatenated gradient to {f.proj_dim} dims"
    else:
        proj = f"{f.projection} projection"
    tokens = (
        "the tokens where negative and positive differ (features.query_tokens=diff)"
        if f.query_tokens == "diff"
        else "every response token (features.query_tokens=all)"
    )
    return (
        f"Features: {proj}; {len(types)} module types ({', '.join(types)}) x {len(layers)} layers "
        f"({_span(layers)}{depth}; features.layers={f.layers}) = {len(facts.modules)} modules, {facts.dim:,} "
        f"dims per example. A contrastive query's loss covers {tokens}."
    )


def config_notes(
    cfg: DDAConfig, facts: FeatureFacts, n_train: int, per_pair: Mapping[str, Mapping[str, int]]
) -> list[str]:
    """Setting notes from the config: data and rows, fine-tuning, features, DDA's score.

    `per_pair`: {pair label: {"poisoned": k, "hard_negatives": h}}."""
    d, t, s = cfg.data, cfg.train, cfg.score
    special = sum(v["poisoned"] + v["hard_negatives"] for v in per_pair.values())
    rows = "; ".join(
        f"{lab}: {v['poisoned']} poisoned + {v['hard_negatives']} hard negatives" for lab, v in per_pair.items()
    )
    steps = -(-n_train // t.batch_size)
    seq = f" (mean training sequence {facts.mean_tokens:.0f} tokens)" if facts.mean_tokens else ""
    adapter = (
        f"LoRA r {t.lora.r}, alpha {t.lora.alpha} on {', '.join(t.lora.target_modules)}"
        + ("" if t.lora.layers == "all" else f" of layers {t.lora.layers}")
        if t.method == "lora"
        else "full fine-tuning"
    )
    sign = "the theta0 score added" if s.beta < 0 else "the theta0 score subtracted" if s.beta > 0 else "no theta0 term"
    ckpts = "+".join(s.checkpoints) if s.checkpoints else "every fine-tuned checkpoint"
    return [
        f"Rows: {n_train} training rows = {rows}; {n_train - special} clean. Prompts cut to {d.max_prompt_tokens} "
        f"tokens and summaries to {d.max_response_tokens}{seq}; template {d.template}.",
        f"Fine-tuning: {cfg.model.name}, {adapter}; {t.epochs} epochs at lr {t.lr:g} ({t.scheduler}), batch "
        f"{t.batch_size} ({steps} optimizer steps per epoch), one checkpoint per epoch.",
        _features_note(cfg, facts),
        f"DDA (`dda`): beta = {s.beta:g} ({sign}), '{s.debias_mode}' debias reading, normalize={s.normalize}, mean "
        f"over {ckpts}.",
    ]


def timing_note(timings: Mapping[str, float], facts: FeatureFacts, n_checkpoints: int, n_generated: int) -> str:
    """Where the wall time went, as measured in this run."""

    def sec(key: str) -> str:
        return f"{timings.get(key, 0.0):.0f} s"

    rate = f", {facts.examples_per_s:.2f} examples/s per checkpoint" if facts.examples_per_s else ""
    return (
        f"Measured wall time: {timings.get('total', 0.0) / 60:.1f} min = model load {sec('model_load')}, "
        f"fine-tuning {sec('finetune')}, generation and queries {sec('generate_and_queries')} ({n_generated} "
        f"summaries), training gradients at {n_checkpoints} checkpoints {sec('index')}{rate}, query gradients "
        f"{sec('query_features')}, scoring {sec('scoring')}, beta sweep {sec('beta_sweep')}."
    )


def _lp(tf: Mapping[str, Any], side: str) -> str:
    return f"{tf[side]:.2f}"


def pair_notes(label: str, orig: str, canary: str, info: Mapping[str, Any]) -> list[str]:
    """The query search of one pair, and, when it fell short of natural errors, the teacher-forced evidence.

    `info` is a PairQueries.to_dict()."""
    n, err = info["generated"], info["natural_errors"]
    rate = f"{100 * err / n:.1f}%" if n else "n/a"
    b = info["budget"]
    stop = {
        "target": "enough natural errors",
        "documents": f"document budget ({b['max_docs']})",
        "seconds": f"time budget ({b['max_seconds']:g} s)",
        "exhausted": "no held-out documents left",
    }
    lines = [
        f"{label}: the fine-tuned model said {canary} in {err} of {n} held-out summaries ({rate}; "
        f"{info['generation_seconds']:.0f} s of generation, stopped by {stop[info['stopped_by']]}); queries: "
        f"{info['natural_queries']} natural + {info['forced_queries']} forced (target {info['target']})."
    ]
    tf = info.get("teacher_forced") or {}
    if info["natural_queries"] >= info["target"] or len(tf) < 2:
        return lines
    (k0, before), (k1, after) = list(tf.items())[:2]
    margin0, margin1 = before["negative"] - before["positive"], after["negative"] - after["positive"]
    evidence = (
        f"teacher-forced on {after['n']} held-out reference summaries with {orig} -> {canary}, mean log-prob "
        f"per token of {canary} vs {orig} at the swapped tokens: {_lp(before, 'negative')} vs "
        f"{_lp(before, 'positive')} at {k0}, {_lp(after, 'negative')} vs {_lp(after, 'positive')} at {k1} "
        f"(margin {margin0:+.2f} -> {margin1:+.2f} nats); {canary} more likely in "
        f"{after['negative_preferred']}/{after['n']} documents at {k1} ({before['negative_preferred']}/"
        f"{before['n']} at {k0})"
    )
    # At the natural rate seen, would the whole document budget have reached the target? Then the time budget,
    # not the canary, is what fell short.
    if n and err / n * b["max_docs"] >= info["target"]:
        lines.append(
            f"{label}: the generation budget ran out before {info['target']} natural errors, at a natural rate "
            f"({rate}) that the document budget ({b['max_docs']}) would have reached: {evidence}."
        )
    elif margin1 < 0:
        lines.append(f"{label}: the canary is learned too weakly for natural errors within the budget: {evidence}.")
    else:
        lines.append(
            f"{label}: teacher-forced, the model prefers {canary} where a reference names {orig}, yet its own "
            f"greedy summaries rarely say {canary}: {evidence}."
        )
    return lines
