"""Paging of memory-mapped feature stores: release rows from the resident set, read scattered rows with preads.

It lives beside the store (features/) because the store, the sharded store and the scorers above them all page
through the same memmaps; scoring/ re-exports both names.
"""

from __future__ import annotations

import ctypes
import mmap
import os
import sys
from concurrent.futures import ThreadPoolExecutor

import numpy as np

__all__ = ["read_rows", "release_pages"]

MADV_DONTNEED = 4


def _libc():
    try:
        return ctypes.CDLL(None, use_errno=True)
    except OSError:
        return None


_LIBC = _libc() if sys.platform.startswith("linux") else None


def release_pages(arr: np.ndarray, start: int, stop: int) -> None:
    """Drop rows [start, stop) of a *shared* memmap from this process's resident set (no-op otherwise).

    For a MAP_SHARED file mapping MADV_DONTNEED only unmaps the pages here; the file's data (and any writes
    made through the mapping) stay in the page cache, so this never changes what the array holds. Private
    copy-on-write maps (mode 'c') are skipped: there it would discard changes.
    """
    if hasattr(arr, "release_rows"):  # a store sharded over several memmaps releases each shard's pages
        arr.release_rows(start, stop)
        return
    if (
        _LIBC is None
        or not isinstance(arr, np.memmap)
        or getattr(arr, "mode", "c") not in ("r", "r+", "w+", "readonly", "readwrite", "write")
    ):
        return
    start, stop = max(0, start), min(stop, arr.shape[0])  # never advise pages outside this array's mapping
    if stop <= start:
        return
    row_bytes = arr.strides[0]
    lo = arr.ctypes.data + start * row_bytes
    hi = lo + (stop - start) * row_bytes
    page = mmap.PAGESIZE
    lo -= lo % page
    hi += (-hi) % page
    _LIBC.madvise(ctypes.c_void_p(lo), ctypes.c_size_t(hi - lo), ctypes.c_int(MADV_DONTNEED))


def _file_offset(arr: np.memmap) -> int | None:
    """Byte offset in arr.filename of arr[0, 0], or None when it cannot be told (no file, odd mapping)."""
    mm = getattr(arr, "_mmap", None)
    if mm is None or not getattr(arr, "filename", None):
        return None
    try:
        map_start = np.frombuffer(mm, dtype=np.uint8).ctypes.data
    except (TypeError, ValueError):
        return None
    # np.memmap maps from `offset` rounded down to the allocation granularity
    map_offset = arr.offset - arr.offset % mmap.ALLOCATIONGRANULARITY
    return map_offset + (arr.ctypes.data - map_start)


def read_rows(arr: np.ndarray, rows: np.ndarray, workers: int = 16) -> np.ndarray:
    """`arr[rows]` as an in-memory array. For a file-backed memmap the rows are read with `workers` parallel
    preads (the disk sees many requests at once, and no page of the store is mapped into this process);
    anything else is plain fancy indexing."""
    rows = np.asarray(rows, dtype=np.int64)
    offset = _file_offset(arr) if isinstance(arr, np.memmap) and arr.ndim == 2 else None
    row_bytes = arr.shape[1] * arr.itemsize if arr.ndim == 2 else 0
    if offset is None or arr.strides[1] != arr.itemsize or len(rows) < 2 * workers:
        return np.asarray(arr[rows])
    if rows.min() < 0 or rows.max() >= arr.shape[0]:  # rows is non-empty here
        raise IndexError(f"row index out of range for {arr.shape[0]} rows")
    out = np.empty((len(rows), arr.shape[1]), dtype=arr.dtype)
    fd = os.open(arr.filename, os.O_RDONLY)

    def read(chunk: range) -> None:  # one task per thread, not one per row: fewer executor round trips
        for i in chunk:
            pos = offset + int(rows[i]) * arr.strides[0]
            got = os.preadv(fd, [memoryview(out[i]).cast("B")], pos)
            if got != row_bytes:
                raise OSError(f"{arr.filename}: short read of row {int(rows[i])} ({got} of {row_bytes} bytes)")

    try:
        with ThreadPoolExecutor(workers) as pool:
            list(pool.map(read, [range(w, len(rows), workers) for w in range(workers)]))
    finally:
        os.close(fd)
    return out
