"""Every option's default in `--help` and the CLI reference, including those whose value is None in the
signature because it comes from the config (or the workdir) unless given.

typer shows `[default: ...]` only for a non-None default; an option left None reads as having none. The group
class below gives each such option a text saying where its value comes from (the config key and its default,
or the path it falls back to), and each on/off flag its state, when the command is built. A new None option with
no entry here is caught by tests/test_cli_help.py.
"""

from __future__ import annotations

from typing import Any

from typer.core import TyperGroup


def config_default(key: str) -> str:
    """'score.beta = -1.0': a config key with its default, for an option that overrides it."""
    from ..config import DDAConfig

    value: Any = DDAConfig()
    for part in key.split("."):
        value = getattr(value, part)
    if isinstance(value, (list, tuple)):
        value = ",".join(map(str, value))
    return f"{key} = {value}"


# (command, option) or option alone -> where the value comes from when the option is not given. A callable is
# evaluated when the help is built (config defaults stay the config's own).
_SAME = {
    "config": "none: the built-in settings",
    "set_": "none",
    "model": lambda: config_default("model.name") + ", or the workdir's",
    "data": lambda: config_default("data.path") + ", or the workdir's",
}
_BY_COMMAND: dict[tuple[str, str], Any] = {
    ("finetune", "epochs"): lambda: config_default("train.epochs"),
    ("finetune", "lr"): lambda: config_default("train.lr"),
    ("finetune", "method"): lambda: config_default("train.method"),
    ("index", "checkpoints"): "WORKDIR/checkpoints, or the ones the workdir was indexed with",
    ("index", "projection"): lambda: config_default("features.projection"),
    ("index", "proj_dim"): lambda: config_default("features.proj_dim"),
    ("index", "module_dim"): lambda: config_default("features.module_dim"),
    ("index", "batch_tokens"): lambda: config_default("features.batch_tokens"),
    ("attribute", "methods"): lambda: config_default("score.methods"),
    ("attribute", "beta"): lambda: config_default("score.beta"),
    ("attribute", "top_k"): lambda: config_default("score.top_k"),
    ("attribute", "out"): "WORKDIR/attribution",
    ("attribute", "explain_methods"): "the first gradient method of --methods",
    ("fix", "method"): lambda: config_default("fix.method"),
    ("fix", "k"): lambda: config_default("fix.k"),
    ("fix", "combine"): lambda: config_default("fix.combine"),
    ("fix", "after"): "none: measure --retrain",
    ("fix", "random"): "none: the random control of --retrain",
    ("fix", "heldout"): "the kept training set",
    ("fix", "out"): "WORKDIR/fix/{method}-k{k}",
    ("bench", "seeds"): "none: the one --seed",
    ("bench", "model"): "the preset's",
    ("bench", "data"): "the preset's",
    ("bench", "methods"): "the preset's",
    ("build-index", "sketch_dim"): lambda: config_default("search.sketch_dim"),
    ("build-index", "nlist"): lambda: config_default("search.nlist"),
    ("build-index", "seed"): lambda: config_default("search.seed"),
    ("build-index", "checkpoints"): "the ones the workdir was indexed with",
    ("build-index", "out"): "WORKDIR/features/index/{backend}-{key}",
    ("search", "k"): lambda: config_default("search.k"),
    ("search", "backend"): lambda: config_default("search.backend"),
    ("search", "index"): "the newest matching one under WORKDIR/features/index",
    ("search", "candidates"): lambda: config_default("search.candidates"),
    ("search", "nprobe"): lambda: config_default("search.nprobe"),
    ("search", "sketch_dim"): lambda: config_default("search.sketch_dim"),
    ("search", "checkpoints"): "the ones the workdir was indexed with",
    ("search", "out"): "WORKDIR/search",
    ("search", "beta"): lambda: config_default("score.beta"),
    ("data", "queries"): "none: training rows only",
    ("show", "out"): "RUN_DIR/report.html",
    ("show", "top_k"): "all stored",
}


def default_text(command: str, option: str) -> str | None:
    """What `command --option` defaults to when it is None in the signature; None when no entry says."""
    text = _BY_COMMAND.get((command, option), _SAME.get(option))
    return text() if callable(text) else text


def show_every_default(command_name: str, command: Any) -> None:
    """Give each option of a built click command a default to show: its value, its source, or on/off."""
    for p in command.params:
        if p.param_type_name != "option" or p.name == "help" or p.required or isinstance(p.show_default, str):
            continue
        if getattr(p, "is_flag", False) and not p.secondary_opts:
            p.show_default = "on" if p.default else "off"
        elif p.default is None or p.default == ():
            text = default_text(command_name, p.name)
            if text is not None:
                p.show_default = text


class DefaultsGroup(TyperGroup):
    """The app's command group: each command's options show their defaults (see `show_every_default`)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        show_every_default("", self)  # `dda --version`
        for name, command in self.commands.items():
            show_every_default(name, command)
