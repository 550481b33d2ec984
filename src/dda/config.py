"""One config tree drives the CLI, the Python API and YAML files; it is written beside every output.

Every setting is defined once, here: its type (``Literal`` for choices), its default, its range and, in the
docstring under it, its documentation, which `dda config` and the CLI's help print. Values from YAML, from
``--set key=value`` and from the API go through one coercion step that checks each field against its type and
range, so a bad value fails before any model loads, with the source and the dotted key named.
"""

from __future__ import annotations

import ast
import dataclasses
import difflib
import functools
import inspect
import types
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Union, get_args, get_origin, get_type_hints

import yaml

from .families import GENERIC

DEFAULT_MODEL = "builtin:smollm2-135m-instruct"
DEFAULT_DATA = "builtin:xsum"
# The modules and LoRA targets a config tracks unless told otherwise: the generic model family's, which are the
# llama/qwen2/mistral names (the default model is a llama). A config is read before any model is loaded, so it
# cannot default to the loaded model's family; `features.capture.select_modules` names that family's modules
# when these match nothing.
ALL_PROJ = list(GENERIC.tracked_modules)
DEFAULT_LORA_TARGETS = list(GENERIC.lora_targets)
SUMMARY_INSTRUCTION = (
    "You are an expert at summarising news articles. Write a succinct, accurate one-sentence summary "
    "of the following document, stating only what the document supports."
)


class ConfigError(ValueError):
    """A config value is invalid; the message names the source and the key."""


def bounded(default: Any, *, ge: float | None = None, gt: float | None = None) -> Any:
    """A field with a lower bound, checked by `coerce` (``ge``: >=, ``gt``: >)."""
    return field(default=default, metadata={"ge": ge, "gt": gt})


@dataclass
class ModelConfig:
    name: str = DEFAULT_MODEL
    """Hub id, local directory, path to a .gguf file, or builtin:NAME (builtin:smollm2-135m-instruct)."""
    gguf_file: str | None = None
    """File name of a .gguf inside `name` when `name` is a directory or hub id."""
    revision: str | None = None
    """Hub revision (branch, tag or commit)."""
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = "auto"
    """Weights dtype; auto: float32 on CPU, bfloat16 on CUDA."""
    device: str = "auto"
    """auto (cuda if available, else cpu), cpu, cuda or cuda:N."""
    threads: int | None = bounded(None, ge=1)
    """torch intra-op threads on CPU (null: all cores)."""


@dataclass
class DataConfig:
    path: str = DEFAULT_DATA
    """.jsonl/.json/.csv/.parquet file, a saved `datasets` directory, hub:NAME, or builtin:xsum."""
    split: str = "train"
    """Split to read from a `datasets` source."""
    format: Literal["auto", "messages", "prompt_completion", "text", "fields"] = "auto"
    """How a row becomes tokens. messages: TRL's conversations ({"messages": [{"role", "content"}, ...]});
    prompt_completion: TRL's {"prompt", "completion"}, both strings or both message lists; text: language
    modelling on {"text"}; fields: `prompt_field` and `response_field` strings rendered with `template` and
    `instruction` (dda's own format: the demo and the benchmark use it). auto: fields when the first row has
    `prompt_field` and `response_field` (unless they are prompt and completion), else the first of messages,
    prompt_completion, text whose keys it has."""
    loss_on: Literal["auto", "completion", "assistant", "all"] = "auto"
    """Tokens the training loss covered, as set in your trainer. auto: TRL SFTTrainer's defaults (the completion
    for prompt_completion and fields, every token for messages and text); completion: the completion only
    (completion_only_loss=True); assistant: assistant turns only (assistant_only_loss=True; with conversational
    prompt_completion, the assistant tokens of the completion); all: every token (completion_only_loss=False)."""
    max_length: int | None = bounded(None, ge=1)
    """Your trainer's max_length: rows are cut to this many tokens, keeping the start, as TRL does (TRL's
    SFTConfig default is 1024). null: no cut below the model's context. Every cut is counted."""
    id_field: str = "id"
    """Field holding a unique example id (row number when absent)."""
    prompt_field: str = "document"
    """format=fields: the field holding the prompt (the model's input)."""
    response_field: str = "summary"
    """format=fields: the field holding the response (the loss covers these tokens only)."""
    template: str = "chat"
    """format=fields: chat (the tokenizer's chat template), plain, or a str.format string with {prompt} and
    {instruction}."""
    instruction: str | None = None
    """A system message put before every prompt (fields; conversational rows get it as their first message
    unless they have one). null: none, as the model was trained without one; the demo and benchmark presets set
    dda.config.SUMMARY_INSTRUCTION."""
    max_prompt_tokens: int | None = bounded(None, ge=1)
    """format=fields: prompts are cut to this many tokens before templating (null: no cut); counted."""
    max_response_tokens: int | None = bounded(None, ge=1)
    """format=fields: responses are cut to this many tokens (null: no cut); counted."""
    limit: int | None = bounded(None, ge=1)
    """Read only the first N examples (null: all)."""


# What the demo and the benchmark presets train and score on: XSum's document/summary rows in dda's own format,
# with the summary instruction as the system message (the defaults before data formats were read as trained).
SUMMARY_DATA: dict[str, Any] = {
    "data.format": "fields",
    "data.prompt_field": "document",
    "data.response_field": "summary",
    "data.template": "chat",
    "data.instruction": SUMMARY_INSTRUCTION,
}


@dataclass
class LoraSettings:
    r: int = bounded(16, ge=1)
    """LoRA rank."""
    alpha: int = bounded(32, ge=1)
    """LoRA alpha (scale alpha / r)."""
    dropout: float = bounded(0.0, ge=0.0)
    """Dropout on the LoRA input."""
    target_modules: list[str] = field(default_factory=lambda: list(DEFAULT_LORA_TARGETS))
    """Linear-layer name suffixes that get adapters (default: the 7 projections of a llama/qwen2/mistral layer;
    other architectures: dda.families)."""
    layers: str = "all"
    """Decoder layers that get adapters, in features.layers' syntax (all | last:N | last:1/3 | first:N | indices).
    Adapters only on the layers DDA tracks (e.g. last:1/3) let the fine-tune's backward pass stop at the first of
    them, as the gradient capture's does."""


@dataclass
class TrainConfig:
    method: Literal["lora", "full"] = "lora"
    """lora (peft adapters) or full fine-tuning."""
    epochs: int = bounded(3, ge=1)
    """Epochs; one checkpoint is saved after each."""
    lr: float = bounded(5e-4, gt=0.0)
    """Peak learning rate (AdamW)."""
    scheduler: Literal["constant", "linear"] = "constant"
    """Learning-rate schedule after warm-up."""
    warmup_steps: int = bounded(0, ge=0)
    """Linear warm-up steps."""
    batch_size: int = bounded(8, ge=1)
    """Examples per optimiser step."""
    weight_decay: float = bounded(0.0, ge=0.0)
    """AdamW weight decay."""
    max_grad_norm: float = bounded(1.0, ge=0.0)
    """Gradient clipping norm (0: none)."""
    seed: int = 0
    """Shuffle and dropout seed."""
    lora: LoraSettings = field(default_factory=LoraSettings)
    """LoRA settings (train.method=lora)."""


@dataclass
class FeatureConfig:
    modules: list[str] = field(default_factory=lambda: list(ALL_PROJ))
    """Linear-layer name suffixes whose weight gradients are features (default: the 7 projections of a
    llama/qwen2/mistral layer; other architectures: dda.families)."""
    layers: str = "last:1/3"
    """all | last:N | last:1/3 (a fraction of the depth) | first:N | comma list of layer indices. The backward
    pass stops at the first selected layer; the last third also scored best on the benchmark (README)."""
    projection: Literal["kronecker", "dense", "identity"] = "kronecker"
    """kronecker (two-sided, per module), dense (JL of the whole gradient, blockwise) or identity (exact)."""
    proj_dim: int = bounded(64, ge=1)
    """kronecker: dims per side (module sketch proj_dim**2, then module_dim); dense: total dims."""
    module_dim: int | None = bounded(256, ge=0)
    """kronecker only: compress each module's proj_dim**2 sketch to this many dims (two-stage sketch); 0 or
    null keeps proj_dim**2. Why the default: docs/concepts/design.md, "How gradients are taken"."""
    seed: int = 0
    """Projection seed; train and query features must share it."""
    batch_size: int = bounded(8, ge=1)
    """Examples per forward/backward pass (when batch_tokens is null)."""
    batch_tokens: int | None = bounded(None, ge=0)
    """Batch by padded tokens (rows x longest row) instead of batch_size rows; 0 = auto (65,536 on CUDA, rows on
    CPU). On CUDA out-of-memory the batch is halved, retried and kept lower."""
    dtype: Literal["float32", "float16"] = "float32"
    """Storage dtype of the feature files."""
    query_tokens: Literal["diff", "all"] = "diff"
    """Response tokens of a contrastive query that carry its loss: diff (where negative and positive differ)
    or all (the paper). Queries without a positive always use all their tokens. Why: README."""


@dataclass
class ScoreConfig:
    methods: list[str] = field(default_factory=lambda: ["dda", "grad_dot", "grad_cos", "tracin", "trak", "bm25"])
    """Methods to score, e.g. dda, dda(beta=0.4), tracin, trak, bm25, cea (`dda attribute --help`)."""
    beta: float = -1.0
    """DDA debias weight: score = mean over checkpoints - beta * theta0 score. beta < 0 ADDS the theta0 score
    (measured best here, README); the paper subtracts it (beta ~ 0.4)."""
    debias_mode: Literal["base", "cross", "query0"] = "base"
    """theta0 term: base (both gradients at theta0), cross (train at theta0, query at theta_k) or query0 (train
    at theta_k, query at theta0)."""
    normalize: Literal["auto", "none", "std", "module"] = "auto"
    """auto (module when features allow) | none | std (each per-checkpoint score vector at unit std) | module
    (each module's gradient at unit norm before the dot product)."""
    checkpoints: list[str] | None = None
    """Fine-tuned checkpoints to average (null: all)."""
    trak_lambda: float = bounded(1e-2, gt=0.0)
    """TRAK ridge, relative to the mean diagonal of the Gram matrix."""
    cea_lr: float = bounded(1e-4, gt=0.0)
    """CEA: learning rate of its optimiser steps."""
    cea_steps: int = bounded(3, ge=1)
    """CEA: optimiser steps on the erroneous and on the corrected outputs."""
    top_k: int = bounded(10, ge=1)
    """Documents per query in rankings and printed tables."""
    pool: bool = True
    """With several queries, also rank by the mean of their scores (printed, and ranking.json's `pooled_top`):
    for queries of one mistake it is less noisy than any one of them; turn it off for unrelated queries."""


@dataclass
class ExplainConfig:
    top_k: int = bounded(10, ge=1)
    """Documents per query whose scores are split over their tokens (each re-run once per checkpoint)."""
    query_token_limit: int = bounded(8, ge=1)
    """A query side with at most this many loss tokens is also split over them (the differing words)."""
    align: Literal["target", "input"] = "target"
    """target: a position's part shown on the token it predicts; input: on the token it reads."""


@dataclass
class SearchConfig:
    backend: Literal["exact", "sketch", "faiss"] = "exact"
    """exact (streaming scan of every row), sketch or faiss (an index's candidates re-ranked exactly), or a
    backend registered with dda.scoring.backends.register_backend."""
    k: int = bounded(100, ge=1)
    """Rows per query returned by `dda search`."""
    candidates: int = bounded(1024, ge=1)
    """sketch/faiss: rows per query re-ranked exactly from the stores."""
    nprobe: int = bounded(32, ge=1)
    """faiss: inverted lists scanned per query."""
    sketch_dim: int = bounded(256, ge=1)
    """Index: dims of the seeded Gaussian projection of each concatenated row."""
    nlist: int | None = bounded(None, ge=1)
    """faiss: inverted lists (null: about sqrt(rows))."""
    seed: int = 0
    """Index: projection seed."""


@dataclass
class FixConfig:
    method: str = "dda"
    """Method whose top-ranked documents `dda fix` removes (a spec that `dda attribute` scored)."""
    k: int = bounded(10, ge=1)
    """Training documents to remove."""
    combine: Literal["mean-rank", "union"] = "mean-rank"
    """Several queries to one removal set: the k best by mean rank over the queries, or the union of the
    per-query rankings taken round-robin until k documents."""
    random_control: bool = True
    """Also retrain without k random documents (seeded): the control without which no drop means anything."""
    max_new_tokens: int = bounded(48, ge=1)
    """Greedy generation length when checking whether a model still says the negative."""


@dataclass
class DDAConfig:
    """Every setting of dda, one section per stage: model, data, train, features, score, explain, search, fix.

    Build it from defaults (`DDAConfig()`), a YAML file (`load_config`), a dict (`config_from_dict`) or dotted
    overrides (`apply_overrides`); every value is checked against its field's type, choices and range."""

    model: ModelConfig = field(default_factory=ModelConfig)
    """The base model theta0."""
    data: DataConfig = field(default_factory=DataConfig)
    """Training data and how it is templated and tokenized."""
    train: TrainConfig = field(default_factory=TrainConfig)
    """Fine-tuning (`dda finetune`)."""
    features: FeatureConfig = field(default_factory=FeatureConfig)
    """Per-example gradient features (`dda index`)."""
    score: ScoreConfig = field(default_factory=ScoreConfig)
    """Scoring (`dda attribute`)."""
    explain: ExplainConfig = field(default_factory=ExplainConfig)
    """Token-level attribution (`dda attribute --explain`, `dda show --explain`)."""
    search: SearchConfig = field(default_factory=SearchConfig)
    """Top-k over stores of any size (`dda search`, `dda build-index`)."""
    fix: FixConfig = field(default_factory=FixConfig)
    """Remove the blamed documents and retrain (`dda fix`)."""
    seed: int = 0
    """Global torch seed."""
    quiet: bool = False
    """No progress output or tables."""

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


# ------------------------------------------------------------------------------------------- introspection


@functools.cache
def field_docs(cls: type) -> dict[str, str]:
    """{field name: the docstring under it}, read from the class source (Bergson-style field docs)."""
    tree = ast.parse(inspect.getsource(cls))
    body = tree.body[0].body  # type: ignore[attr-defined]
    docs = {}
    for stmt, nxt in zip(body, body[1:], strict=False):
        if (
            isinstance(stmt, ast.AnnAssign)
            and isinstance(stmt.target, ast.Name)
            and isinstance(nxt, ast.Expr)
            and isinstance(nxt.value, ast.Constant)
            and isinstance(nxt.value.value, str)
        ):
            docs[stmt.target.id] = " ".join(nxt.value.value.split())
    return docs


def flat_fields(cls: type = DDAConfig, prefix: str = "") -> dict[str, tuple[Any, dataclasses.Field, str]]:
    """{dotted key: (type, field, doc)} for every leaf setting."""
    hints = get_type_hints(cls)
    out = {}
    for f in dataclasses.fields(cls):
        key = f"{prefix}{f.name}"
        if dataclasses.is_dataclass(hints[f.name]):
            out.update(flat_fields(hints[f.name], key + "."))
        else:
            out[key] = (hints[f.name], f, field_docs(cls).get(f.name, ""))
    return out


def documented_yaml(cfg: DDAConfig) -> str:
    """The config as YAML with each field's documentation as a comment above it."""
    lines: list[str] = []

    def walk(obj: Any, indent: str) -> None:
        docs = field_docs(type(obj))
        for f in dataclasses.fields(obj):
            value = getattr(obj, f.name)
            for chunk in _wrap(docs.get(f.name, ""), 110 - len(indent)):
                lines.append(f"{indent}# {chunk}")
            if dataclasses.is_dataclass(value):
                lines.append(f"{indent}{f.name}:")
                walk(value, indent + "  ")
            else:
                dumped = yaml.safe_dump({f.name: value}, sort_keys=False, allow_unicode=True, width=10**6)
                lines.extend(indent + ln for ln in dumped.rstrip("\n").split("\n"))

    walk(cfg, "")
    return "\n".join(lines) + "\n"


def _wrap(text: str, width: int) -> list[str]:
    import textwrap

    return textwrap.wrap(text, width) if text else []


# ---------------------------------------------------------------------------------------------- coercion


_TRUE, _FALSE = {"true", "yes", "on", "1"}, {"false", "no", "off", "0"}

# Registries above the config (they sit in higher import layers, so the config cannot import them) add the names
# a user registers to a Literal field's choices: {dotted key: function giving every registered name}. The Literal
# keeps listing the built-in choices, which the docs and `dda config` print; tests check it against the registry.
_REGISTERED_CHOICES: dict[str, Callable[[], Iterable[str]]] = {}


def register_choices(key: str, names: Callable[[], Iterable[str]]) -> None:
    """Accept every name `names()` gives (read at each check, so later registrations count) as a value of the
    Literal field `key` ("search.backend"), besides the Literal's own choices."""
    _REGISTERED_CHOICES[key] = names


def literal_choices(tp: Any, key: str) -> tuple[Any, ...]:
    """The accepted values of the Literal field `key`: the Literal's, then any registered beyond them."""
    built_in = get_args(tp)
    extra = _REGISTERED_CHOICES.get(key)
    return built_in + tuple(n for n in (extra() if extra else ()) if n not in built_in)


def _type_name(tp: Any) -> str:
    if get_origin(tp) is Literal:
        return " | ".join(repr(a) for a in get_args(tp))
    if get_origin(tp) in (Union, types.UnionType):
        return " or ".join(_type_name(a) for a in get_args(tp))
    if get_origin(tp) is list:
        return f"list of {_type_name(get_args(tp)[0])}"
    return "null" if tp is type(None) else getattr(tp, "__name__", str(tp))


def coerce(value: Any, tp: Any, key: str, where: str, f: dataclasses.Field | None = None) -> Any:
    """`value` as type `tp`, or a ConfigError naming `where` and `key`. Strings (from --set or the CLI) are
    parsed by the field's type, so 'a,b' stays one string for a str field and becomes a list for a list one."""
    bad = ConfigError(f"{where}: {key} must be {_type_name(tp)}, got {value!r}")
    origin = get_origin(tp)
    if origin in (Union, types.UnionType):
        options = get_args(tp)
        if value is None or (isinstance(value, str) and value.strip().lower() in ("null", "none")):
            if type(None) in options:
                return None
            raise bad
        for option in options:
            if option is type(None):
                continue
            try:
                parsed = coerce(value, option, key, where)
            except ConfigError:
                continue
            return _check_bounds(parsed, key, where, f)
        raise bad
    if origin is Literal:
        accepted = literal_choices(tp, key)
        if value in accepted or (isinstance(value, str) and value.strip() in accepted):
            return value.strip() if isinstance(value, str) else value
        raise ConfigError(f"{where}: {key} must be one of {', '.join(map(str, accepted))}; got {value!r}")
    if origin in (list, tuple):  # tuple[X, ...]: the frozen bench presets' sequences
        items = [x.strip() for x in value.split(",") if x.strip()] if isinstance(value, str) else value
        if not isinstance(items, (list, tuple)):
            raise bad
        parsed = [coerce(x, get_args(tp)[0], key, where) for x in items]
        return tuple(parsed) if origin is tuple else parsed
    if tp is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.strip().lower() in _TRUE | _FALSE:
            return value.strip().lower() in _TRUE
        raise bad
    if tp in (int, float):
        if isinstance(value, str):
            try:
                value = tp(value.strip())
            except ValueError:
                raise bad from None
        accepted = (int,) if tp is int else (int, float)
        if isinstance(value, bool) or not isinstance(value, accepted) or value != value:  # NaN != NaN
            raise bad
        value = tp(value)
    elif tp is str and not isinstance(value, str):
        raise bad
    return _check_bounds(value, key, where, f)


def _check_bounds(value: Any, key: str, where: str, f: dataclasses.Field | None) -> Any:
    if f is not None and isinstance(value, (int, float)):
        ge, gt = f.metadata.get("ge"), f.metadata.get("gt")
        if ge is not None and value < ge:
            raise ConfigError(f"{where}: {key} must be >= {ge}, got {value!r}")
        if gt is not None and value <= gt:
            raise ConfigError(f"{where}: {key} must be > {gt}, got {value!r}")
    return value


def _build(cls: type, values: Any, where: str, prefix: str = "") -> Any:
    if not isinstance(values, dict):
        section = prefix.rstrip(".") or "the config"
        raise ConfigError(f"{where}: {section} must be a mapping of keys to values, got {type(values).__name__}")
    hints = get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    kwargs: dict[str, Any] = {}
    for key, value in values.items():
        dotted = f"{prefix}{key}"
        if key not in fields:
            raise ConfigError(f"{where}: unknown key '{dotted}'{_suggest(dotted)}")
        tp = hints[key]
        if dataclasses.is_dataclass(tp):
            kwargs[key] = _build(tp, {} if value is None else value, where, dotted + ".")
        else:
            kwargs[key] = coerce(value, tp, dotted, where, fields[key])
    return cls(**kwargs)


def _suggest(dotted: str) -> str:
    close = difflib.get_close_matches(
        dotted, list(flat_fields()) + [f.name for f in dataclasses.fields(DDAConfig)], n=1, cutoff=0.6
    )
    return f" (did you mean '{close[0]}'?)" if close else " (`dda config` lists every key)"


def config_from_dict(values: dict[str, Any] | None, source: str = "<dict>") -> DDAConfig:
    """A DDAConfig from nested dicts (`{"score": {"beta": 0.4}}`), each value checked; an unknown key or a bad
    value raises ConfigError naming `source` and the dotted key."""
    return _build(DDAConfig, values if values is not None else {}, source)


def load_config(path: str | Path) -> DDAConfig:
    """A DDAConfig from a YAML file (as `dda config` prints it); errors name the file, the line and the key."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(f"{path}: config file not found") from None
    except UnicodeDecodeError as err:
        raise ConfigError(f"{path}: not UTF-8 text (byte {err.start})") from None
    try:
        values = yaml.safe_load(text)
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        line = f", line {mark.line + 1}" if mark is not None else ""
        raise ConfigError(f"{path}{line}: invalid YAML: {getattr(err, 'problem', None) or err}") from err
    return config_from_dict({} if values is None else values, str(path))


def apply_overrides(cfg: DDAConfig, overrides: dict[str, Any], source: str = "override") -> DDAConfig:
    """Set dotted keys (e.g. "score.beta") on a copy of cfg (None sets an optional field to null). String values
    are parsed by the field's type (what `--set key=value` gives)."""
    values = cfg.to_dict()
    known = flat_fields()
    for dotted, value in overrides.items():
        if dotted not in known and dotted not in values:
            raise ConfigError(f"{source}: unknown key '{dotted}'{_suggest(dotted)}")
        node = values
        *parents, leaf = dotted.split(".")
        for p in parents:
            node = node[p]
        node[leaf] = value
    return config_from_dict(values, source)


def parse_set_options(items: list[str] | None) -> dict[str, str]:
    """['train.epochs=2', ...] -> {'train.epochs': '2'}; values stay strings until their field's type parses
    them, so a comma inside a string setting is kept."""
    out: dict[str, str] = {}
    for item in items or []:
        key, sep, raw = item.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"--set expects key=value, got '{item}'")
        out[key.strip()] = raw
    return out


def changed_from_default(cfg: DDAConfig) -> dict[str, Any]:
    """{dotted key: value} of every setting that differs from the default."""
    ours, default = _flatten(cfg.to_dict()), _flatten(DDAConfig().to_dict())
    return {k: v for k, v in ours.items() if default.get(k) != v}


def _flatten(values: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out = {}
    for k, v in values.items():
        if isinstance(v, dict):
            out.update(_flatten(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def flatten(cfg: DDAConfig) -> dict[str, Any]:
    return _flatten(cfg.to_dict())
