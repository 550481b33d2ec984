"""RepSim: cosine similarity of the fine-tuned model's hidden states for the query and for each training row.

The representation-similarity family (RepSim, RepT) is a strong, cheap baseline for LLM fine-tunes: no gradients,
one forward pass over the training set. A row is represented by the mean of one layer's hidden states over its
response tokens at the last checkpoint; a query by the same over its negative output after its prompt.

Query information: the whole negative output (and its prompt), as `bm25` gets; it never sees the positive.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from ..features.capture import pad_batch
from ..features.index import length_sorted_batches
from ..models import applied
from ..progress import bar
from .base import ScoringContext, register


def response_representations(
    model: Any,
    input_ids: Sequence[Sequence[int]],
    response_mask: Sequence[Sequence[bool]],
    pad_id: int,
    batch_size: int,
    layer: int = -1,
) -> np.ndarray:
    """(n, hidden) float32: per sequence, the mean over its response positions of `layer`'s hidden states
    (-1: the last layer after the final norm, as the LM head sees it). No gradients; batches are sorted by length
    and only one batch's activations are alive at a time, so memory stays flat in the number of rows."""
    backbone = model.get_decoder() if hasattr(model, "get_decoder") else model.model
    device = next(model.parameters()).device
    lengths = np.array([len(s) for s in input_ids])
    out: np.ndarray | None = None
    with torch.no_grad():
        for batch in length_sorted_batches(lengths, np.arange(len(input_ids)), batch_size):
            ids, attn, resp = pad_batch(
                [input_ids[i] for i in batch], [response_mask[i] for i in batch], pad_id, device
            )
            if layer == -1:
                hidden = backbone(input_ids=ids, attention_mask=attn).last_hidden_state
            else:
                hidden = backbone(input_ids=ids, attention_mask=attn, output_hidden_states=True).hidden_states[layer]
            weights = resp.to(hidden.dtype).unsqueeze(-1)
            # A row whose response was cut to nothing has no positions: its representation stays zero (cosine 0).
            mean = (hidden * weights).sum(1) / weights.sum(1).clamp(min=1.0)
            if out is None:
                out = np.zeros((len(input_ids), mean.shape[-1]), dtype=np.float32)
            out[batch] = mean.float().cpu().numpy()
    return out if out is not None else np.zeros((0, 0), dtype=np.float32)


def _unit(x: np.ndarray) -> np.ndarray:
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-30)


@register("repsim", needs=("model",))
def repsim(ctx: ScoringContext, layer: int = -1) -> np.ndarray:
    """RepSim: cosine of the fine-tuned model's hidden states for the query and each training row.

    Each side is the mean over its response tokens of one layer's hidden states at the last checkpoint (the query's
    response is its negative output); layer=-1 is the last layer after the final norm."""
    if ctx.model is None:
        raise ValueError("repsim needs the model; run it through dda.api.Attributor")
    m = ctx.model
    queries = m.formatter.tokenize_pairs([(q.prompt, q.negative) for q in ctx.queries])
    with applied(m.model, m.checkpoint) as model, bar("repsim (1 x forward over training set)", 1, m.quiet) as adv:
        train = response_representations(model, m.train.input_ids, m.train.response_mask, m.pad_id, m.batch_size, layer)
        query = response_representations(model, queries.input_ids, queries.response_mask, m.pad_id, m.batch_size, layer)
        adv(1)
    return (_unit(query.astype(np.float64)) @ _unit(train.astype(np.float64)).T).astype(np.float64)
