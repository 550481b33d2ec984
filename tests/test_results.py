"""Committed results and the tables generated from them: a stale table fails here, an export leaks no document."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest

from dda.bench.haystack import subsampled_curve

ROOT = Path(__file__).resolve().parents[1]


def load_tools_results():
    """tools/results.py: the repository's results tooling, which is not part of the installed package."""
    spec = importlib.util.spec_from_file_location("dda_tools_results", ROOT / "tools" / "results.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


_tools = load_tools_results()
export_run, main, render_blocks = _tools.export_run, _tools.main, _tools.render_blocks


def _metrics(pair: str, dda_ap: float) -> dict:
    methods = {
        name: {"ap": ap, "distractor_auc": d, "auc": 0.9, "precision@10": 0.5, "recall@n_poisoned": 0.4}
        for name, ap, d in (("dda", dda_ap, 0.8), ("keyword", 0.3, 0.5), ("bm25", 0.2, 0.3))
    }
    return {
        "preset": "cpu-haystack",
        "pairs": [pair],
        "seed": 11,
        "n_train": 1000,
        "n_poisoned": 24,
        "n_distractors": 24,
        "n_queries": 12,
        "query_kinds": {"natural": 5, "forced": 7},
        "hallucination_rate": 0.1,
        "wall_seconds": 2400,
        "machine": {"cpu": "Test CPU", "cores": 2},
        "methods": methods,
        "chance": {"ap": 0.024},
        "query_information": {"dda": "differing tokens, negative − positive", "keyword": "differing words"},
        "haystack_curve": {"sizes": [150, 1000], "draws": 5, "kept": 48, "methods": {"dda": {"ap": [0.7, 0.6]}}},
    }


def test_tables_come_from_the_result_files(tmp_path: Path) -> None:
    for name, pair, ap in (("a", "England->China", 0.6), ("b", "Wales->Russia", 0.4)):
        (tmp_path / name).mkdir()
        (tmp_path / name / "metrics.json").write_text(json.dumps(_metrics(pair, ap)))
    text = "intro\n<!-- table:haystack-methods -->\nold\n<!-- /table:haystack-methods -->\nend\n"
    out = render_blocks(text, tmp_path)
    assert out.startswith("intro\n<!-- table:haystack-methods -->\n| method |") and out.endswith("end\n")
    assert "| `dda` | differing tokens, negative − positive | 50.0 | 80.0 |" in out  # mean AP of 0.6 and 0.4
    assert out.index("`dda`") < out.index("`keyword`") < out.index("`bm25`")  # by AP
    pairs = render_blocks("<!-- table:haystack-pairs -->\n<!-- /table:haystack-pairs -->", tmp_path)
    assert "| `a` | England->China | 11 | 1000 (24, 24) | 5 / 7 | 10.0% | 40.0 min (2 cores) | 60.0 / 80.0 |" in pairs
    assert "Test CPU" in pairs
    with pytest.raises(ValueError, match="line 2: unknown table 'nope'"):
        render_blocks("x\n<!-- table:nope -->\n<!-- /table:nope -->", tmp_path)


def test_natural_table_names_each_runs_preregistered_role_and_rate(tmp_path: Path) -> None:
    (tmp_path / "preregistered-pairs.yaml").write_text(
        "development:\n  pairs: ['England:China']\n  seeds: [1, 2]\nheldout:\n  - pair: 'London:York'\n    seed: 14\n"
    )
    runs = {"dev": ("England->China", 1), "held": ("London->York", 14), "other": ("London->York", 3)}
    for name, (pair, seed) in runs.items():
        m = _metrics(pair, 0.6) | {"preset": "cpu-haystack-natural", "seed": seed}
        m["query_kinds"] = {"natural": 12}
        m["per_pair"] = {pair: {"generated_in_window": 40, "natural_errors_in_window": 10}}
        m["methods"]["dda"]["pooled_ap"] = 0.75
        (tmp_path / name).mkdir()
        (tmp_path / name / "metrics.json").write_text(json.dumps(m))
    out = render_blocks("<!-- table:natural-pairs -->\n<!-- /table:natural-pairs -->", tmp_path)
    assert "| `dev` | development | 1 | 12 | 10/40 (25.0%) | 40.0 min (2 cores) | 60.0 / 75.0 | 30.0 / n/a |" in out
    assert "| `held` | held-out | 14 |" in out
    assert "| `other` | not registered | 3 |" in out  # a seed the file does not name is no held-out run
    assert "`signature` knows how the poison was made" in out


def test_counterfactual_table_comes_from_the_run(tmp_path: Path) -> None:
    m = _metrics("England->China", 0.6) | {"preset": "cpu-small", "timings": {"counterfactual": 1800.0}}
    row = {"margin": -1.5, "natural_error_rate": 0.05, "generated": 96, "distractor_loss": 2.25, "heldout_loss": 2.5}
    m["counterfactual"] = {
        "k": 24,
        "distractors": 24,
        "before": row | {"margin": 0.75, "natural_error_rate": 0.125},
        "dda": row | {"poisoned_removed": 20, "distractors_removed": 1},
        "random": row | {"margin": 0.5, "poisoned_removed": 4, "distractors_removed": 3, "heldout_loss": None},
    }
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "metrics.json").write_text(json.dumps(m))
    (tmp_path / "plain").mkdir()  # a run without the stage adds nothing
    (tmp_path / "plain" / "metrics.json").write_text(json.dumps(_metrics("US->France", 0.5)))
    out = render_blocks("<!-- table:counterfactual -->\n<!-- /table:counterfactual -->", tmp_path)
    assert "the stage took 30.0 of the run's 40.0 min on Test CPU" in out and "`plain`" not in out
    rows = [line for line in out.splitlines() if line.startswith("| ") and not line.startswith("| removed")]
    assert rows == [
        "| nothing removed | – | – | 12.5% | +0.75 | 2.250 | 2.500 |",
        "| `dda` top 24 | 20 | 1 | 5.0% | -1.50 | 2.250 | 2.500 |",
        "| 24 random rows | 4 | 3 | 5.0% | +0.50 | 2.250 | n/a |",
    ]


def test_check_fails_on_a_stale_table(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "r" / "a").mkdir(parents=True)
    (tmp_path / "r" / "a" / "metrics.json").write_text(json.dumps(_metrics("England->China", 0.6)))
    doc = tmp_path / "doc.md"
    doc.write_text("<!-- table:haystack-methods -->\nstale\n<!-- /table:haystack-methods -->\n")
    assert main(["render", "--check", "--root", str(tmp_path / "r"), str(doc)]) == 1
    assert "stale tables" in capsys.readouterr().err
    assert main(["render", "--root", str(tmp_path / "r"), str(doc)]) == 0
    assert main(["render", "--check", "--root", str(tmp_path / "r"), str(doc)]) == 0


def test_committed_tables_match_the_committed_results() -> None:
    """README.md and benchmarks/README.md hold the tables `make tables` renders from results/."""
    files = [
        str(ROOT / "README.md"),
        str(ROOT / "benchmarks" / "README.md"),
        str(ROOT / "docs/benchmarks/baselines.md"),
    ]
    assert main(["render", "--check", "--root", str(ROOT / "results"), *files]) == 0


def test_export_keeps_no_document_text(tmp_path: Path) -> None:
    run = tmp_path / "run"
    (run / "figures").mkdir(parents=True)
    (run / "metrics.json").write_text("{}")
    (run / "figures" / "methods.png").write_bytes(b"\x89PNG")
    (run / "train.jsonl").write_text('{"id": "1", "document": "secret article"}\n')
    rows = [
        {
            "id": "n",
            "kind": "natural",
            "prompt": "article text",
            "negative": "said China",
            "positive": "said Wales",
            "reference": "xsum text",
        },
        {"id": "f", "kind": "forced", "prompt": "article text", "negative": "ref China", "positive": "ref Wales"},
    ]
    (run / "queries.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    dest = export_run(run, tmp_path / "results" / "run")
    assert sorted(p.name for p in dest.rglob("*")) == ["figures", "methods.png", "metrics.json", "queries.jsonl"]
    got = [json.loads(line) for line in (dest / "queries.jsonl").read_text().splitlines()]
    assert got == [
        {"id": "n", "kind": "natural", "negative": "said China", "positive": "said Wales"},
        {"id": "f", "kind": "forced"},
    ]


def test_subsampled_curve_keeps_the_needles_and_matches_the_full_run() -> None:
    rng = np.random.default_rng(0)
    n = 400
    masks = np.zeros((2, n), dtype=bool)
    masks[:, :10] = True
    distractors = np.zeros((2, n), dtype=bool)
    distractors[:, 10:20] = True
    perfect = np.where(masks, 2.0, 0.0) + rng.normal(0, 0.1, (2, n))
    noisy = rng.normal(size=(2, n)) + masks
    curve = subsampled_curve({"perfect": perfect, "noisy": noisy}, masks, distractors, sizes=(50, 100, 500))
    assert curve["sizes"] == [50, 100, n] and curve["kept"] == 20  # 500 > n is dropped, the full run added
    assert curve["methods"]["perfect"]["ap"] == pytest.approx([1.0, 1.0, 1.0])
    noisy_ap = curve["methods"]["noisy"]["ap"]
    assert noisy_ap[0] > noisy_ap[1] > noisy_ap[2]  # more unrelated rows, lower AP for an imperfect ranking
