"""The hallucination-tracing benchmark (`dda bench`). Its metrics and figures need the `bench` extra."""

from __future__ import annotations

import importlib.util

# import name -> the package the `bench` extra installs
BENCH_EXTRA = {"sklearn": "scikit-learn", "matplotlib": "matplotlib"}


def require_bench_extra() -> None:
    """Refuse, before any work, to run the benchmark without scikit-learn and matplotlib (not core dependencies)."""
    missing = [pkg for mod, pkg in BENCH_EXTRA.items() if importlib.util.find_spec(mod) is None]
    if missing:
        raise ImportError(
            f"dda bench needs {' and '.join(missing)}: pip install 'dda-attribution[bench]' (the benchmark's extra)"
        )
