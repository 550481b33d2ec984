"""`dda show RUN_DIR --out FILE.html`: one self-contained page a person reads in a browser.

Works on a `dda attribute` output (ranking.json, optionally explain/*.json), on a workdir holding one
(WORKDIR/attribution) and on a `dda bench` run (metrics.json, queries.jsonl, train.jsonl, attribution/). The page
has no external reference at all: styles, script and data are inline, fonts are the system's, the beta curve is
an inline SVG. Only the top-k documents of each query and method are embedded, each document's token texts once
(shared by every query and method that lists it), and contributions as integers relative to the document's
largest one, so a page for 50 queries x 20 documents stays a few MB.

Reading the page: tokens are shaded by their contribution to the document's score (red: toward the negative
output, i.e. the reason the document ranks high; blue: against), relative to the document's largest |contribution|.
"""

from __future__ import annotations

import html
import json
import os
from functools import cache
from importlib.resources import files
from pathlib import Path
from typing import Any

from ..io import write_text
from .run_data import QUANT, RUN_FACTS, SNIPPET_CHARS, RunDirError, _word_diff, collect, locate
from .svg import beta_svg

# the package by job: run_data.py reads a run into the page's data, svg.py draws the β curve, and page.html,
# page.css and page.js (package data) are the page's static parts, filled in here
__all__ = [
    "QUANT",
    "RUN_FACTS",
    "SNIPPET_CHARS",
    "RunDirError",
    "_word_diff",
    "beta_svg",
    "collect",
    "locate",
    "render",
    "write_page",
    "write_page_text",
]


@cache
def _asset(name: str) -> str:
    """A static part of the page, read once from the package (a wheel or zip install has no source tree)."""
    return files(__name__).joinpath(name).read_text(encoding="utf-8")


def render(data: dict[str, Any]) -> str:
    """The page: static head and styles, the data as inline JSON, the script that lays it out."""
    payload = json.dumps(data, ensure_ascii=False, separators=(",", ":"))
    payload = payload.replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026")  # inert in <script>
    return (
        _asset("page.html")
        .replace("__TITLE__", html.escape(data["title"]))
        .replace("__STYLE__", _asset("page.css"))
        .replace("__SCRIPT__", _asset("page.js"))
        .replace("__DATA__", payload)
    )


def write_page(run_dir: str | Path, out: str | Path, top_k: int | None = None) -> Path:
    """Collect RUN_DIR and write the page to OUT (atomically). Returns OUT."""
    return write_page_text(out, render(collect(run_dir, top_k)))


def write_page_text(out: str | Path, page: str) -> Path:
    out = Path(out)
    write_text(out, page)
    os.chmod(out, 0o644)  # a page to open and share (the atomic write's temp file is created 0600)
    return out
