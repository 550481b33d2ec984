"""Progress bars with ETA (rich) that disappear under --quiet."""

from __future__ import annotations

import contextlib
import sys
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


@contextlib.contextmanager
def bar(description: str, total: int, quiet: bool = False) -> Iterator[Callable[[int], None]]:
    if quiet:
        yield lambda n=1: None
        return
    with Progress(TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
                  TimeElapsedColumn(), TextColumn("eta"), TimeRemainingColumn(), console=console,
                  transient=False) as prog:
        task = prog.add_task(description, total=total)
        yield lambda n=1: prog.advance(task, n)


def say(message: str, quiet: bool = False) -> None:
    if not quiet:
        console.print(message)
