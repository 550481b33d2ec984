"""Tests for ranking metrics against hand-computed values, incl. pessimistic tie handling."""

from __future__ import annotations

import math

import numpy as np
import pytest

from dda.bench.metrics import (
    aggregate,
    method_table,
    per_query_metrics,
    pooled_metrics,
    query_metrics,
    recall_at_k,
)

MASK = np.array([True, True, False, False, False, False, False, False, False, False])


def test_perfect_and_reversed_ranking() -> None:
    perfect = np.arange(10, 0, -1, dtype=float)  # poisoned rows 0,1 get the top scores
    m = query_metrics(perfect, MASK, ks=(1, 2), frac=0.2)
    assert m["auc"] == 1.0 and m["ap"] == 1.0
    assert m["recall@1"] == 0.5 and m["recall@2"] == 1.0
    assert m["recall@20%"] == 1.0
    r = query_metrics(-perfect, MASK, ks=(2,), frac=0.2)
    assert r["auc"] == 0.0
    assert r["recall@2"] == 0.0
    # AP of the reversed list: positives at ranks 9 and 10 -> (1/9 + 2/10) / 2.
    assert r["ap"] == pytest.approx((1 / 9 + 2 / 10) / 2)


def test_hand_computed_auc_and_ap() -> None:
    scores = np.array([0.9, 0.1, 0.8, 0.7, 0.2])
    mask = np.array([True, True, False, False, False])
    m = query_metrics(scores, mask, ks=(1, 3))
    # Pairs (pos, neg): 0.9 beats all 3; 0.1 beats none -> 3/6.
    assert m["auc"] == pytest.approx(0.5)
    # Ranking: P N N N P -> AP = (1/1 + 2/5) / 2.
    assert m["ap"] == pytest.approx(0.7)
    assert m["recall@1"] == 0.5 and m["recall@3"] == 0.5
    # Top 2 (= the number poisoned): 0.9 P, 0.8 N; the top 10 of 5 rows is all of them, 2 poisoned.
    assert m["recall@n_poisoned"] == 0.5 and m["precision@10"] == pytest.approx(0.4)
    assert set(m) == {"auc", "ap", "precision@10", "recall@n_poisoned", "recall@1", "recall@3", "recall@5%"}


def test_distractor_auc_ranks_poisoned_against_the_distractors_alone() -> None:
    # Rows: P(0.9) D(0.95) P(0.5) D(0.4) N(0.1) N(0.0). Against the distractors only, the poisoned rows win 2 of 4
    # pairs (0.9 > 0.4, 0.5 > 0.4), whatever the unrelated rows score.
    scores = np.array([0.9, 0.95, 0.5, 0.4, 0.1, 0.0])
    mask = np.array([True, False, True, False, False, False])
    distractors = np.array([False, True, False, True, False, False])
    m = query_metrics(scores, mask, distractor_mask=distractors)
    assert m["distractor_auc"] == pytest.approx(0.5)
    assert m["auc"] == pytest.approx(6 / 8)  # 0.9 beats 3 of 4 negatives, 0.5 beats 3 of 4
    # A keyword-like rule (every canary row tied) cannot separate poisoned from distractors: exactly chance.
    tied = np.where(mask | distractors, 1.0, 0.0)
    assert query_metrics(tied, mask, distractor_mask=distractors)["distractor_auc"] == pytest.approx(0.5)
    assert "distractor_auc" not in query_metrics(scores, mask, distractor_mask=np.zeros(6, dtype=bool))
    with pytest.raises(ValueError, match="both poisoned and a distractor"):
        query_metrics(scores, mask, distractor_mask=mask)


def test_default_keys() -> None:
    rng = np.random.default_rng(0)
    scores = rng.normal(size=200)
    mask = np.zeros(200, dtype=bool)
    mask[:7] = True
    m = query_metrics(scores, mask)
    assert set(m) == {"auc", "ap", "precision@10", "recall@n_poisoned", "recall@10", "recall@50", "recall@5%"}
    # each value against its definition, computed here from the ranking (no ties in continuous scores)
    order = np.argsort(-scores)
    hits = lambda k: int(mask[order[:k]].sum())  # noqa: E731
    assert m["recall@10"] == hits(10) / 7 and m["recall@50"] == hits(50) / 7 and m["recall@5%"] == hits(10) / 7
    assert m["precision@10"] == pytest.approx(hits(10) / 10) and m["recall@n_poisoned"] == hits(7) / 7
    assert m["auc"] == pytest.approx(np.mean(scores[mask][:, None] > scores[~mask][None, :]))
    ranks = np.flatnonzero(mask[order]) + 1  # 1-based ranks of the poisoned rows
    assert m["ap"] == pytest.approx(np.mean(np.arange(1, 8) / ranks))


def test_ties_are_pessimistic() -> None:
    const = np.zeros(10)
    m = query_metrics(const, MASK, ks=(2, 8, 9), frac=0.2)
    assert m["auc"] == 0.5  # sklearn: a tie counts one half
    assert m["recall@2"] == 0.0  # clean rows win all ties
    assert m["recall@8"] == 0.0
    assert m["recall@9"] == 0.5
    # Mixed: poisoned row tied with clean rows at the top must not be counted in top-1.
    s = np.array([1.0, 0.0, 1.0, 1.0, 0.0])
    mk = np.array([True, False, False, False, False])
    assert recall_at_k(s, mk, 1) == 0.0
    assert recall_at_k(s, mk, 2) == 0.0
    assert recall_at_k(s, mk, 3) == 1.0
    # Order of input must not matter for tied groups (no index advantage for poisoned rows).
    assert recall_at_k(s[::-1], mk[::-1], 2) == 0.0


def test_percent_top_k_is_ceil_without_float_noise() -> None:
    n = 100
    mask = np.zeros(n, dtype=bool)
    mask[7] = True  # the 8th-best row is poisoned
    scores = np.arange(n, 0, -1, dtype=float)
    # ceil(0.07 * 100) must be 7 (0.07 * 100 == 7.000000000000001 in floating point).
    assert query_metrics(scores, mask, ks=(), frac=0.07)["recall@7%"] == 0.0
    assert query_metrics(scores, mask, ks=(), frac=0.08)["recall@8%"] == 1.0
    # ceil: 5% of 30 = 1.5 -> top 2.
    m30 = np.zeros(30, dtype=bool)
    m30[1] = True
    assert query_metrics(np.arange(30, 0, -1.0), m30, ks=())["recall@5%"] == 1.0


def test_k_larger_than_n_is_clipped() -> None:
    assert recall_at_k(np.arange(10.0), MASK, 50) == 1.0


def test_inf_scores_are_accepted() -> None:
    s = np.array([np.inf, 1.0, 0.0, -np.inf])
    m = query_metrics(s, np.array([True, False, False, False]), ks=(1,))
    assert m["auc"] == 1.0 and m["recall@1"] == 1.0


@pytest.mark.parametrize(
    ("scores", "mask", "msg"),
    [
        (np.zeros(3), np.array([False, False, False]), "no positives"),
        (np.zeros(3), np.array([True, True, True]), "no negatives"),
        (np.zeros(3), np.array([True, False]), "differ in length"),
        (np.array([0.0, np.nan, 1.0]), np.array([True, False, False]), "NaN"),
        (np.zeros((2, 3)), np.array([True, False, False]), "1-D"),
    ],
)
def test_validation_errors(scores: np.ndarray, mask: np.ndarray, msg: str) -> None:
    with pytest.raises(ValueError, match=msg):
        query_metrics(scores, mask)


def test_per_query_metrics_2d() -> None:
    s = np.stack([np.arange(10, 0, -1.0), np.arange(10.0)])
    res = per_query_metrics(s, MASK, ks=(2,))
    assert [r["auc"] for r in res] == [1.0, 0.0]
    res2 = per_query_metrics(s, np.stack([MASK, MASK[::-1]]), ks=(2,))
    assert [r["auc"] for r in res2] == [1.0, 1.0]
    with pytest.raises(ValueError):
        per_query_metrics(s, np.ones((3, 10), dtype=bool))


def test_aggregate_population_std() -> None:
    agg = aggregate([{"auc": 1.0, "ap": 0.5}, {"auc": 0.0, "ap": 0.5}, {"auc": 0.5}])
    assert agg["auc"]["mean"] == pytest.approx(0.5)
    assert agg["auc"]["std"] == pytest.approx(math.sqrt(1 / 6))  # ddof=0
    assert agg["auc"]["n"] == 3
    assert agg["ap"] == {"mean": 0.5, "std": 0.0, "n": 2}
    with pytest.raises(ValueError):
        aggregate([])


def test_method_table_both_shapes_sorted() -> None:
    rows = method_table(
        {
            "tracin": aggregate([{"auc": 0.5, "ap": 0.1}, {"auc": 0.6, "ap": 0.2}]),
            "dda": {"auc": 0.9, "auc_std": 0.02, "ap": 0.7},
            "broken": {"ap": 0.1},
        }
    )
    assert [r["method"] for r in rows] == ["dda", "tracin", "broken"]
    assert rows[0]["auc_std"] == 0.02
    assert rows[1]["auc"] == pytest.approx(0.55)
    assert rows[1]["auc_std"] == pytest.approx(0.05)
    assert rows[1]["n"] == 2


def test_pooled_ranking_is_the_mean_query_and_sees_what_single_queries_miss() -> None:
    """Six noisy queries of one pair: each query's ranking is noise plus a weak signal on the poisoned rows, so
    the mean of the six is the score against the mean query and ranks better than any one of them does on
    average; a constant-across-queries method scores the same pooled and per query."""
    rng = np.random.default_rng(0)
    n = 400
    poisoned = np.zeros(n, dtype=bool)
    poisoned[:12] = True
    distractors = np.zeros(n, dtype=bool)
    distractors[12:24] = True
    # feature 0 marks the poisoned rows; features 1..6 are noise, and query i reads feature 0 plus noise i
    feats = np.column_stack([poisoned.astype(float), rng.normal(size=(n, 6))])
    queries = np.column_stack([np.ones(6), 1.5 * np.eye(6)])
    scores = queries @ feats.T
    pooled = pooled_metrics(scores, poisoned, distractors, ["A->B"] * 6)
    mean_query = query_metrics(feats @ queries.mean(0), poisoned, distractor_mask=distractors)
    assert pooled["pooled_ap"] == pytest.approx(mean_query["ap"])
    assert pooled["pooled_distractor_auc"] == pytest.approx(mean_query["distractor_auc"])
    per_query = np.mean([r["ap"] for r in per_query_metrics(scores, poisoned, distractor_mask=distractors)])
    assert pooled["pooled_ap"] > per_query + 0.1
    same = np.broadcast_to(scores[0], scores.shape)
    assert pooled_metrics(same, poisoned, distractors, ["A->B"] * 6)["pooled_ap"] == pytest.approx(
        query_metrics(scores[0], poisoned)["ap"]
    )


def test_pooled_metrics_pool_within_each_pair_and_weight_by_queries() -> None:
    masks = np.array([MASK, MASK, MASK[::-1]])
    scores = np.array([np.arange(10, 0, -1), np.arange(10, 0, -1), np.arange(10, 0, -1)], dtype=float)
    # pair A: both queries rank its poisoned rows (0, 1) first, AP 1; pair B's poisoned rows (8, 9) come last
    got = pooled_metrics(scores, masks, None, ["A", "A", "B"])
    b = query_metrics(scores[2], masks[2])["ap"]
    assert got["pooled_ap"] == pytest.approx((2 * 1.0 + b) / 3)
    assert "pooled_distractor_auc" not in got
    with pytest.raises(ValueError, match="group 'A' have different poisoned rows"):
        pooled_metrics(scores, masks, None, ["A", "A", "A"])
    with pytest.raises(ValueError, match="2 group labels for 3 queries"):
        pooled_metrics(scores, masks, None, ["A", "B"])
