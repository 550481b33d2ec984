"""Counts that justify the pre-registered held-out canary pairs (results/preregistered-pairs.yaml).

For each ORIG:CANARY pair, over every benchmark record (the builtin XSum file and ../shared/data/xsum), print:
- candidates: rows whose summary and document say ORIG and whose document never says CANARY (poisonable rows);
  `cand@N`: those whose document names ORIG inside the first N prompt tokens (cpu-haystack-natural poisons only
  these: it needs n_poison + n_hard_negatives = 32 of them);
- query docs: rows whose document says ORIG but not CANARY and whose summary never says CANARY; `query@N` likewise
  inside the window (the documents natural queries can come from, before the training rows are taken out);
- distractors: rows whose summary says CANARY legitimately (no candidate); the presets draw 24;
- compound: rows whose text has a capitalised word right before or after CANARY ("Northern Ireland", "New York";
  a sentence start such as "In Ireland" counts too, so it is an upper bound);
- both: rows whose document says ORIG and CANARY (the same topics: a neighbour the rule must not confuse).

Usage: DDA_SHARED_DATA=../shared/data python benchmarks/preregister_pairs.py [--pairs A:B,C:D] [--window 96]
Without --pairs it reads the pairs of results/preregistered-pairs.yaml. Nothing is written; the data stays out of
the repository.
"""

from __future__ import annotations

import argparse
import re
from pathlib import Path

from dda.bench.canary import CanaryPair, contains_word, parse_pairs, poison_candidates, query_documents
from dda.bench.split import SHARED_TOKEN, load_bench_records, window_check

PREREGISTERED = Path(__file__).resolve().parent.parent / "results" / "preregistered-pairs.yaml"


def _compound(word: str) -> re.Pattern[str]:
    # A capitalised word right before (or after) CANARY: a longer name such as "South Korea" (or a sentence start).
    return re.compile(rf"\b[A-Z][a-z]+ {re.escape(word)}\b|\b{re.escape(word)} [A-Z][a-z]+\b")


def pair_counts(records: list[dict[str, str]], pair: CanaryPair, windows: dict[int, object]) -> dict[str, int]:
    cands = poison_candidates(records, pair)
    queries = query_documents(records, pair)
    cand_set = set(cands)
    compound = _compound(pair.canary)
    out = {
        "candidates": len(cands),
        "query_docs": len(queries),
        "distractors": sum(
            1 for i, r in enumerate(records) if i not in cand_set and contains_word(r["summary"], pair.canary)
        ),
        "compound": sum(1 for r in records if compound.search(r["document"] + "\n" + r["summary"])),
        "both": sum(
            1 for r in records if contains_word(r["document"], pair.orig) and contains_word(r["document"], pair.canary)
        ),
    }
    for n, in_window in windows.items():
        out[f"cand@{n}"] = sum(1 for i in cands if in_window(records[i]["document"], pair.orig))  # type: ignore[operator]
        out[f"query@{n}"] = sum(1 for i in queries if in_window(records[i]["document"], pair.orig))  # type: ignore[operator]
    return out


def preregistered_pairs(path: Path = PREREGISTERED) -> str:
    import yaml

    data = yaml.safe_load(path.read_text(encoding="utf-8"))
    return ",".join(p["pair"] for p in data["heldout"])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--pairs", help="ORIG:CANARY list (default: the pre-registered pairs)")
    ap.add_argument("--window", default="64,96", help="prompt windows in tokens, comma list ('' for none)")
    args = ap.parse_args()
    records = load_bench_records(["builtin:xsum", SHARED_TOKEN]).records
    windows: dict[int, object] = {}
    if args.window:
        from dda.config import ModelConfig
        from dda.models import load_tokenizer

        tok = load_tokenizer(ModelConfig())  # the presets' model (builtin SmolLM2-135M)
        windows = {int(n): window_check(tok, int(n)) for n in args.window.split(",")}
    spec = args.pairs or preregistered_pairs()
    # one pair at a time: the same word may appear in several pairs here (parse_pairs refuses that in one run)
    pairs = [parse_pairs(p)[0] for p in spec.split(",")]
    print(f"{len(records)} records")
    rows = {p.label: pair_counts(records, p, windows) for p in pairs}
    keys = list(next(iter(rows.values())))
    print("| pair | " + " | ".join(keys) + " |")
    print("|---" * (len(keys) + 1) + "|")
    for label, counts in rows.items():
        print(f"| {label} | " + " | ".join(str(counts[k]) for k in keys) + " |")


if __name__ == "__main__":
    main()
