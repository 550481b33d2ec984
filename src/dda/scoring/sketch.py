"""Two-tier top-k for feature stores too large to scan per query: a sketch first, exact scores second.

A million rows of 8,192 float16 dims is 16 GB: one exact pass reads all of it (`topk.topk_scores`, ~40 s on a
2-core VM whose disk gives ~0.4 GB/s). The sketch tier keeps a second, small matrix beside the store: every row
times one seeded Gaussian matrix R (dim_in x sketch_dim, entries N(0, 1/sketch_dim)), so that
(q R) . (x R) estimates q . x (Johnson-Lindenstrauss). A query then
  1. scans the sketch (1M x 256 float16 = 512 MB, blockwise, memory flat, float16 products: candidates
     only need a rough order) for its top `candidates` rows, and
  2. reads only those rows from the full store and ranks them by their exact dot products.
Step 2 reads rows with parallel `pread`s (`read_rows`), not by indexing the memmap: a page fault is one
synchronous read at a time, so 8,126 scattered 16 KB rows took 12.6 s through the memmap and 0.9 s with 16 reads
in flight on the 2-core VM (the same rows, page cache dropped).
The answer's scores are exact; what can be missed is a true top-k row whose sketched score fell below the
candidate cut. The estimate's error is about |q| |x| / sqrt(sketch_dim), so the tier finds rows whose scores
stand out from the bulk (what attribution looks for) and is no better than chance among near-ties; measure
recall against the exact scan on your own store (`benchmarks/scoring_scale.py --sketch-dim`).
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from numpy.lib.format import open_memmap

from ..features.paging import read_rows, release_pages
from ..io import write_json
from .topk import topk_scores

SKETCH_FORMAT = 1


def sketch_matrix(dim_in: int, sketch_dim: int, seed: int, rows_per_chunk: int = 8192) -> torch.Tensor:
    """The seeded (dim_in, sketch_dim) Gaussian, N(0, 1/sketch_dim); the same seed gives the same matrix."""
    gen = torch.Generator().manual_seed(int(seed))
    parts = [
        torch.randn(min(rows_per_chunk, dim_in - s), sketch_dim, generator=gen)
        for s in range(0, dim_in, rows_per_chunk)
    ]
    return torch.cat(parts) / float(np.sqrt(sketch_dim))


def build_sketch(
    train: np.ndarray,
    path: str | Path,
    sketch_dim: int = 256,
    seed: int = 0,
    block_rows: int = 4096,
    on_block: Callable[[int], None] | None = None,
) -> np.memmap:
    """Write `path` (.npy, float16, n x sketch_dim) and `path`.json; one streaming pass over `train`.

    The file is written under a temporary name and renamed when complete, so a killed build leaves no sketch
    that looks finished; the JSON names the source shape and seed, which `load_sketch` checks."""
    path = Path(path)
    n, d = train.shape
    r = sketch_matrix(d, sketch_dim, seed)
    tmp = path.with_name(path.name + ".partial")
    out = open_memmap(tmp, mode="w+", dtype=np.float16, shape=(n, sketch_dim))
    for start in range(0, n, block_rows):
        stop = min(n, start + block_rows)
        block = torch.from_numpy(np.asarray(train[start:stop], dtype=np.float32))
        out[start:stop] = (block @ r).numpy().astype(np.float16)
        release_pages(train, start, stop)
        if on_block is not None:
            on_block(stop)
    out.flush()
    del out
    os.replace(tmp, path)
    meta = {"format": SKETCH_FORMAT, "n_rows": n, "source_dim": d, "sketch_dim": sketch_dim, "seed": int(seed)}
    write_json(Path(str(path) + ".json"), meta)  # atomic, like every other file dda writes
    return np.load(path, mmap_mode="r", allow_pickle=False)


def load_sketch(path: str | Path, train: np.ndarray) -> tuple[np.ndarray, dict]:
    """Open a sketch read-only (memmap) and check it was built from a store of `train`'s shape."""
    path = Path(path)
    meta_path = Path(str(path) + ".json")
    if not path.exists() or not meta_path.exists():
        raise FileNotFoundError(f"{path}: no sketch here (build it with build_sketch)")
    meta = json.loads(meta_path.read_text())
    if (meta.get("n_rows"), meta.get("source_dim")) != tuple(train.shape):
        raise ValueError(
            f"{meta_path}: sketch of a {meta.get('n_rows')} x {meta.get('source_dim')} store, "
            f"but the store is {train.shape[0]} x {train.shape[1]}; rebuild it"
        )
    return np.load(path, mmap_mode="r", allow_pickle=False), meta


def sketch_topk(
    train: np.ndarray,
    sketch: np.ndarray,
    meta: dict,
    queries: np.ndarray,
    k: int,
    candidates: int = 1024,
    block_rows: int = 65536,
) -> tuple[np.ndarray, np.ndarray]:
    """Top-k of `queries @ train.T` per query: sketch scan for `candidates` rows each, exact re-ranking.

    Returns (scores, indices) like `topk_scores`: (q, min(k, n)), exact float32 scores, descending. The
    candidate rows of all queries are pooled, so each query is re-ranked over q * candidates rows at most."""
    q = np.ascontiguousarray(queries, dtype=np.float32)
    if q.ndim != 2 or q.shape[1] != meta["source_dim"]:
        raise ValueError(f"queries have shape {q.shape}; the store has {meta['source_dim']} dims")
    r = sketch_matrix(meta["source_dim"], meta["sketch_dim"], meta["seed"])
    q_sk = (torch.from_numpy(q) @ r).numpy()
    # Unit norm before the float16 scan: a query's candidates depend only on its direction, and a small query (a
    # learning-rate-scaled TracIn one) would underflow in float16 and lose its candidates silently.
    q_sk /= np.maximum(np.linalg.norm(q_sk, axis=1, keepdims=True), np.finfo(np.float32).tiny)
    _, cand = topk_scores(sketch, q_sk, max(k, candidates), block_rows=block_rows, half=True)
    return exact_rerank(train, q, cand, k)


def exact_rerank(
    train: np.ndarray, queries: np.ndarray, candidates: np.ndarray, k: int
) -> tuple[np.ndarray, np.ndarray]:
    """Exact top-k of `queries @ train.T` among the candidate rows of all queries pooled (negative ids, faiss's
    "no result", are dropped). Returns (scores, indices) like `topk_scores`."""
    q = np.ascontiguousarray(queries, dtype=np.float32)
    rows = np.unique(candidates[candidates >= 0])  # sorted: the store is read front to back
    if len(rows) == 0:
        return np.empty((len(q), 0), dtype=np.float32), np.empty((len(q), 0), dtype=np.int64)
    exact = torch.from_numpy(q) @ torch.from_numpy(np.asarray(read_rows(train, rows), dtype=np.float32)).T
    kk = min(k, train.shape[0], len(rows))
    vals, pos = torch.topk(exact, kk, dim=1)
    return vals.numpy(), rows[pos.numpy()]
