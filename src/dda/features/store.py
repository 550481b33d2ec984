"""On-disk feature store (FeatureStore): one directory per (checkpoint, example set, projection).

    features.npy   (n, dim) memory-mapped .npy, float32 or float16
    done.npy       (n,) bool, a row is set only after its features are flushed: a killed run resumes
    meta.json      model/checkpoint fingerprints, tokenizer, projection, data hash, dims, dtype

Reopening with different settings is refused with a message naming each field that differs. Nothing is
ever unpickled (numpy with allow_pickle=False, JSON).
"""

from __future__ import annotations

import errno
import os
import shutil
from pathlib import Path
from typing import Any

import numpy as np
from numpy.lib.format import open_memmap

from ..io import read_json, write_json

FORMAT_VERSION = 1
# The fields that must agree for stored features to be reused or appended to.
COMPAT_KEYS = (
    "format_version",
    "model",
    "checkpoint",
    "tokenizer",
    "projection",
    "modules",
    "data",
    "n_rows",
    "dim",
    "dtype",
)


def module_blocks(meta: dict[str, Any]) -> list[int] | None:
    """Columns per module of a store's features, or None when its projection sums modules together.

    Stores written before "blocks" was recorded are kronecker (k*k per module) or dense (mixed)."""
    if meta.get("blocks") is not None:
        return [int(b) for b in meta["blocks"]]
    proj = meta.get("projection", {})
    if proj.get("kind") == "kronecker":
        return [int(proj["k"]) ** 2] * len(meta["modules"])
    return None


def _reserve(path: Path) -> None:
    """Allocate the file's blocks now: a memmap over a sparse file that meets a full disk dies of SIGBUS on
    a later page write, while a reserved one fails here, with ENOSPC, before any work."""
    with open(path, "r+b") as fh:
        try:
            os.posix_fallocate(fh.fileno(), 0, os.fstat(fh.fileno()).st_size)
        except OSError as err:
            if err.errno in (errno.EOPNOTSUPP, errno.EINVAL):
                return  # the file system cannot reserve; the free-space check above still ran
            raise


class StoreMismatchError(ValueError):
    pass


class FeatureStore:
    """Per-example features of one example set at one checkpoint: an (n, dim) memmap, per-row done flags and
    the metadata that decides whether stored rows may be reused. Row i is example i of the indexed list."""

    def __init__(self, root: Path, meta: dict[str, Any], features: np.ndarray, done: np.ndarray):
        self.root, self.meta, self.features, self.done = root, meta, features, done

    @classmethod
    def open(cls, root: str | Path, meta: dict[str, Any] | None = None) -> FeatureStore:
        """Open an existing store read/write, or create one when `meta` is given and none exists.

        With `meta`, an existing store must match it on COMPAT_KEYS.
        """
        root = Path(root)
        meta_path = root / "meta.json"
        if meta_path.exists():
            stored = read_json(meta_path)
            if meta is not None:
                check_compatible(stored, meta, str(root))
            feats = np.load(root / "features.npy", mmap_mode="r+", allow_pickle=False)
            done = np.load(root / "done.npy", mmap_mode="r+", allow_pickle=False)
            return cls(root, stored, feats, done)
        if meta is None:
            raise FileNotFoundError(f"{root}: no feature store here (meta.json missing)")
        meta = {"format_version": FORMAT_VERSION, **meta, "complete": False}
        root.mkdir(parents=True, exist_ok=True)
        need = meta["n_rows"] * (meta["dim"] * np.dtype(meta["dtype"]).itemsize + 1) + (1 << 16)
        free = shutil.disk_usage(root).free
        if need > free:
            raise OSError(
                errno.ENOSPC,
                f"{root}: a store of {meta['n_rows']} x {meta['dim']} {meta['dtype']} "
                f"needs {need / 2**20:.1f} MiB, {free / 2**20:.1f} MiB free; free space or choose a "
                "smaller features.proj_dim / module_dim / layers",
            )
        feats = open_memmap(
            root / "features.npy", mode="w+", dtype=np.dtype(meta["dtype"]), shape=(meta["n_rows"], meta["dim"])
        )
        _reserve(root / "features.npy")
        done = open_memmap(root / "done.npy", mode="w+", dtype=np.bool_, shape=(meta["n_rows"],))
        feats.flush()
        done.flush()
        write_json(meta_path, meta)  # written last: a store without meta.json is just scratch
        return cls(root, meta, feats, done)

    @classmethod
    def read(cls, root: str | Path) -> FeatureStore:
        root = Path(root)
        meta = read_json(root / "meta.json")
        if not meta.get("complete"):
            raise StoreMismatchError(
                f"{root}: store is incomplete ({int(np.load(root / 'done.npy').sum())}"
                f"/{meta['n_rows']} rows); rerun `dda index` to finish it"
            )
        feats = np.load(root / "features.npy", mmap_mode="r", allow_pickle=False)
        return cls(root, meta, feats, np.ones(meta["n_rows"], dtype=bool))

    def pending(self) -> np.ndarray:
        return np.flatnonzero(~np.asarray(self.done))

    def write(self, rows: np.ndarray, values: np.ndarray) -> None:
        from .paging import release_pages

        with np.errstate(over="ignore", invalid="ignore"):  # checked on the next line, with the rows named
            cast = values.astype(self.features.dtype, copy=False)
        bad = ~np.isfinite(cast).all(axis=1) if cast.ndim == 2 else ~np.isfinite(cast)
        if bad.any():  # a NaN or an overflow in the store would rank rows silently wrong later
            which = np.asarray(rows)[bad][:5].tolist()
            raise ValueError(
                f"{self.root}: rows {which} are not finite as {self.features.dtype} (NaN in the gradients, or "
                f"values beyond the dtype's range); nothing of them was written"
            )
        self.features[rows] = cast
        self.features.flush()
        self.done[rows] = True
        self.done.flush()
        # flushed rows live on in the page cache; unmapped here, the indexer's resident set stays flat at any n
        if len(rows):
            release_pages(self.features, int(np.min(rows)), int(np.max(rows)) + 1)

    def finish(self) -> None:
        if not bool(np.all(self.done)):
            raise RuntimeError(f"{self.root}: finish() with {len(self.pending())} rows pending")
        self.meta["complete"] = True
        write_json(self.root / "meta.json", self.meta)

    @property
    def complete(self) -> bool:
        return bool(self.meta.get("complete"))


def check_compatible(stored: dict[str, Any], wanted: dict[str, Any], where: str) -> None:
    wanted = {"format_version": FORMAT_VERSION, **wanted}
    diffs = [
        f"  {k}: stored {stored.get(k)!r}, requested {wanted.get(k)!r}"
        for k in COMPAT_KEYS
        if stored.get(k) != wanted.get(k)
    ]
    if diffs:
        raise StoreMismatchError(
            f"{where}: feature store was built with other settings; refusing to mix features.\n"
            + "\n".join(diffs)
            + "\nUse another output directory or delete this store."
        )
