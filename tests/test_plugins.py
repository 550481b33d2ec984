"""Plugins reach the command line: an installed package's `dda.plugins` entry point and a module named in
DDA_PLUGINS register before the options are built, and a broken plugin is one message naming it, exit 2.

The plugin is a real distribution on sys.path (a module and its .dist-info with entry_points.txt, which is what
pip writes), read by importlib.metadata in a fresh `python -m dda` process: no registry is patched."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from dda.plugins import ENTRY_POINT_GROUP, PluginError, load_plugins

BACKEND_MODULE = """
from pathlib import Path

import numpy as np

from dda.scoring.backends import SearchBackend, register_backend


class {cls}(SearchBackend):
    name = "{name}"

    def build(self, rows, out_dir: Path, settings, on_block=None):
        np.save(out_dir / "rows.npy", np.arange(rows.shape[0]), allow_pickle=False)
        return {{"rows": rows.shape[0]}}

    def candidates(self, index, rows, queries, n, settings):
        order = np.load(index.root / "rows.npy", allow_pickle=False)
        return np.broadcast_to(order, (len(queries), len(order)))


register_backend({cls})
"""


def _site(tmp_path: Path) -> Path:
    """A site dir holding an installed plugin package (entry point) and a bare module (for DDA_PLUGINS)."""
    site = tmp_path / "site"
    site.mkdir()
    (site / "acme_dda_backend.py").write_text(BACKEND_MODULE.format(cls="AcmeRows", name="acme-rows"))
    info = site / "acme_dda_backend-0.1.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: acme-dda-backend\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text(f"[{ENTRY_POINT_GROUP}]\nacme_rows = acme_dda_backend\n")
    (site / "lab_backend.py").write_text(BACKEND_MODULE.format(cls="LabRows", name="lab-rows"))
    (site / "broken_plugin.py").write_text("raise RuntimeError('needs the lab VPN')\n")
    return site


def _dda(site: Path, *args: str, plugins: str = "") -> subprocess.CompletedProcess:
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(site), *sys.path]),
        "DDA_PLUGINS": plugins,
        "COLUMNS": "200",  # rich wraps --help to the terminal; a wide one keeps the backend list on one line
    }
    return subprocess.run(
        [sys.executable, "-m", "dda", *args], env=env, capture_output=True, text=True, timeout=120, check=False
    )


@pytest.mark.slow  # fresh `python -m dda` processes
def test_entry_point_and_env_plugins_are_backend_choices_on_the_cli(tmp_path):
    site = _site(tmp_path)
    res = _dda(site, "build-index", "--help", plugins="lab_backend")
    assert res.returncode == 0, res.stderr
    text = " ".join(res.stdout.replace("│", " ").split())
    # registered after the built-ins, entry points before DDA_PLUGINS: the help lists them in that order
    assert "sketch or faiss or acme-rows or lab-rows" in text
    # without the variable only the installed plugin is there
    res = _dda(site, "build-index", "--help")
    assert "acme-rows" in res.stdout and "lab-rows" not in res.stdout


@pytest.mark.slow
@pytest.mark.parametrize(
    ("plugins", "named"),
    [
        ("broken_plugin", "DDA_PLUGINS module 'broken_plugin': RuntimeError: needs the lab VPN"),
        ("not_installed_anywhere", "DDA_PLUGINS module 'not_installed_anywhere': ModuleNotFoundError"),
    ],
)
def test_a_broken_plugin_is_named_and_exits_2(tmp_path, plugins, named):
    res = _dda(_site(tmp_path), "config", plugins=plugins)
    assert res.returncode == 2
    out = " ".join((res.stdout + res.stderr).split())
    assert named in out and "Traceback" not in out


def test_load_plugins_imports_once_and_reports_its_sources(tmp_path, monkeypatch):
    site = tmp_path / "site"
    site.mkdir()
    (site / "counting_plugin.py").write_text(
        "import builtins\nbuiltins.DDA_TEST_LOADS = getattr(builtins, 'DDA_TEST_LOADS', 0) + 1\n"
    )
    monkeypatch.syspath_prepend(str(site))
    import builtins

    env = {"DDA_PLUGINS": " counting_plugin , "}
    assert load_plugins(env)[-1] == "DDA_PLUGINS module 'counting_plugin'"
    load_plugins(env)
    assert builtins.DDA_TEST_LOADS == 1
    del builtins.DDA_TEST_LOADS
    with pytest.raises(PluginError, match="DDA_PLUGINS module 'no_such_plugin_module'"):
        load_plugins({"DDA_PLUGINS": "no_such_plugin_module"})
