"""Gradient scorers over stored features: DDA, first-order influence (grad_dot), cosine, TracIn, TRAK.

DDA(z) = (1/N) sum_k IS_k(z) - beta * IS_0(z), each IS contrastive:
    IS_k(z) = grad l(z, theta_k) . [grad l(neg, theta_k) - grad l(pos, theta_k)].
The published debias term is ambiguous, so both readings are parameters:
    debias_mode="base":  IS_0 takes both gradients at theta0 (the literal reading),
    debias_mode="cross": the training gradient at theta0, the query gradient at theta_k (averaged over k),
    debias_mode="query0": the training gradient at theta_k, the query gradient at theta0 (averaged over k).
beta may be negative (adding the base score); the benchmark measures which sign and reading work.
normalize (how gradients and scores are put on one scale before they combine):
    "none":   raw dot products;
    "std":    each per-checkpoint score vector scaled to unit std over training examples (true = "std");
    "module": every module's slice of both gradients scaled to unit norm first, so a score is the sum over
              modules of per-module cosines (needs per-module features: kronecker or identity projection).
              On the hallucination benchmark this lifted DDA's AUC more than any other single choice;
    "auto":   "module" where the features allow it, else "none" (the default).
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from ..config import ScoreConfig
from .base import FeatureSet, ScoringContext, default_information, dot_scores, register, row_norms
from .topk import release_pages


def _need(ctx: ScoringContext) -> FeatureSet:
    if ctx.features is None:
        raise ValueError("this method needs gradient features; run `dda index` first")
    return ctx.features


QUERY_TOKENS = ("all", "diff")
# What a term's query vector is, per query: "contrast" = grad l(neg) - grad l(pos) (over the differing tokens under
# features.query_tokens=diff), "neg" = the whole negative output, "contrast_neg" = the negative's differing tokens.
SIDES = ("contrast", "neg", "contrast_neg")


def side_vectors(fs: FeatureSet, checkpoint: str, side: str) -> np.ndarray:
    """The (n_queries, d) float32 query vectors of `side` at `checkpoint`."""
    if side == "contrast":
        return fs.contrast(checkpoint)
    if side == "neg":
        return np.asarray(fs.neg[checkpoint], dtype=np.float32)
    if side == "contrast_neg":
        if checkpoint not in fs.contrast_neg:
            raise ValueError("query_tokens=diff needs features indexed with features.query_tokens=diff")
        return np.asarray(fs.contrast_neg[checkpoint], dtype=np.float32)
    raise ValueError(f"query side must be one of {', '.join(SIDES)}, not {side!r}")


def _negative_side(query_tokens: str) -> str:
    """The negative output's gradient over all its tokens, or (diff) over the tokens where it differs from the
    positive only: the same query information DDA's default contrast gets, without the contrast."""
    if query_tokens not in QUERY_TOKENS:
        raise ValueError(f"query_tokens must be 'all' or 'diff', not {query_tokens!r}")
    return "neg" if query_tokens == "all" else "contrast_neg"


def _unit_std(s: np.ndarray) -> np.ndarray:
    return s / np.maximum(s.std(axis=1, keepdims=True), 1e-30)


NORMALIZE_MODES = ("none", "std", "module", "auto")


def _normalize_mode(normalize: bool | str | None) -> str:
    if normalize is None:  # "none" parses to None in method specs
        return "none"
    mode = {True: "std", False: "none"}.get(normalize, normalize) if isinstance(normalize, bool) else normalize
    if mode not in NORMALIZE_MODES:
        raise ValueError(f"normalize must be one of {', '.join(NORMALIZE_MODES)} (or true/false), not '{normalize}'")
    return mode


@dataclass(frozen=True)
class Term:
    """One dot product of a linear gradient score: weight * <norm(training row at `train`), norm(query)>.

    Symbolic: it names the query vectors (`side` at `query_checkpoint`) instead of holding them, so the same terms
    are evaluated over the whole store (`evaluate`), folded by training checkpoint into one query vector per query
    (scoring/search.py) and split over a document's tokens (dda.explain). dda, grad_dot, grad_cos and tracin are
    sums of terms: a score is linear in the training row given per-row constants (its module norms, its norm)."""

    weight: float
    train: str  # checkpoint of the training features
    normalize: str  # none | module (per-module cosines) | std (unit std over training rows) | cosine
    query_checkpoint: str  # where the query gradients were taken
    side: str = "contrast"  # see SIDES

    @property
    def contrastive(self) -> bool:
        return self.side == "contrast"

    @property
    def negative_side(self) -> str:
        """The negative-side features a non-contrastive term reads (dda.explain splits that side)."""
        return "neg" if self.side == "neg" else "contrast_neg"


def term_query(fs: FeatureSet, term: Term) -> np.ndarray:
    return side_vectors(fs, term.query_checkpoint, term.side)


def term_scores(fs: FeatureSet, term: Term) -> np.ndarray:
    """(n_queries, n_train) scores of one term, before its weight."""
    train = fs.train[term.train]
    query = term_query(fs, term)
    if term.normalize == "module":
        return dot_scores(train, query, blocks=fs.blocks)
    s = dot_scores(train, query)
    if term.normalize == "std":
        return _unit_std(s)
    if term.normalize == "cosine":
        return s / np.maximum(np.outer(np.linalg.norm(query, axis=1), row_norms(train)), 1e-30)
    return s


def evaluate(fs: FeatureSet, terms: list[Term]) -> np.ndarray:
    return sum(t.weight * term_scores(fs, t) for t in terms)


def linear(fn: Callable[..., list[Term]]) -> Callable[..., np.ndarray]:
    """A scorer from a function that lists its terms; `scorer.terms` keeps the term list for dda.explain.
    functools.wraps keeps the signature, which run_method reads for the accepted parameters."""

    @functools.wraps(fn)
    def scorer(ctx: ScoringContext, **params: Any) -> np.ndarray:
        return evaluate(_need(ctx), fn(ctx, **params))

    scorer.terms = fn  # type: ignore[attr-defined]
    return scorer


def _resolved_mode(fs: FeatureSet, normalize: bool | str | None) -> str:
    mode = _normalize_mode(normalize)
    if mode == "auto":
        mode = "module" if fs.blocks is not None else "none"
    if mode == "module" and fs.blocks is None:
        raise ValueError(
            "normalize=module needs per-module features (kronecker or identity projection); "
            "these were built with a projection that mixes modules"
        )
    return mode


def _dda_information(params: dict[str, Any], query_tokens: str) -> str:
    if not params.get("contrastive", True):
        return default_information(params, query_tokens)
    return "differing tokens, negative − positive" if query_tokens == "diff" else "negative − positive"


@register(
    "dda",
    help="DDA: the contrastive score averaged over fine-tuned checkpoints, minus beta times the theta0 score.",
    information=_dda_information,
    # the paper's Table 2 order
    ablations={
        "dda_no_denoise": {"denoise": False},
        "dda_no_debias": {"debias": False},
        "dda_no_contrast": {"contrastive": False},
    },
)
@linear
def dda(
    ctx: ScoringContext,
    beta: float = ScoreConfig.beta,
    contrastive: bool = True,
    debias: bool = True,
    denoise: bool = True,
    debias_mode: str = ScoreConfig.debias_mode,
    normalize: bool | str | None = ScoreConfig.normalize,
    checkpoints: list[str] | str | None = None,
) -> list[Term]:
    """DDA: the contrastive score averaged over fine-tuned checkpoints (denoise), minus beta times the theta0
    score (debias; beta < 0 adds it). Ablations: dda_no_debias, dda_no_denoise (last checkpoint only),
    dda_no_contrast (the negative output's gradient alone). See the module docstring for debias_mode and
    normalize."""
    fs = _need(ctx)
    cks = fs.finetuned(checkpoints or ctx.default_checkpoints)
    if not denoise:
        cks = cks[-1:]  # the single last checkpoint: what denoising averages away
    mode = _resolved_mode(fs, normalize)

    side = "contrast" if contrastive else "neg"

    def term(weight: float, train: str, query: str) -> Term:
        return Term(weight, train, mode, query, side)

    terms = [term(1.0 / len(cks), c.name, c.name) for c in cks]
    if debias and beta != 0.0:
        if debias_mode == "base":
            terms.append(term(-beta, fs.base, fs.base))
        elif debias_mode == "cross":
            terms += [term(-beta / len(cks), fs.base, c.name) for c in cks]
        elif debias_mode == "query0":
            terms += [term(-beta / len(cks), c.name, fs.base) for c in cks]
        else:
            raise ValueError(f"debias_mode must be 'base', 'cross' or 'query0', not '{debias_mode}'")
    return terms


@register(
    "grad_dot",
    help="First-order influence at one checkpoint: the training gradient . the negative output's gradient.",
    grad_dot_diff={"query_tokens": "diff"},
)
@linear
def grad_dot(ctx: ScoringContext, checkpoint: str | None = None, query_tokens: str = "all") -> list[Term]:
    """First-order influence at one checkpoint (default: the last), negative output only (query_tokens=diff:
    only its tokens that differ from the positive, `grad_dot_diff`)."""
    fs = _need(ctx)
    name = checkpoint or fs.finetuned()[-1].name
    return [Term(1.0, name, "none", name, _negative_side(query_tokens))]


@register("grad_cos", help="Cosine of the training and negative-output gradients at one checkpoint.")
@linear
def grad_cos(ctx: ScoringContext, checkpoint: str | None = None) -> list[Term]:
    fs = _need(ctx)
    name = checkpoint or fs.finetuned()[-1].name
    return [Term(1.0, name, "cosine", name, "neg")]


@register(
    "tracin",
    help="TracIn-CP: learning-rate-weighted gradient dot products summed over checkpoints.",
    tracin_diff={"query_tokens": "diff"},
)
@linear
def tracin(ctx: ScoringContext, checkpoints: list[str] | str | None = None, query_tokens: str = "all") -> list[Term]:
    """TracIn-CP: sum over checkpoints of lr_k * grad l(z, theta_k) . grad l(neg, theta_k); query_tokens=diff
    (`tracin_diff`) takes the negative's loss over the tokens that differ from the positive only."""
    fs = _need(ctx)
    side = _negative_side(query_tokens)
    return [Term(c.lr if c.lr is not None else 1.0, c.name, "none", c.name, side) for c in fs.finetuned(checkpoints)]


@register("trak", help="TRAK: a ridge-regression read of the gradient features, averaged over checkpoints.")
def trak(
    ctx: ScoringContext,
    trak_lambda: float = ScoreConfig.trak_lambda,
    checkpoints: list[str] | str | None = None,
    contrastive: bool = False,
) -> np.ndarray:
    """TRAK: phi_q^T (Phi^T Phi + lambda I)^-1 Phi^T per checkpoint, averaged over checkpoints.

    Uses the push-through identity Phi (Phi^T Phi + lI)^-1 = (Phi Phi^T + lI)^-1 Phi when n_train < dim, so
    the solve is min(n, d)-sized. lambda is relative to the mean diagonal of the Gram matrix.
    """
    fs = _need(ctx)
    cks = fs.finetuned(checkpoints)
    side = "contrast" if contrastive else "neg"
    return sum(trak_scores(fs.train[c.name], side_vectors(fs, c.name, side), trak_lambda) for c in cks) / len(cks)


def trak_scores(phi: np.ndarray, q: np.ndarray, trak_lambda: float, block_bytes: int = 1 << 26) -> np.ndarray:
    """q (Phi^T Phi + lambda I)^-1 Phi^T, (n_q, n) float64, with Phi (n, d) read in blocks of `block_bytes`
    (float64): the store is never copied whole. The solve is min(n, d)-sized: d x d Gram from row blocks, or,
    when n <= d, (Phi Phi^T + lambda I)^-1 Phi q^T with the n x n Gram from column blocks (row-major pages are
    still read about once when a block is a page or wider). lambda: trak_lambda times the Gram's mean diagonal."""
    n, d = phi.shape
    q = np.asarray(q, dtype=np.float64)
    if n <= d:
        cols = max(1, block_bytes // (8 * n))
        gram, rhs = np.zeros((n, n)), np.zeros((n, len(q)))
        for c0 in range(0, d, cols):
            part = np.asarray(phi[:, c0 : c0 + cols], dtype=np.float64)
            gram += part @ part.T
            rhs += part @ q[:, c0 : c0 + cols].T
            release_pages(phi, 0, n)
        gram[np.diag_indices(n)] += trak_lambda * max(np.trace(gram) / n, 1e-30)
        return np.linalg.solve(gram, rhs).T
    rows = max(1, block_bytes // (8 * d))
    gram = np.zeros((d, d))
    for r0 in range(0, n, rows):
        part = np.asarray(phi[r0 : r0 + rows], dtype=np.float64)
        gram += part.T @ part
        release_pages(phi, r0, min(n, r0 + rows))
    gram[np.diag_indices(d)] += trak_lambda * max(np.trace(gram) / d, 1e-30)
    w = np.linalg.solve(gram, q.T).T  # (n_q, d)
    out = np.empty((len(q), n))
    for r0 in range(0, n, rows):
        out[:, r0 : r0 + rows] = w @ np.asarray(phi[r0 : r0 + rows], dtype=np.float64).T
        release_pages(phi, r0, min(n, r0 + rows))
    return out
