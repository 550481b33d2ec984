"""Command line: thin wrappers over the Python API; every command takes --config FILE and --set key=value.

    dda data      --data train.jsonl --model ./my-model     # the rows as the model sees them
    dda finetune  --workdir runs/x --data train.jsonl
    dda index     --workdir runs/x                      # theta0 + every epoch checkpoint
    dda attribute --workdir runs/x --queries q.jsonl --methods dda,bm25 --beta 0.4
    dda bench     --preset cpu-small --pairs England:China --seed 0 --out runs/bench
    dda demo

Results go to stdout; progress, notes and errors to stderr. Bad input exits with status 2 and one message.
"""

from __future__ import annotations

from typing import Annotated

import typer

from .. import __version__
from ..plugins import PluginError, load_plugins

# Plugins register before the command modules build their options, so a plugin's backend or projection is a
# choice in `--help` and in the config; a broken plugin is reported when a command runs, not at import.
try:
    load_plugins()
    _PLUGIN_ERROR: PluginError | None = None
except PluginError as err:
    _PLUGIN_ERROR = err

from . import benchmark, pipeline, rows, search, show  # noqa: E402
from .common import print_error  # noqa: E402
from .defaults import DefaultsGroup  # noqa: E402

app = typer.Typer(
    cls=DefaultsGroup,
    add_completion=False,
    no_args_is_help=True,
    rich_markup_mode="markdown",
    help="Trace a fine-tuned LLM's outputs back to the training documents behind them (DDA).",
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
    if _PLUGIN_ERROR is not None:
        print_error(str(_PLUGIN_ERROR))
        raise typer.Exit(2)


# The commands live in modules by job (pipeline, benchmark, search, show); registered here, in the order
# `dda --help` and the generated CLI reference list them.
app.command("data")(rows.data)
app.command()(pipeline.finetune)
app.command()(pipeline.index)
app.command()(pipeline.attribute)
app.command()(pipeline.fix)
app.command()(benchmark.bench)
app.command("bench-summary")(benchmark.bench_summary)
app.command()(benchmark.demo)
app.command("config")(show.show_config)
app.command("build-index")(search.build_index_command)
app.command()(search.search)
app.command()(show.show)

__all__ = ["app", "main"]
