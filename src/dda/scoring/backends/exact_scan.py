"""`exact`: every row scored in one streaming pass; the exact top-k, no index."""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from ..topk import topk_scores
from .base import QuerySettings, RowsProgress, SearchBackend, register_backend

if TYPE_CHECKING:
    from ..search import ConcatenatedRows, SearchIndex


@register_backend
class ExactScan(SearchBackend):
    """Memory: one block of rows (`ConcatenatedRows.block_rows`) plus the running top-k, whatever the store size."""

    name = "exact"
    needs_index = False
    reads = ()

    def search(
        self,
        rows: ConcatenatedRows,
        queries: np.ndarray,
        k: int,
        index: SearchIndex | None,
        settings: QuerySettings,
        on_block: RowsProgress | None = None,
    ) -> tuple[np.ndarray, np.ndarray]:
        return topk_scores(rows, queries, k, block_rows=rows.block_rows(), on_block=on_block)
