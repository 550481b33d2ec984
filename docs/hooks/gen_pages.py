"""Pages generated from the code and the committed results at every `mkdocs build`, so they cannot drift.

* reference/configuration.md: every setting of the config tree (dda.config.flat_fields) by dotted key, with its
  type, default, range and documentation, and the YAML `dda config` prints;
* reference/cli.md: every command and option of the typer app `dda.cli:app`;
* benchmarks/results.md: whatever `results/*/metrics.json` exist at build time (or a line saying none do);
* benchmarks/method.md: benchmarks/README.md, the benchmark scripts' own documentation;
* changelog.md: CHANGELOG.md.

The render_* functions are plain Python (tests/test_docs.py calls them); `on_files` is the MkDocs hook.
"""

from __future__ import annotations

import dataclasses
import json
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT / "src") not in sys.path:
    sys.path.insert(0, str(ROOT / "src"))  # document this checkout's code, not whichever dda is installed


def _cell(text: Any) -> str:
    """A Markdown table cell: pipes escaped, newlines joined."""
    return " ".join(str(text).split()).replace("|", "\\|")


def _code(value: Any) -> str:
    text = json.dumps(value, ensure_ascii=False) if not isinstance(value, str) else repr(value)
    if len(text) > 60:
        text = text[:57] + "…"
    return "`" + text.replace("|", "\\|").replace("`", "'") + "`"


# --------------------------------------------------------------------------------------------- configuration


def _default(f: dataclasses.Field) -> Any:
    if f.default is not dataclasses.MISSING:
        return f.default
    return f.default_factory()  # type: ignore[misc]


def _range(f: dataclasses.Field) -> str:
    ge, gt = f.metadata.get("ge"), f.metadata.get("gt")
    return f"≥ {ge:g}" if ge is not None else f"> {gt:g}" if gt is not None else ""


def render_config_reference() -> str:
    from dda.config import DDAConfig, _type_name, documented_yaml, field_docs, flat_fields

    fields = flat_fields()
    sections = field_docs(DDAConfig)
    out = [
        "# Configuration reference",
        "",
        "Generated from `src/dda/config.py` when the site is built. Every setting is a dotted key: in a YAML file "
        "(`--config FILE`), on the command line (`--set key=value`), or in Python "
        '(`apply_overrides(DDAConfig(), {"key": value})`). Values are parsed by the field\'s type and checked '
        "against its range before any model loads.",
        "",
    ]
    groups: dict[str, list[str]] = {}
    for key in fields:
        groups.setdefault(key.split(".")[0] if "." in key else "", []).append(key)
    for group, keys in groups.items():
        out += [f"## `{group}`" if group else "## Top level", ""]
        if group and sections.get(group):
            out += [sections[group], ""]
        out += ["| key | type | default | range | description |", "|---|---|---|---|---|"]
        for key in keys:
            tp, f, doc = fields[key]
            out.append(f"| `{key}` | {_cell(_type_name(tp))} | {_code(_default(f))} | {_range(f)} | {_cell(doc)} |")
        out.append("")
    out += [
        "## What `dda config` prints",
        "",
        "The defaults as YAML, each setting documented above it; `dda config --config FILE --set key=value` prints "
        "a file with overrides applied. The same file is written as `config.yaml` beside every output.",
        "",
        "```yaml",
        documented_yaml(DDAConfig()).rstrip("\n"),
        "```",
        "",
    ]
    return "\n".join(out)


# ------------------------------------------------------------------------------------------------------- CLI


def cli_commands() -> dict[str, Any]:
    """{command name: click command} of the typer app, in the order `dda --help` lists them."""
    import typer.main

    from dda.cli import app

    group = typer.main.get_command(app)
    return dict(group.commands)  # type: ignore[attr-defined]


def _param_row(p: Any) -> str:
    # typer (0.29) carries its own click: parameters are read by attribute, not by click's classes
    if p.param_type_name == "argument":
        names = f"`{p.name.upper()}` (argument)"
    else:
        names = ", ".join(f"`{o}`" for o in [*p.opts, *p.secondary_opts])
    kind = "flag" if getattr(p, "is_flag", False) else p.bare_type()
    if getattr(p, "multiple", False):
        kind += ", repeatable"
    if p.required:
        default = "required"
    elif isinstance(getattr(p, "show_default", None), str):  # where a None default comes from (dda.cli.defaults)
        default = _cell(p.show_default)
    elif getattr(p, "is_flag", False):
        default = "on" if p.default else "off"
    else:
        default = "" if p.default in (None, ()) else _code(_plain(p.default))
    return f"| {names} | {_cell(kind)} | {default} | {_cell(getattr(p, 'help', None) or '')} |"


def _plain(value: Any) -> Any:
    return str(value) if isinstance(value, Path) else value


def render_cli_reference() -> str:
    import typer.main

    from dda.cli import app

    group = typer.main.get_command(app)
    out = [
        "# CLI reference",
        "",
        "Generated from the typer app `dda.cli:app` when the site is built; `dda COMMAND --help` prints the same. "
        "Results go to stdout; progress, notes and errors to stderr; bad input exits with status 2 "
        "([Bad input](../bad-input.md)). The command is installed as `dda` and, identically, as "
        "`dda-attribution` ([Install](../install.md)).",
        "",
        "```text",
        "dda [--version] COMMAND [OPTIONS]",
        "```",
        "",
        "| command | what it does |",
        "|---|---|",
    ]
    commands = cli_commands()
    for name, cmd in commands.items():
        out.append(f"| [`dda {name}`](#dda-{name}) | {_cell(cmd.get_short_help_str(limit=200))} |")
    out.append("")
    for name, cmd in commands.items():
        out += [f"## `dda {name}` {{#dda-{name}}}", "", (cmd.help or "").strip(), ""]
        params = [p for p in cmd.params if p.name != "help"]
        if params:
            out += ["| option | type | default | description |", "|---|---|---|---|"]
            out += [_param_row(p) for p in params]
            out.append("")
    top = [p for p in group.params if p.name not in ("help",)]
    if top:
        out += ["## Options of `dda` itself", "", "| option | type | default | description |", "|---|---|---|---|"]
        out += [_param_row(p) for p in top]
        out.append("")
    return "\n".join(out)


# ------------------------------------------------------------------------------------------------ benchmarks

FACTS = ("preset", "seed", "pairs", "model", "n_train", "n_poisoned", "n_queries", "query_mode")


def _pct(x: Any) -> str:
    return f"{100 * x:.1f}" if isinstance(x, (int, float)) else "–"


def render_results(root: Path = ROOT) -> str:
    """Every results/<run>/metrics.json (the shape dda.bench.hallucination.write_outputs writes)."""
    runs = sorted((root / "results").glob("*/metrics.json"))
    out = [
        "# Benchmark results",
        "",
        "Generated when the site is built from the result files committed under `results/` (one directory per run, "
        "each with the `metrics.json` that `dda bench` writes). Nothing on this page is typed by hand: a number is "
        "here only if a committed file holds it. Percentages, means over the run's queries, methods by average "
        "precision (AP); distractor AUC ranks the poisoned documents against the clean ones that say the canary "
        "word legitimately (50 = chance, what word matching scores); AUC against every clean document. *Pooled*: one "
        "ranking per pair by the mean of its queries' scores, the information `cea` gets (it takes its optimiser "
        "steps on all queries at once); compare it with the others there.",
        "",
    ]
    if not runs:
        out += [
            '!!! note "No results in this checkout"',
            "    No `results/*/metrics.json` existed when this site was built, so there is no table here. "
            "Run `dda bench --out results/NAME` (see [The benchmark](../guides/benchmark.md)) and commit "
            "`results/NAME/metrics.json`; the next build shows it.",
            "",
        ]
        return "\n".join(out)
    out += [
        "| run | preset | seed | pairs | queries | DDA AP | DDA distractor AUC | best method (AP) | DDA AUC | wall |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    from dda.bench.run_record import read_run

    loaded = []
    for path in runs:
        run = read_run(path.parent)  # a bad file or a newer schema fails the build, naming the file
        m = run.to_dict()
        loaded.append((path.parent.name, m, run))
        methods = m.get("methods") or {}
        # AP and distractor AUC lead: AUC against every clean document rewards a word match (see the README)
        best = max(methods, key=lambda k: methods[k].get("ap") or 0, default=None)
        wall = m.get("wall_seconds")
        best_cell = f"{best} ({_pct(methods[best].get('ap'))})" if best else "–"
        dda = methods.get("dda") or {}
        out.append(
            f"| [{path.parent.name}](#run-{path.parent.name}) | {m.get('preset', '')} | {m.get('seed', '')} | "
            f"{_cell(', '.join(m.get('pairs') or []))} | {m.get('n_queries', '')} ({m.get('query_mode', '')}) | "
            f"{_pct(dda.get('ap'))} | {_pct(dda.get('distractor_auc'))} | {best_cell} | {_pct(dda.get('auc'))} | "
            f"{f'{wall / 60:.1f} min' if isinstance(wall, (int, float)) else '–'} |"
        )
    out.append("")
    for name, m, run in loaded:
        out += [f"## `{name}` {{#run-{name}}}", "", f"From `results/{name}/metrics.json`.", ""]
        facts = [f"{k}: `{_cell(m[k])}`" for k in FACTS if m.get(k) not in (None, "", [])]
        if isinstance(m.get("hallucination_rate"), (int, float)):
            facts.append(f"natural error rate: {_pct(m['hallucination_rate'])}% of {m.get('n_generated')} generated")
        if facts:
            out += ["; ".join(facts) + ".", ""]
        methods = m.get("methods") or {}
        if methods:
            info = m.get("query_information") or {}
            out += [
                "| method | query information | AP | distractor AUC | pooled AP | pooled dAUC | P@10 | R@#poisoned "
                "| AUC | ± std over queries |",
                "|---|---|---|---|---|---|---|---|---|---|",
            ]
            for meth in sorted(methods, key=lambda k: -(methods[k].get("ap") or 0)):
                v = methods[meth]
                out.append(
                    f"| `{_cell(meth)}` | {_cell(info.get(meth, ''))} | {_pct(v.get('ap'))} | "
                    f"{_pct(v.get('distractor_auc'))} | {_pct(v.get('pooled_ap'))} | "
                    f"{_pct(v.get('pooled_distractor_auc'))} | {_pct(v.get('precision@10'))} | "
                    f"{_pct(v.get('recall@n_poisoned'))} | {_pct(v.get('auc'))} | {_pct(v.get('auc_std'))} |"
                )
            out.append("")
        curves = m.get("beta_curve") or {}
        if curves and all(isinstance(c, dict) and "betas" in c for c in curves.values()):
            # readings may be swept over different β grids: one column per β any of them has
            betas = sorted({float(b) for c in curves.values() for b in c["betas"]})
            out += [
                "DDA against β, per debias reading (β < 0 adds the θ0 score); AP and distractor AUC first:",
                "",
                "| reading | metric | " + " | ".join(f"β = {b:g}" for b in betas) + " |",
                "|---|---|" + "---|" * len(betas),
            ]
            for metric, label in (("ap", "AP"), ("distractor_auc", "distractor AUC"), ("auc", "AUC")):
                for reading, c in curves.items():
                    if not c.get(metric):
                        continue
                    at = {float(b): a for b, a in zip(c["betas"], c[metric], strict=False)}
                    out.append(f"| {reading} | {label} | " + " | ".join(_pct(at.get(b)) for b in betas) + " |")
            out.append("")
        if run.remove_and_retrain:
            from dda.bench.tables import remove_and_retrain

            out += ["Remove and retrain:", "", *remove_and_retrain(name, run)]
        timings = m.get("timings") or {}
        if timings:
            out += ["Seconds per stage: " + ", ".join(f"{k} {v:.0f}" for k, v in timings.items()) + ".", ""]
        others = sorted(p.name for p in (root / "results" / name).iterdir() if p.name != "metrics.json")
        if others:
            out += ["Other files of this run: " + ", ".join(f"`{o}`" for o in others) + ".", ""]
    return "\n".join(out)


def render_bench_method(root: Path = ROOT) -> str:
    text = (root / "benchmarks" / "README.md").read_text(encoding="utf-8")
    note = (
        '!!! info "Source"\n    This page is `benchmarks/README.md`, included at build time: the benchmark '
        "scripts' documentation, with the commands that produced each number. Numbers here were measured on the "
        "project's 2-core CPU VM unless a section says otherwise.\n\n"
    )
    head, _, rest = text.partition("\n")
    return f"{head}\n\n{note}{rest}"


def render_changelog(root: Path = ROOT) -> str:
    return (root / "CHANGELOG.md").read_text(encoding="utf-8")


PAGES = {
    "reference/configuration.md": render_config_reference,
    "reference/cli.md": render_cli_reference,
    "benchmarks/results.md": render_results,
    "benchmarks/method.md": render_bench_method,
    "changelog.md": render_changelog,
}


def on_files(files: Any, config: Any) -> Any:
    """MkDocs hook: add the generated pages to the site (nothing is written into docs/)."""
    from mkdocs.structure.files import File

    for uri, render in PAGES.items():
        files.append(File.generated(config, uri, content=render()))
    return files
