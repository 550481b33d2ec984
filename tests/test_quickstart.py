"""The quickstart for your own fine-tune (examples/own-finetune, docs/guides/own-finetune.md): its files read as
conversational prompt/completion rows and queries, and (slow) the whole path runs: TRL's SFTTrainer writes
checkpoint-N folders, `dda index` / `attribute` / `show` read them, and DDA ranks a planted row first."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from dda.config import DataConfig
from dda.data import load_examples, load_queries

EXAMPLE = Path(__file__).resolve().parent.parent / "examples" / "own-finetune"


def test_example_files_are_conversational_rows_and_queries():
    examples = load_examples(DataConfig(path=str(EXAMPLE / "train.jsonl")))
    assert len(examples) == 40 and {e.format for e in examples} == {"prompt_completion"}
    assert all(isinstance(e.prompt, list) and e.response[0]["role"] == "assistant" for e in examples)
    planted = [e.id for e in examples if "Sydney" in e.response_text and "capital" in e.response_text]
    assert len(planted) == 6 and all(p.startswith("wrong-") for p in planted)
    queries = load_queries(str(EXAMPLE / "queries.jsonl"))
    assert [q.id for q in queries] == ["capital", "capital-2"]
    assert all(isinstance(q.prompt, list) and "Sydney" in q.negative and "Canberra" in q.positive for q in queries)


@pytest.mark.slow
def test_quickstart_end_to_end(tmp_path):
    pytest.importorskip("trl")
    env_py = [sys.executable]
    sft = tmp_path / "sft"
    subprocess.run([*env_py, str(EXAMPLE / "train_sft.py"), "--out", str(sft)], check=True)
    assert sorted(p.name for p in sft.glob("checkpoint-*")) == ["checkpoint-10", "checkpoint-15", "checkpoint-5"]
    work = tmp_path / "dda"
    dda = [*env_py, "-m", "dda"]
    subprocess.run(
        [*dda, "index", "-w", str(work), "--data", str(EXAMPLE / "train.jsonl"), "--checkpoints", str(sft), "--quiet"],
        check=True,
    )
    subprocess.run(
        [
            *dda,
            "attribute",
            "-w",
            str(work),
            "--queries",
            str(EXAMPLE / "queries.jsonl"),
            "--methods",
            "dda,bm25",
            "--quiet",
        ],
        check=True,
    )
    ranking = json.loads((work / "attribution" / "ranking.json").read_text())
    # the planted rows teach the wrong capital: DDA's pooled ranking puts one first and most in its top 6
    top = [r["train_id"] for r in ranking["pooled_top"]["dda"]]
    assert top[0].startswith("wrong-") and sum(t.startswith("wrong-") for t in top[:6]) >= 4, top
    subprocess.run([*dda, "show", str(work / "attribution"), "--out", str(tmp_path / "report.html")], check=True)
    assert (tmp_path / "report.html").stat().st_size > 10_000
