"""Build feature stores: per-example gradient features of a tokenized example set at one checkpoint.

Rows are processed in length-sorted batches (little padding) and written back at their original positions,
so a store's row i is always example i. Already-done rows are skipped: a killed run resumes where it was.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..config import FeatureConfig
from ..data import Tokenized
from ..models import Checkpoint, applied, model_fingerprint
from .batching import BatchLimit, run_batches
from .capture import GradientFeaturizer, freeze, pad_batch, select_modules
from .projection import projector_from_config
from .sharded import ShardedStore, ShardSpec, check_shard, choose_layout, token_lengths
from .store import FeatureStore

ProgressFn = Callable[[int], None]


def length_sorted_batches(lengths: np.ndarray, rows: np.ndarray, batch_size: int) -> list[np.ndarray]:
    order = rows[np.argsort(-lengths[rows], kind="stable")]  # longest first: peak memory shows up at once
    return [order[i : i + batch_size] for i in range(0, len(order), batch_size)]


class Indexer:
    """Holds the base model, the projection and the module list; featurizes example sets at checkpoints."""

    def __init__(self, model: Any, tokenizer: Any, cfg: FeatureConfig):
        self.model, self.tokenizer, self.cfg = model, tokenizer, cfg
        freeze(model)
        self.modules = select_modules(model, cfg.modules, cfg.layers)
        self.projector = projector_from_config(cfg)
        self.base_fingerprint = model_fingerprint(model)
        self.device = next(model.parameters()).device
        self._ckpt_fp: dict[str, str] = {}
        self.seconds = 0.0
        # seconds per phase, summed over every featurize call: forward, backward, projection (the featurizer's
        # own split), store_write, and other (batch padding, host copies)
        self.phase_seconds = {"forward": 0.0, "backward": 0.0, "projection": 0.0, "store_write": 0.0, "other": 0.0}
        self.tokens = 0
        self.rows = 0
        # Batch size: rows (cfg.batch_size), or padded tokens per batch when batch_tokens is set (0: auto, a
        # large start on CUDA); halved on a CUDA OOM and kept lower from then on.
        self.batch_limit = BatchLimit.resolve(cfg.batch_size, cfg.batch_tokens, self.device)
        self.after_batch: Callable[[], None] | None = None  # called after each stored batch (test hook)

    def store_meta(
        self, ckpt: Checkpoint, data: Tokenized, dim: int, blocks: list[int] | None = None
    ) -> dict[str, Any]:
        if ckpt.name not in self._ckpt_fp:
            self._ckpt_fp[ckpt.name] = ckpt.fingerprint()
        return {
            "model": self.base_fingerprint,
            "checkpoint": {"name": ckpt.name, "kind": ckpt.kind, "fingerprint": self._ckpt_fp[ckpt.name]},
            "checkpoint_lr": ckpt.lr,
            "checkpoint_epoch": ckpt.epoch,
            "checkpoint_step": ckpt.step,
            "checkpoint_lr_source": ckpt.lr_source,
            "tokenizer": getattr(self.tokenizer, "name_or_path", type(self.tokenizer).__name__),
            "projection": self.projector.describe(),
            "modules": self.modules,
            "data": data.fingerprint(),
            "n_rows": len(data),
            "dim": dim,
            "blocks": blocks,
            "dtype": self.cfg.dtype,
        }

    def featurize(
        self, ckpt: Checkpoint, data: Tokenized, root: str | Path, progress: ProgressFn | None = None
    ) -> FeatureStore | ShardedStore:
        """Features of `data` at `ckpt` into the store at `root` (created, resumed or reused)."""
        return self.featurize_sets(ckpt, [(data, Path(root))], progress)[0]

    def featurize_sets(
        self, ckpt: Checkpoint, sets: list[tuple[Tokenized, Path]], progress: ProgressFn | None = None
    ) -> list[FeatureStore | ShardedStore]:
        """Several example sets at one checkpoint: the checkpoint is applied once for all of them.

        A store left by a multi-process run (shard directories) is reused or finished as it is."""
        out: list[FeatureStore | ShardedStore] = []
        for (_, root), (specs, stores) in zip(sets, self._fill_layouts(ckpt, sets, 0, 1, progress), strict=True):
            out.append(stores[0] if specs[0].count == 1 else ShardedStore(Path(root), stores))
        return out

    def featurize_shards(
        self,
        ckpt: Checkpoint,
        sets: list[tuple[Tokenized, Path]],
        rank: int,
        world_size: int,
        progress: ProgressFn | None = None,
    ) -> list[list[ShardSpec]]:
        """One process of a `world_size`-process run: fill the shards i with i % world_size == rank of each set's
        layout (`sharded.choose_layout`); returns each set's layout. The checkpoint is applied only when one of
        this process's shards still has rows to compute."""
        return [specs for specs, _ in self._fill_layouts(ckpt, sets, rank, world_size, progress)]

    def _fill_layouts(
        self,
        ckpt: Checkpoint,
        sets: list[tuple[Tokenized, Path]],
        rank: int,
        world_size: int,
        progress: ProgressFn | None,
    ) -> list[tuple[list[ShardSpec], list[FeatureStore]]]:
        # Store dims from the base model: the tracked modules have the same shapes at every checkpoint.
        shape_only = GradientFeaturizer(self.model, self.modules, self.projector)
        plans = []
        for data, root in sets:
            specs = choose_layout(Path(root), token_lengths(data), world_size)
            meta = self.store_meta(ckpt, data, shape_only.dim, shape_only.blocks)
            mine = []
            for spec in (s for s in specs if s.index % world_size == rank):
                store = FeatureStore.open(spec.path(Path(root)), spec.store_meta(meta))  # refuses other settings
                check_shard(store.meta, spec, spec.path(Path(root)))
                mine.append((spec, store))
            plans.append((data, specs, mine))
        if any(not store.complete for _, _, mine in plans for _, store in mine):
            with applied(self.model, ckpt) as model:  # applied only when something is left to compute
                freeze(model)
                featurizer = GradientFeaturizer(model, self.modules, self.projector)
                for data, _, mine in plans:
                    for spec, store in mine:
                        self._fill(featurizer, data, spec, store, progress)
        elif progress:
            progress(sum(spec.rows for _, _, mine in plans for spec, _ in mine))
        return [(specs, [store for _, store in mine]) for _, specs, mine in plans]

    def _fill(
        self,
        featurizer: GradientFeaturizer,
        data: Tokenized,
        spec: ShardSpec,
        store: FeatureStore,
        progress: ProgressFn | None,
    ) -> None:
        """Rows [spec.start, spec.stop) of `data` into `store` (the shard store of `spec`), resuming its done rows."""
        if store.complete:
            if progress:
                progress(spec.rows)
            return
        part = spec.subset(data)  # the shard's rows; store row i is part's row i
        lengths = token_lengths(part)
        pad_id = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else 0
        pending = store.pending()
        if progress and spec.rows - len(pending):
            progress(spec.rows - len(pending))

        def compute(batch: np.ndarray) -> np.ndarray:
            t0 = time.perf_counter()
            ids, attn, resp = pad_batch(
                [part.input_ids[i] for i in batch], [part.response_mask[i] for i in batch], pad_id, self.device
            )
            before = dict(featurizer.phase_seconds)
            feats = featurizer(ids, attn, resp).cpu().numpy()  # (B, dim) projected features: never a full gradient
            spent = {k: featurizer.phase_seconds[k] - before[k] for k in before}
            for k, v in spent.items():
                self.phase_seconds[k] += v
            self.phase_seconds["other"] += (time.perf_counter() - t0) - sum(spent.values())
            self.seconds += time.perf_counter() - t0
            return feats

        def done(batch: np.ndarray, feats: np.ndarray) -> None:
            t0 = time.perf_counter()
            store.write(batch, feats)
            self.phase_seconds["store_write"] += time.perf_counter() - t0
            self.seconds += time.perf_counter() - t0
            self.tokens += int(lengths[batch].sum())
            self.rows += len(batch)
            if progress:
                progress(len(batch))
            if self.after_batch is not None:
                self.after_batch()

        run_batches(lengths, pending, self.batch_limit, compute, done)
        store.finish()


@torch.no_grad()
def example_losses(model: Any, data: Tokenized, pad_id: int, batch_size: int = 8) -> np.ndarray:
    """Per-example mean response loss, no gradients (CEA and diagnostics)."""
    from .capture import per_example_loss

    device = next(model.parameters()).device
    lengths = np.array([len(s) for s in data.input_ids])
    out = np.zeros(len(data), dtype=np.float64)
    for batch in length_sorted_batches(lengths, np.arange(len(data)), batch_size):
        ids, attn, resp = pad_batch(
            [data.input_ids[i] for i in batch], [data.response_mask[i] for i in batch], pad_id, device
        )
        out[batch] = per_example_loss(model, ids, attn, resp).double().cpu().numpy()
    return out


def index_statistics(
    n_train: int,
    checkpoints: list[str],
    data: Tokenized,
    mean_tokens: float,
    dim: int,
    computed_rows: int,
    tokens: int,
    compute_seconds: float,
    wall_seconds: float,
    **extra: Any,
) -> dict[str, Any]:
    """index.json's statistics, for one process or several (`extra`: the sharded run's layouts and ranks).

    examples_per_s / tokens_per_s have one meaning: training-gradient rows (every checkpoint's) and their tokens
    per second of gradient computation, those seconds summed over processes: a per-process rate, comparable
    between a single and a sharded run; the whole run's elapsed time is wall_seconds."""
    stats: dict[str, Any] = {
        "n_train": n_train,
        "checkpoints": list(checkpoints),
        "n_prompt_truncated": data.n_prompt_truncated,
        "n_response_truncated": data.n_response_truncated,
        "n_truncated": data.n_truncated,
        "mean_tokens": float(mean_tokens),
        "dim": int(dim),
        "computed_rows": int(computed_rows),
        "compute_seconds": round(float(compute_seconds), 3),
        "wall_seconds": round(float(wall_seconds), 3),
        **extra,
    }
    if computed_rows:
        stats["examples_per_s"] = stats["computed_rows"] / max(stats["compute_seconds"], 1e-9)
        stats["tokens_per_s"] = tokens / max(stats["compute_seconds"], 1e-9)
    return stats
