"""CEA, contrastive error attribution (Ladhak et al. 2023): a model-backed baseline.

Copy the last checkpoint, take a few optimiser steps on the erroneous outputs, and separately on the corrected
ones; score(z) = loss_fixed(z) - loss_error(z). A document the error model fits better than the fixed model
scores high.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from ..config import ScoreConfig
from ..features.capture import pad_batch, per_example_loss
from ..features.index import example_losses
from ..models import applied
from ..progress import bar
from .base import ModelAccess, ScoringContext, register


def _cea_information(params: dict[str, Any], _query_tokens: str) -> str:
    return "whole negative and positive outputs" + ("" if params.get("per_query") else ", all queries at once")


@register(
    "cea",
    needs=("model",),
    help="CEA (Ladhak et al. 2023): loss after steps on the corrected outputs minus after steps on the errors.",
    information=_cea_information,
)
def cea(
    ctx: ScoringContext,
    cea_lr: float = ScoreConfig.cea_lr,
    cea_steps: int = ScoreConfig.cea_steps,
    per_query: bool = False,
) -> np.ndarray:
    if ctx.model is None:
        raise ValueError("cea needs the model; run it through dda.api.Attributor")
    if not all(q.positive for q in ctx.queries):
        raise ValueError("cea needs a positive (corrected) output for every query")
    n_q = len(ctx.queries)
    groups = [[i] for i in range(n_q)] if per_query else [list(range(n_q))]
    out = np.zeros((n_q, len(ctx.train_texts)))
    m = ctx.model
    with applied(m.model, m.checkpoint) as model:
        params = [p for n, p in model.named_parameters() if m.checkpoint.kind != "lora" or "lora_" in n]
        snapshot = [p.detach().clone() for p in params]
        with bar("cea (2 x forward over training set per group)", 2 * len(groups), m.quiet) as adv:
            for group in groups:
                losses = {}
                for side in ("negative", "positive"):
                    _steps(
                        model,
                        params,
                        m,
                        [(ctx.queries[i].prompt, getattr(ctx.queries[i], side)) for i in group],
                        cea_lr,
                        cea_steps,
                    )
                    losses[side] = example_losses(model, m.train, m.pad_id, m.batch_size)
                    with torch.no_grad():
                        for p, s in zip(params, snapshot, strict=True):
                            p.copy_(s)
                    adv(1)
                out[group] = losses["positive"] - losses["negative"]
    return out


def _steps(
    model: torch.nn.Module,
    params: list[torch.Tensor],
    m: ModelAccess,
    pairs: list[tuple[str, str]],
    lr: float,
    steps: int,
) -> None:
    tok = m.formatter.tokenize_pairs(pairs)
    for p in params:
        p.requires_grad_(True)
    opt = torch.optim.AdamW(params, lr=lr)
    batch = pad_batch(tok.input_ids, tok.response_mask, m.pad_id, next(model.parameters()).device)
    for _ in range(steps):
        opt.zero_grad(set_to_none=True)
        per_example_loss(model, *batch).mean().backward()
        opt.step()
    for p in params:
        p.requires_grad_(False)
