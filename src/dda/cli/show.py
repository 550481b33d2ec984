"""The commands that read what runs wrote: show (the HTML report) and config (the settings as YAML)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from ..progress import console
from .common import ConfigOpt, QuietOpt, SetOpt, build_config, clean_errors, split_methods


def show(
    run_dir: Annotated[Path, typer.Argument(help="`dda attribute` output (or its workdir) or a `dda bench` run.")],
    out: Annotated[Path | None, typer.Option(help="HTML file to write.")] = None,
    top_k: Annotated[int | None, typer.Option(help="Documents per query and method.")] = None,
    explain: Annotated[
        bool,
        typer.Option(
            "--explain/--no-explain",
            help="A bench run without token attribution: compute it first (loads the "
            "model; re-runs each query's top-k documents at every checkpoint).",
        ),
    ] = False,
    methods: Annotated[str, typer.Option(help="Methods to explain with --explain.")] = "dda",
    quiet: QuietOpt = False,
) -> None:
    """One self-contained HTML page (no network, opens from disk): every query with its outputs, each method's
    top documents with their tokens shaded by contribution, method agreement; a bench run adds Tables 1/2 and β.

    Example: `dda show runs/x/attribution --out report.html`; `dda show runs/bench --explain`
    """
    from ..bench.evidence import explain_bench_run
    from ..explain import read_explanations
    from ..report_html import collect, locate, render, write_page_text

    with clean_errors(run_dir):
        kind, run, attr = locate(run_dir)
        if explain and not read_explanations(attr):
            if kind != "bench":
                raise ValueError(f"{attr}: no token attribution; run `dda attribute --explain` (the default)")
            explain_bench_run(run, split_methods(methods), top_k)
        data = collect(run_dir, top_k)
        target = out or run / "report.html"
        page = render(data)
        write_page_text(target, page)
    if not quiet:
        canary = (data.get("bench") or {}).get("canary")
        if canary:
            c = canary["all"]
            console.print(
                f"largest token contribution of poisoned documents in {c['method']}'s top {c['k']}: on the "
                f"canary word in {c['on_canary']}/{c['pairs']} (query, document) pairs, "
                f"{c['distinct_docs_on_canary']}/{c['distinct_docs']} distinct documents"
            )
        console.print(
            f"{len(data['queries'])} queries, {len(data['docs'])} documents, {len(page.encode()) / 1e6:.2f} MB"
        )
    console.print(f"report: {target}")


def show_config(config: ConfigOpt = None, set_: SetOpt = None) -> None:
    """Print the full config (defaults, or FILE with --set overrides) as YAML with each field documented."""
    from ..config import documented_yaml
    from ..scoring import parse_method

    with clean_errors():
        cfg = build_config(config, set_, False)
        for spec in cfg.score.methods:  # a config that `dda attribute` would refuse is refused here
            try:
                parse_method(spec)
            except ValueError as err:
                raise ValueError(f"score.methods: {err}") from None
    typer.echo(documented_yaml(cfg), nl=False)
