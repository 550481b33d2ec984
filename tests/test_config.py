"""Property tests of the config and the loaders: every value is checked against its field's type and range, and
bad input ends in ConfigError/DataError naming the key or the line, never another exception."""

from __future__ import annotations

import json
import typing
from pathlib import Path

import pytest
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st

from dda.config import (
    ConfigError,
    DDAConfig,
    apply_overrides,
    config_from_dict,
    documented_yaml,
    field_docs,
    flat_fields,
    flatten,
)
from dda.data import DataError, load_queries

FIELDS = flat_fields()
TEXT = st.text(alphabet=st.characters(blacklist_categories=("Cs",), blacklist_characters="\x00"), max_size=30)


def _valid_value(tp, f):
    """A strategy of values the field must accept."""
    origin = typing.get_origin(tp)
    lo = f.metadata.get("ge") if f.metadata.get("ge") is not None else f.metadata.get("gt")
    if origin is typing.Literal:
        return st.sampled_from(typing.get_args(tp))
    if origin in (typing.Union, __import__("types").UnionType):
        inner = [a for a in typing.get_args(tp) if a is not type(None)][0]
        return st.none() | _valid_value(inner, f)
    if origin is list:
        return st.lists(st.text(alphabet="abcdefghij_", min_size=1, max_size=8), max_size=4)
    if tp is bool:
        return st.booleans()
    if tp is int:
        return st.integers(
            min_value=int(lo) + (1 if f.metadata.get("gt") is not None else 0) if lo is not None else -1000,
            max_value=10**6,
        )
    if tp is float:
        return st.floats(
            min_value=float(lo) if lo is not None else -1e6,
            max_value=1e6,
            allow_nan=False,
            exclude_min=f.metadata.get("gt") is not None,
        )
    return TEXT


@pytest.mark.parametrize("key", sorted(FIELDS))
def test_every_field_is_documented(key):
    assert FIELDS[key][2], f"{key} has no docstring under its field in dda/config.py"


@settings(max_examples=60, deadline=None)
@given(data=st.data(), key=st.sampled_from(sorted(FIELDS)))
def test_valid_values_round_trip_through_the_set_syntax(data, key):
    """What `--set key=value` gives (a string) parses back to the value, for every field and valid value."""
    tp, f, _ = FIELDS[key]
    value = data.draw(_valid_value(tp, f))
    cfg = apply_overrides(DDAConfig(), {key: value})
    assert flatten(cfg)[key] == value
    if value is None or isinstance(value, list):
        text = "null" if value is None else ",".join(value)
    elif isinstance(value, float):
        text = repr(value)
    else:
        text = str(value)
    if isinstance(value, str) and value.strip() != value or (value == "" or str(value).lower() in ("null", "none")):
        return  # strings with outer blanks, or spelling null, cannot be told apart on a command line
    reparsed = flatten(apply_overrides(DDAConfig(), {key: text}))[key]
    assert reparsed == value, f"--set {key}={text} parsed to {reparsed!r}, expected {value!r}"


@settings(max_examples=80, deadline=None)
@given(
    key=st.sampled_from(sorted(k for k, (tp, _, _) in FIELDS.items() if tp in (int, float, int | None))),
    junk=st.text(alphabet="abcxyz!?", min_size=1, max_size=6),
)
def test_non_numbers_for_numeric_fields_name_the_key(key, junk):
    with pytest.raises(ConfigError, match=rf"{key.replace('.', '[.]')} must be"):
        apply_overrides(DDAConfig(), {key: junk})


@settings(max_examples=50, deadline=None)
@given(
    key=st.sampled_from(
        sorted(
            k for k, (_, f, _) in FIELDS.items() if f.metadata.get("ge") is not None or f.metadata.get("gt") is not None
        )
    ),
    below=st.integers(1, 10**6),
)
def test_values_below_a_bound_name_the_bound(key, below):
    _, f, _ = FIELDS[key]
    bound = f.metadata.get("ge") if f.metadata.get("ge") is not None else f.metadata.get("gt")
    with pytest.raises(ConfigError, match=rf"{key.replace('.', '[.]')} must be >=? ?{bound}|must be > {bound}"):
        apply_overrides(DDAConfig(), {key: bound - below})


@settings(max_examples=60, deadline=None)
@given(
    doc=st.recursive(
        st.none() | st.booleans() | st.integers() | TEXT,
        lambda children: st.lists(children, max_size=3) | st.dictionaries(TEXT, children, max_size=3),
        max_leaves=8,
    )
)
def test_any_yaml_document_gives_a_config_or_a_config_error(doc):
    try:
        config_from_dict(doc if isinstance(doc, dict) else {"train": doc}, "fuzz.yaml")
    except ConfigError as err:
        assert str(err).startswith("fuzz.yaml")


def test_documented_yaml_loads_back_to_the_same_config():
    cfg = apply_overrides(DDAConfig(), {"score.beta": 0.4, "features.modules": ["q_proj"], "data.limit": 5})
    text = documented_yaml(cfg)
    assert config_from_dict(yaml.safe_load(text)) == cfg
    assert f"# {field_docs(type(cfg.score))['beta'][:40]}" in text


@settings(max_examples=60, deadline=None)
@given(
    rows=st.lists(
        st.fixed_dictionaries(
            {"prompt": TEXT | st.none() | st.integers(), "negative": TEXT},
            optional={"positive": TEXT | st.none(), "id": TEXT},
        ),
        max_size=5,
    )
)
def test_query_loader_gives_queries_or_a_data_error_naming_the_line(tmp_path_factory, rows):
    p: Path = tmp_path_factory.mktemp("q") / "q.jsonl"
    p.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    try:
        queries = load_queries(str(p))
    except DataError as err:
        assert str(p) in str(err)
        assert "line" in str(err) or "no queries" in str(err)
        return
    assert len(queries) == len(rows)
    for q, r in zip(queries, rows, strict=True):
        assert q.prompt == r["prompt"] and q.negative == r["negative"] and q.positive == r.get("positive")
