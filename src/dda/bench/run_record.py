"""A benchmark run as typed records: its directory, its sections, read and written here and nowhere else.

`dda bench` writes metrics.json through `write_run`; the report, the README tables (tools/results.py), the HTML
page and `dda bench-summary` read it through `read_run`, which checks the schema version: a run written before the
version existed (schema 1) is migrated on read, a run of a newer dda is refused with a message naming the file.
The sections (`BenchRun`): data, queries, methods with their metrics (pooled ones included), the haystack curve,
remove-and-retrain (`dda.fix.RemoveAndRetrain`, the shape `dda fix` reads too), timings and the machine; whatever
else a run records (β curves, per-query scores, notes) is kept as written in `BenchRun.extra`.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..fix import RemoveAndRetrain
from ..io import write_json

__all__ = [
    "SCHEMA_VERSION",
    "BenchRun",
    "HaystackCurve",
    "Machine",
    "MethodMetrics",
    "RunDir",
    "RunError",
    "machine_info",
    "read_run",
    "write_run",
]

# 1: no version field, the remove-and-retrain section and its timing named "counterfactual"; 2: "schema", and
# both named "remove_and_retrain".
SCHEMA_VERSION = 2


class RunError(ValueError):
    """A run directory that cannot be read: missing, not JSON, or of a schema this dda does not know."""


@dataclass(frozen=True)
class RunDir:
    """Where a run's files lie (the benchmark writes them, `tools/results.py export` copies the small ones)."""

    root: Path

    @property
    def metrics(self) -> Path:
        return self.root / "metrics.json"

    @property
    def report(self) -> Path:
        return self.root / "report.md"

    @property
    def config(self) -> Path:
        return self.root / "config.yaml"

    @property
    def figures(self) -> Path:
        return self.root / "figures"

    @property
    def queries(self) -> Path:
        return self.root / "queries.jsonl"

    @property
    def attribution(self) -> Path:
        return self.root / "attribution"


@dataclass
class Machine:
    """The CPU a wall time was measured on: times differ about 3x across hosts."""

    cpu: str | None = None
    vector_flags: list[str] = field(default_factory=list)
    cores: int | None = None

    def describe(self) -> str:
        return f"{self.cpu or 'unknown CPU'} ({', '.join(self.vector_flags) or 'flags unknown'})"

    def to_dict(self) -> dict[str, Any]:
        return {"cpu": self.cpu, "vector_flags": list(self.vector_flags), "cores": self.cores}


def machine_info() -> Machine:
    """This host's CPU model name, vector extensions and cores."""
    model, flags = None, set()
    try:
        for line in Path("/proc/cpuinfo").read_text(encoding="utf-8").splitlines():
            key, _, value = line.partition(":")
            if key.strip() == "model name" and model is None:
                model = value.strip()
            elif key.strip() == "flags" and not flags:
                flags = set(value.split())
    except OSError:
        pass
    vector = sorted(f for f in flags if f in ("avx2", "avx512f", "avx512_bf16", "avx512_vnni", "amx_tile", "fma"))
    return Machine(model, vector, os.cpu_count())


@dataclass
class MethodMetrics:
    """One method's means over the run's queries (ap, auc, distractor_auc, precision@10, ...) and, when the run
    pooled each pair's queries, pooled_ap and pooled_distractor_auc; `values` holds them under metrics.json's keys."""

    values: dict[str, Any]

    def get(self, key: str) -> float | None:
        v = self.values.get(key)
        return None if v is None else float(v)

    @property
    def ap(self) -> float | None:
        return self.get("ap")

    @property
    def auc(self) -> float | None:
        return self.get("auc")

    @property
    def distractor_auc(self) -> float | None:
        return self.get("distractor_auc")

    @property
    def pooled_ap(self) -> float | None:
        return self.get("pooled_ap")

    @property
    def pooled_distractor_auc(self) -> float | None:
        return self.get("pooled_distractor_auc")


@dataclass
class HaystackCurve:
    """Ranking metrics against sub-haystack size: `sizes`, draws per size, rows always kept, and each method's
    mean AP and AUC per size."""

    sizes: list[int]
    draws: int | None
    kept: int | None
    ap: dict[str, list[float]]
    auc: dict[str, list[float]]

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> HaystackCurve:
        methods = d.get("methods") or {}
        ap = {name: list(v["ap"]) for name, v in methods.items()}
        auc = {name: list(v["auc"]) for name, v in methods.items() if "auc" in v}
        return cls(list(d.get("sizes") or []), d.get("draws"), d.get("kept"), ap, auc)

    def to_dict(self) -> dict[str, Any]:
        methods = {name: {"ap": list(v)} | ({"auc": list(self.auc[name])} if name in self.auc else {})
                   for name, v in self.ap.items()}  # fmt: skip
        return {"sizes": list(self.sizes), "draws": self.draws, "kept": self.kept, "methods": methods}


# The run's facts about its data and queries, in metrics.json's order (top-level keys, kept flat there).
DATA_KEYS = ("preset", "seed", "pairs", "model", "n_records", "n_train", "n_poisoned", "n_distractors")
QUERY_KEYS = ("n_queries", "query_mode", "query_kinds", "n_generated", "n_natural_errors", "hallucination_rate")
_TYPED = {*DATA_KEYS, *QUERY_KEYS, "methods", "chance", "query_information", "haystack_curve", "remove_and_retrain"}
_TYPED |= {"timings", "wall_seconds", "machine", "schema"}


@dataclass
class BenchRun:
    """One benchmark run (metrics.json) as its sections."""

    data: dict[str, Any]  # DATA_KEYS: preset, seed, pairs, model, row counts
    queries: dict[str, Any]  # QUERY_KEYS: how many queries, of which kinds, the natural error rate
    methods: dict[str, MethodMetrics]
    query_information: dict[str, str]  # method -> what its query told it, in words
    chance_ap: float | None
    haystack: HaystackCurve | None
    remove_and_retrain: RemoveAndRetrain | None
    timings: dict[str, float]  # seconds per stage, `total` among them
    wall_seconds: float | None
    machine: Machine
    extra: dict[str, Any] = field(default_factory=dict)  # every other section, as written
    schema: int = SCHEMA_VERSION

    @property
    def preset(self) -> str | None:
        return self.data.get("preset")

    @property
    def pairs(self) -> list[str]:
        return list(self.data.get("pairs") or [])

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> BenchRun:
        """A run from metrics.json's content at the current schema (`read_run` migrates older ones first)."""
        rr = d.get("remove_and_retrain")
        hay = d.get("haystack_curve")
        return cls(
            data={k: d[k] for k in DATA_KEYS if k in d},
            queries={k: d[k] for k in QUERY_KEYS if k in d},
            methods={name: MethodMetrics(dict(v)) for name, v in (d.get("methods") or {}).items()},
            query_information=dict(d.get("query_information") or {}),
            chance_ap=(d.get("chance") or {}).get("ap"),
            haystack=HaystackCurve.from_dict(hay) if hay else None,
            remove_and_retrain=RemoveAndRetrain.from_bench(rr) if rr else None,
            timings=dict(d.get("timings") or {}),
            wall_seconds=d.get("wall_seconds"),
            machine=Machine(**(d.get("machine") or {})),
            extra={k: v for k, v in d.items() if k not in _TYPED},
            schema=int(d.get("schema", SCHEMA_VERSION)),
        )

    def to_dict(self) -> dict[str, Any]:
        """metrics.json's content: the schema first, then the sections."""
        return {
            "schema": SCHEMA_VERSION,
            **self.data,
            "chance": {"ap": self.chance_ap},
            "query_information": dict(self.query_information),
            **self.queries,
            "wall_seconds": self.wall_seconds,
            "machine": self.machine.to_dict(),
            "methods": {name: dict(m.values) for name, m in self.methods.items()},
            "haystack_curve": self.haystack.to_dict() if self.haystack else None,
            "remove_and_retrain": self.remove_and_retrain.to_bench() if self.remove_and_retrain else None,
            "timings": dict(self.timings),
            **self.extra,
        }


def migrate(d: dict[str, Any], source: str) -> dict[str, Any]:
    """metrics.json's content at SCHEMA_VERSION; a newer schema is refused."""
    version = d.get("schema", 1)
    if not isinstance(version, int) or version < 1:
        raise RunError(f"{source}: field 'schema': {version!r} is not a schema version")
    if version > SCHEMA_VERSION:
        raise RunError(
            f"{source}: field 'schema': version {version} was written by a newer dda (this one reads up to "
            f"{SCHEMA_VERSION}); update dda to read it"
        )
    d = dict(d)
    if version == 1:  # the remove-and-retrain section and its timing had the stage's old name
        d["remove_and_retrain"] = d.pop("counterfactual", None)
        timings = dict(d.get("timings") or {})
        if "counterfactual" in timings:
            timings["remove_and_retrain"] = timings.pop("counterfactual")
            d["timings"] = timings
    d["schema"] = SCHEMA_VERSION
    return d


def read_run(run: str | Path) -> BenchRun:
    """The run under `run` (its metrics.json), migrated to the current schema."""
    path = RunDir(Path(run)).metrics
    if not path.is_file():
        raise RunError(f"{path}: no metrics.json (is {run} a finished `dda bench` output?)")
    try:
        d = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as err:
        raise RunError(f"{path}: line {err.lineno}: not valid JSON ({err.msg})") from None
    if not isinstance(d, dict):
        raise RunError(f"{path}: line 1: a run's metrics are a JSON object, not {type(d).__name__}")
    return BenchRun.from_dict(migrate(d, str(path)))


def write_run(run: str | Path, record: BenchRun) -> Path:
    """metrics.json under `run`, at the current schema."""
    path = RunDir(Path(run)).metrics
    write_json(path, record.to_dict())
    return path
