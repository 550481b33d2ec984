"""The method registry is the one source of method facts: names, ablations, query information, help lines."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from dda.bench import report, summary
from dda.cli import app
from dda.config import ScoreConfig
from dda.fix import average_ranks
from dda.scoring import base
from dda.scoring.base import (
    PRESETS,
    REGISTRY,
    ablations,
    foldable_methods,
    method_names,
    query_information,
    register,
    score_defaults,
)
from dda.scoring.search import plan_fold

SRC = Path(__file__).resolve().parents[1] / "src"


def _help_text(*args: str) -> str:
    """A command's --help as one line of words (rich's box and wrapping removed)."""
    res = CliRunner().invoke(app, [*args, "--help"], env={"COLUMNS": "100"})
    assert res.exit_code == 0, res.output
    return " ".join(re.sub(r"[│╭╮╰╯─]", " ", res.stdout).split())


def test_attribute_help_names_every_registered_method():
    text = _help_text("attribute")
    names = method_names()
    assert set(names) == set(REGISTRY) | set(PRESETS)
    missing = [n for n in names if not re.search(rf"(?<![\w(]){re.escape(n)}: ", text)]
    assert not missing, f"`dda attribute --help` does not name {missing}"
    for name, scorer in REGISTRY.items():
        assert scorer.help.rstrip(".") in text, name


def test_search_help_names_the_foldable_methods():
    text = _help_text("search")
    assert foldable_methods() == ["dda", "grad_dot", "grad_cos", "tracin"]
    assert all(m in text for m in foldable_methods())


def test_foldable_is_what_the_fold_accepts():
    from dda.models import Checkpoint

    cks = [Checkpoint("base", "base", None), Checkpoint("epoch-1", "lora", "x"), Checkpoint("epoch-2", "lora", "y")]
    for name in REGISTRY:
        if name in foldable_methods():
            assert plan_fold(name, cks, has_blocks=True).layout
        else:
            with pytest.raises(ValueError, match="cannot be folded"):
                plan_fold(name, cks, has_blocks=True)


def _hand_written_information(spec: str, query_tokens: str) -> str:
    """The report's query information as it was written by name before the registry held it (10ceeb8)."""
    _, name, params = base.parse_method(spec)
    if name == "keyword" or (name == "bm25" and params.get("query") == "diff"):
        return "differing words"
    if name == "bm25":
        return "whole negative output"
    if name == "cea":
        return "whole negative and positive outputs" + ("" if params.get("per_query") else ", all queries at once")
    if name == "dda" and params.get("contrastive", True):
        return "differing tokens, negative − positive" if query_tokens == "diff" else "negative − positive"
    if params.get("query_tokens") == "diff":
        return "negative's differing tokens"
    return "whole negative output"


BUILTIN = [
    "dda", "dda_no_denoise", "dda_no_debias", "dda_no_contrast", "grad_dot", "grad_dot_diff", "grad_cos",
    "tracin", "tracin_diff", "trak", "keyword", "bm25", "bm25_diff", "cea",
]  # fmt: skip


@pytest.mark.parametrize("query_tokens", ["diff", "all"])
@pytest.mark.parametrize(
    "spec",
    [*BUILTIN, "cea(per_query=true)", "dda(contrastive=false)", "bm25(query=diff)", "grad_dot(query_tokens=diff)"],
)
def test_query_information_reads_as_before(spec, query_tokens):
    assert query_information(spec, query_tokens) == _hand_written_information(spec, query_tokens)
    assert report.query_information is query_information


def test_ablations_are_defined_once():
    assert ablations() == ["dda_no_denoise", "dda_no_debias", "dda_no_contrast"]
    assert ("dda", *ablations()) == report.ABLATIONS
    assert tuple(ablations()) == summary.ABLATIONS
    assert all(PRESETS[a].scorer == "dda" and PRESETS[a].ablation for a in ablations())
    assert not any(PRESETS[p].ablation for p in ("bm25_diff", "tracin_diff", "grad_dot_diff"))


def test_score_defaults_are_scorer_parameters():
    defaults = score_defaults(ScoreConfig(beta=0.3))
    accepted = set().union(*(s.params for s in REGISTRY.values()))
    assert defaults and set(defaults) <= accepted, set(defaults) - accepted
    assert defaults["beta"] == 0.3
    assert not {"methods", "checkpoints", "top_k", "pool"} & set(defaults)


def test_plain_registration_gets_docstring_help_and_default_information():
    """A scorer registered with `register(name, needs=...)` alone (as before the registry held its facts)."""

    def fresh(ctx, query_tokens: str = "all") -> np.ndarray:
        """Fresh scorer: ranks by nothing in particular. More words here."""
        return np.zeros((len(ctx.queries), len(ctx.train_texts)))

    try:
        register("fresh_test_scorer", needs=("text",), fresh_test_diff={"query_tokens": "diff"})(fresh)
        assert REGISTRY["fresh_test_scorer"].help == "Fresh scorer: ranks by nothing in particular."
        assert query_information("fresh_test_scorer", "diff") == "whole negative output"
        assert query_information("fresh_test_diff", "all") == "negative's differing tokens"
        assert method_names()[-2:] == ["fresh_test_scorer", "fresh_test_diff"]
        assert "fresh_test_diff" not in ablations()
    finally:
        REGISTRY.pop("fresh_test_scorer", None)
        PRESETS.pop("fresh_test_diff", None)


@pytest.mark.slow
def test_a_plugin_scorer_is_in_attribute_help(tmp_path):
    (tmp_path / "my_scorer_plugin.py").write_text(
        "import numpy as np\nfrom dda.scoring.base import register\n\n"
        "@register('my_plugin_method', needs=('text',), information='the prompt alone')\n"
        "def my_plugin_method(ctx):\n    '''Plugin rule: counts nothing.'''\n"
        "    return np.zeros((len(ctx.queries), len(ctx.train_texts)))\n"
    )
    env = {**os.environ, "PYTHONPATH": f"{SRC}{os.pathsep}{tmp_path}", "DDA_PLUGINS": "my_scorer_plugin"}
    env["COLUMNS"] = "100"
    out = subprocess.run(
        [sys.executable, "-m", "dda", "attribute", "--help"], env=env, capture_output=True, text=True, check=True
    ).stdout
    assert "my_plugin_method: Plugin rule: counts nothing" in " ".join(re.sub(r"[│╭╮╰╯─]", " ", out).split())


def test_average_ranks_match_scipy():
    from scipy.stats import rankdata

    rng = np.random.default_rng(0)
    for _ in range(50):
        x = rng.integers(0, 6, size=int(rng.integers(1, 40))).astype(float)
        assert np.array_equal(average_ranks(x), rankdata(x, method="average"))
