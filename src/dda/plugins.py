"""Plugins: a user's projection, search backend, model family or scorer, registered before the CLI parses a command.

dda's registries (`dda.features.projection.register_projection`, `dda.scoring.backends.register_backend`,
`dda.families.register_family`, `dda.scoring.base.register`) are filled when a module calls them. Python code
using the API imports its own module first; the command line cannot, so it imports plugins from two places
before any command's options are built (their names then are config choices and appear in `--help`):

- installed packages' entry points in the group ``dda.plugins``, e.g. in the plugin's pyproject.toml
  ``[project.entry-points."dda.plugins"]`` ``my_backend = "my_package.dda_backend"``;
- the environment variable ``DDA_PLUGINS``: comma-separated module names importable from ``sys.path``, for code
  that is not packaged (``DDA_PLUGINS=my_backend dda search ...``).

An entry point names a module (importing it registers) or a callable (called once, with no arguments). Plugins
are code the user installed or named, imported like any other package: nothing is unpickled. This module imports
nothing from dda, so a plugin may import any part of it.
"""

from __future__ import annotations

import importlib
import os
from collections.abc import Callable
from importlib.metadata import entry_points
from typing import Any

ENTRY_POINT_GROUP = "dda.plugins"
ENV_VAR = "DDA_PLUGINS"

_loaded: set[str] = set()  # sources already loaded, so a second call imports and calls nothing again


class PluginError(Exception):
    """A plugin could not be loaded; the message names it and where it was declared."""


def _load(source: str, load: Callable[[], Any]) -> None:
    if source in _loaded:
        return
    try:
        obj = load()
        if callable(obj):
            obj()
    except Exception as err:  # a plugin's own failure, whatever it is, is reported as the plugin's
        raise PluginError(f"plugin {source}: {type(err).__name__}: {err}") from err
    _loaded.add(source)


def load_plugins(environ: dict[str, str] | None = None) -> list[str]:
    """Import every plugin declared by an entry point or by `DDA_PLUGINS`; returns their sources, in load order.

    Entry points come first (sorted by name, so the order does not depend on the install order), then the
    variable's modules in the order given. A plugin that fails raises PluginError naming it.
    """
    env = os.environ if environ is None else environ
    sources = []
    for ep in sorted(entry_points(group=ENTRY_POINT_GROUP), key=lambda e: e.name):
        dist = getattr(ep, "dist", None)
        source = f"entry point '{ep.name} = {ep.value}'" + (f" (package {dist.name})" if dist is not None else "")
        _load(source, ep.load)
        sources.append(source)
    for name in (n.strip() for n in env.get(ENV_VAR, "").split(",")):
        if name:
            source = f"{ENV_VAR} module '{name}'"
            _load(source, lambda name=name: importlib.import_module(name))
            sources.append(source)
    return sources


__all__ = ["ENTRY_POINT_GROUP", "ENV_VAR", "PluginError", "load_plugins"]
