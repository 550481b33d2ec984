"""The commands of the attribution pipeline, in the order a run uses them: finetune, index, attribute, and fix
(remove what a method blames, retrain, measure)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from ..progress import console, results
from ..scoring.base import methods_help
from .common import (
    BETA_HELP,
    ConfigOpt,
    DataOpt,
    ModelOpt,
    QuietOpt,
    SetOpt,
    WorkdirOpt,
    build_config,
    clean_errors,
    split_methods,
)


def finetune(
    workdir: WorkdirOpt,
    config: ConfigOpt = None,
    model: ModelOpt = None,
    data: DataOpt = None,
    epochs: Annotated[int | None, typer.Option(help="Epochs (one checkpoint each).")] = None,
    lr: Annotated[float | None, typer.Option(help="Learning rate.")] = None,
    method: Annotated[str | None, typer.Option(help="lora or full.")] = None,
    set_: SetOpt = None,
    quiet: QuietOpt = False,
) -> None:
    """Fine-tune with a checkpoint per epoch (resumes from the last complete epoch).

    Example: `dda finetune -w runs/x --data train.jsonl --epochs 3 --set data.prompt_field=text`
    """
    from ..api import Attributor
    from ..data import load_examples

    options = {"model.name": model, "data.path": data, "train.epochs": epochs, "train.lr": lr, "train.method": method}
    with clean_errors(workdir):
        cfg = build_config(config, set_, quiet, **options)
        att = Attributor(cfg, workdir)
        ckpts = att.finetune(load_examples(att.cfg.data))
    if not quiet:
        console.print(f"{len(ckpts)} checkpoints in {att.workdir.checkpoints}: {', '.join(c.name for c in ckpts)}")


def index(
    workdir: WorkdirOpt,
    config: ConfigOpt = None,
    model: ModelOpt = None,
    data: DataOpt = None,
    checkpoints: Annotated[
        Path | None,
        typer.Option(help="Existing checkpoints (adapters or full weights) instead of WORKDIR/checkpoints."),
    ] = None,
    projection: Annotated[str | None, typer.Option(help="kronecker, dense or identity.")] = None,
    proj_dim: Annotated[int | None, typer.Option(help="Per side (kronecker) or total (dense).")] = None,
    module_dim: Annotated[
        int | None,
        typer.Option(help="Kronecker: compress each module's proj_dim^2 sketch to this many dims (0: none)."),
    ] = None,
    batch_tokens: Annotated[
        int | None,
        typer.Option(help="Batch by padded tokens instead of rows (0: auto, from 65,536 on CUDA); halved on CUDA OOM."),
    ] = None,
    set_: SetOpt = None,
    quiet: QuietOpt = False,
) -> None:
    """Store per-example gradient features of the training set at theta0 and every checkpoint.

    The workdir remembers the model, data, checkpoints and feature settings: `dda attribute` uses them.

    Example: `dda index -w runs/x --checkpoints my_adapters/ --data train.jsonl`

    Several processes: `torchrun --nproc-per-node N -m dda index ...` (or `accelerate launch`, or multi-node
    torchrun) gives each process a shard of the training set; the shards are read as one store.
    """
    from ..api import Attributor
    from ..data import load_examples
    from ..distributed import launch_env

    quiet = quiet or launch_env().rank != 0  # one process reports
    options = {
        "model.name": model,
        "data.path": data,
        "features.projection": projection,
        "features.proj_dim": proj_dim,
        "features.module_dim": module_dim,
        "features.batch_tokens": batch_tokens,
    }
    with clean_errors(workdir):
        cfg = build_config(config, set_, quiet, **options)
        att = Attributor(cfg, workdir)
        if checkpoints:
            att.use_checkpoints(checkpoints)
        att.index(load_examples(att.cfg.data))
    s = att.index_stats
    if not quiet:
        rate = (
            f", {s['examples_per_s']:.2f} examples/s, {s['tokens_per_s']:.0f} tokens/s"
            if "tokens_per_s" in s
            else " (all reused)"
        )
        console.print(
            f"indexed {s['n_train']} examples x {len(s['checkpoints'])} checkpoints, dim {s['dim']}{rate}; "
            f"{s.get('n_truncated', s['n_prompt_truncated'])} rows cut ({s['n_prompt_truncated']} in the prompt, "
            f"{s['n_response_truncated']} in the response; `dda data` shows them)"
        )


def attribute(
    workdir: WorkdirOpt,
    queries: Annotated[Path, typer.Option(help="JSONL with prompt, negative[, positive] per line.")],
    config: ConfigOpt = None,
    model: ModelOpt = None,
    methods: Annotated[
        str | None,
        typer.Option(
            # every registered method (plugins' too: they register before this module is imported)
            help="Comma list of NAME or NAME(key=value,...), e.g. dda(beta=0.4,debias_mode=cross). "
            + methods_help()
            + "."
        ),
    ] = None,
    beta: Annotated[float | None, typer.Option(help=BETA_HELP)] = None,
    top_k: Annotated[int | None, typer.Option(help="Rows per query in the printed ranking.")] = None,
    out: Annotated[Path | None, typer.Option(help="Output dir.")] = None,
    prompt_field: str = "prompt",
    negative_field: str = "negative",
    positive_field: str = "positive",
    id_field: str = "id",
    set_: SetOpt = None,
    quiet: QuietOpt = False,
    explain: Annotated[
        bool,
        typer.Option(
            "--explain/--no-explain",
            help="Split the top-k scores over the documents' tokens (re-runs the "
            "top-k documents at each checkpoint; files in OUT/explain/, shown by `dda show`).",
        ),
    ] = True,
    explain_methods: Annotated[str | None, typer.Option(help="Methods to explain.")] = None,
) -> None:
    """Rank training documents by responsibility for each query's negative output (higher = more responsible).

    Uses the model, data and feature settings the workdir was indexed with; every requested method is printed.

    Example: `dda attribute -w runs/x --queries q.jsonl --methods dda,tracin,bm25 --top-k 20`, then
    `dda show runs/x/attribution --out report.html`
    """
    from ..api import Attributor
    from ..data import load_queries
    from ..demo import print_ranking
    from ..distributed import launch_env
    from ..scoring import parse_method
    from ..workdir import Workdir

    if launch_env().rank != 0:  # launched as several processes: query features and scores on rank 0
        return
    out_dir = out or Workdir(workdir).attribution
    options = {
        "model.name": model,
        "score.beta": beta,
        "score.top_k": top_k,
        "score.methods": split_methods(methods) if methods else None,
    }
    with clean_errors(workdir):
        cfg = build_config(config, set_, quiet, **options)
        for spec in cfg.score.methods:
            parse_method(spec)  # a bad method or parameter fails before any model loads
        qs = load_queries(str(queries), prompt_field, negative_field, positive_field, id_field)
        att = Attributor(cfg, workdir)
        result = att.attribute(qs, list(cfg.score.methods), out_dir=out_dir)
        explanations = _explain_attribution(att, result, explain, explain_methods, out_dir)
    if not quiet:
        for method in result.scores:
            print_ranking(result, method, att.cfg.score.top_k, explanations)
        if att.cfg.score.pool and len(result.queries) > 1:
            pooled = result.pooled()
            for method in result.scores:
                print_ranking(pooled, method, att.cfg.score.top_k)
        console.print(f"scores of {len(result.scores)} methods in {out_dir}")
        if explanations:
            console.print(f"token attribution in {out_dir}/explain; page: dda show {out_dir} --out report.html")


def _explain_attribution(att, result, enabled: bool, methods: str | None, out: Path) -> list[dict]:
    """Explanations for `dda attribute` (none when disabled or no requested method is a gradient one)."""
    from ..explain import explainable

    if not enabled:
        return []
    wanted = split_methods(methods) if methods else [m for m in result.scores if explainable(m)][:1]
    return att.explain(result, methods=wanted, out_dir=out) if wanted else []


def _fix_help(name: str) -> str:
    from ..config import FixConfig, field_docs

    return field_docs(FixConfig)[name]


def fix(
    workdir: WorkdirOpt,
    queries: Annotated[Path, typer.Option(help="JSONL with prompt, negative, positive per line (scored queries).")],
    method: Annotated[str | None, typer.Option(help=_fix_help("method"))] = None,
    k: Annotated[int | None, typer.Option("--k", help=_fix_help("k"))] = None,
    combine: Annotated[str | None, typer.Option(help=_fix_help("combine"))] = None,
    retrain: Annotated[
        bool,
        typer.Option(
            "--retrain/--no-retrain",
            help="Fine-tune again on the kept documents (and without k random ones) and measure; without it, "
            "only the split is written, for your own trainer.",
        ),
    ] = False,
    after: Annotated[
        Path | None,
        typer.Option(
            help="Your own retrain on OUT/kept.jsonl (a checkpoint dir, or a dir of epoch dirs: the last is used): "
            "measured as 'after' instead of --retrain."
        ),
    ] = None,
    random: Annotated[
        Path | None,
        typer.Option(help="Your own retrain on OUT/random_kept.jsonl, the 'random' control (needs --after)."),
    ] = None,
    heldout: Annotated[Path | None, typer.Option(help="Documents for the collateral loss.")] = None,
    out: Annotated[Path | None, typer.Option(help="Output dir.")] = None,
    prompt_field: str = "prompt",
    negative_field: str = "negative",
    positive_field: str = "positive",
    id_field: str = "id",
    config: ConfigOpt = None,
    set_: SetOpt = None,
    quiet: QuietOpt = False,
) -> None:
    """Remove the documents a method blames for the queries, retrain, and measure whether the mistake is gone.

    Writes OUT/kept.jsonl, OUT/random_kept.jsonl (the control), OUT/removed.json and OUT/fix.json (before / after /
    random: margin, says_negative, heldout_loss). Needs `dda attribute` scores of the method for these queries.
    Retrained with your own trainer on those files? Pass the checkpoints with --after (and --random).

    Example: `dda fix -w runs/x --queries q.jsonl --method dda --k 24 --retrain`
    """
    from ..data import load_examples, load_queries
    from ..fix import run_fix

    options = {"fix.method": method, "fix.k": k, "fix.combine": combine}
    with clean_errors(workdir):
        cfg = build_config(config, set_, quiet, **options)
        qs = load_queries(str(queries), prompt_field, negative_field, positive_field, id_field)
        held = None
        if heldout is not None:
            from ..config import DataConfig

            held = load_examples(DataConfig(path=str(heldout)))
        summary = run_fix(
            cfg,
            workdir,
            qs,
            retrain=retrain,
            out_dir=out,
            heldout=held,
            after_checkpoint=after,
            random_checkpoint=random,
        )
    if not quiet:
        _print_fix(summary)


def _print_fix(summary: dict) -> None:
    """fix.json's models as the remove-and-retrain table (`dda.fix.retrain_table`, the benchmark's too)."""
    from rich.table import Table

    from ..fix import RemoveAndRetrain, plain, retrain_table

    results.print(
        f"{summary['method']}: removed {len(summary['removed'])} of {summary['n_train']} documents "
        f"({summary['combine']}) for {len(summary['queries'])} queries"
    )
    if "after" not in summary:
        return
    table = retrain_table(RemoveAndRetrain.from_fix(summary))
    printed = Table(*table.header, caption=f"held-out loss on: {summary['heldout_source']}")
    for row in table.rows:
        printed.add_row(*(plain(c) for c in row))
    results.print(printed)
    if len(summary["queries"]) > 1 and table.per_query:  # a mean can hide the one query that did not move
        per_query = Table(*(f"margin {plain(c)}" if i else plain(c) for i, c in enumerate(table.per_query_header)),
                          title="per query")  # fmt: skip
        for row in table.per_query:
            per_query.add_row(*(plain(c) for c in row))
        results.print(per_query)
