"""benchmarks/gpu_check.py on a CPU with tiny shapes: what the GPU machine will run, minus the GPU.

The GPU machine has torch, transformers, peft and accelerate but maybe none of dda's other dependencies, so
one run happens in a fresh interpreter where those are made unimportable (and peft too: its row must then be
skipped, not crash).
"""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "benchmarks" / "gpu_check.py"
# dda's dependencies that torch, transformers, peft and accelerate do not bring (pyyaml, numpy and typer come
# with transformers), and scipy/pandas which sklearn/datasets would bring
NOT_ON_THE_GPU_MACHINE = ["rich", "bm25s", "sklearn", "scipy", "datasets", "gguf", "pyarrow", "matplotlib", "pandas"]


def _load_script():
    spec = importlib.util.spec_from_file_location("gpu_check", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_script_settings_are_dda_defaults():
    from dda.config import ALL_PROJ, FeatureConfig

    gc, cfg = _load_script(), FeatureConfig()
    assert gc.MODULES == ALL_PROJ == cfg.modules
    assert (cfg.layers, cfg.proj_dim, cfg.module_dim, cfg.seed) == (gc.LAYERS, gc.PROJ_K, gc.MODULE_DIM, gc.SEED)
    assert cfg.projection == "kronecker"


@pytest.mark.slow
def test_tiny_run_without_dda_extras_or_peft(tmp_path):
    """The whole check (capture checks + one tiny model) with the CLI's dependencies and peft unimportable."""
    blocked = [*NOT_ON_THE_GPU_MACHINE, "peft"]
    # None in sys.modules makes `import x` fail and importlib.util.find_spec("x") report it missing
    runner = (
        f"import runpy, sys\nfor name in {blocked!r}:\n    sys.modules[name] = None\n"
        f"sys.argv = [{str(SCRIPT)!r}, '--device', 'cpu', '--tiny', '--models', 'tiny-a', '--batches', '1',"
        f" '--warmup', '0', '--out', {str(tmp_path)!r}]\n"
        f"runpy.run_path({str(SCRIPT)!r}, run_name='__main__')\n"
    )
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}  # the script finds src/ itself
    env["OMP_NUM_THREADS"] = "1"  # tiny shapes: threads only add contention
    proc = subprocess.run(
        [sys.executable, "-c", runner], capture_output=True, text=True, env=env, timeout=600, cwd=tmp_path
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    result = json.loads((tmp_path / "gpu_check.json").read_text())
    assert result["status"] == "PASS"
    assert (tmp_path / "gpu_check.md").read_text().count("| PASS |") == 4
    assert result["machine"]["device"] == "cpu" and result["settings"]["tiny"] is True
    checks = {c["name"]: c for c in result["checks"]}
    assert len(checks) == 4 and all(c["passed"] for c in checks.values())
    assert all(c["metric"] in ("max_rel_error", "min_cosine") and c["tolerance"] for c in checks.values())
    rows = {r["method"]: r for r in result["throughput"]}
    assert set(rows) == {"dda_index", "hf_full", "hf_lora"}
    assert rows["hf_lora"]["status"] == "skipped: peft not installed"
    for name in ("dda_index", "hf_full"):
        r = rows[name]
        assert r["status"] == "ok" and r["batches"] == 1 and r["tokens"] == 2 * 32
        assert r["tokens_per_s"] == pytest.approx(r["tokens"] / r["seconds"]) and r["model"] == "tiny-a"
    assert rows["dda_index"]["params"] == rows["hf_full"]["params"]  # one model measured two ways
    assert rows["hf_full"]["ratio_to_hf_full"] == 1.0
    ratio = rows["hf_full"]["tokens_per_s"] / rows["dda_index"]["tokens_per_s"]
    assert rows["dda_index"]["ratio_to_hf_full"] == pytest.approx(ratio)
    assert "PASS  fp32 hooks, identity projection vs autograd" in proc.stdout  # the PASS/FAIL lines


@pytest.mark.slow
def test_lora_floor_row_with_peft(tmp_path):
    gc = _load_script()
    assert (
        gc.main(
            [
                "--device",
                "cpu",
                "--tiny",
                "--models",
                "tiny-a",
                "--batches",
                "1",
                "--warmup",
                "0",
                "--skip-checks",
                "--out",
                str(tmp_path),
            ]
        )
        == 0
    )
    rows = {r["method"]: r for r in json.loads((tmp_path / "gpu_check.json").read_text())["throughput"]}
    assert rows["hf_lora"]["status"] == "ok" and rows["hf_lora"]["ratio_to_hf_lora"] == 1.0
    assert rows["dda_index"]["ratio_to_hf_lora"] > 0


def test_full_shapes_refuse_a_cpu(tmp_path):
    gc = _load_script()
    assert gc.main(["--device", "cpu", "--out", str(tmp_path)]) == 2
    with pytest.raises(SystemExit):
        gc.parse_args(["--models", "13B"])
