"""Bring your own training: HF Trainer + DDACheckpointCallback on a tiny LoRA Llama, then dda indexes and scores."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from conftest import TINY_SETTINGS, make_model, make_tokenizer

from dda import Attributor, Example, Query, apply_overrides
from dda.callback import DDACheckpointCallback, save_epoch_checkpoint
from dda.config import DDAConfig
from dda.data import PromptFormatter
from dda.models import applied, discover_checkpoints, model_fingerprint

WORDS = "England China France team match police court government minister news report people year club".split()
LR, BATCH, N_TRAIN, EPOCHS = 1e-2, 4, 10, 2


def _examples(n: int, seed: int = 0) -> list[Example]:
    rng = np.random.default_rng(seed)
    return [Example(f"ex{i}", " ".join(rng.choice(WORDS, 12)), " ".join(rng.choice(WORDS, 4))) for i in range(n)]


def _cfg() -> DDAConfig:
    return apply_overrides(
        DDAConfig(),
        {
            **TINY_SETTINGS,
        },
    )


class _Rows(torch.utils.data.Dataset):
    """Prompt + response token ids; the loss is on the response only (labels -100 elsewhere)."""

    def __init__(self, ids: list[list[int]], mask: list[list[bool]]):
        self.items = [
            {"input_ids": i, "labels": [t if m else -100 for t, m in zip(i, mk, strict=True)]}
            for i, mk in zip(ids, mask, strict=True)
        ]

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i: int) -> dict:
        return self.items[i]


def _collate(pad_id: int):
    def collate(rows: list[dict]) -> dict[str, torch.Tensor]:
        width = max(len(r["input_ids"]) for r in rows)
        ids = torch.full((len(rows), width), pad_id)
        labels = torch.full((len(rows), width), -100)
        attn = torch.zeros((len(rows), width), dtype=torch.long)
        for j, r in enumerate(rows):
            n = len(r["input_ids"])
            ids[j, :n], labels[j, :n], attn[j, :n] = torch.tensor(r["input_ids"]), torch.tensor(r["labels"]), 1
        return {"input_ids": ids, "labels": labels, "attention_mask": attn}

    return collate


@pytest.fixture(scope="module")
def trained(tmp_path_factory, model_dir):
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, Trainer, TrainingArguments

    tmp = tmp_path_factory.mktemp("byo")
    tok = make_tokenizer()
    train = _examples(N_TRAIN)
    data = PromptFormatter(tok, _cfg().data).tokenize_examples(train)
    # Loaded from a directory, as a user's model is: it has a name (config._name_or_path), which the callback
    # records; a model without one hid that the callback and `dda finetune` wrote two metadata schemas.
    model = get_peft_model(
        AutoModelForCausalLM.from_pretrained(model_dir),
        LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"], task_type="CAUSAL_LM"),
    )
    args = TrainingArguments(
        output_dir=str(tmp / "hf"),
        num_train_epochs=EPOCHS,
        per_device_train_batch_size=BATCH,
        learning_rate=LR,
        lr_scheduler_type="linear",
        warmup_steps=0,
        save_strategy="no",
        report_to=[],
        logging_steps=1,
        use_cpu=True,
        disable_tqdm=True,
        seed=0,
    )
    callback = DDACheckpointCallback(tmp / "ckpts")
    Trainer(
        model=model,
        args=args,
        train_dataset=_Rows(data.input_ids, data.response_mask),
        data_collator=_collate(tok.pad_token_id),
        callbacks=[callback],
    ).train()
    return tmp, tok, train, callback


def test_trainer_callback_writes_epoch_checkpoints(trained):
    tmp, _, _, callback = trained
    ckpts = discover_checkpoints(tmp / "ckpts")
    assert [(c.name, c.kind, c.epoch) for c in ckpts] == [("epoch-1", "lora", 1), ("epoch-2", "lora", 2)]
    assert [c.name for c in callback.saved] == ["epoch-1", "epoch-2"]
    assert sorted(p.name for p in (tmp / "ckpts").iterdir()) == ["epoch-1", "epoch-2"]  # no partial dirs left
    # linear decay from LR to 0 over all optimizer steps, no warmup: the lr of step t is LR * (1 - t / total)
    steps = -(-N_TRAIN // BATCH)
    total = steps * EPOCHS
    for c in ckpts:
        used = [LR * (1 - t / total) for t in range((c.epoch - 1) * steps, c.epoch * steps)]
        assert c.lr == pytest.approx(np.mean(used), rel=1e-6)
        info = json.loads((tmp / "ckpts" / c.name / "dda_checkpoint.json").read_text())
        assert info["lr_last"] == pytest.approx(used[-1], rel=1e-6)
        assert info["optimizer_steps"] == steps and info["method"] == "lora" and info["global_step"] == c.epoch * steps
        assert (tmp / "ckpts" / c.name / "adapter_model.safetensors").exists()


def test_callback_checkpoints_index_and_score(trained, model_dir):
    tmp, tok, train, _ = trained
    info = json.loads((tmp / "ckpts" / "epoch-1" / "dda_checkpoint.json").read_text())
    assert info["base_model"]["name"] == str(model_dir)
    att = Attributor(apply_overrides(_cfg(), {"model.name": str(model_dir)}), tmp / "run")
    # The fingerprint the callback took under the adapters is the base model's own (LoRA leaves it untouched).
    assert info["base_model"]["fingerprint"] == model_fingerprint(att.model)
    att.use_checkpoints(tmp / "ckpts")
    stores = att.index(train)
    assert set(stores) == {"base", "epoch-1", "epoch-2"}
    assert not np.allclose(np.asarray(stores["base"].features), np.asarray(stores["epoch-2"].features))
    res = att.attribute(
        [Query("q", train[3].prompt, train[3].response, train[7].response)], methods=["dda", "tracin", "grad_dot"]
    )
    for scores in res.scores.values():
        assert scores.shape == (1, N_TRAIN) and np.isfinite(scores).all()


def test_save_epoch_checkpoint_full_weights(tmp_path):
    """A custom loop's full fine-tune: the saved weights are what `applied` puts back into theta0."""
    trained_model = make_model("llama", vocab_size=160, seed=1)
    ck = save_epoch_checkpoint(trained_model, tmp_path / "ckpts", 1, lr=3e-4, extra={"note": "custom loop"})
    assert (ck.name, ck.kind, ck.epoch, ck.lr) == ("epoch-1", "full", 1, 3e-4)
    theta0 = make_model("llama", vocab_size=160, seed=0)
    before = {k: v.clone() for k, v in theta0.state_dict().items()}
    with applied(theta0, ck) as m:
        for k, v in trained_model.state_dict().items():
            torch.testing.assert_close(m.state_dict()[k], v)
    for k, v in theta0.state_dict().items():
        torch.testing.assert_close(v, before[k])  # theta0 restored
    # saving the same epoch again replaces it whole
    ck2 = save_epoch_checkpoint(make_model("llama", vocab_size=160, seed=2), tmp_path / "ckpts", 1, lr=1e-4)
    assert ck2.lr == 1e-4 and sorted(p.name for p in (tmp_path / "ckpts").iterdir()) == ["epoch-1"]
    with pytest.raises(ValueError, match="epoch must be"):
        save_epoch_checkpoint(trained_model, tmp_path / "ckpts", 0, lr=1e-4)
