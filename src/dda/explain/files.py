"""The explanation files beside an attribution: OUT_DIR/explain/<query>.json per query and explain/index.json."""

from __future__ import annotations

import hashlib
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from ..io import read_json, write_json

EXPLAIN_DIR = "explain"
ORIENTATION = (
    "contribution > 0: the token pushes the document's score up (toward the negative output, more "
    "responsible); < 0: against. Token contributions sum to the method's score for the document."
)


def _file_name(query_id: str) -> str:
    """A safe, unique file name for a query id (ids such as 'England->China:123:natural' hold ':' and '>')."""
    stem = re.sub(r"[^A-Za-z0-9._-]+", "_", query_id).strip("_")[:80] or "query"
    return f"{stem}-{hashlib.sha256(query_id.encode()).hexdigest()[:8]}.json"


def write_explanations(out_dir: str | Path, explanations: Sequence[dict[str, Any]]) -> Path:
    """OUT_DIR/explain/<query>.json per query (atomic) and explain/index.json listing them."""
    root = Path(out_dir) / EXPLAIN_DIR
    index = {"orientation": ORIENTATION, "queries": []}
    for e in explanations:
        name = _file_name(e["query"]["id"])
        write_json(root / name, e)
        index["queries"].append({"id": e["query"]["id"], "file": name, "methods": list(e["methods"])})
    if explanations:
        index["cost"] = explanations[0]["cost"]
    write_json(root / "index.json", index)
    return root


def read_explanations(out_dir: str | Path) -> list[dict[str, Any]]:
    """The explanations written beside an attribution (in index order); [] when there are none."""
    root = Path(out_dir) / EXPLAIN_DIR
    if not (root / "index.json").exists():
        return []
    index = read_json(root / "index.json")
    out = []
    for item in index.get("queries", []):
        path = root / item["file"]
        if not path.exists():
            raise FileNotFoundError(f"{path}: listed in {root / 'index.json'} but missing")
        out.append(read_json(path))
    return out
