#!/usr/bin/env python
"""`dda search` from the CLI over a store of 10^6 real rows: index, then top-100 with memory that stays flat.

    PYTHONPATH=src python benchmarks/search_cli_scale.py --n 1000000 --dir /work/tmp --out runs/search-cli-1m
    PYTHONPATH=src python benchmarks/search_cli_scale.py --n 20000 --out runs/search-cli-20k         # minutes

Everything runs through the `dda` commands a user types, each in its own process: a tiny random Llama (hidden 32,
2 layers; built here, no download) saved as a model directory; `dda finetune` for one epoch on 2,000 documents;
`dda index --checkpoints` of --n documents at theta0 and that epoch (exact per-example gradients of q_proj and
o_proj in both layers: 4,096 float16 dims per checkpoint, 8,192 per row, the row size of
benchmarks/search_scale.py); then `dda search` top-k for 8 contrastive queries with each backend: exact
(streaming scan; cold = the stores dropped from the page cache, then warm), sketch and faiss (`--build` the first
time, then the built index). Measured per command: wall time and the process's peak resident memory
(os.wait4); recall@k of each index backend against exact. Run it at two --n to see that search memory does not
grow with the store. Free disk is checked first; the folder is deleted at the end unless --keep.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE), str(HERE.parent / "tests")]
from scoring_scale import drop_cache, remove_unless_kept, save_result, scratch_dir  # noqa: E402

SETTINGS = {
    "data": {"template": "plain", "max_prompt_tokens": 16, "max_response_tokens": 8},
    "train": {"epochs": 1, "batch_size": 32, "lr": 1e-2, "lora": {"r": 4, "target_modules": ["q_proj", "v_proj"]}},
    "features": {
        "projection": "identity",
        "modules": ["q_proj", "o_proj"],
        "layers": "all",
        "dtype": "float16",
        "batch_size": 256,
    },
    "score": {"beta": -1.0},
}


def write_documents(path: Path, n: int, seed: int, words: list[str]) -> None:
    """n documents of 10 random words with 3-word summaries, written in blocks."""
    rng = np.random.default_rng(seed)
    vocab = np.array(words)
    with open(path, "w", encoding="utf-8") as fh:
        for start in range(0, n, 100_000):
            m = min(100_000, n - start)
            docs = rng.choice(vocab, size=(m, 13))
            fh.write(
                "".join(
                    json.dumps({"id": f"d{start + i}", "document": " ".join(r[:10]), "summary": " ".join(r[10:])})
                    + "\n"
                    for i, r in enumerate(docs.tolist())
                )
            )


def dda(*args: str | Path, log: Path) -> dict:
    """One `dda` command in its own process: wall seconds and peak RSS (MB) of that process alone."""
    cmd = [sys.executable, "-m", "dda", *map(str, args)]
    t0 = time.perf_counter()
    with open(log, "a", encoding="utf-8") as fh:
        fh.write("$ " + " ".join(cmd[2:]) + "\n")
        fh.flush()
        proc = subprocess.Popen(cmd, stdout=fh, stderr=fh, env={**os.environ, "DDA_PROGRESS_INTERVAL": "60"})
        _, status, usage = os.wait4(proc.pid, 0)
    secs = time.perf_counter() - t0
    if os.waitstatus_to_exitcode(status) != 0:
        raise SystemExit(f"`dda {args[0]}` failed ({os.waitstatus_to_exitcode(status)}); see {log}")
    return {"seconds": round(secs, 1), "peak_rss_mb": round(usage.ru_maxrss / 1024, 1)}


def top_ids(search_dir: Path) -> list[list[str]]:
    found = json.loads((search_dir / "search.json").read_text(encoding="utf-8"))
    return [[r["train_id"] for r in q["top"]] for q in found["queries"]]


def recall(found: list[list[str]], exact: list[list[str]]) -> float:
    return round(float(np.mean([len(set(f) & set(e)) / len(e) for f, e in zip(found, exact, strict=True)])), 3)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--n", type=int, default=1_000_000, help="training documents (rows of the store)")
    p.add_argument("--k", type=int, default=100)
    p.add_argument("--queries", type=int, default=8)
    p.add_argument("--backends", default="exact,sketch,faiss")
    p.add_argument("--dir", default=None, help="where the workdir goes (default: system temp)")
    p.add_argument("--keep", action="store_true")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default=None, help="folder for result.json / result.md and the commands' log")
    args = p.parse_args(argv)
    from conftest import VOCAB_WORDS, save_tiny_model

    from dda.io import write_yaml

    words = [w for w in VOCAB_WORDS if w.isalpha()]
    tmp = scratch_dir(args.dir, "dda-search-cli-", args.n, 8192 * 2 + 200)
    if tmp is None:
        return 2
    out = Path(args.out) if args.out else tmp
    out.mkdir(parents=True, exist_ok=True)
    log = out / "commands.log"
    log.write_text("")
    result: dict = {"n": args.n, "k": args.k, "queries": args.queries, "settings": SETTINGS, "steps": {}}
    steps = result["steps"]
    try:
        model = save_tiny_model(tmp / "model")
        write_yaml(tmp / "config.yaml", SETTINGS)
        t0 = time.perf_counter()
        write_documents(tmp / "train.jsonl", args.n, args.seed, words)
        write_documents(tmp / "finetune.jsonl", 2000, args.seed + 1, words)
        rng = np.random.default_rng(args.seed + 2)
        with open(tmp / "queries.jsonl", "w", encoding="utf-8") as fh:
            for q in range(args.queries):
                doc, summ = " ".join(rng.choice(words, 10)), list(rng.choice(words, 3))
                neg = ["China" if summ[0] != "China" else "England", *summ[1:]]
                fh.write(json.dumps({"id": f"q{q}", "prompt": doc, "negative": " ".join(neg),
                                     "positive": " ".join(summ)}) + "\n")  # fmt: skip
        steps["write_data"] = {"seconds": round(time.perf_counter() - t0, 1)}
        common = ["-c", tmp / "config.yaml", "--model", model]
        steps["finetune"] = dda("finetune", "-w", tmp / "ft", "--data", tmp / "finetune.jsonl", *common, log=log)
        work = tmp / "work"
        steps["index"] = dda(
            "index", "-w", work, "--data", tmp / "train.jsonl", "--checkpoints", tmp / "ft" / "checkpoints",
            *common, log=log,
        )  # fmt: skip
        stats = json.loads((work / "features" / "train" / "index.json").read_text(encoding="utf-8"))
        result["dim_per_checkpoint"] = stats["dim"]
        result["checkpoints"] = stats["checkpoints"]
        stores = sorted((work / "features" / "train").glob("*/**/features*.npy"))
        result["store_gb"] = round(sum(f.stat().st_size for f in stores) / 1e9, 2)
        search = ["search", "-w", work, "--queries", tmp / "queries.jsonl", "--k", str(args.k)]
        exact = None
        for backend in [b for b in args.backends.split(",") if b]:
            for run in ("cold", "warm") if backend == "exact" else ("build", "built"):
                if run == "cold":
                    for f in stores:
                        drop_cache(f)
                extra = ["--build"] if run == "build" else []
                res = dda(*search, "--backend", backend, *extra, "--out", tmp / f"s-{backend}-{run}", "-q", log=log)
                found = top_ids(tmp / f"s-{backend}-{run}")
                if backend == "exact" and exact is None:
                    exact = found
                if exact is not None:
                    res["recall_vs_exact"] = recall(found, exact)
                steps[f"search_{backend}_{run}"] = res
                print(f"[search-cli] {backend} {run}: {res}", flush=True)
        index_dir = work / "features" / "index"
        if index_dir.exists():
            result["index_gb"] = {
                d.name: round(sum(f.stat().st_size for f in d.rglob("*") if f.is_file()) / 1e9, 3)
                for d in index_dir.iterdir()
                if d.is_dir()
            }
    finally:
        remove_unless_kept(tmp, args.keep)
    print(json.dumps(result, indent=2))
    save_result(result, str(out / "result.json"), markdown(result))
    print(markdown(result))
    return 0


def markdown(r: dict) -> str:
    s = r["steps"]
    lines = [
        f"`dda` commands over {r['n']:,} documents, {len(r.get('checkpoints', []))} stores x "
        f"{r.get('dim_per_checkpoint', 0):,} float16 dims ({r.get('store_gb')} GB); top-{r['k']} of {r['queries']} "
        "queries. Peak RSS is the command's own process.",
        "",
        "| command | wall s | peak RSS MB | recall@k vs exact |",
        "|---|---|---|---|",
    ]
    for name, v in s.items():
        if "peak_rss_mb" in v:
            lines.append(f"| {name} | {v['seconds']} | {v['peak_rss_mb']} | {v.get('recall_vs_exact', '–')} |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    sys.exit(main())
