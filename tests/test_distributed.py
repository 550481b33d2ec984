"""Sharded indexing over a real gloo process group (2 processes on CPU), and the logical store it leaves behind.

The model is a tiny random Llama saved with save_pretrained (with the test tokenizer) and a random LoRA adapter as
the one fine-tuned checkpoint, so the launched processes load everything from disk like a real run.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from conftest import make_model, make_tokenizer

import dda
from dda import Attributor, Query, apply_overrides
from dda.config import DDAConfig
from dda.data import load_examples
from dda.features.batching import BatchLimit, RowTooLargeError, run_batches
from dda.features.sharded import ShardedRows, ShardedStore, plan_shards, read_store, token_lengths
from dda.features.store import FeatureStore

WORDS = (
    "England China France team match police court government minister news report people year club "
    "season player coach city council school hospital president election vote market bank price"
).split()
N_TRAIN = 12
CHECKPOINTS = ("base", "epoch-1")
# 2 processes vs 1: the same rows land in other batches (each shard is length-sorted and batched on its own), so
# a row is padded to another width and the matmuls run on other shapes, which can change the float summation
# order. Per-example features are equal mathematically (right padding, causal attention: pads cannot reach real
# tokens), so the difference is float32 rounding: relative 1e-5 of a feature's scale, far below any score gap.
RTOL, ATOL = 1e-5, 1e-6
SRC = str(Path(dda.__file__).resolve().parents[1])


def _write_run_files(root: Path) -> Path:
    """Model dir, one LoRA checkpoint, train.jsonl and config.yaml under `root`; returns the config path."""
    from peft import LoraConfig, get_peft_model

    tok = make_tokenizer()
    model = make_model("llama", vocab_size=len(tok))
    model.save_pretrained(root / "model")
    tok.save_pretrained(root / "model")
    torch.manual_seed(1)
    lora = get_peft_model(
        model, LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"], init_lora_weights=False)
    )  # random A and B: the checkpoint differs
    lora.save_pretrained(root / "ckpts" / "epoch-1")
    (root / "ckpts" / "epoch-1" / "dda_checkpoint.json").write_text(json.dumps({"epoch": 1, "lr": 0.01}))
    rng = np.random.default_rng(0)
    with open(root / "train.jsonl", "w") as fh:
        for i in range(N_TRAIN):
            doc = " ".join(rng.choice(WORDS, size=int(rng.integers(4, 20))))
            summ = " ".join(rng.choice(WORDS, size=int(rng.integers(2, 7))))
            fh.write(json.dumps({"id": f"ex{i}", "document": doc, "summary": summ}) + "\n")
    cfg = apply_overrides(
        DDAConfig(),
        {
            "model.name": str(root / "model"),
            "data.path": str(root / "train.jsonl"),
            "features.modules": ["q_proj", "v_proj", "down_proj"],
            "features.proj_dim": 4,
            "features.module_dim": 0,
            "features.layers": "all",
            "features.batch_size": 3,
            "data.max_prompt_tokens": 24,
            "data.max_response_tokens": 8,
            "quiet": True,
        },
    )
    (root / "config.yaml").write_text(yaml.safe_dump(cfg.to_dict()))
    return root / "config.yaml"


def _index_args(root: Path, workdir: Path) -> list[str]:
    return [
        "-m",
        "dda",
        "index",
        "-w",
        str(workdir),
        "--config",
        str(root / "config.yaml"),
        "--checkpoints",
        str(root / "ckpts"),
        "-q",
    ]


def _env(**extra: str) -> dict[str, str]:
    launcher = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT", "DDA_TEST_SIGKILL_RANK")
    env = {k: v for k, v in os.environ.items() if k not in launcher}
    env.update(PYTHONPATH=SRC, OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1", TOKENIZERS_PARALLELISM="false", **extra)
    return env


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _launch_by_env(root: Path, workdir: Path, world_size: int, **extra: str) -> list[subprocess.Popen]:
    """What a multi-node launcher does: one `python -m dda index` per rank, rendezvous by MASTER_ADDR/PORT."""
    port = str(_free_port())
    return [
        subprocess.Popen(
            [sys.executable, *_index_args(root, workdir)],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            env=_env(
                MASTER_ADDR="127.0.0.1",
                MASTER_PORT=port,
                RANK=str(r),
                WORLD_SIZE=str(world_size),
                LOCAL_RANK=str(r),
                **extra,
            ),
        )
        for r in range(world_size)
    ]


def _wait(procs: list[subprocess.Popen]) -> list[tuple[int, str]]:
    return [(p.wait(timeout=240), p.stdout.read()) for p in procs]


def _config(root: Path) -> DDAConfig:
    from dda.config import load_config

    return load_config(root / "config.yaml")


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """The same index built by one process (in this one) and by two (torchrun, gloo)."""
    root = tmp_path_factory.mktemp("dist")
    _write_run_files(root)
    one = Attributor(_config(root), root / "ws1")
    one.use_checkpoints(root / "ckpts")
    one.index(load_examples(_config(root).data))
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--standalone",
            "--nproc-per-node",
            "2",
            *_index_args(root, root / "ws2"),
        ],
        env=_env(),
        capture_output=True,
        text=True,
        timeout=240,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    return root


def _features(workdir: Path, ckpt: str) -> np.ndarray:
    return np.asarray(read_store(workdir / "features" / "train" / ckpt).features)


@pytest.mark.slow  # real process groups, subprocesses or a real model run
def test_two_processes_write_token_balanced_shards_equal_to_one_process(runs):
    ws2 = runs / "ws2" / "features" / "train"
    stats = json.loads((ws2 / "index.json").read_text())
    att = Attributor(_config(runs), runs / "ws1")
    lengths = token_lengths(att.tokenize(load_examples(_config(runs).data)))
    assert stats["world_size"] == 2 and stats["computed_rows"] == N_TRAIN * len(CHECKPOINTS)
    for ckpt in CHECKPOINTS:
        assert sorted(p.name for p in (ws2 / ckpt).iterdir()) == ["shard-00000-of-00002", "shard-00001-of-00002"]
        store = read_store(ws2 / ckpt)
        assert isinstance(store, ShardedStore) and store.meta["n_rows"] == N_TRAIN
        shards = stats["layouts"][ckpt]
        assert [s["start"] for s in shards] == [0, shards[0]["stop"]] and shards[1]["stop"] == N_TRAIN
        # balanced by tokens: the two shards differ by at most the longest row
        assert abs(shards[0]["tokens"] - shards[1]["tokens"]) <= lengths.max()
        assert shards[0]["tokens"] + shards[1]["tokens"] == lengths.sum()
        for s, rank in zip(shards, stats["ranks"], strict=True):
            meta = json.loads((ws2 / ckpt / f"shard-{s['index']:05d}-of-00002" / "meta.json").read_text())
            assert meta["shard"]["start"] == s["start"] and meta["n_rows"] == s["stop"] - s["start"]
            assert rank["computed_rows"] == sum(
                x["stop"] - x["start"] for x in (stats["layouts"][c][rank["rank"]] for c in CHECKPOINTS)
            )
        ref = _features(runs / "ws1", ckpt)
        got = _features(runs / "ws2", ckpt)
        assert np.abs(ref).max() > 0
        np.testing.assert_allclose(got, ref, rtol=RTOL, atol=ATOL)
    assert not np.allclose(_features(runs / "ws2", "base"), _features(runs / "ws2", "epoch-1"))
    # rank 0 wrote the shared files, after the barrier
    assert all((runs / "ws2" / f).exists() for f in ("data/train.jsonl", "config.yaml", "workdir.json"))


@pytest.mark.slow  # real process groups, subprocesses or a real model run
def test_attribute_after_two_process_index_equals_one_process(runs):
    train = load_examples(_config(runs).data)
    queries = [
        Query("q0", train[2].prompt, train[2].response, train[5].response),
        Query("q1", train[7].prompt, train[7].response, train[0].response),
    ]
    methods = ["dda", "dda(beta=0.4,normalize=none)", "tracin", "grad_cos", "trak"]
    scores = {}
    for name in ("ws1", "ws2"):
        att = Attributor(_config(runs), runs / name)
        att.use_checkpoints(runs / "ckpts")
        scores[name] = att.attribute(queries, methods).scores
    for m in methods:
        np.testing.assert_allclose(scores["ws2"][m], scores["ws1"][m], rtol=1e-4, atol=1e-6, err_msg=m)
    assert np.argmax(scores["ws2"]["grad_cos"][0]) == 2  # the query's own training document


@pytest.mark.slow  # real process groups, subprocesses or a real model run
def test_one_process_reuses_a_two_process_store(runs):
    att = Attributor(_config(runs), runs / "ws2")
    att.use_checkpoints(runs / "ckpts")
    before = {p: p.stat().st_mtime_ns for p in (runs / "ws2" / "features" / "train").rglob("*.npy")}
    stores = att.index(load_examples(_config(runs).data))
    assert att.index_stats["computed_rows"] == 0
    assert all(isinstance(s, ShardedStore) for s in stores.values())
    assert {p: p.stat().st_mtime_ns for p in before} == before


@pytest.mark.slow  # real process groups, subprocesses or a real model run
def test_one_process_finishes_a_two_process_layout(runs, tmp_path):
    """Only shard 0 of a 2-shard layout exists (as if rank 1 never ran): a 1-process run computes shard 1 only, and
    the logical store equals the 1-process reference."""
    att = Attributor(_config(runs), tmp_path)
    att.use_checkpoints(runs / "ckpts")
    examples = load_examples(_config(runs).data)
    data = att.tokenize(examples)
    root = tmp_path / "features" / "train"
    for ckpt in att.all_checkpoints():
        [specs] = att.indexer.featurize_shards(ckpt, [(data, root / ckpt.name)], rank=0, world_size=2)
    assert not (root / "base" / "shard-00001-of-00002").exists()
    stores = att.index(examples)
    assert att.index_stats["computed_rows"] == specs[1].rows * len(CHECKPOINTS)
    for ckpt in CHECKPOINTS:
        assert isinstance(stores[ckpt], ShardedStore)
        np.testing.assert_allclose(_features(tmp_path, ckpt), _features(runs / "ws1", ckpt), rtol=RTOL, atol=ATOL)


@pytest.mark.slow  # real process groups, subprocesses or a real model run
def test_killed_rank_resumes_only_its_shard(runs, tmp_path):
    """Rank 1 SIGKILLs itself after its first stored batch; rank 0 finishes its shards, then fails at the barrier
    (its peer is gone). The same command again computes only rank 1's missing rows.

    Launched by environment variables (as a multi-node launcher does), not torchrun: torchrun's agent would also
    terminate rank 0 as soon as rank 1 died, leaving two partial shards instead of one."""
    work = tmp_path / "killed"
    results = _wait(_launch_by_env(runs, work, 2, DDA_TEST_SIGKILL_RANK="1"))
    assert results[1][0] == -signal.SIGKILL, results[1][1]
    assert results[0][0] != 0  # lost its peer at the final barrier
    train = work / "features" / "train"
    rank0 = [train / c / "shard-00000-of-00002" for c in CHECKPOINTS]
    assert all(json.loads((d / "meta.json").read_text())["complete"] for d in rank0)
    killed = FeatureStore.open(train / "base" / "shard-00001-of-00002")
    done_before = int(np.asarray(killed.done).sum())
    shard_rows = killed.features.shape[0]
    assert 0 < done_before < shard_rows and not killed.complete
    assert not (train / "epoch-1" / "shard-00001-of-00002" / "meta.json").exists()
    mtimes = {f: f.stat().st_mtime_ns for d in rank0 for f in d.iterdir()}

    results = _wait(_launch_by_env(runs, work, 2))
    assert [code for code, _ in results] == [0, 0], results
    assert {f: f.stat().st_mtime_ns for f in mtimes} == mtimes  # rank 0's shards untouched
    stats = json.loads((train / "index.json").read_text())
    epoch1_rows = stats["layouts"]["epoch-1"][1]["stop"] - stats["layouts"]["epoch-1"][1]["start"]
    assert [r["computed_rows"] for r in stats["ranks"]] == [0, shard_rows - done_before + epoch1_rows]
    for ckpt in CHECKPOINTS:
        np.testing.assert_allclose(_features(work, ckpt), _features(runs / "ws1", ckpt), rtol=RTOL, atol=ATOL)


# ------------------------------------------------------------------------------------------- no processes


def test_plan_shards_cuts_by_tokens():
    lengths = np.array([100, 1, 1, 1, 1, 1, 1, 1, 1, 1, 100, 100])
    plan = plan_shards(lengths, 3)
    # cuts nearest to 103 and 206 cumulative tokens: 103 / 106 / 100 tokens in 4 / 7 / 1 rows
    assert [(s.start, s.stop) for s in plan] == [(0, 4), (4, 11), (11, 12)]
    assert plan_shards(lengths, 3) == plan  # deterministic
    assert [s.rows for s in plan_shards(np.ones(2, dtype=int), 4)].count(0) == 2  # more shards than rows
    assert plan_shards(lengths, 1)[0].dirname is None  # one process: the single-store layout


def test_sharded_rows_read_like_one_array():
    rng = np.random.default_rng(0)
    full = rng.standard_normal((10, 3)).astype(np.float32)
    rows = ShardedRows([full[:4], full[4:4], full[4:9], full[9:]])  # an empty shard in the middle
    assert rows.shape == (10, 3) and rows.dtype == np.float32 and len(rows) == 10
    for key in (
        slice(None),
        slice(2, 7),
        slice(3, 3),
        slice(8, 100),
        slice(1, 9, 3),
        5,
        -1,
        np.array([9, 0, 4, 4]),
        np.arange(10) % 3 == 0,
        (slice(2, 6), 1),
        (4, 2),
        (np.array([1, 8]), slice(0, 2)),
    ):
        np.testing.assert_array_equal(rows[key], full[key])
    np.testing.assert_array_equal(np.asarray(rows, dtype=np.float64), full.astype(np.float64))
    with pytest.raises(IndexError):
        rows[10]
    # what scorers do with a store: blockwise dot products, streaming top-k, candidate rows by index
    from dda.scoring.base import dot_scores
    from dda.scoring.topk import topk_scores

    q = rng.standard_normal((2, 3)).astype(np.float32)
    np.testing.assert_allclose(dot_scores(rows, q, block_bytes=3 * 4 * 3), q @ full.T, rtol=1e-6)
    for got, want in zip(topk_scores(rows, q, k=4, block_rows=3), topk_scores(full, q, k=4), strict=True):
        np.testing.assert_allclose(got, want, rtol=1e-6)


def test_token_budget_batches_back_off_on_cuda_oom():
    """A real callable that raises torch.cuda.OutOfMemoryError above 40 padded tokens: the batch is halved and
    retried, every row is computed exactly once, and the lowered limit is kept."""
    lengths = np.array([10, 9, 8, 3, 3, 3, 3, 3, 2, 2, 12])
    calls, done = [], {}

    def compute(batch: np.ndarray) -> np.ndarray:
        padded = len(batch) * int(lengths[batch].max())
        calls.append(padded)
        if padded > 40:
            raise torch.cuda.OutOfMemoryError(f"CUDA out of memory (test: {padded} padded tokens)")
        return lengths[batch] * 10

    def record(batch: np.ndarray, result: np.ndarray) -> None:
        for i, r in zip(batch, result, strict=True):
            assert i not in done
            done[int(i)] = int(r)

    limit = BatchLimit(rows=8, tokens=96)
    run_batches(lengths, np.arange(len(lengths)), limit, compute, record)
    assert done == {i: int(length) * 10 for i, length in enumerate(lengths)}
    assert limit.backoffs >= 1 and limit.tokens <= 40
    assert calls[0] == 96  # 8 rows of 12 tokens: longest first
    assert max(c for c in calls[limit.backoffs :]) <= 40  # after backing off, no more OOMs

    def always_oom(batch: np.ndarray) -> np.ndarray:
        raise torch.cuda.OutOfMemoryError("CUDA out of memory")

    rows_limit = BatchLimit(rows=4, tokens=None)
    with pytest.raises(RowTooLargeError, match="12 tokens"):
        run_batches(lengths, np.arange(len(lengths)), rows_limit, always_oom, record)
    assert rows_limit.rows == 1 and rows_limit.backoffs == 2  # 4 -> 2 -> 1 rows, then the single row fails


def test_token_budget_batches_hold_rows_by_padded_tokens():
    lengths = np.array([5, 20, 5, 5, 10, 5])
    batches = []
    run_batches(lengths, np.arange(6), BatchLimit(rows=1, tokens=20), lambda b: b, lambda b, _: batches.append(b))
    assert [list(b) for b in batches] == [[1], [4, 0], [2, 3, 5]]  # 20, 2x10, 3x5 padded tokens
    auto_cpu = BatchLimit.resolve(batch_size=3, batch_tokens=0, device=torch.device("cpu"))
    assert (auto_cpu.rows, auto_cpu.tokens) == (3, None)  # no catchable OOM on CPU: rows
    assert BatchLimit.resolve(3, 0, torch.device("cuda")).tokens == 1 << 16
