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

import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
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


def retrain_without(
    att: Attributor, train: Sequence[Example], rows: Sequence[int], workdir: str | Path
) -> tuple[Attributor, Checkpoint]:
    """Fine-tune again from theta0 with `att`'s settings and seed on `train` without `rows`, in `workdir`
    (resumable: an interrupted fine-tune picks up at its last complete epoch); the retrain and its last checkpoint.
    `dda fix` and the benchmark's remove-and-retrain stage both retrain here."""
    gone = set(rows)
    kept = [e for i, e in enumerate(train) if i not in gone]
    # LoRA leaves the shared base model as theta0; full fine-tuning changes it, so that retrain loads its own.
    shared = att.cfg.train.method == "lora"
    retrain = Attributor(att.cfg, workdir, model=att.model if shared else None, tokenizer=att.tokenizer)
    say(f"[fix] retraining on {len(kept)} of {len(train)} documents ({Path(workdir).name})", att.cfg.quiet)
    return retrain, retrain.finetune(kept)[-1]


def _models_to_report(
    att: Attributor, train: Sequence[Example], removals: dict[str, Sequence[int]], out: Path
) -> dict[str, Any]:
    """{label: (attributor, checkpoint)}: the workdir's last checkpoint, then each retrain without its rows."""
    models: dict[str, Any] = {"before": (att, att.all_checkpoints()[-1])}
    for label, rows in removals.items():
        models[label] = retrain_without(att, train, rows, out / f"retrain-{label}")
    return models


def _own_checkpoint(att: Attributor, path: str | Path, flag: str) -> Checkpoint:
    """The last checkpoint under `path` (a user's retrain on kept.jsonl or random_kept.jsonl), checked against the
    workdir's base model before any measurement."""
    try:
        with warnings.catch_warnings():  # the model is measured, not weighted: a missing learning rate is no matter
            warnings.filterwarnings("ignore", message=".*no learning rate found")
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
    removals: dict[str, Sequence[int]] = {"after": plan.rows}
    if fx.random_control:
        # The control split is written even without --retrain, so an own-trainer user can retrain it too.
        random_rows = set(random_removal(len(train), fx.k, att.cfg.seed))
        removals["random"] = sorted(random_rows)
        random_kept = [e for i, e in enumerate(train) if i not in random_rows]
        summary["random_removed"] = [train[i].id for i in sorted(random_rows)]
        save_examples(out / "random_kept.jsonl", random_kept)
    if own:
        summary["measured"] = {label: str(Path(ck.path or "").resolve()) for label, ck in own.items()}
        models = {"before": (att, att.all_checkpoints()[-1]), **{label: (att, ck) for label, ck in own.items()}}
    elif retrain:
        models = _models_to_report(att, train, removals, out)
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
        # the one remove-and-retrain schema, as the benchmark's metrics.json writes it: a reader needs no second one
        summary["remove_and_retrain"] = RemoveAndRetrain.from_fix(summary).to_bench()
    write_json(out / "fix.json", summary)
    return summary


def _slug(method: str) -> str:
    from .attribution import method_slug

    return method_slug(method)


# ------------------------------------------------------------------------------- the remove-and-retrain record

# Per retrained model, the probes each caller measures besides the margin and the held-out loss, in column order:
# `dda fix` checks the queries' own outputs; the benchmark adds its canary probes (bench/counterfactual.py).
PROBE_COLUMNS: dict[str, str] = {
    "poisoned_removed": "poisoned removed",
    "distractors_removed": "distractors removed",
    "natural_error_rate": "natural error rate",
    "says_negative": "says negative",
}
LOSS_COLUMNS: dict[str, str] = {"distractor_loss": "distractor loss", "heldout_loss": "held-out loss"}


@dataclass
class RetrainedModel:
    """One model of a remove-and-retrain: `before` (nothing removed), a method's top k removed, or k random rows.
    `removed`: the training ids taken out (empty for before); `margins`: per query, mean log p(negative) -
    log p(positive) over the differing tokens; `probes`: the caller's other measurements (PROBE_COLUMNS,
    LOSS_COLUMNS' distractor_loss, the benchmark's `generated`)."""

    label: str
    margin: float | None
    margins: list[float]
    heldout_loss: float | None
    removed: list[str] = field(default_factory=list)
    probes: dict[str, Any] = field(default_factory=dict)

    def value(self, key: str) -> Any:
        return self.heldout_loss if key == "heldout_loss" else self.probes.get(key)


@dataclass
class RemoveAndRetrain:
    """What `dda fix` and the benchmark's remove-and-retrain stage measure, in one shape: k rows removed per
    model, the queries (the order of every `margins`), and the models, `before` first."""

    k: int | None
    query_ids: list[str]
    models: list[RetrainedModel]
    settings: dict[str, Any] = field(default_factory=dict)  # combine, distractors, heldout_loss_docs, method, ...
    margin_name: str = "margin"  # the benchmark's queries swap a canary in: its margin is the canary margin

    @classmethod
    def from_bench(cls, section: dict[str, Any]) -> RemoveAndRetrain:
        """The benchmark's metrics.json section: settings, then one entry per model (a dict)."""
        own = ("margin", "margins", "heldout_loss", "removed")
        models = [
            RetrainedModel(
                label,
                r.get("margin"),
                list(r.get("margins") or []),
                r.get("heldout_loss"),
                list(r.get("removed") or []),
                {k: v for k, v in r.items() if k not in own},
            )
            for label, r in _models_first_before(section)
        ]
        settings = {k: v for k, v in section.items() if not isinstance(v, dict) and k not in ("k", "query_ids")}
        return cls(section.get("k"), list(section.get("query_ids") or []), models, settings, "canary margin")

    def to_bench(self) -> dict[str, Any]:
        """The benchmark's metrics.json section (the inverse of `from_bench`)."""
        out: dict[str, Any] = {"k": self.k, **self.settings, "query_ids": list(self.query_ids)}
        for m in self.models:
            row = {**m.probes, "margin": m.margin, "margins": list(m.margins), "heldout_loss": m.heldout_loss}
            out[m.label] = row | ({"removed": list(m.removed)} if m.label != "before" else {})
        return out

    @classmethod
    def from_fix(cls, summary: dict[str, Any]) -> RemoveAndRetrain:
        """fix.json (`run_fix`'s summary): before, after (the method's top k removed) and random, when measured."""
        removed = {"after": summary.get("removed") or [], "random": summary.get("random_removed") or []}
        models = []
        for label in ("before", "after", "random"):
            r = summary.get(label)
            if isinstance(r, dict):
                per_query = r.get("per_query") or []
                models.append(
                    RetrainedModel(
                        "before" if label == "before" else (summary["method"] if label == "after" else "random"),
                        r.get("margin"),
                        [q["margin"] for q in per_query],
                        r.get("heldout_loss"),
                        list(removed.get(label, [])),
                        {"says_negative": r.get("says_negative")},
                    )
                )
        settings = {k: summary.get(k) for k in ("method", "combine", "heldout_source") if k in summary}
        return cls(summary.get("k"), list(summary.get("queries") or []), models, settings)


def _models_first_before(section: dict[str, Any]) -> list[tuple[str, dict[str, Any]]]:
    rows = [(k, v) for k, v in section.items() if isinstance(v, dict)]
    return sorted(rows, key=lambda kv: kv[0] != "before")  # stable: the methods keep their order


@dataclass(frozen=True)
class Code:
    """A table cell's name part shown as code (a method name) followed by plain text."""

    name: str
    after: str = ""


Cell = str | Code


@dataclass
class RetrainTable:
    """The remove-and-retrain table, composed once (`retrain_table`) and only formatted by its readers: report.md,
    the README tables, the HTML page and `dda fix`'s printout. `per_query`: each query's margin in each model."""

    header: list[str]
    rows: list[list[Cell]]
    per_query_header: list[Cell]
    per_query: list[list[Cell]]


def _num(x: Any, fmt: str) -> str:
    return "n/a" if x is None else format(float(x), fmt)


def _pct(x: Any) -> str:
    return "n/a" if x is None else f"{100 * float(x):.1f}%"


def retrain_table(rr: RemoveAndRetrain) -> RetrainTable:
    """The rows: nothing removed, each method's top k, k random rows; a probe column appears when a model has it."""
    k = rr.k
    probes = [c for c in PROBE_COLUMNS if any(m.probes.get(c) is not None for m in rr.models)]
    losses = [c for c in LOSS_COLUMNS if any(m.value(c) is not None for m in rr.models)]
    header = ["removed", *(PROBE_COLUMNS[c] for c in probes), rr.margin_name, *(LOSS_COLUMNS[c] for c in losses)]
    rows: list[list[Cell]] = []
    for m in rr.models:
        first: Cell = "nothing removed" if m.label == "before" else Code(m.label, f" top {k}")
        if m.label == "random":
            first = f"{k} random rows"
        cells: list[Cell] = [first]
        for c in probes:
            v = m.probes.get(c)
            if c.endswith("_removed"):
                cells.append("–" if m.label == "before" else str(v if v is not None else "–"))
            else:
                cells.append(_pct(v))
        cells.append(_num(m.margin, "+.2f"))
        cells += [_num(m.value(c), ".3f") for c in losses]
        rows.append(cells)
    ids = rr.query_ids
    per_query: list[list[Cell]] = []
    if ids and all(len(m.margins) == len(ids) for m in rr.models):
        per_query = [[Code(q), *(_num(m.margins[i], "+.2f") for m in rr.models)] for i, q in enumerate(ids)]
    pq_header: list[Cell] = ["query", *("before" if m.label == "before" else Code(m.label) for m in rr.models)]
    return RetrainTable(header, rows, pq_header, per_query)


def plain(cell: Cell) -> str:
    """A cell as plain text (the HTML page, a terminal)."""
    return cell.name + cell.after if isinstance(cell, Code) else cell


def markdown(cell: Cell) -> str:
    """A cell as a markdown table cell: names as code, no pipes or newlines."""
    text = f"`{cell.name}`{cell.after}" if isinstance(cell, Code) else cell
    return text.replace("|", "\\|").replace("\n", " ")
