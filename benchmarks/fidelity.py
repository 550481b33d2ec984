#!/usr/bin/env python
"""Fidelity for the bytes: how closely each projection setting's scores agree with exact gradient dot products,
against the bytes each training row costs in the store and the time to index it.

    python benchmarks/fidelity.py --n-docs 48 --queries 8 --out runs/fidelity
    python benchmarks/fidelity.py --n-docs 8 --queries 2 --settings 16,64/256 --out runs/fidelity-tiny   # check

The same data and checkpoint as `benchmarks/speed.py` (SmolLM2-135M-Instruct, one seeded LoRA checkpoint on
q_proj/v_proj, real XSum documents, contrastive queries with one entity swapped; written once under OUT and
reused). Exact scores: per-example gradients of the full weight W of every q_proj and v_proj (identity
projection, ~13.3M dims, streamed into dot products, never stored). Then, per setting, dda's Indexer writes the
training features with that projection and scores the same queries. Agreement with exact, as Spearman over all
(query, document) pairs of the contrastive score (negative minus positive output):
    raw     plain dot products (TracIn/grad_dot's reading),
    module  every module's slice scaled to unit norm on both sides first (DDA's default, normalize=module),
plus the mean over queries of the per-query Spearman (how well each query's ranking is kept).
Settings: K (kronecker K x K per module), K/M (K x K, then a seeded Gaussian to M dims per module: the two-stage
sketch, dda's default is 64/256), dense:D (one JL projection of the whole gradient to D dims).
Bytes per row are per checkpoint: a DDA store over N epochs holds N + 1 of them. Benchmark AUC per setting comes
from `dda bench` runs (printed as commands; too slow for this script).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

HERE = Path(__file__).resolve().parent
if str(HERE) not in sys.path:
    sys.path.insert(0, str(HERE))

MODULES = ["q_proj", "v_proj"]


def parse_settings(text: str) -> list[dict[str, Any]]:
    out = []
    for item in [s.strip() for s in text.split(",") if s.strip()]:
        if item.startswith("dense:"):
            out.append(
                {"name": item, "projection": "dense", "proj_dim": int(item.split(":", 1)[1]), "module_dim": None}
            )
        else:
            k, _, m = item.partition("/")
            out.append({"name": item, "projection": "kronecker", "proj_dim": int(k), "module_dim": int(m) if m else 0})
    return out


def exact_scores(b: Any) -> tuple[np.ndarray, np.ndarray]:
    """(raw, module-normalised) exact contrastive scores, (Q, n), from unprojected full-W gradients streamed
    batch by batch (a batch of 8 rows of ~13.3M float32 dims at a time)."""
    import torch

    from dda.features.capture import GradientFeaturizer, freeze, pad_batch, select_modules
    from dda.features.projection import IdentityProjector
    from dda.models import applied
    from dda.scoring.base import module_normalized

    q = len(b.queries) // 2
    raw, mod = np.zeros((q, b.n_train)), np.zeros((q, b.n_train))
    with applied(b.model, b.ckpt) as m:
        freeze(m)
        names = select_modules(m, MODULES)
        feat = GradientFeaturizer(m, names, IdentityProjector())
        blocks = [o * i for o, i in (feat.shapes[n] for n in names)]
        device = next(m.parameters()).device

        def features(data: Any, rows: list[int]) -> torch.Tensor:
            return feat(
                *pad_batch([data.input_ids[r] for r in rows], [data.response_mask[r] for r in rows], b.pad_id, device)
            )

        qf = torch.cat(
            [
                features(b.queries, list(range(s, min(2 * q, s + b.args.batch_size))))
                for s in range(0, 2 * q, b.args.batch_size)
            ]
        )
        qc = (qf[:q] - qf[q:]).numpy()
        qn = module_normalized(qc, blocks)
        for rows in b.batches():
            f = features(b.train, list(rows)).numpy()
            raw[:, rows] = qc.astype(np.float64) @ f.astype(np.float64).T
            mod[:, rows] = qn @ module_normalized(f, blocks).T
            del f
    return raw, mod


def setting_scores(b: Any, s: dict[str, Any], work: Path) -> dict[str, Any]:
    import shutil

    from dda.config import FeatureConfig
    from dda.features.index import Indexer
    from dda.features.store import module_blocks
    from dda.scoring.base import dot_scores

    cfg = FeatureConfig(
        modules=MODULES,
        layers="all",
        projection=s["projection"],
        proj_dim=s["proj_dim"],
        module_dim=s["module_dim"] or None,
        batch_size=b.args.batch_size,
        seed=b.args.seed,
        dtype="float32",
    )
    root = work / s["name"].replace("/", "-").replace(":", "-")
    shutil.rmtree(root, ignore_errors=True)
    indexer = Indexer(b.model, b.tokenizer, cfg)
    t0 = time.perf_counter()
    train = indexer.featurize(b.ckpt, b.train, root / "train")
    index_s = time.perf_counter() - t0
    queries = np.asarray(indexer.featurize(b.ckpt, b.queries, root / "queries").features, dtype=np.float32)
    q = len(b.queries) // 2
    qc = queries[:q] - queries[q:]
    x = np.asarray(train.features)
    blocks = module_blocks(train.meta)
    dim = int(train.meta["dim"])
    out = {
        "setting": s["name"],
        "projection": s["projection"],
        "proj_dim": s["proj_dim"],
        "module_dim": s["module_dim"],
        "dim": dim,
        "bytes_per_row_float16": dim * 2,
        "bytes_per_row_float32": dim * 4,
        "index_seconds": round(index_s, 2),
        "index_examples_per_s": round(b.n_train / index_s, 3),
        "raw": dot_scores(x, qc),
        "module": dot_scores(x, qc, blocks=blocks) if blocks else None,
    }
    shutil.rmtree(root, ignore_errors=True)
    return out


def agreement(got: np.ndarray | None, ref: np.ndarray) -> dict[str, float | None]:
    from speed import spearman

    if got is None:
        return {"spearman": None, "spearman_per_query_mean": None}
    per_q = [spearman(g, r) for g, r in zip(got, ref, strict=True)]
    per_q = [v for v in per_q if v is not None]
    return {"spearman": spearman(got, ref), "spearman_per_query_mean": float(np.mean(per_q)) if per_q else None}


def main(argv: list[str] | None = None) -> int:
    import speed

    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--n-docs", type=int, default=48)
    p.add_argument("--queries", type=int, default=8)
    p.add_argument("--max-tokens", type=int, default=100)
    p.add_argument(
        "--settings",
        default="16,32,16/256,64/256,64/512,64/1024,128/256,128/1024,64,dense:4096",
        help="comma list: K (kronecker KxK per module), K/M (then M dims per module), dense:D",
    )
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--lora-r", type=int, default=8)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default="runs/fidelity")
    args = p.parse_args(argv)
    import torch

    torch.set_num_threads(args.threads)
    settings = parse_settings(args.settings)
    out = Path(args.out)
    speed.prepare(args)  # tokens + the LoRA checkpoint, shared with speed.py's layout (reused when they match)
    b = speed.load_bench(args)
    t0 = time.perf_counter()
    ref_raw, ref_mod = exact_scores(b)
    exact_s = time.perf_counter() - t0
    print(
        f"[fidelity] exact scores: {b.n_train} documents x {len(b.queries) // 2} queries in {exact_s:.1f} s", flush=True
    )
    rows = []
    for s in settings:
        r = setting_scores(b, s, out / "work")
        raw, mod = r.pop("raw"), r.pop("module")
        r["raw_vs_exact"] = agreement(raw, ref_raw)
        r["module_vs_exact"] = agreement(mod, ref_mod)
        r["auc_command"] = (
            f"dda bench --preset cpu-small --seeds 6,7,8 --set features.projection={s['projection']} "
            f"--set features.proj_dim={s['proj_dim']} --set features.module_dim={s['module_dim'] or 0}"
            f" --out runs/fidelity-auc-{s['name'].replace('/', '-').replace(':', '-')}"
        )
        rows.append(r)
        print(
            f"[fidelity] {s['name']}: dim {r['dim']}, {r['index_seconds']} s, Spearman raw "
            f"{r['raw_vs_exact']['spearman']}, module {r['module_vs_exact']['spearman']}",
            flush=True,
        )
    result = {
        "n_docs": b.n_train,
        "queries": len(b.queries) // 2,
        "modules": MODULES,
        "layers": "all",
        "exact_seconds": round(exact_s, 1),
        "threads": args.threads,
        "rows": rows,
    }
    speed.write_json(out / "fidelity.json", result)
    md = markdown(result)
    speed.write_text(out / "fidelity.md", md)
    print(md)
    return 0


def markdown(r: dict[str, Any]) -> str:
    def f(x: Any) -> str:
        return "–" if x is None else f"{x:.3f}"

    lines = [
        f"{r['n_docs']} documents x {r['queries']} contrastive queries, full W of {'/'.join(r['modules'])} in "
        f"every layer; exact scores {r['exact_seconds']} s. Spearman vs exact over all (query, document) pairs "
        "(per-query mean in brackets).",
        "",
        "| setting | dims | bytes/row fp16 | GB per 10^6 rows fp16 | index s | Spearman raw | Spearman module |",
        "|---|---|---|---|---|---|---|",
    ]
    for row in r["rows"]:
        raw, mod = row["raw_vs_exact"], row["module_vs_exact"]
        lines.append(
            f"| {row['setting']} | {row['dim']:,} | {row['bytes_per_row_float16']:,} | "
            f"{row['bytes_per_row_float16'] * 1e6 / 1e9:.1f} | {row['index_seconds']} | "
            f"{f(raw['spearman'])} ({f(raw['spearman_per_query_mean'])}) | "
            f"{f(mod['spearman'])} ({f(mod['spearman_per_query_mean'])}) |"
        )
    lines += ["", "AUC per setting (hallucination benchmark, slow):", ""]
    lines += [f"    {row['auc_command']}" for row in r["rows"]]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    sys.exit(main())
