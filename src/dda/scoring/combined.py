"""DDA combined with the `unsupported` filter: the option issue 29 asks for, for users who run that filter anyway.

A hallucinated word that a training response says while its own prompt never does is what the filter flags
(`scoring.text.unsupported`); DDA ranks by what the fine-tune learned from each row. The two fail differently: the
filter flags every row that says the word unsupported, whether the model learned the mistake from it or not, and
never flags a culprit that paraphrases; DDA has no text rule and ranks every row. `combine` picks how they meet:
    "flagged_first": rows the filter flags come first, each group ordered by DDA (DDA breaks the filter's ties and
                     ranks the rest);
    "rank_fusion":   reciprocal-rank fusion (k=60) of DDA's ranking and the filter's, ties in the filter broken by
                     DDA.
Not a sum of gradient dot products: `dda search` and `dda.explain` do not fold it (they take `dda`).
"""

from __future__ import annotations

import numpy as np

from ..config import ScoreConfig
from .base import ScoringContext, register
from .gradient import dda
from .text import unsupported

COMBINE = ("flagged_first", "rank_fusion")
RRF_K = 60.0  # the constant of Cormack et al.'s reciprocal-rank fusion, not tuned here


def _ranks(scores: np.ndarray) -> np.ndarray:
    """Per query, each row's rank, 0 = the highest score (ties in the order of the rows)."""
    order = np.argsort(-scores, axis=1, kind="stable")
    ranks = np.empty_like(order)
    np.put_along_axis(ranks, order, np.broadcast_to(np.arange(scores.shape[1]), scores.shape), axis=1)
    return ranks


def reciprocal_rank_fusion(scores: list[np.ndarray], k: float = RRF_K) -> np.ndarray:
    """Sum over the score arrays of 1 / (k + each row's rank): rows high in several rankings come first."""
    return sum(1.0 / (k + _ranks(s)) for s in scores)


def combine_scores(dda_scores: np.ndarray, flags: np.ndarray, combine: str) -> np.ndarray:
    """(n_queries, n_train) scores, higher = more responsible, from DDA's scores and the filter's counts."""
    if combine == "flagged_first":
        span = dda_scores.max(axis=1, keepdims=True) - dda_scores.min(axis=1, keepdims=True) + 1.0
        return dda_scores + span * (flags > 0)
    if combine == "rank_fusion":
        # the filter's counts tie on most rows: DDA orders them, a tiny weight keeps the counts first
        scale = 1e-9 / max(float(np.abs(dda_scores).max()), 1e-30)
        filt = flags + scale * dda_scores
        return reciprocal_rank_fusion([dda_scores, filt])
    raise ValueError(f"combine must be one of {', '.join(COMBINE)}, not {combine!r}")


@register(
    "dda_unsupported",
    needs=("features", "text"),
    help="DDA combined with the unsupported filter (combine=flagged_first|rank_fusion).",
    information="differing tokens, negative − positive; and each row's prompt",
)
def dda_unsupported(
    ctx: ScoringContext,
    combine: str = "flagged_first",
    beta: float = ScoreConfig.beta,
    debias_mode: str = ScoreConfig.debias_mode,
    normalize: bool | str | None = ScoreConfig.normalize,
    checkpoints: list[str] | str | None = None,
) -> np.ndarray:
    """DDA combined with the `unsupported` filter: by default the rows the filter flags first, each group ranked
    by DDA (combine=rank_fusion: reciprocal-rank fusion of the two). DDA's settings are the config's, as for `dda`.
    Needs a positive per query (the filter's differing words) and each row's prompt apart."""
    if combine not in COMBINE:
        raise ValueError(f"combine must be one of {', '.join(COMBINE)}, not {combine!r}")
    scores = np.asarray(
        dda(ctx, beta=beta, debias_mode=debias_mode, normalize=normalize, checkpoints=checkpoints), dtype=np.float64
    )
    return combine_scores(scores, np.asarray(unsupported(ctx), dtype=np.float64), combine)
