"""Readers, field mapping, templates and the response-only loss mask; errors name file, line and field."""

from __future__ import annotations

import json

import pytest
from conftest import make_tokenizer

from dda.config import ConfigError, DataConfig, load_config
from dda.data import DataError, PromptFormatter, focus_on_difference, load_examples, load_queries, read_records


def _write_jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def test_jsonl_csv_parquet_give_the_same_examples(tmp_path):
    rows = [
        {"id": "a", "document": "the team won", "summary": "team won"},
        {"id": "b", "document": "the bank price", "summary": "price up"},
    ]
    j = _write_jsonl(tmp_path / "d.jsonl", rows)
    import pandas as pd

    pd.DataFrame(rows).to_csv(tmp_path / "d.csv", index=False)
    pd.DataFrame(rows).to_parquet(tmp_path / "d.parquet")
    import datasets

    datasets.Dataset.from_list(rows).save_to_disk(str(tmp_path / "ds"))
    got = [
        load_examples(DataConfig(path=str(p))) for p in (j, tmp_path / "d.csv", tmp_path / "d.parquet", tmp_path / "ds")
    ]
    assert all(g == got[0] for g in got) and got[0][1].response == "price up"


def test_field_mapping(tmp_path):
    p = _write_jsonl(tmp_path / "x.jsonl", [{"uid": 7, "text": "hello there", "answer": "hi"}])
    ex = load_examples(DataConfig(path=str(p), id_field="uid", prompt_field="text", response_field="answer"))
    assert (ex[0].id, ex[0].prompt, ex[0].response) == ("7", "hello there", "hi")


def test_errors_name_file_line_and_field(tmp_path):
    p = tmp_path / "bad.jsonl"
    p.write_text(
        json.dumps({"id": "1", "document": "x", "summary": "y"})
        + "\n\n"
        + json.dumps({"id": "2", "document": "x"})
        + "\n"
    )
    with pytest.raises(DataError, match=r"bad\.jsonl, line 3: missing field 'summary'"):
        load_examples(DataConfig(path=str(p)))
    p.write_text('{"id": "1", "document": "x", "summary": "y"}\n{not json\n')
    with pytest.raises(DataError, match=r"bad\.jsonl, line 2: invalid JSON"):
        read_records(str(p))
    p.write_text(json.dumps({"id": "1", "document": "x", "summary": 5}) + "\n")
    with pytest.raises(DataError, match=r"line 1: field 'summary' must be a string"):
        load_examples(DataConfig(path=str(p)))
    q = _write_jsonl(tmp_path / "q.jsonl", [{"prompt": "p", "positive": "x"}])
    with pytest.raises(DataError, match=r"q\.jsonl, line 1: missing field 'negative'"):
        load_queries(str(q))
    with pytest.raises(DataError, match="file not found"):
        read_records(str(tmp_path / "missing.jsonl"))


def test_config_errors_name_file_and_key(tmp_path):
    p = tmp_path / "c.yaml"
    p.write_text("train:\n  epoch: 3\n")
    with pytest.raises(ConfigError, match=r"c\.yaml: unknown key 'train.epoch' \(did you mean 'train.epochs'\?\)"):
        load_config(p)
    p.write_text("features:\n  projection: fancy\n")
    with pytest.raises(ConfigError, match="features.projection"):
        load_config(p)


def test_loss_mask_covers_response_only_and_truncation_is_counted():
    tok = make_tokenizer()
    fmt = PromptFormatter(tok, DataConfig(max_prompt_tokens=4, max_response_tokens=3))
    data = fmt.tokenize_pairs(
        [("the team won the match in England", "England won the match"), ("the bank", "price up")]
    )
    assert data.n_prompt_truncated == 1 and data.n_response_truncated == 1
    ids, mask = data.input_ids[0], data.response_mask[0]
    resp = [t for t, m in zip(ids, mask, strict=True) if m]
    assert resp == tok("England won the", add_special_tokens=False)["input_ids"] + [tok.eos_token_id]
    assert mask == sorted(mask)  # prompt first, then response: the mask is a suffix
    assert "England" not in tok.decode([t for t, m in zip(ids, mask, strict=True) if not m])  # prompt cut to 4


def test_plain_template():
    tok = make_tokenizer()
    fmt = PromptFormatter(tok, DataConfig(template="plain", instruction="summary"))
    text, cut = fmt.render_prompt("the news")
    assert text.startswith("summary") and text.endswith("Summary:") and not cut


def test_query_focus_keeps_only_the_swapped_tokens():
    tok = make_tokenizer()
    fmt = PromptFormatter(tok, DataConfig())
    prompt = "the team won the match"
    neg = fmt.tokenize_pairs([(prompt, "China coach said China won"), (prompt, "the team won")])
    pos = fmt.tokenize_pairs([(prompt, "England coach said England won"), (prompt, "the team won")])
    fneg, fpos = focus_on_difference(neg, pos)
    assert fneg.input_ids == neg.input_ids and fpos.input_ids == pos.input_ids  # only the masks change
    kept = [tok.decode([t]) for t, m in zip(fneg.input_ids[0], fneg.response_mask[0], strict=True) if m]
    assert kept == ["China", "China"]  # both swaps, nothing shared (not 'coach said', not 'won', not EOS)
    kept = [tok.decode([t]) for t, m in zip(fpos.input_ids[0], fpos.response_mask[0], strict=True) if m]
    assert kept == ["England", "England"]
    # Identical outputs have nothing to focus on: the full response mask stays.
    assert fneg.response_mask[1] == neg.response_mask[1] and fpos.response_mask[1] == pos.response_mask[1]
    # The prompt is never a target, even where prompt and response share words.
    assert not any(m for m, p in zip(fneg.response_mask[0], neg.response_mask[0], strict=True) if not p)
