"""Bring your own training: save, at every epoch end, what `dda index --checkpoints DIR` reads.

With Hugging Face `Trainer` (LoRA via peft, or full fine-tuning):

    from dda.callback import DDACheckpointCallback
    trainer = Trainer(model=model, args=args, train_dataset=ds, callbacks=[DDACheckpointCallback("ckpts")])
    trainer.train()                                   # ckpts/epoch-1/, ckpts/epoch-2/, ...
    # dda index -w runs/x --checkpoints ckpts --data train.jsonl --model <the base model>

In a custom loop, after each epoch:

    from dda.callback import save_epoch_checkpoint
    save_epoch_checkpoint(model, "ckpts", epoch, lr=mean_lr_of_the_epoch)

Each `OUT/epoch-K/` holds the adapter (adapter_config.json + adapter_model.safetensors) or the full weights
(safetensors) and `dda_checkpoint.json` (epoch, the learning rate in force: TracIn's weight, and what was saved).
A checkpoint is written into OUT/.partial/ and renamed into place when complete, with dda_checkpoint.json written
last, so a killed run never leaves a directory that `discover_checkpoints` would take for a checkpoint.

Without the callback, `dda index --checkpoints OUT` reads the Trainer's own `checkpoint-N` folders, with each
one's learning rate from its trainer_state.json (dda.trainer_state); the callback adds the base model's
fingerprint, and epoch folders whatever the Trainer's save_strategy.
"""

from __future__ import annotations

import contextlib
import os
import shutil
from pathlib import Path
from typing import Any

from transformers import TrainerCallback

from .io import replace_dir, write_json
from .models import Checkpoint, base_model_record, discover_checkpoints

PARTIAL_DIR = ".partial"  # not a checkpoint dir itself, and discover_checkpoints does not look inside it


def _unwrap(model: Any) -> Any:
    """The model inside (Distributed)DataParallel wrappers."""
    import torch

    while isinstance(model, (torch.nn.parallel.DistributedDataParallel, torch.nn.DataParallel)):
        model = model.module
    return model


def _is_peft(model: Any) -> bool:
    return hasattr(model, "peft_config") and hasattr(model, "save_pretrained")


def _save_weights(model: Any, target: Path) -> str:
    """Adapter only for a peft model, else the full weights; returns the checkpoint kind (lora | full)."""
    if _is_peft(model):
        model.save_pretrained(str(target), safe_serialization=True)
        if not (target / "adapter_config.json").exists():
            raise RuntimeError(
                f"{model.__class__.__name__}.save_pretrained wrote no adapter_config.json; "
                "dda reads LoRA checkpoints as peft adapter directories"
            )
        return "lora"
    if hasattr(model, "save_pretrained"):  # transformers: handles tied weights and shards large models
        model.save_pretrained(str(target), safe_serialization=True)
    else:
        from safetensors.torch import save_file

        target.mkdir(parents=True, exist_ok=True)
        # tied parameters share storage, which safetensors refuses: clone each tensor
        save_file(
            {k: v.detach().cpu().clone().contiguous() for k, v in model.state_dict().items()},
            str(target / "model.safetensors"),
        )
    return "full"


def save_epoch_checkpoint(
    model: Any,
    out_dir: str | Path,
    epoch: int,
    lr: float,
    *,
    lr_last: float | None = None,
    extra: dict[str, Any] | None = None,
) -> Checkpoint:
    """Save `model` (peft adapter, or full weights) as OUT/epoch-{epoch}/ with dda_checkpoint.json; atomic.

    `lr` is the learning rate in force during the epoch (with a schedule: its mean over the epoch's optimizer
    steps), which TracIn weights the checkpoint by. `extra` is added to dda_checkpoint.json. An existing
    OUT/epoch-{epoch}/ is replaced. Call it on one process only (rank 0) when training is distributed."""
    if int(epoch) < 1:
        raise ValueError(f"epoch must be >= 1 (epoch-0 would read as theta0), not {epoch}")
    if not float(lr) > 0:
        raise ValueError(f"lr must be positive, not {lr}")
    out_dir = Path(out_dir)
    model = _unwrap(model)
    name = f"epoch-{int(epoch)}"
    tmp = out_dir / PARTIAL_DIR / f"{name}-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.parent.mkdir(parents=True, exist_ok=True)
    try:
        kind = _save_weights(model, tmp)
        base = model.get_base_model() if _is_peft(model) else model
        config = getattr(base, "config", None)
        write_json(
            tmp / "dda_checkpoint.json",
            {  # last: a directory without it was never finished
                "epoch": int(epoch),
                "lr": float(lr),
                "lr_last": float(lr_last if lr_last is not None else lr),
                "method": kind,
                # A LoRA model still holds theta0's weights under its adapters; fully trained weights do not.
                "base_model": base_model_record(
                    getattr(config, "_name_or_path", None) or None, base if kind == "lora" else None
                ),
                "saved_by": "dda.callback",
                **(extra or {}),
            },
        )
        target = out_dir / name
        replace_dir(tmp, target, out_dir / PARTIAL_DIR / f"{name}-old-{os.getpid()}")
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    finally:
        with contextlib.suppress(OSError):  # removed only when empty (another process may be saving)
            (out_dir / PARTIAL_DIR).rmdir()
    return next(c for c in discover_checkpoints(out_dir) if c.name == name)


class DDACheckpointCallback(TrainerCallback):
    """`transformers.TrainerCallback`: at each epoch end, `save_epoch_checkpoint` into `out_dir` with the mean
    learning rate of the epoch's optimizer steps (read from the optimizer right after each step, before the
    scheduler moves it: the rate each step actually used). Saves on the main process only."""

    def __init__(self, out_dir: str | Path):
        self.out_dir = Path(out_dir)
        """Where the epoch-K checkpoint folders go."""
        self._lrs: list[float] = []
        self._losses: list[float] = []
        self.saved: list[Checkpoint] = []
        """The checkpoints saved so far, in order."""

    def on_epoch_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        """Start the epoch's record of learning rates and losses."""
        self._lrs, self._losses = [], []

    def on_optimizer_step(self, args: Any, state: Any, control: Any, optimizer: Any = None, **kwargs: Any) -> None:
        """Record the learning rate this optimizer step used (before the scheduler moves it)."""
        if optimizer is not None:
            self._lrs.append(float(optimizer.param_groups[0]["lr"]))

    def on_log(self, args: Any, state: Any, control: Any, logs: dict | None = None, **kwargs: Any) -> None:
        """Record the training loss the Trainer logged (kept as the checkpoint's mean_logged_loss)."""
        if logs and "loss" in logs:
            self._losses.append(float(logs["loss"]))

    def on_epoch_end(
        self, args: Any, state: Any, control: Any, model: Any = None, optimizer: Any = None, **kwargs: Any
    ) -> None:
        """Save OUT/epoch-K/ with the epoch's mean learning rate (on the main process only)."""
        if not state.is_world_process_zero:
            return
        if model is None:
            raise RuntimeError("DDACheckpointCallback: the Trainer passed no model to on_epoch_end")
        lrs = self._lrs or ([float(optimizer.param_groups[0]["lr"])] if optimizer is not None else [args.learning_rate])
        extra = {"global_step": int(state.global_step), "optimizer_steps": len(self._lrs)}
        if self._losses:
            extra["mean_logged_loss"] = sum(self._losses) / len(self._losses)
        self.saved.append(
            save_epoch_checkpoint(
                model, self.out_dir, int(round(state.epoch)), sum(lrs) / len(lrs), lr_last=lrs[-1], extra=extra
            )
        )


__all__ = ["DDACheckpointCallback", "save_epoch_checkpoint"]
