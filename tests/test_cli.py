"""The user's own path through the CLI, on a tiny random Llama saved to disk: every README command as written,
and the bad inputs of the docs' table (docs/bad-input.md), each ending in a clear message and exit status 2."""

from __future__ import annotations

import json
import os
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
from conftest import WORDS, make_model, make_tokenizer
from typer.testing import CliRunner

from dda.cli import app


def _commands() -> list[str]:
    """Every command of the app, as `dda --help` lists them (a hand-kept list went stale)."""
    import typer.main

    from dda.cli import app

    return list(typer.main.get_command(app).commands)  # type: ignore[attr-defined]


COMMANDS = _commands()
# Small settings every command of these tests shares (a file, as a user would keep them).
SMALL = {
    "train": {"epochs": 2, "batch_size": 4, "lr": 1e-2, "lora": {"r": 4, "target_modules": ["q_proj", "v_proj"]}},
    "features": {"modules": ["q_proj", "v_proj", "down_proj"], "proj_dim": 4, "layers": "all", "batch_size": 4},
    "data": {"max_prompt_tokens": 16, "max_response_tokens": 8},
}


def _write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


def _docs(n: int, seed: int = 0) -> list[dict]:
    rng = np.random.default_rng(seed)
    return [
        {
            "id": f"d{i}",
            "document": " ".join(rng.choice(WORDS, size=int(rng.integers(8, 16)))),
            "summary": " ".join(rng.choice(WORDS, size=int(rng.integers(3, 6)))),
        }
        for i in range(n)
    ]


def _queries(n: int = 2) -> list[dict]:
    return [
        {
            "id": f"q{i}",
            "prompt": "the team won the match in England",
            "negative": f"China won {i}",
            "positive": f"England won {i}",
        }
        for i in range(n)
    ]


@pytest.fixture(scope="session")
def small_config(tmp_path_factory) -> Path:
    import yaml

    p = tmp_path_factory.mktemp("cfg") / "small.yaml"
    p.write_text(yaml.safe_dump(SMALL))
    return p


def run(*args: str) -> tuple[int, str, str]:
    res = CliRunner().invoke(app, [str(a) for a in args])
    if res.exception and not isinstance(res.exception, SystemExit):
        raise res.exception
    return res.exit_code, res.stdout, res.stderr


@pytest.fixture(scope="module")
def indexed(tmp_path_factory, model_dir, small_config):
    """README path 1: finetune, then index and attribute with no repeated options."""
    tmp = tmp_path_factory.mktemp("readme")
    data = _write_jsonl(tmp / "train.jsonl", _docs(12))
    queries = _write_jsonl(tmp / "queries.jsonl", _queries())
    w = tmp / "w"
    code, _, err = run("finetune", "-w", w, "-c", small_config, "--model", model_dir, "--data", data, "-q")
    assert code == 0, err
    code, _, err = run("index", "-w", w, "-c", small_config, "--data", data, "-q")
    assert code == 0, err
    return tmp, w, data, queries


# ----------------------------------------------------------------------------------------------- the paths


def test_every_command_has_help():
    assert {"finetune", "index", "attribute", "fix", "search", "show", "bench"} <= set(COMMANDS)
    for cmd in COMMANDS:
        code, out, _ = run(cmd, "--help")
        assert code == 0 and "Usage" in out, cmd
    code, out, _ = run("--help")
    assert all(c in out for c in COMMANDS)
    _, out, _ = run("index", "--help")
    assert "builtin:NAME" in out  # placeholders survive the help's markup
    _, out, _ = run("attribute", "--help")
    assert "ADDS" in out  # beta's sign is explained


def test_version():
    code, out, _ = run("--version")
    assert code == 0 and re.match(r"dda \d+\.\d+", out)


def test_readme_path_finetune_index_attribute(indexed):
    tmp, w, _, queries = indexed
    code, out, err = run("attribute", "-w", w, "--queries", queries, "--methods", "dda,tracin,bm25", "--top-k", "3")
    assert code == 0, err
    # every requested method is printed, on stdout; files are named by method
    for m in ("dda", "tracin", "bm25"):
        assert f"— {m}:" in out
        assert (w / "attribution" / "scores" / f"{m}.npy").exists()
    ranking = json.loads((w / "attribution" / "ranking.json").read_text())
    assert ranking["score_files"]["dda"] == "scores/dda.npy"
    # a rerun with fewer methods into the same folder leaves no stale score file
    code, _, err = run("attribute", "-w", w, "--queries", queries, "--methods", "bm25", "-q")
    assert code == 0, err
    assert sorted(p.name for p in (w / "attribution" / "scores").iterdir()) == ["bm25.npy"]
    mode = (w / "attribution" / "ranking.json").stat().st_mode & 0o777
    assert mode == 0o666 & ~_umask()


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def test_readme_path_own_checkpoints(indexed, tmp_path, small_config, model_dir):
    """`dda index --checkpoints DIR` then `dda attribute` with no other options (the workdir remembers)."""
    _, w, data, queries = indexed
    mine = tmp_path / "mine"
    code, _, err = run(
        "index",
        "-w",
        mine,
        "-c",
        small_config,
        "--model",
        model_dir,
        "--data",
        data,
        "--checkpoints",
        w / "checkpoints",
        "-q",
    )
    assert code == 0, err
    code, _, err = run("attribute", "-w", mine, "--queries", queries, "--methods", "dda", "-q")
    assert code == 0, err
    ours = np.load(mine / "attribution" / "scores" / "dda.npy")
    run("attribute", "-w", w, "--queries", queries, "--methods", "dda", "-q")
    np.testing.assert_allclose(ours, np.load(w / "attribution" / "scores" / "dda.npy"), rtol=1e-5, atol=1e-6)


def test_config_command_prints_documented_yaml():
    code, out, _ = run("config", "--set", "score.beta=0.4")
    assert code == 0
    assert "# DDA debias weight" in out and "beta: 0.4" in out


# -------------------------------------------------------------------------------------- wrong answers ended


def test_refused_index_writes_nothing(indexed, tmp_path):
    _, w, _, _ = indexed
    before = {p: p.read_bytes() for p in (w / "data" / "train.jsonl", w / "workdir.json", w / "config.yaml")}
    other = _write_jsonl(tmp_path / "other.jsonl", _docs(12, seed=5))
    code, _, err = run("index", "-w", w, "--data", other, "-q")
    assert code == 2 and "other training data" in err and "Nothing was written" in err
    assert {p: p.read_bytes() for p in before} == before


def test_attribute_reuses_index_settings_and_refuses_a_conflict(indexed):
    _, w, _, queries = indexed
    code, _, err = run("attribute", "-w", w, "--queries", queries, "--methods", "dda", "--set", "features.seed=3")
    assert code == 2 and "features.seed: stored 0, asked 3" in err
    code, _, err = run("attribute", "-w", w, "--queries", queries, "--methods", "dda", "--set", "features.proj_dim=8")
    assert code == 2 and "features.proj_dim" in err


def test_query_cache_is_keyed_by_the_positive_too(indexed, tmp_path):
    _, w, _, _ = indexed
    a = _write_jsonl(tmp_path / "a.jsonl", _queries(1))
    b_rows = _queries(1)
    b_rows[0]["positive"] = "France won the election"
    b = _write_jsonl(tmp_path / "b.jsonl", b_rows)
    code, _, err = run("attribute", "-w", w, "--queries", a, "--methods", "dda", "--out", tmp_path / "a", "-q")
    assert code == 0, err
    code, _, err = run("attribute", "-w", w, "--queries", b, "--methods", "dda", "--out", tmp_path / "b", "-q")
    assert code == 0, err
    a_scores, b_scores = (np.load(tmp_path / d / "scores" / "dda.npy") for d in ("a", "b"))
    assert not np.allclose(a_scores, b_scores)


def test_checkpoints_of_another_model_are_refused(indexed, tmp_path, small_config):
    _, w, data, _ = indexed
    tok = make_tokenizer()
    same_shapes = tmp_path / "other-model"
    make_model("llama", vocab_size=len(tok), seed=1).save_pretrained(same_shapes)
    tok.save_pretrained(same_shapes)
    code, _, err = run(
        "index",
        "-w",
        tmp_path / "x",
        "-c",
        small_config,
        "--model",
        same_shapes,
        "--data",
        data,
        "--checkpoints",
        w / "checkpoints",
        "-q",
    )
    assert code == 2 and "made from base model" in err and str(same_shapes) in err
    other_shapes = tmp_path / "qwen"
    make_model("qwen2", vocab_size=len(tok) + 8).save_pretrained(other_shapes)
    tok.save_pretrained(other_shapes)
    code, _, err = run(
        "index",
        "-w",
        tmp_path / "y",
        "-c",
        small_config,
        "--model",
        other_shapes,
        "--data",
        data,
        "--checkpoints",
        w / "checkpoints",
        "-q",
    )
    assert code == 2 and "error:" in err and "Traceback" not in err


def test_half_written_checkpoints_are_skipped_or_refused(indexed, tmp_path, small_config, model_dir):
    _, w, data, _ = indexed
    ck = tmp_path / "ck"
    shutil.copytree(w / "checkpoints", ck)
    shutil.copytree(ck / "epoch-2", ck / "epoch-3")
    (ck / "epoch-3" / "dda_checkpoint.json").unlink()  # killed before its last write
    own = ["-c", small_config, "--model", model_dir, "--data", data, "--checkpoints", ck, "-q"]
    code, _, err = run("index", "-w", tmp_path / "a", *own)
    assert code == 0, err
    stats = json.loads((tmp_path / "a" / "features" / "train" / "index.json").read_text())
    assert stats["checkpoints"] == ["base", "epoch-1", "epoch-2"]
    weights = ck / "epoch-2" / "adapter_model.safetensors"
    weights.write_bytes(weights.read_bytes()[:-100])  # truncated
    code, _, err = run("index", "-w", tmp_path / "b", *own)
    assert code == 2 and "truncated" in err


# ------------------------------------------------------------------------------------------------ bad input


@pytest.mark.parametrize(
    "rows, message",
    [
        (
            [{"id": "a", "prompt": "p", "negative": "x", "positive": "x"}],
            "line 1: 'negative' and 'positive' are the same",
        ),
        (
            [{"id": "a", "prompt": "p", "negative": "x"}, {"id": "a", "prompt": "p", "negative": "y"}],
            "line 2: duplicate query id 'a'",
        ),
        ([{"id": "a", "prompt": "p", "negative": "x", "positive": ""}], "line 1: field 'positive' is empty"),
        ([{"id": "a", "prompt": None, "negative": "x"}], "line 1: field 'prompt' is null"),
        (
            [{"id": "a", "prompt": "p", "negative": "x", "positive": "y"}, {"id": "b", "prompt": "p", "negative": "x"}],
            "line 2: no 'positive'",
        ),
    ],
)
def test_bad_queries_name_the_line(indexed, tmp_path, rows, message):
    _, w, _, _ = indexed
    q = _write_jsonl(tmp_path / "q.jsonl", rows)
    code, _, err = run("attribute", "-w", w, "--queries", q, "--methods", "dda")
    assert code == 2 and message in err.replace("\n", " "), err


def test_non_utf8_queries_name_file_and_line(indexed, tmp_path):
    _, w, _, _ = indexed
    q = tmp_path / "q.jsonl"
    q.write_bytes(b'{"prompt": "p", "negative": "x"}\n{"prompt": "caf\xe9", "negative": "x"}\n')
    code, _, err = run("attribute", "-w", w, "--queries", q, "--methods", "dda")
    assert code == 2 and "q.jsonl, line 2: not UTF-8" in err.replace("\n", "")


@pytest.mark.parametrize(
    "model, message",
    [
        ("./no/such/model", "no such file or directory"),
        ("/definitely/missing", "no such file or directory"),
        ("model.gguf", "no such file or directory"),
    ],
)
def test_model_paths_fail_fast_without_network(tmp_path, model, message):
    data = _write_jsonl(tmp_path / "t.jsonl", _docs(3))
    code, _, err = run("finetune", "-w", tmp_path / "w", "--model", model, "--data", data)
    assert code == 2 and message in err and "Traceback" not in err


def test_directory_that_is_not_a_model(tmp_path):
    (tmp_path / "notamodel").mkdir()
    (tmp_path / "notamodel" / "readme.txt").write_text("hi")
    data = _write_jsonl(tmp_path / "t.jsonl", _docs(3))
    code, _, err = run("finetune", "-w", tmp_path / "w", "--model", tmp_path / "notamodel", "--data", data)
    assert code == 2 and "not a model" in err and "readme.txt" in err


@pytest.mark.parametrize(
    "args, message",
    [
        (["--set", "train.epochs=two"], "train.epochs must be int"),
        (["--set", "score.beta=abc"], "score.beta must be float"),
        (["--set", "train.epochs"], "--set expects key=value"),
        (["--set", "bogus.key=1"], "unknown key 'bogus.key'"),
        (["--set", "features.projection=fancy"], "features.projection must be one of kronecker, dense, identity"),
        (["--set", "train.epochs=0"], "train.epochs must be >= 1"),
    ],
)
def test_bad_config_values_fail_before_any_model_loads(tmp_path, args, message):
    data = _write_jsonl(tmp_path / "t.jsonl", _docs(3))
    code, _, err = run("finetune", "-w", tmp_path / "w", "--model", tmp_path / "absent", "--data", data, *args)
    assert code == 2 and message in err.replace("\n", " "), err


def test_top_k_and_methods_are_checked_first(indexed):
    _, w, _, queries = indexed
    code, _, err = run("attribute", "-w", w, "--queries", queries, "--top-k", "-3")
    assert code == 2 and "score.top_k must be >= 1" in err
    code, _, err = run("attribute", "-w", w, "--queries", queries, "--methods", "dda(beta=abc)")
    assert code == 2 and "beta='abc'" in err
    code, _, err = run("attribute", "-w", w, "--queries", queries, "--methods", "dda(bta=1)")
    assert code == 2 and "unknown parameters ['bta']" in err


@pytest.mark.parametrize(
    "text, message",
    [
        ("train: [1, 2]\n", "train must be a mapping"),
        ("- a\n- b\n", "the config must be a mapping"),
        ("oops: {}\n", "unknown key 'oops'"),
        ("train:\n  epochs: [\n", "line"),
    ],
)
def test_bad_config_files(tmp_path, text, message):
    p = tmp_path / "bad.yaml"
    p.write_text(text)
    code, out, err = run("config", "-c", p)
    assert code == 2 and message in err and "Traceback" not in err + out


def test_set_with_a_comma_stays_one_string():
    code, out, _ = run("config", "--set", "data.instruction=Summarise, briefly")
    assert code == 0 and "instruction: Summarise, briefly" in out
    code, out, _ = run("config", "--set", "features.modules=q_proj,v_proj")
    assert "- q_proj\n  - v_proj" in out


def test_plain_progress_lines_when_stderr_is_not_a_terminal(indexed, tmp_path, monkeypatch):
    import dda.progress as progress

    monkeypatch.setattr(progress, "PLAIN_INTERVAL_S", 0.0)
    _, w, _, queries = indexed
    code, _, err = run("attribute", "-w", w, "--queries", queries, "--methods", "dda", "--out", tmp_path / "o")
    assert code == 0, err
    assert re.search(r"query gradients \(3 checkpoints\): \d+/\d+ \(\d+%\), [\d.]+/s", err), err
