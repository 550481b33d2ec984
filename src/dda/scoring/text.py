"""Text scorers that sit beside the gradient ones behind the same interface."""

from __future__ import annotations

import numpy as np

from .base import ScoringContext, register


@register("bm25", needs=("text",))
def bm25(ctx: ScoringContext, k1: float = 1.5, b: float = 0.75) -> np.ndarray:
    """BM25 (bm25s) of each training text (prompt + response) against the query's negative output."""
    import bm25s

    corpus_tokens = bm25s.tokenize(ctx.train_texts, stopwords="en", show_progress=False)
    retriever = bm25s.BM25(k1=k1, b=b)
    retriever.index(corpus_tokens, show_progress=False)
    out = np.zeros((len(ctx.queries), len(ctx.train_texts)))
    for qi, q in enumerate(ctx.queries):
        q_tokens = bm25s.tokenize([q.negative], stopwords="en", show_progress=False, return_ids=False)[0]
        out[qi] = retriever.get_scores(q_tokens)
    return out
