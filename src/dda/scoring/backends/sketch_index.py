"""`sketch`: a seeded Gaussian sketch of every concatenated row (scoring/sketch.py) gives candidates."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from ..sketch import build_sketch, load_sketch, sketch_matrix
from ..topk import topk_scores
from .base import IndexSettings, QuerySettings, RowsProgress, SearchBackend, register_backend

if TYPE_CHECKING:
    from ..search import ConcatenatedRows, SearchIndex


def check_sketch_dim(settings: IndexSettings) -> None:
    if settings.sketch_dim < 1:
        raise ValueError(f"sketch_dim must be positive, not {settings.sketch_dim}")


@register_backend
class SketchIndex(SearchBackend):
    """Index: sketch.npy (n x sketch_dim float16) + sketch.npy.json. A query scans the whole sketch (float16
    products: candidates only need a rough order), blockwise with memory flat."""

    name = "sketch"

    def validate(self, settings: IndexSettings) -> None:
        check_sketch_dim(settings)

    def build(
        self, rows: ConcatenatedRows, out_dir: Path, settings: IndexSettings, on_block: RowsProgress | None = None
    ) -> dict[str, Any]:
        build_sketch(
            rows,
            out_dir / "sketch.npy",
            sketch_dim=settings.sketch_dim,
            seed=settings.seed,
            block_rows=rows.block_rows(),
            on_block=on_block,
        )
        return {"sketch_dim": settings.sketch_dim, "seed": settings.seed}

    def candidates(
        self, index: SearchIndex, rows: ConcatenatedRows, queries: np.ndarray, n: int, settings: QuerySettings
    ) -> np.ndarray:
        sketch, meta = load_sketch(index.root / "sketch.npy", rows)
        q_sk = (
            torch.from_numpy(np.ascontiguousarray(queries, dtype=np.float32))
            @ sketch_matrix(meta["source_dim"], meta["sketch_dim"], meta["seed"])
        ).numpy()
        # Unit norm before the float16 scan, as in sketch_topk: candidates depend only on a query's direction, and
        # an lr-scaled TracIn query would otherwise underflow in float16 and lose them.
        q_sk /= np.maximum(np.linalg.norm(q_sk, axis=1, keepdims=True), np.finfo(np.float32).tiny)
        return topk_scores(sketch, q_sk, n, block_rows=65536, half=True)[1]
