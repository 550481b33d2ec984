"""The pre-registered held-out pairs (results/preregistered-pairs.yaml): what the issue asks of them, and their
counts as the committed script computes them from the real data."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import yaml

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))

from preregister_pairs import PREREGISTERED, pair_counts  # noqa: E402

from dda.bench.canary import parse_pairs  # noqa: E402
from dda.bench.split import SHARED_TOKEN, find_shared_xsum, load_bench_records  # noqa: E402

USED_PAIRS = {"England:China", "US:France", "Wales:Russia", "US:China", "Wales:China", "Wales:Germany"}
USED_SEEDS = {*range(9), 11}


def _file() -> dict:
    return yaml.safe_load(PREREGISTERED.read_text(encoding="utf-8"))


def test_heldout_pairs_are_new_varied_and_some_have_close_neighbours() -> None:
    data = _file()
    held = data["heldout"]
    pairs = [h["pair"] for h in held]
    assert len(held) >= 6 and len(set(pairs)) == len(pairs)
    assert len({p.split(":")[1] for p in pairs}) >= 4
    assert sum(h["neighbours"].startswith("close") for h in held) >= 2
    assert not set(pairs) & (USED_PAIRS | set(data["development"]["pairs"]))
    assert not {h["seed"] for h in held} & (USED_SEEDS | set(data["development"]["seeds"]))
    for p in pairs:
        parse_pairs(p)  # a valid ORIG:CANARY spec


def test_the_committed_counts_are_the_datas() -> None:
    if find_shared_xsum() is None:
        pytest.skip("../shared/data/xsum is not in this checkout (the counts are over it)")
    records = load_bench_records(["builtin:xsum", SHARED_TOKEN]).records
    for h in _file()["heldout"]:
        got = pair_counts(records, parse_pairs(h["pair"])[0], {})
        want = {k: v for k, v in h["counts"].items() if "_at_" not in k}
        assert {k: got[k] for k in want} == want, h["pair"]
