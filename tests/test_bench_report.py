"""Tests for the markdown report and the PNG figures."""

from __future__ import annotations

from pathlib import Path

import pytest

from dda.bench.report import (
    PAPER,
    _fmt_pct,
    plot_beta_curve,
    plot_method_bars,
    plot_size_curve,
    write_report,
)

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def _is_png(p: str | Path) -> bool:
    path = Path(p)
    return path.exists() and path.stat().st_size > 100 and path.read_bytes()[:8] == PNG_MAGIC


def test_fmt_pct() -> None:
    assert _fmt_pct(0.9164) == "91.6%"
    assert _fmt_pct(1.0) == "100.0%"
    assert _fmt_pct(0) == "0.0%"
    assert _fmt_pct(None) == "n/a"
    assert _fmt_pct(float("nan")) == "n/a"


def test_paper_constants() -> None:
    assert PAPER["table1_auc"]["dda"] == 91.64
    assert PAPER["ablation_auc"] == {"dda": 93.5, "dda_no_denoise": 84.8, "dda_no_debias": 67.9}
    assert "50-60" in PAPER["table1_notes"]["tracin"]


def test_plots_write_pngs(tmp_path: Path) -> None:
    b = plot_beta_curve(
        [0.0, 0.2, 0.4, 0.8],
        [0.6, 0.8, 0.9, 0.91],
        [0.05, 0.04, 0.02, 0.02],
        tmp_path / "figs" / "beta.png",
        "beta",
    )
    s = plot_size_curve([100, 200], {"dda": [0.8, 0.9], "tracin": [0.5, 0.55]}, tmp_path / "size.png")
    m = plot_method_bars({"dda": 0.9, "tracin": 0.55}, {"dda": 0.02}, tmp_path / "bars.png")
    for p in (b, s, m):
        assert _is_png(p)
    assert not [p for p in tmp_path.rglob(".*")], "temporary files left behind"
    with pytest.raises(ValueError):
        plot_beta_curve([0.1, 0.2], [0.5], None, tmp_path / "bad.png", "bad")


def test_write_report_full(tmp_path: Path) -> None:
    fig = plot_method_bars({"dda": 0.93, "tracin": 0.55}, None, tmp_path / "figs" / "methods.png")
    beta_fig = plot_beta_curve([0.0, 0.4], [0.7, 0.9], [0.1, 0.05], tmp_path / "figs" / "beta.png", "b")
    metrics = {
        "n_train": 500,
        "n_poisoned": 20,
        "n_queries": 12,
        "query_mode": "natural",
        "hallucination_rate": 0.25,
        "wall_seconds": 123.4,
        "model": "tiny-llm",
        "methods": {
            "tracin": {
                "auc": 0.55,
                "auc_std": 0.1,
                "ap": 0.05,
                "recall@10": 0.1,
                "recall@50": 0.2,
                "recall@5%": 0.15,
            },
            "dda": {
                "auc": 0.9164,
                "auc_std": 0.023,
                "ap": 0.6,
                "distractor_auc": 0.81,
                "pooled_ap": 0.75,
                "pooled_distractor_auc": 0.9,
                "precision@10": 0.7,
                "recall@n_poisoned": 0.55,
                "recall@10": 0.4,
                "recall@50": 0.9,
                "recall@5%": 0.8,
            },
            "dda_no_debias": {"auc": 0.70, "ap": 0.2},
            "dda_no_denoise": {"auc": 0.85, "auc_std": 0.03},
            "dda_topk": {"auc": 0.88},
        },
        "beta_curve": {"betas": [0.0, 0.4], "auc": [0.7, 0.9], "auc_std": [0.1, 0.05]},
        "query_information": {"dda": "differing tokens, negative − positive", "tracin": "whole negative output"},
        "chance": {"ap": 0.04},
        "n_distractors": 20,
    }
    write_report(
        tmp_path / "report.md",
        metrics=metrics,
        config={"seed": 0, "pair": "England:China"},
        notes=["first note", "second\nnote"],
        figures={"methods": fig, "beta_curve": beta_fig},
    )
    text = (tmp_path / "report.md").read_text(encoding="utf-8")
    dda_row = (
        "| `dda` | differing tokens, negative − positive | 60.0% | 81.0% | 75.0% | 90.0% | 70.0% | 55.0% | 91.6% ± 2.3 "
        "| 91.64% |"
    )
    assert dda_row in text
    assert "| `tracin` | whole negative output | 5.0% | n/a | n/a | n/a | n/a | n/a | 55.0% ± 10.0 |" in text
    assert "| random ranking | none | 4.0% | 50.0% | 4.0% | 50.0% | 4.0% | 4.0% | 50.0% | — |" in text
    assert "Distractors in training: 20" in text
    # Table 1 sorted by AP: dda above tracin; ablation variants are not in Table 1.
    t1 = text.split("## Table 1")[1].split("## Table 2")[0]
    assert t1.index("`dda`") < t1.index("`tracin`")
    assert "dda_no_debias" not in t1
    t2 = text.split("## Table 2")[1].split("## β curve")[0]
    assert "| `dda_no_denoise` | w/o denoise | n/a | n/a | 85.0% ± 3.0 | 84.8% |" in t2
    assert "| `dda_no_debias` | w/o debias | 20.0% | n/a | 70.0% | 67.9% |" in t2
    assert "| `dda_no_contrast` | w/o contrast | not run | n/a | n/a | — |" in t2
    assert "`dda_topk`" in t2
    assert "| `dda` | full DDA | 60.0% | 81.0% | 91.6% ± 2.3 | 93.5% |" in t2
    assert "| 0.4 | 90.0% ± 5.0 |" in text
    assert "![β curve](figs/beta.png)" in text
    assert "![methods](figs/methods.png)" in text
    assert "- second note" in text
    assert "tiny-llm" in text and "25.0%" in text and "500" in text
    assert '"pair": "England:China"' in text
    assert "Forced mode" not in text
    assert _is_png(tmp_path / "figs" / "beta.png")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["figs", "report.md"]


def test_write_report_minimal_and_directory_path(tmp_path: Path) -> None:
    out = tmp_path / "run1"
    metrics = {
        "n_train": 10,
        "n_poisoned": 2,
        "n_queries": 1,
        "query_mode": "forced",
        "methods": {"random": {"auc": 0.5}},
    }
    write_report(out, metrics=metrics, config={}, notes=[], figures={})
    text = (out / "report.md").read_text(encoding="utf-8")
    assert "Forced mode" in text
    assert "| `random` |  | n/a | n/a | n/a | n/a | n/a | n/a | 50.0% | — |" in text
    assert "model: n/a" in text
    assert "Not run." in text  # no beta curve
    # Overwriting keeps a single, complete file.
    metrics["methods"]["random"]["auc"] = 0.25
    write_report(out / "report.md", metrics=metrics, config={}, notes=["x"], figures={})
    text2 = (out / "report.md").read_text(encoding="utf-8")
    assert "25.0%" in text2 and "| `random` | 50.0%" not in text2
    assert [p.name for p in out.iterdir()] == ["report.md"]


def test_report_states_the_query_search_per_pair(tmp_path: Path) -> None:
    tf = {
        "base": {"negative": -9.5, "positive": -0.4, "negative_preferred": 0, "n": 16},
        "epoch-3": {"negative": -2.25, "positive": -0.5, "negative_preferred": 3, "n": 16},
    }
    per_pair = {
        "England->China": {
            "generated": 32,
            "natural_errors": 17,
            "natural_rate": 17 / 32,
            "natural_queries": 16,
            "forced_queries": 0,
            "stopped_by": "target",
            "generation_seconds": 61.0,
            "budget": {"max_docs": 96, "max_seconds": 180.0, "batch_size": 16},
            "auc_by_kind": {"natural": {"dda": 0.95}},
            "teacher_forced": tf,
        },
        "Wales->Germany": {
            "generated": 96,
            "natural_errors": 3,
            "natural_rate": 3 / 96,
            "natural_queries": 3,
            "forced_queries": 13,
            "stopped_by": "documents",
            "generation_seconds": 170.0,
            "budget": {"max_docs": 96, "max_seconds": 180.0, "batch_size": 16},
            "auc_by_kind": {"natural": {"dda": 0.81}, "forced": {"dda": 0.9}},
            "teacher_forced": tf,
        },
    }
    metrics = {
        "n_queries": 32,
        "query_mode": "mixed",
        "query_kinds": {"forced": 13, "natural": 19},
        "hallucination_rate": 20 / 128,
        "n_generated": 128,
        "per_pair": per_pair,
        "by_kind": {"natural": {"dda": 0.93, "bm25": 0.8}, "forced": {"dda": 0.9, "bm25": 0.85}},
        "methods": {"dda": {"auc": 0.92}},
    }
    write_report(tmp_path, metrics=metrics, config={}, notes=[], figures={})
    text = (tmp_path / "report.md").read_text(encoding="utf-8")
    assert "- query kinds: 13 forced + 19 natural" in text and "15.6% of 128" in text
    assert (
        "| England->China | 32 | 17 | 53.1% | 16 | 0 | target (96 docs, 180.0 s) | 61 s (1.0 min) | 95.0% | n/a |"
        in text
    )
    assert (
        "| Wales->Germany | 96 | 3 | 3.1% | 3 | 13 | documents (96 docs, 180.0 s) | 170 s (2.8 min) | 81.0% | 90.0% |"
    ) in text
    assert "| method | natural (19 queries) | forced (13 queries) |" in text and "| `dda` | 93.0% | 90.0% |" in text
    assert "| pair | documents | base | epoch-3 |" in text and "| -9.50 / -0.40 (0/16) | -2.25 / -0.50 (3/16) |" in text
