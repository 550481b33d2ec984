"""Data formats around the tokeniser: defaults that add nothing, presets that keep the benchmark's settings, the cut
warning's threshold, queries in both shapes, and a workdir that remembers the format (tiny Llama, word tokenizer)."""

from __future__ import annotations

import json
import warnings

import pytest
from conftest import make_tokenizer, tiny_config

from dda.config import SUMMARY_DATA, SUMMARY_INSTRUCTION, DataConfig, DDAConfig, apply_overrides, flatten
from dda.data import Example, PromptFormatter, load_examples, load_queries


def _write(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def test_defaults_add_no_instruction_and_cut_nothing():
    tok = make_tokenizer()
    doc = " ".join(["England team match police court"] * 60)  # 300 words: over the old 256-token prompt cut
    fmt = PromptFormatter(tok, DataConfig(), context=4096)
    data = fmt.tokenize_examples([Example("a", doc, "the match was won in China " * 20)])
    text = tok.decode(data.input_ids[0])
    assert "system" not in text and data.n_truncated == 0
    assert len(data.input_ids[0]) > 256 + 64 and sum(data.response_mask[0]) == 6 * 20 + 1  # + EOS


def test_presets_and_demo_keep_the_benchmarks_data_settings():
    from dda.bench.presets import PRESETS, build_config
    from dda.demo import DEMO_OVERRIDES

    cuts = {
        "cpu-tiny": (64, 32),
        "cpu-small": (128, 48),
        "cpu-haystack": (64, 40),
        "cpu-haystack-natural": (96, 40),
        "gpu-paper": (512, 64),
    }
    configs = {name: build_config(p, 0) for name, p in PRESETS.items()}
    configs["demo"] = apply_overrides(DDAConfig(), DEMO_OVERRIDES)
    cuts["demo"] = (96, 40)
    for name, cfg in configs.items():
        flat = flatten(cfg)
        assert {k: flat[k] for k in SUMMARY_DATA} == SUMMARY_DATA, name
        assert flat["data.instruction"] == SUMMARY_INSTRUCTION and flat["data.max_length"] is None, name
        assert (flat["data.max_prompt_tokens"], flat["data.max_response_tokens"]) == cuts[name], name


def test_a_warning_when_more_than_one_percent_of_rows_are_cut():
    tok = make_tokenizer()
    fmt = PromptFormatter(tok, DataConfig(format="fields", max_length=12), context=None)
    short = Example("s", "England won", "China")
    long = Example("l", "England won the match in London " * 3, "China")

    def cut_warnings(n_long: int) -> list[str]:
        rows = [long] * n_long + [short] * (100 - n_long)
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            data = fmt.tokenize_examples(rows)
        assert data.n_truncated == n_long and all(len(ids) <= 12 for ids in data.input_ids)
        return [str(w.message) for w in caught if "were cut" in str(w.message)]

    assert cut_warnings(1) == []  # 1% is not more than 1%
    (message,) = cut_warnings(2)
    assert message.startswith("2 of 100 training rows (2.0%) were cut (at data.max_length=12 tokens)")


def test_a_string_query_is_a_user_turn_when_the_training_rows_are_conversations(tmp_path):
    tok = make_tokenizer()
    fmt = PromptFormatter(tok, DataConfig(format="messages"), context=256)
    as_string = fmt.tokenize_pairs([("who won the match", "China won")])
    as_turn = fmt.tokenize_pairs([([{"role": "user", "content": "who won the match"}], "China won")])
    assert as_string.input_ids == as_turn.input_ids and as_string.response_mask == as_turn.response_mask
    target = tok.decode([t for t, m in zip(as_turn.input_ids[0], as_turn.response_mask[0], strict=True) if m])
    assert target == "China won <|im_end|>"


def test_bad_query_outputs_name_the_line_and_field(tmp_path):
    q = _write(
        tmp_path / "q.jsonl",
        [{"prompt": [{"role": "user", "content": "hi"}], "negative": [{"role": "user", "content": "x"}]}],
    )
    with pytest.raises(ValueError, match=r"q.jsonl, line 1: field 'negative' must be a string or one assistant"):
        load_queries(str(q))


def test_workdir_remembers_the_format_and_attributes_conversational_queries(tmp_path, model_dir):
    """index on messages rows, then attribute with conversational queries from a new Attributor: the saved rows
    come back in their format and tokenise to the indexed sequences."""
    from dda import Attributor

    words = ["England", "China", "France", "Wales"]
    rows = [
        {
            "id": f"r{i}",
            "messages": [
                {"role": "user", "content": f"who won the {['match', 'game'][i % 2]}"},
                {"role": "assistant", "content": f"{words[i % 4]} won"},
            ],
        }
        for i in range(8)
    ]
    data = _write(tmp_path / "train.jsonl", rows)
    cfg = tiny_config(model_dir, {"data.path": str(data), "data.max_prompt_tokens": None})
    cfg = apply_overrides(cfg, {"data.max_response_tokens": None})
    att = Attributor(cfg, tmp_path / "w")
    att.finetune(load_examples(att.cfg.data))
    att.index(load_examples(att.cfg.data))
    assert json.loads((tmp_path / "w" / "workdir.json").read_text())["config"]["data.format"] == "messages"

    # a later command that names no format (data.format=auto) gets the one the workdir was indexed with
    again = Attributor(apply_overrides(cfg, {"data.path": "builtin:xsum"}), tmp_path / "w")
    assert again.cfg.data.format == "messages"
    examples = again.train_examples()
    assert [e.format for e in examples] == ["messages"] * 8 and examples[0].prompt == rows[0]["messages"]
    assert again.tokenize(examples).input_ids == att.tokenize(load_examples(att.cfg.data)).input_ids
    q = _write(
        tmp_path / "q.jsonl",
        [
            {
                "id": "q",
                "prompt": [{"role": "user", "content": "who won the match"}],
                "negative": "China won",
                "positive": "England won",
            }
        ],
    )
    result = again.attribute(load_queries(str(q)), methods=["dda", "bm25"])
    assert result.scores["dda"].shape == (1, 8)
    assert result.top(1, "bm25")[0]["train_id"] in {"r1", "r5"}  # the rows that say China


@pytest.mark.parametrize("prompt", ["who won the match", [{"role": "user", "content": "who won the match"}]])
def test_query_tokens_diff_focuses_on_the_swapped_word_in_both_shapes(prompt):
    from dda.data import focus_on_difference

    tok = make_tokenizer()
    fmt = PromptFormatter(tok, DataConfig(format="prompt_completion"), context=256)
    # standard rows are prompt + completion as one string (TRL): the completion brings its own leading space
    neg = fmt.tokenize_pairs([(prompt, " England won the match in China")])
    pos = fmt.tokenize_pairs([(prompt, " England won the match in France")])
    focus_neg, focus_pos = focus_on_difference(neg, pos)

    def kept(td):
        return tok.decode([t for t, m in zip(td.input_ids[0], td.response_mask[0], strict=True) if m])

    assert kept(focus_neg) == "China" and kept(focus_pos) == "France"
    assert kept(neg).startswith("England won the match in China")
