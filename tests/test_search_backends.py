"""The search backend registry: the built-ins agree with the config, and a user's backend is selected by name
through the same path as the built-ins (`dda build-index`, `dda search`, `search.backend`, the API)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, get_args, get_type_hints

import numpy as np
import pytest
import yaml

from dda.config import ConfigError, DDAConfig, SearchConfig, apply_overrides
from dda.models import BASE, Checkpoint
from dda.scoring.backends import (
    BACKENDS,
    IndexSettings,
    QuerySettings,
    SearchBackend,
    get_backend,
    index_backends,
    register_backend,
)
from dda.scoring.search import ConcatenatedRows, SearchIndex, build_index, open_index, plan_fold, search_rows


class EveryRow(SearchBackend):
    """A user's index backend: its index is the list of every row number, so each query's candidates are every
    row and the exact re-ranking must give the exact top-k."""

    name = "every-row"

    def build(self, rows: Any, out_dir: Path, settings: IndexSettings, on_block: Any = None) -> dict[str, Any]:
        np.save(out_dir / "rows.npy", np.arange(rows.shape[0]), allow_pickle=False)
        return {"rows": rows.shape[0]}

    def candidates(
        self, index: SearchIndex, rows: Any, queries: np.ndarray, n: int, settings: QuerySettings
    ) -> np.ndarray:
        order = np.load(index.root / "rows.npy", allow_pickle=False)
        return np.broadcast_to(order, (len(queries), len(order)))


class ReversedScan(SearchBackend):
    """A user's scan backend (no index): scores every row, keeps the k best."""

    name = "reversed-scan"
    needs_index = False
    reads = ()

    def search(
        self,
        rows: Any,
        queries: np.ndarray,
        k: int,
        index: SearchIndex | None,
        settings: QuerySettings,
        on_block: Any = None,
    ) -> tuple[np.ndarray, np.ndarray]:
        scores = queries @ np.asarray(rows[:], dtype=np.float32).T
        order = np.argsort(-scores, axis=1, kind="stable")[:, :k]
        return np.take_along_axis(scores, order, 1), order


@pytest.fixture
def user_backends():
    """EveryRow and ReversedScan registered for one test, then removed again (the registry is process-wide)."""
    for cls in (EveryRow, ReversedScan):
        register_backend(cls)
    yield
    for cls in (EveryRow, ReversedScan):
        BACKENDS.pop(cls.name)


def test_config_literal_lists_the_builtin_backends_in_registry_order():
    assert get_args(get_type_hints(SearchConfig)["backend"]) == tuple(BACKENDS) == ("exact", "sketch", "faiss")
    assert index_backends() == ["sketch", "faiss"]
    assert [get_backend(n).needs_index for n in BACKENDS] == [False, True, True]


def test_unknown_and_clashing_names_are_refused():
    with pytest.raises(ValueError, match="backend must be one of exact, sketch, faiss, not 'annoy'"):
        get_backend("annoy")
    with pytest.raises(ConfigError, match="search.backend must be one of exact, sketch, faiss; got 'annoy'"):
        apply_overrides(DDAConfig(), {"search.backend": "annoy"})

    class Clash(SearchBackend):
        name = "sketch"

    with pytest.raises(ValueError, match="already registered"):
        register_backend(Clash)

    class BadName(SearchBackend):
        name = "two words"

    with pytest.raises(ValueError, match="letters, digits"):
        register_backend(BadName)
    with pytest.raises(TypeError, match="SearchBackend subclass"):
        register_backend(object)  # type: ignore[arg-type]
    assert tuple(BACKENDS) == ("exact", "sketch", "faiss")


def test_registered_backend_is_a_config_choice(user_backends):
    cfg = apply_overrides(DDAConfig(), {"search.backend": "every-row"}, "--set")
    assert cfg.search.backend == "every-row"
    with pytest.raises(ConfigError, match="exact, sketch, faiss, every-row, reversed-scan; got 'annoy'"):
        apply_overrides(DDAConfig(), {"search.backend": "annoy"})


def test_registered_scan_backend_serves_search_rows(user_backends):
    rng = np.random.default_rng(0)
    rows = ConcatenatedRows([rng.standard_normal((30, 6)).astype(np.float32)])
    queries = rng.standard_normal((2, 6)).astype(np.float32)
    want = search_rows(rows, queries, 5)
    got = search_rows(rows, queries, 5, "reversed-scan")
    np.testing.assert_allclose(got[0], want[0], rtol=1e-6)
    assert (got[1] == want[1]).all()
    with pytest.raises(ValueError, match="needs an index"):
        search_rows(rows, queries, 5, "every-row")


def test_registered_index_backend_through_the_cli(tmp_path, user_backends):
    """`dda build-index --backend every-row` and `dda search --backend every-row` on a tiny Llama's workdir: the
    index is found by name, opened and read, and its (every-row) candidates give the exact backend's answer."""
    from conftest import random_examples, save_tiny_model, tiny_config
    from typer.testing import CliRunner

    from dda import Attributor, Query
    from dda.cli import app
    from dda.io import write_yaml

    cfg = tiny_config(save_tiny_model(tmp_path / "model"), {"train.epochs": 1})
    write_yaml(tmp_path / "cfg.yaml", cfg.to_dict())
    train = random_examples(10)
    wd = tmp_path / "run"
    att = Attributor(cfg, wd)
    att.finetune(train)
    att.index(train)
    q = Query("q0", train[2].prompt, train[2].response, train[6].response)
    (tmp_path / "q.jsonl").write_text(
        json.dumps({"id": q.id, "prompt": q.prompt, "negative": q.negative, "positive": q.positive}) + "\n"
    )
    common = ["-w", str(wd), "--config", str(tmp_path / "cfg.yaml"), "--quiet"]
    runner = CliRunner()

    def search(backend: str) -> dict:
        out = tmp_path / f"s-{backend}"
        args = ["search", *common, "--queries", str(tmp_path / "q.jsonl"), "--k", "4", "--backend", backend]
        res = runner.invoke(app, [*args, "--out", str(out)])
        assert res.exit_code == 0, res.output
        return json.loads((out / "search.json").read_text())

    res = runner.invoke(app, ["build-index", *common, "--backend", "reversed-scan"])
    assert res.exit_code == 2 and "index backend must be one of sketch, faiss, every-row" in res.output
    res = runner.invoke(app, ["build-index", *common, "--backend", "every-row"])
    assert res.exit_code == 0, res.output
    (index_dir,) = (wd / "features" / "index").iterdir()
    assert index_dir.name.startswith("every-row-") and (index_dir / "rows.npy").exists()
    assert open_index(index_dir).meta["params"] == {"rows": 10}

    exact = search("exact")
    for backend in ("every-row", "reversed-scan"):
        got = search(backend)
        assert got["backend"] == backend
        assert [r["row"] for r in got["queries"][0]["top"]] == [r["row"] for r in exact["queries"][0]["top"]]
        np.testing.assert_allclose(
            [r["score"] for r in got["queries"][0]["top"]], [r["score"] for r in exact["queries"][0]["top"]], rtol=1e-5
        )
    # what each search read is recorded beside it: candidates for an index backend, nothing for a scan
    recorded = {
        b: yaml.safe_load((tmp_path / f"s-{b}" / "config.yaml").read_text())["search"]
        for b in ("exact", "every-row", "reversed-scan")
    }
    assert recorded["every-row"]["candidates"] == 1024 and recorded["every-row"]["nprobe"] is None
    assert recorded["reversed-scan"]["candidates"] is None and recorded["exact"]["candidates"] is None


def test_an_index_of_an_unregistered_backend_is_named(tmp_path, user_backends):
    plan = plan_fold("grad_dot", [BASE, Checkpoint("epoch-1", "/x/epoch-1", "lora", 1e-3, 1)], False)
    out = build_index(ConcatenatedRows([np.ones((4, 3), dtype=np.float32)]), tmp_path / "ix", "every-row", plan)
    BACKENDS.pop("every-row")
    try:
        with pytest.raises(ValueError, match="backend 'every-row', which is not registered"):
            open_index(out)
    finally:
        register_backend(EveryRow)
    meta = json.loads((out / "meta.json").read_text())
    (out / "meta.json").write_text(json.dumps({**meta, "backend": "exact"}))  # a scan backend has no index
    with pytest.raises(ValueError, match="not a dda search index"):
        open_index(out)
