"""Score algebra on hand-built features: DDA equals its definition, ablations, baselines, sign convention."""

from __future__ import annotations

import numpy as np
import pytest

from dda.data import Query
from dda.models import Checkpoint
from dda.scoring import FeatureSet, ScoringContext, parse_method, run_method
from dda.scoring.base import dot_scores

N, D, Q = 30, 12, 3


@pytest.fixture
def ctx():
    rng = np.random.default_rng(0)
    cks = [
        Checkpoint("base"),
        Checkpoint("epoch-1", "x", "lora", lr=1e-3, epoch=1),
        Checkpoint("epoch-2", "x", "lora", lr=5e-4, epoch=2),
        Checkpoint("epoch-3", "x", "lora", lr=2e-4, epoch=3),
    ]
    fs = FeatureSet(
        cks,
        {c.name: rng.normal(size=(N, D)).astype(np.float32) for c in cks},
        {c.name: rng.normal(size=(Q, D)).astype(np.float32) for c in cks},
        {c.name: rng.normal(size=(Q, D)).astype(np.float32) for c in cks},
    )
    queries = [Query(f"q{i}", "p", "neg", "pos") for i in range(Q)]
    return ScoringContext(fs, [f"t{i}" for i in range(N)], queries)


def _is(fs, train_ck, query_ck, contrastive=True):
    q = fs.neg[query_ck] - fs.pos[query_ck] if contrastive else fs.neg[query_ck]
    return q.astype(np.float64) @ fs.train[train_ck].T.astype(np.float64)


def test_dda_equals_definition(ctx):
    fs = ctx.features
    ft = ["epoch-1", "epoch-2", "epoch-3"]
    beta = 0.4
    expected = np.mean([_is(fs, c, c) for c in ft], axis=0) - beta * _is(fs, "base", "base")
    np.testing.assert_allclose(run_method(f"dda(beta={beta})", ctx), expected, rtol=1e-5, atol=1e-5)
    # the other reading of the debias term: training gradient at theta0, query gradient at theta_k
    cross = np.mean([_is(fs, c, c) for c in ft], axis=0) - beta * np.mean([_is(fs, "base", c) for c in ft], axis=0)
    np.testing.assert_allclose(run_method(f"dda(beta={beta},debias_mode=cross)", ctx), cross, rtol=1e-5, atol=1e-5)
    q0 = np.mean([_is(fs, c, c) for c in ft], axis=0) - beta * np.mean([_is(fs, c, "base") for c in ft], axis=0)
    np.testing.assert_allclose(run_method(f"dda(beta={beta},debias_mode=query0)", ctx), q0, rtol=1e-5, atol=1e-5)
    # the sign is a parameter: beta < 0 adds the base score
    added = np.mean([_is(fs, c, c) for c in ft], axis=0) + 0.5 * _is(fs, "base", "base")
    np.testing.assert_allclose(run_method("dda(beta=-0.5)", ctx), added, rtol=1e-5, atol=1e-5)


def test_dda_ablations(ctx):
    fs = ctx.features
    ft = ["epoch-1", "epoch-2", "epoch-3"]
    d = {"beta": 0.3}
    mean_k = np.mean([_is(fs, c, c) for c in ft], axis=0)
    np.testing.assert_allclose(run_method("dda_no_debias", ctx, d), mean_k, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(
        run_method("dda_no_denoise", ctx, d),
        _is(fs, "epoch-3", "epoch-3") - 0.3 * _is(fs, "base", "base"),
        rtol=1e-5,
        atol=1e-5,
    )
    no_contrast = np.mean([_is(fs, c, c, False) for c in ft], axis=0) - 0.3 * _is(fs, "base", "base", False)
    np.testing.assert_allclose(run_method("dda_no_contrast", ctx, d), no_contrast, rtol=1e-5, atol=1e-5)
    # checkpoint subset
    np.testing.assert_allclose(
        run_method("dda(checkpoints=epoch-1+epoch-2,beta=0)", ctx),
        np.mean([_is(fs, c, c) for c in ft[:2]], axis=0),
        rtol=1e-5,
        atol=1e-5,
    )


def test_normalized_terms_have_unit_scale(ctx):
    s = run_method("dda(normalize=true,checkpoints=epoch-1,beta=0)", ctx)
    np.testing.assert_allclose(s.std(axis=1), 1.0, rtol=1e-5)


def _module_cos(a, b, blocks):
    out, start = 0.0, 0
    for w in blocks:
        x, y = a[:, start : start + w].astype(np.float64), b[:, start : start + w].astype(np.float64)
        out = out + (x / np.linalg.norm(x, axis=1, keepdims=True)) @ (y / np.linalg.norm(y, axis=1, keepdims=True)).T
        start += w
    return out


def test_module_normalization(ctx):
    fs = ctx.features
    with pytest.raises(ValueError, match="per-module features"):
        run_method("dda(normalize=module)", ctx)
    np.testing.assert_allclose(run_method("dda", ctx), run_method("dda(normalize=none)", ctx))  # auto: no blocks
    fs.blocks = [4, 8]
    ft = ["epoch-1", "epoch-2", "epoch-3"]
    expected = np.mean(
        [_module_cos(fs.neg[c] - fs.pos[c], fs.train[c], fs.blocks) for c in ft], axis=0
    ) + 0.5 * _module_cos(fs.neg["base"] - fs.pos["base"], fs.train["base"], fs.blocks)
    got = run_method("dda(beta=-0.5,normalize=module)", ctx)
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(run_method("dda(beta=-0.5)", ctx), got)  # auto picks module when it can
    # scaling one module of one training example changes nothing: each module votes once
    fs.train["epoch-2"][5, 4:] *= 100.0
    np.testing.assert_allclose(run_method("dda(beta=-0.5,normalize=module)", ctx), got, rtol=1e-4, atol=1e-4)
    with pytest.raises(ValueError, match="module blocks cover"):
        fs.blocks = [4, 4]
        run_method("dda(normalize=module)", ctx)


def test_baselines_equal_their_definitions(ctx):
    fs = ctx.features
    np.testing.assert_allclose(run_method("grad_dot", ctx), _is(fs, "epoch-3", "epoch-3", False), rtol=1e-5)
    tracin = sum(c.lr * _is(fs, c.name, c.name, False) for c in fs.checkpoints[1:])
    np.testing.assert_allclose(run_method("tracin", ctx), tracin, rtol=1e-5, atol=1e-6)
    cos = run_method("grad_cos", ctx)
    assert np.all(np.abs(cos) <= 1 + 1e-6)
    # TRAK: the push-through form (n < d and n > d) equals phi_q (Phi^T Phi + lam I)^-1 Phi^T
    phi = fs.train["epoch-1"].astype(np.float64)
    q = fs.neg["epoch-1"].astype(np.float64)
    lam = 0.01 * np.trace(phi.T @ phi) / D
    direct = q @ np.linalg.solve(phi.T @ phi + lam * np.eye(D), phi.T)
    got = run_method("trak(checkpoints=epoch-1,trak_lambda=0.01)", ctx)
    np.testing.assert_allclose(got, direct, rtol=1e-6, atol=1e-8)


def test_sign_convention_positive_alignment_scores_high(ctx):
    """A training gradient aligned with grad(neg) - grad(pos) at every checkpoint must rank first."""
    fs = ctx.features
    for c in fs.checkpoints:
        fs.train[c.name][7] = 5 * (fs.neg[c.name][0] - fs.pos[c.name][0])
        fs.train[c.name][8] = -5 * (fs.neg[c.name][0] - fs.pos[c.name][0])
    s = run_method("dda", ctx)[0]
    assert int(np.argmax(s)) == 7 and int(np.argmin(s)) == 8


def test_dot_scores_blockwise_matches_dense():
    rng = np.random.default_rng(1)
    train = rng.normal(size=(1000, 16)).astype(np.float16)
    q = rng.normal(size=(4, 16)).astype(np.float32)
    np.testing.assert_allclose(
        dot_scores(train, q, block_bytes=16 * 2 * 37), q @ train.astype(np.float32).T, rtol=1e-5, atol=1e-4
    )


def test_method_specs():
    assert parse_method("dda(beta=0.4,debias_mode=cross)") == (
        "dda(beta=0.4,debias_mode=cross)",
        "dda",
        {"beta": 0.4, "debias_mode": "cross"},
    )
    assert parse_method("dda_no_debias")[1:] == ("dda", {"debias": False})
    with pytest.raises(ValueError, match="unknown method 'nope'"):
        parse_method("nope")


def test_unknown_parameter_is_refused(ctx):
    with pytest.raises(ValueError, match="unknown parameters"):
        run_method("grad_dot(beta=1)", ctx)


def test_contrastive_needs_positive(ctx):
    ctx.features.pos.clear()
    with pytest.raises(ValueError, match="positive output"):
        run_method("dda", ctx)
    run_method("grad_dot", ctx)  # non-contrastive methods still work


def test_bm25_ranks_the_matching_text_first():
    texts = ["the match was won by England", "the bank raised the price", "China won the election vote"]
    ctx = ScoringContext(None, texts, [Query("q", "p", "China won the election", None)])
    s = run_method("bm25", ctx)
    assert int(np.argmax(s[0])) == 2


def test_diff_query_tokens_use_the_differing_tokens_features(ctx):
    """tracin_diff / grad_dot_diff take contrast_neg (the negative's differing tokens), not the whole output."""
    fs = ctx.features
    with pytest.raises(ValueError, match="features.query_tokens=diff"):
        run_method("tracin_diff", ctx)
    rng = np.random.default_rng(5)
    fs.contrast_neg = {c.name: rng.normal(size=(Q, D)).astype(np.float32) for c in fs.checkpoints}
    want = sum(c.lr * (fs.contrast_neg[c.name].astype(np.float64) @ fs.train[c.name].T) for c in fs.checkpoints[1:])
    np.testing.assert_allclose(run_method("tracin_diff", ctx), want, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(
        run_method("grad_dot_diff", ctx), fs.contrast_neg["epoch-3"] @ fs.train["epoch-3"].T, rtol=1e-5, atol=1e-6
    )
    assert not np.allclose(run_method("tracin_diff", ctx), run_method("tracin", ctx))


def test_differing_words_and_the_keyword_rule():
    from dda.scoring.text import differing_words

    assert differing_words("England lost to China in Beijing", "England lost to Wales in Beijing") == ["China"]
    assert differing_words("a b c", "a b c d") == []  # an insertion in the positive is no word of the negative
    assert differing_words("China and China's team", "Wales and Wales's team") == ["China"]
    responses = ["China beat China", "Chinatown opened", "Police in China", "no word here"]
    ctx = ScoringContext(
        None,
        [f"document {i}\n{r}" for i, r in enumerate(responses)],
        [Query("q", "p", "Fans in China cheered", "Fans in England cheered")],
        train_responses=responses,
    )
    # Whole-word counts in the responses only: 'Chinatown' is no hit, the document text is not read.
    np.testing.assert_array_equal(run_method("keyword", ctx)[0], [2, 0, 1, 0])
    with pytest.raises(ValueError, match="keyword needs a positive"):
        run_method("keyword", ScoringContext(None, ["x"], [Query("q", "p", "China", None)]))
    # bm25 over the differing words alone: only the texts that say China score.
    s = run_method("bm25_diff", ctx)[0]
    assert s[1] == 0 and s[3] == 0 and s[0] > 0 and s[2] > 0


def test_streaming_topk_matches_full_sort(tmp_path):
    from numpy.lib.format import open_memmap

    from dda.scoring.topk import topk_scores

    rng = np.random.default_rng(2)
    store = open_memmap(tmp_path / "f.npy", mode="w+", dtype=np.float16, shape=(5000, 24))
    store[:] = rng.normal(size=(5000, 24)).astype(np.float16)
    store.flush()
    ro = np.load(tmp_path / "f.npy", mmap_mode="r")
    q = rng.normal(size=(3, 24)).astype(np.float32)
    vals, idx = topk_scores(ro, q, k=25, block_rows=333)
    full = q @ ro.astype(np.float32).T
    for i in range(3):
        expected = np.argsort(-full[i], kind="stable")[:25]
        np.testing.assert_allclose(vals[i], full[i][expected], rtol=1e-5, atol=1e-5)
        assert set(idx[i]) == set(expected)
    # float16 products (the sketch tier's candidate scan): scores within float16 rounding, top rows kept
    hv, hi = topk_scores(ro, q, k=25, block_rows=333, half=True)
    for i in range(3):
        np.testing.assert_allclose(hv[i], full[i][hi[i]], rtol=0, atol=2e-2 * np.abs(full[i]).max())
        assert len(set(hi[i]) & set(np.argsort(-full[i])[:25])) >= 22


def test_sketch_tier_finds_standout_rows_and_scores_them_exactly(tmp_path):
    from numpy.lib.format import open_memmap

    from dda.scoring.sketch import build_sketch, load_sketch, sketch_topk

    rng = np.random.default_rng(3)
    n, d, k = 20_000, 512, 10
    store = open_memmap(tmp_path / "f.npy", mode="w+", dtype=np.float16, shape=(n, d))
    store[:] = rng.normal(size=(n, d)).astype(np.float16)
    q = rng.normal(size=(4, d)).astype(np.float32)
    # Each query has 10 rows that stand out (what attribution looks for): the query direction plus noise.
    planted = rng.choice(n, size=(4, k), replace=False)
    for i in range(4):
        store[planted[i]] = (q[i] * rng.uniform(0.5, 0.8, size=(k, 1)) + rng.normal(size=(k, d))).astype(np.float16)
    store.flush()
    ro = np.load(tmp_path / "f.npy", mmap_mode="r")
    build_sketch(ro, tmp_path / "sketch.npy", sketch_dim=256, seed=5, block_rows=999)
    sk, meta = load_sketch(tmp_path / "sketch.npy", ro)
    assert sk.shape == (n, 256) and meta["seed"] == 5
    assert not list(tmp_path.glob("*.partial"))
    vals, idx = sketch_topk(ro, sk, meta, q, k=k, candidates=200)
    full = q @ ro.astype(np.float32).T
    for i in range(4):
        exact = np.argsort(-full[i])[:k]
        assert set(idx[i]) == set(exact) == set(planted[i])
        np.testing.assert_allclose(vals[i], full[i][idx[i]], rtol=1e-5, atol=1e-4)  # exact scores, not sketched
    # A learning-rate-scaled query (TracIn weights by lr ~ 1e-4 and smaller) finds the same rows: its sketched
    # products would underflow in float16 unless the query is normalised first.
    tiny_vals, tiny_idx = sketch_topk(ro, sk, meta, q * 1e-9, k=k, candidates=200)
    np.testing.assert_array_equal(tiny_idx, idx)
    np.testing.assert_allclose(tiny_vals, vals * 1e-9, rtol=1e-4)
    # The sketch index backend (`dda search --backend sketch` on a built index) scans the same float16 sketch: its
    # candidates for the tiny query are the unscaled query's.
    from dda.scoring.backends import QuerySettings, get_backend
    from dda.scoring.search import SearchIndex

    backend, index = get_backend("sketch"), SearchIndex(tmp_path, {"backend": "sketch"})
    cand = backend.candidates(index, ro, q, 200, QuerySettings(candidates=200))
    tiny_cand = backend.candidates(index, ro, q * 1e-9, 200, QuerySettings(candidates=200))
    assert all(set(planted[i]) <= set(cand[i]) for i in range(4))
    np.testing.assert_array_equal(tiny_cand, cand)
    # With every row a candidate the tier is the exact scan.
    vals_all, idx_all = sketch_topk(ro[:300], sk[:300], {**meta, "n_rows": 300}, q, k=k, candidates=300)
    np.testing.assert_array_equal(idx_all[0], np.argsort(-full[0][:300])[:k])
    with pytest.raises(ValueError, match="rebuild"):
        load_sketch(tmp_path / "sketch.npy", ro[:100])


def test_read_rows_matches_indexing_on_npy_memmaps_and_their_slices(tmp_path):
    from numpy.lib.format import open_memmap

    from dda.scoring.sketch import read_rows

    rng = np.random.default_rng(4)
    store = open_memmap(tmp_path / "f.npy", mode="w+", dtype=np.float16, shape=(5000, 37))  # odd row size
    store[:] = rng.normal(size=store.shape).astype(np.float16)
    store.flush()
    ro = np.load(tmp_path / "f.npy", mmap_mode="r")
    rows = np.unique(rng.integers(0, 4000, 500))
    for arr in (ro, ro[1000:], ro[1234:4900]):  # slices start mid-page: offsets must follow the view
        sel = rows[rows < arr.shape[0]]
        np.testing.assert_array_equal(read_rows(arr, sel, workers=4), np.asarray(arr[sel]))
    raw = np.memmap(tmp_path / "f.npy", dtype=np.float16, mode="r", offset=128, shape=(5000, 37))
    np.testing.assert_array_equal(read_rows(raw, rows, workers=4), np.asarray(ro[rows]))
    with pytest.raises(IndexError):
        read_rows(ro, np.array(list(range(100)) + [5000]), workers=4)
