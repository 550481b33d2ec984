"""Python API: one object drives fine-tuning, indexing and attribution from one DDAConfig.

    from dda import Attributor, DDAConfig, load_examples
    att = Attributor(DDAConfig(), workdir="runs/demo")
    train = load_examples(att.cfg.data)
    att.finetune(train)                      # or att.use_checkpoints("path/to/epochs")
    att.index(train)                         # theta0 + every checkpoint, stored, resumable
    result = att.attribute(queries, methods=["dda", "bm25"])
    result.top(10, "dda")

The workdir's layout, cache keys and remembered settings live in dda.workdir.Workdir; the result type
(Attribution, load_attribution) in dda.attribution, re-exported here.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .attribution import Attribution, load_attribution, method_slug
from .config import DDAConfig
from .data import (
    Example,
    PromptFormatter,
    Query,
    Tokenized,
    focus_on_difference,
    load_examples,
    save_examples,
    saved_data_config,
)
from .features.capture import GradientFeaturizer
from .features.index import Indexer, index_statistics
from .features.sharded import read_store
from .features.store import FeatureStore, check_compatible, module_blocks
from .io import read_json, stable_hash, write_json, write_yaml
from .models import BASE, Checkpoint, CheckpointSet, check_checkpoint_fits, find_checkpoints, load_model
from .progress import bar, say
from .scoring import FeatureSet, ModelAccess, ScoringContext, method_needs, parse_method, run_method
from .scoring.base import score_defaults
from .workdir import Workdir, WorkdirError


def examples_hash(examples: list[Example]) -> str:
    return stable_hash([[e.id, e.prompt, e.response] for e in examples])


class Attributor:
    """Fine-tuning, indexing and attribution over one workdir, driven by one DDAConfig.

    The workdir remembers the model, data format and feature settings its features were built with; a later
    Attributor on it uses them, and refuses (naming the field) a config that asks for other values. Every
    writing step holds the workdir's lock, and checks everything before it writes anything."""

    def __init__(self, cfg: DDAConfig, workdir: str | Path | Workdir, model: Any = None, tokenizer: Any = None):
        self.workdir = workdir if isinstance(workdir, Workdir) else Workdir(workdir)
        """The run directory (dda.workdir.Workdir): checkpoints, features, attribution."""
        self.cfg = self.workdir.resolve_config(cfg)
        """The config in use: the one given, with the settings the workdir's features were built with."""
        self._model, self._tokenizer = model, tokenizer
        self._indexer: Indexer | None = None
        self.checkpoints: list[Checkpoint] = []
        """The fine-tuned checkpoints in training order (theta0 not included)."""
        self.checkpoint_set: CheckpointSet | None = None
        """How `use_checkpoints` found them (layout and notes); None after `finetune`."""
        self.timings: dict[str, float] = {}
        """Seconds per stage run by this Attributor (model_load, finetune, index, attribute, ...)."""
        self.index_stats: dict[str, Any] = {}
        """What the last `index` did: rows, checkpoints and their layout, truncations, computed rows, speed."""
        self.checkpoint_source: str | None = None
        """Where `use_checkpoints` found the checkpoints (recorded with the index); None after `finetune`."""
        torch.manual_seed(self.cfg.seed)

    # ----------------------------------------------------------------------------------------- model + data
    @property
    def loaded_model(self) -> Any:
        """The model if it is loaded (or was given), else None: nothing is loaded to answer."""
        return self._model

    @property
    def model(self) -> Any:
        """theta0, the base model of `cfg.model`, loaded on first use (or the one passed in)."""
        if self._model is None:
            t0 = time.perf_counter()
            self._model, tok = load_model(self.cfg.model)
            self._tokenizer = self._tokenizer or tok
            self.timings["model_load"] = time.perf_counter() - t0
        return self._model

    @property
    def tokenizer(self) -> Any:
        """The model's tokenizer (loaded with the model, or the one passed in)."""
        if self._tokenizer is None:
            _ = self.model
        return self._tokenizer

    @property
    def formatter(self) -> PromptFormatter:
        """Turns examples and queries into token ids and loss masks, as `cfg.data` says, within the model's
        context."""
        context = getattr(getattr(self.model, "config", None), "max_position_embeddings", None)
        return PromptFormatter(self.tokenizer, self.cfg.data, context=context)

    @property
    def pad_id(self) -> int:
        """The token id batches are padded with (the tokenizer's pad token, else its end-of-sequence token)."""
        tok = self.tokenizer
        return tok.pad_token_id if tok.pad_token_id is not None else (tok.eos_token_id or 0)

    def tokenize(self, examples: list[Example]) -> Tokenized:
        """Token ids and loss masks of training examples, as `index` and `finetune` compute on them."""
        self._settle_format(examples)
        return self.formatter.tokenize_examples(examples)

    def _settle_format(self, examples: list[Example]) -> None:
        """data.format=auto becomes the format the rows were read in, so the workdir remembers it and later
        commands read queries (and the saved rows) the same way."""
        if self.cfg.data.format == "auto" and examples:
            self.cfg.data.format = examples[0].format

    @property
    def indexer(self) -> Indexer:
        """The gradient featurizer of `cfg.features` (tracked modules, projection), built on first use."""
        if self._indexer is None:
            self._indexer = Indexer(self.model, self.tokenizer, self.cfg.features)
        return self._indexer

    # ------------------------------------------------------------------------------------------- finetune
    def finetune(self, examples: list[Example], out_dir: str | Path | None = None) -> list[Checkpoint]:
        """Fine-tune theta0 on `examples` as `cfg.train` says, one checkpoint per epoch into `out_dir` (default
        WORKDIR/checkpoints), resuming from the last complete epoch; returns the checkpoints."""
        from .finetune import completed_epochs, finetune

        out = Path(out_dir or self.workdir.checkpoints)
        with self.workdir.lock("finetune"):
            data = self.tokenize(examples)
            steps = -(-len(examples) // self.cfg.train.batch_size)
            t0 = time.perf_counter()
            done = len(completed_epochs(out)) if out.exists() else 0
            if done:
                say(f"resuming fine-tuning: {done} of {self.cfg.train.epochs} epochs found in {out}", self.cfg.quiet)
            with bar(
                f"fine-tune ({self.cfg.train.method}, {self.cfg.train.epochs} epochs)",
                steps * self.cfg.train.epochs,
                self.cfg.quiet,
            ) as advance:
                advance(min(done, self.cfg.train.epochs) * steps)
                self.checkpoints = finetune(
                    self.model,
                    data,
                    self.cfg.train,
                    out,
                    self.pad_id,
                    run_config=self.cfg.to_dict(),
                    base_name=self.cfg.model.name,
                    progress=lambda *_: advance(1),
                )
            self.workdir.record(self.cfg, checkpoints=str(out))
            self.timings["finetune"] = time.perf_counter() - t0
        if self.cfg.train.method == "full":  # theta0 must be the base model again
            self._model = None
            self._indexer = None
        return self.checkpoints

    def use_checkpoints(self, path: str | Path) -> list[Checkpoint]:
        """Use the checkpoints found at `path` (dda's epoch-K folders, a Trainer's checkpoint-N folders, or one
        model folder; see `dda.models.find_checkpoints`) instead of fine-tuning; prints what was found."""
        found = find_checkpoints(path)
        self.checkpoints, self.checkpoint_set = found.checkpoints, found
        self.checkpoint_source = str(path)
        for note in found.notes:
            say(note, self.cfg.quiet)
        return self.checkpoints

    def all_checkpoints(self) -> list[Checkpoint]:
        """theta0 then every checkpoint: those set by `finetune`/`use_checkpoints`, else the workdir's source."""
        if not self.checkpoints:
            source = (self.workdir.settings() or {}).get("checkpoints")
            if source and Path(source).exists():
                self.use_checkpoints(source)
            elif self.workdir.checkpoints.exists():
                self.use_checkpoints(self.workdir.checkpoints)
        if not self.checkpoints:
            self.workdir.require_exists()
            raise WorkdirError(
                f"{self.workdir}: no checkpoints: run `dda finetune`, or `dda index --checkpoints DIR` "
                "with your own (Python: finetune() or use_checkpoints(path))"
            )
        return [BASE, *self.checkpoints]

    def checked_checkpoints(self) -> list[Checkpoint]:
        """Every checkpoint (theta0 first), each checked to fit the model before any work uses it."""
        cks = self.all_checkpoints()
        for c in cks:
            check_checkpoint_fits(self.model, c, self.cfg.model.name)
        return cks

    # ---------------------------------------------------------------------------------------------- index
    def _featurize_all(self, sets: dict[str, tuple[Tokenized, Path]], label: str) -> dict[str, dict[str, FeatureStore]]:
        """{set name: (data, root)} -> {set name: {checkpoint: store}}; each checkpoint is applied once."""
        cks = self.checked_checkpoints()
        out: dict[str, dict[str, FeatureStore]] = {k: {} for k in sets}
        total = sum(len(d) for d, _ in sets.values()) * len(cks)
        with bar(f"{label} gradients ({len(cks)} checkpoints)", total, self.cfg.quiet) as adv:
            for c in cks:
                stores = self.indexer.featurize_sets(c, [(d, root / c.name) for d, root in sets.values()], adv)
                for key, store in zip(sets, stores, strict=True):
                    out[key][c.name] = store
        return out

    def _precheck_stores(self, data: Tokenized, cks: list[Checkpoint]) -> tuple[int, list[str]]:
        """Refuse, before anything is written, stores built with other settings; return (rows left, notes)."""
        featurizer = GradientFeaturizer(self.model, self.indexer.modules, self.indexer.projector)
        left, notes = 0, []
        for c in cks:
            root = self.workdir.train_store(c.name)
            if not (root / "meta.json").exists():
                left += len(data)
                continue
            stored = read_json(root / "meta.json")
            check_compatible(stored, self.indexer.store_meta(c, data, featurizer.dim, featurizer.blocks), str(root))
            done = 0 if stored.get("complete") else int(np.load(root / "done.npy", allow_pickle=False).sum())
            if not stored.get("complete"):
                left += len(data) - done
                notes.append(f"{c.name} {done}/{len(data)} rows")
            else:
                notes.append(f"{c.name} complete")
        return left, notes

    def index(self, examples: list[Example]) -> dict[str, FeatureStore]:
        """Features of every training example at theta0 and at each checkpoint (reused if already stored).

        Launched by torchrun / accelerate (WORLD_SIZE > 1), each process indexes its own shard (dda.distributed)."""
        from .distributed import device_type, index_sharded, launch_env, process_group

        data_hash = examples_hash(examples)
        env = launch_env()
        if env.distributed:
            self.workdir.check_data(data_hash, len(examples))  # every process reads; rank 0 writes at the end
            with process_group(env, device_type(self)) as group:
                return index_sharded(self, examples, group, data_hash)
        with self.workdir.lock("index"):
            self.workdir.check_data(data_hash, len(examples))
            data = self.tokenize(examples)
            cks = self.checked_checkpoints()
            left, notes = self._precheck_stores(data, cks)
            if notes:
                say(f"found stored features ({', '.join(notes)}); {left} rows left to compute", self.cfg.quiet)
            self.record_index_inputs(examples, data_hash, cks)
            t0 = time.perf_counter()
            seconds0, tokens0, rows0 = self.indexer.seconds, self.indexer.tokens, self.indexer.rows
            stores = self._featurize_all({"train": (data, self.workdir.train_features)}, "train")["train"]
            stats = index_statistics(
                len(examples),
                [c.name for c in cks],
                data,
                float(np.mean([len(s) for s in data.input_ids])),
                int(next(iter(stores.values())).meta["dim"]),
                self.indexer.rows - rows0,
                self.indexer.tokens - tokens0,
                self.indexer.seconds - seconds0,
                time.perf_counter() - t0,
                checkpoint_layout=self.checkpoint_set.describe() if self.checkpoint_set else None,
            )
            self.record_index_stats(stats)
        self.timings["index"] = time.perf_counter() - t0
        return stores

    def record_index_inputs(self, examples: list[Example], data_hash: str, checkpoints: list[Checkpoint]) -> None:
        """The workdir's record of what it indexes: the training rows, their hash, the checkpoints' source and the
        config (single-process indexing writes it before computing, rank 0 of a sharded one after)."""
        save_examples(self.workdir.train_data, examples)
        source = self.checkpoint_source or str(Path(checkpoints[-1].path).parent)
        self.workdir.record(
            self.cfg,
            indexed=True,
            data_hash=data_hash,
            n_train=len(examples),
            checkpoints=str(Path(source).resolve()),
        )
        write_yaml(self.workdir.config_file, self.cfg.to_dict())

    def record_index_stats(self, stats: dict[str, Any], write: bool = True) -> None:
        """The one place index statistics (`features.index.index_statistics`) are kept: `index_stats`, and with
        `write` the workdir's index.json."""
        if write:
            write_json(self.workdir.index_stats, stats)
        self.index_stats = stats

    def query_features(self, queries: list[Query]) -> dict[str, dict[str, np.ndarray]]:
        """{"neg": ..., "pos": ..., ["contrast_neg": ...]} -> {checkpoint: (n_queries, dim)}.

        "neg" is always the gradient of the whole negative output (what non-contrastive scorers use). With
        features.query_tokens=diff, "pos" and "contrast_neg" carry the loss of the swapped tokens only, and
        the contrast is contrast_neg - pos; with "all", the contrast is neg - pos over every response token."""
        fmt = self.formatter
        neg = fmt.tokenize_pairs([(q.prompt, q.negative) for q in queries])
        pos = (
            fmt.tokenize_pairs([(q.prompt, q.positive) for q in queries]) if all(q.positive for q in queries) else None
        )
        cut = neg.n_truncated
        if cut:
            say(f"{cut} of {len(queries)} queries were cut to fit {fmt.cut_rule()}", self.cfg.quiet)
        mode = self.cfg.features.query_tokens if pos is not None else "all"
        root = self.workdir.query_root(
            self.workdir.query_key(
                neg=neg.fingerprint(), pos=pos.fingerprint() if pos is not None else None, query_tokens=mode
            )
        )
        sets = {"neg": (neg, root / "neg")}
        if pos is not None and mode == "diff":
            focus_neg, focus_pos = focus_on_difference(neg, pos)
            sets["contrast_neg"] = (focus_neg, root / "diff" / "neg")
            sets["pos"] = (focus_pos, root / "diff" / "pos")
        elif pos is not None:
            sets["pos"] = (pos, root / "pos")
        stores = self._featurize_all(sets, "query")
        return {kind: {k: np.asarray(v.features) for k, v in by_ckpt.items()} for kind, by_ckpt in stores.items()}

    # ------------------------------------------------------------------------------------------ attribute
    def train_examples(self) -> list[Example]:
        """The indexed training examples (WORKDIR/data/train.jsonl), in the order of the stored features."""
        path = self.workdir.train_data
        self.workdir.require_exists()
        if not path.exists():
            raise FileNotFoundError(f"{path}: no indexed training data; run `dda index` first")
        return load_examples(saved_data_config(self.cfg.data, path))

    def feature_set(self, queries: list[Query]) -> FeatureSet:
        """The stored training features and the queries' features (computed or reused) at every checkpoint."""
        cks = self.all_checkpoints()
        stores = {c.name: read_store(self.workdir.train_store(c.name)) for c in cks}
        q = self.query_features(queries)
        return FeatureSet(
            cks,
            {name: st.features for name, st in stores.items()},
            q["neg"],
            q.get("pos", {}),
            contrast_neg=q.get("contrast_neg", {}),
            blocks=module_blocks(stores[cks[0].name].meta),
        )

    def attribute(
        self,
        queries: list[Query],
        methods: list[str] | None = None,
        out_dir: str | Path | None = None,
        poisoned: set[str] | None = None,
    ) -> Attribution:
        """Score every indexed training document for each query's negative output with each method (default
        `cfg.score.methods`); saved to `out_dir` when given. `poisoned` ids (known culprits) are marked."""
        methods = methods or list(self.cfg.score.methods)
        parsed = [parse_method(m) for m in methods]  # fail fast on a typo or a bad parameter, before any compute
        needs = method_needs(methods)
        examples = self.train_examples()
        with self.workdir.lock("attribute"):
            t0 = time.perf_counter()
            fs = self.feature_set(queries) if "features" in needs else None
            access = None
            if "model" in needs:
                access = ModelAccess(
                    self.model,
                    self.formatter,
                    self.pad_id,
                    self.all_checkpoints()[-1],
                    self.tokenize(examples),
                    self.cfg.features.batch_size,
                    self.cfg.quiet,
                )
            ctx = ScoringContext(
                fs,
                [f"{e.prompt_text}\n{e.response_text}" for e in examples],
                queries,
                model=access,
                default_checkpoints=self.cfg.score.checkpoints,
                train_responses=[e.response_text for e in examples],
                train_prompts=[e.prompt_text for e in examples],
            )
            defaults = score_defaults(self.cfg.score)
            t1 = time.perf_counter()
            scores = {label: run_method(label, ctx, defaults) for label, _, _ in parsed}
            self.timings["query_features"] = t1 - t0
            self.timings["scoring"] = time.perf_counter() - t1
            result = Attribution(
                [e.id for e in examples], queries, scores, self.cfg.to_dict(), poisoned or set(), context=ctx
            )
            if out_dir is not None:
                result.save(out_dir, self.cfg.score.top_k, pooled=self.cfg.score.pool)
        return result

    # ------------------------------------------------------------------------- explain (token attribution)
    def explain(
        self,
        result_or_queries: Attribution | list[Query],
        methods: list[str] | None = None,
        top_k: int | None = None,
        out_dir: str | Path | None = None,
        poisoned: set[str] | None = None,
        train_ids: list[str] | None = None,
        query_token_limit: int | None = None,
        align: str | None = None,
    ) -> list[dict[str, Any]]:
        """Token-level attribution of each query's top-k documents (see dda.explain): per document its tokens
        with contributions that sum to the method's score, the prompt/response split, and the query tokens'
        shares. `result_or_queries`: an Attribution (its queries and ground truth) or queries. Methods default to
        the gradient methods among the result's (or "dda"). Writes OUT_DIR/explain/{query}.json if given.
        align="target": a position's part shown on the token it predicts; "input": on the token it reads."""
        from .explain import explain, explainable

        ec = self.cfg.explain  # settings left at None come from the config's explain section
        top_k, align = top_k or ec.top_k, align or ec.align
        query_token_limit = query_token_limit or ec.query_token_limit
        if isinstance(result_or_queries, Attribution):
            queries = result_or_queries.queries
            poisoned = poisoned if poisoned is not None else (result_or_queries.poisoned or None)
            methods = methods or [m for m in result_or_queries.scores if explainable(m)] or ["dda"]
        else:
            queries = list(result_or_queries)
        return explain(self, queries, methods or ["dda"], top_k, poisoned, train_ids, query_token_limit, out_dir, align)

    # ------------------------------------------------------------------------------ search (top-k at scale)
    def train_stores(self) -> dict[str, FeatureStore]:
        """The complete training-feature store of theta0 and every checkpoint (read-only memmaps)."""
        return {c.name: read_store(self.workdir.train_store(c.name)) for c in self.all_checkpoints()}

    def _search_plan(self, method: str, stores: dict[str, FeatureStore]) -> tuple[Any, list[int] | None]:
        from .scoring.search import plan_fold

        blocks = module_blocks(stores[BASE.name].meta)
        defaults = score_defaults(self.cfg.score)
        return plan_fold(
            method, self.all_checkpoints(), blocks is not None, defaults, self.cfg.score.checkpoints
        ), blocks

    def build_search_index(
        self,
        backend: str | None = None,
        method: str = "dda",
        sketch_dim: int | None = None,
        nlist: int | None = None,
        seed: int | None = None,
        out_dir: str | Path | None = None,
    ) -> Path:
        """Index the concatenated training rows `method` reads (sketch, faiss or a registered index backend), in
        WORKDIR/features/index/{backend}-{key}/ by default; one streaming pass over the stores. Settings left at
        None come from the config's `search` section (backend: sketch when it names one without an index)."""
        from .scoring.backends import get_backend
        from .scoring.search import build_index, concatenated_rows, index_name, store_sources

        sc = self.cfg.search
        backend = backend or (sc.backend if get_backend(sc.backend).needs_index else "sketch")
        sketch_dim = sketch_dim or sc.sketch_dim
        nlist = nlist if nlist is not None else sc.nlist
        seed = sc.seed if seed is None else seed

        stores = self.train_stores()
        plan, blocks = self._search_plan(method, stores)
        sources = store_sources({k: s.meta for k, s in stores.items()})
        fs = FeatureSet(self.all_checkpoints(), {k: s.features for k, s in stores.items()}, {}, blocks=blocks)
        rows = concatenated_rows(plan, fs)
        out = Path(out_dir) if out_dir else self.workdir.search_index / index_name(backend, plan, rows.blocks, sources)
        t0 = time.perf_counter()
        with bar(
            f"{backend} index of {rows.shape[0]} x {rows.shape[1]} ({'+'.join(plan.layout)})",
            rows.shape[0],
            self.cfg.quiet,
        ) as adv:
            done = [0]

            def advance(stop: int) -> None:
                adv(stop - done[0])
                done[0] = stop

            build_index(
                rows,
                out,
                backend,
                plan,
                sources,
                sketch_dim=sketch_dim,
                seed=seed,
                nlist=nlist,
                run_config=self.cfg.to_dict(),
                on_block=advance,
            )
        self.timings["build_index"] = time.perf_counter() - t0
        return out

    def search(
        self,
        queries: list[Query],
        k: int | None = None,
        method: str = "dda",
        backend: str | None = None,
        index_dir: str | Path | None = None,
        candidates: int | None = None,
        nprobe: int | None = None,
        out_dir: str | Path | None = None,
        build: bool = False,
        sketch_dim: int | None = None,
    ) -> Any:
        """Top-k training rows per query of a foldable method (`dda.scoring.base.foldable_methods`) without any
        (n_queries x n_train) array: exact streaming scan, or an index's candidates re-ranked exactly.
        Settings left at None come from the config's `search` section.
        Returns a `dda.scoring.search.SearchResult`; with `out_dir`, search.json + config.yaml are written."""
        sc = self.cfg.search
        k, backend, candidates = k or sc.k, backend or sc.backend, candidates or sc.candidates
        nprobe, sketch_dim = nprobe or sc.nprobe, sketch_dim or sc.sketch_dim
        from .scoring.backends import get_backend
        from .scoring.search import (
            SearchResult,
            find_index,
            folded_topk,
            ids_at_rows,
            open_index,
            store_sources,
            train_blocks,
        )

        impl = get_backend(backend)  # an unknown name fails here, with every registered one listed
        train_path = self.workdir.train_data
        self.workdir.require_exists()
        if not train_path.exists():
            raise FileNotFoundError(f"{train_path}: no indexed training data; run index() first")
        stores = self.train_stores()
        plan, blocks = self._search_plan(method, stores)  # fails on an unfoldable method before any compute
        sources = store_sources({k: s.meta for k, s in stores.items()})
        index = None
        if impl.needs_index:
            index_root = self.workdir.search_index
            dim = int(stores[plan.layout[0]].meta["dim"])
            index = (
                open_index(index_dir)
                if index_dir
                else find_index(index_root, backend, plan, train_blocks(plan, blocks, dim), sources)
            )
            if index is None and build:
                index = open_index(self.build_search_index(backend, method, sketch_dim=sketch_dim))
            if index is None:
                raise ValueError(
                    f"no {backend} index for '{plan.method}' under {index_root}; run "
                    f"`dda build-index --backend {backend} --method '{method}'` or pass --build"
                )
        t0 = time.perf_counter()
        q = self.query_features(queries)
        fs = FeatureSet(
            self.all_checkpoints(),
            {k: s.features for k, s in stores.items()},
            q["neg"],
            q.get("pos", {}),
            contrast_neg=q.get("contrast_neg", {}),
            blocks=blocks,
        )
        t1 = time.perf_counter()
        scores, rows = folded_topk(fs, plan, k, backend, index, sources, candidates, nprobe)
        self.timings["query_features"] = t1 - t0
        self.timings["search"] = time.perf_counter() - t1
        settings = {
            "method": plan.method,
            "backend": backend,
            "k": k,
            "fold": plan.describe(),
            "index": str(index.root) if index else None,
            "candidates": candidates if "candidates" in impl.reads else None,
            "nprobe": nprobe if "nprobe" in impl.reads else None,
            "seconds": round(self.timings["search"], 3),
        }
        result = SearchResult(
            plan.method,
            backend,
            [qq.id for qq in queries],
            scores,
            rows,
            ids_at_rows(train_path, rows.ravel()),
            settings,
        )
        if out_dir is not None:
            result.save(out_dir, self.cfg.to_dict())
        return result


__all__ = ["Attribution", "Attributor", "load_attribution", "method_slug"]
