"""What a user reads before running anything: `--help` as rendered (placeholders kept, every default shown), a
wrong workdir path named as such, and `dda config` refusing a method name the registry does not know."""

from __future__ import annotations

import re

import pytest
import typer.main
from typer.testing import CliRunner

from dda.cli import app

COMMANDS = typer.main.get_command(app).commands  # type: ignore[attr-defined]


def _help(*args: str) -> str:
    # wide enough that rich does not wrap an option's row mid-word
    res = CliRunner().invoke(app, [*args, "--help"], env={"COLUMNS": "300", "NO_COLOR": "1"})
    assert res.exit_code == 0, res.output
    return res.stdout


@pytest.mark.parametrize("name", ["", *COMMANDS])
def test_every_option_shows_its_default(name):
    out = _help(name) if name else _help()
    command = COMMANDS[name] if name else typer.main.get_command(app)
    options = [p for p in command.params if p.param_type_name == "option" and p.name != "help"]
    lines = out.splitlines()
    # an option's row in the Options panel starts with its name (after the border and a required mark)
    rows = {p.opts[0]: next((i for i, ln in enumerate(lines) if _row_of(ln) == p.opts[0]), None) for p in options}
    missing = [o for o, r in rows.items() if r is None]
    assert not missing, f"options missing from `dda {name} --help`: {missing}"
    # each option's entry (its row and the lines up to the next row or the panel's end) says its default
    ends = sorted([*rows.values(), *(i for i, ln in enumerate(lines) if ln.startswith(("╰", "+-")))])
    for opt, start in rows.items():
        block = "\n".join(lines[start : next(e for e in ends if e > start)])
        assert "[default: " in block or "[required]" in block, f"dda {name} {opt}: no default shown in\n{block}"


def _row_of(line: str) -> str | None:
    m = re.match(r"^[│|]\s+(?:\*\s+)?(--[\w-]+)\s", line)
    return m.group(1) if m else None


def test_placeholders_survive_the_help_markup():
    assert "WORKDIR/fix/{method}-k{k}" in _help("fix")
    assert "WORKDIR/features/index/{backend}-{key}" in _help("build-index")
    assert "[default: (score.beta = " in _help("attribute")
    assert "[default: (off)]" in _help("index")  # --quiet


def test_no_angle_bracket_placeholder_reaches_markdown():
    """Help texts are rendered as Markdown (typer's rich_markup_mode) and so is the CLI reference page: an
    `<name>` there is an HTML tag, and disappears."""
    tag = re.compile(r"<[A-Za-z][\w-]*>")
    for name, cmd in COMMANDS.items():
        texts = [cmd.help or ""] + [getattr(p, "help", None) or "" for p in cmd.params]
        texts += [p.show_default for p in cmd.params if isinstance(getattr(p, "show_default", None), str)]
        for text in texts:
            assert not tag.search(re.sub(r"`[^`]*`", "", text)), f"dda {name}: {text!r}"


def _run(*args: str) -> tuple[int, str]:
    res = CliRunner().invoke(app, [str(a) for a in args])
    return res.exit_code, res.stdout + res.stderr


@pytest.mark.parametrize("command", ["attribute", "fix", "search"])
def test_a_wrong_workdir_path_says_so(command, tmp_path):
    queries = tmp_path / "q.jsonl"
    queries.write_text('{"id": "q0", "prompt": "a", "negative": "b", "positive": "c"}\n')
    wrong = tmp_path / "runs" / "typo"
    code, out = _run(command, "-w", wrong, "--queries", queries, "-q")
    assert code == 2
    assert f"{wrong}: no such directory" in " ".join(out.split()) and "dda index` first" not in out
    assert not wrong.exists()  # nothing created at the wrong path


@pytest.mark.parametrize("args", [["build-index", "-w"], ["show"]])
def test_build_index_and_show_on_a_wrong_path_say_so(args, tmp_path):
    code, out = _run(*args, tmp_path / "typo")
    assert code == 2 and f"{tmp_path / 'typo'}: no such directory" in " ".join(out.split())


def test_config_checks_method_names_against_the_registry():
    from dda.scoring import REGISTRY

    code, out = _run("config", "--set", "score.methods=dda,tracn")
    assert code == 2
    text = " ".join(out.split())
    assert "score.methods: unknown method 'tracn'" in text
    assert all(name in text for name in REGISTRY)  # the known methods are listed
    code, out = _run("config", "--set", "score.methods=dda(beta=0.2),tracin")
    assert code == 0 and "tracin" in out
    code, out = _run("config", "--set", "score.methods=dda(betta=0.2)")
    assert code == 2 and "unknown parameters ['betta']" in out
