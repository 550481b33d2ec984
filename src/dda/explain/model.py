"""Driving the model for token attribution: re-run the explained documents at every checkpoint their terms read,
with per-position features reduced to dot products with the query vectors inside the backward hook, and one
gradient row per query target token. Checkpoint by checkpoint, each applied once."""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from ..data import Example, Query, Tokenized, focus_on_difference
from ..features.capture import GradientFeaturizer, freeze, pad_batch
from ..features.index import length_sorted_batches
from ..models import applied
from ..progress import bar
from .terms import MethodPlan, accumulate, vectors_at

if TYPE_CHECKING:
    from ..api import Attributor


# ----------------------------------------------------------------------------------------- query sides


def query_sides(att: Attributor, queries: Sequence[Query]) -> dict[str, Tokenized]:
    """The tokenised query outputs whose loss the stored query features carry, as Attributor.query_features
    builds them: "neg" (whole negative output), and with positives "pos" and "contrast_neg" (the swapped tokens
    only under features.query_tokens=diff; the whole outputs otherwise)."""
    fmt = att.formatter
    neg = fmt.tokenize_pairs([(q.prompt, q.negative) for q in queries])
    sides = {"neg": neg}
    if all(q.positive for q in queries):
        pos = fmt.tokenize_pairs([(q.prompt, q.positive) for q in queries])
        if att.cfg.features.query_tokens == "diff":
            sides["contrast_neg"], sides["pos"] = focus_on_difference(neg, pos)
        else:
            sides["contrast_neg"], sides["pos"] = neg, pos
    return sides


def _targets(mask: Sequence[bool]) -> list[int]:
    return [i for i, m in enumerate(mask) if m]


@dataclass
class TargetRows:
    """One row per (query, side, target token) whose loss is that token's alone; None when nothing to split."""

    data: Tokenized | None
    index: dict[tuple[int, str], list[tuple[int, int]]]  # (query, side) -> [(row, token position)]


def target_rows(sides: dict[str, Tokenized], limit: int) -> TargetRows:
    seqs: list[list[int]] = []
    masks: list[list[bool]] = []
    index: dict[tuple[int, str], list[tuple[int, int]]] = {}
    for side in ("neg", "contrast_neg", "pos"):
        tk = sides.get(side)
        if tk is None:
            continue
        if side == "contrast_neg" and tk is sides["neg"]:  # whole-output contrast: the same rows as "neg"
            index.update({(qi, side): rows for (qi, s), rows in list(index.items()) if s == "neg"})
            continue
        for qi, (ids, mask) in enumerate(zip(tk.input_ids, tk.response_mask, strict=True)):
            targets = _targets(mask)
            if not targets or len(targets) > limit:
                continue
            rows = []
            for t in targets:
                rows.append((len(seqs), t))
                seqs.append(list(ids))
                masks.append([i == t for i in range(len(ids))])
            index[(qi, side)] = rows
    data = Tokenized(seqs, masks, 0, 0) if seqs else None
    return TargetRows(data, index)


# ------------------------------------------------------------------------------------------- re-running


@dataclass
class Recomputed:
    """What re-running the documents produced: their tokens, the token contributions per (method, query,
    document), the recomputed rows and the query target rows' features."""

    docs: list[int]  # the explained documents (training indices), sorted
    data: Tokenized  # their tokens, in `docs` order
    local: dict[int, int]  # training index -> position in `data`
    contrib: dict[tuple[str, int, int], np.ndarray] = field(default_factory=dict)
    rows: dict[tuple[str, int], np.ndarray] = field(default_factory=dict)  # (checkpoint, doc) -> row (sum over T)
    target_feats: dict[str, np.ndarray] = field(default_factory=dict)  # query checkpoint -> (n target rows, d)
    n_doc_rows: int = 0
    model_seconds: float = 0.0


def recompute(
    att: Attributor,
    examples: Sequence[Example],
    plans: dict[str, MethodPlan],
    need: dict[str, set[int]],
    targets: TargetRows,
    fs: Any,
) -> Recomputed:
    """Per-position features, checkpoint by checkpoint (each applied once); contributions accumulate per
    (method, query, document) and the per-position tensors are dropped after use."""
    query_ckpts = {pt.term.query_checkpoint for plan in plans.values() for pt in plan.terms}
    docs_all = sorted({d for s in need.values() for d in s})
    data = att.tokenize([examples[d] for d in docs_all])
    rec = Recomputed(docs_all, data, {d: j for j, d in enumerate(docs_all)})
    t_model = time.perf_counter()
    total_rows = sum(len(v) for v in need.values())
    with bar(
        f"token attribution ({len(docs_all)} documents, {len(need)} checkpoints)", total_rows, att.cfg.quiet
    ) as advance:
        for ckpt in att.all_checkpoints():
            rec.n_doc_rows += _explain_checkpoint(att, ckpt, need, query_ckpts, targets, plans, fs, rec, advance)
    rec.model_seconds = time.perf_counter() - t_model
    return rec


def _explain_checkpoint(
    att: Attributor,
    ckpt: Any,
    need: dict[str, set[int]],
    query_ckpts: set[str],
    targets: TargetRows,
    plans: dict[str, MethodPlan],
    fs: Any,
    rec: Recomputed,
    advance: Callable[[int], Any],
) -> int:
    """Apply one checkpoint, re-run the documents that read it (per-position features reduced to dot products
    with the query vectors, accumulated into `rec.contrib`; rows kept in `rec.rows`) and the query target rows
    there. Returns the number of document rows computed."""
    indexer = att.indexer
    pad_id = att.tokenizer.pad_token_id if att.tokenizer.pad_token_id is not None else 0
    wanted = sorted(need.get(ckpt.name, ()))
    want_targets = ckpt.name in query_ckpts and targets.data is not None
    n_rows = 0
    if not wanted and not want_targets:
        return 0
    data, local = rec.data, rec.local
    with applied(att.model, ckpt) as model:
        freeze(model)
        fz = GradientFeaturizer(model, indexer.modules, indexer.projector)
        layout, vectors = vectors_at(plans, ckpt.name)
        reduce = _position_reducer(fz, torch.from_numpy(vectors).to(indexer.device))
        lengths = np.array([len(data.input_ids[local[d]]) for d in wanted])
        for batch in length_sorted_batches(lengths, np.arange(len(wanted)), att.cfg.features.batch_size):
            docs = [wanted[b] for b in batch]
            seqs = [data.input_ids[local[d]] for d in docs]
            masks = [data.response_mask[local[d]] for d in docs]
            reduced = fz.per_position_reduced(*pad_batch(seqs, masks, pad_id, indexer.device), reduce=reduce)
            batch_rows, proj = _combine(fz, reduced)
            for b, d in enumerate(docs):
                rec.rows[(ckpt.name, d)] = batch_rows[b].astype(np.float32)  # kept for the query-side split
                accumulate(plans, layout, d, proj[b, :, : len(seqs[b])], batch_rows[b], fs.blocks, rec.contrib)
            n_rows += len(docs)
            advance(len(docs))
        if want_targets:
            rec.target_feats[ckpt.name] = _target_features(
                fz, targets.data, att.cfg.features.batch_size, pad_id, indexer.device
            )
    return n_rows


def _target_features(
    fz: GradientFeaturizer, td: Tokenized, batch_size: int, pad_id: int, device: torch.device
) -> np.ndarray:
    """The query target rows' features at the applied checkpoint, float32 (rows, D)."""
    feats = []
    for start in range(0, len(td), batch_size):
        sl = slice(start, start + batch_size)
        feats.append(fz(*pad_batch(td.input_ids[sl], td.response_mask[sl], pad_id, device)).cpu().numpy())
    return np.concatenate(feats)


def _position_reducer(
    fz: GradientFeaturizer, vectors: torch.Tensor
) -> Callable[[str, torch.Tensor], tuple[torch.Tensor, torch.Tensor]]:
    """Per module: its (B, T, dim) per-position features -> (their sum over T: the module's part of the row,
    their dot products with the query vectors' columns of that module: (B, T, V)), in float64."""
    slices: dict[str, slice] = {}
    start = 0
    for name in fz.names:
        dim = fz.projector.module_dim(*fz.shapes[name])
        slices[name] = slice(0, dim) if fz.projector.combine == "sum" else slice(start, start + dim)
        start += dim

    def reduce(name: str, per_position: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        pp = per_position.double()
        proj = pp @ vectors[slices[name]] if vectors.numel() else pp.new_zeros((*pp.shape[:2], 0))
        return pp.sum(1), proj

    return reduce


def _combine(
    fz: GradientFeaturizer, reduced: dict[str, tuple[torch.Tensor, torch.Tensor]]
) -> tuple[np.ndarray, np.ndarray]:
    """Rows (B, D) and per-module projections (B, M, T, V); a projection that sums modules gives M = 1."""
    if fz.projector.combine == "sum":
        rows = sum(reduced[n][0] for n in fz.names)
        proj = sum(reduced[n][1] for n in fz.names).unsqueeze(1)
    else:
        rows = torch.cat([reduced[n][0] for n in fz.names], dim=1)
        proj = torch.stack([reduced[n][1] for n in fz.names], dim=1)
    return rows.cpu().numpy(), proj.cpu().numpy()
