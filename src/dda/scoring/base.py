"""Score algebra over stored features.

Orientation (every method): an array of shape (n_queries, n_train); HIGHER = MORE RESPONSIBLE for the
query's negative (unwanted) output. Gradient scores follow the first-order reading: one SGD step on training
example z changes the loss of output y by -lr * grad l(y) . grad l(z), so a large positive
grad l(z) . grad l(negative) means training on z made the negative output more likely.
"""

from __future__ import annotations

import inspect
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from ..data import Query
from ..models import Checkpoint


@dataclass
class FeatureSet:
    """Train and query features at each checkpoint; checkpoints[0] is theta0 ('base')."""

    checkpoints: list[Checkpoint]
    train: dict[str, np.ndarray]  # name -> (n_train, d), usually a read-only memmap
    neg: dict[str, np.ndarray]  # name -> (n_queries, d)
    pos: dict[str, np.ndarray] = field(default_factory=dict)  # name -> (n_queries, d), may be empty
    # The negative side of the contrast when it is not `neg`: with features.query_tokens=diff, the loss of the
    # swapped tokens only (and `pos` likewise), while `neg` keeps the whole output for non-contrastive scorers.
    contrast_neg: dict[str, np.ndarray] = field(default_factory=dict)
    # Columns per module, in order (sums to d); None when the projection mixes modules (dense JL).
    blocks: list[int] | None = None

    def contrast(self, name: str) -> np.ndarray:
        """grad l(neg) - grad l(pos) at checkpoint `name`, (n_queries, d) float32."""
        pos = self.pos.get(name)
        if pos is None:
            raise ValueError("contrastive scoring needs a positive output for every query (or contrastive=false)")
        neg = self.contrast_neg.get(name, self.neg[name])
        return np.asarray(neg, dtype=np.float32) - np.asarray(pos, dtype=np.float32)

    @property
    def base(self) -> str:
        return self.checkpoints[0].name

    def finetuned(self, names: list[str] | str | None = None) -> list[Checkpoint]:
        """Fine-tuned checkpoints in training order; `names` filters ('epoch-1+epoch-2' or a list)."""
        cks = [c for c in self.checkpoints if c.kind != "base"]
        if isinstance(names, str):
            names = names.split("+")
        if names:
            unknown = set(names) - {c.name for c in cks}
            if unknown:
                raise ValueError(f"unknown checkpoints {sorted(unknown)}; have {[c.name for c in cks]}")
            cks = [c for c in cks if c.name in names]
        if not cks:
            raise ValueError("no fine-tuned checkpoints in the feature set")
        return cks


@dataclass
class ModelAccess:
    """What a model-backed scorer (CEA) may use: the model at theta0, the last checkpoint, and the training set
    tokenized as it was indexed. The API builds it only for scorers that declare they need the model."""

    model: Any
    formatter: Any  # dda.data.PromptFormatter
    pad_id: int
    checkpoint: Checkpoint
    train: Any  # dda.data.Tokenized
    batch_size: int
    quiet: bool = False


@dataclass
class ScoringContext:
    features: FeatureSet | None
    train_texts: list[str]
    queries: list[Query]
    model: ModelAccess | None = None  # for scorers registered with needs=("model",)
    default_checkpoints: list[str] | None = None
    train_responses: list[str] | None = None  # the responses alone (keyword counts words in them)
    train_prompts: list[str] | None = None  # the prompts alone (unsupported/signature ask what a prompt says)


def module_normalized(x: np.ndarray, blocks: list[int]) -> np.ndarray:
    """Each row's per-module slices scaled to unit L2 norm (an all-zero slice stays zero).

    Raw gradient dot products are dominated by the few modules with the largest gradients; with every module
    at unit norm, a dot product becomes the sum over modules of per-module cosines, so each layer votes once.
    """
    x = np.asarray(x, dtype=np.float32)
    if sum(blocks) != x.shape[1]:
        raise ValueError(f"module blocks cover {sum(blocks)} columns but features have {x.shape[1]}")
    starts = np.concatenate([[0], np.cumsum(blocks)[:-1]]).astype(np.int64)
    norms = np.sqrt(np.add.reduceat(x.astype(np.float64) ** 2, starts, axis=1)).astype(np.float32)
    return x / np.repeat(np.maximum(norms, 1e-30), blocks, axis=1)


def dot_scores(
    train: np.ndarray, queries: np.ndarray, block_bytes: int = 1 << 26, blocks: list[int] | None = None
) -> np.ndarray:
    """queries @ train.T computed over row blocks of `train`, so memory stays bounded for a memmap.

    With `blocks`, both sides are module-normalised first (see `module_normalized`)."""
    if blocks is not None:
        queries = module_normalized(queries, blocks)
    q = torch.from_numpy(np.ascontiguousarray(queries, dtype=np.float32))
    n, d = train.shape
    rows = max(1, block_bytes // max(1, d * train.dtype.itemsize))
    out = np.empty((q.shape[0], n), dtype=np.float32)
    for start in range(0, n, rows):
        chunk = np.array(train[start : start + rows], dtype=np.float32)  # copy: memmaps are read-only
        if blocks is not None:
            chunk = module_normalized(chunk, blocks)
        out[:, start : start + rows] = (q @ torch.from_numpy(chunk).T).numpy()
    return out


def row_norms(train: np.ndarray, block_bytes: int = 1 << 26) -> np.ndarray:
    n, d = train.shape
    rows = max(1, block_bytes // max(1, d * train.dtype.itemsize))
    return np.concatenate(
        [np.linalg.norm(np.asarray(train[s : s + rows], dtype=np.float32), axis=1) for s in range(0, n, rows)]
    )


# ------------------------------------------------------------------------------------------ method registry

ScoreFn = Callable[..., np.ndarray]
# What a method is told about a query, in words, from its bound parameters and the features' query_tokens.
Information = Callable[[dict[str, Any], str], str]
NEEDS = ("features", "model", "text")
# The settings of ScoreConfig that are not scorer parameters (what to score, which checkpoints, how many to show).
_NOT_SCORER_SETTINGS = ("methods", "checkpoints", "top_k", "pool")


def default_information(params: dict[str, Any], query_tokens: str) -> str:
    """The information of a scorer registered without its own: the negative output, or its differing tokens
    when the scorer takes query_tokens=diff."""
    return "negative's differing tokens" if params.get("query_tokens") == "diff" else "whole negative output"


def _first_line(doc: str | None) -> str:
    """The first sentence of a docstring, on one line."""
    para = " ".join((doc or "").strip().split("\n\n")[0].split())
    return re.split(r"(?<=[.!?])\s+(?=[A-Z`])", para)[0]


@dataclass(frozen=True)
class Scorer:
    """A registered method: its function, what it needs from the context (gradient features, the model, the
    texts), its help line and what its query tells it. The API computes only what the requested scorers need."""

    name: str
    fn: ScoreFn
    needs: frozenset[str]
    help: str = ""
    information: Information = default_information

    @property
    def params(self) -> dict[str, inspect.Parameter]:
        return {k: p for k, p in inspect.signature(self.fn).parameters.items() if k != "ctx"}

    @property
    def defaults(self) -> dict[str, Any]:
        """The scorer's own parameter defaults (its signature's)."""
        return {k: p.default for k, p in self.params.items() if p.default is not inspect.Parameter.empty}

    @property
    def foldable(self) -> bool:
        """A sum of gradient dot products (`scoring.gradient.linear`): folded by search, split by explain."""
        return getattr(self.fn, "terms", None) is not None


@dataclass(frozen=True)
class Preset:
    """A named variant of a scorer: its parameters, whether it is one of the paper's ablations, its help line."""

    name: str
    scorer: str
    params: dict[str, Any]
    ablation: bool = False
    help: str = ""


REGISTRY: dict[str, Scorer] = {}
# Named variants: the paper's ablations are parameter values of one scorer, not copies of code.
PRESETS: dict[str, Preset] = {}


def register(
    name: str,
    needs: tuple[str, ...] = ("features",),
    *,
    help: str | None = None,
    information: Information | str | None = None,
    ablations: dict[str, dict[str, Any]] | None = None,
    **presets: dict[str, Any],
) -> Callable[[ScoreFn], ScoreFn]:
    """Register scorer `name`. `help`: its line in `dda attribute --help` (default: the first paragraph of the
    function's docstring); `information`: what its query tells it, a text or a function of (parameters,
    query_tokens) (default `default_information`); `ablations`: named variants that are the paper's ablations;
    other keywords: named variants (presets), e.g. bm25_diff={"query": "diff"}."""
    unknown = set(needs) - set(NEEDS)
    if unknown:
        raise ValueError(f"scorer {name}: unknown needs {sorted(unknown)} (known: {NEEDS})")
    if isinstance(information, str):
        text = information
        information = lambda params, query_tokens: text  # noqa: E731
    info = information or default_information

    def deco(fn: ScoreFn) -> ScoreFn:
        line = help if help is not None else _first_line(fn.__doc__)
        REGISTRY[name] = Scorer(name, fn, frozenset(needs), line or name, info)
        for ablation, variants in ((True, ablations or {}), (False, presets)):
            for preset_name, params in variants.items():
                PRESETS[preset_name] = Preset(preset_name, name, dict(params), ablation, f"{name}({_args(params)})")
        return fn

    return deco


def _args(params: dict[str, Any]) -> str:
    return ",".join(f"{k}={str(v).lower() if isinstance(v, bool) else v}" for k, v in params.items())


def method_names() -> list[str]:
    """Every registered name, each scorer followed by its presets, in registration order."""
    out: list[str] = []
    for name in REGISTRY:
        out += [name] + [p.name for p in PRESETS.values() if p.scorer == name]
    return out


def ablations() -> list[str]:
    """The paper's ablations (presets registered as such), in registration order."""
    return [p.name for p in PRESETS.values() if p.ablation]


def foldable_methods() -> list[str]:
    """Scorers that are sums of gradient dot products: `dda search` folds them, `dda.explain` splits them."""
    return [n for n, s in REGISTRY.items() if s.foldable]


def methods_help() -> str:
    """One line per registered method, for `dda attribute --help` and the docs."""
    lines = []
    for name in method_names():
        line = REGISTRY[name].help if name in REGISTRY else PRESETS[name].help
        lines.append(f"{name}: {line.rstrip('.')}")
    return "; ".join(lines)


def score_defaults(score: Any) -> dict[str, Any]:
    """The config's score settings (a ScoreConfig) that are scorer parameters: what every method is called with
    before its spec's own parameters (each scorer takes those it accepts, `method_params`)."""
    return {k: v for k, v in vars(score).items() if k not in _NOT_SCORER_SETTINGS}


def query_information(spec: str, query_tokens: str) -> str:
    """What method `spec` is told about the query, in words (its registration's `information`)."""
    _, name, params = parse_method(spec)
    return REGISTRY[name].information(params, query_tokens)


_SPEC_RE = re.compile(r"^([A-Za-z_][\w@.\-]*)(?:\((.*)\))?$")


def parse_value(text: str) -> Any:
    low = text.strip().lower()
    if low in ("true", "false"):
        return low == "true"
    if low in ("none", "null"):
        return None
    try:
        return int(text)
    except ValueError:
        pass
    try:
        return float(text)
    except ValueError:
        return text.strip()


def parse_method(spec: str) -> tuple[str, str, dict[str, Any]]:
    """'dda(beta=0.4,debias_mode=cross)' -> (label, scorer name, params). Presets expand to their scorer.

    Parameters are bound against the scorer's signature here, so a typo fails before any gradient is taken."""
    m = _SPEC_RE.match(spec.strip())
    if not m:
        raise ValueError(f"bad method spec '{spec}' (expected name or name(key=value,...))")
    name, arg_text = m.group(1), m.group(2)
    params: dict[str, Any] = {}
    if name in PRESETS:
        name, preset = PRESETS[name].scorer, dict(PRESETS[name].params)
        params.update(preset)
    if name not in REGISTRY:
        known = sorted(set(REGISTRY) | set(PRESETS))
        raise ValueError(f"unknown method '{m.group(1)}' (known: {', '.join(known)})")
    if arg_text:
        for part in arg_text.split(","):
            if "=" not in part:
                raise ValueError(f"bad parameter '{part}' in '{spec}' (expected key=value)")
            k, v = part.split("=", 1)
            params[k.strip()] = parse_value(v)
    accepted = REGISTRY[name].params
    bad = set(params) - set(accepted)
    if bad:
        raise ValueError(f"method '{spec.strip()}': unknown parameters {sorted(bad)} (accepted: {sorted(accepted)})")
    for k, v in params.items():
        _check_param(spec.strip(), k, v, accepted[k].default)
    return spec.strip(), name, params


def _check_param(label: str, key: str, value: Any, default: Any) -> None:
    """A number where the default is a number, and so on: 'dda(beta=abc)' fails at parse time."""
    if default is None or default is inspect.Parameter.empty or value is None:
        return
    if isinstance(default, bool):
        ok = isinstance(value, bool) or (isinstance(value, str) and value in ("none", "std", "module", "auto"))
    elif isinstance(default, (int, float)):
        ok = isinstance(value, (int, float)) and not isinstance(value, bool)
    else:
        ok = True
    if not ok:
        raise ValueError(f"method '{label}': {key}={value!r} should be like its default {default!r}")


def method_needs(specs: list[str]) -> set[str]:
    return set().union(*(REGISTRY[parse_method(s)[1]].needs for s in specs)) if specs else set()


def method_params(spec: str, defaults: dict[str, Any] | None = None) -> tuple[str, ScoreFn, dict[str, Any]]:
    """(label, scorer function, parameters): `defaults` (config values) the scorer accepts, then the spec's own
    (checked against the scorer's signature by `parse_method`)."""
    label, name, params = parse_method(spec)
    scorer = REGISTRY[name]
    merged = {k: v for k, v in (defaults or {}).items() if k in scorer.params}
    merged.update(params)
    return label, scorer.fn, merged


def run_method(spec: str, ctx: ScoringContext, defaults: dict[str, Any] | None = None) -> np.ndarray:
    label, fn, merged = method_params(spec, defaults)
    scores = np.asarray(fn(ctx, **merged), dtype=np.float64)
    if scores.shape != (len(ctx.queries), len(ctx.train_texts)):
        raise RuntimeError(
            f"method '{label}' returned shape {scores.shape}, expected {(len(ctx.queries), len(ctx.train_texts))}"
        )
    return scores
