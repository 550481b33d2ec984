"""dda reads a fine-tune exactly as TRL's SFTTrainer trained it: the same token ids and loss mask for every row of
every data format, and the same per-row loss at the trainer's last checkpoint.

The tokenizer is the builtin SmolLM2's (a real chat template); the model a tiny random Llama over its vocabulary.
"""

from __future__ import annotations

import copy
import json
import warnings

import pytest

trl = pytest.importorskip("trl")

from dda.config import DataConfig  # noqa: E402
from dda.data import PromptFormatter, load_examples, load_queries  # noqa: E402
from dda.formats import DataError  # noqa: E402

# A ChatML template with {% generation %} markers, as assistant_only_loss needs (Qwen/Llama-3 users get TRL's own).
MARKED_TEMPLATE = (
    "{% for message in messages %}{% if message['role'] == 'assistant' %}{{ '<|im_start|>assistant\n' }}"
    "{% generation %}{{ message['content'] + '<|im_end|>' }}{% endgeneration %}{{ '\n' }}"
    "{% else %}{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>\n' }}{% endif %}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)

USER = ["Who won the match in London?", "What did the council vote on?", "Name the capital of France."]
ANSWER = ["England won it by two goals.", "It voted on the new school budget.", "The capital is Paris."]

MESSAGES = [
    {
        "messages": [
            {"role": "system", "content": "Answer briefly."},
            {"role": "user", "content": u},
            {"role": "assistant", "content": a},
            {"role": "user", "content": "And then?"},
            {"role": "assistant", "content": "Nothing else happened."},
        ]
    }
    for u, a in zip(USER, ANSWER, strict=True)
]
PC_STANDARD = [{"prompt": f"Question: {u}\nAnswer:", "completion": f" {a}"} for u, a in zip(USER, ANSWER, strict=True)]
PC_CONVERSATIONAL = [
    {"prompt": [{"role": "user", "content": u}], "completion": [{"role": "assistant", "content": a}]}
    for u, a in zip(USER, ANSWER, strict=True)
]
TEXT = [{"text": f"{u} {a}"} for u, a in zip(USER, ANSWER, strict=True)]

# (name, rows, SFTConfig settings, dda settings, chat template override)
CASES = [
    ("messages, every token (TRL default)", MESSAGES, {}, {}, None),
    ("messages, assistant turns", MESSAGES, {"assistant_only_loss": True}, {"loss_on": "assistant"}, MARKED_TEMPLATE),
    ("prompt/completion, standard", PC_STANDARD, {}, {}, None),
    ("prompt/completion, conversational", PC_CONVERSATIONAL, {}, {}, None),
    (
        "prompt/completion, conversational, every token",
        PC_CONVERSATIONAL,
        {"completion_only_loss": False},
        {"loss_on": "all"},
        None,
    ),
    (
        "prompt/completion, conversational, assistant",
        PC_CONVERSATIONAL,
        {"assistant_only_loss": True},
        {"loss_on": "assistant"},
        MARKED_TEMPLATE,
    ),
    ("text", TEXT, {}, {}, None),
    ("prompt/completion, standard, max_length cut", PC_STANDARD, {"max_length": 14}, {"max_length": 14}, None),
    ("messages, max_length cut", MESSAGES, {"max_length": 40}, {"max_length": 40}, None),
]


@pytest.fixture(scope="module")
def smol_tokenizer():
    from dda.config import ModelConfig
    from dda.models import load_tokenizer

    return load_tokenizer(ModelConfig())


def _tiny_llama(vocab: int, seed: int = 0):
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    cfg = LlamaConfig(
        vocab_size=vocab,
        hidden_size=32,
        intermediate_size=48,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=512,
    )
    return LlamaForCausalLM(cfg)


def _write(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def _trainer(tok, rows, sft: dict, out, model=None, **extra):
    from datasets import Dataset
    from trl import SFTConfig, SFTTrainer

    args = SFTConfig(
        output_dir=str(out),
        report_to=[],
        use_cpu=True,
        per_device_train_batch_size=2,
        per_device_eval_batch_size=1,
        max_length=sft.get("max_length"),
        logging_steps=1,
        **{"save_strategy": "no", **extra, **{k: v for k, v in sft.items() if k != "max_length"}},
    )
    model = model if model is not None else _tiny_llama(len(tok))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return SFTTrainer(model=model, args=args, train_dataset=Dataset.from_list(rows), processing_class=tok)


def _dda_rows(tok, path, settings: dict):
    cfg = DataConfig(path=str(path), **settings)
    examples = load_examples(cfg)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        data = PromptFormatter(tok, cfg, context=512).tokenize_examples(examples)
    return examples, data, caught


@pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
def test_token_ids_and_loss_mask_equal_sfttrainers(case, smol_tokenizer, tmp_path):
    name, rows, sft, settings, template = case
    tok = copy.deepcopy(smol_tokenizer)
    if template is not None:
        tok.chat_template = template
    trainer = _trainer(tok, rows, sft, tmp_path / "out")
    prepared = trainer.train_dataset
    batch = trainer.data_collator([prepared[i] for i in range(len(prepared))])
    examples, data, caught = _dda_rows(tok, _write(tmp_path / "train.jsonl", rows), settings)
    assert len(data) == len(rows)
    # TRL drops a row that a cut left without a loss token; dda keeps it (row numbers hold), with no loss
    kept = [i for i in range(len(rows)) if any(data.response_mask[i])]
    assert len(prepared) == len(kept)
    for j, i in enumerate(kept):
        theirs = prepared[j]
        assert data.input_ids[i] == theirs["input_ids"], f"{name}: row {i} token ids differ"
        assert data.response_mask[i] == [lab != -100 for lab in theirs["labels"]], f"{name}: row {i} mask differs"
        # and what the collator hands the model (padded batch) carries the same labels on the same positions
        n = len(theirs["input_ids"])
        collated = batch["labels"][j][:n].tolist()
        assert collated == [t if m else -100 for t, m in zip(data.input_ids[i], data.response_mask[i], strict=True)]
    cut = "max_length" in settings
    assert data.n_truncated == (sum(len(r) > settings["max_length"] for r in _untruncated(tok, rows)) if cut else 0)
    if cut:
        assert data.n_truncated > 0 and any("were cut" in str(w.message) for w in caught)
    else:
        assert not any("were cut" in str(w.message) for w in caught)
    assert {e.format for e in examples} == {_expected_format(rows[0])}


def _untruncated(tok, rows):
    _, data, _ = _dda_rows(tok, _write_tmp(rows), {})
    return data.input_ids


def _write_tmp(rows):
    import tempfile
    from pathlib import Path

    d = Path(tempfile.mkdtemp())
    return _write(d / "rows.jsonl", rows)


def _expected_format(row):
    return "messages" if "messages" in row else "text" if "text" in row else "prompt_completion"


LOSS_CASES = [
    c
    for c in CASES
    if c[0]
    in (
        "messages, every token (TRL default)",
        "prompt/completion, standard",
        "prompt/completion, conversational",
        "text",
        "messages, assistant turns",
    )
]


@pytest.mark.slow
@pytest.mark.parametrize("case", LOSS_CASES, ids=[c[0] for c in LOSS_CASES])
def test_per_row_loss_at_last_checkpoint_equals_trainer_eval_loss(case, smol_tokenizer, tmp_path):
    """Train two steps with SFTTrainer (checkpoint-1, checkpoint-2 folders), load the last through dda, and compare
    dda's per-row loss with the trainer's evaluation loss of each row alone."""
    from datasets import Dataset

    from dda.features.index import example_losses
    from dda.models import applied, discover_checkpoints

    name, rows, sft, settings, template = case
    tok = copy.deepcopy(smol_tokenizer)
    if template is not None:
        tok.chat_template = template
    out = tmp_path / "out"
    trainer = _trainer(
        tok,
        rows,
        sft,
        out,
        max_steps=2,
        learning_rate=5e-3,
        save_strategy="steps",
        save_steps=1,
    )
    trainer.train()
    ckpts = discover_checkpoints(out)
    assert [c.name for c in ckpts] == ["checkpoint-1", "checkpoint-2"]
    theirs = [trainer.evaluate(eval_dataset=Dataset.from_list([r]))["eval_loss"] for r in rows]
    _, data, _ = _dda_rows(tok, _write(tmp_path / "train.jsonl", rows), settings)
    base = _tiny_llama(len(tok), seed=123)  # other weights: everything dda scores comes from the checkpoint
    with applied(base, ckpts[-1]) as model:
        model.eval()
        ours = example_losses(model, data, tok.pad_token_id)
        untrained = None
    with applied(base, ckpts[0]) as model:
        untrained = example_losses(model, data, tok.pad_token_id)
    assert ours == pytest.approx(theirs, rel=1e-4, abs=1e-5), name
    assert untrained != pytest.approx(theirs, rel=1e-4)  # the comparison can tell checkpoints apart


def test_query_shapes_render_like_training_rows(smol_tokenizer, tmp_path):
    """A conversational query renders as a conversational prompt/completion row with the negative as the
    completion; its loss covers the assistant's answer and end-of-turn token only."""
    q = _write(
        tmp_path / "q.jsonl",
        [
            {
                "id": "a",
                "prompt": [{"role": "user", "content": USER[0]}],
                "negative": [{"role": "assistant", "content": "China won it."}],
                "positive": "England won it.",
            },
        ],
    )
    (query,) = load_queries(str(q))
    assert query.negative == "China won it." and isinstance(query.prompt, list)
    cfg = DataConfig(path=str(tmp_path / "unused.jsonl"), format="prompt_completion")
    fmt = PromptFormatter(smol_tokenizer, cfg, context=512)
    neg = fmt.tokenize_pairs([(query.prompt, query.negative)])
    row = {"prompt": query.prompt, "completion": [{"role": "assistant", "content": query.negative}]}
    _, train, _ = _dda_rows(smol_tokenizer, _write(tmp_path / "t.jsonl", [row]), {})
    assert neg.input_ids == train.input_ids and neg.response_mask == train.response_mask
    target = smol_tokenizer.decode([t for t, m in zip(neg.input_ids[0], neg.response_mask[0], strict=True) if m])
    assert target == "China won it.<|im_end|>\n"


@pytest.mark.parametrize(
    ("row", "settings", "message"),
    [
        ({"messages": [{"content": "hi"}]}, {}, "line 1: field 'messages', message 0: missing 'role'"),
        ({"messages": [{"role": "bot", "content": "hi"}]}, {}, "unknown role 'bot'"),
        ({"messages": [{"role": "user", "content": "hi"}]}, {"loss_on": "assistant"}, "has no assistant turn"),
        ({"prompt": [{"role": "user", "content": "hi"}], "completion": "yo"}, {}, "field 'completion' must be a list"),
        ({"text": "a", "id": 1}, {"loss_on": "completion"}, "text rows have no completion"),
        ({"foo": "a"}, {}, "cannot tell the data format from the fields (foo)"),
    ],
)
def test_bad_rows_name_file_line_and_field(row, settings, message, smol_tokenizer, tmp_path):
    p = _write(tmp_path / "bad.jsonl", [row])
    with pytest.raises(DataError) as err:
        cfg = DataConfig(path=str(p), **settings)
        PromptFormatter(smol_tokenizer, cfg, context=512).tokenize_examples(load_examples(cfg))
    assert message in str(err.value)
    assert "bad.jsonl" in str(err.value) or "example" in str(err.value)


@pytest.mark.parametrize("rows", [PC_CONVERSATIONAL, MESSAGES], ids=["prompt/completion", "messages"])
def test_dda_data_json_is_what_the_trainer_trains_on(rows, smol_tokenizer, tmp_path):
    """`dda data --json` on the builtin model: each row's text is the trainer's whole sequence, decoded, and its
    target the tokens the trainer's labels keep (for prompt/completion: the completion only)."""
    from typer.testing import CliRunner

    from dda.cli import app

    path = _write(tmp_path / "train.jsonl", rows)
    out = CliRunner().invoke(app, ["data", "--data", str(path), "--json"])
    assert out.exit_code == 0, out.output
    shown = [json.loads(line) for line in out.stdout.splitlines()]
    prepared = _trainer(copy.deepcopy(smol_tokenizer), rows, {}, tmp_path / "out").train_dataset
    assert [r["id"] for r in shown] == [str(i) for i in range(len(rows))]
    for r, theirs in zip(shown, prepared, strict=True):
        decode = lambda ids: smol_tokenizer.decode(ids, skip_special_tokens=False)  # noqa: E731
        assert r["text"] == decode(theirs["input_ids"])
        assert r["target"] == decode([t for t in theirs["labels"] if t != -100])
    if "completion" in rows[0]:
        assert [r["target"] for r in shown] == [f"{a}<|im_end|>\n" for a in ANSWER]


def test_dda_data_marks_the_loss_and_counts_the_cuts(tmp_path):
    from typer.testing import CliRunner

    from dda.cli import app

    path = _write(tmp_path / "train.jsonl", PC_STANDARD)
    out = CliRunner().invoke(app, ["data", "--data", str(path), "--set", "data.max_length=14", "--rows", "1"])
    assert out.exit_code == 0, out.output
    assert "3 rows, format prompt_completion, loss on completion" in out.output
    assert "3 rows cut (at data.max_length=14 tokens)" in out.output
    assert "were cut" in out.output  # the >1% warning
    bad = _write(tmp_path / "bad.jsonl", [{"messages": [{"role": "user"}]}])
    out = CliRunner().invoke(app, ["data", "--data", str(bad)])
    assert out.exit_code == 2 and "bad.jsonl, line 1: field 'messages', message 0: missing 'content'" in out.output
