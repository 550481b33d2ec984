"""What every command shares: the option types, reading the config (file, options, --set) and turning
expected failures into one message and exit status 2."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path
from typing import Annotated

import typer

from ..config import DDAConfig, apply_overrides, load_config, parse_set_options
from ..progress import console, quiet_libraries

ConfigOpt = Annotated[Path | None, typer.Option("--config", "-c", help="YAML config (see `dda config`).")]
SetOpt = Annotated[list[str] | None, typer.Option("--set", help="Override a config key: --set train.epochs=2")]
QuietOpt = Annotated[bool, typer.Option("--quiet", "-q", help="No progress bars, notes or tables.")]
WorkdirOpt = Annotated[Path, typer.Option("--workdir", "-w", help="Run directory (checkpoints, features).")]
ModelOpt = Annotated[
    str | None,
    typer.Option(
        "--model",
        help="Hub id (org/name), local dir, .gguf file or builtin:NAME.",
    ),
]
DataOpt = Annotated[str | None, typer.Option("--data", help="JSONL/CSV/Parquet file, dataset dir, hub:NAME.")]
BETA_HELP = (
    "DDA debias weight: score = mean over checkpoints - beta x theta0 score. beta < 0 ADDS the theta0 "
    "score (default -1, measured best here); the paper subtracts it (beta ~ 0.4)."
)


def build_config(config: Path | None, sets: list[str] | None, quiet: bool, **overrides) -> DDAConfig:
    """File, then the command's options, then --set: each value checked against its field's type and range."""
    cfg = load_config(config) if config else DDAConfig()
    cfg = apply_overrides(cfg, {k: v for k, v in overrides.items() if v is not None}, "command-line option")
    cfg = apply_overrides(cfg, parse_set_options(sets), "--set")
    if quiet:
        quiet_libraries()
        cfg = apply_overrides(cfg, {"quiet": True})
    return cfg


@contextlib.contextmanager
def clean_errors(where: Path | None = None) -> Iterator[None]:
    """Expected failures (bad input, refused settings, a full disk) end with one message and exit status 2."""
    from ..workdir import disk_full_message

    try:
        yield
    except (ValueError, FileNotFoundError) as err:
        print_error(str(err))
        raise typer.Exit(2) from None
    except ImportError as err:
        print_error(f"{err}: an optional dependency is missing (faiss: pip install 'dda-attribution[faiss]')")
        raise typer.Exit(2) from None
    except OSError as err:
        message = disk_full_message(err, where or Path.cwd())
        if message is None:
            raise
        print_error(f"{err.strerror}" + (f": {err.filename}" if err.filename else "") + f"\n{message}")
        raise typer.Exit(2) from None


def print_error(text: str) -> None:
    from rich.text import Text

    console.print(Text.assemble(("error: ", "red"), text), soft_wrap=True)  # paths stay whole for copy-paste


def split_methods(text: str) -> list[str]:
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
