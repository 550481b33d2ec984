"""Top-k search at scale: build-index (once) and search (memory flat, no queries x rows matrix)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from ..progress import console, results
from ..scoring.backends import index_backends
from ..scoring.base import foldable_methods
from .common import ConfigOpt, ModelOpt, QuietOpt, SetOpt, WorkdirOpt, build_config, clean_errors


def _search_help(name: str) -> str:
    """A search option's help is its config field's doc: the default is written once, in config.py."""
    from ..config import SearchConfig, field_docs

    return field_docs(SearchConfig)[name] + f" (config: search.{name})"


BackendOpt = Annotated[str | None, typer.Option(help=_search_help("backend"))]
MethodOpt = Annotated[
    str,
    typer.Option(
        help=f"A foldable method, NAME or NAME(key=value,...), e.g. dda(beta=0.4): {', '.join(foldable_methods())}."
    ),
]
CheckpointsOpt = Annotated[
    Path | None, typer.Option(help="Checkpoints the store was indexed with, if not WORKDIR/checkpoints.")
]
SketchDimOpt = Annotated[int | None, typer.Option(help=_search_help("sketch_dim"))]


def build_index_command(
    workdir: WorkdirOpt,
    backend: Annotated[
        str, typer.Option(help=f"{' or '.join(index_backends())} (the registered index backends).")
    ] = "sketch",
    method: MethodOpt = "dda",
    sketch_dim: SketchDimOpt = None,
    nlist: Annotated[int | None, typer.Option(help=_search_help("nlist"))] = None,
    seed: Annotated[int | None, typer.Option(help=_search_help("seed"))] = None,
    checkpoints: CheckpointsOpt = None,
    out: Annotated[Path | None, typer.Option(help="Index dir.")] = None,
    config: ConfigOpt = None,
    set_: SetOpt = None,
    quiet: QuietOpt = False,
) -> None:
    """Build a search index of the stored training rows once (one streaming pass), for `dda search`.

    Example: `dda build-index -w runs/x --backend sketch --sketch-dim 256`
    """
    from ..api import Attributor

    with clean_errors(workdir):
        cfg = build_config(
            config, set_, quiet, **{"search.sketch_dim": sketch_dim, "search.nlist": nlist, "search.seed": seed}
        )
        att = Attributor(cfg, workdir)
        if checkpoints:
            att.use_checkpoints(checkpoints)
        path = att.build_search_index(backend, method, out_dir=out)
    if not quiet:
        console.print(f"{backend} index in {path} ({att.timings['build_index']:.1f} s)")


def search(
    workdir: WorkdirOpt,
    queries: Annotated[Path, typer.Option(help="JSONL with prompt, negative[, positive] per line.")],
    k: Annotated[int | None, typer.Option(help=_search_help("k"))] = None,
    backend: BackendOpt = None,
    method: MethodOpt = "dda",
    index: Annotated[Path | None, typer.Option(help="Index dir.")] = None,
    build: Annotated[bool, typer.Option(help="Build the index first if there is none.")] = False,
    candidates: Annotated[int | None, typer.Option(help=_search_help("candidates"))] = None,
    nprobe: Annotated[int | None, typer.Option(help=_search_help("nprobe"))] = None,
    sketch_dim: SketchDimOpt = None,
    checkpoints: CheckpointsOpt = None,
    out: Annotated[Path | None, typer.Option(help="Output dir.")] = None,
    config: ConfigOpt = None,
    model: ModelOpt = None,
    beta: Annotated[float | None, typer.Option(help="DDA debias weight.")] = None,
    prompt_field: str = "prompt",
    negative_field: str = "negative",
    positive_field: str = "positive",
    set_: SetOpt = None,
    quiet: QuietOpt = False,
) -> None:
    """Top-k training documents per query over a store of any size, memory flat (no queries x rows matrix).

    Example: `dda search -w runs/x --queries q.jsonl --k 100 --backend sketch --build`
    """
    from ..api import Attributor
    from ..data import load_queries

    out_dir = out or workdir / "search"
    with clean_errors(workdir):
        options = {"search.k": k, "search.backend": backend, "search.candidates": candidates}
        options.update({"search.nprobe": nprobe, "search.sketch_dim": sketch_dim})
        cfg = build_config(config, set_, quiet, **{"model.name": model, "score.beta": beta, **options})
        qs = load_queries(str(queries), prompt_field, negative_field, positive_field)
        att = Attributor(cfg, workdir)
        if checkpoints:
            att.use_checkpoints(checkpoints)
        result = att.search(qs, method=method, index_dir=index, out_dir=out_dir, build=build)
        k, backend = att.cfg.search.k, att.cfg.search.backend
    if not quiet:
        for qi, qid in enumerate(result.query_ids):
            best = ", ".join(f"{r['train_id']} ({r['score']:.3g})" for r in result.top(qi)[:5])
            results.print(f"{qid}: {best}")
        console.print(
            f"top-{k} of {len(qs)} queries ({backend}, {result.settings['seconds']} s) in {out_dir}/search.json"
        )
