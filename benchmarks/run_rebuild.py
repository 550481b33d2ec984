"""Rebuild a finished `dda bench` run from its files, for the scripts that rescore it (no training, no indexing).

The training set comes back from config.yaml (preset, pairs, seed: the split and the injection are deterministic),
the queries from queries.jsonl (natural ones carry their text; forced ones are the document's reference summary
with the swap), and the Attributor opens the run's own workdir (`OUT/work/<key>`), whose checkpoints and feature
stores are read, never written.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from dda.api import Attributor
from dda.bench.canary import CanaryPair, forced_query, parse_pairs
from dda.bench.hallucination import Prepared, distractor_masks, prepare, resolve_template, workdir_key
from dda.bench.presets import BenchPreset, build_config
from dda.config import apply_overrides, config_from_dict
from dda.data import Query
from dda.models import load_model
from dda.scoring import ScoringContext


def preset_of(run: Path) -> tuple[BenchPreset, dict[str, Any]]:
    """The run's preset as it ran (config.yaml's `bench.preset`) and the whole config."""
    cfg = yaml.safe_load((run / "config.yaml").read_text(encoding="utf-8"))
    fields = {k: tuple(v) if isinstance(v, list) else v for k, v in cfg["bench"]["preset"].items()}
    fields["overrides"] = dict(cfg["bench"]["preset"]["overrides"])
    known = set(BenchPreset.__dataclass_fields__)
    return BenchPreset(**{k: v for k, v in fields.items() if k in known}), cfg


@dataclass
class RebuiltRun:
    prepared: Prepared
    queries: list[Query]
    pairs: list[CanaryPair]  # per query
    kinds: list[str]  # per query
    metrics: dict[str, Any]  # the run's metrics.json

    @cached_property
    def masks(self) -> np.ndarray:
        ids = [e.id for e in self.prepared.train]
        return np.stack([self.prepared.injection.poisoned_mask(ids, p) for p in self.pairs])

    @cached_property
    def distractors(self) -> np.ndarray:
        return distractor_masks(self.prepared.train, self.pairs, self.masks)

    def context(self, features: Any = None, default_checkpoints: list[str] | None = None) -> ScoringContext:
        train = self.prepared.train
        return ScoringContext(
            features,
            [f"{e.prompt}\n{e.response}" for e in train],
            self.queries,
            default_checkpoints=default_checkpoints,
            train_responses=[e.response for e in train],
            train_prompts=[e.prompt for e in train],
        )


def rebuild(run: Path) -> RebuiltRun:
    """The run's training set and queries (metrics.json and queries.jsonl), without a model."""
    preset, _ = preset_of(run)
    metrics = json.loads((run / "metrics.json").read_text(encoding="utf-8"))
    by_label = {p.label: p for p in parse_pairs(",".join(metrics["pairs"]).replace("->", ":"))}
    prepared = prepare(preset, list(by_label.values()), int(metrics["seed"]))
    by_id = {r["id"]: r for r in prepared.records}
    queries, pairs, kinds = [], [], []
    for line in (run / "queries.jsonl").read_text(encoding="utf-8").splitlines():
        row = json.loads(line)
        pair, rec = by_label[row["pair"]], by_id[row["document_id"]]
        if row["kind"] == "natural":
            neg, pos = row["negative"], row["positive"]
        else:
            fq = forced_query(rec, pair)
            if fq is None:
                raise ValueError(f"{run}: cannot rebuild forced query {row['id']}")
            neg, pos = fq
        queries.append(Query(row["id"], rec["document"], neg, pos))
        pairs.append(pair)
        kinds.append(row["kind"])
    return RebuiltRun(prepared, queries, pairs, kinds, metrics)


def open_attributor(
    run: Path, prepared: Prepared, preset: BenchPreset | None = None, overrides: dict[str, Any] | None = None
) -> Attributor:
    """An Attributor on the run's workdir with the run's config and model (nothing is fine-tuned): the config
    config.yaml saved, or, for a run still going, `preset` with the `--set` `overrides` it was started with."""
    if (run / "config.yaml").exists():
        cfg = config_from_dict(preset_of(run)[1]["dda"], str(run / "config.yaml"))
        cfg = apply_overrides(cfg, {"quiet": True})
    elif preset is not None:
        cfg = build_config(preset, prepared.seed, overrides=overrides, quiet=True)
    else:
        raise FileNotFoundError(f"{run}: no config.yaml (the run has not finished): give its preset and overrides")
    model, tokenizer = load_model(cfg.model)
    cfg, _ = resolve_template(cfg, tokenizer)
    workdir = run / "work" / workdir_key(cfg, prepared.train)
    if not workdir.is_dir():
        raise FileNotFoundError(f"{workdir}: no workdir for this run's settings (was it run with this dda?)")
    return Attributor(cfg, workdir, model=model, tokenizer=tokenizer)


def print_metrics(title: str, rows: dict[str, dict[str, float]], keys: tuple[str, ...], first: str = "method") -> None:
    """One run's methods (or variants) as a markdown table on stdout, in percent."""
    print(f"\n{title}")
    print(f"| {first} | " + " | ".join(keys) + " |")
    print("|---" * (len(keys) + 1) + "|")
    for name, m in rows.items():
        print(f"| {name} | " + " | ".join(f"{100 * m[k]:.1f}" if k in m else "" for k in keys) + " |")
