"""Progress on stderr: rich bars with ETA on a terminal; plain lines with rate and ETA at a steady interval
when stderr is a file or pipe (nohup, SLURM, CI); nothing under --quiet, the libraries' bars included."""

from __future__ import annotations

import contextlib
import os
import sys
import time
from collections.abc import Callable, Iterator

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)

# A pipe or CI log is not a terminal: give tables room instead of rich's 80-column default.
console = Console(stderr=True, width=None if sys.stderr.isatty() else 120)
# Results (rankings, tables) go to stdout, so `dda attribute ... > ranking.txt` keeps only them.
results = Console(width=None if sys.stdout.isatty() else 120)
PLAIN_INTERVAL_S = float(os.environ.get("DDA_PROGRESS_INTERVAL", "30"))


def quiet_libraries() -> None:
    """Silence transformers', datasets' and huggingface_hub's own progress bars and info logs."""
    os.environ["HF_HUB_DISABLE_PROGRESS_BARS"] = "1"
    with contextlib.suppress(ImportError):
        import transformers

        transformers.utils.logging.set_verbosity_error()
        transformers.utils.logging.disable_progress_bar()
    with contextlib.suppress(ImportError):
        import datasets

        datasets.disable_progress_bars()
        datasets.utils.logging.set_verbosity_error()


def _duration(seconds: float) -> str:
    seconds = int(seconds)
    if seconds >= 3600:
        return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"
    return f"{seconds // 60}m{seconds % 60:02d}s"


@contextlib.contextmanager
def _plain(description: str, total: int, interval: float) -> Iterator[Callable[[int], None]]:
    start = last = time.monotonic()
    state = {"done": 0, "first": None}

    def line(final: bool = False) -> None:
        done, now = state["done"], time.monotonic()
        # the rate counts only work done in this process: rows found done at a resume are not "speed"
        base = state["first"] or 0
        rate = (done - base) / max(now - start, 1e-9)
        eta = f", eta {_duration((total - done) / rate)}" if rate > 0 and done < total else ""
        pct = f" ({100 * done / total:.0f}%)" if total else ""
        tail = " done" if final else ""
        print(
            f"{description}: {done}/{total}{pct}, {rate:.2f}/s, elapsed {_duration(now - start)}{eta}{tail}",
            file=sys.stderr,
            flush=True,
        )

    def advance(n: int = 1) -> None:
        nonlocal last
        if state["first"] is None:
            state["first"] = n if time.monotonic() - start < 0.5 else 0  # a resume's bulk advance
        state["done"] += n
        if time.monotonic() - last >= interval:
            last = time.monotonic()
            line()

    yield advance
    line(final=True)


@contextlib.contextmanager
def bar(description: str, total: int, quiet: bool = False) -> Iterator[Callable[[int], None]]:
    if quiet:
        yield lambda n=1: None
        return
    if not console.is_terminal:
        with _plain(description, total, PLAIN_INTERVAL_S) as advance:
            yield advance
        return
    with Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TextColumn("eta"),
        TimeRemainingColumn(),
        console=console,
        transient=False,
    ) as prog:
        task = prog.add_task(description, total=total)
        yield lambda n=1: prog.advance(task, n)


def say(message: str, quiet: bool = False) -> None:
    if not quiet:
        console.print(message)
