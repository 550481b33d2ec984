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
from .capture import GradientFeaturizer, freeze, pad_batch, select_modules
from .projection import projector_from_config
from .store import FeatureStore

ProgressFn = Callable[[int], None]


def length_sorted_batches(lengths: np.ndarray, rows: np.ndarray, batch_size: int) -> list[np.ndarray]:
    order = rows[np.argsort(-lengths[rows], kind="stable")]  # longest first: peak memory shows up at once
    return [order[i: i + batch_size] for i in range(0, len(order), batch_size)]


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

    def store_meta(self, ckpt: Checkpoint, data: Tokenized, dim: int,
                   blocks: list[int] | None = None) -> dict[str, Any]:
        if ckpt.name not in self._ckpt_fp:
            self._ckpt_fp[ckpt.name] = ckpt.fingerprint()
        return {
            "model": self.base_fingerprint,
            "checkpoint": {"name": ckpt.name, "kind": ckpt.kind, "fingerprint": self._ckpt_fp[ckpt.name]},
            "checkpoint_lr": ckpt.lr,
            "checkpoint_epoch": ckpt.epoch,
            "tokenizer": getattr(self.tokenizer, "name_or_path", type(self.tokenizer).__name__),
            "projection": self.projector.describe(),
            "modules": self.modules,
            "data": data.fingerprint(),
            "n_rows": len(data),
            "dim": dim,
            "blocks": blocks,
            "dtype": self.cfg.dtype,
        }

    def featurize(self, ckpt: Checkpoint, data: Tokenized, root: str | Path,
                  progress: ProgressFn | None = None) -> FeatureStore:
        """Features of `data` at `ckpt` into the store at `root` (created, resumed or reused)."""
        return self.featurize_sets(ckpt, [(data, Path(root))], progress)[0]

    def featurize_sets(self, ckpt: Checkpoint, sets: list[tuple[Tokenized, Path]],
                       progress: ProgressFn | None = None) -> list[FeatureStore]:
        """Several example sets at one checkpoint: the checkpoint is applied once for all of them."""
        stores = []
        with applied(self.model, ckpt) as model:
            freeze(model)
            featurizer = GradientFeaturizer(model, self.modules, self.projector)
            for data, root in sets:
                stores.append(self._fill(ckpt, featurizer, data, Path(root), progress))
        return stores

    def _fill(self, ckpt: Checkpoint, featurizer: GradientFeaturizer, data: Tokenized, root: Path,
              progress: ProgressFn | None) -> FeatureStore:
        store = FeatureStore.open(root, self.store_meta(ckpt, data, featurizer.dim, featurizer.blocks))
        if store.complete:
            if progress:
                progress(len(data))
            return store
        lengths = np.array([len(s) for s in data.input_ids])
        pad_id = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else 0
        done_before = len(data) - len(store.pending())
        if progress and done_before:
            progress(done_before)
        for batch in length_sorted_batches(lengths, store.pending(), self.cfg.batch_size):
            t0 = time.perf_counter()
            ids, attn, resp = pad_batch([data.input_ids[i] for i in batch],
                                        [data.response_mask[i] for i in batch], pad_id, self.device)
            before = dict(featurizer.phase_seconds)
            feats = featurizer(ids, attn, resp).cpu().numpy()
            t_write = time.perf_counter()
            store.write(batch, feats)
            t_end = time.perf_counter()
            spent = {k: featurizer.phase_seconds[k] - before[k] for k in before}
            for k, v in spent.items():
                self.phase_seconds[k] += v
            self.phase_seconds["store_write"] += t_end - t_write
            self.phase_seconds["other"] += (t_write - t0) - sum(spent.values())
            self.seconds += t_end - t0
            self.tokens += int(lengths[batch].sum())
            self.rows += len(batch)
            if progress:
                progress(len(batch))
        store.finish()
        return store


@torch.no_grad()
def example_losses(model: Any, data: Tokenized, pad_id: int, batch_size: int = 8) -> np.ndarray:
    """Per-example mean response loss, no gradients (CEA and diagnostics)."""
    from .capture import per_example_loss

    device = next(model.parameters()).device
    lengths = np.array([len(s) for s in data.input_ids])
    out = np.zeros(len(data), dtype=np.float64)
    for batch in length_sorted_batches(lengths, np.arange(len(data)), batch_size):
        ids, attn, resp = pad_batch([data.input_ids[i] for i in batch], [data.response_mask[i] for i in batch],
                                    pad_id, device)
        out[batch] = per_example_loss(model, ids, attn, resp).double().cpu().numpy()
    return out
