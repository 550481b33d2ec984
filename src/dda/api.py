"""Python API: one object drives fine-tuning, indexing and attribution from one DDAConfig.

    from dda import Attributor, DDAConfig, load_examples
    att = Attributor(DDAConfig(), workdir="runs/demo")
    train = load_examples(att.cfg.data)
    att.finetune(train)                      # or att.use_checkpoints("path/to/epochs")
    att.index(train)                         # theta0 + every checkpoint, stored, resumable
    result = att.attribute(queries, methods=["dda", "bm25"])
    result.top(10, "dda")

Workdir layout (each stage reads the previous stage's files, so any stage can be rerun):
    config.yaml  data/train.jsonl  checkpoints/epoch-K/  features/train/<ckpt>/
    features/queries/<hash>/{neg,pos}/<ckpt>/  attribution/
"""

from __future__ import annotations

import csv
import io as _io
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .config import DDAConfig
from .data import Example, PromptFormatter, Query, Tokenized, focus_on_difference, load_examples, save_examples
from .features.index import Indexer, example_losses
from .features.store import FeatureStore, module_blocks
from .io import read_json, write_json, write_npy, write_text, write_yaml
from .models import BASE, Checkpoint, applied, discover_checkpoints, load_model
from .progress import bar, say
from .scoring import FeatureSet, ScoringContext, parse_method, run_method


@dataclass
class Attribution:
    """Scores of every method: (n_queries, n_train) arrays, HIGHER = MORE RESPONSIBLE."""

    train_ids: list[str]
    queries: list[Query]
    scores: dict[str, np.ndarray]
    config: dict[str, Any] = field(default_factory=dict)
    poisoned: set[str] = field(default_factory=set)  # optional ground truth, marked in outputs

    def top(self, k: int = 10, method: str | None = None, query: int = 0) -> list[dict[str, Any]]:
        method = method or next(iter(self.scores))
        s = self.scores[method][query]
        order = np.argsort(-s, kind="stable")[:k]
        return [{"rank": r + 1, "train_id": self.train_ids[i], "score": float(s[i]),
                 "poisoned": self.train_ids[i] in self.poisoned} for r, i in enumerate(order)]

    def save(self, out_dir: str | Path, top_k: int = 10) -> Path:
        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        write_yaml(out / "config.yaml", self.config)
        names = {}
        for i, method in enumerate(self.scores):
            fname = f"scores_{i:02d}.npy"
            write_npy(out / fname, self.scores[method].astype(np.float32))
            names[method] = fname
        ranking = {
            "orientation": "higher score = more responsible for the query's negative output",
            "train_ids": self.train_ids,
            "queries": [{"id": q.id, "negative": q.negative, "positive": q.positive} for q in self.queries],
            "score_files": names,
            "top": {m: [self.top(top_k, m, qi) for qi in range(len(self.queries))] for m in self.scores},
        }
        write_json(out / "ranking.json", ranking)
        buf = _io.StringIO()
        writer = csv.writer(buf)
        methods = list(self.scores)
        writer.writerow(["query_id", "train_id", *methods])
        for qi, q in enumerate(self.queries):
            for ti, tid in enumerate(self.train_ids):
                writer.writerow([q.id, tid, *(f"{self.scores[m][qi, ti]:.6g}" for m in methods)])
        write_text(out / "scores.csv", buf.getvalue())
        return out


class Attributor:
    def __init__(self, cfg: DDAConfig, workdir: str | Path, model: Any = None, tokenizer: Any = None):
        self.cfg = cfg
        self.workdir = Path(workdir)
        self.workdir.mkdir(parents=True, exist_ok=True)
        self._model, self._tokenizer = model, tokenizer
        self._indexer: Indexer | None = None
        self.checkpoints: list[Checkpoint] = []
        self.timings: dict[str, float] = {}
        torch.manual_seed(cfg.seed)

    # ----------------------------------------------------------------------------------------- model + data
    @property
    def model(self) -> Any:
        if self._model is None:
            t0 = time.perf_counter()
            self._model, tok = load_model(self.cfg.model)
            self._tokenizer = self._tokenizer or tok
            self.timings["model_load"] = time.perf_counter() - t0
        return self._model

    @property
    def tokenizer(self) -> Any:
        if self._tokenizer is None:
            _ = self.model
        return self._tokenizer

    @property
    def formatter(self) -> PromptFormatter:
        return PromptFormatter(self.tokenizer, self.cfg.data)

    @property
    def pad_id(self) -> int:
        tok = self.tokenizer
        return tok.pad_token_id if tok.pad_token_id is not None else (tok.eos_token_id or 0)

    def tokenize(self, examples: list[Example]) -> Tokenized:
        return self.formatter.tokenize_examples(examples)

    @property
    def indexer(self) -> Indexer:
        if self._indexer is None:
            self._indexer = Indexer(self.model, self.tokenizer, self.cfg.features)
        return self._indexer

    # ------------------------------------------------------------------------------------------- finetune
    def finetune(self, examples: list[Example], out_dir: str | Path | None = None) -> list[Checkpoint]:
        from .finetune import finetune

        out = Path(out_dir or self.workdir / "checkpoints")
        data = self.tokenize(examples)
        save_examples(self.workdir / "data" / "train.jsonl", examples)
        steps = -(-len(examples) // self.cfg.train.batch_size)
        t0 = time.perf_counter()
        with bar(f"fine-tune ({self.cfg.train.method}, {self.cfg.train.epochs} epochs)",
                 steps * self.cfg.train.epochs, self.cfg.quiet) as advance:
            done = sum(1 for _ in out.glob("epoch-*/dda_checkpoint.json")) if out.exists() else 0
            advance(done * steps)
            self.checkpoints = finetune(self.model, data, self.cfg.train, out, self.pad_id,
                                        run_config=self.cfg.to_dict(), progress=lambda *_: advance(1))
        self.timings["finetune"] = time.perf_counter() - t0
        if self.cfg.train.method == "full":  # theta0 must be the base model again
            self._model = None
            self._indexer = None
        return self.checkpoints

    def use_checkpoints(self, path: str | Path) -> list[Checkpoint]:
        self.checkpoints = discover_checkpoints(path)
        return self.checkpoints

    def all_checkpoints(self) -> list[Checkpoint]:
        if not self.checkpoints and (self.workdir / "checkpoints").exists():
            self.use_checkpoints(self.workdir / "checkpoints")
        if not self.checkpoints:
            raise ValueError("no checkpoints: run finetune() or use_checkpoints(path) first")
        return [BASE, *self.checkpoints]

    # ---------------------------------------------------------------------------------------------- index
    def _featurize_all(self, sets: dict[str, tuple[Tokenized, Path]], label: str) -> dict[str, dict[str, FeatureStore]]:
        """{set name: (data, root)} -> {set name: {checkpoint: store}}; each checkpoint is applied once."""
        cks = self.all_checkpoints()
        out: dict[str, dict[str, FeatureStore]] = {k: {} for k in sets}
        total = sum(len(d) for d, _ in sets.values()) * len(cks)
        with bar(f"{label} gradients ({len(cks)} checkpoints)", total, self.cfg.quiet) as adv:
            for c in cks:
                stores = self.indexer.featurize_sets(c, [(d, root / c.name) for d, root in sets.values()], adv)
                for key, store in zip(sets, stores, strict=True):
                    out[key][c.name] = store
        return out

    def index(self, examples: list[Example]) -> dict[str, FeatureStore]:
        """Features of every training example at theta0 and at each checkpoint (reused if already stored)."""
        data = self.tokenize(examples)
        save_examples(self.workdir / "data" / "train.jsonl", examples)
        t0 = time.perf_counter()
        seconds0, tokens0, rows0 = self.indexer.seconds, self.indexer.tokens, self.indexer.rows
        stores = self._featurize_all({"train": (data, self.workdir / "features" / "train")}, "train")["train"]
        stats = {
            "n_train": len(examples), "checkpoints": [c.name for c in self.all_checkpoints()],
            "n_prompt_truncated": data.n_prompt_truncated, "n_response_truncated": data.n_response_truncated,
            "mean_tokens": float(np.mean([len(s) for s in data.input_ids])),
            "dim": int(next(iter(stores.values())).meta["dim"]),
            "computed_rows": self.indexer.rows - rows0,
            "compute_seconds": round(self.indexer.seconds - seconds0, 3),
            "wall_seconds": round(time.perf_counter() - t0, 3),
        }
        if stats["computed_rows"]:
            stats["examples_per_s"] = stats["computed_rows"] / max(stats["compute_seconds"], 1e-9)
            stats["tokens_per_s"] = (self.indexer.tokens - tokens0) / max(stats["compute_seconds"], 1e-9)
        write_json(self.workdir / "features" / "train" / "index.json", stats)
        write_yaml(self.workdir / "features" / "config.yaml", self.cfg.to_dict())
        self.timings["index"] = time.perf_counter() - t0
        self.index_stats = stats
        return stores

    def query_features(self, queries: list[Query]) -> dict[str, dict[str, np.ndarray]]:
        """{"neg": ..., "pos": ..., ["contrast_neg": ...]} -> {checkpoint: (n_queries, dim)}.

        "neg" is always the gradient of the whole negative output (what non-contrastive scorers use). With
        features.query_tokens=diff, "pos" and "contrast_neg" carry the loss of the swapped tokens only, and
        the contrast is contrast_neg - pos; with "all", the contrast is neg - pos over every response token."""
        fmt = self.formatter
        neg = fmt.tokenize_pairs([(q.prompt, q.negative) for q in queries])
        # The fingerprint covers token ids and loss masks; the query_tokens setting names its own folder.
        root = self.workdir / "features" / "queries" / neg.fingerprint()
        sets = {"neg": (neg, root / "neg")}
        if all(q.positive for q in queries):
            pos = fmt.tokenize_pairs([(q.prompt, q.positive) for q in queries])
            if self.cfg.features.query_tokens == "diff":
                focus_neg, focus_pos = focus_on_difference(neg, pos)
                sets["contrast_neg"] = (focus_neg, root / "diff" / "neg")
                sets["pos"] = (focus_pos, root / "diff" / "pos")
            else:
                sets["pos"] = (pos, root / "pos")
        stores = self._featurize_all(sets, "query")
        return {kind: {k: np.asarray(v.features) for k, v in by_ckpt.items()} for kind, by_ckpt in stores.items()}

    # ------------------------------------------------------------------------------------------ attribute
    def train_examples(self) -> list[Example]:
        from .config import DataConfig

        path = self.workdir / "data" / "train.jsonl"
        if not path.exists():
            raise FileNotFoundError(f"{path}: no indexed training data; run index() first")
        return load_examples(DataConfig(path=str(path)))

    def feature_set(self, queries: list[Query], need_features: bool = True) -> FeatureSet | None:
        if not need_features:
            return None
        cks = self.all_checkpoints()
        stores = {c.name: FeatureStore.read(self.workdir / "features" / "train" / c.name) for c in cks}
        q = self.query_features(queries)
        return FeatureSet(cks, {name: st.features for name, st in stores.items()}, q["neg"], q.get("pos", {}),
                          contrast_neg=q.get("contrast_neg", {}),
                          blocks=module_blocks(stores[cks[0].name].meta))

    def attribute(self, queries: list[Query], methods: list[str] | None = None,
                  out_dir: str | Path | None = None, poisoned: set[str] | None = None) -> Attribution:
        methods = methods or list(self.cfg.score.methods)
        parsed = [parse_method(m) for m in methods]  # fail fast on a typo, before any compute
        examples = self.train_examples()
        needs_grad = any(name not in ("bm25", "cea") for _, name, _ in parsed)
        t0 = time.perf_counter()
        fs = self.feature_set(queries, needs_grad)
        ctx = ScoringContext(fs, [f"{e.prompt}\n{e.response}" for e in examples], queries,
                             cea=lambda p: self._cea(examples, queries, **p),
                             default_checkpoints=self.cfg.score.checkpoints)
        defaults = {k: v for k, v in vars(self.cfg.score).items() if k not in ("methods", "checkpoints", "top_k")}
        t1 = time.perf_counter()
        scores = {label: run_method(label, ctx, defaults) for label, _, _ in parsed}
        self.timings["query_features"] = t1 - t0
        self.timings["scoring"] = time.perf_counter() - t1
        result = Attribution([e.id for e in examples], queries, scores, self.cfg.to_dict(), poisoned or set())
        if out_dir is not None:
            result.save(out_dir, self.cfg.score.top_k)
        return result

    # -------------------------------------------------------------------- explain (issue 15: token attribution)
    def explain(self, result_or_queries: Attribution | list[Query], methods: list[str] | None = None,
                top_k: int = 10, out_dir: str | Path | None = None, poisoned: set[str] | None = None,
                train_ids: list[str] | None = None, query_token_limit: int = 8,
                align: str = "target") -> list[dict[str, Any]]:
        """Token-level attribution of each query's top-k documents (see dda.explain): per document its tokens
        with contributions that sum to the method's score, the prompt/response split, and the query tokens'
        shares. `result_or_queries`: an Attribution (its queries and ground truth) or queries. Methods default to
        the gradient methods among the result's (or "dda"). Writes OUT_DIR/explain/<query>.json if given.
        align="target": a position's part shown on the token it predicts; "input": on the token it reads."""
        from .explain import explain, explainable

        if isinstance(result_or_queries, Attribution):
            queries = result_or_queries.queries
            poisoned = poisoned if poisoned is not None else (result_or_queries.poisoned or None)
            methods = methods or [m for m in result_or_queries.scores if explainable(m)] or ["dda"]
        else:
            queries = list(result_or_queries)
        return explain(self, queries, methods or ["dda"], top_k, poisoned, train_ids, query_token_limit, out_dir,
                       align)

    # ------------------------------------------------------------------------------------------------ CEA
    def _cea(self, examples: list[Example], queries: list[Query], lr: float, steps: int,
             per_query: bool) -> np.ndarray:
        """Ladhak et al.: copy the last checkpoint, take `steps` AdamW steps on the erroneous outputs, and
        separately on the corrected ones; score = loss_fixed(z) - loss_error(z)."""
        from .features.capture import pad_batch, per_example_loss

        if not all(q.positive for q in queries):
            raise ValueError("cea needs a positive (corrected) output for every query")
        train = self.tokenize(examples)
        ckpt = self.all_checkpoints()[-1]
        fmt = self.formatter
        groups = [[i] for i in range(len(queries))] if per_query else [list(range(len(queries)))]
        out = np.zeros((len(queries), len(examples)))
        with applied(self.model, ckpt) as model:
            params = [p for n, p in model.named_parameters() if ckpt.kind != "lora" or "lora_" in n]
            snapshot = [p.detach().clone() for p in params]
            device = next(model.parameters()).device
            with bar("cea (2 x forward over training set per group)", 2 * len(groups), self.cfg.quiet) as adv:
                for group in groups:
                    losses = {}
                    for side in ("negative", "positive"):
                        tok = fmt.tokenize_pairs([(queries[i].prompt, getattr(queries[i], side)) for i in group])
                        for p in params:
                            p.requires_grad_(True)
                        opt = torch.optim.AdamW(params, lr=lr)
                        batch = pad_batch(tok.input_ids, tok.response_mask, self.pad_id, device)
                        for _ in range(steps):
                            opt.zero_grad(set_to_none=True)
                            per_example_loss(model, *batch).mean().backward()
                            opt.step()
                        for p in params:
                            p.requires_grad_(False)
                        losses[side] = example_losses(model, train, self.pad_id, self.cfg.features.batch_size)
                        with torch.no_grad():
                            for p, s in zip(params, snapshot, strict=True):
                                p.copy_(s)
                        adv(1)
                    out[group] = losses["positive"] - losses["negative"]
        return out


def load_attribution(out_dir: str | Path) -> Attribution:
    out = Path(out_dir)
    ranking = read_json(out / "ranking.json")
    scores = {m: np.load(out / f, allow_pickle=False) for m, f in ranking["score_files"].items()}
    queries = [Query(q["id"], "", q["negative"], q.get("positive")) for q in ranking["queries"]]
    return Attribution(ranking["train_ids"], queries, scores)


__all__ = ["Attribution", "Attributor", "load_attribution", "say"]
