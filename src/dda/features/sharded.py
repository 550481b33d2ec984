"""Sharded feature stores: one logical (n, dim) store kept as several shard stores, read with no merge copy.

A store built by N processes lives in one directory per shard, each written by exactly one process:

    features/train/<ckpt>/shard-00000-of-00002/{features.npy, done.npy, meta.json}
    features/train/<ckpt>/shard-00001-of-00002/...

Shard i holds the contiguous global rows [start, stop) (recorded in its meta.json under "shard"), so the logical
store is the shards concatenated in index order. A store built by one process keeps the single-store layout
(`<ckpt>/meta.json` directly): that is the 1-shard layout, and every store written before sharding existed reads
unchanged. `read_store` opens either layout; what it returns has `.features` (rows in global order: shape, dtype,
row slices, integer row arrays, np.asarray) and `.meta`, so scorers cannot tell the layouts apart.

The shard plan is contiguous cuts by cumulative tokens (`plan_shards`): each shard gets about total_tokens / N
tokens, off by at most one row's tokens per cut. Contiguous rather than a greedy longest-first assignment (which
balances slightly better) because then global order is plain concatenation: a scoring block is a slice of one or
two memmaps read sequentially from disk, with no row permutation to store or gather through, and the layout is
described by N + 1 numbers. At 10^5-10^6 rows one row's tokens is a negligible share of a shard.

Reading never depends on the world size of the process that reads, and an index run resumes whatever layout is on
disk (`choose_layout`): a run with another number of processes finishes or reuses it, each process taking the
shards i with i % world_size == rank.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..data import Tokenized
from ..io import read_json
from .store import COMPAT_KEYS, FeatureStore, StoreMismatchError

PLAN = "contiguous-tokens"
_SHARD_DIR = re.compile(r"^shard-(\d{5})-of-(\d{5})$")


@dataclass(frozen=True)
class ShardSpec:
    """Shard `index` of `count`: global rows [start, stop)."""

    index: int
    count: int
    start: int
    stop: int
    n_rows_total: int

    @property
    def rows(self) -> int:
        return self.stop - self.start

    @property
    def dirname(self) -> str | None:
        """None for the 1-shard layout: its store is the checkpoint directory itself (the original layout)."""
        return None if self.count == 1 else f"shard-{self.index:05d}-of-{self.count:05d}"

    def path(self, root: Path) -> Path:
        return root if self.dirname is None else root / self.dirname

    def describe(self) -> dict[str, Any]:
        return {
            "index": self.index,
            "count": self.count,
            "start": self.start,
            "stop": self.stop,
            "n_rows_total": self.n_rows_total,
            "plan": PLAN,
        }

    def store_meta(self, meta: dict[str, Any]) -> dict[str, Any]:
        """A shard store's meta: the whole set's meta (model, data fingerprint, ...) with this shard's rows."""
        if self.count == 1:
            return meta
        return {**meta, "n_rows": self.rows, "shard": self.describe()}

    def subset(self, data: Tokenized) -> Tokenized:
        if self.count == 1:
            return data
        return Tokenized(data.input_ids[self.start : self.stop], data.response_mask[self.start : self.stop], 0, 0)


def token_lengths(data: Tokenized) -> np.ndarray:
    return np.array([len(s) for s in data.input_ids], dtype=np.int64)


def plan_shards(lengths: np.ndarray, count: int) -> list[ShardSpec]:
    """Contiguous cuts of rows 0..n-1 into `count` shards of about equal token totals (deterministic).

    Cut k lands on the row boundary whose cumulative token count is nearest to k * total / count; with fewer rows
    than shards, some shards are empty."""
    if count < 1:
        raise ValueError(f"shard count must be >= 1, got {count}")
    n = len(lengths)
    before = np.concatenate([[0], np.cumsum(np.asarray(lengths, dtype=np.int64))])  # tokens before row i
    total = int(before[-1])
    cuts = [0]
    for k in range(1, count):
        target = k * total / count
        i = int(np.searchsorted(before, target, side="left"))
        if i > 0 and target - before[i - 1] < before[i] - target:
            i -= 1  # the boundary below is nearer
        cuts.append(min(n, max(cuts[-1], i)))
    cuts.append(n)
    return [ShardSpec(k, count, cuts[k], cuts[k + 1], n) for k in range(count)]


def shard_tokens(lengths: np.ndarray, specs: list[ShardSpec]) -> list[int]:
    return [int(np.asarray(lengths[s.start : s.stop]).sum()) for s in specs]


# ------------------------------------------------------------------------------------------------ on disk


def _meta(path: Path) -> dict[str, Any] | None:
    f = path / "meta.json"
    return read_json(f) if f.exists() else None


def existing_layouts(root: Path) -> dict[int, list[Path]]:
    """Shard counts found under `root` -> the shard directories present. The single-store layout is count 1."""
    root = Path(root)
    found: dict[int, list[Path]] = {}
    if (root / "meta.json").exists():
        found[1] = [root]
    if root.is_dir():
        for d in sorted(root.iterdir()):
            m = _SHARD_DIR.match(d.name)
            if m and d.is_dir():
                found.setdefault(int(m.group(2)), []).append(d)
    return found


def layout_complete(root: Path, count: int) -> bool:
    if count == 1:
        meta = _meta(Path(root))
        return bool(meta and meta.get("complete"))
    for i in range(count):
        meta = _meta(Path(root) / f"shard-{i:05d}-of-{count:05d}")
        if not (meta and meta.get("complete")):
            return False
    return True


def choose_layout(root: Path, lengths: np.ndarray, world_size: int) -> list[ShardSpec]:
    """The shard layout an index run over `root` fills: the one already on disk, else a new one of
    `world_size` shards (world size 1: the single-store layout).

    Every process of a run calls this and must get the same answer: only this run creates shards of count
    `world_size`, so a layout of another count on disk predates the run and wins. Two layouts on disk: a
    complete one is reused (the smallest count); two unfinished ones are refused rather than guessed at."""
    layouts = existing_layouts(root)
    if not layouts:
        return plan_shards(lengths, world_size)
    if len(layouts) == 1:
        return plan_shards(lengths, next(iter(layouts)))
    complete = sorted(c for c in layouts if layout_complete(root, c))
    if complete:
        return plan_shards(lengths, complete[0])
    others = sorted(c for c in layouts if c != world_size)
    if len(others) == 1:  # the run's own new shards plus one unfinished layout from before: continue that one
        return plan_shards(lengths, others[0])
    raise StoreMismatchError(
        f"{root}: holds unfinished feature stores of {len(layouts)} shard layouts ({sorted(layouts)} shards); "
        "delete all but one of them (shard-*-of-K directories, or meta.json/features.npy/done.npy for 1) and rerun"
    )


def check_shard(stored: dict[str, Any], spec: ShardSpec, where: Path) -> None:
    """A reopened shard must hold the rows this run planned for it (same data and count give the same plan)."""
    if spec.count == 1:
        return
    keys = ("index", "count", "start", "stop", "n_rows_total")
    got = {k: (stored.get("shard") or {}).get(k) for k in keys}
    want = {k: spec.describe()[k] for k in keys}
    if got != want:
        raise StoreMismatchError(
            f"{where}: shard holds rows {got}, this run plans {want}; delete this shard directory and rerun"
        )


# ---------------------------------------------------------------------------------------- logical reading


class ShardedRows:
    """Rows of several (rows_i, dim) arrays in order, read like one (n, dim) array without copying them together.

    Supports `.shape`, `.dtype`, `.ndim`, `len()`, `x[i]`, `x[a:b]` (and any step), `x[int_array]`, `x[rows, cols]`
    and `np.asarray(x)` (a full copy: small stores only). Slices inside one shard are memmap views; slices across a
    shard boundary are copies of just those rows."""

    def __init__(self, parts: list[np.ndarray]):
        if not parts:
            raise ValueError("no shards")
        dims = {int(p.shape[1]) for p in parts}
        dtypes = {np.dtype(p.dtype) for p in parts}
        if len(dims) != 1 or len(dtypes) != 1:
            raise StoreMismatchError(f"shards disagree on dim {sorted(dims)} or dtype {sorted(map(str, dtypes))}")
        self.parts = parts
        self.offsets = np.concatenate([[0], np.cumsum([len(p) for p in parts])]).astype(np.int64)
        self.shape = (int(self.offsets[-1]), dims.pop())
        self.dtype = dtypes.pop()
        self.ndim = 2
        self.itemsize = self.dtype.itemsize

    def __len__(self) -> int:
        return self.shape[0]

    def spans(self, start: int, stop: int) -> Iterator[tuple[int, int, int]]:
        """(shard, local start, local stop) covering global rows [start, stop), in order."""
        first = int(np.searchsorted(self.offsets, start, side="right")) - 1
        for s in range(max(first, 0), len(self.parts)):
            lo, hi = int(self.offsets[s]), int(self.offsets[s + 1])
            if lo >= stop:
                break
            if hi > start:
                yield s, max(start, lo) - lo, min(stop, hi) - lo

    def _slice(self, start: int, stop: int) -> np.ndarray:
        pieces = [self.parts[s][a:b] for s, a, b in self.spans(start, stop)]
        if len(pieces) == 1:
            return pieces[0]
        if not pieces:
            return np.empty((0, self.shape[1]), dtype=self.dtype)
        return np.concatenate(pieces)

    def take(self, rows: np.ndarray) -> np.ndarray:
        """Rows in the order given; each shard's rows are read with parallel preads (scoring.sketch.read_rows)."""
        from .paging import read_rows

        rows = np.asarray(rows, dtype=np.int64)
        rows = np.where(rows < 0, rows + self.shape[0], rows)
        if len(rows) and (rows.min() < 0 or rows.max() >= self.shape[0]):
            raise IndexError(f"row index out of range for {self.shape[0]} rows")
        out = np.empty((len(rows), self.shape[1]), dtype=self.dtype)
        shard = np.searchsorted(self.offsets, rows, side="right") - 1
        for s in np.unique(shard):
            at = np.flatnonzero(shard == s)
            out[at] = read_rows(self.parts[s], rows[at] - self.offsets[s])
        return out

    def __getitem__(self, key: Any) -> np.ndarray:
        if isinstance(key, tuple):
            head = self[key[0]]
            return head[key[1:]] if isinstance(key[0], (int, np.integer)) else head[(slice(None), *key[1:])]
        if isinstance(key, (int, np.integer)):
            i = int(key) + (self.shape[0] if key < 0 else 0)
            if not 0 <= i < self.shape[0]:
                raise IndexError(f"row {key} out of range for {self.shape[0]} rows")
            s = int(np.searchsorted(self.offsets, i, side="right")) - 1
            return self.parts[s][i - self.offsets[s]]
        if isinstance(key, slice):
            start, stop, step = key.indices(self.shape[0])
            if step == 1:
                return self._slice(start, max(start, stop))
            return self.take(np.arange(start, stop, step))
        arr = np.asarray(key)
        if arr.dtype == np.bool_:
            arr = np.flatnonzero(arr)
        return self.take(arr)

    def __array__(self, dtype: Any = None, copy: bool | None = None) -> np.ndarray:
        out = self._slice(0, self.shape[0])
        return np.array(out, dtype=dtype) if dtype is not None or copy else np.asarray(out)

    def release_rows(self, start: int, stop: int) -> None:
        """topk.release_pages for global rows [start, stop) of every shard memmap they fall in."""
        from .paging import release_pages

        for s, a, b in self.spans(start, stop):
            release_pages(self.parts[s], a, b)


class ShardedStore:
    """A complete store kept as shards: `.features` (ShardedRows, global row order) and `.meta` (the whole
    set's meta: n_rows = all rows, plus "shards": each shard's rows)."""

    def __init__(self, root: Path, stores: list[FeatureStore]):
        self.root = Path(root)
        self.shards = stores
        self.features = ShardedRows([s.features for s in stores])
        first = stores[0].meta
        self.meta = {k: v for k, v in first.items() if k != "shard"}
        self.meta.update(n_rows=self.features.shape[0], complete=True, shards=[s.meta["shard"] for s in stores])
        for s in stores[1:]:
            diffs = [k for k in COMPAT_KEYS if k != "n_rows" and s.meta.get(k) != first.get(k)]
            if diffs:
                raise StoreMismatchError(f"{s.root}: shard differs from {stores[0].root} in {diffs}")
        starts = [s.meta["shard"]["start"] for s in stores]
        stops = [s.meta["shard"]["stop"] for s in stores]
        if starts[0] != 0 or starts[1:] != stops[:-1] or stops[-1] != first["shard"]["n_rows_total"]:
            raise StoreMismatchError(
                f"{root}: shards do not cover rows 0..{first['shard']['n_rows_total']} "
                f"in order (starts {starts}, stops {stops})"
            )

    @property
    def complete(self) -> bool:
        return True

    @classmethod
    def read(cls, root: str | Path, count: int) -> ShardedStore:
        root = Path(root)
        return cls(root, [FeatureStore.read(root / f"shard-{i:05d}-of-{count:05d}") for i in range(count)])


def read_store(root: str | Path) -> FeatureStore | ShardedStore:
    """The complete store at `root` in whichever layout it was built (single store or shards of any count)."""
    root = Path(root)
    layouts = existing_layouts(root)
    if not layouts:
        raise FileNotFoundError(
            f"{root}: no feature store here (no meta.json, no shard-*-of-* directories); run `dda index` first"
        )
    complete = sorted(c for c in layouts if layout_complete(root, c))
    if not complete:
        parts = []
        for count, dirs in sorted(layouts.items()):
            done = sum(int(np.load(d / "done.npy", mmap_mode="r").sum()) for d in dirs if (d / "done.npy").exists())
            parts.append(f"{count} shard(s): {len(dirs)} present, {done} rows done")
        raise StoreMismatchError(f"{root}: store is incomplete ({'; '.join(parts)}); rerun `dda index` to finish it")
    if complete[0] == 1:
        return FeatureStore.read(root)
    return ShardedStore.read(root, complete[0])
