#!/usr/bin/env python
"""Scoring at scale: top-k of Q queries over N stored feature rows, streamed from a float16 memmap.

    python benchmarks/scoring_scale.py                        # the target: 1,000,000 x 8,192 (16 GB on disk)
    python benchmarks/scoring_scale.py --n 200000             # scaled down; prints the extrapolation to 1M
    python benchmarks/scoring_scale.py --self-test            # small exactness check against a full argsort
    python benchmarks/scoring_scale.py --sketch-dim 256       # also the two-tier search (dda.scoring.sketch):
                                                              # build time, query time, recall@k vs the exact scan

The store is created in a temporary directory (free disk is checked first) and filled blockwise with random
float16 data by plain file writes, so filling never maps the file into this process. Scoring reads the memmap
block by block: scores of one block, torch.topk on it, merge with the running top-k. After each block its pages
are dropped from this process's mapping (madvise MADV_DONTNEED; the data stays in the page cache), so resident
memory is one block plus the running top-k whatever N is. Reported: seconds, rows/s, GB/s, peak RSS, and the
largest resident set seen in the first 10% of blocks vs over all blocks (flat = memory does not grow with N).

`topk_scores` lives in `dda.scoring.topk`; this script measures it.
"""

from __future__ import annotations

import argparse
import json
import mmap
import os
import resource
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from dda.scoring.sketch import build_sketch, load_sketch, sketch_topk
from dda.scoring.topk import topk_scores


def rss_now_mb() -> float:
    try:
        with open("/proc/self/statm") as fh:
            return int(fh.read().split()[1]) * mmap.PAGESIZE / 2**20
    except OSError:
        return float("nan")


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def fill_store(path: Path, n: int, d: int, seed: int, block_rows: int) -> float:
    """Write n x d float16 random rows with file writes (the file is never mapped while it is filled)."""
    rng = np.random.default_rng(seed)
    t0 = time.perf_counter()
    with open(path, "wb") as fh:
        for start in range(0, n, block_rows):
            rows = min(block_rows, n - start)
            fh.write(rng.standard_normal((rows, d), dtype=np.float32).astype(np.float16).tobytes())
    return time.perf_counter() - t0


def plant_rows(path: Path, args: argparse.Namespace, queries: np.ndarray) -> np.ndarray:
    """Overwrite k random rows per query with rows at cosines spread evenly from 0.05 to args.planted (the
    i-th planted row of every query at the same cosine); returns their indices, (queries, k)."""
    rng = np.random.default_rng(args.seed + 2)
    rows = rng.choice(args.n, size=(len(queries), args.k), replace=False)
    with open(path, "r+b") as fh:
        for qi, q in enumerate(queries):
            u = q / np.linalg.norm(q)
            for r, c in zip(rows[qi], planted_cosines(args), strict=True):
                noise = rng.standard_normal(args.dim).astype(np.float32)
                noise -= (noise @ u) * u
                x = c * u + np.sqrt(1 - c * c) * noise / np.linalg.norm(noise)
                fh.seek(int(r) * args.dim * 2)
                fh.write((x * np.sqrt(args.dim)).astype(np.float16).tobytes())  # the scale of the random rows
    return rows


def planted_cosines(args: argparse.Namespace) -> np.ndarray:
    return np.linspace(0.05, args.planted, args.k)


def found_by_cosine(found: np.ndarray, planted: np.ndarray, args: argparse.Namespace) -> dict[str, float]:
    """Fraction of planted rows found, in 5 bands of their cosine to the query."""
    cos = planted_cosines(args)
    hit = np.array([[r in set(f) for r in p] for f, p in zip(found, planted, strict=True)])  # (queries, k)
    edges = np.linspace(cos[0], cos[-1], 6)
    out = {}
    for lo, hi in zip(edges[:-1], edges[1:], strict=True):
        band = (cos >= lo) & (cos <= hi + 1e-9)
        out[f"{lo:.2f}-{hi:.2f}"] = round(float(hit[:, band].mean()), 3)
    return out


def recall(found: np.ndarray, truth: np.ndarray) -> float:
    return round(float(np.mean([len(set(f) & set(t)) / len(t) for f, t in zip(found, truth, strict=True)])), 4)


def drop_cache(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
    finally:
        os.close(fd)


def run_sketch(
    mm: np.ndarray,
    path: Path,
    queries: np.ndarray,
    exact_idx: np.ndarray,
    planted: np.ndarray | None,
    args: argparse.Namespace,
    sketch_dim: int,
) -> dict:
    """Build the sketch (one pass), then time the two-tier search per candidate count in three cache states."""
    sk_path = path.with_name(f"sketch{sketch_dim}.npy")
    t0 = time.perf_counter()
    build_sketch(mm, sk_path, sketch_dim=sketch_dim, seed=args.seed)
    build_s = time.perf_counter() - t0
    out: dict = {
        "sketch_dim": sketch_dim,
        "build_seconds": round(build_s, 2),
        "sketch_gb": round(sk_path.stat().st_size / 1e9, 3),
        "searches": [],
    }
    # "cold": sketch and store dropped from the page cache (a fresh process on a cold machine);
    # "sketch_cached": the sketch in the page cache, the store not (a service that keeps the 512 MB sketch hot:
    #   the candidate rows are random reads from disk);
    # "repeated": the same search again, nothing dropped.
    for cands in [int(c) for c in str(args.candidates).split(",")]:
        row: dict = {"candidates": cands}
        for label in ("cold", "sketch_cached", "repeated"):
            if label != "repeated":
                drop_cache(path)
                drop_cache(sk_path)
            sk, meta = load_sketch(sk_path, mm)
            if label == "sketch_cached":
                with open(sk_path, "rb") as fh:  # read once so every page of the sketch is cached
                    while fh.read(64 << 20):
                        pass
            rss0 = rss_now_mb()
            t0 = time.perf_counter()
            _, idx = sketch_topk(mm, sk, meta, queries, args.k, candidates=cands)
            row[f"{label}_seconds"] = round(time.perf_counter() - t0, 3)
            row[f"{label}_rss_growth_mb"] = round(rss_now_mb() - rss0, 1)
            del sk
        row["recall_vs_exact"] = recall(idx, exact_idx)
        if planted is not None:
            row["finds_planted"] = recall(idx, planted)
            row["finds_planted_by_cosine"] = found_by_cosine(idx, planted, args)
        out["searches"].append(row)
        print(
            f"[scoring] sketch tier ({sketch_dim} dims, {cands} candidates/query; build {build_s:.1f} s): "
            f"search {row['cold_seconds']} s cold, {row['sketch_cached_seconds']} s sketch cached, "
            f"{row['repeated_seconds']} s repeated; recall@{args.k} vs exact {row['recall_vs_exact']}"
            + (f"; planted rows found {row['finds_planted']}" if planted is not None else ""),
            flush=True,
        )
    return out


def self_test() -> int:
    rng = np.random.default_rng(0)
    with tempfile.TemporaryDirectory(prefix="dda-topk-") as tmp:
        n, d, q, k = 10_007, 64, 8, 100
        path = Path(tmp) / "x.bin"
        fill_store(path, n, d, 1, 999)
        mm = np.memmap(path, dtype=np.float16, mode="r", shape=(n, d))
        queries = rng.standard_normal((q, d)).astype(np.float32)
        for block_rows in (1, 97, 4096, 20_000):
            v, i = topk_scores(mm, queries, k, block_rows=block_rows)
            full = queries @ np.asarray(mm, dtype=np.float32).T
            ref = np.sort(full, axis=1)[:, ::-1][:, :k]
            assert np.allclose(v, ref, rtol=1e-5, atol=1e-4), f"values differ at block_rows={block_rows}"
            assert np.allclose(np.take_along_axis(full, i, 1), v, rtol=1e-5, atol=1e-4), "indices do not match"
        v, i = topk_scores(mm[:50], queries, k, block_rows=16)
        assert v.shape == (q, 50) and len(set(i[0].tolist())) == 50
        del mm
    print("self-test passed: streaming top-k equals a full sort (block sizes 1, 97, 4096, 20000; k > n)")
    return 0


def scratch_dir(parent: str | None, prefix: str, n_rows: int, bytes_per_row: int) -> Path | None:
    """A new temporary folder under `parent` (default: system temp) with room for n_rows rows and 1 GB
    to spare; None, after saying how many rows would fit, when the disk is too small."""
    root = Path(parent or tempfile.gettempdir())
    root.mkdir(parents=True, exist_ok=True)
    free = shutil.disk_usage(root).free
    if n_rows * bytes_per_row + (1 << 30) > free:
        fit = max(0, (free - (1 << 30)) // bytes_per_row)
        print(
            f"not enough disk under {root}: {n_rows:,} rows need {n_rows * bytes_per_row / 1e9:.1f} GB, "
            f"{free / 1e9:.1f} GB free. Use --n {fit // 1000 * 1000} (or less) or --dir elsewhere.",
            file=sys.stderr,
        )
        return None
    return Path(tempfile.mkdtemp(prefix=prefix, dir=root))


def remove_unless_kept(tmp: Path, keep: bool) -> None:
    if keep:
        print(f"kept {tmp}", flush=True)
    else:
        shutil.rmtree(tmp, ignore_errors=True)


def save_result(result: dict, out: str | None, markdown: str | None = None) -> None:
    """The result as JSON at `out` (and the markdown table beside it), when asked for."""
    if out:
        path = Path(out)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(result, indent=2) + "\n")
        if markdown is not None:
            path.with_suffix(".md").write_text(markdown)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--n", type=int, default=1_000_000, help="stored examples (rows)")
    p.add_argument("--dim", type=int, default=8192)
    p.add_argument("--queries", type=int, default=8)
    p.add_argument("--k", type=int, default=100)
    p.add_argument("--block-rows", type=int, default=4096, help="rows per scoring block")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--dir", default=None, help="where to create the temporary store (default: system temp)")
    p.add_argument("--keep", action="store_true", help="keep the store (prints its path)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default=None, help="write the result JSON here")
    p.add_argument(
        "--sketch-dim",
        default="0",
        help="also time the sketch tier with this many dims; a comma list builds and times each",
    )
    p.add_argument(
        "--candidates", default="1024", help="sketch tier: rows re-ranked exactly per query; a comma list times each"
    )
    p.add_argument(
        "--planted",
        type=float,
        default=0.0,
        help="plant k rows per query at cosines 0.05..this to it (rows that stand out, what attribution "
        "looks for); 0 = pure noise",
    )
    p.add_argument("--self-test", action="store_true")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    if args.self_test:
        return self_test()

    target_n = 1_000_000
    need = args.n * args.dim * 2
    tmp = scratch_dir(args.dir, "dda-scoring-", args.n, args.dim * 2)
    if tmp is None:
        return 2
    path = tmp / "features.f16"
    try:
        print(f"[scoring] filling {args.n:,} x {args.dim} float16 ({need / 1e9:.1f} GB) in {path}", flush=True)
        fill_s = fill_store(path, args.n, args.dim, args.seed, max(1, (64 << 20) // (args.dim * 4)))
        rss_before = rss_now_mb()
        queries = np.random.default_rng(args.seed + 1).standard_normal((args.queries, args.dim)).astype(np.float32)
        planted = plant_rows(path, args, queries) if args.planted > 0 else None
        mm = np.memmap(path, dtype=np.float16, mode="r", shape=(args.n, args.dim))
        samples: list[tuple[int, float]] = []
        t0 = time.perf_counter()
        vals, idx = topk_scores(
            mm, queries, args.k, block_rows=args.block_rows, on_block=lambda stop: samples.append((stop, rss_now_mb()))
        )
        secs = time.perf_counter() - t0
        first = [r for stop, r in samples if stop <= max(args.block_rows, args.n // 10)]
        result = {
            "n": args.n,
            "dim": args.dim,
            "queries": args.queries,
            "k": args.k,
            "block_rows": args.block_rows,
            "threads": args.threads,
            "store_gb": round(need / 1e9, 2),
            "fill_seconds": round(fill_s, 2),
            "score_seconds": round(secs, 3),
            "rows_per_s": round(args.n / secs),
            "gb_per_s": round(need / 1e9 / secs, 3),
            "rss_before_scoring_mb": round(rss_before, 1),
            "rss_max_first_10pct_mb": round(max(first), 1) if first else None,
            "rss_max_all_blocks_mb": round(max(r for _, r in samples), 1),
            "peak_rss_mb": round(peak_rss_mb(), 1),
            "top1_per_query": [float(v) for v in vals[:, 0]],
            "top1_index_per_query": [int(i) for i in idx[:, 0]],
        }
        if args.n != target_n:
            result["extrapolated_score_seconds_1m"] = round(secs * target_n / args.n, 1)
        if planted is not None:
            result["planted_cosine"] = args.planted
            result["exact_finds_planted"] = recall(idx, planted)
            result["exact_finds_planted_by_cosine"] = found_by_cosine(idx, planted, args)
        sketch_dims = [int(d) for d in str(args.sketch_dim).split(",") if int(d) > 0]
        if sketch_dims:
            result["sketches"] = [run_sketch(mm, path, queries, idx, planted, args, d) for d in sketch_dims]
        del mm
    finally:
        remove_unless_kept(tmp, args.keep)
    print(json.dumps(result, indent=2))
    extra = (
        f" -> ~{result['extrapolated_score_seconds_1m']} s for 1,000,000 rows of this dim (linear in n)"
        if "extrapolated_score_seconds_1m" in result
        else ""
    )
    print(
        f"[scoring] top-{args.k} of {args.queries} queries over {args.n:,} x {args.dim}: {secs:.1f} s "
        f"({result['gb_per_s']} GB/s){extra}; resident max {result['rss_max_all_blocks_mb']} MB "
        f"(first 10% of blocks: {result['rss_max_first_10pct_mb']} MB), peak RSS {result['peak_rss_mb']} MB"
    )
    save_result(result, args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
