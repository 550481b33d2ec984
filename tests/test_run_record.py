"""A benchmark run read and written in one place: schema versions, migration, and the one remove-and-retrain table."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from dda.bench.run_record import SCHEMA_VERSION, BenchRun, RunError, migrate, read_run, write_run
from dda.bench.tables import markdown_table
from dda.fix import RemoveAndRetrain, plain, retrain_table

ROOT = Path(__file__).resolve().parents[1]
COMMITTED = sorted(p.parent for p in (ROOT / "results").rglob("metrics.json"))


def test_committed_runs_round_trip_whatever_their_schema():
    versions = {}
    for run in COMMITTED:
        raw = json.loads((run / "metrics.json").read_text(encoding="utf-8"))
        versions[run.name] = raw.get("schema", 1)  # 1: written before the version existed, migrated on read
        migrated = migrate(raw, str(run))
        assert migrated["schema"] == SCHEMA_VERSION and "counterfactual" not in migrated
        assert BenchRun.from_dict(migrated).to_dict() == migrated, run  # nothing lost, nothing added
    assert sum(v == 1 for v in versions.values()) >= 4 and set(versions.values()) <= {1, SCHEMA_VERSION}


def test_schema_1_remove_and_retrain_is_read_under_its_one_name():
    run = read_run(ROOT / "results" / "fix-cpu-small-england-china-s6")
    raw = json.loads((ROOT / "results" / "fix-cpu-small-england-china-s6" / "metrics.json").read_text())
    rr = run.remove_and_retrain
    assert rr is not None and rr.k == raw["counterfactual"]["k"] == 24
    assert [m.label for m in rr.models] == ["before", "dda", "bm25", "keyword", "random"]
    assert rr.to_bench() == raw["counterfactual"]
    assert run.timings["remove_and_retrain"] == raw["timings"]["counterfactual"]
    dda = run.methods["dda"]
    assert dda.pooled_ap == raw["methods"]["dda"]["pooled_ap"] and dda.ap == raw["methods"]["dda"]["ap"]
    assert run.machine.cores == raw["machine"]["cores"] and run.haystack is not None


def test_write_then_read_keeps_every_section(tmp_path):
    source = read_run(ROOT / "results" / "haystack-england-china-s11")
    path = write_run(tmp_path, source)
    written = json.loads(path.read_text(encoding="utf-8"))
    assert written["schema"] == SCHEMA_VERSION and "remove_and_retrain" in written
    again = read_run(tmp_path)
    assert again.to_dict() == source.to_dict()
    assert again.haystack.ap["dda"] == source.haystack.ap["dda"] and again.query_information["keyword"]


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ('{"schema": 3, "methods": {}}', "field 'schema': version 3 was written by a newer dda"),
        ('{"schema": "two"}', "field 'schema': 'two' is not a schema version"),
        ('{\n"methods": {,}\n}', "line 2: not valid JSON"),
        ("[1, 2]", "a run's metrics are a JSON object"),
    ],
)
def test_unreadable_runs_name_the_file(tmp_path, text, message):
    (tmp_path / "metrics.json").write_text(text)
    with pytest.raises(RunError, match=message) as err:
        read_run(tmp_path)
    assert str(tmp_path / "metrics.json") in str(err.value)


def test_missing_run_is_named(tmp_path):
    with pytest.raises(RunError, match="no metrics.json"):
        read_run(tmp_path / "nowhere")


def _fix_summary() -> dict:
    """fix.json as run_fix writes it (two queries, before / after / random measured)."""

    def model(margins: list[float], says: float, loss: float | None) -> dict:
        per_query = [{"id": f"q{i}", "margin": m, "says_negative": says, "output": "x"} for i, m in enumerate(margins)]
        return {"margin": sum(margins) / 2, "says_negative": says, "heldout_loss": loss, "per_query": per_query}

    return {
        "method": "dda",
        "k": 4,
        "combine": "mean-rank",
        "queries": ["q0", "q1"],
        "removed": ["a", "b", "c", "d"],
        "random_removed": ["e", "f", "g", "h"],
        "n_train": 12,
        "retrained": True,
        "heldout_source": "kept",
        "before": model([2.0, 1.0], 1.0, 2.5),
        "after": model([-1.0, -2.0], 0.0, 2.75),
        "random": model([1.5, 0.5], 0.5, None),
    }


def test_one_table_for_dda_fix_and_the_benchmark():
    fix = retrain_table(RemoveAndRetrain.from_fix(_fix_summary()))
    assert fix.header == ["removed", "says negative", "margin", "held-out loss"]
    assert [[plain(c) for c in row] for row in fix.rows] == [
        ["nothing removed", "100.0%", "+1.50", "2.500"],
        ["dda top 4", "0.0%", "-1.50", "2.750"],
        ["4 random rows", "50.0%", "+1.00", "n/a"],
    ]
    assert markdown_table(fix, per_query=True) == [
        "| query | before | `dda` | `random` |",
        "|---|---|---|---|",
        "| `q0` | +2.00 | -1.00 | +1.50 |",
        "| `q1` | +1.00 | -2.00 | +0.50 |",
    ]
    bench = retrain_table(read_run(ROOT / "results" / "fix-cpu-small-england-china-s6").remove_and_retrain)
    assert bench.header == [
        "removed", "poisoned removed", "distractors removed", "natural error rate", "canary margin",
        "distractor loss", "held-out loss",
    ]  # fmt: skip
    assert markdown_table(bench)[2].startswith("| nothing removed | – | – | 65.6% | +3.35 |")
    assert markdown_table(bench)[3].startswith("| `dda` top 24 | ")
