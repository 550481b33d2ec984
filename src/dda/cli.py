"""Command line: thin wrappers over the Python API; every command takes --config FILE and --set key=value.

    dda finetune  --workdir runs/x --data train.jsonl
    dda index     --workdir runs/x                      # theta0 + every epoch checkpoint
    dda attribute --workdir runs/x --queries q.jsonl --methods dda,bm25 --beta 0.4
    dda bench     --preset cpu-small --pairs England:China --seed 0 --out runs/bench
    dda demo
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from .config import DDAConfig, apply_overrides, load_config
from .progress import console

app = typer.Typer(add_completion=False, no_args_is_help=True, rich_markup_mode="markdown",
                  help="Trace a fine-tuned LLM's outputs back to the training documents behind them (DDA).")

ConfigOpt = Annotated[Path | None, typer.Option("--config", "-c", help="YAML config (see `dda config`).")]
SetOpt = Annotated[list[str] | None, typer.Option("--set", help="Override a config key: --set train.epochs=2")]
QuietOpt = Annotated[bool, typer.Option("--quiet", "-q", help="No progress bars or tables.")]
WorkdirOpt = Annotated[Path, typer.Option("--workdir", "-w", help="Run directory (checkpoints, features).")]
ModelOpt = Annotated[str | None, typer.Option("--model", help="Hub id, local dir, .gguf file or builtin:<alias>.")]
DataOpt = Annotated[str | None, typer.Option("--data", help="JSONL/CSV/Parquet file, dataset dir, hub:<name>.")]


def _config(config: Path | None, sets: list[str] | None, quiet: bool, **overrides) -> DDAConfig:
    from .scoring.base import parse_value

    cfg = load_config(config) if config else DDAConfig()
    values = {k: v for k, v in overrides.items() if v is not None}
    for item in sets or []:
        if "=" not in item:
            raise typer.BadParameter(f"--set expects key=value, got '{item}'")
        key, raw = item.split("=", 1)
        values[key.strip()] = parse_value(raw) if "," not in raw else [parse_value(x) for x in raw.split(",")]
    values["quiet"] = quiet or None
    return apply_overrides(cfg, values)


def _fail(err: Exception) -> None:
    console.print(f"[red]error:[/] {err}")
    raise typer.Exit(2)


@app.command()
def finetune(workdir: WorkdirOpt, config: ConfigOpt = None, model: ModelOpt = None, data: DataOpt = None,
             epochs: Annotated[int | None, typer.Option(help="Epochs (one checkpoint each).")] = None,
             lr: Annotated[float | None, typer.Option(help="Learning rate.")] = None,
             method: Annotated[str | None, typer.Option(help="lora or full.")] = None,
             set_: SetOpt = None, quiet: QuietOpt = False) -> None:
    """Fine-tune with a checkpoint per epoch (resumes from the last complete epoch).

    Example: `dda finetune -w runs/x --data train.jsonl --epochs 3 --set data.prompt_field=text`
    """
    from .api import Attributor
    from .data import load_examples

    try:
        cfg = _config(config, set_, quiet, **{"model.name": model, "data.path": data, "train.epochs": epochs,
                                             "train.lr": lr, "train.method": method})
        att = Attributor(cfg, workdir)
        ckpts = att.finetune(load_examples(cfg.data))
    except (ValueError, FileNotFoundError) as err:
        _fail(err)
    if not quiet:
        console.print(f"{len(ckpts)} checkpoints in {workdir}/checkpoints: {', '.join(c.name for c in ckpts)}")


@app.command()
def index(workdir: WorkdirOpt, config: ConfigOpt = None, model: ModelOpt = None, data: DataOpt = None,
          checkpoints: Annotated[Path | None, typer.Option(help="Existing checkpoints (adapters or full "
                                                           "weights) instead of WORKDIR/checkpoints.")] = None,
          projection: Annotated[str | None, typer.Option(help="kronecker, dense or identity.")] = None,
          proj_dim: Annotated[int | None, typer.Option(help="Per side (kronecker) or total (dense).")] = None,
          module_dim: Annotated[int | None, typer.Option(
              help="Kronecker: compress each module's proj_dim^2 sketch to this many dims (0: none).")] = None,
          set_: SetOpt = None, quiet: QuietOpt = False) -> None:
    """Store per-example gradient features of the training set at theta0 and every checkpoint.

    Example: `dda index -w runs/x --checkpoints my_adapters/ --data train.jsonl`
    """
    from .api import Attributor
    from .data import load_examples

    try:
        cfg = _config(config, set_, quiet, **{"model.name": model, "data.path": data,
                                             "features.projection": projection, "features.proj_dim": proj_dim,
                                             "features.module_dim": module_dim})
        att = Attributor(cfg, workdir)
        if checkpoints:
            att.use_checkpoints(checkpoints)
        att.index(load_examples(cfg.data))
    except (ValueError, FileNotFoundError) as err:
        _fail(err)
    s = att.index_stats
    if not quiet:
        rate = f", {s['examples_per_s']:.2f} examples/s, {s['tokens_per_s']:.0f} tokens/s" if "tokens_per_s" in s \
            else " (all reused)"
        console.print(f"indexed {s['n_train']} examples x {len(s['checkpoints'])} checkpoints, dim {s['dim']}{rate}; "
                      f"{s['n_prompt_truncated']} prompts and {s['n_response_truncated']} responses truncated")


@app.command()
def attribute(workdir: WorkdirOpt,
              queries: Annotated[Path, typer.Option(help="JSONL with prompt, negative[, positive] per line.")],
              config: ConfigOpt = None, model: ModelOpt = None,
              methods: Annotated[str | None, typer.Option(help="Comma list, e.g. dda,dda(beta=0.4),bm25")] = None,
              beta: Annotated[float | None, typer.Option(help="DDA debias weight.")] = None,
              top_k: Annotated[int, typer.Option(help="Rows in the printed ranking.")] = 10,
              out: Annotated[Path | None, typer.Option(help="Output dir (default WORKDIR/attribution).")] = None,
              prompt_field: str = "prompt", negative_field: str = "negative", positive_field: str = "positive",
              set_: SetOpt = None, quiet: QuietOpt = False,
              # issue 15: token-level attribution of the printed top k (OUT/explain/*.json, read by `dda show`)
              explain: Annotated[bool, typer.Option(
                  "--explain/--no-explain", help="Split the top-k scores over the documents' tokens (re-runs the "
                  "top-k documents at each checkpoint; files in OUT/explain/, shown by `dda show`).")] = True,
              explain_methods: Annotated[str | None, typer.Option(
                  help="Methods to explain (default: the first gradient method of --methods).")] = None) -> None:
    """Rank training documents by responsibility for each query's negative output (higher = more responsible).

    Example: `dda attribute -w runs/x --queries q.jsonl --methods dda,tracin,bm25 --top-k 20`, then
    `dda show runs/x --out report.html`
    """
    from .api import Attributor
    from .data import load_queries
    from .demo import print_ranking

    try:
        cfg = _config(config, set_, quiet, **{"model.name": model, "score.beta": beta, "score.top_k": top_k})
        qs = load_queries(str(queries), prompt_field, negative_field, positive_field)
        att = Attributor(cfg, workdir)
        method_list = _split_methods(methods) if methods else None
        result = att.attribute(qs, method_list, out_dir=out or workdir / "attribution")
        explanations = _explain_attribution(att, result, explain, explain_methods, top_k,
                                            out or workdir / "attribution")
    except (ValueError, FileNotFoundError) as err:
        _fail(err)
    if not quiet:
        shown = next(iter(explanations[0]["methods"])) if explanations else next(iter(result.scores))
        print_ranking(result, shown, top_k, explanations)
        console.print(f"scores of {len(result.scores)} methods in {out or workdir / 'attribution'}")
        if explanations:
            console.print(f"token attribution in {out or workdir / 'attribution'}/explain; "
                          f"page: dda show {out or workdir / 'attribution'} --out report.html")


def _explain_attribution(att, result, enabled: bool, methods: str | None, top_k: int, out: Path) -> list[dict]:
    """issue 15: explanations for `dda attribute` (none when disabled or no requested method is a gradient one)."""
    from .explain import explainable

    if not enabled:
        return []
    wanted = _split_methods(methods) if methods else [m for m in result.scores if explainable(m)][:1]
    return att.explain(result, methods=wanted, top_k=top_k, out_dir=out) if wanted else []


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


@app.command()
def bench(preset: Annotated[str, typer.Option(help="cpu-tiny, cpu-small or gpu-paper.")] = "cpu-small",
          pairs: Annotated[str, typer.Option(help="ORIG:CANARY[,ORIG:CANARY...]")] = "England:China",
          seed: int = 0, out: Annotated[Path, typer.Option(help="Output dir.")] = Path("runs/bench"),
          seeds: Annotated[str | None, typer.Option(
              help="Comma list of seeds: each runs into OUT/seed-N, then OUT/summary.md combines them.")] = None,
          model: ModelOpt = None,
          data: Annotated[list[str] | None, typer.Option(help="Data source(s); repeatable.")] = None,
          methods: Annotated[str | None, typer.Option(help="Comma list of methods.")] = None,
          set_: SetOpt = None, quiet: QuietOpt = False) -> None:
    """Hallucination-tracing benchmark (XSum canaries, CEA protocol): every method, ablation and beta.

    Example: `dda bench --preset cpu-small --pairs England:China --seed 0 --out runs/bench`
    """
    from .bench.hallucination import run_bench
    from .bench.summary import summarize_runs
    from .scoring.base import parse_value

    overrides = {}
    for item in set_ or []:
        key, _, raw = item.partition("=")
        overrides[key.strip()] = parse_value(raw)
    try:
        seed_list = [int(x) for x in seeds.split(",") if x.strip()] if seeds else [seed]
    except ValueError:
        _fail(ValueError(f"--seeds '{seeds}': expected a comma list of integers"))
    dirs = [out / f"seed-{s}" for s in seed_list] if seeds else [out]
    try:
        for s, run_dir in zip(seed_list, dirs, strict=True):
            metrics = run_bench(preset, pairs=pairs, seed=s, out=run_dir, model=model, data=data,
                                methods=_split_methods(methods) if methods else None, quiet=quiet,
                                overrides=overrides or None)
            _print_bench(preset, metrics, run_dir, quiet)
        if seeds:
            summarize_runs(dirs, out)
            console.print(f"summary over seeds {seed_list}: {out}/summary.md")
    except (ValueError, FileNotFoundError) as err:
        _fail(err)


@app.command("bench-summary")
def bench_summary(runs: Annotated[list[Path], typer.Argument(help="Run directories of `dda bench`.")],
                  out: Annotated[Path, typer.Option(help="Where summary.md/json go.")] = Path("runs/summary")) -> None:
    """Combine benchmark runs (seeds, pairs, models): mean and spread of every method, mean β curves, checks."""
    from .bench.summary import summarize_runs

    try:
        summary = summarize_runs(runs, out)
    except (ValueError, FileNotFoundError) as err:
        _fail(err)
    for name, m in sorted(summary["methods"].items(), key=lambda kv: -kv[1]["auc"]):
        console.print(f"{name:32s} AUC {m['auc']:.3f} ± {m['auc_std_over_runs']:.3f}")
    console.print(f"summary: {out}/summary.md")


def _print_bench(preset: str, metrics: dict, out: Path, quiet: bool) -> None:
    if not quiet:
        from rich.table import Table

        tab = Table(title=f"{preset}: {metrics['n_queries']} queries ({metrics['query_mode']}), "
                          f"{metrics['n_poisoned']}/{metrics['n_train']} poisoned")
        for col in ("method", "AUC", "AP", "R@10"):
            tab.add_column(col)
        for name, m in sorted(metrics["methods"].items(), key=lambda kv: -kv[1]["auc"]):
            tab.add_row(name, f"{m['auc']:.3f}", f"{m['ap']:.3f}", f"{m['recall@10']:.3f}")
        console.print(tab)
        console.print(f"report: {out}/report.md")


@app.command()
def demo(workdir: Annotated[Path, typer.Option("--workdir", "-w")] = Path("runs/demo"),
         quiet: QuietOpt = False) -> None:
    """Fine-tune SmolLM2 on XSum with poisoned summaries, index, attribute; poisoned documents are marked."""
    from .demo import run_demo

    run_demo(workdir, quiet=quiet)


@app.command("config")
def show_config(config: ConfigOpt = None, set_: SetOpt = None) -> None:
    """Print the full config (defaults, or FILE with --set overrides) as YAML, ready to edit."""
    import yaml

    cfg = _config(config, set_, False)
    typer.echo(yaml.safe_dump(cfg.to_dict(), sort_keys=False))


# ------------------------------------------------------------------------------- issue 15: `dda show`
@app.command()
def show(run_dir: Annotated[Path, typer.Argument(help="`dda attribute` output (or its workdir) or a `dda bench` run.")],
         out: Annotated[Path | None, typer.Option(help="HTML file to write (default RUN_DIR/report.html).")] = None,
         top_k: Annotated[int | None, typer.Option(help="Documents per query and method (default: all stored).")]
         = None,
         explain: Annotated[bool, typer.Option(
             "--explain/--no-explain", help="A bench run without token attribution: compute it first (loads the "
             "model; re-runs each query's top-k documents at every checkpoint).")] = False,
         methods: Annotated[str, typer.Option(help="Methods to explain with --explain.")] = "dda",
         quiet: QuietOpt = False) -> None:
    """One self-contained HTML page (no network, opens from disk): every query with its outputs, each method's
    top documents with their tokens shaded by contribution, method agreement; a bench run adds Tables 1/2 and β.

    Example: `dda show runs/x/attribution --out report.html`; `dda show runs/bench --explain`
    """
    from .explain import explain_bench_run, read_explanations
    from .report_html import collect, locate, render, write_page_text

    try:
        kind, run, attr = locate(run_dir)
        if explain and not read_explanations(attr):
            if kind != "bench":
                raise ValueError(f"{attr}: no token attribution; run `dda attribute --explain` (the default)")
            explain_bench_run(run, _split_methods(methods), top_k or 10)
        data = collect(run_dir, top_k)
        target = out or run / "report.html"
        page = render(data)
        write_page_text(target, page)
    except (ValueError, FileNotFoundError) as err:
        _fail(err)
    if not quiet:
        canary = (data.get("bench") or {}).get("canary")
        if canary:
            c = canary["all"]
            console.print(f"largest token contribution of poisoned documents in {c['method']}'s top {c['k']}: on the "
                          f"canary word in {c['on_canary']}/{c['poisoned_docs']}")
        console.print(f"{len(data['queries'])} queries, {len(data['docs'])} documents, "
                      f"{len(page.encode()) / 1e6:.2f} MB")
    console.print(f"report: {target}")


if __name__ == "__main__":
    app()
