"""dda's import graph: no runtime circle between its modules, and the core never needs the `bench` extra."""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from pathlib import Path

import tomllib

ROOT = Path(__file__).resolve().parents[1]
SRC = ROOT / "src"
EXTRA = ("matplotlib", "sklearn", "scipy")  # the `bench` extra (scipy comes with scikit-learn)


def _modules(src: Path, package: str) -> dict[str, Path]:
    out = {}
    for path in (src / package).rglob("*.py"):
        parts = list(path.relative_to(src).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        out[".".join(parts)] = path
    return out


def _is_type_checking(node: ast.If) -> bool:
    t = node.test
    return (isinstance(t, ast.Name) and t.id == "TYPE_CHECKING") or (
        isinstance(t, ast.Attribute) and t.attr == "TYPE_CHECKING"
    )


def _imports(tree: ast.AST) -> list[ast.Import | ast.ImportFrom]:
    """Every import that runs at some point (module level, in functions, in classes), `if TYPE_CHECKING:` aside."""
    found: list[ast.Import | ast.ImportFrom] = []

    def visit(node: ast.AST) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.If) and _is_type_checking(child):
                for other in child.orelse:
                    visit_one(other)
            else:
                visit_one(child)

    def visit_one(node: ast.AST) -> None:
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            found.append(node)
        visit(node)

    visit(tree)
    return found


def import_graph(src: Path, package: str) -> dict[str, set[str]]:
    """module -> the package's modules it imports at run time (a `from pkg import sub` names the submodule)."""
    modules = _modules(src, package)
    graph: dict[str, set[str]] = {}
    for name, path in modules.items():
        here = name if path.name == "__init__.py" else name.rpartition(".")[0]
        edges: set[str] = set()
        for node in _imports(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Import):
                edges |= {a.name for a in node.names if a.name in modules}
                continue
            if node.level:
                base = here.split(".")[: len(here.split(".")) - (node.level - 1)]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            for alias in node.names:
                sub = f"{target}.{alias.name}"
                if sub in modules:
                    edges.add(sub)
                elif target in modules:
                    edges.add(target)
        graph[name] = edges - {name}
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components with more than one module (Tarjan), each sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def connect(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph.get(v, ())):
            if w not in index:
                connect(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    sys.setrecursionlimit(max(sys.getrecursionlimit(), 10_000))
    for v in sorted(graph):
        if v not in index:
            connect(v)
    return found


def test_no_runtime_import_circle_between_dda_modules():
    graph = import_graph(SRC, "dda")
    assert len(graph) > 50 and "dda.bench.run_record" in graph["dda.bench.outputs"]
    found = cycles(graph)
    assert not found, "runtime import circles: " + "; ".join(" <-> ".join(c) for c in found)


def test_the_graph_sees_function_level_imports_and_skips_type_checking(tmp_path):
    pkg = tmp_path / "pkg"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    (pkg / "a.py").write_text("from . import b\n")
    (pkg / "b.py").write_text("def f():\n    from .c import g\n    return g\n")
    (pkg / "c.py").write_text("from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from . import a\n")
    graph = import_graph(tmp_path, "pkg")
    assert graph["pkg.b"] == {"pkg.c"} and graph["pkg.c"] == set() and not cycles(graph)
    (pkg / "c.py").write_text("def h():\n    import pkg.a\n")  # a -> b -> c -> a, inside functions
    assert cycles(import_graph(tmp_path, "pkg")) == [["pkg.a", "pkg.b", "pkg.c"]]


def test_core_imports_and_attribute_help_without_the_bench_extra():
    """With matplotlib, scikit-learn and scipy made unimportable, dda's core imports and `dda attribute --help`
    runs; the benchmark's own modules import too (they load the extra only when they compute or draw)."""
    code = f"""
import importlib.abc, json, sys
class Missing(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in {EXTRA!r}:
            raise ModuleNotFoundError(f"No module named {{name!r}}")
        return None
sys.meta_path.insert(0, Missing())
import dda, dda.api, dda.cli, dda.fix, dda.explain, dda.scoring.search, dda.distributed, dda.evaluate
import dda.bench.run_record, dda.bench.tables, dda.bench.report, dda.bench.summary, dda.bench.outputs
import dda.report_html.run_data
from typer.testing import CliRunner
res = CliRunner().invoke(dda.cli.app, ["attribute", "--help"])
loaded = sorted(m for m in sys.modules if m.split(".")[0] in {EXTRA!r})
print(json.dumps({{"code": res.exit_code, "usage": "Usage" in res.stdout, "loaded": loaded}}))
"""
    out = subprocess.run(
        [sys.executable, "-c", code], env={"PYTHONPATH": str(SRC), "PATH": "/usr/bin:/bin"}, capture_output=True,
        text=True, check=True, cwd=ROOT,
    )  # fmt: skip
    assert json.loads(out.stdout.splitlines()[-1]) == {"code": 0, "usage": True, "loaded": []}


def test_bench_extra_is_not_a_core_dependency():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["project"]
    names = lambda reqs: {r.split(">")[0].split("=")[0].split("[")[0].strip() for r in reqs}  # noqa: E731
    assert not names(project["dependencies"]) & {"matplotlib", "scikit-learn", "scipy"}
    extras = project["optional-dependencies"]
    assert names(extras["bench"]) == {"matplotlib", "scikit-learn"}
    assert "dda-attribution[bench]" in extras["dev"]  # the test suite runs the benchmark
