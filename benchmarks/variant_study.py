"""Issue 29's variant study: rescore a finished benchmark run's stored gradient features with every DDA variant.

A run's training set is rebuilt from its config.yaml (preset, pairs, seed: the split and the injection are
deterministic) and its queries from queries.jsonl; the fine-tuned checkpoints, the training stores and the query
features are read back from the run's workdir (`OUT/work/<key>`), so nothing is fine-tuned or indexed again (the
model is loaded only to open the Attributor; query features are reused from the workdir's query stores). The
rebuild is checked first: DDA's AUC and AP recomputed here must equal the run's own, else the script stops.

Every variant is a transform of the same stores (see `variants`), scored with the benchmark's own metrics. Run it on
development pairs and seeds only (results/preregistered-pairs.yaml); the held-out runs get the chosen setting.

Usage: DDA_SHARED_DATA=../shared/data python benchmarks/variant_study.py RUN [RUN ...] --out results/X.json
"""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
from run_rebuild import open_attributor, print_metrics, rebuild

from dda.bench.metrics import pooled_metrics
from dda.bench.sweep import score_metrics
from dda.features.sharded import read_store
from dda.scoring import ScoringContext, run_method
from dda.scoring.base import FeatureSet, module_normalized, score_defaults
from dda.scoring.combined import combine_scores, reciprocal_rank_fusion

KEYS = ("auc", "ap", "distractor_auc", "pooled_ap", "pooled_distractor_auc")


# ------------------------------------------------------------------------------------------------ transforms
# Each variant works on module-normalised features (the library default: every module votes once) unless it says
# otherwise. X: (n_train, d) training features at one checkpoint; Q: (n_queries, d) query contrasts there.


def _mod(x: np.ndarray, blocks: list[int]) -> np.ndarray:
    return module_normalized(np.asarray(x, dtype=np.float32), blocks)


def _unit(x: np.ndarray) -> np.ndarray:
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-30)


def _select(blocks: list[int], keep: list[bool]) -> np.ndarray:
    starts = np.concatenate([[0], np.cumsum(blocks)[:-1]])
    return np.concatenate([np.arange(s, s + b) for s, b, k in zip(starts, blocks, keep, strict=True) if k])


class Study:
    """The stores of one run, module-normalised once per checkpoint, and the variants over them."""

    def __init__(self, fs: FeatureSet, modules: list[str], beta: float, debias_mode: str) -> None:
        assert fs.blocks is not None, "the study needs per-module features"
        self.fs, self.blocks, self.modules = fs, fs.blocks, modules
        self.beta, self.mode = beta, debias_mode
        self.cks = [c.name for c in fs.finetuned()]
        self.base = fs.base
        names = [self.base, *self.cks]
        self.X = {n: _mod(fs.train[n], self.blocks) for n in names}
        self.Q = {n: _mod(fs.contrast(n), self.blocks) for n in names}
        self._right_singular: dict[str, np.ndarray] = {}

    # The library's DDA with debias_mode base/cross, on transformed features.
    def dda(
        self,
        tx: Callable[[np.ndarray, str], np.ndarray] | None = None,
        cols: np.ndarray | None = None,
        beta: float | None = None,
        per_ck: bool = False,
        X: dict[str, np.ndarray] | None = None,
        Q: dict[str, np.ndarray] | None = None,
    ) -> np.ndarray | list[np.ndarray]:
        """DDA over features X (training) and Q (query contrasts), by default the module-normalised ones."""
        beta = self.beta if beta is None else beta
        tx = tx or (lambda a, _n: a)
        X, Q = X or self.X, Q or self.Q

        def part(x: np.ndarray) -> np.ndarray:
            return x if cols is None else x[:, cols]

        terms = []
        for c in self.cks:
            terms.append(part(tx(Q[c], c)) @ part(tx(X[c], c)).T)
        if per_ck:
            return terms
        score = sum(terms) / len(terms)
        if beta:
            xb = part(tx(X[self.base], self.base))
            if self.mode == "base":
                bias = part(tx(Q[self.base], self.base)) @ xb.T
            elif self.mode == "cross":
                bias = sum(part(tx(Q[c], c)) @ xb.T for c in self.cks) / len(self.cks)
            else:
                raise ValueError(f"study supports debias_mode base/cross, not {self.mode}")
            score = score - beta * bias
        return score

    # transforms -------------------------------------------------------------------------------------------
    def pc_removal(self, k: int) -> Callable[[np.ndarray, str], np.ndarray]:
        """Remove the top-k right singular directions of the (module-normalised) training features at each
        checkpoint from both sides: the nuisance directions every training gradient shares."""
        if not self._right_singular:  # one SVD per checkpoint serves every k
            for n, x in self.X.items():
                self._right_singular[n] = np.linalg.svd(x.astype(np.float64), full_matrices=False)[2]
        basis = {n: vt[:k].astype(np.float32) for n, vt in self._right_singular.items()}

        def tx(a: np.ndarray, n: str) -> np.ndarray:
            v = basis[n]
            return a - (a @ v.T) @ v

        return tx

    def centered(self) -> Callable[[np.ndarray, str], np.ndarray]:
        """Subtract the training features' mean at each checkpoint (the one shared direction)."""
        mean = {n: x.mean(axis=0, keepdims=True) for n, x in self.X.items()}
        return lambda a, n: a - mean[n]

    def second_moment(self, eps_frac: float = 1e-3) -> Callable[[np.ndarray, str], np.ndarray]:
        """Diagonal preconditioner from the training features' own second moment per coordinate (Adam's v is an
        EMA of the same quantity in parameter space; here it is taken in the sketch space): both sides scaled by
        (E[x^2] + eps)^-1/2, so the score is x^T diag(v)^-1 q."""
        scale = {}
        for n, x in self.X.items():
            v = (x.astype(np.float64) ** 2).mean(axis=0)
            scale[n] = (1.0 / np.sqrt(v + eps_frac * v.mean())).astype(np.float32)
        return lambda a, n: a * scale[n][None, :]

    def whiten(self, lam: float) -> Callable[[np.ndarray, str], np.ndarray]:
        """Per-module Gauss-Newton preconditioning in the sketch space (LoGra/LogIX's choice for Kronecker-
        projected gradients): each module's slice times (C + lam * mean eigenvalue * I)^-1/2, C the training
        features' second moment there, then each slice back at unit norm so every module still votes once."""
        starts = np.concatenate([[0], np.cumsum(self.blocks)[:-1]])
        roots: dict[str, list[np.ndarray]] = {}
        for n, x in self.X.items():
            mats = []
            for s0, b in zip(starts, self.blocks, strict=True):
                xb = x[:, s0 : s0 + b].astype(np.float64)
                c = xb.T @ xb / len(xb)
                w, v = np.linalg.eigh(c + lam * max(np.trace(c) / b, 1e-30) * np.eye(b))
                mats.append(((v / np.sqrt(np.maximum(w, 1e-30))) @ v.T).astype(np.float32))
            roots[n] = mats

        def tx(a: np.ndarray, n: str) -> np.ndarray:
            out = np.concatenate(
                [a[:, s0 : s0 + b] @ m for s0, b, m in zip(starts, self.blocks, roots[n], strict=True)], axis=1
            )
            return _mod(out, self.blocks)

        return tx

    def clip(self, q: float = 0.99) -> Callable[[np.ndarray, str], np.ndarray]:
        """Winsorise every coordinate at the q quantile of its |value| over the training rows."""
        hi = {n: np.quantile(np.abs(x), q, axis=0) for n, x in self.X.items()}
        return lambda a, n: np.clip(a, -hi[n], hi[n])

    def whole_unit(self) -> np.ndarray:
        """Unit norm over the whole row instead of per module (cosine of the full sketched gradient)."""
        names = [self.base, *self.cks]
        X = {n: _unit(np.asarray(self.fs.train[n], dtype=np.float32)) for n in names}
        return self.dda(X=X, Q={n: _unit(self.fs.contrast(n)) for n in names})

    def layer_keep(self, pred: Callable[[str], bool]) -> np.ndarray:
        return _select(self.blocks, [pred(m) for m in self.modules])


def _layer_of(module: str) -> int:
    for part in module.split("."):
        if part.isdigit():
            return int(part)
    return -1


def variants(
    st: Study, ctx: ScoringContext, dda: np.ndarray, defaults: dict[str, Any]
) -> dict[str, tuple[str, Callable[[], np.ndarray]]]:
    """name -> (what it is, how to compute it). Every variant has DDA's query information (differing tokens)."""
    layers = sorted({_layer_of(m) for m in st.modules})
    half = layers[len(layers) // 2 :]
    last3 = layers[-3:]
    attn = ("q_proj", "k_proj", "v_proj", "o_proj")
    unsupported = run_method("unsupported", ctx)
    rrf = reciprocal_rank_fusion
    return {
        "dda": ("the run's DDA (module-normalised, the preset's beta and debias reading)", lambda: dda),
        "dda, beta 0": ("no debias term", lambda: st.dda(beta=0.0)),
        "dda, normalize none": (
            "raw dot products (no per-module unit norm)",
            lambda: run_method("dda(normalize=none)", ctx, defaults),
        ),
        "dda, whole-row unit norm": ("cosine of the whole sketched gradient instead of per module", st.whole_unit),
        "dda + clip 99%": (
            "every coordinate winsorised at its 99% |value| over training rows",
            lambda: st.dda(st.clip(0.99)),
        ),
        "dda + centre": ("training mean removed at each checkpoint", lambda: st.dda(st.centered())),
        "dda + remove 1 PC": (
            "top training singular direction removed (component-wise debias)",
            lambda: st.dda(st.pc_removal(1)),
        ),
        "dda + remove 4 PCs": ("top 4 training singular directions removed", lambda: st.dda(st.pc_removal(4))),
        "dda + remove 16 PCs": ("top 16 training singular directions removed", lambda: st.dda(st.pc_removal(16))),
        "dda + module Gauss-Newton (lambda 0.1)": (
            "each module's sketch whitened by its training second moment + 0.1 x mean eigenvalue (LoGra/LogIX)",
            lambda: st.dda(st.whiten(0.1)),
        ),
        "dda + module Gauss-Newton (lambda 1)": (
            "the same with a ridge of 1 x the mean eigenvalue",
            lambda: st.dda(st.whiten(1.0)),
        ),
        "dda + second moment": (
            "diagonal second-moment preconditioning in the sketch space (Adam-v proxy)",
            lambda: st.dda(st.second_moment()),
        ),
        "dda, last half of layers": (
            f"layers {half[0]}-{half[-1]} only",
            lambda: st.dda(cols=st.layer_keep(lambda m: _layer_of(m) in half)),
        ),
        "dda, last 3 layers": (
            f"layers {last3[0]}-{last3[-1]} only",
            lambda: st.dda(cols=st.layer_keep(lambda m: _layer_of(m) in last3)),
        ),
        "dda, attention only": (
            "q/k/v/o projections only",
            lambda: st.dda(cols=st.layer_keep(lambda m: m.rsplit(".", 1)[-1] in attn)),
        ),
        "dda, MLP only": (
            "gate/up/down projections only",
            lambda: st.dda(cols=st.layer_keep(lambda m: m.rsplit(".", 1)[-1] not in attn)),
        ),
        "dda, rank fusion over checkpoints": (
            "reciprocal-rank fusion (k=60) of the per-checkpoint scores, no debias",
            lambda: rrf(st.dda(per_ck=True)),
        ),
        "dda, rank fusion over layers": (
            "reciprocal-rank fusion (k=60) of per-layer DDA scores",
            lambda: rrf([st.dda(cols=st.layer_keep(lambda m, L=L: _layer_of(m) == L)) for L in layers]),
        ),
        "dda_unsupported (flagged_first)": (
            "rows the `unsupported` filter flags first, each group by DDA",
            lambda: combine_scores(dda, unsupported, "flagged_first"),
        ),
        "dda_unsupported (rank_fusion)": (
            "reciprocal-rank fusion of DDA and `unsupported`",
            lambda: combine_scores(dda, unsupported, "rank_fusion"),
        ),
    }


def study_run(run: Path) -> dict[str, Any]:
    rebuilt = rebuild(run)
    metrics, queries = rebuilt.metrics, rebuilt.queries
    att = open_attributor(run, rebuilt.prepared)
    fs = att.feature_set(queries)  # the workdir's stores; query features are reused from its query stores
    meta = read_store(att.workdir.train_store(fs.base)).meta
    ctx = rebuilt.context(fs, att.cfg.score.checkpoints)
    masks, distractors = rebuilt.masks, rebuilt.distractors
    groups = [p.label for p in rebuilt.pairs]
    kinds = {k: rebuilt.kinds.count(k) for k in sorted(set(rebuilt.kinds))}

    def measure(scores: np.ndarray) -> dict[str, float]:
        m, _ = score_metrics(scores, masks, distractors)
        m.update(pooled_metrics(scores, masks, distractors, groups))
        return {k: float(m[k]) for k in KEYS if k in m}

    defaults = score_defaults(att.cfg.score)
    dda = run_method("dda", ctx, defaults)
    lib = measure(dda)
    theirs = metrics["methods"]["dda"]
    for k in ("auc", "ap"):
        if abs(lib[k] - theirs[k]) > 1e-6:
            raise RuntimeError(f"{run}: rebuilt dda {k} {lib[k]} != the run's {theirs[k]}")
    st = Study(fs, list(meta["modules"]), att.cfg.score.beta, att.cfg.score.debias_mode)
    # the study's own DDA algebra, which every transform goes through, must be the library's
    if not np.allclose(st.dda(), dda, rtol=1e-4, atol=1e-5):
        raise RuntimeError(f"{run}: the study's dda scores differ from the library's")
    out: dict[str, Any] = {}
    for name, (what, fn) in variants(st, ctx, dda, defaults).items():
        t0 = time.perf_counter()
        out[name] = {"what": what, **measure(np.asarray(fn(), dtype=np.float64)), "seconds": time.perf_counter() - t0}
    baselines = {
        m: {k: float(metrics["methods"][m][k]) for k in KEYS if k in metrics["methods"][m]}
        for m in ("keyword", "unsupported", "signature", "repsim", "cea", "bm25_diff")
        if m in metrics["methods"]
    }
    return {
        "run": run.name,
        "pairs": metrics["pairs"],
        "seed": int(metrics["seed"]),
        "n_queries": len(queries),
        "query_kinds": kinds,
        "variants": out,
        "baselines": baselines,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("runs", nargs="+", type=Path)
    ap.add_argument("--out", type=Path)
    args = ap.parse_args()
    rows = [study_run(r) for r in args.runs]
    for row in rows:
        print_metrics(
            f"{row['run']} ({row['n_queries']} queries)", {**row["variants"], **row["baselines"]}, KEYS, "variant"
        )
    if args.out:
        args.out.write_text(json.dumps(rows, indent=2) + "\n", encoding="utf-8")


if __name__ == "__main__":
    main()
