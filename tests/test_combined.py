"""`dda_unsupported`: DDA combined with the `unsupported` filter, against DDA's and the filter's own rankings."""

from __future__ import annotations

import numpy as np
import pytest

from dda.data import Query
from dda.models import Checkpoint
from dda.scoring import FeatureSet, ScoringContext, run_method

ROWS = [
    ("Police in England said the match was held.", "China won the match in England."),  # flagged once
    ("China and England met in Beijing.", "China beat England."),  # China in its prompt: not flagged
    ("The England team trained.", "China, China and China again."),  # flagged three times
    ("A court in Wales sat.", "The court sat in Wales."),
    ("Officials in Chinatown spoke.", "China was named."),  # flagged once
    ("Rain fell in Leeds.", "Leeds was wet."),
    ("Fans in England cheered.", "China scored late on."),  # flagged once
    ("A bridge opened in Hull.", "The bridge in Hull opened."),
]
QUERIES = [
    Query("q0", "England played at home.", "England lost to China.", "England lost to England."),
    Query("q1", "Rain in England.", "It rained in China.", "It rained in England."),
]


@pytest.fixture
def ctx() -> ScoringContext:
    rng = np.random.default_rng(3)
    cks = [Checkpoint("base"), Checkpoint("epoch-1", "x", "lora", epoch=1), Checkpoint("epoch-2", "x", "lora", epoch=2)]
    n, d, q = len(ROWS), 16, len(QUERIES)
    fs = FeatureSet(
        cks,
        {c.name: rng.normal(size=(n, d)).astype(np.float32) for c in cks},
        {c.name: rng.normal(size=(q, d)).astype(np.float32) for c in cks},
        {c.name: rng.normal(size=(q, d)).astype(np.float32) for c in cks},
        blocks=[8, 8],
    )
    return ScoringContext(
        fs,
        [f"{p}\n{r}" for p, r in ROWS],
        QUERIES,
        train_responses=[r for _, r in ROWS],
        train_prompts=[p for p, _ in ROWS],
    )


def _order(scores: np.ndarray) -> list[int]:
    return [int(i) for i in np.argsort(-scores, kind="stable")]


def test_flagged_first_puts_the_filters_rows_first_each_group_in_ddas_order(ctx) -> None:
    dda = run_method("dda", ctx)
    flags = run_method("unsupported", ctx)
    both = run_method("dda_unsupported", ctx)
    for qi in range(len(QUERIES)):
        flagged = set(np.flatnonzero(flags[qi] > 0).tolist())
        assert flagged == {0, 2, 4, 6}
        order = _order(both[qi])
        assert set(order[: len(flagged)]) == flagged
        by_dda = _order(dda[qi])
        assert order == [i for i in by_dda if i in flagged] + [i for i in by_dda if i not in flagged]


def test_rank_fusion_is_reciprocal_rank_fusion_of_the_two_rankings(ctx) -> None:
    dda = run_method("dda", ctx)
    flags = run_method("unsupported", ctx)
    got = run_method("dda_unsupported(combine=rank_fusion)", ctx)
    for qi in range(len(QUERIES)):
        dda_rank = {row: r for r, row in enumerate(_order(dda[qi]))}
        # the filter's ties (the count) broken by DDA's order
        filter_order = sorted(range(len(ROWS)), key=lambda i: (-flags[qi, i], dda_rank[i]))
        filter_rank = {row: r for r, row in enumerate(filter_order)}
        want = [1 / (60 + dda_rank[i]) + 1 / (60 + filter_rank[i]) for i in range(len(ROWS))]
        np.testing.assert_allclose(got[qi], want, rtol=1e-12)


def test_ddas_settings_come_from_the_config_as_for_dda(ctx) -> None:
    defaults = {"beta": 0.4, "debias_mode": "cross", "normalize": "none"}
    dda = run_method("dda", ctx, defaults)
    flags = run_method("unsupported", ctx)
    both = run_method("dda_unsupported", ctx, defaults)
    # the settings change DDA's own order, so a combination that ignored them would differ
    assert any(_order(run_method("dda", ctx)[qi]) != _order(dda[qi]) for qi in range(len(QUERIES)))
    for qi in range(len(QUERIES)):
        by_dda = _order(dda[qi])
        flagged = set(np.flatnonzero(flags[qi] > 0).tolist())
        assert _order(both[qi]) == [i for i in by_dda if i in flagged] + [i for i in by_dda if i not in flagged]


def test_an_unknown_combine_is_refused(ctx) -> None:
    with pytest.raises(ValueError, match="combine must be one of flagged_first, rank_fusion"):
        run_method("dda_unsupported(combine=max)", ctx)
