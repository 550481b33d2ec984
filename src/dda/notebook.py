"""`dda show`'s page inline in a notebook: `dda.Report("runs/x/attribution")` as the last expression of a cell.

The page is a whole HTML document with its own styles and script; pasted into a notebook's output it would
restyle the notebook, so it is embedded as an iframe's `srcdoc`: the same self-contained page, isolated, with
nothing fetched.
"""

from __future__ import annotations

import html
from pathlib import Path
from typing import Any

from .report_html import collect, render, write_page_text


class Report:
    """The report of a `dda attribute` output (or its workdir) or a `dda bench` run, as `dda show` writes it."""

    def __init__(self, run_dir: str | Path, top_k: int | None = None, height: int = 720):
        self.run_dir = Path(run_dir)
        """The run directory the report reads."""
        self.data: dict[str, Any] = collect(self.run_dir, top_k)  # fails here, naming the directory, if unreadable
        """Everything the page shows (queries, documents, scores, explanations), as collected from `run_dir`."""
        self.height = height
        """Height in pixels of the page's frame in a notebook."""

    @property
    def html(self) -> str:
        """The page, byte for byte what `dda show RUN_DIR` writes."""
        return render(self.data)

    def save(self, out: str | Path) -> Path:
        """Write the page to OUT (what `dda show RUN_DIR --out OUT` does)."""
        return write_page_text(out, self.html)

    def __repr__(self) -> str:
        d = self.data
        return (
            f"Report({str(self.run_dir)!r}: {d['kind']}, {len(d['queries'])} queries, {len(d['docs'])} documents, "
            f"methods {', '.join(d['methods'])}; explained: {', '.join(d['explained']) or 'none'})"
        )

    def _repr_html_(self) -> str:
        return (
            f'<iframe srcdoc="{html.escape(self.html, quote=True)}" style="width:100%;height:{self.height}px;'
            f'border:1px solid #ddd" sandbox="allow-scripts"></iframe>'
        )
