#!/usr/bin/env python
"""`dda search` at scale: folded DDA top-k over N+1 stores, exact scan vs sketch vs FAISS.

    python benchmarks/search_scale.py --dir /work/tmp --out runs/search-1m/result.json    # 1,000,000 x 8,192
    python benchmarks/search_scale.py --n 20000 --out runs/search-20k/result.json        # quick check

The stores are what `dda index` leaves for 3 checkpoints and theta0: --stores float16 .npy files of
dim/stores columns each, --modules equal module blocks per store, random rows, plus for each query --k rows
planted at cosines 0.05..--planted to its folded DDA query vector in every module (rows that stand out, what
attribution looks for). The method is `dda` (beta=-1, module normalisation, base reading), folded into one
query vector per query against the virtually concatenated row (dda.scoring.search), so a row is dim dims
(8,192: 16.4 GB at 10^6 rows). Measured per backend: index build time and disk, search time cold (every file
of the backend dropped from the page cache), warm (the same search again) and with only the index cached,
recall@k against the exact scan, planted rows found by cosine band, resident memory during the search.
Free disk is checked first; the stores are deleted at the end unless --keep.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch
from numpy.lib.format import open_memmap
from scoring_scale import drop_cache, peak_rss_mb, recall, remove_unless_kept, rss_now_mb, save_result, scratch_dir

from dda.models import BASE, Checkpoint
from dda.scoring import FeatureSet
from dda.scoring.search import (
    build_index,
    concatenated_rows,
    default_nlist,
    folded_topk,
    open_index,
    plan_fold,
    query_vectors,
)

CKPT_NAMES = ("epoch-1", "epoch-2", "epoch-3")


def make_stores(root: Path, args: argparse.Namespace) -> tuple[FeatureSet, list[Path]]:
    """--stores float16 .npy stores filled with random rows by plain file writes (never mapped while filled)."""
    names = (
        [*CKPT_NAMES[: args.stores - 1], "base"]
        if args.stores <= 4
        else [*(f"epoch-{i}" for i in range(1, args.stores)), "base"]
    )
    cks = [BASE] + [Checkpoint(n, f"/x/{n}", "lora", 1e-4, i + 1) for i, n in enumerate(names[:-1])]
    d = args.dim // args.stores
    rng = np.random.default_rng(args.seed)
    paths, train = [], {}
    block = max(1, (64 << 20) // (d * 4))
    for name in names:
        path = root / f"{name}.npy"
        mm = open_memmap(path, mode="w+", dtype=np.float16, shape=(args.n, d))
        offset = mm.offset
        del mm
        with open(path, "r+b") as fh:
            fh.seek(offset)
            for start in range(0, args.n, block):
                rows = min(block, args.n - start)
                fh.write(rng.standard_normal((rows, d), dtype=np.float32).astype(np.float16).tobytes())
        paths.append(path)
    q = {n: {c.name: rng.standard_normal((args.queries, d)).astype(np.float32) for c in cks} for n in ("neg", "pos")}
    for path, name in zip(paths, names, strict=True):
        train[name] = np.load(path, mmap_mode="r", allow_pickle=False)
    blocks = [d // args.modules] * args.modules
    return FeatureSet(cks, train, q["neg"], q["pos"], blocks=blocks), paths


def plant(fs: FeatureSet, folded: np.ndarray, layout: list[str], args: argparse.Namespace) -> np.ndarray:
    """k rows per query whose every module slice has cosine c to the folded query's slice; c from 0.05 to
    --planted. Returns their row numbers (queries, k)."""
    rng = np.random.default_rng(args.seed + 2)
    rows = rng.choice(args.n, size=(args.queries, args.k), replace=False)
    cosines = np.linspace(0.05, args.planted, args.k)
    d = args.dim // args.stores
    b = fs.blocks[0]
    for s, name in enumerate(layout):
        path, offset = Path(fs.train[name].filename), fs.train[name].offset
        with open(path, "r+b") as fh:
            for qi in range(args.queries):
                target = folded[qi, s * d : (s + 1) * d].reshape(-1, b)
                u = target / np.maximum(np.linalg.norm(target, axis=1, keepdims=True), 1e-30)
                for r, c in zip(rows[qi], cosines, strict=True):
                    noise = rng.standard_normal(u.shape).astype(np.float32)
                    noise -= (noise * u).sum(1, keepdims=True) * u
                    noise /= np.linalg.norm(noise, axis=1, keepdims=True)
                    x = (c * u + np.sqrt(1 - c * c) * noise) * np.sqrt(b)  # the scale of the random rows
                    fh.seek(offset + int(r) * d * 2)
                    fh.write(x.reshape(-1).astype(np.float16).tobytes())
    return rows


def found_by_band(found: np.ndarray, planted: np.ndarray, args: argparse.Namespace) -> dict[str, float]:
    cos = np.linspace(0.05, args.planted, args.k)
    hit = np.array([[r in set(f) for r in p] for f, p in zip(found.tolist(), planted.tolist(), strict=True)])
    edges = np.linspace(cos[0], cos[-1], 6)
    return {
        f"{lo:.2f}-{hi:.2f}": round(float(hit[:, (cos >= lo) & (cos <= hi + 1e-9)].mean()), 3)
        for lo, hi in zip(edges[:-1], edges[1:], strict=True)
    }


def timed_search(fs, plan, args, backend, index=None, candidates=0, nprobe=0, drop: list[Path] = ()) -> dict:
    for p in drop:
        drop_cache(p)
    samples: list[float] = []
    rss0 = rss_now_mb()
    t0 = time.perf_counter()
    vals, idx = folded_topk(
        fs,
        plan,
        args.k,
        backend,
        index,
        None,
        candidates or 1024,
        nprobe or 32,
        on_block=lambda stop: samples.append(rss_now_mb()),
    )
    secs = time.perf_counter() - t0
    return {
        "seconds": round(secs, 3),
        "rss_growth_mb": round(max([rss_now_mb(), *samples]) - rss0, 1),
        "idx": idx,
        "vals": vals,
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--n", type=int, default=1_000_000, help="training rows")
    p.add_argument("--dim", type=int, default=8192, help="dims of the concatenated row (all stores together)")
    p.add_argument("--stores", type=int, default=4, help="stores: checkpoints + theta0")
    p.add_argument("--modules", type=int, default=8, help="equal module blocks per store")
    p.add_argument("--queries", type=int, default=8)
    p.add_argument("--k", type=int, default=100)
    p.add_argument("--planted", type=float, default=0.5, help="planted rows' largest per-module cosine")
    p.add_argument("--backends", default="exact,sketch,faiss")
    p.add_argument("--sketch-dim", type=int, default=256, help="sketch dims (also FAISS's projection)")
    p.add_argument("--candidates", default="256,1024", help="rows re-ranked exactly per query (comma list)")
    p.add_argument("--nprobe", default="16,64", help="FAISS: inverted lists scanned per query (comma list)")
    p.add_argument("--nlist", type=int, default=None, help="FAISS inverted lists (default ~sqrt(n))")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--dir", default=None, help="where the temporary stores go (default: system temp)")
    p.add_argument("--keep", action="store_true")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default=None, help="result JSON (a .md table beside it)")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    backends = [b for b in args.backends.split(",") if b]
    if "faiss" in backends:
        import faiss

        faiss.omp_set_num_threads(args.threads)
    if args.dim % (args.stores * args.modules):
        p.error("--dim must be a multiple of --stores x --modules")
    tmp = scratch_dir(args.dir, "dda-search-", args.n, args.dim * 2 + 2 * (args.sketch_dim * 2 + 16) * 2)
    if tmp is None:
        return 2
    result: dict = {
        "n": args.n,
        "dim": args.dim,
        "stores": args.stores,
        "modules_per_store": args.modules,
        "queries": args.queries,
        "k": args.k,
        "threads": args.threads,
        "method": "dda (beta=-1, module)",
        "store_gb": round(args.n * args.dim * 2 / 1e9, 2),
    }
    try:
        t0 = time.perf_counter()
        print(
            f"[search] {args.stores} stores of {args.n:,} x {args.dim // args.stores} float16 "
            f"({result['store_gb']} GB) in {tmp}",
            flush=True,
        )
        fs, paths = make_stores(tmp, args)
        plan = plan_fold("dda(beta=-1,normalize=module)", fs.checkpoints, True)
        folded = query_vectors(plan, fs)
        planted = plant(fs, folded, plan.layout, args) if args.planted > 0 else None
        result["fill_seconds"] = round(time.perf_counter() - t0, 1)
        print(f"[search] filled in {result['fill_seconds']} s", flush=True)

        cold = timed_search(fs, plan, args, "exact", drop=paths)
        warm = timed_search(fs, plan, args, "exact")
        exact_idx = cold["idx"]
        result["exact"] = {
            "cold_seconds": cold["seconds"],
            "warm_seconds": warm["seconds"],
            "rss_growth_mb": max(cold["rss_growth_mb"], warm["rss_growth_mb"]),
            "disk_gb_extra": 0.0,
        }
        if planted is not None:
            result["exact"]["finds_planted"] = recall(exact_idx, planted)
            result["exact"]["finds_planted_by_cosine"] = found_by_band(exact_idx, planted, args)
        print(f"[search] exact: {cold['seconds']} s cold, {warm['seconds']} s warm", flush=True)

        rows = concatenated_rows(plan, fs)
        for backend in [b for b in backends if b != "exact"]:
            t0 = time.perf_counter()
            root = build_index(
                rows,
                tmp / f"index-{backend}",
                backend,
                plan,
                sketch_dim=args.sketch_dim,
                seed=args.seed,
                nlist=args.nlist,
            )
            index = open_index(root)
            entry = {
                "build_seconds": round(time.perf_counter() - t0, 1),
                "disk_gb": round(index.meta["bytes"] / 1e9, 3),
                "params": index.meta["params"],
                "searches": [],
            }
            files = [f for f in root.iterdir() if f.suffix in (".npy", ".faiss")]
            nprobes = [int(x) for x in args.nprobe.split(",")] if backend == "faiss" else [0]
            for nprobe in nprobes:
                for cands in [int(x) for x in args.candidates.split(",")]:
                    row = {"candidates": cands, **({"nprobe": nprobe} if nprobe else {})}
                    c = timed_search(fs, plan, args, backend, index, cands, nprobe, drop=[*paths, *files])
                    for f in files:  # the index cached, the stores not
                        with open(f, "rb") as fh:
                            while fh.read(64 << 20):
                                pass
                    ic = timed_search(fs, plan, args, backend, index, cands, nprobe, drop=paths)
                    w = timed_search(fs, plan, args, backend, index, cands, nprobe)
                    row.update(
                        cold_seconds=c["seconds"],
                        index_cached_seconds=ic["seconds"],
                        warm_seconds=w["seconds"],
                        rss_growth_mb=max(c["rss_growth_mb"], w["rss_growth_mb"]),
                        recall_vs_exact=recall(w["idx"], exact_idx),
                    )
                    if planted is not None:
                        row["finds_planted"] = recall(w["idx"], planted)
                        row["finds_planted_by_cosine"] = found_by_band(w["idx"], planted, args)
                    entry["searches"].append(row)
                    print(f"[search] {backend} {row}", flush=True)
            result[backend] = entry
        result["peak_rss_mb"] = round(peak_rss_mb(), 1)
        if "faiss" in backends:
            result["faiss"]["nlist_default"] = default_nlist(args.n)
    finally:
        remove_unless_kept(tmp, args.keep)
    print(json.dumps(result, indent=2))
    save_result(result, args.out, markdown(result))
    print(markdown(result))
    return 0


def markdown(r: dict) -> str:
    lines = [
        f"Top-{r['k']} of {r['queries']} queries over {r['n']:,} rows x {r['dim']:,} dims "
        f"({r['stores']} float16 stores, {r['store_gb']} GB), {r['method']}, {r['threads']} threads.",
        "",
        "| backend | setting | build s | extra disk GB | cold s | index cached s | warm s | recall@k vs exact "
        "| planted found |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    e = r["exact"]
    lines.append(
        f"| exact | streaming scan | – | 0 | {e['cold_seconds']} | – | {e['warm_seconds']} | 1 | "
        f"{e.get('finds_planted', '–')} |"
    )
    for backend in ("sketch", "faiss"):
        if backend not in r:
            continue
        b = r[backend]
        for s in b["searches"]:
            setting = f"{b['params']['sketch_dim']} dims, {s['candidates']} cand." + (
                f", nprobe {s['nprobe']}/{b['params']['nlist']}" if "nprobe" in s else ""
            )
            lines.append(
                f"| {backend} | {setting} | {b['build_seconds']} | {b['disk_gb']} | {s['cold_seconds']} | "
                f"{s['index_cached_seconds']} | {s['warm_seconds']} | {s['recall_vs_exact']} | "
                f"{s.get('finds_planted', '–')} |"
            )
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    sys.exit(main())
