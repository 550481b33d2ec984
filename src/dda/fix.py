"""Remove the documents an attribution blames, retrain, and measure whether the mistake is gone: `dda fix`.

An attribution without planted labels can only be checked by its counterfactual (CEA, Ladhak et al. 2023: retrain
without the flagged examples and count the errors that remain). `plan_removal` turns a method's scores for the
queries into one set of k training rows; `run_fix` writes the kept and removed rows and, with `retrain`, fine-tunes
from the same base model with the same settings and seed on the kept rows (same epochs; the schedule follows the
smaller set's step count) and on the set without k random rows (the control), then reports for each model the
queries' margin (mean log p(negative) - log p(positive) over the differing tokens), whether greedy generation
still says the negative's differing words, and the mean loss on held-out documents. A user who retrains with their
own trainer on the written splits (kept.jsonl, random_kept.jsonl) passes those checkpoints instead
(`after_checkpoint`, `random_checkpoint`) and gets the same measurements.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from .api import Attributor
from .attribution import Attribution, load_attribution
from .config import DDAConfig
from .data import Example, Query, save_examples
from .evaluate import query_report
from .io import write_json, write_yaml
from .models import Checkpoint, ModelError, applied, check_checkpoint_fits, discover_checkpoints
from .progress import say
from .workdir import WorkdirError

__all__ = ["FixError", "RemovalPlan", "plan_removal", "random_removal", "run_fix"]


class FixError(ValueError):
    """Bad input to `dda fix`, found before any work."""


@dataclass
class RemovalPlan:
    method: str
    k: int
    combine: str
    rows: list[int]  # training rows to remove, most blamed first
    scores: list[float]  # the combined score of each (mean score over the queries)
    ranks: list[float]  # the mean rank over the queries (1 = most blamed)


def average_ranks(x: np.ndarray) -> np.ndarray:
    """1-based ranks of `x` ascending, tied values sharing their mean rank (scipy's rankdata 'average', without
    scipy: it comes only with the `bench` extra)."""
    _, inverse, counts = np.unique(np.asarray(x), return_inverse=True, return_counts=True)
    ends = np.cumsum(counts)
    return ((ends - counts + 1 + ends) / 2.0)[inverse.reshape(-1)]


def plan_removal(scores: np.ndarray, k: int, combine: str = "mean-rank", method: str = "") -> RemovalPlan:
    """k training rows from `scores` (n_queries, n_train; higher = more responsible). mean-rank: the k best by
    mean rank over the queries (ties by mean score); union: per-query top lists taken round-robin until k rows."""
    s = np.atleast_2d(np.asarray(scores, dtype=np.float64))
    n = s.shape[1]
    if not 1 <= k < n:
        raise FixError(f"k={k}: must be at least 1 and below the {n} training documents")
    ranks = np.stack([average_ranks(-row) for row in s])  # 1 = highest score
    mean_rank, mean_score = ranks.mean(axis=0), s.mean(axis=0)
    if combine == "mean-rank":
        rows = [int(i) for i in np.lexsort((-mean_score, mean_rank))[:k]]
    elif combine == "union":
        orders = [np.argsort(-row, kind="stable") for row in s]
        rows, seen, depth = [], set(), 0
        while len(rows) < k:
            for order in orders:
                i = int(order[depth])
                if i not in seen and len(rows) < k:
                    seen.add(i)
                    rows.append(i)
            depth += 1
    else:
        raise FixError(f"combine must be 'mean-rank' or 'union', not {combine!r}")
    return RemovalPlan(
        method, k, combine, rows, [float(mean_score[i]) for i in rows], [float(mean_rank[i]) for i in rows]
    )


def random_removal(n: int, k: int, seed: int) -> list[int]:
    """k rows drawn without replacement with the run's seed (its own stream): the control removal."""
    return sorted(int(i) for i in np.random.default_rng([seed, 505]).choice(n, size=k, replace=False))


def _scores_for(att: Attributor, queries: Sequence[Query], method: str) -> tuple[np.ndarray, Attribution]:
    """The stored scores of `method` for `queries` (by id), from the workdir's `dda attribute` output."""
    root = att.workdir.attribution
    if not (root / "ranking.json").is_file():
        raise FixError(
            f"{root}: no scores; run `dda attribute -w {att.workdir} --queries ... --methods {method}` first"
        )
    result = load_attribution(root)
    if method not in result.scores:
        raise FixError(
            f"{root / 'ranking.json'}: no scores for method '{method}' (scored: {', '.join(result.scores)}); "
            f"run `dda attribute` with --methods {method}"
        )
    index = {q.id: i for i, q in enumerate(result.queries)}
    missing = [q.id for q in queries if q.id not in index]
    if missing:
        raise FixError(f"queries {missing[:5]} were not scored in {root} (scored: {', '.join(index)})")
    return result.scores[method][[index[q.id] for q in queries]], result


def _models_to_report(
    att: Attributor, kept: Sequence[Example], random_kept: Sequence[Example] | None, out: Path
) -> dict[str, Any]:
    """{label: (attributor, checkpoint)}: the workdir's last checkpoint, then each retrain (resumable: an
    interrupted fine-tune picks up at its last complete epoch)."""
    models: dict[str, Any] = {"before": (att, att.all_checkpoints()[-1])}
    sets = {"after": kept, **({"random": random_kept} if random_kept is not None else {})}
    for label, examples in sets.items():
        # LoRA leaves the shared base model as theta0; full fine-tuning changes it, so that retrain loads its own.
        shared = att.cfg.train.method == "lora"
        retrain = Attributor(
            att.cfg, out / f"retrain-{label}", model=att.model if shared else None, tokenizer=att.tokenizer
        )
        say(f"[fix] retraining on {len(examples)} documents ({label})", att.cfg.quiet)
        models[label] = (retrain, retrain.finetune(list(examples))[-1])
    return models


def _own_checkpoint(att: Attributor, path: str | Path, flag: str) -> Checkpoint:
    """The last checkpoint under `path` (a user's retrain on kept.jsonl or random_kept.jsonl), checked against the
    workdir's base model before any measurement."""
    try:
        ckpt = discover_checkpoints(path)[-1]
        check_checkpoint_fits(att.model, ckpt, att.cfg.model.name)
    except ModelError as err:
        raise FixError(f"{flag}: {err}") from None
    return ckpt


def _checked_inputs(
    att: Attributor,
    queries: Sequence[Query],
    retrain: bool,
    after_checkpoint: str | Path | None,
    random_checkpoint: str | Path | None,
) -> list[Example]:
    """Every refusal `run_fix` can make, before any work; returns the workdir's training examples."""
    fx = att.cfg.fix
    if not queries:
        raise FixError("no queries")
    measure = retrain or after_checkpoint is not None
    if retrain and after_checkpoint is not None:
        raise FixError("--retrain and --after both give the retrained model: use one")
    if random_checkpoint is not None and after_checkpoint is None:
        raise FixError("--random is the control beside --after: give the retrain on kept.jsonl with --after too")
    if measure and any(not q.positive for q in queries):
        raise FixError("measuring a margin needs a positive output for every query")
    train = att.train_examples()
    if fx.k >= len(train):
        raise FixError(f"fix.k={fx.k}: the workdir holds {len(train)} training documents; k must be smaller")
    if measure:
        try:
            att.all_checkpoints()
        except WorkdirError as err:
            raise FixError(f"measuring compares against the workdir's fine-tuned model: {err}") from None
    return train


def run_fix(
    cfg: DDAConfig,
    workdir: str | Path,
    queries: Sequence[Query],
    *,
    retrain: bool = False,
    out_dir: str | Path | None = None,
    heldout: Sequence[Example] | None = None,
    after_checkpoint: str | Path | None = None,
    random_checkpoint: str | Path | None = None,
) -> dict[str, Any]:
    """Choose `cfg.fix.k` documents by `cfg.fix.method`, write the split under `out_dir` (default
    WORKDIR/fix/<method>-k<K>/), and measure before / after / random when `retrain` (dda fine-tunes) or when
    `after_checkpoint` (and optionally `random_checkpoint`) name the user's own retrains; returns fix.json's content."""
    att = Attributor(cfg, workdir)
    fx = att.cfg.fix
    train = _checked_inputs(att, queries, retrain, after_checkpoint, random_checkpoint)
    scores, result = _scores_for(att, queries, fx.method)
    if result.train_ids != [e.id for e in train]:
        raise FixError(f"{att.workdir.attribution}: its training ids differ from the workdir's indexed data")
    own: dict[str, Checkpoint] = {}
    if after_checkpoint is not None:
        own["after"] = _own_checkpoint(att, after_checkpoint, "--after")
        if random_checkpoint is not None:
            own["random"] = _own_checkpoint(att, random_checkpoint, "--random")
    plan = plan_removal(scores, fx.k, fx.combine, fx.method)
    out = Path(out_dir or att.workdir / "fix" / f"{_slug(fx.method)}-k{fx.k}")
    out.mkdir(parents=True, exist_ok=True)
    removed = set(plan.rows)
    kept = [e for i, e in enumerate(train) if i not in removed]
    save_examples(out / "kept.jsonl", kept)
    write_json(
        out / "removed.json",
        [
            {"train_id": train[i].id, "mean_score": sc, "mean_rank": rk}
            for i, sc, rk in zip(plan.rows, plan.scores, plan.ranks, strict=True)
        ],
    )
    write_yaml(out / "config.yaml", att.cfg.to_dict())
    summary: dict[str, Any] = {
        "method": fx.method,
        "k": fx.k,
        "combine": fx.combine,
        "queries": [q.id for q in queries],
        "removed": [train[i].id for i in plan.rows],
        "n_train": len(train),
        "retrained": retrain,
    }
    random_kept = None
    if fx.random_control:
        # The control split is written even without --retrain, so an own-trainer user can retrain it too.
        random_rows = set(random_removal(len(train), fx.k, att.cfg.seed))
        random_kept = [e for i, e in enumerate(train) if i not in random_rows]
        summary["random_removed"] = [train[i].id for i in sorted(random_rows)]
        save_examples(out / "random_kept.jsonl", random_kept)
    if own:
        summary["measured"] = {label: str(Path(ck.path or "").resolve()) for label, ck in own.items()}
        models = {"before": (att, att.all_checkpoints()[-1]), **{label: (att, ck) for label, ck in own.items()}}
    elif retrain:
        models = _models_to_report(att, kept, random_kept, out)
    else:
        models = {}
    if models:
        summary["heldout_source"] = "heldout" if heldout else "kept"
        held = att.tokenize(list(heldout) if heldout else kept)
        for label, (a, ckpt) in models.items():
            with applied(a.model, ckpt) as model:
                summary[label] = query_report(
                    model,
                    a.tokenizer,
                    a.formatter,
                    a.pad_id,
                    queries,
                    held,
                    fx.max_new_tokens,
                    a.cfg.features.batch_size,
                )
    write_json(out / "fix.json", summary)
    return summary


def _slug(method: str) -> str:
    from .attribution import method_slug

    return method_slug(method)
