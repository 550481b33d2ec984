"""Run directories for the HTML report tests: a real one from a tiny model, and synthetic ones of any size."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from dda.api import Attribution
from dda.data import Example, Query
from dda.explain import write_explanations
from dda.io import write_json, write_text

WORDS = (
    "England China France team match police court government minister news report people year club "
    "season player coach city council school hospital president election vote market bank price"
).split()


def tiny_attribute_run(root: Path) -> Path:
    """`dda attribute` output with token attribution, from a tiny random Llama fine-tuned for 2 epochs."""
    from conftest import make_model, make_tokenizer, tiny_config

    from dda import Attributor

    rng = np.random.default_rng(0)
    train = [
        Example(
            f"ex{i}",
            " ".join(rng.choice(WORDS, size=int(rng.integers(8, 16)))),
            " ".join(rng.choice(WORDS, size=int(rng.integers(3, 7)))),
        )
        for i in range(8)
    ]
    cfg = tiny_config(overrides={"features.module_dim": 0})
    tok = make_tokenizer()
    att = Attributor(cfg, root, model=make_model("llama", vocab_size=len(tok)), tokenizer=tok)
    att.finetune(train)
    att.index(train)
    resp = train[2].response.split()
    neg = " ".join(["China" if resp[0] != "China" else "England", *resp[1:]])
    queries = [
        Query("q-china", train[2].prompt, neg, train[2].response),
        Query("q-other", train[4].prompt, train[4].response, train[6].response),
    ]
    result = att.attribute(
        queries, methods=["dda", "grad_dot", "bm25"], out_dir=root / "attribution", poisoned={"ex1", "ex3"}
    )
    att.explain(result, methods=["dda", "grad_dot"], top_k=4, out_dir=root / "attribution")
    return root / "attribution"


def _tokens(rng: np.random.Generator, n: int) -> tuple[list[str], int]:
    words = ["<|im_start|>", "system", "\n"] + [" " + w for w in rng.choice(WORDS, size=n - 3)]
    return words, int(n * 0.8)


def _counterfactual(query_ids: list[str], rng: np.random.Generator) -> dict:
    """metrics.json's remove-and-retrain section: before, dda's and random's removals, random margins."""

    def measured(**extra: float) -> dict:
        margins = rng.normal(size=len(query_ids)).tolist()
        return {
            "margin": float(np.mean(margins)),
            "margins": margins,
            "natural_error_rate": 0.25,
            "generated": 16,
            "distractor_loss": 2.5,
            "heldout_loss": 2.75,
            **extra,
        }

    return {
        "k": 10,
        "combine": "mean-rank",
        "heldout_loss_docs": 64,
        "distractors": 10,
        "query_ids": query_ids,
        "before": measured(),
        "dda": measured(poisoned_removed=8, distractors_removed=1),
        "random": measured(poisoned_removed=2, distractors_removed=2),
    }


def synthetic_run(
    root: Path,
    n_queries: int = 4,
    n_docs: int = 10,
    n_train: int = 60,
    methods: tuple[str, ...] = ("dda", "grad_dot", "tracin", "bm25"),
    explained: tuple[str, ...] = ("dda",),
    tokens_per_doc: int = 250,
    bench: bool = True,
    seed: int = 0,
) -> Path:
    """A run directory shaped like `dda bench` output (bench=True) or `dda attribute` output (False), with token
    attribution for `explained` methods; scores, texts and contributions are random."""
    rng = np.random.default_rng(seed)
    train_ids = [f"doc-{i:04d}" for i in range(n_train)]
    poisoned = set(train_ids[: n_train // 6])
    queries = [
        Query(
            f"England->China:{1000 + i}:natural",
            " ".join(rng.choice(WORDS, 120)),
            "The England team beat China in the final match",
            "The England team beat France in the final match",
        )
        for i in range(n_queries)
    ]
    scores = {m: rng.normal(size=(n_queries, n_train)) + 2.0 * np.isin(train_ids, list(poisoned)) for m in methods}
    attr = root / "attribution" if bench else root
    Attribution(train_ids, queries, scores, {"synthetic": True}, poisoned).save(attr, top_k=n_docs)
    doc_tokens = {tid: _tokens(rng, tokens_per_doc) for tid in train_ids}
    explanations = []
    for qi, q in enumerate(queries):
        entry = {
            "query": {"id": q.id, "prompt": q.prompt, "negative": q.negative, "positive": q.positive},
            "query_tokens": {
                "mode": "diff",
                "negative": [{"position": 200, "text": " China", "target": True}],
                "positive": [{"position": 200, "text": " France", "target": True}],
            },
            "methods": {},
            "cost": {"seconds": 1.0, "documents": n_docs, "rows_recomputed": 4 * n_docs, "query_target_rows": 8},
        }
        for m in explained:
            order = np.argsort(-scores[m][qi], kind="stable")[:n_docs]
            docs = []
            for r, d in enumerate(order):
                tid = train_ids[d]
                toks, rs = doc_tokens[tid]
                c = rng.normal(scale=0.01, size=len(toks))
                c[rs + 2] = 0.5  # a clear culprit token in the response
                c *= scores[m][qi, d] / c.sum()
                docs.append(
                    {
                        "rank": r + 1,
                        "train_id": tid,
                        "score": float(scores[m][qi, d]),
                        "explained_score": float(c.sum()),
                        "poisoned": tid in poisoned,
                        "tokens": [[t, float(v)] for t, v in zip(toks, c, strict=True)],
                        "response_start": rs,
                        "special": [0],
                        "sums": {"prompt": float(c[:rs].sum()), "response": float(c[rs:].sum())},
                        "query_side": {
                            "negative": 0.8 * float(c.sum()),
                            "positive": 0.2 * float(c.sum()),
                            "by_token": [
                                {"side": "negative", "position": 200, "contribution": 0.8 * float(c.sum())},
                                {"side": "positive", "position": 200, "contribution": 0.2 * float(c.sum())},
                            ],
                        },
                    }
                )
            entry["methods"][m] = {"params": {}, "terms": [], "docs": docs}
        explanations.append(entry)
    write_explanations(attr, explanations)
    if bench:
        betas = [-2.0, -1.0, -0.5, 0.0, 0.4, 1.0]

        def curve(shift: float) -> dict:
            aucs = [0.93, 0.95, 0.94, 0.91, 0.73, 0.30]
            return {"betas": betas, "auc": [a - shift for a in aucs], "auc_std": [0.02] * 6}

        methods_m = {
            m: {"auc": 0.95 - 0.1 * i, "auc_std": 0.02, "ap": 0.8, "recall@10": 0.4}
            for i, m in enumerate([*methods, "dda_no_debias", "dda_no_denoise"])
        }
        write_json(
            root / "metrics.json",
            {
                "preset": "cpu-small",
                "seed": 0,
                "model": "synthetic",
                "n_train": n_train,
                "n_poisoned": len(poisoned),
                "n_queries": n_queries,
                "query_mode": "natural",
                "hallucination_rate": 0.5,
                "wall_seconds": 1.0,
                "methods": methods_m,
                "dda": {"beta": -1.0, "debias_mode": "base", "normalize": "auto"},
                "beta_curve": {"base": curve(0.0), "cross": curve(0.01), "base_raw": curve(0.05)},
                "notes": ["synthetic run for the report tests"],
                "counterfactual": _counterfactual([q.id for q in queries], rng),
            },
        )
        write_text(
            root / "queries.jsonl",
            "".join(
                json.dumps(
                    {
                        "id": q.id,
                        "pair": "England->China",
                        "kind": "natural",
                        "prompt": q.prompt,
                        "negative": q.negative,
                        "positive": q.positive,
                    }
                )
                + "\n"
                for q in queries
            ),
        )
        write_text(
            root / "train.jsonl",
            "".join(
                json.dumps(
                    {
                        "id": t,
                        "document": " ".join(rng.choice(WORDS, 40)),
                        "summary": "A summary.",
                        "poisoned": "England->China" if t in poisoned else None,
                    }
                )
                + "\n"
                for t in train_ids
            ),
        )
    return root
