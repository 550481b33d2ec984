"""The natural error rate of every stored checkpoint of a benchmark run, on the documents its query search used.

Issue 29's first lever study: does the model learn the mistake, and by which epoch? For each pair, the held-out
documents are the ones the run's query search would summarise (`bench.queries.ordered_query_docs`, with the run's
`mention_in_window`), up to `--max-docs`; each stored checkpoint summarises them greedily with the run's generation
settings, and the rate is the share of summaries that say CANARY (the run's own `natural_query` test). Nothing is
trained: the run's checkpoints are read back from its workdir.

Usage: DDA_SHARED_DATA=../shared/data python benchmarks/natural_rate_by_checkpoint.py RUN [--max-docs N] [--out F]
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

from run_rebuild import open_attributor, preset_of

from dda.bench.canary import natural_query, parse_pairs
from dda.bench.generation import Summarizer
from dda.bench.hallucination import prepare
from dda.bench.presets import get_preset
from dda.bench.queries import ordered_query_docs
from dda.models import applied


def rates(
    run: Path,
    max_docs: int | None,
    preset_name: str | None = None,
    pair_spec: str | None = None,
    seed: int | None = None,
    overrides: dict[str, Any] | None = None,
    only: list[str] | None = None,
) -> dict[str, Any]:
    if (run / "config.yaml").exists():
        preset, cfg_yaml = preset_of(run)
        seed = int(cfg_yaml["dda"]["seed"])
        pairs = parse_pairs(",".join(cfg_yaml["bench"]["pairs"]).replace("->", ":"))
    elif preset_name and pair_spec and seed is not None:  # a run still going: its settings as it was started
        preset, pairs = get_preset(preset_name), parse_pairs(pair_spec)
    else:
        raise SystemExit(f"{run}: no config.yaml yet; give --preset, --pairs and --seed as the run was started")
    prepared = prepare(preset, pairs, seed)
    att = open_attributor(run, prepared, preset, overrides)
    records, split = prepared.records, prepared.split
    docs = {
        p.label: ordered_query_docs(
            att, records, split.heldout_idx, p, set(split.heldout_candidates[p.label]), seed, j,
            preset.mention_in_window,
        )[:max_docs]
        for j, p in enumerate(pairs)
    }  # fmt: skip
    train = att.cfg.to_dict()["train"]
    out: dict[str, Any] = {"run": run.name, "preset": preset.name, "seed": seed, "train": train, "pairs": {}}
    for ckpt in att.all_checkpoints():
        if only and ckpt.name not in only:
            continue
        t0 = time.perf_counter()
        with applied(att.model, ckpt) as model:
            summarize = Summarizer(
                model, att.tokenizer, att.formatter, att.pad_id, preset.max_new_tokens, preset.gen_batch_size
            )
            for p in pairs:
                texts = summarize([records[i]["document"] for i in docs[p.label]])
                errors = sum(natural_query(t, p) is not None for t in texts)
                row = out["pairs"].setdefault(p.label, {"documents": len(texts), "errors": {}, "rate": {}})
                row["errors"][ckpt.name] = errors
                row["rate"][ckpt.name] = errors / len(texts) if texts else None
        print(f"{ckpt.name}: " + ", ".join(
            f"{lab} {r['errors'][ckpt.name]}/{r['documents']}" for lab, r in out["pairs"].items()
        ) + f" ({time.perf_counter() - t0:.0f} s)", flush=True)  # fmt: skip
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("run", type=Path)
    ap.add_argument("--max-docs", type=int, default=None)
    ap.add_argument("--out", type=Path)
    ap.add_argument("--preset", help="for a run still going (no config.yaml yet): its preset")
    ap.add_argument("--pairs", help="... its pairs")
    ap.add_argument("--seed", type=int, help="... its seed")
    ap.add_argument("--set", action="append", default=[], help="... and each --set KEY=VALUE it was started with")
    ap.add_argument("--checkpoints", help="comma list of checkpoint names to measure (default: all)")
    args = ap.parse_args()
    overrides = dict(kv.split("=", 1) for kv in args.set)
    only = args.checkpoints.split(",") if args.checkpoints else None
    result = rates(args.run, args.max_docs, args.preset, args.pairs, args.seed, overrides, only)
    if args.out:
        args.out.write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")


if __name__ == "__main__":
    main()
