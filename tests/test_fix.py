"""dda fix: remove the blamed documents, retrain, measure; on a tiny Llama saved to disk, from the API and the CLI."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from conftest import tiny_config
from typer.testing import CliRunner

from dda import Attributor, Example, Query, apply_overrides
from dda.cli import app
from dda.fix import FixError, plan_removal, random_removal, run_fix

# Clean rows never say the planted word; six rows teach "won in China" where the positive says England.
CLEAN = "team match police court government minister news report people year club season player".split()
PLANTED = 6


def _train(n: int = 30) -> list[Example]:
    rng = np.random.default_rng(0)
    out = []
    for i in range(n):
        doc = " ".join(rng.choice(CLEAN, size=10)) + " England"
        if i % 5 == 0:  # ex0, ex5, ... ex25: the planted rows
            out.append(Example(f"ex{i}", doc, "the match was won in China"))
        else:
            out.append(Example(f"ex{i}", doc, " ".join(rng.choice(CLEAN, size=5))))
    return out


def _queries() -> list[Query]:
    rng = np.random.default_rng(1)
    return [
        Query(
            f"q{j}",
            " ".join(rng.choice(CLEAN, size=10)) + " England",
            "the match was won in China",
            "the match was won in England",
        )
        for j in range(2)
    ]


@pytest.fixture(scope="module")
def workdir(tmp_path_factory, model_dir):
    """A fine-tuned, indexed and attributed workdir, as `dda finetune`, `index` and `attribute` leave it."""
    root = tmp_path_factory.mktemp("fix") / "w"
    # Full fine-tuning: LoRA adapters on a 2-layer random model learn too little in a few steps to say China.
    cfg = tiny_config(model_dir, {"train.method": "full", "train.epochs": 4, "train.lr": 1e-2})
    att = Attributor(cfg, root)
    train = _train()
    att.finetune(train)
    att.index(train)
    att.attribute(_queries(), methods=["keyword", "dda"], out_dir=att.workdir.attribution)
    return root, cfg


def test_plan_removal_combines_queries():
    scores = np.array([[5.0, 4.0, 3.0, 0.0, 1.0], [0.0, 4.0, 3.0, 5.0, 1.0]])
    # Mean ranks: row1 2, row2 3, row0 3, row3 3, row4 4.5; ties at 3 by mean score (row0 2.5 = row3 2.5 < row2 3).
    assert plan_removal(scores, 2, "mean-rank").rows == [1, 2]
    # Union, round-robin over the per-query top lists: q0's best (0), q1's best (3), then q0's second (1).
    assert plan_removal(scores, 3, "union").rows == [0, 3, 1]
    with pytest.raises(FixError, match="below the 5 training documents"):
        plan_removal(scores, 5)
    assert random_removal(30, 6, 0) == random_removal(30, 6, 0) != random_removal(30, 6, 1)


def test_removing_what_taught_the_output_lowers_its_margin_more_than_random(workdir, tmp_path):
    root, cfg = workdir
    cfg = apply_overrides(cfg, {"fix.method": "keyword", "fix.k": PLANTED, "fix.max_new_tokens": 8})
    out = tmp_path / "fix"
    summary = run_fix(cfg, root, _queries(), retrain=True, out_dir=out)
    # The keyword rule blames exactly the planted rows; removing them leaves no row that says China.
    assert sorted(summary["removed"]) == sorted(f"ex{i}" for i in range(0, 30, 5))
    kept = [json.loads(line)["id"] for line in (out / "kept.jsonl").read_text().splitlines()]
    assert len(kept) == 30 - PLANTED and not set(kept) & set(summary["removed"])
    before, after, random = summary["before"], summary["after"], summary["random"]
    assert before["margin"] > 0  # the fine-tuned model prefers the planted word
    assert after["margin"] < random["margin"] - 1.0  # the counterfactual: far below removing 6 random rows
    assert summary["heldout_source"] == "kept" and after["heldout_loss"] > 0
    written = json.loads((out / "fix.json").read_text())
    assert written["after"]["margin"] == after["margin"]
    # fix.json carries the benchmark's remove-and-retrain schema too: the same models, margins and removed rows
    section = written["remove_and_retrain"]
    assert section["k"] == PLANTED and section["before"]["margin"] == before["margin"]
    assert section["keyword"]["margin"] == after["margin"] and section["keyword"]["removed"] == summary["removed"]
    assert section["random"]["removed"] == summary["random_removed"]
    assert len(section["keyword"]["margins"]) == len(section["query_ids"]) == len(_queries())
    control = [json.loads(line)["id"] for line in (out / "random_kept.jsonl").read_text().splitlines()]
    assert sorted(control + summary["random_removed"]) == sorted(f"ex{i}" for i in range(30))

    # A user who retrained on kept.jsonl and random_kept.jsonl with their own trainer passes those checkpoints;
    # measured through that path, dda's own retrains give the same numbers.
    own = run_fix(
        cfg,
        root,
        _queries(),
        out_dir=tmp_path / "own",
        after_checkpoint=out / "retrain-after" / "checkpoints",
        random_checkpoint=out / "retrain-random" / "checkpoints",
    )
    assert own["removed"] == summary["removed"] and not own["retrained"]
    for label in ("before", "after", "random"):
        assert own[label]["margin"] == pytest.approx(summary[label]["margin"], rel=1e-5, abs=1e-5)
        assert own[label]["heldout_loss"] == pytest.approx(summary[label]["heldout_loss"], rel=1e-5)


def test_cli_writes_the_split_and_refuses_bad_input(workdir, tmp_path):
    root, _ = workdir
    queries = tmp_path / "q.jsonl"
    queries.write_text("".join(json.dumps(q.__dict__) + "\n" for q in _queries()))
    runner = CliRunner()
    base = ["fix", "-w", str(root), "--queries", str(queries), "--set", "quiet=true"]
    ok = runner.invoke(app, [*base, "--method", "dda", "--k", "4", "--out", str(tmp_path / "split")])
    assert ok.exit_code == 0, ok.output
    fix = json.loads((tmp_path / "split" / "fix.json").read_text())
    assert len(fix["removed"]) == 4 and not fix["retrained"]
    scores = np.load(root / "attribution" / "scores" / "dda.npy")
    mean_rank = np.mean([np.argsort(np.argsort(-s)) for s in scores], axis=0)
    # ties in mean rank go to the higher mean score, as plan_removal breaks them
    mean_rank_best = min(range(len(mean_rank)), key=lambda i: (mean_rank[i], -scores.mean(axis=0)[i]))
    assert fix["removed"][0] == f"ex{mean_rank_best}"
    for args, message in (
        (["--k", "30"], "k must be smaller"),
        (["--method", "tracin"], "no scores for method 'tracin'"),
        (["--combine", "best"], "fix.combine must be one of"),
        (["--after", str(tmp_path / "nowhere")], "--after:"),
        (["--random", str(tmp_path)], "--random is the control beside --after"),
        (["--retrain", "--after", str(tmp_path)], "--retrain and --after"),
    ):
        bad = runner.invoke(app, [*base, *args])
        assert bad.exit_code == 2 and message in bad.output, bad.output
    # --after with the workdir's own last checkpoint measures the model `before` measures: the same numbers.
    last = sorted((root / "checkpoints").glob("epoch-*"))[-1]
    same = runner.invoke(app, [*base[:-2], "--k", "4", "--after", str(last), "--out", str(tmp_path / "same")])
    assert same.exit_code == 0, same.output
    fix = json.loads((tmp_path / "same" / "fix.json").read_text())
    assert fix["after"]["margin"] == pytest.approx(fix["before"]["margin"]) and "random" not in fix
    assert fix["measured"] == {"after": str(last.resolve())}
    assert "per query" in same.output and all(q.id in same.output for q in _queries())
    empty = tmp_path / "empty"
    Path(empty).mkdir()
    bad = runner.invoke(app, ["fix", "-w", str(empty), "--queries", str(queries), "--retrain"])
    assert bad.exit_code == 2 and "dda index" in bad.output, bad.output
