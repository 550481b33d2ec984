"""Every entry of the Python API reference (docs/reference/api.md) has a description: each `::: object` and, for
a class, each public member mkdocstrings lists under it, read with griffe as the docs build reads them."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

griffe = pytest.importorskip("griffe", reason="griffe comes with the docs extra (mkdocstrings)")

ROOT = Path(__file__).resolve().parents[1]
# members: false in api.md (the fields are documented in the configuration reference)
NO_MEMBERS = {"dda.config.DDAConfig"}


def _entries() -> list[tuple[str, str]]:
    loader = griffe.GriffeLoader(search_paths=[str(ROOT / "src")])
    package = loader.load("dda")
    loader.resolve_aliases(external=False, implicit=False)
    names = re.findall(r"^::: (\S+)", (ROOT / "docs" / "reference" / "api.md").read_text(encoding="utf-8"), re.M)
    assert len(names) > 20, "api.md lists fewer entries than it did: is the page still read right?"
    out = []
    for name in names:
        obj = package[name.removeprefix("dda.")]
        members = [obj]
        if obj.is_class and name not in NO_MEMBERS:
            members += [m for key, m in obj.members.items() if not key.startswith("_")]
        out += [(m.path, (m.docstring.value if m.docstring else "").strip()) for m in members]
    return out


ENTRIES = _entries()


@pytest.mark.parametrize(
    "path,doc",
    ENTRIES,
    ids=[p for p, _ in ENTRIES],
)
def test_api_reference_entry_has_a_description(path, doc):
    assert doc, f"{path}: no docstring, so the API reference shows it without a description"
    assert len(doc.split()) >= 3, f"{path}: {doc!r} says too little"
    # docstrings render as Markdown: an <name> placeholder outside backticks is an HTML tag, and vanishes
    assert not re.search(r"<[A-Za-z][\w-]*>", re.sub(r"`[^`]*`", "", doc)), f"{path}: {doc!r}"
