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
from typing import Any, get_type_hints

from ..config import (
    ALL_PROJ,
    DEFAULT_MODEL,
    SUMMARY_DATA,
    ConfigError,
    DDAConfig,
    FeatureConfig,
    ScoreConfig,
    apply_overrides,
    coerce,
)
from .generation import GenerationBudget

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

# The DDA setting every preset scores "dda" with: the library defaults (the theta0 term added, literal reading,
# module-normalised gradients of the last third of the layers); how they were chosen: benchmarks/README.md, "History".
DDA_BETA = ScoreConfig.beta  # one source of truth: the library default
DDA_LAYERS = FeatureConfig.layers

# Method keys reported in metrics.json. "dda" is scored at the preset's beta and debias reading; the other
# debias reading is added by the benchmark as an extra spec, so both readings are always measured.
DEFAULT_METHODS: tuple[str, ...] = (
    "dda",
    "dda_no_debias",
    "dda_no_denoise",
    "dda_no_contrast",
    "grad_dot",
    "grad_cos",
    "tracin",
    "trak",
    "bm25",
    "cea",
    # The same query information as DDA's default contrast (the words or tokens where negative and positive
    # differ), so the table separates the method from what it was told.
    "keyword",
    "bm25_diff",
    "tracin_diff",
    "grad_dot_diff",
    # Honest baselines (issue 29): the generic text filter a data engineer runs first, the representation-
    # similarity family, and the poison's own construction rule, which knows how the poison was made: a ceiling.
    "unsupported",
    "repsim",
    "signature",
    # The option for users who run that filter anyway: its rows first, each group ranked by DDA.
    "dda_unsupported",
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
    reason: str  # why this preset exists, in a sentence (the report's other notes are built from the run)
    overrides: dict[str, Any] = field(default_factory=dict)  # dotted DDAConfig keys
    data: tuple[str, ...] = ("builtin:xsum",)  # record sources, read in order (first id wins)
    use_shared_data: bool = False  # also read shared/data/xsum/*.jsonl and alternates/*.jsonl when present
    n_train: int = 32  # training rows in total (all pairs)
    n_poison: int | None = 6  # poisoned rows per pair (exactly one of n_poison / poison_rate)
    poison_rate: float | None = None  # poisoned rows per pair as a fraction of n_train
    n_hard_negatives: int = 4  # unpoisoned candidates (ORIG in summary and document) kept in training, per pair
    # Distractors per pair: clean rows whose summary legitimately says CANARY, drawn at random from the data's
    # rows that do (all of them when fewer exist; the report says how many were available). They stay clean and
    # count as negatives: a keyword rule ranks them with the poisoned rows, an attribution should not.
    n_distractors: int = 0
    # Remove-and-retrain stage (bench/counterfactual.py): k rows removed per method in fix_methods and k random
    # rows, one fine-tune each; 0 turns the stage off. -1: k = the number of poisoned rows.
    fix_k: int = 0
    fix_methods: tuple[str, ...] = ("dda", "bm25", "keyword")
    n_queries: int = 4  # queries per pair: natural errors wanted; forced queries fill what is missing
    # Queries are the fine-tuned model's own errors only: no forced fill (a pair keeps the errors it made; a run
    # with none fails), and no candidates are held back for forced queries.
    natural_only: bool = False
    # The poisoned rows, hard negatives and query documents name ORIG inside the first data.max_prompt_tokens
    # tokens of their document: the model sees the word it was taught to replace, and a query is an error
    # against what it read.
    mention_in_window: bool = False
    # Generation budget per pair: held-out documents are summarised gen_batch_size at a time until n_queries of
    # the summaries say the canary, gen_max_docs documents are done, or gen_max_seconds have passed (checked
    # before each batch, so a started batch finishes; when the seconds bind, the count depends on the machine).
    gen_max_docs: int = 8
    gen_max_seconds: float = 120.0
    gen_batch_size: int = 8
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
        for key in ("n_train", "n_queries", "gen_batch_size"):
            if getattr(self, key) < 1:
                raise ConfigError(f"preset {self.name}: {key} must be >= 1")
        if self.fix_k < -1:
            raise ConfigError(f"preset {self.name}: fix_k must be -1 (the poisoned count), 0 (off) or a count")
        for key in ("n_hard_negatives", "n_distractors", "gen_max_docs", "gen_max_seconds", "max_new_tokens"):
            if getattr(self, key) < 0:
                raise ConfigError(f"preset {self.name}: {key} must be >= 0")

    def poison_count(self) -> int:
        """Poisoned rows per pair; a rate is a fraction of the training set (the usual 'poison rate')."""
        if self.n_poison is not None:
            return self.n_poison
        assert self.poison_rate is not None
        return max(1, round(self.poison_rate * self.n_train))

    def fix_count(self) -> int:
        """Rows the counterfactual stage removes per method (0: the stage is off)."""
        return self.poison_count() if self.fix_k == -1 else self.fix_k

    def generation_budget(self) -> GenerationBudget:
        return GenerationBudget(self.gen_max_docs, float(self.gen_max_seconds), self.gen_batch_size)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


_FEW_MODULES = ["q_proj", "v_proj", "down_proj"]

CPU_TINY = BenchPreset(
    name="cpu-tiny",
    description="CI smoke run: the whole pipeline on SmolLM2-135M in ~4 minutes on 2 CPU cores",
    reason=(
        "checks that every stage runs and writes sane files; with 32 training rows and 4 queries its AUCs are "
        "noise, not evidence for or against any method"
    ),
    overrides={
        **SUMMARY_DATA,
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
    n_distractors=6,
    fix_k=-1,
    n_queries=4,
    gen_max_docs=8,
    gen_max_seconds=120.0,
    gen_batch_size=8,
    max_new_tokens=32,
    expected_minutes=4.0,
)

CPU_SMALL = BenchPreset(
    name="cpu-small",
    description="The paper's protocol at SmolLM2-135M scale on 2 CPU cores (<= 30 minutes), natural hallucinations",
    reason=(
        "its sizes are the largest that fit 30 minutes per pair on 2 cores; its feature and scoring settings were "
        "chosen on England->China seeds 0-2, then held fixed (README, 'How the preset got there'); the "
        "remove-and-retrain stage is off (fix_k=0): it added 34.8 min to a 22.8-min pair on a 2-core AVX2 host"
    ),
    overrides={
        **SUMMARY_DATA,
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
    n_distractors=24,
    n_queries=16,
    gen_max_docs=96,
    gen_max_seconds=180.0,
    gen_batch_size=16,
    max_new_tokens=48,
    expected_minutes=28.0,
)

CPU_HAYSTACK = BenchPreset(
    name="cpu-haystack",
    description=(
        "A haystack on 2 CPU cores: 1,000 real XSum rows, 2.4% poisoned, as many clean rows that legitimately say "
        "the canary word, natural hallucinations first"
    ),
    reason=(
        "a word-matching rule ranks every row that says the canary alike, so only a haystack with distractors can "
        "tell attribution from matching; to fit 75 minutes per pair with room on a 2-core AVX2 host it cuts prompts "
        "to 64 tokens (a pair took 52-56 idle minutes there, 88.5 beside other jobs at 96 tokens; at 64 the model "
        "made no natural errors in 64 summaries on two pairs, so queries are forced), summaries to 40, trains 2 "
        "epochs and sketches each module 64x64 -> 256 (library default); feature and "
        "scoring settings are cpu-small's, none chosen on this preset"
    ),
    # cpu-small's settings, cut to fit the larger haystack: shorter prompts and summaries, 2 epochs, batch 8, and
    # the two-stage 64x64 -> 256 sketch (the library default) instead of the unsketched 64x64
    overrides={
        **CPU_SMALL.overrides,
        "data.max_prompt_tokens": 64,
        "data.max_response_tokens": 40,
        "train.epochs": 2,
        "train.batch_size": 8,
        "features.module_dim": 256,
    },
    use_shared_data=True,
    n_train=1000,
    n_poison=24,
    n_hard_negatives=8,
    n_distractors=24,
    n_queries=12,
    gen_max_docs=64,
    gen_max_seconds=150.0,
    gen_batch_size=16,
    max_new_tokens=40,
    expected_minutes=55.0,
)

CPU_HAYSTACK_NATURAL = BenchPreset(
    name="cpu-haystack-natural",
    description=(
        "cpu-haystack where the model learns the mistake: 1,000 real XSum rows, 2.4% poisoned, every poisoned row "
        "and query naming ORIG inside a 96-token prompt window, queries the model's own errors only"
    ),
    reason=(
        "cpu-haystack's queries were forced (0-3 natural errors in 64 summaries); this preset pulls the issue-29 "
        "levers: ORIG kept inside the prompt window for poisoned rows and queries, 96-token prompts, 3 epochs, "
        "up to 384 held-out generations per pair, LoRA only on the layers DDA tracks (the backward pass stops "
        "there); on its first development run (England->China, seed 1) the model erred in 11 of 172 in-window "
        "summaries (6.4%, below the 20% aimed at) and the run took 91.5 min, partly beside another job "
        "(docs/benchmarks/baselines.md)"
    ),
    overrides={
        **CPU_HAYSTACK.overrides,
        "data.max_prompt_tokens": 96,
        "train.epochs": 3,
        "train.lora.layers": DDA_LAYERS,
    },
    use_shared_data=True,
    n_train=1000,
    n_poison=24,
    n_hard_negatives=8,
    n_distractors=24,
    n_queries=12,
    natural_only=True,
    mention_in_window=True,
    # issue 29's remove-and-retrain: DDA against the filter a data engineer runs first (and k random rows)
    fix_methods=("dda", "unsupported"),
    gen_max_docs=384,
    gen_max_seconds=900.0,
    gen_batch_size=16,
    max_new_tokens=40,
    expected_minutes=90.0,
)

GPU_PAPER = BenchPreset(
    name="gpu-paper",
    description="The paper's setting on one GPU: Qwen2-0.5B (or a 7B model via --model) on XSum from the hub",
    reason=(
        "the paper's protocol: a pretrained LLM LoRA-tuned for 3 epochs in bf16 on XSum with 1% poisoned rows; "
        "pass --model for the paper's 7B models (~80 GB for LoRA and gradient capture at batch 4)"
    ),
    overrides={
        "model.name": "Qwen/Qwen2-0.5B",
        "model.dtype": "bfloat16",
        **SUMMARY_DATA,
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
    n_distractors=50,
    n_queries=50,
    gen_max_docs=1000,
    gen_max_seconds=900.0,
    gen_batch_size=64,
    max_new_tokens=64,
    expected_minutes=90.0,
    hardware="1 GPU (>= 24 GB for 0.5B; ~80 GB for 7B models)",
)

PRESETS: dict[str, BenchPreset] = {
    p.name: p for p in (CPU_TINY, CPU_SMALL, CPU_HAYSTACK, CPU_HAYSTACK_NATURAL, GPU_PAPER)
}


def list_presets() -> list[str]:
    return list(PRESETS)


def get_preset(name: str) -> BenchPreset:
    if name not in PRESETS:
        raise ConfigError(f"unknown bench preset '{name}' (known: {', '.join(PRESETS)})")
    return PRESETS[name]


WINDOW_KEYS = ("model.name", "model.revision", "data.max_prompt_tokens")


def with_bench_overrides(preset: BenchPreset, overrides: dict[str, Any] | None) -> BenchPreset:
    """Apply `bench.<field>` keys of `overrides` to a preset (other keys are DDAConfig keys, left alone)."""
    fields = {f.name: f for f in dataclasses.fields(BenchPreset)}
    hints = get_type_hints(BenchPreset)
    changes: dict[str, Any] = {}
    for key, value in (overrides or {}).items():
        if not key.startswith("bench.") or value is None:
            continue
        name = key[len("bench.") :]
        if name not in fields or name in ("name", "overrides"):
            known = ", ".join(sorted(set(fields) - {"name", "overrides"}))
            raise ConfigError(f"override: unknown bench key '{key}' (known: {known})")
        # Typed like every config field: '--set bench.n_train=abc' is refused here, '60' becomes 60, and lists
        # become tuples so the frozen preset stays immutable.
        changes[name] = coerce(value, hints[name], key, "override", fields[name])
    if "n_poison" in changes and "poison_rate" not in changes:
        changes["poison_rate"] = None  # setting one of the pair clears the other
    elif "poison_rate" in changes and "n_poison" not in changes:
        changes["n_poison"] = None
    if changes.get("mention_in_window", preset.mention_in_window):
        # The split measures the prompt window before any model is loaded (split.preset_window), with the preset's
        # model and prompt length: the caller's own must reach it. build_config applies them last anyway.
        window = {k: v for k, v in (overrides or {}).items() if k in WINDOW_KEYS and v is not None}
        if window:
            changes["overrides"] = {**preset.overrides, **window}
    return dataclasses.replace(preset, **changes) if changes else preset


def build_config(
    preset: BenchPreset,
    seed: int,
    model: str | None = None,
    overrides: dict[str, Any] | None = None,
    quiet: bool = False,
) -> DDAConfig:
    """The run's DDAConfig: preset overrides, then everything seeded from `seed`, then the caller's keys.

    The caller's DDAConfig keys come last so `--model` / overrides always win over the preset; `bench.*` keys
    are preset fields and are handled by `with_bench_overrides`.
    """
    values: dict[str, Any] = dict(preset.overrides)
    values.update(
        {
            "seed": seed,
            "train.seed": seed,
            "features.seed": seed,
            "quiet": quiet,
            "score.beta": preset.dda_beta,
            "score.debias_mode": preset.dda_mode,
        }
    )
    if model:
        values["model.name"] = model
    values.update({k: v for k, v in (overrides or {}).items() if not k.startswith("bench.")})
    return apply_overrides(DDAConfig(), values)
