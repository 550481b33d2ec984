"""Batches for the indexer: length-sorted, sized by rows or by a token budget, smaller after a CUDA OOM.

Rows are taken longest first (peak memory shows up in the first batch, and neighbours have similar lengths, so
little padding). With a token budget a batch holds as many rows as fit in `budget` padded tokens (rows x its
longest row), so short rows travel in large batches and long rows in small ones. When a batch runs out of GPU
memory, the limit is halved and the same rows are tried again; the smaller limit is kept for the rest of the run
(an OOM the next batch would repeat costs a forward pass each time). One row that does not fit is an error.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TypeVar

import numpy as np
import torch

# batch_tokens=0 ("auto") on CUDA starts here and halves on OOM; on CPU there is no OOM to catch (the kernel
# kills the process), so auto means rows by batch_size there.
AUTO_CUDA_START_TOKENS = 1 << 16

T = TypeVar("T")


class RowTooLargeError(RuntimeError):
    pass


@dataclass
class BatchLimit:
    """How big a batch may be: `tokens` padded tokens when set, else `rows` rows. Shared across calls, so a
    limit lowered by an OOM stays lowered."""

    rows: int
    tokens: int | None = None
    backoffs: int = 0

    @classmethod
    def resolve(cls, batch_size: int, batch_tokens: int | None, device: torch.device) -> BatchLimit:
        if batch_size < 1:
            raise ValueError(f"features.batch_size must be >= 1, got {batch_size}")
        if batch_tokens is not None and batch_tokens < 0:
            raise ValueError(f"features.batch_tokens must be >= 0 (0: auto), got {batch_tokens}")
        if batch_tokens == 0:
            batch_tokens = AUTO_CUDA_START_TOKENS if device.type == "cuda" else None
        return cls(rows=batch_size, tokens=batch_tokens or None)

    def take(self, longest: int) -> int:
        """Rows of the next batch when its longest row has `longest` tokens (at least 1)."""
        if self.tokens is None:
            return self.rows
        return max(1, self.tokens // max(1, longest))

    def halve(self, rows: int, longest: int) -> None:
        """After a batch of `rows` rows (longest `longest`) ran out of memory: half of it is the new limit."""
        if self.tokens is None:
            self.rows = max(1, rows // 2)
        else:
            self.tokens = max(1, rows // 2) * max(1, longest)
        self.backoffs += 1


def longest_first(lengths: np.ndarray, rows: np.ndarray) -> np.ndarray:
    return rows[np.argsort(-lengths[rows], kind="stable")]


def run_batches(
    lengths: np.ndarray,
    rows: np.ndarray,
    limit: BatchLimit,
    compute: Callable[[np.ndarray], T],
    done: Callable[[np.ndarray, T], None],
) -> None:
    """compute(batch) for every row of `rows` in longest-first batches under `limit`, then done(batch, result).

    A torch.cuda.OutOfMemoryError from compute halves the limit and retries the same rows; a single row that
    does not fit raises RowTooLargeError naming its length."""
    order = longest_first(lengths, rows)
    pos = 0
    while pos < len(order):
        longest = int(lengths[order[pos]])  # order is longest first: the batch's first row is its longest
        batch = order[pos : pos + limit.take(longest)]
        oom = False
        try:
            result = compute(batch)
        except torch.cuda.OutOfMemoryError as err:
            if len(batch) == 1:
                raise RowTooLargeError(
                    f"one example of {longest} tokens does not fit in GPU memory; lower "
                    "data.max_prompt_tokens / max_response_tokens or track fewer layers"
                ) from err
            oom = True  # retried outside the except block: its traceback holds the failed batch's tensors
        if oom:
            limit.halve(len(batch), longest)
            if torch.cuda.is_available():
                torch.cuda.empty_cache()
            continue
        done(batch, result)
        pos += len(batch)
