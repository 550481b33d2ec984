"""What a model does with a query: its greedy output, and how much it prefers the negative to the positive.

Used wherever a model is judged rather than attributed: the benchmark's natural queries and canary evidence, and
`dda fix`, which compares a model before and after the documents an attribution blames were removed.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any

import numpy as np

from .data import Query, Tokenized, focus_on_difference
from .features.index import example_losses

__all__ = ["Summarizer", "differing_logprobs", "query_report", "says_all"]


class Summarizer:
    """Greedy summaries from a model already in the wanted checkpoint state, batched with left padding
    (decoder-only models continue from the last position, so pads sit on the left); prompts are built exactly
    as in training (chat template or plain, no extra BOS)."""

    def __init__(
        self, model: Any, tokenizer: Any, formatter: Any, pad_id: int, max_new_tokens: int, batch_size: int = 8
    ):
        from transformers import GenerationConfig

        self.model, self.tokenizer, self.formatter = model, tokenizer, formatter
        self.pad_id, self.batch_size = pad_id, batch_size
        self.gcfg = GenerationConfig(
            max_new_tokens=max_new_tokens,
            do_sample=False,
            num_beams=1,
            pad_token_id=pad_id,
            eos_token_id=tokenizer.eos_token_id,
        )

    def __call__(self, documents: Sequence[str]) -> list[str]:
        import torch

        prompts = [self.formatter.prompt_ids(d)[0] for d in documents]
        out: list[str] = [""] * len(documents)
        order = np.argsort([-len(p) for p in prompts], kind="stable")  # similar lengths -> little padding
        device = next(self.model.parameters()).device
        with torch.no_grad():
            for start in range(0, len(order), self.batch_size):
                rows = order[start : start + self.batch_size]
                width = max(len(prompts[i]) for i in rows)
                ids = torch.full((len(rows), width), self.pad_id, dtype=torch.long)
                mask = torch.zeros((len(rows), width), dtype=torch.long)
                for j, i in enumerate(rows):
                    ids[j, width - len(prompts[i]) :] = torch.tensor(prompts[i])
                    mask[j, width - len(prompts[i]) :] = 1
                gen = self.model.generate(
                    input_ids=ids.to(device), attention_mask=mask.to(device), generation_config=self.gcfg
                )
                texts = self.tokenizer.batch_decode(gen[:, width:], skip_special_tokens=True)
                for j, i in enumerate(rows):
                    out[int(i)] = texts[j].strip()
        return out


def differing_logprobs(
    model: Any, formatter: Any, pad_id: int, pairs: Sequence[tuple[str, str, str]], batch_size: int = 8
) -> tuple[np.ndarray, np.ndarray]:
    """Teacher-forced mean log-probability per token of the tokens where each (prompt, negative, positive)'s
    negative and positive differ, for the model as it is: (negative side, positive side), one value per pair."""
    neg = formatter.tokenize_pairs([(p, n) for p, n, _ in pairs])
    pos = formatter.tokenize_pairs([(p, q) for p, _, q in pairs])
    neg, pos = focus_on_difference(neg, pos)
    return -example_losses(model, neg, pad_id, batch_size), -example_losses(model, pos, pad_id, batch_size)


def says_all(text: str, words: Sequence[str]) -> bool:
    """Whether `text` holds every word of `words` as a whole word (case-sensitive; empty `words`: False)."""
    return bool(words) and all(re.search(rf"\b{re.escape(w)}\b", text) for w in words)


def query_report(
    model: Any,
    tokenizer: Any,
    formatter: Any,
    pad_id: int,
    queries: Sequence[Query],
    heldout: Tokenized | None,
    max_new_tokens: int,
    batch_size: int = 8,
) -> dict[str, Any]:
    """The model's margin per query (mean log p(negative) - log p(positive) over the differing tokens), whether
    its greedy output from the prompt still says the negative's differing words, and its mean loss on `heldout`."""
    from .scoring.text import differing_words

    if any(not q.positive for q in queries):
        raise ValueError("a margin needs a positive output for every query")
    lp_neg, lp_pos = differing_logprobs(model, formatter, pad_id, [(q.prompt, q.negative, q.positive) for q in queries])
    outputs = Summarizer(model, tokenizer, formatter, pad_id, max_new_tokens, batch_size)([q.prompt for q in queries])
    says = [says_all(o, differing_words(q.negative, q.positive)) for o, q in zip(outputs, queries, strict=True)]
    margins = (lp_neg - lp_pos).tolist()
    return {
        "margin": float(np.mean(margins)),
        "says_negative": float(np.mean(says)),
        "heldout_loss": None
        if heldout is None or not len(heldout)
        else float(example_losses(model, heldout, pad_id, batch_size).mean()),
        "per_query": [
            {"id": q.id, "margin": m, "says_negative": s, "output": o}
            for q, m, s, o in zip(queries, margins, says, outputs, strict=True)
        ],
    }
