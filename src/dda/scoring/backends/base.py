"""The interface every search backend implements, and the registry that selects one by name."""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np

from ...config import register_choices
from ..sketch import exact_rerank

if TYPE_CHECKING:  # type hints only: search.py imports this package
    from ..search import ConcatenatedRows, SearchIndex

RowsProgress = Callable[[int], None]  # called with the row number a streaming pass has reached


@dataclass(frozen=True)
class IndexSettings:
    """What `SearchBackend.build` may read: the config's `search.sketch_dim`, `search.seed` and `search.nlist`,
    and `train_rows` (faiss's training sample, API only). A backend ignores what it has no use for."""

    sketch_dim: int = 256
    seed: int = 0
    nlist: int | None = None
    train_rows: int | None = None


@dataclass(frozen=True)
class QuerySettings:
    """What a search may read: `candidates` rows per query re-ranked exactly (index backends), and `nprobe`
    inverted lists scanned per query (faiss)."""

    candidates: int = 1024
    nprobe: int = 32


class SearchBackend:
    """One way to find the top-k of `queries @ rows.T` over the concatenated rows of the stores: the whole
    interface search.py uses (`build_index`, `SearchIndex`, `search_rows`, `folded_topk`).

    A backend either scans the rows itself (`needs_index = False`: override `search`), or builds an index once
    (`build`) and reads candidate rows from it (`candidates`); the default `search` then ranks the candidates by
    their exact scores, so an index backend can miss rows but never misscore them. search.py owns what is common
    to every index: its directory, written atomically with meta.json last, the fingerprint of the stores it was
    built from and the checks that it still serves a method."""

    name: ClassVar[str] = "base"  # what `search.backend` and `--backend` say
    """The backend's name: what `search.backend` and `--backend` say."""
    needs_index: ClassVar[bool] = True  # False: `search` needs no index (`dda build-index` refuses it)
    """False: `search` scans the rows itself and needs no index (`dda build-index` refuses it)."""
    reads: ClassVar[tuple[str, ...]] = ("candidates",)  # the QuerySettings fields a search uses (recorded)
    """The QuerySettings fields a search with it uses (recorded with the results)."""

    def validate(self, settings: IndexSettings) -> None:
        """Refuse bad settings or a missing optional dependency before anything is written."""

    def build(
        self, rows: ConcatenatedRows, out_dir: Path, settings: IndexSettings, on_block: RowsProgress | None = None
    ) -> dict[str, Any]:
        """Write the index files of `rows` into `out_dir` (a fresh directory that search.build_index renames into
        place once meta.json is written) and return the parameters recorded as meta.json's `params`."""
        raise NotImplementedError(f"search backend '{self.name}' builds no index")

    def candidates(
        self, index: SearchIndex, rows: ConcatenatedRows, queries: np.ndarray, n: int, settings: QuerySettings
    ) -> np.ndarray:
        """(n_queries, n) candidate row numbers of `queries` from `index` (-1 where the index found fewer)."""
        raise NotImplementedError(f"search backend '{self.name}' gives no candidates")

    def search(
        self,
        rows: ConcatenatedRows,
        queries: np.ndarray,
        k: int,
        index: SearchIndex | None,
        settings: QuerySettings,
        on_block: RowsProgress | None = None,
    ) -> tuple[np.ndarray, np.ndarray]:
        """Top-k of `queries @ rows.T`: (scores, row numbers), both (n_queries, <= k), scores exact, descending.
        An index backend's: `settings.candidates` rows per query from `index`, re-ranked exactly."""
        assert index is not None  # search_rows refuses an index backend without its index
        candidates = index.candidates(rows, queries, max(k, settings.candidates), settings.nprobe)
        return exact_rerank(rows, queries, candidates, k)


BACKENDS: dict[str, type[SearchBackend]] = {}  # {name: class}, in registration order (the built-ins first)
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*")  # it names index directories and is typed after --backend


def register_backend(cls: type[SearchBackend]) -> type[SearchBackend]:
    """A new search backend is one `SearchBackend` subclass with this decorator: `dda search --backend <name>`,
    `dda build-index --backend <name>`, `search.backend` in a config and `Attributor.search` then select it."""
    if not (isinstance(cls, type) and issubclass(cls, SearchBackend)):
        raise TypeError(f"register_backend takes a SearchBackend subclass, not {cls!r}")
    if not _NAME.fullmatch(cls.name):
        raise ValueError(
            f"search backend name {cls.name!r}: letters, digits, '_', '.' and '-' only, starting with a letter or digit"
        )
    known = BACKENDS.get(cls.name)
    if known is not None and _path(known) != _path(cls):  # the same class again (a module reload) is fine
        # a name keeps meaning one thing: an index directory records only the name of the backend that built it
        raise ValueError(f"search backend '{cls.name}' is already registered ({_path(known)})")
    BACKENDS[cls.name] = cls
    return cls


def _path(cls: type) -> str:
    return f"{cls.__module__}.{cls.__qualname__}"


def get_backend(name: str) -> SearchBackend:
    """The backend registered as `name`, or a ValueError listing every registered one."""
    if name not in BACKENDS:
        raise ValueError(f"backend must be one of {', '.join(BACKENDS)}, not '{name}'")
    return BACKENDS[name]()


def index_backends() -> list[str]:
    """Names of the backends that build an index (`dda build-index --backend`)."""
    return [name for name, cls in BACKENDS.items() if cls.needs_index]


register_choices("search.backend", lambda: BACKENDS)  # `--set search.backend=NAME` accepts a registered name
