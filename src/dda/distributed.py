"""Sharded indexing on torch.distributed: `torchrun --nproc-per-node N -m dda index ...`.

Launchers (torchrun on one node or many, `accelerate launch`, a scheduler that sets the variables itself) all
export RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR and MASTER_PORT; that is the only contract used here. The
process group is gloo on CPU and nccl on CUDA (each process on GPU LOCAL_RANK); the only synchronisation indexing
needs is two barriers and one small gather, which run on a gloo group in either case (CPU-side, with a long
timeout: after a resume, one process may wait for another's whole shard).

Each process featurises the base model and every checkpoint on its own shard of the training set (contiguous rows
of about equal token counts, `features.sharded.plan_shards`) and writes only its own shard directories. After a
barrier, rank 0 alone writes the shared files: data/train.jsonl, features/train/index.json, features/config.yaml.
Killed and rerun with the same command, each process resumes its own shard; complete shards are reused untouched.
Query features are not part of indexing: `dda attribute` computes them in one process.
"""

from __future__ import annotations

import contextlib
import datetime
import os
import signal
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from .data import Example, save_examples
from .features.sharded import choose_layout, read_store, shard_tokens, token_lengths
from .io import write_json, write_yaml
from .progress import bar

if TYPE_CHECKING:
    from .api import Attributor

# How long a barrier waits for the slowest process. Long on purpose: a rerun after a kill resumes one shard
# while every other process waits at the final barrier.
DEFAULT_TIMEOUT_S = 7 * 24 * 3600
# Test hook: the process whose RANK equals this SIGKILLs itself right after its first stored batch (a real,
# unannounced kill: no cleanup, no flush beyond what every batch does anyway).
KILL_HOOK_ENV = "DDA_TEST_SIGKILL_RANK"


@dataclass(frozen=True)
class LaunchEnv:
    rank: int
    world_size: int
    local_rank: int

    @property
    def distributed(self) -> bool:
        return self.world_size > 1


def _env_int(name: str, default: int) -> int:
    raw = os.environ.get(name)
    if raw is None or raw == "":
        return default
    try:
        return int(raw)
    except ValueError:
        raise ValueError(f"environment variable {name}={raw!r}: expected an integer") from None


def launch_env() -> LaunchEnv:
    """Rank and world size from the launcher's environment; a plain `dda index` is rank 0 of 1."""
    env = LaunchEnv(_env_int("RANK", 0), _env_int("WORLD_SIZE", 1), _env_int("LOCAL_RANK", 0))
    if env.world_size < 1 or not 0 <= env.rank < env.world_size:
        raise ValueError(f"RANK={env.rank}, WORLD_SIZE={env.world_size}: need 0 <= RANK < WORLD_SIZE")
    return env


class ProcessGroup:
    """The torch.distributed group of one launched run (joined, not re-created, if the caller already has one)."""

    def __init__(self, env: LaunchEnv, device_type: str, timeout_s: float | None = None):
        import torch.distributed as dist

        self.env = env
        timeout = datetime.timedelta(seconds=timeout_s or _env_int("DDA_DIST_TIMEOUT_S", DEFAULT_TIMEOUT_S))
        self.cuda = device_type == "cuda"
        if self.cuda:
            torch.cuda.set_device(env.local_rank)  # "cuda" now means this process's GPU
        self.owned = not dist.is_initialized()
        if self.owned:
            for var in ("MASTER_ADDR", "MASTER_PORT"):
                if not os.environ.get(var):
                    raise ValueError(
                        f"WORLD_SIZE={env.world_size} but {var} is not set; launch with torchrun or "
                        "accelerate launch, or export MASTER_ADDR and MASTER_PORT"
                    )
            dist.init_process_group("nccl" if self.cuda else "gloo", timeout=timeout)
        if (dist.get_rank(), dist.get_world_size()) != (env.rank, env.world_size):
            raise RuntimeError(
                f"process group is rank {dist.get_rank()} of {dist.get_world_size()}, the "
                f"environment says {env.rank} of {env.world_size}"
            )
        self.cpu_group = (
            dist.group.WORLD if dist.get_backend() == "gloo" else dist.new_group(backend="gloo", timeout=timeout)
        )

    def barrier(self) -> None:
        import torch.distributed as dist

        dist.barrier(group=self.cpu_group)

    def gather(self, values: list[float]) -> np.ndarray:
        """(world_size, len(values)) float64: every process's `values`, on every process."""
        import torch.distributed as dist

        mine = torch.tensor(values, dtype=torch.float64)
        out = [torch.zeros_like(mine) for _ in range(self.env.world_size)]
        dist.all_gather(out, mine, group=self.cpu_group)
        return torch.stack(out).numpy()

    @contextlib.contextmanager
    def main_first(self) -> Iterator[None]:
        """Rank 0 runs the block first (a model download or GGUF conversion into a shared cache), then the rest."""
        if self.env.rank != 0:
            self.barrier()
        yield
        if self.env.rank == 0:
            self.barrier()

    def close(self) -> None:
        import torch.distributed as dist

        if self.owned and dist.is_initialized():
            dist.destroy_process_group()


@contextlib.contextmanager
def process_group(env: LaunchEnv, device_type: str) -> Iterator[ProcessGroup]:
    group = ProcessGroup(env, device_type)
    try:
        yield group
    finally:
        group.close()


def device_type(att: Attributor) -> str:
    """Where this run computes: the given model's device, else the configured one."""
    from .models import resolve_device

    if att._model is not None:
        return next(att._model.parameters()).device.type
    return resolve_device(att.cfg.model.device).type


def _kill_hook(rank: int) -> Any:
    if os.environ.get(KILL_HOOK_ENV) != str(rank):
        return None
    return lambda: os.kill(os.getpid(), signal.SIGKILL)


def index_sharded(att: Attributor, examples: list[Example], group: ProcessGroup, data_hash: str) -> dict[str, Any]:
    """This process's part of a sharded index of `examples` at theta0 and every checkpoint; returns
    {checkpoint: logical store} once every process has finished (read from all shards, nothing copied)."""
    env = group.env
    with group.main_first():
        _ = att.model  # load (and cache) the model: rank 0 first, so a shared cache is filled once
    data = att.tokenize(examples)
    lengths = token_lengths(data)
    cks = att._checked_checkpoints()
    root = att.workdir.train_features
    indexer = att.indexer
    indexer.after_batch = _kill_hook(env.rank)
    rows0, tokens0, seconds0 = indexer.rows, indexer.tokens, indexer.seconds
    t0 = time.perf_counter()
    layouts = {}
    my_rows = sum(
        s.rows
        for c in cks
        for s in choose_layout(root / c.name, lengths, env.world_size)
        if s.index % env.world_size == env.rank
    )
    quiet = att.cfg.quiet or env.rank != 0
    with bar(f"train gradients, rank {env.rank} of {env.world_size} ({len(cks)} checkpoints)", my_rows, quiet) as adv:
        for c in cks:
            layouts[c.name] = indexer.featurize_shards(c, [(data, root / c.name)], env.rank, env.world_size, adv)[0]
    mine = [indexer.rows - rows0, indexer.tokens - tokens0, indexer.seconds - seconds0, time.perf_counter() - t0]
    group.barrier()  # every shard of every checkpoint is complete
    per_rank = group.gather(mine)
    stores = {c.name: read_store(root / c.name) for c in cks}
    stats = _stats(examples, data, cks, stores, layouts, lengths, per_rank)
    if env.rank == 0:
        save_examples(att.workdir.train_data, examples)
        source = getattr(att, "_checkpoint_source", None) or str(Path(cks[-1].path).parent)
        att.workdir.record(
            att.cfg, indexed=True, data_hash=data_hash, n_train=len(examples), checkpoints=str(Path(source).resolve())
        )
        write_json(att.workdir.index_stats, stats)
        write_yaml(att.workdir.config_file, att.cfg.to_dict())
    group.barrier()  # shared files are in place before any process goes on to read them
    att.index_stats = stats
    return stores


def _stats(
    examples: list[Example],
    data: Any,
    cks: list[Any],
    stores: dict[str, Any],
    layouts: dict[str, Any],
    lengths: np.ndarray,
    per_rank: np.ndarray,
) -> dict[str, Any]:
    computed, tokens, seconds = (float(per_rank[:, i].sum()) for i in range(3))
    stats: dict[str, Any] = {
        "n_train": len(examples),
        "checkpoints": [c.name for c in cks],
        "n_prompt_truncated": data.n_prompt_truncated,
        "n_response_truncated": data.n_response_truncated,
        "n_truncated": data.n_truncated,
        "mean_tokens": float(np.mean(lengths)) if len(lengths) else 0.0,
        "dim": int(next(iter(stores.values())).meta["dim"]),
        "computed_rows": int(computed),
        "compute_seconds": round(seconds, 3),  # summed over processes
        "wall_seconds": round(float(per_rank[:, 3].max()), 3),
        "world_size": int(per_rank.shape[0]),
        "layouts": {
            name: [{**s.describe(), "tokens": t} for s, t in zip(specs, shard_tokens(lengths, specs), strict=True)]
            for name, specs in layouts.items()
        },
        "ranks": [
            {
                "rank": r,
                "computed_rows": int(v[0]),
                "tokens": int(v[1]),
                "compute_seconds": round(v[2], 3),
                "wall_seconds": round(v[3], 3),
            }
            for r, v in enumerate(per_rank)
        ],
    }
    if computed:
        stats["examples_per_s"] = computed / max(stats["wall_seconds"], 1e-9)  # of the whole run
        stats["tokens_per_s"] = tokens / max(stats["wall_seconds"], 1e-9)
    return stats
