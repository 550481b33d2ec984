"""dda: Debias and Denoise Attribution.

Trace what a fine-tuned causal LM says back to the training documents behind it.
Score orientation everywhere: arrays of shape (n_queries, n_train); HIGHER = MORE RESPONSIBLE.

The names below are imported on first use (PEP 562), so `import dda.features.capture` pulls in torch and
nothing else: the GPU check and distributed workers run where the CLI's dependencies (rich, yaml, ...) may
be missing.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

_EXPORTS = {
    "Attribution": "attribution",
    "Attributor": "api",
    "load_attribution": "attribution",
    "DDAConfig": "config",
    "apply_overrides": "config",
    "config_from_dict": "config",
    "load_config": "config",
    "Example": "data",
    "Query": "data",
    "load_examples": "data",
    "load_queries": "data",
    "Report": "notebook",
}

__all__ = [
    "Attribution",
    "Attributor",
    "DDAConfig",
    "Example",
    "Query",
    "Report",
    "apply_overrides",
    "config_from_dict",
    "load_attribution",
    "load_config",
    "load_examples",
    "load_queries",
]

if TYPE_CHECKING:
    from .api import Attributor
    from .attribution import Attribution, load_attribution
    from .config import DDAConfig, apply_overrides, config_from_dict, load_config
    from .data import Example, Query, load_examples, load_queries
    from .notebook import Report


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module 'dda' has no attribute '{name}'")
    value = getattr(importlib.import_module(f".{_EXPORTS[name]}", __name__), name)
    globals()[name] = value  # later look-ups skip this function
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_EXPORTS))
