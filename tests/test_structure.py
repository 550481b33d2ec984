"""Size limits of the source tree: a module does one job (at most 600 lines), a function one step (at most 100).

Counted from the source text (no import), so this runs in milliseconds and names every offender at once.
"""

from __future__ import annotations

import ast
from pathlib import Path

SRC = Path(__file__).resolve().parents[1] / "src" / "dda"
MAX_MODULE_LINES = 600
MAX_FUNCTION_LINES = 100


def _modules() -> list[Path]:
    return sorted(SRC.rglob("*.py"))


def test_the_tree_is_found() -> None:
    assert len(_modules()) > 20, f"no package under {SRC}"


def test_no_module_is_over_the_line_limit() -> None:
    too_long = []
    for path in _modules():
        n = len(path.read_text(encoding="utf-8").splitlines())
        if n > MAX_MODULE_LINES:
            too_long.append(f"{path.relative_to(SRC.parent)}: {n} lines")
    assert not too_long, f"modules over {MAX_MODULE_LINES} lines (split them by job):\n" + "\n".join(too_long)


def test_no_function_is_over_the_line_limit() -> None:
    too_long = []
    for path in _modules():
        tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
        for node in ast.walk(tree):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                n = node.end_lineno - node.lineno + 1  # decorators aside: the def line to the last line of the body
                if n > MAX_FUNCTION_LINES:
                    too_long.append(f"{path.relative_to(SRC.parent)}:{node.lineno} {node.name}: {n} lines")
    assert not too_long, f"functions over {MAX_FUNCTION_LINES} lines (split them into steps):\n" + "\n".join(too_long)
