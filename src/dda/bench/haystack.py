"""How a ranking holds up as the haystack grows: every method's AP on random sub-haystacks of one run.

The poisoned rows and the distractors (clean rows that say the canary) are always kept; only unrelated clean rows
are dropped, `draws` times per size with a seeded generator. The model and its scores stay those of the full run,
so the curve isolates ranking: how many unrelated documents a method lets in above the culprits. It is not a
retrained curve (a model trained on fewer rows learns the canary differently); `dda bench --set bench.n_train=N`
gives that one, a run per size.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from .metrics import per_query_metrics

__all__ = ["DEFAULT_SIZES", "subsampled_curve"]

DEFAULT_SIZES = (150, 300, 500)


def subsampled_curve(
    scores: Mapping[str, np.ndarray],
    masks: np.ndarray,
    distractors: np.ndarray,
    sizes: Sequence[int] = DEFAULT_SIZES,
    seed: int = 0,
    draws: int = 5,
) -> dict[str, Any]:
    """{"sizes", "draws", "kept", "methods": {name: {"ap": [...], "auc": [...]}}}: mean over draws of the mean over
    queries, at each size (the full haystack last). `masks`, `distractors`: (n_queries, n_train) booleans."""
    masks = np.asarray(masks, dtype=bool)
    distractors = np.asarray(distractors, dtype=bool)
    n = masks.shape[1]
    keep = masks.any(axis=0) | distractors.any(axis=0)
    others = np.flatnonzero(~keep)
    fixed = np.flatnonzero(keep)
    grid = sorted({int(s) for s in sizes if len(fixed) < s < n} | {n})
    rng = np.random.default_rng([seed, 404])
    out: dict[str, Any] = {"sizes": grid, "draws": draws, "kept": int(len(fixed)), "methods": {}}
    for name in scores:
        out["methods"][name] = {"ap": [], "auc": []}
    for size in grid:
        picks = (
            [np.arange(n)]
            if size == n
            else [
                np.sort(np.concatenate([fixed, rng.choice(others, size - len(fixed), replace=False)]))
                for _ in range(draws)
            ]
        )
        for name, s in scores.items():
            s = np.asarray(s, dtype=np.float64)
            aps, aucs = [], []
            for cols in picks:
                pq = per_query_metrics(s[:, cols], masks[:, cols])
                aps.append(np.mean([r["ap"] for r in pq]))
                aucs.append(np.mean([r["auc"] for r in pq]))
            out["methods"][name]["ap"].append(float(np.mean(aps)))
            out["methods"][name]["auc"].append(float(np.mean(aucs)))
    return out
