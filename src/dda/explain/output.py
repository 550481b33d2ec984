"""The JSON an explanation is made of: per query its outputs' tokens, and per method and document the tokens with
their contributions, the prompt/response sums and the query-side split (what explain/<query>.json holds)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ..data import Example, Query, Tokenized
from .files import ORIENTATION
from .model import Recomputed, TargetRows
from .terms import MethodPlan, side_parts, to_targets

# ------------------------------------------------------------------------------------------------ tokens


def token_texts(tokenizer: Any, ids: Sequence[int]) -> list[str]:
    """Per-token text pieces whose concatenation is the decoded sequence (special tokens kept): each piece is
    what decoding one more token adds; a token that splits a multi-byte character falls back to its own text."""
    out: list[str] = []
    prev = ""
    for t in range(len(ids)):
        cur = tokenizer.decode(list(ids[: t + 1]), skip_special_tokens=False, clean_up_tokenization_spaces=False)
        if cur.startswith(prev):
            out.append(cur[len(prev) :])
        else:
            out.append(tokenizer.decode([ids[t]], skip_special_tokens=False, clean_up_tokenization_spaces=False))
        prev = cur
    return out


def body_start(pieces: Sequence[str], document: str, probe: int = 24) -> int:
    """Index of the token where the document's own text begins inside the templated prompt (after the system
    instruction and role markers), found by its first characters; 0 when it cannot be found."""
    text = "".join(pieces)
    words = document.split()
    at = -1
    # a tokenizer may not give the text back verbatim (spacing around punctuation): shorter probes, then a word
    for head in (document.strip()[:probe].strip(), document.strip()[: probe // 2].strip(), *words[:1]):
        at = text.find(head) if head else -1
        if at >= 0:
            break
    if at < 0:
        return 0
    end = 0
    for i, piece in enumerate(pieces):
        end += len(piece)
        if end > at:
            return i
    return 0


def query_token_info(tok: Any, sides: dict[str, Tokenized], qi: int, mode: str) -> dict[str, Any]:
    """The response tokens of the query's outputs (position in the query sequence, text) and whether the
    contrast's loss runs over each one. Non-contrastive methods use every negative response token."""
    info: dict[str, Any] = {"mode": mode if "pos" in sides else "all (no positive output)"}
    neg = sides["neg"]
    start = next((i for i, m in enumerate(neg.response_mask[qi]) if m), len(neg.input_ids[qi]))  # prompt length
    for name, tk_side, focus in (("negative", "neg", "contrast_neg"), ("positive", "pos", "pos")):
        if tk_side not in sides:
            continue
        ids = sides[tk_side].input_ids[qi]
        targets = sides.get(focus, sides[tk_side]).response_mask[qi]
        texts = token_texts(tok, ids[start:])
        info[name] = [
            {"position": t, "text": texts[t - start], "target": bool(targets[t])} for t in range(start, len(ids))
        ]
    return info


# ----------------------------------------------------------------------------------------------- entries


@dataclass
class Assembly:
    """What the entries are built from; `texts` caches each document's token texts (shared by every query and
    method that lists it)."""

    tokenizer: Any
    examples: Sequence[Example]
    fs: Any
    rec: Recomputed
    targets: TargetRows
    poisoned: set[str] | None
    align: str
    texts: dict[int, list[str]] = field(default_factory=dict)
    special: set[int] = field(init=False)

    def __post_init__(self) -> None:
        self.special = set(getattr(self.tokenizer, "all_special_ids", []) or [])


def query_entry(
    asm: Assembly,
    qi: int,
    q: Query,
    sides: dict[str, Tokenized],
    mode: str,
    plans: dict[str, MethodPlan],
    cost: dict[str, Any],
    settings: dict[str, Any],
) -> dict[str, Any]:
    """One query's explanation: its outputs' tokens and, per method, its explained documents."""
    entry: dict[str, Any] = {
        "query": {"id": q.id, "prompt": q.prompt, "negative": q.negative, "positive": q.positive},
        "orientation": ORIENTATION,
        "query_tokens": query_token_info(asm.tokenizer, sides, qi, mode),
        "methods": {},
        "cost": cost,
        "settings": settings,
    }
    for label, plan in plans.items():
        entry["methods"][label] = {
            "params": {k: v for k, v in plan.params.items() if _jsonable(v)},
            "terms": [
                {
                    "weight": pt.term.weight,
                    "train": pt.term.train,
                    "query": pt.term.query_checkpoint,
                    "normalize": pt.term.normalize,
                    "contrastive": pt.term.contrastive,
                }
                for pt in plan.terms
            ],
            "docs": [_doc_entry(asm, label, plan, qi, d) for d in plan.chosen[qi]],
        }
    return entry


def _doc_entry(asm: Assembly, label: str, plan: MethodPlan, qi: int, d: int) -> dict[str, Any]:
    """Document d under one method for query qi: its tokens with their contributions (summing to the score)."""
    data, local, rows, fs = asm.rec.data, asm.rec.local, asm.rec.rows, asm.fs
    if d not in asm.texts:
        asm.texts[d] = token_texts(asm.tokenizer, data.input_ids[local[d]])
    texts = asm.texts[d]
    seq = data.input_ids[local[d]]
    mask = np.asarray(data.response_mask[local[d]], dtype=bool)
    c = asm.rec.contrib.get((label, qi, d), np.zeros(len(seq)))
    if asm.align == "target":
        c = to_targets(c)
    side = side_parts(plan, qi, d, rows, fs, asm.targets, asm.rec.target_feats)
    total = float(c.sum())
    stored_rel = max(
        (_rel_diff(rows[(pt.term.train, d)], fs.train[pt.term.train][d]) for pt in plan.terms),
        default=0.0,
    )
    order = np.argsort(-c, kind="stable")
    train_id = asm.examples[d].id
    return {
        "rank": int(plan.ranks[qi, d]),
        "train_id": train_id,
        "score": float(plan.scores[qi, d]),
        "explained_score": total,
        "poisoned": None if asm.poisoned is None else train_id in asm.poisoned,
        "tokens": [[texts[t], float(f"{c[t]:.7g}")] for t in range(len(seq))],
        "response_start": int(np.argmax(mask)) if mask.any() else len(seq),
        "body_start": body_start(texts, asm.examples[d].prompt_text),
        "special": [t for t in range(len(seq)) if seq[t] in asm.special],
        "sums": {"prompt": float(c[~mask].sum()), "response": float(c[mask].sum())},
        "abs_share": _abs_share(c, mask),
        "top_tokens": [
            {
                "index": int(t),
                "text": texts[t],
                "contribution": float(c[t]),
                "in_response": bool(mask[t]),
            }
            for t in order[:5]
        ],
        "query_side": side,
        "stored_row_rel_diff": stored_rel,
    }


def _rel_diff(recomputed: np.ndarray, stored: np.ndarray) -> float:
    stored = np.asarray(stored, dtype=np.float64)
    return float(np.linalg.norm(recomputed - stored) / max(np.linalg.norm(stored), 1e-30))


def _abs_share(c: np.ndarray, mask: np.ndarray) -> dict[str, float]:
    mass = float(np.abs(c).sum())
    if mass == 0:
        return {"prompt": 0.0, "response": 0.0}
    return {"prompt": float(np.abs(c[~mask]).sum() / mass), "response": float(np.abs(c[mask]).sum() / mass)}


def _jsonable(v: Any) -> bool:
    return v is None or isinstance(v, (str, int, float, bool, list))
