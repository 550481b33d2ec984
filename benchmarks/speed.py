#!/usr/bin/env python
"""Speed and memory of gradient features, dda against the floor, the LESS loop and peer libraries.

    python benchmarks/speed.py --n-docs 256 --max-tokens 100 --queries 8 --out runs/speed
    python benchmarks/speed.py --n-docs 64 --out runs/speed-quick          # quick mode

One command, one machine, one method after another. Every method uses the same model (builtin
SmolLM2-135M-Instruct, float32), the same LoRA checkpoint (r=8 on q_proj and v_proj, seeded, B non-zero,
written once under OUT/checkpoint/lora), the same token ids (N real XSum documents tokenized once with dda's
PromptFormatter and the chat template, document + summary cut to --max-tokens, loss on summary tokens) and the
same 2*Q query sequences (Q contrastive queries from held-out rows: negative = the real summary with one
entity swapped, positive = the real summary). Each method runs in a fresh child process (this script with
`--only NAME`) with --threads torch threads, so the peak RSS it reports (ru_maxrss of that child, and of the
child's own subprocesses for Bergson) belongs to that method alone. Model loading is not timed.

Rows (see benchmarks/README.md): exact, floor, dda_index, dda_attribute, per_example_loop, trak,
captum_tracincp, kronfluence (identity strategy), kronfluence_ekfac, dattri_tracin, dattri_grad_dot, bergson,
and the derived dda_end_to_end.
Output: a table, the profile (phases of the rows that record them) and the target checks on stdout;
OUT/speed.json = {"machine": {...}, "config": {...}, "rows": [...], "targets": [...]} and OUT/speed.md (the same
as markdown tables).
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.metadata
import importlib.util
import json
import os
import platform
import re
import resource
import shutil
import signal
import subprocess
import sys
import time
import traceback
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np

from dda.io import write_json, write_text

HERE = Path(__file__).resolve().parent
if str(HERE) not in sys.path:
    sys.path.insert(0, str(HERE))

ROWS = [
    "floor",
    "dda_index",
    "dda_attribute",
    "per_example_loop",
    "trak",
    "captum_tracincp",
    "kronfluence",
    "kronfluence_ekfac",
    "dattri_tracin",
    "dattri_grad_dot",
    "bergson",
]
ORDER = ["exact", *ROWS]
DDA_ROWS = ("dda_index", "dda_attribute", "dda_end_to_end")
PEER_PACKAGES = {
    "trak": "trak",
    "captum_tracincp": "captum",
    "kronfluence": "kronfluence",
    "kronfluence_ekfac": "kronfluence",
    "dattri_tracin": "dattri",
    "dattri_grad_dot": "dattri",
    "bergson": "bergson",
}
BENCH_INSTRUCTION = "Summarize the document in one sentence."
LORA_ALPHA = 16
LORA_B_STD = 0.02
# CEA's canary pairs first (Ladhak et al. 2023), both directions; other entities fall back to a swap with a
# capitalised word from another held-out summary.
CANARY_SWAPS = {
    "England": "China",
    "Australia": "France",
    "London": "Belfast",
    "Wales": "Scotland",
    "China": "England",
    "France": "Australia",
    "Belfast": "London",
    "Scotland": "Wales",
}
# Forwarded from the parent to every child (name of the argparse dest -> flag).
FORWARD = {
    "n_docs": "--n-docs",
    "max_tokens": "--max-tokens",
    "queries": "--queries",
    "out": "--out",
    "threads": "--threads",
    "batch_size": "--batch-size",
    "proj_dim": "--proj-dim",
    "dda_k": "--dda-k",
    "dda_module_dim": "--dda-module-dim",
    "bergson_k": "--bergson-k",
    "lora_r": "--lora-r",
    "seed": "--seed",
}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--n-docs", type=int, default=256, help="training documents (64 = quick mode)")
    p.add_argument("--max-tokens", type=int, default=100, help="tokens per sequence, template+document+summary")
    p.add_argument("--queries", type=int, default=8, help="contrastive queries (each = negative + positive)")
    p.add_argument("--out", default="runs/speed")
    p.add_argument("--threads", type=int, default=2, help="torch threads in every child")
    p.add_argument("--batch-size", type=int, default=8, help="batch size (dda's default)")
    p.add_argument(
        "--proj-dim", type=int, default=4096, help="dense projection size: per_example_loop (LESS), TRAK, dattri_tracin"
    )
    # Two-stage default: 64x64 Kronecker then 256 dims per module stores what k=16 does (15,360 dims for 60
    # modules) with Spearman 0.87 vs exact instead of 0.65; index 1.09x the floor vs 0.83x for k=16 (64 docs, two
    # separate runs, so the ratios carry ~15% run-to-run noise).
    p.add_argument("--dda-k", type=int, default=64, help="dda kronecker projection per side (k*k per module)")
    p.add_argument(
        "--dda-module-dim",
        type=int,
        default=256,
        help="dda two-stage sketch: compress each module's k*k sketch to this many dims (0: keep k*k)",
    )
    p.add_argument("--bergson-k", type=int, default=16, help="Bergson --projection_dim (per side, per module)")
    p.add_argument("--lora-r", type=int, default=8)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument(
        "--methods",
        default="all",
        help=f"comma list from {','.join(ORDER)} (default all; 'exact' is needed for spearman)",
    )
    p.add_argument("--timeout", type=int, default=3600, help="seconds per method before it is stopped")
    p.add_argument("--keep-work", action="store_true", help="keep feature stores and peer outputs in OUT/work")
    p.add_argument("--only", help=argparse.SUPPRESS)  # internal: run one method in this process
    return p.parse_args(argv)


# ------------------------------------------------------------------------------------------------ utilities


def maxrss_mb(children: bool = False) -> float:
    kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    if children:
        kb = max(kb, resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)
    return kb / 1024.0  # Linux reports KiB


def machine_info(threads: int) -> dict[str, Any]:
    cpu = platform.processor() or "unknown"
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    mem_gb = None
    with contextlib.suppress(OSError, ValueError, IndexError):
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal"):
                mem_gb = round(int(line.split()[1]) / 1024**2, 1)
    versions = {}
    for pkg in (
        "torch",
        "transformers",
        "peft",
        "numpy",
        "scipy",
        "traker",
        "captum",
        "kronfluence",
        "dattri",
        "bergson",
    ):
        try:
            versions[pkg] = importlib.metadata.version(pkg)
        except importlib.metadata.PackageNotFoundError:
            versions[pkg] = None
    affinity = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return {
        "cpu_model": cpu,
        "logical_cpus": os.cpu_count(),
        "cpus_available": affinity,
        "torch_threads": threads,
        "mem_total_gb": mem_gb,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "load_avg_at_start": list(os.getloadavg()),
        "versions": versions,
    }


# ------------------------------------------------------------------------------------------ data + checkpoint


def _data_config():
    from dda.config import DataConfig

    return DataConfig(template="chat", instruction=BENCH_INSTRUCTION)


def tokenize_with_budget(tok: Any, prompt: str, responses: list[str], max_tokens: int) -> list[tuple[list, list]]:
    """Tokenize (prompt, response) pairs with dda's PromptFormatter so template + document + summary fit
    `max_tokens`: the summary is capped at a third of the budget (less for tiny budgets), the document takes
    what is left (the same document cut for every response of one prompt)."""
    from dda.data import PromptFormatter

    cfg = _data_config()
    overhead = len(PromptFormatter(tok, cfg).prompt_ids("")[0])
    cap = min(max_tokens // 3, (max_tokens - overhead) // 2)  # summary incl. EOS; tiny budgets share the rest
    cfg = replace(cfg, max_response_tokens=max(1, cap - 1))
    fmt = PromptFormatter(tok, cfg)
    resp = [fmt.response_ids(r)[0] for r in responses]
    rlen = max(len(r) for r in resp)
    budget = max_tokens - overhead - rlen
    while True:
        if budget < 1:
            raise ValueError(
                f"--max-tokens {max_tokens} leaves no room for the document (template {overhead} "
                f"tokens, summary {rlen} tokens)"
            )
        p_ids, _ = PromptFormatter(tok, replace(cfg, max_prompt_tokens=budget)).prompt_ids(prompt)
        excess = len(p_ids) + rlen - max_tokens
        if excess <= 0:
            break
        budget -= excess  # decoding a cut document can re-tokenize a little longer
    return [(p_ids + r, [False] * len(p_ids) + [True] * len(r)) for r in resp]


def make_negative(summary: str, document: str, pool: list[str], offset: int = 0) -> tuple[str, str, str] | None:
    """The real summary with one entity swapped: a CEA canary if the summary has one, else the first
    capitalised word (not the sentence's first word) swapped with a capitalised word of another held-out
    summary that neither text contains."""
    from dda.bench.canary import contains_word, swap_word

    lead = re.match(r"\s*([A-Za-z]+)", summary)
    first = lead.group(1) if lead else ""
    cands = [w for w in re.findall(r"\b[A-Z][a-z]{2,}\b", summary) if w != first]
    for w in cands:
        dst = CANARY_SWAPS.get(w)
        if dst and not contains_word(document, dst) and not contains_word(summary, dst):
            return swap_word(summary, w, dst), w, dst
    rotated = pool[offset % len(pool) :] + pool[: offset % len(pool)] if pool else []
    for w in cands:
        for dst in rotated:
            if dst != w and not contains_word(document, dst) and not contains_word(summary, dst):
                return swap_word(summary, w, dst), w, dst
    return None


def prepare(args: argparse.Namespace) -> dict[str, Any]:
    """Tokenize the data once and write the LoRA checkpoint once (both reused when the settings match)."""
    import torch

    from dda.config import ModelConfig
    from dda.data import read_records
    from dda.models import load_model

    out = Path(args.out)
    meta = {
        "n_docs": args.n_docs,
        "max_tokens": args.max_tokens,
        "queries": args.queries,
        "seed": args.seed,
        "lora_r": args.lora_r,
        "instruction": BENCH_INSTRUCTION,
        "lora_alpha": LORA_ALPHA,
        "lora_b_std": LORA_B_STD,
        "format": 3,
    }
    tok_path = out / "data" / "tokens.json"
    ckpt_dir = out / "checkpoint" / "lora"
    if tok_path.exists() and (ckpt_dir / "adapter_config.json").exists():
        stored = json.loads(tok_path.read_text())
        if stored.get("meta") == meta:
            return stored["summary"]
    model, tok = load_model(ModelConfig(threads=args.threads))
    rows, _ = read_records("builtin:xsum")
    if args.n_docs + args.queries > len(rows):
        raise ValueError(f"builtin:xsum has {len(rows)} rows; need n_docs + queries <= that")
    train_rows, held = rows[: args.n_docs], rows[args.n_docs :]
    train = [tokenize_with_budget(tok, r["document"], [r["summary"]], args.max_tokens)[0] for r in train_rows]
    pool = sorted({w for r in held[:200] for w in re.findall(r"\b[A-Z][a-z]{3,}\b", r["summary"])})
    pool = [str(w) for w in np.random.default_rng(args.seed).permutation(pool)]  # seeded, not alphabetical
    queries = []
    for r in held:
        swap = make_negative(r["summary"], r["document"], pool, offset=7 * len(queries))
        if swap is None:
            continue
        neg_text, src, dst = swap
        (neg_ids, neg_mask), (pos_ids, pos_mask) = tokenize_with_budget(
            tok, r["document"], [neg_text, r["summary"]], args.max_tokens
        )
        if neg_ids == pos_ids:  # the swap fell outside the kept summary tokens
            continue
        queries.append(
            {
                "id": str(r["id"]),
                "swap": [src, dst],
                "negative": neg_text,
                "positive": r["summary"],
                "neg": [neg_ids, neg_mask],
                "pos": [pos_ids, pos_mask],
            }
        )
        if len(queries) == args.queries:
            break
    if len(queries) < args.queries:
        raise ValueError(f"only {len(queries)} contrastive queries could be built from held-out rows")

    # One LoRA checkpoint: peft init (seeded) plus a seeded non-zero B, so gradients w.r.t. A are non-zero too.
    from peft import LoraConfig, get_peft_model

    torch.manual_seed(args.seed)
    lcfg = LoraConfig(
        r=args.lora_r,
        lora_alpha=LORA_ALPHA,
        lora_dropout=0.0,
        target_modules=["q_proj", "v_proj"],
        bias="none",
        task_type="CAUSAL_LM",
    )
    peft_model = get_peft_model(model, lcfg)
    gen = torch.Generator().manual_seed(args.seed + 1)
    with torch.no_grad():
        for name, p in sorted(peft_model.named_parameters()):
            if "lora_B" in name:
                p.copy_(torch.randn(p.shape, generator=gen) * LORA_B_STD)
    shutil.rmtree(ckpt_dir, ignore_errors=True)
    peft_model.save_pretrained(str(ckpt_dir))
    write_json(
        ckpt_dir / "bench_checkpoint.json",
        {
            "seed": args.seed,
            "r": args.lora_r,
            "alpha": LORA_ALPHA,
            "target_modules": ["q_proj", "v_proj"],
            "lora_B_init": f"N(0, {LORA_B_STD}^2), seeded",
        },
    )
    lengths = [len(ids) for ids, _ in train]
    summary = {
        "n_docs": len(train),
        "queries": len(queries),
        "train_tokens": int(sum(lengths)),
        "mean_tokens": float(np.mean(lengths)),
        "max_tokens_seen": int(max(lengths)),
        "mean_summary_tokens": float(np.mean([sum(m) for _, m in train])),
        "query_swaps": [q["swap"] for q in queries],
    }
    write_json(
        tok_path,
        {
            "meta": meta,
            "summary": summary,
            "train": {
                "ids": [str(r["id"]) for r in train_rows],
                "input_ids": [ids for ids, _ in train],
                "response_mask": [[int(x) for x in m] for _, m in train],
            },
            "queries": [
                {
                    **q,
                    "neg": [q["neg"][0], [int(x) for x in q["neg"][1]]],
                    "pos": [q["pos"][0], [int(x) for x in q["pos"][1]]],
                }
                for q in queries
            ],
        },
    )
    return summary


def load_bench(args: argparse.Namespace):
    from peers import Bench

    from dda.config import ModelConfig
    from dda.data import Tokenized
    from dda.models import discover_checkpoints, load_model

    out = Path(args.out)
    stored = json.loads((out / "data" / "tokens.json").read_text())
    model, tok = load_model(ModelConfig(threads=args.threads))
    train = Tokenized(
        stored["train"]["input_ids"], [[bool(x) for x in m] for m in stored["train"]["response_mask"]], 0, 0
    )
    qs = stored["queries"]
    seqs = [q["neg"] for q in qs] + [q["pos"] for q in qs]
    queries = Tokenized([s[0] for s in seqs], [[bool(x) for x in s[1]] for s in seqs], 0, 0)
    ckpt = discover_checkpoints(out / "checkpoint" / "lora")[0]
    pad_id = tok.pad_token_id if tok.pad_token_id is not None else (tok.eos_token_id or 0)
    return Bench(args=args, out=out, model=model, tokenizer=tok, train=train, queries=queries, ckpt=ckpt, pad_id=pad_id)


# ------------------------------------------------------------------------------------------- dda-side methods


def _feature_config(args: argparse.Namespace):
    from dda.config import FeatureConfig

    # layers="all": the same gradient space as `exact` and the peers (q/v of every layer), not dda's default
    # last third, whose shorter backward pass would flatter the timing.
    return FeatureConfig(
        modules=["q_proj", "v_proj"],
        layers="all",
        projection="kronecker",
        proj_dim=args.dda_k,
        module_dim=args.dda_module_dim or None,
        batch_size=args.batch_size,
        seed=args.seed,
        dtype="float32",
    )


def run_floor(b):
    """Plain HF training step cost: model(**batch, labels=...).loss.backward() with the LoRA weights trainable,
    dda's length-sorted batches of 8 (the least padding, so the lowest floor)."""
    from peers import MethodResult, lora_model, pad_rows

    model = lora_model(b, trainable=True)
    model.train()
    phases = {"forward": 0.0, "backward": 0.0}
    t0 = time.perf_counter()
    for rows in b.batches():
        ids, attn, labels = pad_rows(b.train, rows, b.pad_id)
        ta = time.perf_counter()
        loss = model(input_ids=ids, attention_mask=attn, labels=labels).loss
        tb = time.perf_counter()
        loss.backward()
        phases["forward"] += tb - ta
        phases["backward"] += time.perf_counter() - tb
        model.zero_grad(set_to_none=True)
    t1 = time.perf_counter()
    tokens = int(b.lengths().sum())
    return MethodResult(
        seconds=t1 - t0,
        note="HF forward+backward, LoRA trainable, no per-example gradients",
        phases=phases,
        extra={"examples_per_s": b.n_train / (t1 - t0), "tokens_per_s": tokens / (t1 - t0)},
    )


def run_dda_index(b):
    """dda's Indexer: hook-based per-example gradients of the full weight W of every q_proj and v_proj (the
    LoRA-adapted modules, W0 + BA), kronecker projection k x k per module, one forward + one backward per batch."""
    from peers import MethodResult

    from dda.features.index import Indexer

    root = b.work / "dda" / "train"
    shutil.rmtree(root, ignore_errors=True)
    t0 = time.perf_counter()
    indexer = Indexer(b.model, b.tokenizer, _feature_config(b.args))
    store = indexer.featurize(b.ckpt, b.train, root)
    t1 = time.perf_counter()
    tokens = int(b.lengths().sum())
    dim = int(store.meta["dim"])
    return MethodResult(
        seconds=t1 - t0,
        note=f"kronecker k={b.args.dda_k}"
        + (f" -> {b.args.dda_module_dim} per module" if b.args.dda_module_dim else "")
        + f", {len(indexer.modules)} modules, dim {dim}, float32 store",
        extra={
            "examples_per_s": b.n_train / (t1 - t0),
            "tokens_per_s": tokens / (t1 - t0),
            "dim": dim,
            "compute_seconds": indexer.seconds,
        },
        phases=dict(indexer.phase_seconds) | {"setup": (t1 - t0) - indexer.seconds},
    )


def run_dda_attribute(b):
    """Query featurization (negatives and positives, two stores, as dda's Attributor does) + dot_scores against
    the stored training features written by dda_index."""
    from peers import MethodResult

    from dda.features.index import Indexer
    from dda.features.store import FeatureStore
    from dda.scoring.base import dot_scores

    train_root = b.work / "dda" / "train"
    if not (train_root / "meta.json").exists():
        raise FileNotFoundError(f"{train_root}: run dda_index first (it writes the training features)")
    q = len(b.queries) // 2
    neg = type(b.queries)(b.queries.input_ids[:q], b.queries.response_mask[:q], 0, 0)
    pos = type(b.queries)(b.queries.input_ids[q:], b.queries.response_mask[q:], 0, 0)
    for side in ("neg", "pos"):
        shutil.rmtree(b.work / "dda" / side, ignore_errors=True)
    t0 = time.perf_counter()
    indexer = Indexer(b.model, b.tokenizer, _feature_config(b.args))
    train = FeatureStore.read(train_root).features
    qn = indexer.featurize(b.ckpt, neg, b.work / "dda" / "neg").features
    qp = indexer.featurize(b.ckpt, pos, b.work / "dda" / "pos").features
    t_feat = time.perf_counter()
    s_neg = dot_scores(train, np.asarray(qn))
    s_pos = dot_scores(train, np.asarray(qp))
    t1 = time.perf_counter()
    scores = np.concatenate([s_neg, s_pos]).astype(np.float64)
    return MethodResult(
        seconds=t1 - t0,
        scores=scores,
        phases={"query_features": t_feat - t0, "dot_scores": t1 - t_feat},
        note=f"{q} queries x (negative, positive) featurized + dot_scores over the stored features",
    )


def run_per_example_loop(b):
    """The LESS recipe on CPU: one forward+backward per example (HF loss) on the LoRA parameters, flattened
    gradients, dense Gaussian projection to --proj-dim. The matrix is generated once, blockwise from seeds, and
    applied to all gradients together (regenerating it per example would take minutes per example on CPU), so
    the raw gradients of all N + 2Q sequences are held in memory until the projection."""
    import torch
    from peers import MethodResult, lora_model, pad_rows

    model = lora_model(b, trainable=True)
    params = [p for _, p in model.named_parameters() if p.requires_grad]
    n_params = sum(p.numel() for p in params)
    n, nq, k = b.n_train, len(b.queries), b.args.proj_dim
    t0 = time.perf_counter()
    grads = torch.empty(n + nq, n_params, dtype=torch.float32)

    def one(data, row: int, slot: int) -> None:
        ids, attn, labels = pad_rows(data, [row], b.pad_id)
        loss = model(input_ids=ids, attention_mask=attn, labels=labels).loss
        gs = torch.autograd.grad(loss, params)
        grads[slot] = torch.cat([g.reshape(-1) for g in gs])

    for i in range(n):
        one(b.train, i, i)
    t_train = time.perf_counter()
    for j in range(nq):
        one(b.queries, j, n + j)
    t_query = time.perf_counter()
    feats = torch.zeros(n + nq, k, dtype=torch.float32)
    cols = max(1, (1 << 25) // k)
    for blk, start in enumerate(range(0, n_params, cols)):
        stop = min(n_params, start + cols)
        gen = torch.Generator().manual_seed(b.args.seed * 1_000_003 + blk)
        proj = torch.randn(stop - start, k, generator=gen) / k**0.5
        feats += grads[:, start:stop] @ proj
    t_proj = time.perf_counter()
    scores = (feats[n:].double() @ feats[:n].double().T).numpy()
    t1 = time.perf_counter()
    return MethodResult(
        seconds=t1 - t0,
        scores=scores,
        phases={
            "train_grads": t_train - t0,
            "query_grads": t_query - t_train,
            "projection": t_proj - t_query,
            "scores": t1 - t_proj,
        },
        note=f"{n_params} LoRA params -> Gaussian {k}; raw gradients held until projection",
        extra={"examples_per_s": n / (t_train - t0)},
    )


def run_exact(b):
    """Unprojected per-example gradients in both spaces, from one pass of dda's featurizer with IdentityProjector:
    full W of q_proj/v_proj (dda's space) and lora_A/lora_B weights (the peers' space). Training features are
    streamed batch by batch into dot products with the query features (the full-W space has ~13M dims).
    One training example is cross-checked against autograd in both spaces."""
    import torch
    from peers import LORA_SUFFIXES, MethodResult

    from dda.features.capture import GradientFeaturizer, freeze, pad_batch, per_example_loss, select_modules
    from dda.features.projection import IdentityProjector
    from dda.models import applied

    n, nq = b.n_train, len(b.queries)
    t0 = time.perf_counter()
    with applied(b.model, b.ckpt) as m:
        freeze(m)
        full = select_modules(m, ["q_proj", "v_proj"])
        lora = [name for name, _ in m.named_modules() if name.endswith(LORA_SUFFIXES)]
        feat = GradientFeaturizer(m, full + lora, IdentityProjector())
        split = sum(o * i for o, i in (feat.shapes[name] for name in full))
        device = next(m.parameters()).device

        def features(data, rows) -> torch.Tensor:
            return feat(
                *pad_batch([data.input_ids[r] for r in rows], [data.response_mask[r] for r in rows], b.pad_id, device)
            )

        qf = torch.cat(
            [
                features(b.queries, list(range(s, min(nq, s + b.args.batch_size))))
                for s in range(0, nq, b.args.batch_size)
            ]
        )
        s_full = np.zeros((nq, n))
        s_lora = np.zeros((nq, n))
        for rows in b.batches():
            f = features(b.train, rows)
            s_full[:, rows] = (qf[:, :split] @ f[:, :split].T).double().numpy()
            s_lora[:, rows] = (qf[:, split:] @ f[:, split:].T).double().numpy()
            del f
        t1 = time.perf_counter()

        # Cross-check one example against autograd: d loss / d W0 (= d loss / d W for W = W0 + BA) and d / d A, B.
        mods = dict(m.named_modules())
        params = [
            mods[name].base_layer.weight if hasattr(mods[name], "base_layer") else mods[name].weight
            for name in full + lora
        ]
        row = [int(b.batches()[0][0])]
        hook = features(b.train, row)[0]
        for p in params:
            p.requires_grad_(True)
        ids, attn, resp = pad_batch(
            [b.train.input_ids[r] for r in row], [b.train.response_mask[r] for r in row], b.pad_id, device
        )
        auto = torch.cat([g.reshape(-1) for g in torch.autograd.grad(per_example_loss(m, ids, attn, resp)[0], params)])
        for p in params:
            p.requires_grad_(False)
        err_full = float((auto[:split] - hook[:split]).norm() / auto[:split].norm())
        err_lora = float((auto[split:] - hook[split:]).norm() / auto[split:].norm())
    return MethodResult(
        seconds=t1 - t0,
        scores=s_full,
        variants={"lora": s_lora},
        note=(
            f"IdentityProjector: full-W dim {split}, LoRA dim {qf.shape[1] - split}; "
            f"hook vs autograd rel. error full {err_full:.1e}, LoRA {err_lora:.1e}"
        ),
        extra={
            "dim_full_w": split,
            "dim_lora": int(qf.shape[1] - split),
            "hook_vs_autograd_rel_err": {"full_w": err_full, "lora": err_lora},
        },
    )


def runner(name: str):
    if name in ("floor", "dda_index", "dda_attribute", "per_example_loop", "exact"):
        return globals()[f"run_{name}"]
    from peers import RUNNERS

    return RUNNERS[name]


# ------------------------------------------------------------------------------------------------- child side


def child(args: argparse.Namespace) -> int:
    name = args.only
    out = Path(args.out)
    row: dict[str, Any] = {"name": name, "status": "failed", "seconds": None, "note": ""}
    try:
        import torch

        torch.set_num_threads(args.threads)
        if name == "prepare":
            t0 = time.perf_counter()
            summary = prepare(args)
            row.update(status="ok", seconds=time.perf_counter() - t0, summary=summary)
            return 0
        pkg = PEER_PACKAGES.get(name)
        if pkg and importlib.util.find_spec(pkg) is None:
            row.update(
                status="not_installed",
                note=f"python package '{pkg}' not installed (pip install --no-deps -r requirements-bench.txt)",
            )
            return 0
        t0 = time.perf_counter()
        bench = load_bench(args)
        row["setup_seconds"] = time.perf_counter() - t0
        row["rss_after_setup_mb"] = maxrss_mb()
        res = runner(name)(bench)
        row.update(status="ok", seconds=res.seconds, note=res.note, phases=res.phases, **res.extra)
        scores_dir = out / "scores"
        scores_dir.mkdir(parents=True, exist_ok=True)
        if res.scores is not None:
            np.save(scores_dir / f"{name}.npy", np.asarray(res.scores, dtype=np.float64))
        for variant, mat in res.variants.items():
            np.save(scores_dir / f"{name}__{variant}.npy", np.asarray(mat, dtype=np.float64))
        row["variants"] = sorted(res.variants)
        if not args.keep_work and name not in ("dda_index",):
            shutil.rmtree(bench.work / name, ignore_errors=True)
        return 0
    except Exception as err:  # a method that cannot run is reported with its reason, never with a number
        traceback.print_exc()
        row.update(status="failed", seconds=None, note=f"{type(err).__name__}: {err}"[:800])
        return 1
    finally:
        row["peak_rss_mb"] = round(maxrss_mb(children=True), 1)
        write_json(out / "rows" / f"{name}.json", row)


# ------------------------------------------------------------------------------------------------ parent side


def run_child(args: argparse.Namespace, name: str) -> dict[str, Any]:
    out = Path(args.out)
    row_path = out / "rows" / f"{name}.json"
    row_path.unlink(missing_ok=True)
    for old in (out / "scores").glob(f"{name}.npy"):
        old.unlink()
    for old in (out / "scores").glob(f"{name}__*.npy"):
        old.unlink()
    cmd = [sys.executable, str(Path(__file__).resolve()), "--only", name]
    for dest, flag in FORWARD.items():
        if getattr(args, dest) is not None:  # an unset option keeps the child's default
            cmd += [flag, str(getattr(args, dest))]
    if args.keep_work:
        cmd.append("--keep-work")
    env = dict(os.environ)
    for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS"):
        env[var] = str(args.threads)
    env.setdefault("TOKENIZERS_PARALLELISM", "false")
    env.setdefault("HF_HUB_OFFLINE", "1")
    log = out / "logs" / f"{name}.log"
    log.parent.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    with open(log, "w") as fh:
        proc = subprocess.Popen(cmd, stdout=fh, stderr=subprocess.STDOUT, env=env, start_new_session=True)
        try:
            rc = proc.wait(timeout=args.timeout)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)  # the child's own session: it and its subprocesses only
            proc.wait()
            return {
                "name": name,
                "status": "timeout",
                "seconds": None,
                "peak_rss_mb": None,
                "note": f"stopped after --timeout {args.timeout} s",
            }
    wall = time.perf_counter() - t0
    if row_path.exists():
        row = json.loads(row_path.read_text())
    else:
        tail = " | ".join(log.read_text(errors="replace").strip().splitlines()[-4:])
        why = " (SIGKILL: on Linux usually the kernel's OOM killer, see dmesg)" if rc == -signal.SIGKILL else ""
        row = {
            "name": name,
            "status": "failed",
            "seconds": None,
            "peak_rss_mb": None,
            "note": f"child exited {rc}{why} without a result: {tail}"[:800],
        }
    row["process_wall_seconds"] = round(wall, 2)
    return row


def spearman(a: np.ndarray, b: np.ndarray) -> float | None:
    from scipy.stats import spearmanr

    a, b = np.asarray(a, dtype=np.float64).ravel(), np.asarray(b, dtype=np.float64).ravel()
    if a.shape != b.shape or a.size < 3 or np.ptp(a) == 0 or np.ptp(b) == 0:
        return None
    return float(spearmanr(a, b).statistic)


def add_agreement(rows: list[dict[str, Any]], out: Path, n_queries: int) -> None:
    """spearman_vs_exact: rank agreement of a method's contrastive (negative - positive) score matrix with the
    exact one in the method's own gradient space: full W of q_proj/v_proj for dda, LoRA parameters otherwise."""
    scores = out / "scores"

    def load(name: str) -> np.ndarray | None:
        path = scores / f"{name}.npy"
        return np.load(path) if path.exists() else None

    def contrast(raw: np.ndarray) -> np.ndarray:
        return raw[:n_queries] - raw[n_queries:]

    ref = {"full_w": load("exact"), "lora": load("exact__lora")}
    by_name = {r["name"]: r for r in rows}
    for row in rows:
        name = row["name"]
        space = "full_w" if name in DDA_ROWS or name == "exact" else "lora"
        row["exact_space"] = space
        row.setdefault("spearman_vs_exact", None)
        src = "dda_attribute" if name in DDA_ROWS else name
        raw = load(src) if row.get("status") == "ok" else None
        if raw is None or ref[space] is None:
            continue
        if name == "exact":
            row["spearman_vs_exact"] = 1.0
            if ref["lora"] is not None:
                row["spearman_full_w_vs_lora_exact"] = spearman(contrast(ref["full_w"]), contrast(ref["lora"]))
            continue
        if raw.shape != ref[space].shape:
            row["note"] = (row.get("note", "") + f"; score shape {raw.shape} != exact {ref[space].shape}").strip("; ")
            continue
        row["spearman_vs_exact"] = spearman(contrast(raw), contrast(ref[space]))
        row["spearman_per_output_vs_exact"] = spearman(raw, ref[space])
        if name in DDA_ROWS and ref["lora"] is not None:
            row["spearman_vs_exact_lora"] = spearman(contrast(raw), contrast(ref["lora"]))
        for variant in row.get("variants", []):
            mat = load(f"{src}__{variant}")
            if mat is not None and mat.shape == ref[space].shape:
                row.setdefault("spearman_variants", {})[variant] = spearman(contrast(mat), contrast(ref[space]))
    if "dda_index" in by_name and "dda_attribute" in by_name:
        by_name["dda_index"]["note"] = (
            by_name["dda_index"].get("note", "") + "; spearman from dda_attribute's scores on these features"
        ).strip("; ")


def derived_rows(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    by_name = {r["name"]: r for r in rows}
    idx, att = by_name.get("dda_index"), by_name.get("dda_attribute")
    if idx and att and idx.get("status") == "ok" and att.get("status") == "ok":
        return [
            {
                "name": "dda_end_to_end",
                "status": "ok",
                "seconds": idx["seconds"] + att["seconds"],
                "peak_rss_mb": max(idx["peak_rss_mb"] or 0, att["peak_rss_mb"] or 0),
                "note": "derived: dda_index + dda_attribute (comparable to the end-to-end peer rows)",
            }
        ]
    return []


def print_table(rows: list[dict[str, Any]], machine: dict[str, Any]) -> None:
    def fmt(x: Any, spec: str) -> str:
        return "-" if x is None else format(x, spec)

    header = ["method", "status", "seconds", "x floor", "peak RSS MB", "spearman", "note"]
    body = [
        [
            r["name"],
            r.get("status", ""),
            fmt(r.get("seconds"), ".1f"),
            fmt(r.get("ratio_to_floor"), ".2f"),
            fmt(r.get("peak_rss_mb"), ".0f"),
            fmt(r.get("spearman_vs_exact"), ".3f"),
            (r.get("note") or "")[:90],
        ]
        for r in rows
    ]
    title = f"{machine['cpu_model']} | {machine['cpus_available']} cpus | torch threads {machine['torch_threads']}"
    try:
        from rich.console import Console
        from rich.table import Table

        table = Table(title=title)
        for h in header:
            table.add_column(h, overflow="fold")
        for line in body:
            table.add_row(*line)
        Console(width=200).print(table)
    except ImportError:
        print(title)
        widths = [max(len(h), *(len(line[i]) for line in body)) for i, h in enumerate(header)]
        print("  ".join(h.ljust(w) for h, w in zip(header, widths, strict=True)))
        for line in body:
            print("  ".join(c.ljust(w) for c, w in zip(line, widths, strict=True)))


def profile_lines(rows: list[dict[str, Any]]) -> list[str]:
    """Where each method's time went (the rows that record phases), seconds and share of the row's time."""
    lines = []
    for r in rows:
        phases, total = r.get("phases") or {}, r.get("seconds")
        if not phases or not total:
            continue
        parts = ", ".join(f"{k} {v:.1f} s ({100 * v / total:.0f}%)" for k, v in phases.items())
        lines.append(f"{r['name']} ({total:.1f} s): {parts}")
    return lines


def target_checks(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Issue #4's speed targets, evaluated on this run's rows; a check whose rows are missing or failed is left out."""
    ok = {r["name"]: r for r in rows if r.get("status") == "ok" and r.get("seconds") is not None}
    idx, e2e, floor = ok.get("dda_index"), ok.get("dda_end_to_end"), ok.get("floor")
    peers = [n for n in ok if n in PEER_PACKAGES]
    checks = []

    def add(name: str, value: Any, target: str, met: bool | None) -> None:
        checks.append({"check": name, "value": value, "target": target, "met": met})

    if idx and floor:
        add(
            "dda_index time / floor",
            round(idx["seconds"] / floor["seconds"], 3),
            "<= 1.15",
            idx["seconds"] <= 1.15 * floor["seconds"],
        )
        add(
            "dda_index peak RSS / floor",
            round(idx["peak_rss_mb"] / floor["peak_rss_mb"], 3),
            "<= 1.5",
            idx["peak_rss_mb"] <= 1.5 * floor["peak_rss_mb"],
        )
    if e2e:
        for n in peers:
            want = 3.0 if n in ("trak", "kronfluence", "kronfluence_ekfac") else 1.0
            speedup = ok[n]["seconds"] / e2e["seconds"]
            add(f"{n} time / dda end to end", round(speedup, 2), f">= {want:g}", speedup >= want)
            theirs, ours = ok[n].get("spearman_vs_exact"), e2e.get("spearman_vs_exact")
            if theirs is not None and ours is not None:
                add(f"dda spearman vs {n}'s", f"{ours:.3f} vs {theirs:.3f}", ">=", ours >= theirs - 1e-9)
    return checks


def write_markdown(
    path: Path,
    rows: list[dict[str, Any]],
    machine: dict[str, Any],
    config: dict[str, Any],
    checks: list[dict[str, Any]],
) -> None:
    def fmt(x: Any, spec: str) -> str:
        return "–" if x is None else format(x, spec)

    lines = [
        f"# Gradient-feature speed ({config['n_docs']} documents x {config['max_tokens']} tokens, "
        f"{config['queries']} queries)",
        "",
        f"Machine: {machine['cpu_model']}, {machine['cpus_available']} CPUs, torch threads "
        f"{machine['torch_threads']}, {machine['mem_total_gb']} GB; load average at start "
        f"{machine['load_avg_at_start'][0]:.2f}.",
        "",
        "| method | status | seconds | x floor | peak RSS MB | Spearman vs exact | note |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['name']} | {r.get('status', '')} | {fmt(r.get('seconds'), '.1f')} | "
            f"{fmt(r.get('ratio_to_floor'), '.2f')} | {fmt(r.get('peak_rss_mb'), '.0f')} | "
            f"{fmt(r.get('spearman_vs_exact'), '.3f')} | {(r.get('note') or '').replace('|', '/')[:160]} |"
        )
    lines += ["", "## Profile", ""] + [f"- {line}" for line in profile_lines(rows)]
    lines += ["", "## Targets (issue #4)", "", "| check | value | target | met |", "|---|---|---|---|"]
    lines += [f"| {c['check']} | {c['value']} | {c['target']} | {c['met']} |" for c in checks]
    write_text(path, "\n".join(lines) + "\n")


def orchestrate(args: argparse.Namespace) -> int:
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    wanted = ORDER if args.methods == "all" else [m.strip() for m in args.methods.split(",") if m.strip()]
    unknown = sorted(set(wanted) - set(ORDER))
    if unknown:
        print(f"unknown methods {unknown}; known: {', '.join(ORDER)}", file=sys.stderr)
        return 2
    if "dda_attribute" in wanted and "dda_index" not in wanted and not (out / "work" / "dda" / "train").exists():
        wanted = ["dda_index" if m == "dda_attribute" else m for m in wanted] + ["dda_attribute"]
    names = [m for m in ORDER if m in wanted]
    machine = machine_info(args.threads)
    print(f"[speed] preparing data and checkpoint under {out}", flush=True)
    prep = run_child(args, "prepare")
    if prep.get("status") != "ok":
        print(f"[speed] prepare failed: {prep.get('note')} (log: {out / 'logs' / 'prepare.log'})", file=sys.stderr)
        return 1
    rows = []
    for name in names:
        print(f"[speed] {name} ...", flush=True)
        row = run_child(args, name)
        print(
            f"[speed] {name}: {row.get('status')} {fmt_seconds(row.get('seconds'))} "
            f"peak {row.get('peak_rss_mb')} MB {('- ' + row['note'][:160]) if row.get('status') != 'ok' else ''}",
            flush=True,
        )
        rows.append(row)
    rows += derived_rows(rows)
    add_agreement(rows, out, args.queries)
    floor = next((r["seconds"] for r in rows if r["name"] == "floor" and r.get("status") == "ok"), None)
    for r in rows:
        r["ratio_to_floor"] = (r["seconds"] / floor) if (floor and r.get("seconds") is not None) else None
        for key in ("seconds", "ratio_to_floor", "spearman_vs_exact"):
            if isinstance(r.get(key), float):
                r[key] = round(r[key], 4)
    machine["load_avg_at_end"] = list(os.getloadavg())
    config = {k: getattr(args, k) for k in FORWARD} | {
        "timeout": args.timeout,
        "data": prep.get("summary"),
        "instruction": BENCH_INSTRUCTION,
        "lora_alpha": LORA_ALPHA,
        "lora_b_std": LORA_B_STD,
    }
    ordered = [
        {
            k: r.get(k)
            for k in ("name", "seconds", "peak_rss_mb", "ratio_to_floor", "spearman_vs_exact", "status", "note")
        }
        | {
            k: v
            for k, v in r.items()
            if k not in ("name", "seconds", "peak_rss_mb", "ratio_to_floor", "spearman_vs_exact", "status", "note")
        }
        for r in rows
    ]
    checks = target_checks(ordered)
    write_json(out / "speed.json", {"machine": machine, "config": config, "rows": ordered, "targets": checks})
    write_markdown(out / "speed.md", ordered, machine, config, checks)
    print_table(ordered, machine)
    for line in profile_lines(ordered):
        print(f"[profile] {line}")
    for c in checks:
        print(f"[target] {c['check']}: {c['value']} (target {c['target']}): {'met' if c['met'] else 'NOT met'}")
    print(f"[speed] wrote {out / 'speed.json'}")
    if not args.keep_work:
        shutil.rmtree(out / "work", ignore_errors=True)
    return 0


def fmt_seconds(x: Any) -> str:
    return "-" if x is None else f"{x:.1f}s"


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.only:
        return child(args)
    return orchestrate(args)


if __name__ == "__main__":
    sys.exit(main())
