"""The speed benchmark's bookkeeping: target checks, profile lines and the markdown report (no timing here)."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
import speed  # noqa: E402  (an in-repo benchmark: breaking it must fail here, not skip)


def _rows() -> list[dict]:
    return [
        {
            "name": "floor",
            "status": "ok",
            "seconds": 100.0,
            "peak_rss_mb": 2000.0,
            "ratio_to_floor": 1.0,
            "phases": {"forward": 55.0, "backward": 45.0},
        },
        {
            "name": "dda_index",
            "status": "ok",
            "seconds": 90.0,
            "peak_rss_mb": 2100.0,
            "ratio_to_floor": 0.9,
            "spearman_vs_exact": 0.87,
            "phases": {"forward": 50.0, "backward": 30.0, "projection": 10.0},
        },
        {"name": "dda_end_to_end", "status": "ok", "seconds": 100.0, "peak_rss_mb": 2100.0, "spearman_vs_exact": 0.87},
        {"name": "kronfluence", "status": "ok", "seconds": 110.0, "peak_rss_mb": 4000.0, "spearman_vs_exact": 1.0},
        {
            "name": "kronfluence_ekfac",
            "status": "ok",
            "seconds": 400.0,
            "peak_rss_mb": 4000.0,
            "spearman_vs_exact": 0.6,
        },
        {"name": "trak", "status": "failed", "seconds": None, "peak_rss_mb": None, "note": "killed | oom"},
    ]


def test_target_checks_compare_within_one_run() -> None:
    checks = {c["check"]: c for c in speed.target_checks(_rows())}
    assert checks["dda_index time / floor"]["met"] is True  # 0.9 <= 1.15
    assert checks["dda_index peak RSS / floor"]["value"] == pytest.approx(1.05)
    assert checks["kronfluence time / dda end to end"]["met"] is False  # 1.1x, target 3x
    assert checks["kronfluence_ekfac time / dda end to end"]["met"] is True  # 4x
    assert checks["dda spearman vs kronfluence's"]["met"] is False
    assert checks["dda spearman vs kronfluence_ekfac's"]["met"] is True
    assert not any("trak" in name for name in checks)  # a failed peer is not compared


def test_profile_and_markdown(tmp_path: Path) -> None:
    rows = _rows()
    lines = speed.profile_lines(rows)
    assert lines[0].startswith("floor (100.0 s): forward 55.0 s (55%)")
    assert "projection 10.0 s (11%)" in lines[1]
    machine = {
        "cpu_model": "x",
        "cpus_available": 2,
        "torch_threads": 2,
        "mem_total_gb": 1.0,
        "load_avg_at_start": [0.1, 0.1, 0.1],
    }
    config = {"n_docs": 4, "max_tokens": 32, "queries": 2}
    speed.write_markdown(tmp_path / "speed.md", rows, machine, config, speed.target_checks(rows))
    text = (tmp_path / "speed.md").read_text()
    assert "| dda_index | ok | 90.0 | 0.90 | 2100 | 0.870 |" in text
    assert "killed / oom" in text  # a '|' in a note must not break the table
    assert "## Targets (issue #4)" in text and "| kronfluence time / dda end to end | 1.1 | >= 3 | False |" in text
