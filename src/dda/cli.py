"""Command line: thin wrappers over the Python API; every command takes --config FILE and --set key=value.

    dda finetune  --workdir runs/x --data train.jsonl
    dda index     --workdir runs/x                      # theta0 + every epoch checkpoint
    dda attribute --workdir runs/x --queries q.jsonl --methods dda,bm25 --beta 0.4
    dda bench     --preset cpu-small --pairs England:China --seed 0 --out runs/bench
    dda demo

Results go to stdout; progress, notes and errors to stderr. Bad input exits with status 2 and one message.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path
from typing import Annotated

import typer

from . import __version__
from .config import DDAConfig, apply_overrides, load_config, parse_set_options
from .progress import console, quiet_libraries, results

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    rich_markup_mode="markdown",
    help="Trace a fine-tuned LLM's outputs back to the training documents behind them (DDA).",
)

ConfigOpt = Annotated[Path | None, typer.Option("--config", "-c", help="YAML config (see `dda config`).")]
SetOpt = Annotated[list[str] | None, typer.Option("--set", help="Override a config key: --set train.epochs=2")]
QuietOpt = Annotated[bool, typer.Option("--quiet", "-q", help="No progress bars, notes or tables.")]
WorkdirOpt = Annotated[Path, typer.Option("--workdir", "-w", help="Run directory (checkpoints, features).")]
ModelOpt = Annotated[
    str | None,
    typer.Option(
        "--model",
        help="Hub id (org/name), local dir, .gguf file or builtin:NAME (default builtin:smollm2-135m-instruct).",
    ),
]
DataOpt = Annotated[str | None, typer.Option("--data", help="JSONL/CSV/Parquet file, dataset dir, hub:NAME.")]
BETA_HELP = (
    "DDA debias weight: score = mean over checkpoints - beta x theta0 score. beta < 0 ADDS the theta0 "
    "score (default -1, measured best here); the paper subtracts it (beta ~ 0.4)."
)


def _version(value: bool) -> None:
    if value:
        typer.echo(f"dda {__version__}")
        raise typer.Exit()


@app.callback()
def main(
    version: Annotated[
        bool, typer.Option("--version", callback=_version, is_eager=True, help="Print the version and exit.")
    ] = False,
) -> None:
    """Trace a fine-tuned LLM's outputs back to the training documents behind them (DDA)."""


def _config(config: Path | None, sets: list[str] | None, quiet: bool, **overrides) -> DDAConfig:
    """File, then the command's options, then --set: each value checked against its field's type and range."""
    cfg = load_config(config) if config else DDAConfig()
    cfg = apply_overrides(cfg, {k: v for k, v in overrides.items() if v is not None}, "command-line option")
    cfg = apply_overrides(cfg, parse_set_options(sets), "--set")
    if quiet:
        quiet_libraries()
        cfg = apply_overrides(cfg, {"quiet": True})
    return cfg


@contextlib.contextmanager
def _clean_errors(where: Path | None = None) -> Iterator[None]:
    """Expected failures (bad input, refused settings, a full disk) end with one message and exit status 2."""
    from .workdir import disk_full_message

    try:
        yield
    except (ValueError, FileNotFoundError) as err:
        _print_error(str(err))
        raise typer.Exit(2) from None
    except ImportError as err:
        _print_error(f"{err}: an optional dependency is missing (faiss: pip install 'dda-attribution[faiss]')")
        raise typer.Exit(2) from None
    except OSError as err:
        message = disk_full_message(err, where or Path.cwd())
        if message is None:
            raise
        _print_error(f"{err.strerror}" + (f": {err.filename}" if err.filename else "") + f"\n{message}")
        raise typer.Exit(2) from None


def _print_error(text: str) -> None:
    from rich.text import Text

    console.print(Text.assemble(("error: ", "red"), text), soft_wrap=True)  # paths stay whole for copy-paste


@app.command()
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
    from .api import Attributor
    from .data import load_examples

    options = {"model.name": model, "data.path": data, "train.epochs": epochs, "train.lr": lr, "train.method": method}
    with _clean_errors(workdir):
        cfg = _config(config, set_, quiet, **options)
        att = Attributor(cfg, workdir)
        ckpts = att.finetune(load_examples(att.cfg.data))
    if not quiet:
        console.print(f"{len(ckpts)} checkpoints in {att.workdir.checkpoints}: {', '.join(c.name for c in ckpts)}")


@app.command()
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
    from .api import Attributor
    from .data import load_examples
    from .distributed import launch_env

    quiet = quiet or launch_env().rank != 0  # one process reports
    options = {
        "model.name": model,
        "data.path": data,
        "features.projection": projection,
        "features.proj_dim": proj_dim,
        "features.module_dim": module_dim,
        "features.batch_tokens": batch_tokens,
    }
    with _clean_errors(workdir):
        cfg = _config(config, set_, quiet, **options)
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
            f"{s['n_prompt_truncated']} prompts and {s['n_response_truncated']} responses truncated"
        )


@app.command()
def attribute(
    workdir: WorkdirOpt,
    queries: Annotated[Path, typer.Option(help="JSONL with prompt, negative[, positive] per line.")],
    config: ConfigOpt = None,
    model: ModelOpt = None,
    methods: Annotated[
        str | None,
        typer.Option(
            help="Comma list: dda, dda(beta=0.4,debias_mode=cross), dda_no_debias, dda_no_denoise, "
            "dda_no_contrast, grad_dot, grad_cos, tracin, trak, bm25, cea."
        ),
    ] = None,
    beta: Annotated[float | None, typer.Option(help=BETA_HELP)] = None,
    top_k: Annotated[int | None, typer.Option(help="Rows per query in the printed ranking (default 10).")] = None,
    out: Annotated[Path | None, typer.Option(help="Output dir (default WORKDIR/attribution).")] = None,
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
    explain_methods: Annotated[
        str | None, typer.Option(help="Methods to explain (default: the first gradient method of --methods).")
    ] = None,
) -> None:
    """Rank training documents by responsibility for each query's negative output (higher = more responsible).

    Uses the model, data and feature settings the workdir was indexed with; every requested method is printed.

    Example: `dda attribute -w runs/x --queries q.jsonl --methods dda,tracin,bm25 --top-k 20`, then
    `dda show runs/x/attribution --out report.html`
    """
    from .api import Attributor
    from .data import load_queries
    from .demo import print_ranking
    from .distributed import launch_env
    from .scoring import parse_method
    from .workdir import Workdir

    if launch_env().rank != 0:  # launched as several processes: query features and scores on rank 0
        return
    out_dir = out or Workdir(workdir).attribution
    options = {
        "model.name": model,
        "score.beta": beta,
        "score.top_k": top_k,
        "score.methods": _split_methods(methods) if methods else None,
    }
    with _clean_errors(workdir):
        cfg = _config(config, set_, quiet, **options)
        for spec in cfg.score.methods:
            parse_method(spec)  # a bad method or parameter fails before any model loads
        qs = load_queries(str(queries), prompt_field, negative_field, positive_field, id_field)
        att = Attributor(cfg, workdir)
        result = att.attribute(qs, list(cfg.score.methods), out_dir=out_dir)
        explanations = _explain_attribution(att, result, explain, explain_methods, out_dir)
    if not quiet:
        for method in result.scores:
            print_ranking(result, method, att.cfg.score.top_k, explanations)
        console.print(f"scores of {len(result.scores)} methods in {out_dir}")
        if explanations:
            console.print(f"token attribution in {out_dir}/explain; page: dda show {out_dir} --out report.html")


def _explain_attribution(att, result, enabled: bool, methods: str | None, out: Path) -> list[dict]:
    """Explanations for `dda attribute` (none when disabled or no requested method is a gradient one)."""
    from .explain import explainable

    if not enabled:
        return []
    wanted = _split_methods(methods) if methods else [m for m in result.scores if explainable(m)][:1]
    return att.explain(result, methods=wanted, out_dir=out) if wanted else []


def _split_methods(text: str) -> list[str]:
    """Split 'dda(beta=0.4,debias_mode=cross),bm25' on top-level commas only."""
    out, depth, cur = [], 0, ""
    for ch in text:
        depth += ch == "("
        depth -= ch == ")"
        if ch == "," and depth == 0:
            out.append(cur.strip())
            cur = ""
        else:
            cur += ch
    if cur.strip():
        out.append(cur.strip())
    return out


def _fix_help(name: str) -> str:
    from .config import FixConfig, field_docs

    return field_docs(FixConfig)[name]


@app.command()
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
    heldout: Annotated[
        Path | None, typer.Option(help="Documents for the collateral loss (default: the kept training set).")
    ] = None,
    out: Annotated[Path | None, typer.Option(help="Output dir (default WORKDIR/fix/<method>-k<K>).")] = None,
    prompt_field: str = "prompt",
    negative_field: str = "negative",
    positive_field: str = "positive",
    id_field: str = "id",
    config: ConfigOpt = None,
    set_: SetOpt = None,
    quiet: QuietOpt = False,
) -> None:
    """Remove the documents a method blames for the queries, retrain, and measure whether the mistake is gone.

    Writes OUT/kept.jsonl, OUT/removed.json and OUT/fix.json (before / after / random: margin, says_negative,
    heldout_loss). Needs `dda attribute` scores of the method for these queries.

    Example: `dda fix -w runs/x --queries q.jsonl --method dda --k 24 --retrain`
    """
    from .data import load_examples, load_queries
    from .fix import run_fix

    options = {"fix.method": method, "fix.k": k, "fix.combine": combine}
    with _clean_errors(workdir):
        cfg = _config(config, set_, quiet, **options)
        qs = load_queries(str(queries), prompt_field, negative_field, positive_field, id_field)
        held = None
        if heldout is not None:
            from .config import DataConfig

            held = load_examples(DataConfig(path=str(heldout)))
        summary = run_fix(cfg, workdir, qs, retrain=retrain, out_dir=out, heldout=held)
    if not quiet:
        _print_fix(summary)


def _print_fix(summary: dict) -> None:
    from rich.table import Table

    results.print(
        f"{summary['method']}: removed {len(summary['removed'])} of {summary['n_train']} documents "
        f"({summary['combine']}) for {len(summary['queries'])} queries"
    )
    if not summary.get("retrained"):
        return
    table = Table("model", "margin (log p neg - log p pos)", "says negative", f"loss ({summary['heldout_source']})")
    for label in ("before", "after", "random"):
        if label in summary:
            r = summary[label]
            loss = "n/a" if r["heldout_loss"] is None else f"{r['heldout_loss']:.4f}"
            table.add_row(label, f"{r['margin']:+.3f}", f"{r['says_negative']:.0%}", loss)
    results.print(table)


@app.command()
def bench(
    preset: Annotated[
        str, typer.Option(help="cpu-tiny, cpu-small, cpu-haystack or gpu-paper (dda.bench.presets).")
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
    from .bench.hallucination import run_bench
    from .bench.summary import summarize_runs

    with _clean_errors(out):
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
                methods=_split_methods(methods) if methods else None,
                quiet=quiet,
                overrides=overrides or None,
            )
            _print_bench(preset, metrics, run_dir, quiet)
        if seeds:
            summarize_runs(dirs, out)
            console.print(f"summary over seeds {seed_list}: {out}/summary.md")


@app.command("bench-summary")
def bench_summary(
    runs: Annotated[list[Path], typer.Argument(help="Run directories of `dda bench`.")],
    out: Annotated[Path, typer.Option(help="Where summary.md/json go.")] = Path("runs/summary"),
) -> None:
    """Combine benchmark runs (seeds, pairs, models): mean and spread of every method, mean β curves, checks."""
    from .bench.summary import summarize_runs

    with _clean_errors(out):
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


@app.command()
def demo(
    workdir: Annotated[Path, typer.Option("--workdir", "-w")] = Path("runs/demo"), quiet: QuietOpt = False
) -> None:
    """Fine-tune SmolLM2 on XSum with poisoned summaries, index, attribute; poisoned documents are marked."""
    from .demo import run_demo

    run_demo(workdir, quiet=quiet)


@app.command("config")
def show_config(config: ConfigOpt = None, set_: SetOpt = None) -> None:
    """Print the full config (defaults, or FILE with --set overrides) as YAML with each field documented."""
    from .config import documented_yaml

    with _clean_errors():
        cfg = _config(config, set_, False)
    typer.echo(documented_yaml(cfg), nl=False)


# ------------------------------------------------------------------------------------ search (top-k at scale)
def _search_help(name: str) -> str:
    """A search option's help is its config field's doc: the default is written once, in config.py."""
    from .config import SearchConfig, field_docs

    return field_docs(SearchConfig)[name] + f" (config: search.{name})"


BackendOpt = Annotated[str | None, typer.Option(help=_search_help("backend"))]
MethodOpt = Annotated[
    str, typer.Option(help="A foldable method: dda[(beta=..,debias_mode=..)], grad_dot, grad_cos, tracin.")
]
CheckpointsOpt = Annotated[
    Path | None, typer.Option(help="Checkpoints the store was indexed with, if not WORKDIR/checkpoints.")
]
SketchDimOpt = Annotated[int | None, typer.Option(help=_search_help("sketch_dim"))]


@app.command("build-index")
def build_index_command(
    workdir: WorkdirOpt,
    backend: Annotated[str, typer.Option(help="sketch or faiss.")] = "sketch",
    method: MethodOpt = "dda",
    sketch_dim: SketchDimOpt = None,
    nlist: Annotated[int | None, typer.Option(help=_search_help("nlist"))] = None,
    seed: Annotated[int | None, typer.Option(help=_search_help("seed"))] = None,
    checkpoints: CheckpointsOpt = None,
    out: Annotated[
        Path | None, typer.Option(help="Index dir (default WORKDIR/features/index/<backend>-<key>).")
    ] = None,
    config: ConfigOpt = None,
    set_: SetOpt = None,
    quiet: QuietOpt = False,
) -> None:
    """Build a search index of the stored training rows once (one streaming pass), for `dda search`.

    Example: `dda build-index -w runs/x --backend sketch --sketch-dim 256`
    """
    from .api import Attributor

    with _clean_errors(workdir):
        cfg = _config(
            config, set_, quiet, **{"search.sketch_dim": sketch_dim, "search.nlist": nlist, "search.seed": seed}
        )
        att = Attributor(cfg, workdir)
        if checkpoints:
            att.use_checkpoints(checkpoints)
        path = att.build_search_index(backend, method, out_dir=out)
    if not quiet:
        console.print(f"{backend} index in {path} ({att.timings['build_index']:.1f} s)")


@app.command()
def search(
    workdir: WorkdirOpt,
    queries: Annotated[Path, typer.Option(help="JSONL with prompt, negative[, positive] per line.")],
    k: Annotated[int | None, typer.Option(help=_search_help("k"))] = None,
    backend: BackendOpt = None,
    method: MethodOpt = "dda",
    index: Annotated[
        Path | None, typer.Option(help="Index dir (default: the newest matching one under WORKDIR/features/index).")
    ] = None,
    build: Annotated[bool, typer.Option(help="Build the index first if there is none.")] = False,
    candidates: Annotated[int | None, typer.Option(help=_search_help("candidates"))] = None,
    nprobe: Annotated[int | None, typer.Option(help=_search_help("nprobe"))] = None,
    sketch_dim: SketchDimOpt = None,
    checkpoints: CheckpointsOpt = None,
    out: Annotated[Path | None, typer.Option(help="Output dir (default WORKDIR/search).")] = None,
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
    from .api import Attributor
    from .data import load_queries

    out_dir = out or workdir / "search"
    with _clean_errors(workdir):
        options = {"search.k": k, "search.backend": backend, "search.candidates": candidates}
        options.update({"search.nprobe": nprobe, "search.sketch_dim": sketch_dim})
        cfg = _config(config, set_, quiet, **{"model.name": model, "score.beta": beta, **options})
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


# ------------------------------------------------------------------------------------------------ dda show
@app.command()
def show(
    run_dir: Annotated[Path, typer.Argument(help="`dda attribute` output (or its workdir) or a `dda bench` run.")],
    out: Annotated[Path | None, typer.Option(help="HTML file to write (default RUN_DIR/report.html).")] = None,
    top_k: Annotated[int | None, typer.Option(help="Documents per query and method (default: all stored).")] = None,
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
    from .bench.evidence import explain_bench_run
    from .explain import read_explanations
    from .report_html import collect, locate, render, write_page_text

    with _clean_errors(run_dir):
        kind, run, attr = locate(run_dir)
        if explain and not read_explanations(attr):
            if kind != "bench":
                raise ValueError(f"{attr}: no token attribution; run `dda attribute --explain` (the default)")
            explain_bench_run(run, _split_methods(methods), top_k)
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


if __name__ == "__main__":
    app()
