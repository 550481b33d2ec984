"""A run directory: every path in it, its cache keys, its lock, and the settings it was built with.

config.yaml            the last command's full config
workdir.json           what the stored features were built with (model, data format, features, training
                       data hash, checkpoint source); later commands reuse these settings
data/train.jsonl       the indexed training examples (row i of every store is example i)
checkpoints/epoch-K/   fine-tuned checkpoints (`dda finetune`), or the source named in workdir.json
features/train/<ckpt>/               training features at theta0 ('base') and each checkpoint
features/queries/<key>/<kind>/<ckpt>/  query features, keyed by everything they depend on
features/index/<backend>-<key>/      search indexes (sketch, faiss) over the concatenated training rows
attribution/           scores and rankings (`dda attribute`)
.lock                  pid, host and command of the process using the workdir
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import socket
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from .config import DDAConfig, changed_from_default, config_from_dict, flatten
from .io import read_json, stable_hash, write_json

SETTINGS_VERSION = 1
# Settings the stored features depend on: a later command must use the same values, and one that asks for
# others is refused by name. Everything else (scoring, batch sizes, query_tokens) may change freely.
LOCKED_PREFIXES = (
    "model.name",
    "model.gguf_file",
    "model.revision",
    "model.dtype",
    "data.template",
    "data.instruction",
    "data.max_prompt_tokens",
    "data.max_response_tokens",
    "features.",
)
UNLOCKED = ("features.batch_size", "features.query_tokens")


def is_locked(key: str) -> bool:
    return key not in UNLOCKED and any(key == p or (p.endswith(".") and key.startswith(p)) for p in LOCKED_PREFIXES)


class WorkdirError(ValueError):
    """The workdir cannot be used as asked; the message says why and what to do."""


def _under(*parts: str, doc: str | None = None) -> property:
    """A read-only path below the workdir's root."""
    return property(lambda self: self.root.joinpath(*parts), doc=doc)


class Workdir:
    """One run directory: its paths, the settings its features were built with, and its lock."""

    def __init__(self, root: str | Path):
        self.root = Path(root)
        self._lock_depth = 0

    def require_exists(self) -> None:
        """Refuse a workdir path that is not there (a typo), before any "run dda index first" advice."""
        if not self.root.exists():
            raise WorkdirError(f"{self.root}: no such directory (WORKDIR is the directory `dda index` wrote)")
        if not self.root.is_dir():
            raise WorkdirError(f"{self.root}: not a directory (WORKDIR is the directory `dda index` wrote)")

    def __fspath__(self) -> str:
        return str(self.root)

    def __str__(self) -> str:
        return str(self.root)

    def __truediv__(self, other: str) -> Path:
        return self.root / other

    # ------------------------------------------------------------------------------------------------ paths
    config_file = _under("config.yaml")
    settings_file = _under("workdir.json")
    train_data = _under("data", "train.jsonl")
    checkpoints = _under("checkpoints")
    train_features = _under("features", "train")
    index_stats = _under("features", "train", "index.json")
    search_index = _under("features", "index", doc="Sketch and FAISS indexes over the concatenated rows.")
    attribution = _under("attribution")

    def train_store(self, checkpoint: str) -> Path:
        return self.train_features / checkpoint

    def query_root(self, key: str) -> Path:
        return self.root / "features" / "queries" / key

    @staticmethod
    def query_key(**parts: Any) -> str:
        """Cache key of a query feature set: a hash of everything the features depend on (token ids and loss
        masks of every side, the query_tokens mode); model, checkpoint and projection are checked by the
        store's own metadata."""
        return stable_hash(parts)

    # --------------------------------------------------------------------------------------------- settings
    def settings(self) -> dict[str, Any] | None:
        if not self.settings_file.exists():
            return None
        return read_json(self.settings_file)

    def record(
        self,
        cfg: DDAConfig,
        *,
        indexed: bool = False,
        data_hash: str | None = None,
        n_train: int | None = None,
        checkpoints: str | None = None,
    ) -> None:
        """Remember the model, data and feature settings (and, once indexed, the data hash and the checkpoint
        source) for the commands that follow. A finetune before any index records without locking them."""
        old = self.settings() or {}
        if old.get("indexed") and not indexed:
            return  # features exist: their settings stay what they were built with
        keep = ("model.", "data.", "features.", "train.")
        write_json(
            self.settings_file,
            {
                "version": SETTINGS_VERSION,
                "indexed": indexed,
                "config": {k: v for k, v in flatten(cfg).items() if k.startswith(keep)},
                "data_hash": data_hash or old.get("data_hash"),
                "n_train": n_train or old.get("n_train"),
                "checkpoints": checkpoints or old.get("checkpoints"),
            },
        )

    def resolve_config(self, cfg: DDAConfig) -> DDAConfig:
        """`cfg` with the settings the workdir's features were built with. A setting the user changed from its
        default to another value than the stored one is refused, naming the field."""
        stored = self.settings()
        if stored is None:
            return cfg
        asked = changed_from_default(cfg)
        conflicts = [
            f"  {k}: stored {v!r}, asked {asked[k]!r}"
            for k, v in stored["config"].items()
            if stored.get("indexed") and is_locked(k) and k in asked and asked[k] != v
        ]
        if conflicts:
            raise WorkdirError(
                f"{self.root}: its features were built with other settings; refusing to mix them:\n"
                + "\n".join(conflicts)
                + "\nDrop these options (the stored values are used), or use another workdir."
            )
        values = cfg.to_dict()
        for key, value in stored["config"].items():
            if key in asked:
                continue  # the user's own value: equal to the stored one where it is locked
            node = values
            *parents, leaf = key.split(".")
            for p in parents:
                node = node[p]
            node[leaf] = value
        return config_from_dict(values, str(self.settings_file))

    def check_data(self, data_hash: str, n_train: int) -> None:
        stored = self.settings()
        if stored and stored.get("data_hash") != data_hash and self.train_features.exists():
            raise WorkdirError(
                f"{self.root}: holds features of other training data ({stored.get('n_train')} examples, hash "
                f"{stored.get('data_hash')}; asked: {n_train} examples, hash {data_hash}). Nothing was written; "
                "use another workdir, or delete its features/ to start over."
            )

    # ------------------------------------------------------------------------------------------------- lock
    @property
    def lock_file(self) -> Path:
        return self.root / ".lock"

    @contextlib.contextmanager
    def lock(self, command: str = "") -> Iterator[None]:
        """Hold the workdir for this process (re-entrant). Another live process holding it is refused with its
        pid, host and command; a lock left by a dead process on this host is taken over."""
        if self._lock_depth:
            self._lock_depth += 1
            try:
                yield
            finally:
                self._lock_depth -= 1
            return
        self.root.mkdir(parents=True, exist_ok=True)
        me = {
            "pid": os.getpid(),
            "host": socket.gethostname(),
            "command": command or " ".join(sys.argv[:2]),
            "since": time.strftime("%Y-%m-%d %H:%M:%S"),
        }
        for _ in range(2):
            try:
                fd = os.open(self.lock_file, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            except FileExistsError:
                holder = self._holder()
                if holder is None and time.time() - _mtime(self.lock_file) < 10:
                    holder = {"pid": "?", "host": "?", "command": "a process taking the lock", "since": "now"}
                if holder is not None and _alive(holder):
                    raise WorkdirError(
                        f"{self.root} is in use by pid {holder.get('pid')} on {holder.get('host')} "
                        f"({holder.get('command')}, since {holder.get('since')}); wait for it to finish, or "
                        f"delete {self.lock_file} if that process is gone."
                    ) from None
                with contextlib.suppress(FileNotFoundError):
                    self.lock_file.unlink()  # stale: its process is dead
                continue
            with os.fdopen(fd, "w") as fh:
                json.dump(me, fh)
            break
        else:
            raise WorkdirError(f"{self.lock_file}: could not take the lock")
        self._lock_depth = 1
        try:
            yield
        finally:
            self._lock_depth = 0
            with contextlib.suppress(FileNotFoundError):
                self.lock_file.unlink()

    def _holder(self) -> dict[str, Any] | None:
        try:
            return json.loads(self.lock_file.read_text())
        except (FileNotFoundError, json.JSONDecodeError):
            return None  # a lock being written, or torn by a kill: treat as stale only if still unreadable


def _mtime(path: Path) -> float:
    try:
        return path.stat().st_mtime
    except FileNotFoundError:
        return 0.0


def _alive(holder: dict[str, Any]) -> bool:
    if holder.get("pid") == "?":
        return True
    if holder.get("host") != socket.gethostname():
        return True  # another host's process cannot be checked from here: assume it is running
    try:
        os.kill(int(holder["pid"]), 0)
    except (ProcessLookupError, ValueError, KeyError, TypeError):
        return False
    except PermissionError:
        return True
    return True


def disk_full_message(err: OSError, where: str | Path) -> str | None:
    """A plain message for ENOSPC, or None for other errors."""
    if err.errno != errno.ENOSPC:
        return None
    return (
        f"disk full while writing under {where}: free some space and run the same command again; every "
        "row already computed is kept and the run resumes where it stopped."
    )
