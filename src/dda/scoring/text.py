"""Text scorers that sit beside the gradient ones behind the same interface.

Two kinds of query information, named so a comparison can give every method the same: the whole negative output
(`bm25`), or only the words where the negative and the positive differ (`bm25_diff`, `keyword`): for a natural
hallucination that is the hallucinated word itself, the information DDA's default contrast (`query_tokens=diff`)
gets."""

from __future__ import annotations

import difflib
import re
from functools import lru_cache

import numpy as np

from .base import ScoringContext, register

_WORD = re.compile(r"\w+")


def differing_words(negative: str, positive: str | None) -> list[str]:
    """The words of `negative` that the aligned `positive` does not have (difflib over word sequences), in order
    and without repeats; every word of `negative` when there is no positive."""
    neg = _WORD.findall(negative)
    if not positive:
        return list(dict.fromkeys(neg))
    pos = _WORD.findall(positive)
    out: list[str] = []
    for tag, i1, i2, _, _ in difflib.SequenceMatcher(a=neg, b=pos, autojunk=False).get_opcodes():
        if tag in ("replace", "delete"):
            out += neg[i1:i2]
    return list(dict.fromkeys(out))


@lru_cache(maxsize=256)
def _whole_word(word: str) -> re.Pattern[str]:
    return re.compile(rf"\b{re.escape(word)}\b")


def _responses(ctx: ScoringContext) -> list[str]:
    return ctx.train_responses if ctx.train_responses is not None else ctx.train_texts


@register(
    "keyword",
    needs=("text",),
    help="How often the words where the negative and the positive differ occur in each training response.",
    information="differing words",
)
def keyword(ctx: ScoringContext) -> np.ndarray:
    """The rule a reviewer would try first: how often the words where the negative and the positive differ occur
    (whole word, case-sensitive) in each training response. Needs a positive per query."""
    responses = _responses(ctx)
    out = np.zeros((len(ctx.queries), len(responses)))
    for qi, q in enumerate(ctx.queries):
        if not q.positive:
            raise ValueError(f"keyword needs a positive output for query {q.id!r} (the words it differs in)")
        for word in differing_words(q.negative, q.positive):
            pattern = _whole_word(word)
            out[qi] += [len(pattern.findall(r)) for r in responses]
    return out


@register(
    "bm25",
    needs=("text",),
    help="BM25 of each training text against the query's negative output (query=diff: its differing words).",
    information=lambda params, _: "differing words" if params.get("query") == "diff" else "whole negative output",
    bm25_diff={"query": "diff"},
)
def bm25(ctx: ScoringContext, k1: float = 1.5, b: float = 0.75, query: str = "negative") -> np.ndarray:
    """BM25 (bm25s) of each training text (prompt + response) against the query's negative output
    (query=negative) or only the words where the negative and the positive differ (query=diff, `bm25_diff`)."""
    import bm25s

    if query not in ("negative", "diff"):
        raise ValueError(f"bm25: query must be 'negative' or 'diff', not {query!r}")
    corpus_tokens = bm25s.tokenize(ctx.train_texts, stopwords="en", show_progress=False)
    retriever = bm25s.BM25(k1=k1, b=b)
    retriever.index(corpus_tokens, show_progress=False)
    out = np.zeros((len(ctx.queries), len(ctx.train_texts)))
    for qi, q in enumerate(ctx.queries):
        text = q.negative if query == "negative" else " ".join(differing_words(q.negative, q.positive))
        q_tokens = bm25s.tokenize([text], stopwords="en", show_progress=False, return_ids=False)[0]
        out[qi] = retriever.get_scores(q_tokens) if q_tokens else 0.0
    return out
