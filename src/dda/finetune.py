"""Fine-tune with a checkpoint after every epoch: LoRA (peft) by default, full fine-tuning as an option.

Each epoch writes `epoch-K/` with the weights (safetensors), `dda_checkpoint.json` (epoch, lr in force,
mean loss) and the optimizer state (safetensors), `dda_checkpoint.json` last and atomically: a killed run
resumes from the last complete epoch and ends with the same weights as an uninterrupted one (the shuffle
order and dropout RNG are seeded per epoch).
"""

from __future__ import annotations

import dataclasses
import math
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .config import TrainConfig
from .data import Tokenized
from .features.capture import pad_batch, per_example_loss, select_modules
from .io import atomic_path, read_json, stable_hash, write_json, write_yaml
from .models import Checkpoint, base_model_record, discover_checkpoints, epoch_key


def _lr_at(step: int, total: int, cfg: TrainConfig) -> float:
    if cfg.warmup_steps and step < cfg.warmup_steps:
        return cfg.lr * (step + 1) / cfg.warmup_steps
    if cfg.scheduler == "linear":
        span = max(1, total - cfg.warmup_steps)
        return cfg.lr * max(0.0, 1 - (step - cfg.warmup_steps) / span)
    return cfg.lr


def _save_optimizer(opt: torch.optim.Optimizer, params: list[torch.Tensor], path: Path) -> None:
    from safetensors.torch import save_file

    tensors: dict[str, torch.Tensor] = {}
    for i, p in enumerate(params):
        for key, value in opt.state.get(p, {}).items():
            tensors[f"{i}.{key}"] = (value if torch.is_tensor(value) else torch.tensor(value)).detach().cpu()
    with atomic_path(path, suffix=".safetensors") as tmp:
        save_file({k: v.contiguous() for k, v in tensors.items()}, str(tmp))


def _load_optimizer(opt: torch.optim.Optimizer, params: list[torch.Tensor], path: Path) -> None:
    from safetensors.torch import load_file

    tensors = load_file(str(path))
    for i, p in enumerate(params):
        state = {k.split(".", 1)[1]: v.to(p.device) for k, v in tensors.items() if k.split(".", 1)[0] == str(i)}
        if state:
            opt.state[p] = state


def finetune(
    model: Any,
    data: Tokenized,
    cfg: TrainConfig,
    out_dir: str | Path,
    pad_id: int,
    run_config: dict | None = None,
    base_name: str | None = None,
    progress: Callable[[int, int, float], None] | None = None,
) -> list[Checkpoint]:
    """Train `model` on `data`; returns the checkpoints (one per epoch). The base model object is left as
    theta0 for LoRA (the adapter is unloaded at the end); full fine-tuning modifies it, so reload theta0."""
    out_dir = Path(out_dir)
    base_model = base_model_record(base_name, model)
    device = next(model.parameters()).device
    done_epochs = completed_epochs(out_dir)
    run_fp = _run_fingerprint(cfg, data)
    if done_epochs:
        _check_same_run(out_dir, done_epochs, run_fp)
        if len(done_epochs) >= cfg.epochs:
            return done_epochs[: cfg.epochs]
    if run_config is not None:  # only once the checks above passed: a refused run writes nothing
        write_yaml(out_dir / "config.yaml", run_config)
    train_model, params = _trainable(model, cfg, done_epochs)
    opt = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    if done_epochs:
        _load_optimizer(opt, params, Path(done_epochs[-1].path) / "optimizer.safetensors")
    steps_per_epoch = math.ceil(len(data) / cfg.batch_size)
    lengths = np.array([len(s) for s in data.input_ids])
    start_epoch = len(done_epochs) + 1
    step = (start_epoch - 1) * steps_per_epoch
    train_model.train()
    try:
        for epoch in range(start_epoch, cfg.epochs + 1):
            t0 = time.perf_counter()
            losses, lrs = _train_epoch(
                train_model, opt, params, data, cfg, epoch, step, steps_per_epoch, pad_id, device, progress
            )
            step += steps_per_epoch
            ckpt_dir = out_dir / f"epoch-{epoch}"
            _save_weights(train_model, cfg, ckpt_dir)
            _save_optimizer(opt, params, ckpt_dir / "optimizer.safetensors")
            write_json(  # last: an epoch without it is redone
                ckpt_dir / "dda_checkpoint.json",
                {
                    "epoch": epoch,
                    "lr": float(np.mean(lrs)),
                    "lr_last": lrs[-1],
                    "mean_loss": float(np.mean(losses)),
                    "steps": step,
                    "seconds": round(time.perf_counter() - t0, 2),
                    "method": cfg.method,
                    "examples": len(data),
                    "mean_tokens": float(lengths.mean()),
                    "run_fingerprint": run_fp,
                    "base_model": base_model,
                },
            )
    finally:
        train_model.eval()
        if cfg.method == "lora":
            train_model.unload()  # leaves `model` as theta0
    return completed_epochs(out_dir)


def _run_fingerprint(cfg: TrainConfig, data: Tokenized) -> str:
    """The data and every setting but the epoch count: resuming is only sound for the same (the count may grow)."""
    settings = dataclasses.asdict(cfg)
    settings.pop("epochs")
    return stable_hash({"train": settings, "data": data.fingerprint()})


def _check_same_run(out_dir: Path, done_epochs: list[Checkpoint], run_fp: str) -> None:
    found = read_json(Path(done_epochs[-1].path) / "dda_checkpoint.json").get("run_fingerprint")
    if found != run_fp:
        raise ValueError(
            f"{out_dir}: holds checkpoints of another fine-tuning run (other data or settings); "
            "use another directory or delete them"
        )


def _lora_targets(model: Any, cfg: TrainConfig) -> list[str]:
    """peft target_modules: the suffixes for every layer, else the full names of the selected layers' modules
    (peft matches a full name exactly, so only those layers get adapters)."""
    if cfg.lora.layers == "all":
        return list(cfg.lora.target_modules)
    try:
        return select_modules(model, cfg.lora.target_modules, cfg.lora.layers)
    except ValueError as e:  # select_modules speaks of features.layers, its usual caller
        raise ValueError(f"train.lora.layers='{cfg.lora.layers}': {e}") from None


def _trainable(model: Any, cfg: TrainConfig, done_epochs: list[Checkpoint]) -> tuple[Any, list[torch.Tensor]]:
    """The model to train (a fresh or resumed LoRA adapter on `model`, or `model` itself with the last epoch's
    weights for full fine-tuning) and its trainable parameters."""
    if cfg.method == "lora":
        from peft import LoraConfig, PeftModel, get_peft_model

        if done_epochs:
            train_model = PeftModel.from_pretrained(model, done_epochs[-1].path, is_trainable=True)
        else:
            torch.manual_seed(cfg.seed)
            lcfg = LoraConfig(
                r=cfg.lora.r,
                lora_alpha=cfg.lora.alpha,
                lora_dropout=cfg.lora.dropout,
                target_modules=_lora_targets(model, cfg),
                bias="none",
                task_type="CAUSAL_LM",
            )
            train_model = get_peft_model(model, lcfg)
        return train_model, [p for p in train_model.parameters() if p.requires_grad]
    train_model = model
    if done_epochs:
        from safetensors.torch import load_file

        train_model.load_state_dict(load_file(str(Path(done_epochs[-1].path) / "model.safetensors")), strict=False)
    for p in train_model.parameters():
        p.requires_grad_(True)
    return train_model, [p for p in train_model.parameters() if p.requires_grad]


def _train_epoch(
    train_model: Any,
    opt: torch.optim.Optimizer,
    params: list[torch.Tensor],
    data: Tokenized,
    cfg: TrainConfig,
    epoch: int,
    step: int,
    steps_per_epoch: int,
    pad_id: int,
    device: torch.device,
    progress: Callable[[int, int, float], None] | None,
) -> tuple[list[float], list[float]]:
    """One epoch from global step `step`; returns each step's loss and learning rate. The shuffle order and the
    dropout RNG are seeded per epoch, so a resumed run takes the same steps as an uninterrupted one."""
    n = len(data)
    total_steps = steps_per_epoch * cfg.epochs
    order = np.random.default_rng(cfg.seed * 1000 + epoch).permutation(n)
    torch.manual_seed(cfg.seed * 1000 + epoch)
    losses, lrs = [], []
    for b in range(steps_per_epoch):
        rows = order[b * cfg.batch_size : (b + 1) * cfg.batch_size]
        ids, attn, resp = pad_batch(
            [data.input_ids[i] for i in rows], [data.response_mask[i] for i in rows], pad_id, device
        )
        lr = _lr_at(step, total_steps, cfg)
        for group in opt.param_groups:
            group["lr"] = lr
        loss = per_example_loss(train_model, ids, attn, resp).mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        if cfg.max_grad_norm:
            torch.nn.utils.clip_grad_norm_(params, cfg.max_grad_norm)
        opt.step()
        losses.append(float(loss.detach()))
        lrs.append(lr)
        step += 1
        if progress:
            progress(epoch, b + 1, float(np.mean(losses)))
    return losses, lrs


def _save_weights(train_model: Any, cfg: TrainConfig, ckpt_dir: Path) -> None:
    """The epoch's weights: the adapter (LoRA) or the whole state dict (full), as safetensors."""
    if cfg.method == "lora":
        train_model.save_pretrained(str(ckpt_dir), safe_serialization=True)
        return
    from safetensors.torch import save_file

    ckpt_dir.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().cpu().contiguous() for k, v in train_model.state_dict().items()}
    # tied embeddings share storage; safetensors refuses shared tensors, so clone
    save_file({k: v.clone() for k, v in state.items()}, str(ckpt_dir / "model.safetensors"))


def completed_epochs(out_dir: Path) -> list[Checkpoint]:
    """The epochs whose dda_checkpoint.json (written last) exists; a half-written epoch is redone."""
    dirs = sorted((d for d in out_dir.glob("epoch-*") if (d / "dda_checkpoint.json").exists()), key=epoch_key)
    return [discover_checkpoints(d)[0] for d in dirs]
