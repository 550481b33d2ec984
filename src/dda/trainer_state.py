"""What a Hugging Face Trainer's output folder says about its checkpoints, read from `trainer_state.json`.

`transformers.Trainer` (and TRL's SFTTrainer, and the LLaMA-Factory and axolotl front ends, which train with it)
writes `OUT/checkpoint-N/` folders, N the global optimizer step, each with the weights (full, or a peft adapter)
and `trainer_state.json`: `global_step`, `epoch` (a float: 1.0 at the end of the first epoch, 0.5 half-way
through it), `max_steps` and `log_history`, a list of the entries the Trainer logged, every `logging_steps`
optimizer steps, like `{"loss": 2.1, "learning_rate": 4e-05, "epoch": 0.5, "step": 10}`. Only that JSON file is
read: `optimizer.pt`, `scheduler.pt`, `rng_state.pth` and `training_args.bin` are pickles, which dda never loads.

TracIn weights each checkpoint by the learning rate of the optimizer steps it stands for: those since the
previous checkpoint dda uses. `interval_learning_rate` takes the mean of the `learning_rate` entries logged at
steps after the previous checkpoint's step and up to this checkpoint's step. That is the same quantity as the
`lr` `dda finetune` and `DDACheckpointCallback` record (the mean rate of the epoch's optimizer steps). A mean
over the interval, not the one entry at the checkpoint's step: with the default linear schedule the rate at the
last step is 0 (older transformers log the rate after the scheduler's step, so it reads 0 exactly there), which
would drop the last checkpoint from TracIn. When nothing was logged in the interval (logging_steps larger than
save_steps), the latest entry before it stands in, and the checkpoint's `lr_source` says so.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

TRAINER_STATE = "trainer_state.json"
CHECKPOINT_DIR = re.compile(r"^checkpoint-(\d+)$")  # the name Trainer gives a checkpoint: checkpoint-{global_step}


class TrainerStateError(ValueError):
    """A trainer_state.json that is not what transformers writes; the message names the file and the field."""


@dataclass(frozen=True)
class TrainerState:
    """The parts of one trainer_state.json that dda uses."""

    path: Path
    """The trainer_state.json file."""
    global_step: int
    """Optimizer steps done when it was written (the N of checkpoint-N)."""
    epoch: float | None
    """Epochs done when it was written, fractional between epoch ends (None if absent)."""
    max_steps: int | None
    """The optimizer steps the whole run was set to take (None if absent)."""
    log_history: tuple[dict[str, Any], ...]
    """The logged entries, in order."""

    def learning_rates(self) -> list[tuple[int, float]]:
        """(step, learning_rate) of every log entry that has both, in step order."""
        return sorted((int(e["step"]), float(e["learning_rate"])) for e in self.log_history if "learning_rate" in e)


def read_trainer_state(folder: str | Path) -> TrainerState | None:
    """`folder`/trainer_state.json parsed and checked, or None when the folder has none."""
    path = Path(folder) / TRAINER_STATE
    if not path.exists():
        return None
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
    except ValueError as err:
        raise TrainerStateError(f"{path}: not valid JSON ({err})") from None
    if not isinstance(raw, dict):
        raise TrainerStateError(f"{path}: expected a JSON object, got {type(raw).__name__}")
    history = raw.get("log_history", [])
    if not isinstance(history, list):
        raise TrainerStateError(f"{path}: field 'log_history' must be a list, got {type(history).__name__}")
    for i, entry in enumerate(history):
        if not isinstance(entry, dict):
            raise TrainerStateError(f"{path}: log_history[{i}] must be an object, got {type(entry).__name__}")
        if "learning_rate" in entry:
            lr, step = entry["learning_rate"], entry.get("step")
            if not _is_number(lr) or not math.isfinite(float(lr)) or float(lr) < 0:
                raise TrainerStateError(f"{path}: log_history[{i}].learning_rate must be a number >= 0, got {lr!r}")
            if not isinstance(step, int) or isinstance(step, bool):
                raise TrainerStateError(f"{path}: log_history[{i}].step must be an integer, got {step!r}")
    return TrainerState(
        path=path,
        global_step=_int_field(raw, "global_step", path),
        epoch=float(raw["epoch"]) if _is_number(raw.get("epoch")) else None,
        max_steps=_int_field(raw, "max_steps", path) if raw.get("max_steps") is not None else None,
        log_history=tuple(history),
    )


@dataclass(frozen=True)
class IntervalRate:
    """The learning rate TracIn weights one checkpoint by, and where it came from."""

    value: float | None
    """The rate, or None when the log holds no rate at or before the checkpoint's step."""
    source: str
    """Which log entries gave it, for the index's metadata and the log line."""


def interval_learning_rate(state: TrainerState, since_step: int) -> IntervalRate:
    """The mean `learning_rate` logged at steps in (since_step, state.global_step]: the rate of the optimizer
    steps since the previous checkpoint; else the latest one logged before them; else None."""
    rates = [(s, lr) for s, lr in state.learning_rates() if s <= state.global_step]
    inside = [lr for s, lr in rates if s > since_step]
    name = state.path.name
    if inside:
        return IntervalRate(
            sum(inside) / len(inside),
            f"{name}: mean learning_rate of the {len(inside)} log entries at steps {since_step + 1}.."
            f"{state.global_step}",
        )
    if rates:
        step, lr = rates[-1]
        return IntervalRate(
            lr,
            f"{name}: nothing logged at steps {since_step + 1}..{state.global_step}; the latest learning_rate "
            f"logged before them (step {step})",
        )
    return IntervalRate(None, f"{name}: no learning_rate logged at or before step {state.global_step}")


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _int_field(raw: dict[str, Any], key: str, path: Path) -> int:
    value = raw.get(key)
    if not isinstance(value, int) or isinstance(value, bool) or value < 0:
        raise TrainerStateError(f"{path}: field '{key}' must be an integer >= 0, got {value!r}")
    return value
