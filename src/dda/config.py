"""One config tree drives both the CLI and the Python API; it is written beside every output.

Load from YAML with `load_config`, override with dotted keys (`apply_overrides(cfg, {"train.epochs": 2})`).
Unknown keys are errors that name the file and the key, so a typo never silently falls back to a default.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

DEFAULT_MODEL = "builtin:smollm2-135m-instruct"
DEFAULT_DATA = "builtin:xsum"
ALL_PROJ = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
SUMMARY_INSTRUCTION = (
    "You are an expert at summarising news articles. Write a succinct, accurate one-sentence summary "
    "of the following document, stating only what the document supports."
)


class ConfigError(ValueError):
    """A config value is invalid; the message names the source and the key."""


@dataclass
class ModelConfig:
    name: str = DEFAULT_MODEL  # hub id, local directory, path to a .gguf file, or builtin:<alias>
    gguf_file: str | None = None  # file name inside `name` when `name` is a directory/hub id
    revision: str | None = None
    dtype: str = "auto"  # auto: float32 on CPU, bfloat16 on CUDA; or float32/bfloat16/float16
    device: str = "auto"  # auto: cuda if available else cpu
    threads: int | None = None  # torch intra-op threads on CPU (None: all cores)


@dataclass
class DataConfig:
    path: str = DEFAULT_DATA  # .jsonl/.json/.csv/.parquet, a saved `datasets` dir, hub:<name>, builtin:xsum
    split: str = "train"  # for `datasets` sources
    id_field: str = "id"
    prompt_field: str = "document"
    response_field: str = "summary"
    template: str = "chat"  # chat (tokenizer's chat template) | plain | a str.format string with {prompt}
    instruction: str = SUMMARY_INSTRUCTION
    max_prompt_tokens: int = 256
    max_response_tokens: int = 64
    limit: int | None = None


@dataclass
class LoraSettings:
    r: int = 16
    alpha: int = 32
    dropout: float = 0.0
    target_modules: list[str] = field(default_factory=lambda: list(ALL_PROJ))


@dataclass
class TrainConfig:
    method: str = "lora"  # lora | full
    epochs: int = 3
    lr: float = 5e-4
    scheduler: str = "constant"  # constant | linear
    warmup_steps: int = 0
    batch_size: int = 8
    weight_decay: float = 0.0
    max_grad_norm: float = 1.0
    seed: int = 0
    lora: LoraSettings = field(default_factory=LoraSettings)


@dataclass
class FeatureConfig:
    modules: list[str] = field(default_factory=lambda: list(ALL_PROJ))  # Linear-layer name suffixes
    # all | last:N | last:1/3 (a fraction of the depth) | first:N | comma list of indices. The last third is the
    # default: on the hallucination benchmark it beat all layers by ~7 AUC points and the backward pass stops there.
    layers: str = "last:1/3"
    projection: str = "kronecker"  # kronecker (two-sided, per module) | dense (JL, blockwise) | identity
    proj_dim: int = 64  # kronecker: per side (module dim = proj_dim**2, then module_dim); dense: total dims
    # kronecker only (other projections ignore it): compress each module's proj_dim**2 sketch to this many dims
    # (two-stage sketch); 0 or None keeps proj_dim**2, and a module_dim >= proj_dim**2 changes nothing.
    # The default 64 -> 256 stores what 16x16 did with closer dot products: Spearman vs exact 0.87 instead of
    # 0.65 (speed benchmark, 1.09x the floor's time); hallucination AUC 94.1 / 92.0 instead of 92.6 / 88.6 on
    # two dev seeds of cpu-small (64x64 unsketched: 94.8 / 93.7, at 16x the store).
    module_dim: int | None = 256
    seed: int = 0
    batch_size: int = 8
    dtype: str = "float32"  # storage dtype: float32 | float16
    dense_block: int = 65536  # dense JL: input columns generated per block
    # Which response tokens of a contrastive query carry its loss: "diff" (default), only the tokens where the
    # negative and positive outputs differ (the hallucinated entity vs the correct one), or "all" (the paper).
    # The tokens after a swap are the same words in a different context, so their gradient difference is noise
    # to the question "what taught the model this entity"; on the hallucination benchmark "diff" raised DDA's
    # AUC by 2-3 points on each of three dev seeds. Queries without a positive always use all their tokens.
    query_tokens: str = "diff"


@dataclass
class ScoreConfig:
    methods: list[str] = field(
        default_factory=lambda: ["dda", "grad_dot", "grad_cos", "tracin", "trak", "bm25"]
    )
    beta: float = -1.0  # subtracted times the theta0 score; < 0 adds it (measured best, see README)
    # base: both gradients at theta0 | cross: train theta0, query theta_k | query0: train theta_k, query theta0
    debias_mode: str = "base"
    # auto (module when features allow) | none | std (each per-checkpoint score vector at unit std)
    # | module (each module's gradient at unit norm before the dot product; see dda.scoring.gradient)
    normalize: str = "auto"
    checkpoints: list[str] | None = None  # which fine-tuned checkpoints to average (None: all)
    trak_lambda: float = 1e-2  # ridge, relative to the mean diagonal of Phi^T Phi
    cea_lr: float = 1e-4
    cea_steps: int = 3
    top_k: int = 10


@dataclass
class DDAConfig:
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    features: FeatureConfig = field(default_factory=FeatureConfig)
    score: ScoreConfig = field(default_factory=ScoreConfig)
    seed: int = 0
    quiet: bool = False

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def _build(cls: type, values: dict[str, Any], where: str) -> Any:
    if not isinstance(values, dict):
        raise ConfigError(f"{where}: expected a mapping, got {type(values).__name__}")
    fields = {f.name: f for f in dataclasses.fields(cls)}
    kwargs: dict[str, Any] = {}
    for key, value in values.items():
        if key not in fields:
            raise ConfigError(f"{where}: unknown key '{key}' (known: {', '.join(fields)})")
        default = fields[key].default_factory() if fields[key].default_factory is not dataclasses.MISSING \
            else fields[key].default
        if dataclasses.is_dataclass(default):
            kwargs[key] = _build(type(default), value or {}, f"{where}.{key}")
        else:
            kwargs[key] = value
    return cls(**kwargs)


def config_from_dict(values: dict[str, Any], source: str = "<dict>") -> DDAConfig:
    cfg = _build(DDAConfig, values or {}, source)
    validate(cfg, source)
    return cfg


def load_config(path: str | Path) -> DDAConfig:
    path = Path(path)
    try:
        values = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        line = f", line {mark.line + 1}" if mark is not None else ""
        raise ConfigError(f"{path}{line}: invalid YAML: {err}") from err
    return config_from_dict(values, str(path))


def apply_overrides(cfg: DDAConfig, overrides: dict[str, Any]) -> DDAConfig:
    """Set dotted keys (e.g. "score.beta") on a copy of cfg; None values are skipped."""
    values = cfg.to_dict()
    for dotted, value in overrides.items():
        if value is None:
            continue
        node = values
        *parents, leaf = dotted.split(".")
        for p in parents:
            node = node[p]
        if leaf not in node:
            raise ConfigError(f"override: unknown key '{dotted}'")
        node[leaf] = value
    return config_from_dict(values, "<overrides>")


def validate(cfg: DDAConfig, source: str) -> None:
    checks = [
        (cfg.train.method in ("lora", "full"), "train.method", "must be 'lora' or 'full'"),
        (cfg.train.scheduler in ("constant", "linear"), "train.scheduler", "must be 'constant' or 'linear'"),
        (cfg.train.epochs >= 1, "train.epochs", "must be >= 1"),
        (cfg.features.projection in ("kronecker", "dense", "identity"), "features.projection",
         "must be kronecker, dense or identity"),
        (cfg.features.proj_dim >= 1, "features.proj_dim", "must be >= 1"),
        (cfg.features.module_dim is None or (isinstance(cfg.features.module_dim, int)
                                             and cfg.features.module_dim >= 0), "features.module_dim",
         "must be an integer >= 0 (0 or null: no second stage)"),
        (cfg.features.dtype in ("float32", "float16"), "features.dtype", "must be float32 or float16"),
        (cfg.features.query_tokens in ("all", "diff"), "features.query_tokens", "must be 'all' or 'diff'"),
        (cfg.score.debias_mode in ("base", "cross", "query0"), "score.debias_mode", "must be base, cross or query0"),
        (cfg.data.max_prompt_tokens >= 1, "data.max_prompt_tokens", "must be >= 1"),
        (cfg.data.max_response_tokens >= 1, "data.max_response_tokens", "must be >= 1"),
    ]
    for ok, key, msg in checks:
        if not ok:
            raise ConfigError(f"{source}: {key} {msg}")
