"""The benchmark's commands (bench, bench-summary) and the demo that runs its pipeline on a small setup."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from ..config import parse_set_options
from ..progress import console, quiet_libraries, results
from .common import ModelOpt, QuietOpt, SetOpt, clean_errors, split_methods


def bench(
    preset: Annotated[
        str,
        typer.Option(help="cpu-tiny, cpu-small, cpu-haystack, cpu-haystack-natural, gpu-paper (dda.bench.presets)."),
    ] = "cpu-small",
    pairs: Annotated[str, typer.Option(help="ORIG:CANARY[,ORIG:CANARY...]")] = "England:China",
    seed: int = 0,
    out: Annotated[Path, typer.Option(help="Output dir.")] = Path("runs/bench"),
    seeds: Annotated[
        str | None,
        typer.Option(help="Comma list of seeds: each runs into OUT/seed-N, then OUT/summary.md combines them."),
    ] = None,
    model: ModelOpt = None,
    data: Annotated[list[str] | None, typer.Option(help="Data source(s); repeatable.")] = None,
    methods: Annotated[str | None, typer.Option(help="Comma list of methods.")] = None,
    set_: SetOpt = None,
    quiet: QuietOpt = False,
) -> None:
    """Hallucination-tracing benchmark (XSum canaries, CEA protocol): every method, ablation and beta.

    Example: `dda bench --preset cpu-small --pairs England:China --seed 0 --out runs/bench`
    """
    from ..bench.hallucination import run_bench
    from ..bench.summary import summarize_runs

    with clean_errors(out):
        overrides = parse_set_options(set_)
        try:
            seed_list = [int(x) for x in seeds.split(",") if x.strip()] if seeds else [seed]
        except ValueError:
            raise ValueError(f"--seeds '{seeds}': expected a comma list of integers") from None
        if quiet:
            quiet_libraries()
        dirs = [out / f"seed-{s}" for s in seed_list] if seeds else [out]
        for s, run_dir in zip(seed_list, dirs, strict=True):
            metrics = run_bench(
                preset,
                pairs=pairs,
                seed=s,
                out=run_dir,
                model=model,
                data=data,
                methods=split_methods(methods) if methods else None,
                quiet=quiet,
                overrides=overrides or None,
            )
            _print_bench(preset, metrics, run_dir, quiet)
        if seeds:
            summarize_runs(dirs, out)
            console.print(f"summary over seeds {seed_list}: {out}/summary.md")


def bench_summary(
    runs: Annotated[list[Path], typer.Argument(help="Run directories of `dda bench`.")],
    out: Annotated[Path, typer.Option(help="Where summary.md/json go.")] = Path("runs/summary"),
) -> None:
    """Combine benchmark runs (seeds, pairs, models): mean and spread of every method, mean β curves, checks."""
    from ..bench.summary import summarize_runs

    with clean_errors(out):
        summary = summarize_runs(runs, out)
    for name, m in sorted(summary["methods"].items(), key=lambda kv: -kv[1]["auc"]):
        results.print(f"{name:32s} AUC {m['auc']:.3f} ± {m['auc_std_over_runs']:.3f}")
    console.print(f"summary: {out}/summary.md")


def _print_bench(preset: str, metrics: dict, out: Path, quiet: bool) -> None:
    if not quiet:
        from rich.table import Table

        tab = Table(
            title=f"{preset}: {metrics['n_queries']} queries ({metrics['query_mode']}), "
            f"{metrics['n_poisoned']}/{metrics['n_train']} poisoned"
        )
        for col in ("method", "AUC", "AP", "R@10"):
            tab.add_column(col)
        for name, m in sorted(metrics["methods"].items(), key=lambda kv: -kv[1]["auc"]):
            tab.add_row(name, f"{m['auc']:.3f}", f"{m['ap']:.3f}", f"{m['recall@10']:.3f}")
        results.print(tab)
        console.print(f"report: {out}/report.md")


def demo(
    workdir: Annotated[Path, typer.Option("--workdir", "-w")] = Path("runs/demo"), quiet: QuietOpt = False
) -> None:
    """Fine-tune SmolLM2 on XSum with poisoned summaries, index, attribute; poisoned documents are marked."""
    from ..demo import run_demo

    run_demo(workdir, quiet=quiet)
