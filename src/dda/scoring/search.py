"""Top-k over stores larger than memory: a scorer folded into one query vector per query.

DDA over N fine-tuned checkpoints and theta0 is a sum of dot products, one per stored checkpoint s:
    score(z) = sum_s  q_s . f(x_s(z))
x_s(z) is z's feature row at checkpoint s; f is the train-side normalisation (normalize=module: every module's
slice scaled to unit norm; grad_cos: the whole row; none: nothing); q_s is a weighted sum of normalised query
vectors (1/N at each fine-tuned checkpoint, -beta for the theta0 term, ...). So the score is ONE dot product
between the folded query [q_1 | ... | q_N | q_0] and the virtually concatenated row [f(x_1) | ... | f(x_N) | f(x_0)]
(`ConcatenatedRows`). f is per row and per module, so it is applied to each row as it streams past; only the
weights fold into the query. A top-k is then one streaming pass over the N+1 stores with memory independent of
the number of rows, or a candidate search on an index of the concatenated rows with exact re-ranking; which one
is the search backend's job (`backends/`: exact, sketch, faiss, or one registered with `register_backend`).
This module keeps what every backend shares: the fold, the concatenated rows, an index's directory, meta.json
and the checks that it still serves a method, and the entry points (`build_index`, `search_rows`, `folded_topk`).

Every backend returns exact scores; the index backends can miss a row whose approximate score fell below the
candidate cut. An index holds rows, not query weights: one built for dda serves every beta and debias reading
whose slices it holds. Foldable: the scorers registered as sums of dot products (`base.foldable_methods`: dda with
normalize none|module|auto, grad_dot, grad_cos, tracin). Not foldable: normalize=std (each checkpoint's scores
scaled by their std over all rows), trak (a solve over all rows), bm25 and cea (not dot products): `dda attribute`
computes those.
"""

from __future__ import annotations

import json
import os
import shutil
import time
import warnings
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..io import read_json, replace_dir, stable_hash, write_json, write_yaml
from ..models import Checkpoint
from .backends import BACKENDS as BACKENDS  # re-exported: callers check names against it
from .backends import IndexSettings, QuerySettings, get_backend, index_backends
from .backends.faiss_ivf import default_nlist as default_nlist  # re-exported for the benchmarks
from .base import FeatureSet, ScoringContext, foldable_methods, method_params, module_normalized
from .gradient import Term, term_query
from .sketch import read_rows
from .topk import release_pages

INDEX_FORMAT = 1
BLOCK_BYTES = 64 << 20  # float32 bytes of concatenated rows held per streaming block


# ------------------------------------------------------------------------------------------------ the fold


@dataclass
class FoldPlan:
    """Which stored checkpoints a method reads (`layout`, in order), how their rows are normalised, and the
    scorer's own terms that read each (grouped by training checkpoint). Symbolic: no features are needed."""

    method: str
    normalize: str  # module | row | none
    slices: dict[str, list[Term]]

    @property
    def layout(self) -> list[str]:
        return list(self.slices)

    def describe(self) -> dict[str, Any]:
        return {
            "method": self.method,
            "normalize": self.normalize,
            "layout": self.layout,
            "slices": {
                k: [{"weight": t.weight, "query_checkpoint": t.query_checkpoint, "side": t.side} for t in v]
                for k, v in self.slices.items()
            },
        }


# How a term's normalisation reads on the stored rows: per module, the whole row (cosine), or none.
_ROW_NORMALIZE = {"module": "module", "cosine": "row", "none": "none"}


def plan_fold(
    spec: str,
    checkpoints: list[Checkpoint],
    has_blocks: bool,
    defaults: dict[str, Any] | None = None,
    default_checkpoints: list[str] | None = None,
) -> FoldPlan:
    """The fold of method `spec` ('dda(beta=0.4,debias_mode=cross)', 'tracin', ...) over `checkpoints`
    (checkpoints[0] is theta0), from the scorer's own terms: the same defaults, readings and error texts as
    `dda attribute`. `has_blocks`: the stores keep per-module columns (normalize=auto -> module).
    `defaults`/`default_checkpoints` are the config's score settings, as `Attributor.attribute` passes them."""
    label, fn, p = method_params(spec, defaults)  # exactly as `run_method` would call the scorer
    terms_of = getattr(fn, "terms", None)
    if terms_of is None:
        raise ValueError(
            f"method '{label}' cannot be folded into one query vector (foldable: the sums of gradient dot "
            f"products, {', '.join(foldable_methods())}); `dda attribute` scores it over the whole store"
        )
    symbolic = FeatureSet(checkpoints, {}, {}, blocks=[] if has_blocks else None)  # names only, no features
    terms = terms_of(ScoringContext(symbolic, [], [], default_checkpoints=default_checkpoints), **p)
    known = {c.name for c in checkpoints}
    unknown = sorted({c for t in terms for c in (t.train, t.query_checkpoint)} - known)
    if unknown:
        raise ValueError(f"method '{label}': unknown checkpoint {unknown[0]!r} (have {sorted(known)})")
    modes = {t.normalize for t in terms}
    if "std" in modes:
        raise ValueError(
            f"method '{label}': normalize=std cannot be folded into one query vector (it scales "
            "each checkpoint's scores by their std over every training row); use normalize=module "
            "or none, or `dda attribute`"
        )
    if len(modes) != 1:
        raise ValueError(f"method '{label}': its terms normalise differently ({sorted(modes)}); not foldable")
    slices: dict[str, list[Term]] = {}
    for t in terms:
        slices.setdefault(t.train, []).append(t)
    return FoldPlan(label, _ROW_NORMALIZE[modes.pop()], slices)


def train_blocks(plan: FoldPlan, blocks: list[int] | None, dim: int) -> list[int] | None:
    """Column blocks each stored row is normalised over: per module, the whole row (grad_cos), or none."""
    if plan.normalize == "module":
        if blocks is None:
            raise ValueError("normalize=module needs per-module features")
        return list(blocks)
    return [dim] if plan.normalize == "row" else None


def query_vectors(plan: FoldPlan, fs: FeatureSet, layout: list[str] | None = None) -> np.ndarray:
    """The folded queries, (n_queries, sum of slice dims) float32, in `layout` order (default: the plan's).

    A layout slice the plan does not use gets zeros (an index built with the theta0 slice serves beta=0)."""
    layout = layout or plan.layout
    missing = [s for s in plan.layout if s not in layout]
    if missing:
        raise ValueError(f"method '{plan.method}' needs checkpoints {missing}, which the layout {layout} lacks")
    n_q = len(next(iter(fs.neg.values())))
    out = []
    for name in layout:
        d = fs.train[name].shape[1]
        blocks = train_blocks(plan, fs.blocks, d)
        vec = np.zeros((n_q, d), dtype=np.float64)
        for t in plan.slices.get(name, []):
            q = term_query(fs, t)
            if q.shape[1] != d:
                raise ValueError(
                    f"query features at {t.query_checkpoint} have {q.shape[1]} dims, the store at {name} {d}"
                )
            vec += t.weight * (module_normalized(q, blocks) if blocks is not None else q)
        out.append(vec.astype(np.float32))
    return np.concatenate(out, axis=1)


# -------------------------------------------------------------------------------------- concatenated rows


def _normalize_(t: torch.Tensor, blocks: list[int]) -> None:
    """Scale each row's column blocks of `t` (rows, sum(blocks)) to unit L2 norm in place (zero stays zero)."""
    if len(set(blocks)) == 1:
        v = t.unflatten(1, (len(blocks), blocks[0]))  # a view: the division writes into t
        v.div_(torch.linalg.vector_norm(v, dim=2, keepdim=True).clamp_min_(1e-30))
        return
    start = 0
    for b in blocks:
        seg = t[:, start : start + b]
        seg.div_(torch.linalg.vector_norm(seg, dim=1, keepdim=True).clamp_min_(1e-30))
        start += b


class ConcatenatedRows:
    """Read-only (n, sum of dims) float32 view of several stores: row z = [f(x_1[z]) | f(x_2[z]) | ...].

    Nothing is concatenated on disk. A row slice reads that block of every store (and releases the pages again:
    resident memory stays one block), normalises each part's `blocks` in place, and returns float32; an array
    of row numbers reads those rows with parallel preads (`sketch.read_rows`). It quacks enough like a 2-D
    array for `topk_scores`, `build_sketch`, `sketch_topk` and `exact_rerank`."""

    ndim = 2
    dtype = np.dtype(np.float32)
    itemsize = 4

    def __init__(self, parts: list[np.ndarray], blocks: list[int] | None = None, names: list[str] | None = None):
        if not parts:
            raise ValueError("no stores to concatenate")
        n = parts[0].shape[0]
        for i, p in enumerate(parts):
            if p.ndim != 2 or p.shape[0] != n:
                raise ValueError(f"store {names[i] if names else i} has shape {p.shape}; every store needs {n} rows")
            if blocks is not None and sum(blocks) != p.shape[1]:
                raise ValueError(
                    f"module blocks cover {sum(blocks)} columns but store {names[i] if names else i} has {p.shape[1]}"
                )
        self.parts, self.blocks, self.names = parts, blocks, names or [str(i) for i in range(len(parts))]
        self.shape = (n, sum(p.shape[1] for p in parts))

    def __len__(self) -> int:
        return self.shape[0]

    def block_rows(self, block_bytes: int = BLOCK_BYTES) -> int:
        return max(1, block_bytes // (self.shape[1] * 4))

    def __getitem__(self, key: Any) -> np.ndarray:
        if isinstance(key, slice):
            start, stop, step = key.indices(self.shape[0])
            if step != 1:
                return self.take(np.arange(start, stop, step))
            return self._fill(stop - start, lambda p: p[start:stop], lambda p: release_pages(p, start, stop))
        if isinstance(key, (int, np.integer)):
            return self.take(np.array([int(key)]))[0]
        return self.take(np.asarray(key))

    def take(self, rows: Iterable[int]) -> np.ndarray:
        rows = np.asarray(rows, dtype=np.int64)
        return self._fill(len(rows), lambda p: read_rows(p, rows), None)

    def _fill(
        self, n: int, read: Callable[[np.ndarray], np.ndarray], release: Callable[[np.ndarray], None] | None
    ) -> np.ndarray:
        out = np.empty((n, self.shape[1]), dtype=np.float32)
        t = torch.from_numpy(out)
        off = 0
        for p in self.parts:
            d = p.shape[1]
            with warnings.catch_warnings():  # a read-only memmap view is only read here
                warnings.simplefilter("ignore", UserWarning)
                t[:, off : off + d].copy_(torch.from_numpy(np.asarray(read(p))))  # float16 -> float32, vectorised
            if release is not None:
                release(p)
            if self.blocks is not None:
                _normalize_(t[:, off : off + d], self.blocks)
            off += d
        return out


def concatenated_rows(plan: FoldPlan, fs: FeatureSet, layout: list[str] | None = None) -> ConcatenatedRows:
    layout = layout or plan.layout
    d = fs.train[layout[0]].shape[1]
    return ConcatenatedRows([fs.train[s] for s in layout], train_blocks(plan, fs.blocks, d), layout)


# ------------------------------------------------------------------------------------------------- indexes


def store_sources(metas: dict[str, dict[str, Any]]) -> dict[str, str]:
    """{checkpoint: fingerprint of its store's settings}: an index is refused once a store changed."""
    from ..features.store import COMPAT_KEYS

    return {name: stable_hash({k: m.get(k) for k in COMPAT_KEYS}) for name, m in metas.items()}


def index_name(backend: str, plan: FoldPlan, blocks: list[int] | None, sources: dict[str, str]) -> str:
    """Directory name of the index of `backend` over the plan's concatenated rows (not its query weights)."""
    key = {
        "layout": plan.layout,
        "normalize": plan.normalize,
        "blocks": blocks,
        "sources": {s: sources.get(s) for s in plan.layout},
    }
    return f"{backend}-{stable_hash(key, 12)}"


def build_index(
    rows: ConcatenatedRows,
    out_dir: str | Path,
    backend: str,
    plan: FoldPlan,
    sources: dict[str, str] | None = None,
    *,
    sketch_dim: int = 256,
    seed: int = 0,
    nlist: int | None = None,
    train_rows: int | None = None,
    run_config: dict | None = None,
    on_block: Callable[[int], None] | None = None,
) -> Path:
    """Build the index of `backend` (sketch, faiss, or any registered backend that needs one) over `rows` into
    `out_dir` (replacing one there), atomically: the backend writes its files into a temporary directory, then
    meta.json is written last and the directory renamed. One streaming pass over the stores for the built-ins
    (what each one builds: `backends/`)."""
    impl = get_backend(backend)
    if not impl.needs_index:
        raise ValueError(f"index backend must be one of {', '.join(index_backends())}, not '{backend}'")
    settings = IndexSettings(sketch_dim=sketch_dim, seed=seed, nlist=nlist, train_rows=train_rows)
    impl.validate(settings)
    out_dir = Path(out_dir)
    tmp = out_dir.with_name(f"{out_dir.name}.partial-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    n, dim = rows.shape
    t0 = time.perf_counter()
    try:
        params = impl.build(rows, tmp, settings, on_block)
        meta = {
            "format": INDEX_FORMAT,
            "backend": backend,
            "n_rows": n,
            "dim": dim,
            "layout": plan.layout,
            "normalize": plan.normalize,
            "blocks": rows.blocks,
            "sources": sources or {},
            "params": params,
            "built_for": plan.describe(),
            "build_seconds": round(time.perf_counter() - t0, 3),
            "bytes": sum(f.stat().st_size for f in tmp.iterdir()),
        }
        write_yaml(
            tmp / "config.yaml", {"index": {k: v for k, v in meta.items() if k != "built_for"}, "run": run_config or {}}
        )
        write_json(tmp / "meta.json", meta)  # last: a directory without it is scratch
        replace_dir(tmp, out_dir, out_dir.with_name(f"{out_dir.name}.old-{os.getpid()}"))
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out_dir


@dataclass
class SearchIndex:
    root: Path
    meta: dict[str, Any]

    @property
    def backend(self) -> str:
        return self.meta["backend"]

    @property
    def layout(self) -> list[str]:
        return list(self.meta["layout"])

    def mismatch(self, plan: FoldPlan, blocks: list[int] | None, sources: dict[str, str] | None) -> str | None:
        """Why this index cannot serve `plan` over stores with `sources`, or None when it can."""
        if self.meta["normalize"] != plan.normalize or self.meta.get("blocks") != blocks:
            return f"built for normalize={self.meta['normalize']}, the method needs normalize={plan.normalize}"
        missing = [s for s in plan.layout if s not in self.layout]
        if missing:
            return f"holds checkpoints {self.layout}, the method also needs {missing}"
        if sources:
            stale = [s for s in self.layout if self.meta["sources"].get(s) != sources.get(s)]
            if stale:
                return f"the stores of {stale} changed since it was built; rebuild it"
        return None

    def candidates(self, rows: ConcatenatedRows, queries: np.ndarray, n: int, nprobe: int) -> np.ndarray:
        """(n_queries, n) candidate row numbers from the index's backend (-1 where it found fewer)."""
        if tuple(rows.shape) != (self.meta["n_rows"], self.meta["dim"]):
            raise ValueError(
                f"{self.root}: index of {self.meta['n_rows']} x {self.meta['dim']} rows, the stores give "
                f"{rows.shape[0]} x {rows.shape[1]}; rebuild it"
            )
        return get_backend(self.backend).candidates(self, rows, queries, n, QuerySettings(n, nprobe))


def open_index(root: str | Path) -> SearchIndex:
    root = Path(root)
    meta_path = root / "meta.json"
    if not meta_path.exists():
        raise FileNotFoundError(f"{root}: no search index here (build it with `dda build-index`)")
    meta = read_json(meta_path)
    backend = meta.get("backend")
    named = isinstance(backend, str)
    scan = named and backend in BACKENDS and not BACKENDS[backend].needs_index  # exact: never builds an index
    if meta.get("format") != INDEX_FORMAT or not named or scan:
        raise ValueError(f"{meta_path}: not a dda search index of format {INDEX_FORMAT}")
    if backend not in BACKENDS:
        raise ValueError(
            f"{meta_path}: an index of backend '{backend}', which is not registered here "
            f"(index backends: {', '.join(index_backends())}); register it before opening its indexes"
        )
    return SearchIndex(root, meta)


def find_index(
    root: str | Path, backend: str, plan: FoldPlan, blocks: list[int] | None, sources: dict[str, str] | None
) -> SearchIndex | None:
    """The newest index of `backend` under `root` that serves `plan` (None if there is none)."""
    root = Path(root)
    if not root.is_dir():
        return None
    found = [open_index(d) for d in root.iterdir() if d.is_dir() and (d / "meta.json").exists()]
    found = [ix for ix in found if ix.backend == backend and ix.mismatch(plan, blocks, sources) is None]
    return max(found, key=lambda ix: (ix.root / "meta.json").stat().st_mtime, default=None)


# -------------------------------------------------------------------------------------------------- search


def search_rows(
    rows: ConcatenatedRows,
    queries: np.ndarray,
    k: int,
    backend: str = "exact",
    index: SearchIndex | None = None,
    candidates: int = 1024,
    nprobe: int = 32,
    on_block: Callable[[int], None] | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Top-k of `queries @ rows.T`: (scores, row numbers), both (n_queries, <= k), scores exact and descending.

    exact: one streaming pass (memory: one block of rows plus the running top-k). sketch/faiss: `candidates`
    rows per query from `index`, re-ranked by their exact scores (rows read with parallel preads). Any other
    registered backend: what its `search` does."""
    impl = get_backend(backend)
    if k < 1:
        raise ValueError(f"k must be positive, not {k}")
    if impl.needs_index and (index is None or index.backend != backend):
        raise ValueError(f"backend '{backend}' needs an index of that kind (`dda build-index --backend {backend}`)")
    return impl.search(rows, queries, k, index, QuerySettings(candidates, nprobe), on_block)


def folded_topk(
    fs: FeatureSet,
    plan: FoldPlan,
    k: int,
    backend: str = "exact",
    index: SearchIndex | None = None,
    sources: dict[str, str] | None = None,
    candidates: int = 1024,
    nprobe: int = 32,
    on_block: Callable[[int], None] | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Top-k of the method `plan` folds, over the stores of `fs`, without any (n_queries x n_train) array."""
    layout = plan.layout
    if get_backend(backend).needs_index:
        if index is None:
            raise ValueError(f"backend '{backend}' needs an index (`dda build-index --backend {backend}`)")
        d = fs.train[plan.layout[0]].shape[1]
        why = index.mismatch(plan, train_blocks(plan, fs.blocks, d), sources)
        if why:
            raise ValueError(f"{index.root}: this index cannot serve '{plan.method}': {why}")
        layout = index.layout
    rows = concatenated_rows(plan, fs, layout)
    return search_rows(rows, query_vectors(plan, fs, layout), k, backend, index, candidates, nprobe, on_block)


def ids_at_rows(path: str | Path, rows: Iterable[int], id_field: str = "id") -> dict[int, str]:
    """{row: id} for the wanted rows of a JSONL file, read line by line (the file is never held in memory)."""
    wanted = {int(r) for r in rows}
    out: dict[int, str] = {}
    with open(path, encoding="utf-8") as fh:
        for i, line in enumerate(fh):
            if i in wanted:
                out[i] = str(json.loads(line).get(id_field, i))
                if len(out) == len(wanted):
                    break
    if len(out) != len(wanted):
        raise ValueError(f"{path}: has fewer rows than the feature store (row {max(wanted - set(out))} missing)")
    return out


@dataclass
class SearchResult:
    """Top-k per query: `scores` and `rows` (n_queries, k), descending, HIGHER = MORE RESPONSIBLE."""

    method: str
    backend: str
    query_ids: list[str]
    scores: np.ndarray
    rows: np.ndarray
    train_ids: dict[int, str] = field(default_factory=dict)
    settings: dict[str, Any] = field(default_factory=dict)

    def top(self, query: int = 0) -> list[dict[str, Any]]:
        return [
            {"rank": r + 1, "row": int(i), "train_id": self.train_ids.get(int(i)), "score": float(s)}
            for r, (s, i) in enumerate(zip(self.scores[query], self.rows[query], strict=True))
        ]

    def save(self, out_dir: str | Path, run_config: dict[str, Any] | None = None) -> Path:
        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        write_yaml(out / "config.yaml", {"search": self.settings, "run": run_config or {}})
        write_json(
            out / "search.json",
            {
                "orientation": "higher score = more responsible for the query's negative output",
                "method": self.method,
                "backend": self.backend,
                "scores": "exact scores of the method; an index backend may miss rows, never misscore them",
                "queries": [{"id": q, "top": self.top(i)} for i, q in enumerate(self.query_ids)],
            },
        )
        return out
