"""The documentation site's generated pages, the notebook reprs and the packaging facts the docs state."""

from __future__ import annotations

import html
import importlib.util
import json
import re
from pathlib import Path

import numpy as np
import pytest
import yaml
from typer.testing import CliRunner

from dda.api import Attribution
from dda.cli import app
from dda.config import _flatten, flat_fields
from dda.data import Query

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def gen():
    spec = importlib.util.spec_from_file_location("gen_pages", ROOT / "docs" / "hooks" / "gen_pages.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_config_reference_names_exactly_the_settings_dda_config_prints(gen):
    page = gen.render_config_reference()
    in_tables = re.findall(r"^\| `([a-z_.]+)` \|", page, re.M)
    assert len(in_tables) == len(set(in_tables)), "a key is listed twice"
    printed = CliRunner().invoke(app, ["config"])
    assert printed.exit_code == 0, printed.output
    assert set(in_tables) == set(flat_fields()) == set(_flatten(yaml.safe_load(printed.output)))


def test_config_reference_gives_type_default_and_range(gen):
    page = gen.render_config_reference()
    row = next(ln for ln in page.splitlines() if ln.startswith("| `train.epochs` |"))
    assert row.split(" | ")[1:4] == ["int", "`3`", "≥ 1"]
    beta = next(ln for ln in page.splitlines() if ln.startswith("| `score.beta` |"))
    assert "`-1.0`" in beta and "ADDS" in beta


def test_cli_reference_has_every_command_and_option(gen):
    import typer.main

    page = gen.render_cli_reference()
    commands = typer.main.get_command(app).commands
    assert {"attribute", "index", "search", "show", "config"} <= set(commands)
    sections = re.split(r"^## ", page, flags=re.M)
    for name, cmd in commands.items():
        section = next((s for s in sections if s.startswith(f"`dda {name}`")), None)
        assert section is not None, f"dda {name} missing from the CLI reference"
        for p in cmd.params:
            if p.name != "help":
                shown = f"`{p.name.upper()}` (argument)" if p.param_type_name == "argument" else f"| `{p.opts[0]}`"
                assert shown in section, f"dda {name}: {p.opts} missing"


def test_results_page_renders_committed_metrics_and_says_when_there_are_none(gen, tmp_path):
    assert "No `results/*/metrics.json`" in gen.render_results(tmp_path)
    run = tmp_path / "results" / "cpu-small-s0"
    run.mkdir(parents=True)
    metrics = {
        "preset": "cpu-small",
        "seed": 0,
        "pairs": ["England->China"],
        "n_queries": 16,
        "query_mode": "natural",
        "wall_seconds": 726.0,
        "methods": {
            "dda": {"auc": 0.968, "auc_std": 0.02, "ap": 0.9, "distractor_auc": 0.85, "precision@10": 0.7},
            "bm25": {"auc": 0.81, "auc_std": 0.05, "ap": 0.48, "recall@10": 0.2},
        },
        "beta_curve": {
            "base": {
                "betas": [-1.0, 0.0, 0.4],
                "auc": [0.968, 0.867, 0.7],
                "auc_std": [0, 0, 0],
                "ap": [0.9, 0.5, 0.3],
            },
            "cross": {"betas": [-1.0, 0.4], "auc": [0.95, 0.6], "auc_std": [0, 0]},
        },
    }
    (run / "metrics.json").write_text(json.dumps(metrics))
    page = gen.render_results(tmp_path)
    assert "No `results/*/metrics.json`" not in page
    assert "| `dda` |  | 90.0 | 85.0 | – | – | 70.0 | – | 96.8 | 2.0 |" in page
    assert page.index("| `dda` |") < page.index("| `bm25` |")  # ranked by AP
    assert "| base | AUC | 96.8 | 86.7 | 70.0 |" in page and "| cross | AUC | 95.0 | – | 60.0 |" in page
    assert page.index("| base | AP | 90.0 | 50.0 | 30.0 |") < page.index("| base | AUC |")  # AP leads
    # the overview leads with AP and distractor AUC; AUC comes after them, and the best method is the best by AP
    head = next(ln for ln in page.splitlines() if ln.startswith("| run |"))
    assert (
        head.index("DDA AP") < head.index("DDA distractor AUC") < head.index("best method (AP)") < head.index("DDA AUC")
    )
    assert "| 90.0 | 85.0 | dda (90.0) | 96.8 |" in page
    assert "12.1 min" in page


def _result() -> Attribution:
    queries = [Query("q<1>", "a story about England", "said <China>", "said England"), Query("q2", "p", "n", "o")]
    scores = {
        "dda": np.array([[0.1, 0.9, -0.3, 0.5], [0.0, 0.2, 0.4, 0.1]]),
        "bm25": np.array([[2.0, 1.0, 3.0, 0.0], [1.0, 1.0, 1.0, 1.0]]),
    }
    return Attribution(["d0", "d1", "d2", "d3"], queries, scores, poisoned={"d1"})


def test_attribution_repr_lists_each_methods_ranking():
    text = repr(_result())
    assert text.startswith("Attribution(2 queries x 4 documents; methods: dda, bm25")
    assert "q<1> dda: d1* 0.9, d3 0.5, d0 0.1, d2 -0.3" in text
    assert "q<1> bm25: d2 3, d0 2, d1* 1, d3 0" in text


def test_pooled_ranking_is_the_mean_of_the_queries_scores(tmp_path):
    result = _result()
    pooled = result.pooled()
    assert [q.id for q in pooled.queries] == ["mean of 2 queries"]
    # dda means: d0 0.05, d1 0.55, d2 0.05, d3 0.3 (d0 and d2 tie); bm25: d0 1.5, d1 1, d2 2, d3 0.5
    assert [r["train_id"] for r in pooled.top(2, "dda")] == ["d1", "d3"]
    assert [r["train_id"] for r in pooled.top(4, "bm25")] == ["d2", "d0", "d1", "d3"]
    assert pooled.top(1, "dda")[0] == {"rank": 1, "train_id": "d1", "score": pytest.approx(0.55), "poisoned": True}
    ranking = json.loads((result.save(tmp_path / "a", top_k=2) / "ranking.json").read_text())
    assert [r["train_id"] for r in ranking["pooled_top"]["bm25"]] == ["d2", "d0"]
    assert "pooled_top" not in json.loads((result.save(tmp_path / "b", pooled=False) / "ranking.json").read_text())


def test_attribution_html_is_a_table_per_query_in_rank_order():
    page = _result()._repr_html_()
    assert page.count("<table>") == 2 and "said &lt;China&gt;" in page and "<China>" not in page
    first = page.split("</table>")[0]
    rows = re.findall(r"<tr><td>(\d)</td><td>(.*?)</td><td>(.*?)</td><td>(.*?)</td>", first)
    assert rows[0] == ("1", "<b>d1</b>", "0.9", "d2")  # rank 1: dda's d1 (a culprit, bold), bm25's d2
    assert [r[1] for r in rows] == ["<b>d1</b>", "d3", "d0", "d2"]


def test_report_renders_the_show_page_inline(tmp_path):
    from report_data import synthetic_run

    from dda import Report
    from dda.report_html import collect, render

    run = synthetic_run(tmp_path / "run", n_queries=2, n_docs=3, n_train=12, tokens_per_doc=20, bench=False)
    report = Report(run)
    frame = report._repr_html_()
    srcdoc = re.fullmatch(r'<iframe srcdoc="([^"]*)".*</iframe>', frame, re.S).group(1)
    assert html.unescape(srcdoc) == render(collect(run)) == report.html
    assert "2 queries" in repr(report)


def test_distribution_is_not_named_dda_and_the_version_has_one_source():
    text = (ROOT / "pyproject.toml").read_text()
    project = text.split("\n[project]\n", 1)[1].split("\n[", 1)[0]  # the [project] table only
    assert re.search(r'^name = "([^"]+)"', project, re.M).group(1) != "dda"
    assert not re.search(r"^version = ", project, re.M)  # no second copy of the version
    assert 'dynamic = ["version"]' in project and 'version = { attr = "dda.__version__" }' in text
