"""A Trainer's own output folders as checkpoints: real `checkpoint-N` folders written by transformers' Trainer on
a tiny random Llama (full weights, step-spaced; a peft adapter, epoch-spaced), then read by dda."""

from __future__ import annotations

import json
import shutil
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import random_examples, random_token_batch, tiny_config

from dda import Attributor
from dda.callback import DDACheckpointCallback
from dda.models import ModelError, discover_checkpoints, find_checkpoints

N_ROWS, BATCH, LR = 8, 2, 1e-2  # 4 optimizer steps an epoch


class _Rows(torch.utils.data.Dataset):
    """Random token rows, the loss on the second half of each (labels -100 elsewhere)."""

    def __init__(self) -> None:
        seqs, masks = random_token_batch(seed=1, n=N_ROWS, first_len=6, step=1)
        seqs = [[6 + t % 50 for t in s] for s in seqs]  # inside the tiny tokenizer's vocabulary
        self.items = [
            {"input_ids": s, "labels": [t if m else -100 for t, m in zip(s, mk, strict=True)]}
            for s, mk in zip(seqs, masks, strict=True)
        ]

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i: int) -> dict:
        return self.items[i]


def _collate(rows: list[dict]) -> dict[str, torch.Tensor]:
    width = max(len(r["input_ids"]) for r in rows)
    ids, labels = torch.zeros((len(rows), width), dtype=torch.long), torch.full((len(rows), width), -100)
    attn = torch.zeros((len(rows), width), dtype=torch.long)
    for j, r in enumerate(rows):
        n = len(r["input_ids"])
        ids[j, :n], labels[j, :n], attn[j, :n] = torch.tensor(r["input_ids"]), torch.tensor(r["labels"]), 1
    return {"input_ids": ids, "labels": labels, "attention_mask": attn}


class _StepRates:
    """A TrainerCallback recording the rate each optimizer step used, read from the optimizer itself (right after
    the step, before the scheduler moves it): a reference independent of trainer_state.json."""

    def __init__(self) -> None:
        from transformers import TrainerCallback

        rates = self.rates = {}

        class Cb(TrainerCallback):
            def on_optimizer_step(self, args, state, control, optimizer=None, **kwargs):  # noqa: ANN001
                rates[state.global_step + 1] = float(optimizer.param_groups[0]["lr"])

        self.callback = Cb()


def _train(out: Path, model_dir: Path, *, lora: bool, save: str, callbacks: list) -> None:
    from transformers import AutoModelForCausalLM, Trainer, TrainingArguments

    model = AutoModelForCausalLM.from_pretrained(model_dir)
    if lora:
        from peft import LoraConfig, get_peft_model

        model = get_peft_model(model, LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"]))
    args = TrainingArguments(
        output_dir=str(out),
        num_train_epochs=2,
        per_device_train_batch_size=BATCH,
        learning_rate=LR,
        lr_scheduler_type="linear",
        warmup_steps=2,
        save_strategy=save,
        save_steps=3,  # steps 3, 6, and 8 (the Trainer saves the last step too)
        logging_steps=1,
        report_to=[],
        use_cpu=True,
        disable_tqdm=True,
        seed=0,
    )
    trainer = Trainer(model=model, args=args, train_dataset=_Rows(), data_collator=_collate, callbacks=callbacks)
    trainer.train()
    trainer.save_model()  # the final model into OUT itself, as most training scripts end


@pytest.fixture(scope="module")
def full_steps(tmp_path_factory, model_dir):
    """Full weights, a checkpoint every 3 steps; the rates each step used."""
    out = tmp_path_factory.mktemp("trainer") / "full"
    rates = _StepRates()
    _train(out, model_dir, lora=False, save="steps", callbacks=[rates.callback])
    return out, rates.rates


@pytest.fixture(scope="module")
def lora_epochs(tmp_path_factory, model_dir):
    """A LoRA adapter, a checkpoint every epoch, with dda's own callback saving beside it as the reference."""
    tmp = tmp_path_factory.mktemp("trainer")
    _train(tmp / "lora", model_dir, lora=True, save="epoch", callbacks=[DDACheckpointCallback(tmp / "dda")])
    return tmp / "lora", tmp / "dda"


def _logged_rates(folder: Path) -> dict[int, float]:
    history = json.loads((folder / "trainer_state.json").read_text())["log_history"]
    return {e["step"]: e["learning_rate"] for e in history if "learning_rate" in e}


def test_step_spaced_full_weights_in_step_order_with_trainer_state_rates(full_steps):
    out, used = full_steps
    found = find_checkpoints(out)
    assert found.layout == "trainer"
    assert [(c.name, c.kind, c.step) for c in found.checkpoints] == [
        ("checkpoint-3", "full", 3),
        ("checkpoint-6", "full", 6),
        ("checkpoint-8", "full", 8),
    ]
    assert [c.epoch for c in found.checkpoints] == pytest.approx([0.75, 1.5, 2.0])
    logged = _logged_rates(out / "checkpoint-8")
    assert sorted(logged) == list(range(1, 9))
    for prev, c in zip([0, 3, 6], found.checkpoints, strict=True):
        steps = range(prev + 1, c.step + 1)
        # the mean of the rates trainer_state.json logged since the previous checkpoint ...
        assert c.lr == pytest.approx(np.mean([logged[s] for s in steps]), rel=1e-9)
        # ... which are the rates the optimizer used at those steps
        assert c.lr == pytest.approx(np.mean([used[s] for s in steps]), rel=1e-9)
        assert c.lr > 0
    # warmup (2 steps) then linear decay: the checkpoints' weights differ, the last is the smallest
    assert found.checkpoints[1].lr > found.checkpoints[2].lr
    text = " ".join(found.notes)
    assert "spaced by steps" in text and "itself also holds a model (the final save" in text


def test_epoch_spaced_adapters_match_dda_callback(lora_epochs):
    out, reference = lora_epochs
    found = find_checkpoints(out)
    assert [(c.name, c.kind, c.step, c.epoch) for c in found.checkpoints] == [
        ("checkpoint-4", "lora", 4, 1.0),
        ("checkpoint-8", "lora", 8, 2.0),
    ]
    assert "spaced by epoch" in found.notes[0]
    ours = discover_checkpoints(reference)
    assert [c.name for c in ours] == ["epoch-1", "epoch-2"]
    # the callback read the optimizer at every step; dda reads the Trainer's log: the same mean rate per epoch
    for trainer_ckpt, dda_ckpt in zip(found.checkpoints, ours, strict=True):
        assert trainer_ckpt.lr == pytest.approx(dda_ckpt.lr, rel=1e-9)
    assert (out / "checkpoint-4" / "adapter_model.safetensors").exists()


def test_final_model_only_is_the_one_checkpoint_and_says_so(lora_epochs, tmp_path):
    out, _ = lora_epochs
    final = tmp_path / "final"
    shutil.copytree(out, final, ignore=shutil.ignore_patterns("checkpoint-*"))
    with pytest.warns(UserWarning, match=rf"{final}: no learning rate found.*TracIn weights this checkpoint 1.0"):
        found = find_checkpoints(final)
    assert found.layout == "single" and [c.name for c in found.checkpoints] == ["final"]
    assert "only checkpoint" in found.notes[0] and "one term" in found.notes[0]
    # with the Trainer's state beside it (trainer.save_state()), the rate is the whole run's mean
    shutil.copy(out / "checkpoint-8" / "trainer_state.json", final / "trainer_state.json")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        ck = find_checkpoints(final).checkpoints[0]
    assert ck.step == 8 and ck.lr == pytest.approx(np.mean(list(_logged_rates(final).values())), rel=1e-9)


def test_checkpoint_without_trainer_state_warns_naming_it(full_steps, tmp_path):
    out, _ = full_steps
    for name in ("checkpoint-3", "checkpoint-6"):
        shutil.copytree(out / name, tmp_path / name)
    (tmp_path / "checkpoint-6" / "trainer_state.json").unlink()
    with pytest.warns(UserWarning, match=r"checkpoint-6: no learning rate found \(no dda_checkpoint.json or"):
        cks = discover_checkpoints(tmp_path)
    assert cks[0].lr is not None and cks[1].lr is None


def test_bad_trainer_state_is_refused_naming_file_and_field(full_steps, tmp_path):
    out, _ = full_steps
    shutil.copytree(out / "checkpoint-3", tmp_path / "checkpoint-3")
    state = tmp_path / "checkpoint-3" / "trainer_state.json"
    raw = json.loads(state.read_text())
    raw["log_history"][1]["learning_rate"] = "fast"
    state.write_text(json.dumps(raw))
    with pytest.raises(ModelError, match=r"trainer_state.json: log_history\[1\].learning_rate must be a number"):
        discover_checkpoints(tmp_path)
    state.write_text("{not json")
    with pytest.raises(ModelError, match=r"trainer_state.json: not valid JSON"):
        discover_checkpoints(tmp_path)


def test_trainer_checkpoints_index_with_their_rates(full_steps, model_dir, tmp_path):
    out, _ = full_steps
    att = Attributor(tiny_config(model_dir), tmp_path / "run")
    att.use_checkpoints(out)
    train = random_examples(6)
    stores = att.index(train)
    assert list(stores) == ["base", "checkpoint-3", "checkpoint-6", "checkpoint-8"]
    found = find_checkpoints(out).checkpoints
    for c in found:
        assert stores[c.name].meta["checkpoint_lr"] == c.lr and stores[c.name].meta["checkpoint_step"] == c.step
    layout = att.index_stats["checkpoint_layout"]
    assert layout["layout"] == "trainer" and [c["lr"] for c in layout["checkpoints"]] == [c.lr for c in found]
    # TracIn is the lr-weighted sum of the per-checkpoint gradient dot products
    from dda import Query

    q = [Query("q", train[0].prompt, train[0].response, train[1].response)]
    res = att.attribute(q, methods=["tracin"])
    dots = [att.attribute(q, methods=[f"grad_dot(checkpoint={c.name})"]) for c in found]
    assert res.scores["tracin"] == pytest.approx(
        sum(c.lr * next(iter(d.scores.values())) for c, d in zip(found, dots, strict=True)), rel=1e-5
    )


def test_checkpoints_ending_before_the_run_did_say_so(full_steps, tmp_path):
    out, _ = full_steps
    for name in ("checkpoint-3", "checkpoint-6"):  # as save_total_limit or a stopped run leaves them
        shutil.copytree(out / name, tmp_path / name)
    found = find_checkpoints(tmp_path)
    assert [c.step for c in found.checkpoints] == [3, 6]
    assert any("checkpoint-6, is at step 6 of 8" in n for n in found.notes)


def test_trainer_checkpoint_beside_dda_epoch_folders_is_not_mixed_in(lora_epochs, tmp_path):
    out, reference = lora_epochs
    shutil.copytree(reference, tmp_path / "both")
    shutil.copytree(out / "checkpoint-4", tmp_path / "both" / "checkpoint-4")
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a Trainer checkpoint is not taken for a half-written dda one
        found = find_checkpoints(tmp_path / "both")
    assert found.layout == "dda" and [c.name for c in found.checkpoints] == ["epoch-1", "epoch-2"]
    assert any("checkpoint-4: a Trainer checkpoint beside dda's own epoch folders" in n for n in found.notes)


@pytest.mark.slow
def test_sft_trainer_conversational_lora_checkpoints(model_dir, tmp_path):
    """TRL's SFTTrainer on conversational prompt/completion rows, a LoRA adapter saved every epoch: the same
    folders, read the same way; the rates equal those dda's callback took from the optimizer in the same run."""
    pytest.importorskip("trl")
    from datasets import Dataset
    from peft import LoraConfig
    from transformers import AutoTokenizer
    from trl import SFTConfig, SFTTrainer

    rng = np.random.default_rng(0)
    words = ["England", "China", "team", "match", "police", "court", "news", "report", "club", "season"]
    rows = [
        {
            "prompt": [{"role": "user", "content": " ".join(rng.choice(words, 6))}],
            "completion": [{"role": "assistant", "content": " ".join(rng.choice(words, 3))}],
        }
        for _ in range(N_ROWS)
    ]
    args = SFTConfig(
        output_dir=str(tmp_path / "out"),
        num_train_epochs=2,
        per_device_train_batch_size=BATCH,
        learning_rate=LR,
        save_strategy="epoch",
        logging_steps=1,
        report_to=[],
        use_cpu=True,
        disable_tqdm=True,
        seed=0,
    )
    SFTTrainer(
        model=str(model_dir),
        args=args,
        train_dataset=Dataset.from_list(rows),
        processing_class=AutoTokenizer.from_pretrained(model_dir),
        peft_config=LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"]),
        callbacks=[DDACheckpointCallback(tmp_path / "dda")],
    ).train()
    found = find_checkpoints(tmp_path / "out")
    assert [(c.name, c.kind, c.step, c.epoch) for c in found.checkpoints] == [
        ("checkpoint-4", "lora", 4, 1.0),
        ("checkpoint-8", "lora", 8, 2.0),
    ]
    ours = discover_checkpoints(tmp_path / "dda")
    for trainer_ckpt, dda_ckpt in zip(found.checkpoints, ours, strict=True):
        assert trainer_ckpt.lr == pytest.approx(dda_ckpt.lr, rel=1e-9)
    assert found.checkpoints[0].lr > found.checkpoints[1].lr > 0  # linear decay
