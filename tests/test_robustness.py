"""Real kills, a real full disk and a real second process: nothing computed is lost, nothing is computed twice."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys

import numpy as np
import pytest
from test_cli import _docs, _write_jsonl, run

from dda.workdir import Workdir, WorkdirError

SETTINGS = [
    "--set",
    "features.layers=all",
    "--set",
    "features.proj_dim=4",
    "--set",
    "features.batch_size=1",
    "--set",
    "data.max_prompt_tokens=16",
    "--set",
    "data.max_response_tokens=8",
    "--set",
    "train.lora.target_modules=q_proj,v_proj",
    "--set",
    "train.epochs=1",
    "--set",
    "train.batch_size=8",
]


def _cli(*args: object) -> list[str]:
    return [sys.executable, "-m", "dda.cli", *map(str, args)]


@pytest.fixture(scope="module")
def finetuned(tmp_path_factory, model_dir):
    tmp = tmp_path_factory.mktemp("robust")
    data = _write_jsonl(tmp / "train.jsonl", _docs(160, seed=3))
    code, _, err = run("finetune", "-w", tmp / "ref", "--model", model_dir, "--data", data, "-q", *SETTINGS)
    assert code == 0, err
    return tmp, data


@pytest.mark.slow  # real process groups, subprocesses or a real model run
def test_killed_index_resumes_to_identical_features(finetuned, model_dir):
    tmp, data = finetuned
    ck = tmp / "ref" / "checkpoints"
    args = ["index", "--model", model_dir, "--data", data, "--checkpoints", ck, "-q", *SETTINGS]
    code, _, err = run(*args[:1], "-w", tmp / "ref", *args[1:])
    assert code == 0, err
    w = tmp / "killed"
    # The run announces on stdout once 10 rows of the first store are flushed and then waits on stdin: the kill
    # lands at a known point, on an event rather than a polled file (the write itself is dda's own).
    driver = (
        "import sys\n"
        "from dda.features.store import FeatureStore\n"
        "real_write = FeatureStore.write\n"
        "def write(self, rows, values):\n"
        "    real_write(self, rows, values)\n"
        "    if self.root.name == 'base' and int(self.done.sum()) >= 10:\n"
        "        print('flushed', flush=True); sys.stdin.readline()\n"
        "FeatureStore.write = write\n"
        "from dda.cli import app\n"
        "sys.argv = ['dda'] + sys.argv[1:]\n"
        "app()\n"
    )
    proc = subprocess.Popen(
        [sys.executable, "-c", driver, *map(str, [args[0], "-w", w, *args[1:]])],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    done_file = w / "features" / "train" / "base" / "done.npy"
    lines = iter(proc.stdout.readline, "")  # the CLI may print before the store is flushed
    assert any(line.strip() == "flushed" for line in lines), proc.stderr.read()
    assert proc.poll() is None, "the run ended before it could be killed"
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    partial = int(np.load(done_file, allow_pickle=False).sum())
    assert 10 <= partial < 160
    code, _, err = run(*args[:1], "-w", w, *args[1:])
    assert code == 0, err
    stats = json.loads((w / "features" / "train" / "index.json").read_text())
    assert stats["computed_rows"] == 2 * 160 - partial  # the killed rows only, then the checkpoint
    for ckpt in ("base", "epoch-1"):
        a = np.load(tmp / "ref" / "features" / "train" / ckpt / "features.npy")
        b = np.load(w / "features" / "train" / ckpt / "features.npy")
        assert np.array_equal(a, b), ckpt  # batch size 1: no padding, so bitwise equal


@pytest.fixture
def small_disk(tmp_path):
    mnt = tmp_path / "disk"
    mnt.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=160k", "tmpfs", str(mnt)], capture_output=True).returncode:
        pytest.skip("cannot mount a small tmpfs here (needs root); the disk-full path is not exercised")
    yield mnt
    subprocess.run(["umount", "-l", str(mnt)], check=False)


@pytest.mark.slow  # real process groups, subprocesses or a real model run
def test_full_disk_is_refused_before_work_and_resume_works_after(finetuned, model_dir, small_disk):
    tmp, data = finetuned
    w = small_disk / "w"
    args = [
        "index",
        "-w",
        w,
        "--model",
        model_dir,
        "--data",
        data,
        "--checkpoints",
        tmp / "ref" / "checkpoints",
        "-q",
        *SETTINGS,
    ]
    code, _, err = run(*args)
    assert code == 2 and "MiB free" in err and "Traceback" not in err
    subprocess.run(["mount", "-o", "remount,size=8m", str(small_disk)], check=True)  # space freed
    code, _, err = run(*args)
    assert code == 0, err
    ref = np.load(tmp / "ref" / "features" / "train" / "epoch-1" / "features.npy")
    assert np.array_equal(np.load(w / "features" / "train" / "epoch-1" / "features.npy"), ref)


@pytest.mark.slow  # real process groups, subprocesses or a real model run
def test_a_second_process_on_the_workdir_is_refused(tmp_path):
    w = tmp_path / "w"
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            (
                "import sys; from dda.workdir import Workdir\n"
                f"with Workdir({str(w)!r}).lock('dda index'):\n"
                "    print('held', flush=True); sys.stdin.readline()\n"
            ),
        ],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout.readline().strip() == "held"
        busy = rf"in use by pid {holder.pid} on {socket.gethostname()} \(dda index"
        with pytest.raises(WorkdirError, match=busy), Workdir(w).lock("test"):
            pass
    finally:
        holder.kill()
        holder.wait()
    # the holder died without cleaning up: its stale lock is taken over
    assert (w / ".lock").exists()
    with Workdir(w).lock("test"):
        assert json.loads((w / ".lock").read_text())["pid"] == os.getpid()
    assert not (w / ".lock").exists()


def test_lock_is_reentrant_and_released_on_error(tmp_path):
    wd = Workdir(tmp_path)
    with pytest.raises(RuntimeError), wd.lock("a"):
        with wd.lock("b"):
            assert (tmp_path / ".lock").exists()
        raise RuntimeError
    assert not (tmp_path / ".lock").exists()


def test_prompts_longer_than_the_context_are_cut_and_counted(tmp_path):
    from conftest import make_tokenizer

    from dda.config import DataConfig
    from dda.data import PromptFormatter

    long_prompt = " ".join(["the team won the match"] * 100)
    fmt = PromptFormatter(make_tokenizer(), DataConfig(max_prompt_tokens=1000, max_response_tokens=8), context=64)
    data = fmt.tokenize_pairs([(long_prompt, "England won"), ("short", "China won")])
    assert max(len(s) for s in data.input_ids) <= 64
    assert data.n_prompt_truncated == 1
    assert sum(data.response_mask[0]) == len(fmt.response_ids("England won")[0])  # the response is kept whole
