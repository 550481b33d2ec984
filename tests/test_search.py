"""Folded top-k search: equal to the scorers' full (n_queries x n_train) output; sketch and faiss indexes."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest

from dda.data import Query
from dda.models import BASE, Checkpoint
from dda.scoring import FeatureSet, ScoringContext, run_method
from dda.scoring.base import module_normalized
from dda.scoring.search import (
    ConcatenatedRows,
    build_index,
    concatenated_rows,
    find_index,
    folded_topk,
    index_name,
    open_index,
    plan_fold,
    query_vectors,
    store_sources,
    train_blocks,
)
from dda.scoring.topk import topk_scores

N_TRAIN, N_Q = 257, 3
CKPTS = [BASE] + [
    Checkpoint(f"epoch-{e}", f"/x/epoch-{e}", "lora", lr, e) for e, lr in ((1, 3e-3), (2, 2e-3), (3, 1e-3))
]
# what Attributor.attribute passes from the default config (score.beta=-1, normalize=auto)
DEFAULTS = {"beta": -1.0, "debias_mode": "base", "normalize": "auto", "trak_lambda": 1e-2}


def _features(tmp: Path, blocks: list[int] | None, dtype: str, seed: int = 0) -> FeatureSet:
    """Random stores (real float16/float32 memmaps), checkpoint-dependent, some module slices all zero."""
    rng = np.random.default_rng(seed)
    d = sum(blocks) if blocks else 40
    train, neg, pos, cneg = {}, {}, {}, {}
    shared = rng.standard_normal((N_TRAIN, d)).astype(np.float32)
    for i, c in enumerate(CKPTS):
        x = (shared + 0.7 * rng.standard_normal((N_TRAIN, d))) * rng.uniform(0.1, 30, size=(1, d))
        x[5 + i, : (blocks or [d])[0]] = 0.0  # a zero module slice stays zero under normalisation
        np.save(tmp / f"{c.name}.npy", x.astype(dtype), allow_pickle=False)
        train[c.name] = np.load(tmp / f"{c.name}.npy", mmap_mode="r", allow_pickle=False)
        neg[c.name], pos[c.name], cneg[c.name] = (rng.standard_normal((N_Q, d)).astype(np.float32) for _ in range(3))
    return FeatureSet(CKPTS, train, neg, pos, contrast_neg=cneg, blocks=blocks)


def _reference(fs: FeatureSet, spec: str) -> np.ndarray:
    ctx = ScoringContext(fs, [""] * N_TRAIN, [Query(str(i), "", "n", "p") for i in range(N_Q)])
    return run_method(spec, ctx, DEFAULTS)


SPECS = [
    "dda",
    "dda(beta=0.4)",
    "dda(beta=0.4,debias_mode=cross)",
    "dda(beta=-1,debias_mode=query0)",
    "dda(beta=-1,normalize=none)",
    "dda(beta=0.4,normalize=none,debias_mode=cross)",
    "dda(beta=0)",
    "dda_no_denoise",
    "dda_no_debias",
    "dda_no_contrast",
    "dda(checkpoints=epoch-1+epoch-3,beta=-2)",
    "dda(normalize=module,debias_mode=query0,beta=2)",
    "grad_dot",
    "grad_dot(checkpoint=epoch-1)",
    "grad_cos",
    "tracin",
]


@pytest.mark.parametrize("blocks,dtype", [([6, 10, 16], "float16"), ([8, 8, 8, 8], "float32"), (None, "float32")])
@pytest.mark.parametrize("spec", SPECS)
def test_folded_topk_equals_full_scorer(tmp_path, blocks, dtype, spec):
    fs = _features(tmp_path, blocks, dtype)
    if blocks is None and "normalize=module" in spec:
        with pytest.raises(ValueError, match="per-module features"):
            plan_fold(spec, CKPTS, False, DEFAULTS)
        return
    ref = _reference(fs, spec)
    plan = plan_fold(spec, CKPTS, blocks is not None, DEFAULTS)
    scores, rows = folded_topk(fs, plan, k=N_TRAIN)  # the whole ranking
    scale = np.abs(ref).max()
    np.testing.assert_allclose(scores, np.sort(ref, axis=1)[:, ::-1], rtol=1e-5, atol=1e-5 * scale)
    np.testing.assert_allclose(np.take_along_axis(ref, rows, 1), scores, rtol=1e-5, atol=1e-5 * scale)
    assert all(len(set(r)) == N_TRAIN for r in rows.tolist())
    # top-10 over blocks of 7 rows: the streaming merge keeps the same rows
    q, cat = query_vectors(plan, fs), concatenated_rows(plan, fs)
    top_v, top_i = topk_scores(cat, q, 10, block_rows=7)
    np.testing.assert_allclose(top_v, scores[:, :10], rtol=1e-5, atol=1e-5 * scale)
    np.testing.assert_allclose(np.take_along_axis(ref, top_i, 1), top_v, rtol=1e-5, atol=1e-5 * scale)


def test_plan_reads_only_the_stores_it_needs():
    assert plan_fold("dda(beta=0)", CKPTS, True).layout == ["epoch-1", "epoch-2", "epoch-3"]
    assert plan_fold("dda(beta=0.4)", CKPTS, True).layout == ["epoch-1", "epoch-2", "epoch-3", "base"]
    assert plan_fold("dda(beta=0.4,debias_mode=query0)", CKPTS, True).layout == ["epoch-1", "epoch-2", "epoch-3"]
    assert plan_fold("dda_no_denoise", CKPTS, True, DEFAULTS).layout == ["epoch-3", "base"]
    plan = plan_fold("tracin", CKPTS, True)
    assert [c.weight for s in plan.slices.values() for c in s] == [3e-3, 2e-3, 1e-3]


@pytest.mark.parametrize(
    "spec,match",
    [
        ("trak", "cannot be folded"),
        ("bm25", "cannot be folded"),
        ("dda(normalize=std)", "normalize=std"),
        ("dda(bogus=1)", "unknown param"),
        ("dda(checkpoints=epoch-9)", "unknown checkpoints"),
        ("dda(beta=1,debias_mode=other)", "debias_mode"),
    ],
)
def test_unfoldable_methods_are_refused(spec, match):
    with pytest.raises(ValueError, match=match):
        plan_fold(spec, CKPTS, True)


def test_concatenated_rows_normalise_each_part(tmp_path):
    fs = _features(tmp_path, [6, 10, 16], "float16")
    cat = ConcatenatedRows([fs.train["epoch-2"], fs.train["base"]], [6, 10, 16], ["epoch-2", "base"])
    want = np.concatenate(
        [module_normalized(np.asarray(fs.train[n], dtype=np.float32), [6, 10, 16]) for n in ("epoch-2", "base")], axis=1
    )
    assert cat.shape == (N_TRAIN, 64)
    np.testing.assert_allclose(cat[10:50], want[10:50], rtol=1e-5, atol=1e-6)
    rows = np.array([200, 3, 7, 7, 100] * 10)  # unordered, repeated, enough for parallel preads
    np.testing.assert_allclose(cat[rows], want[rows], rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(cat[5], want[5], rtol=1e-5, atol=1e-6)
    assert not cat[7][:6].any() and not cat[5][32:38].any() and cat[5][:6].any()  # zero slices stay zero
    with pytest.raises(ValueError, match="blocks cover"):
        ConcatenatedRows([fs.train["base"]], [6, 10])


def _sources(fs: FeatureSet, tag: str = "v1") -> dict[str, str]:
    return store_sources({c.name: {"checkpoint": c.name, "data": tag} for c in CKPTS})


@pytest.mark.parametrize("backend", ["sketch", "faiss"])
def test_index_backends(tmp_path, backend):
    if backend == "faiss":
        pytest.importorskip("faiss")
    fs = _features(tmp_path, [6, 10, 16], "float16")
    built_for = plan_fold("dda", CKPTS, True, DEFAULTS)  # beta=-1: theta0 slice included
    sources = _sources(fs)
    cat = concatenated_rows(built_for, fs)
    root = tmp_path / "index"
    out = build_index(
        cat,
        root / index_name(backend, built_for, cat.blocks, sources),
        backend,
        built_for,
        sources,
        sketch_dim=16,
        seed=3,
        nlist=4 if backend == "faiss" else None,
    )
    meta = json.loads((out / "meta.json").read_text())
    assert meta["layout"] == ["epoch-1", "epoch-2", "epoch-3", "base"] and (out / "config.yaml").exists()
    assert meta["bytes"] > 0 and not list(root.glob("*.partial-*"))
    assert sorted(p.name for p in out.iterdir()) == (
        ["config.yaml", "meta.json", "sketch.npy", "sketch.npy.json"]
        if backend == "sketch"
        else ["config.yaml", "ivf.faiss", "meta.json"]
    )
    # the same index serves other betas and readings that use a subset of its slices
    for spec in ("dda", "dda(beta=0)", "dda(beta=0.4,debias_mode=cross)", "dda(beta=1,debias_mode=query0)"):
        plan = plan_fold(spec, CKPTS, True, DEFAULTS)
        index = find_index(root, backend, plan, train_blocks(plan, fs.blocks, 32), sources)
        assert index is not None and index.root == out
        exact_v, exact_i = folded_topk(fs, plan, 20)
        # every row a candidate (faiss: every list probed): the index backend must give the exact answer
        v, i = folded_topk(fs, plan, 20, backend, index, sources, candidates=N_TRAIN, nprobe=4)
        np.testing.assert_allclose(v, exact_v, rtol=1e-5, atol=1e-5 * np.abs(exact_v).max())
        assert (i == exact_i).mean() > 0.95  # near-ties may swap
        # fewer candidates: scores still exact for the rows returned, most of the top-20 found
        v, i = folded_topk(fs, plan, 20, backend, index, sources, candidates=100, nprobe=2)
        ref = _reference(fs, spec)
        np.testing.assert_allclose(np.take_along_axis(ref, i, 1), v, rtol=1e-5, atol=1e-5 * np.abs(ref).max())
        recall = np.mean([len(set(a) & set(b)) / 20 for a, b in zip(i.tolist(), exact_i.tolist(), strict=True)])
        assert recall > 0.5, recall
    # what it cannot serve is refused with the reason
    raw = plan_fold("grad_dot", CKPTS, True)
    assert find_index(root, backend, raw, train_blocks(raw, fs.blocks, 32), sources) is None
    index = open_index(out)
    with pytest.raises(ValueError, match="normalize"):
        folded_topk(fs, raw, 5, backend, index, sources)
    with pytest.raises(ValueError, match="changed since it was built"):
        folded_topk(fs, built_for, 5, backend, index, _sources(fs, "v2"))
    with pytest.raises(ValueError, match="needs an index"):
        folded_topk(fs, built_for, 5, backend)
    # rebuilding replaces the index atomically
    build_index(cat, out, backend, built_for, sources, sketch_dim=8, nlist=2 if backend == "faiss" else None)
    assert open_index(out).meta["params"]["sketch_dim"] == 8 and len(list(root.iterdir())) == 1


@pytest.mark.parametrize("n,d", [(40, 12), (12, 40)])
def test_trak_reads_blocks_and_solves_min_n_d(tmp_path, n, d):
    """TRAK streams the store in blocks (here a few rows or columns at a time) and equals the direct formula."""
    from dda.scoring.gradient import trak_scores

    rng = np.random.default_rng(n)
    np.save(tmp_path / "phi.npy", rng.standard_normal((n, d)).astype(np.float32), allow_pickle=False)
    phi = np.load(tmp_path / "phi.npy", mmap_mode="r", allow_pickle=False)
    q = rng.standard_normal((3, d))
    p64 = np.asarray(phi, dtype=np.float64)
    m = min(n, d)
    lam = 0.05 * np.trace(p64.T @ p64) / m
    direct = q @ np.linalg.solve(p64.T @ p64 + lam * np.eye(d), p64.T)
    for block_bytes in (8 * 5 * max(n, d), 1 << 26):
        np.testing.assert_allclose(trak_scores(phi, q, 0.05, block_bytes=block_bytes), direct, rtol=1e-8, atol=1e-10)


def test_search_cli_end_to_end(tmp_path):
    """Tiny Llama saved as a model dir; fine-tune + index through the API, then `dda build-index` and `dda search`
    from the CLI: the exact backend equals `attribute`'s full dda scores, the index backends find the same top."""
    from conftest import save_tiny_model, tiny_config
    from typer.testing import CliRunner

    from dda import Attributor, Example
    from dda.cli import app
    from dda.io import write_yaml

    cfg = tiny_config(save_tiny_model(tmp_path / "model"))
    write_yaml(tmp_path / "cfg.yaml", cfg.to_dict())
    rng = np.random.default_rng(0)
    words = "England China France team match police court government minister news report people".split()
    train = [Example(f"ex{i}", " ".join(rng.choice(words, 12)), " ".join(rng.choice(words, 4))) for i in range(12)]
    wd = tmp_path / "run"
    att = Attributor(cfg, wd)
    att.finetune(train)
    att.index(train)
    queries = [
        Query("q0", train[2].prompt, train[2].response, train[6].response),
        Query("q1", train[5].prompt, "China team", "England team"),
    ]
    (tmp_path / "q.jsonl").write_text(
        "".join(
            json.dumps({"id": q.id, "prompt": q.prompt, "negative": q.negative, "positive": q.positive}) + "\n"
            for q in queries
        )
    )
    full = att.attribute(queries, ["dda"]).scores["dda"]
    runner = CliRunner()
    base_args = [
        "-w",
        str(wd),
        "--queries",
        str(tmp_path / "q.jsonl"),
        "--k",
        "5",
        "--config",
        str(tmp_path / "cfg.yaml"),
        "--quiet",
    ]

    def search(*extra: str) -> dict:
        res = runner.invoke(app, ["search", *base_args, *extra])
        assert res.exit_code == 0, res.output
        out = Path(extra[extra.index("--out") + 1])
        assert (out / "config.yaml").exists()
        return json.loads((out / "search.json").read_text())

    exact = search("--out", str(tmp_path / "s-exact"))
    for qi, q in enumerate(exact["queries"]):
        assert [r["rank"] for r in q["top"]] == [1, 2, 3, 4, 5]
        order = np.argsort(-full[qi], kind="stable")[:5]
        np.testing.assert_allclose([r["score"] for r in q["top"]], full[qi][order], rtol=1e-4, atol=1e-6)
        assert [r["train_id"] for r in q["top"]] == [train[r["row"]].id for r in q["top"]]
    res = runner.invoke(app, ["search", *base_args, "--backend", "sketch"])
    assert res.exit_code == 2 and "build-index" in res.output
    res = runner.invoke(app, ["search", *base_args, "--method", "trak"])
    assert res.exit_code == 2 and "cannot be folded" in res.output
    backends = ["sketch", "faiss"] if _has_faiss() else ["sketch"]
    for backend in backends:
        res = runner.invoke(
            app,
            [
                "build-index",
                "-w",
                str(wd),
                "--backend",
                backend,
                "--sketch-dim",
                "16",
                "--config",
                str(tmp_path / "cfg.yaml"),
                "--quiet",
            ],
        )
        assert res.exit_code == 0, res.output
        got = search("--backend", backend, "--candidates", "12", "--out", str(tmp_path / f"s-{backend}"))
        for a, b in zip(got["queries"], exact["queries"], strict=True):
            assert [r["row"] for r in a["top"]] == [r["row"] for r in b["top"]]
    assert len(list((wd / "features" / "index").iterdir())) == len(backends)


def _has_faiss() -> bool:
    try:
        import faiss  # noqa: F401
    except ImportError:
        return False
    return True


@pytest.mark.slow
def test_search_cli_scale_benchmark_runs_end_to_end(tmp_path):
    """benchmarks/search_cli_scale.py at 400 documents: every `dda` command succeeds, the exact backend agrees with
    itself cold and warm, and the result records each command's time and memory."""
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
    import search_cli_scale

    out = tmp_path / "out"
    code = search_cli_scale.main(
        [
            "--n",
            "400",
            "--k",
            "20",
            "--queries",
            "2",
            "--backends",
            "exact,sketch",
            "--dir",
            str(tmp_path),
            "--out",
            str(out),
        ]
    )
    assert code == 0
    r = json.loads((out / "result.json").read_text())
    assert r["dim_per_checkpoint"] == 4096 and len(r["checkpoints"]) == 2
    steps = r["steps"]
    assert steps["search_exact_warm"]["recall_vs_exact"] == 1.0
    # `dda search` re-ranks 1,024 candidates by default: over 400 rows that is every row, so the sketch's top-20
    # must be the exact one, and built-then-reused must agree with built-now
    assert steps["search_sketch_build"]["recall_vs_exact"] == steps["search_sketch_built"]["recall_vs_exact"] == 1.0
    assert all(v["peak_rss_mb"] > 0 for k, v in steps.items() if k != "write_data")
    assert "| index |" in (out / "result.md").read_text()
