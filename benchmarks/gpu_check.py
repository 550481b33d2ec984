#!/usr/bin/env python
"""The prepared GPU check: capture correctness on the device, and index cost at 0.5B and 7B shapes.

    PYTHONPATH=src python3 benchmarks/gpu_check.py --out runs/gpu-check     # one GPU: ~2 min, <= 8 min
    PYTHONPATH=src python3 benchmarks/gpu_check.py --device cpu --tiny      # tiny shapes on a CPU, seconds

Nothing is fetched and no weights are read: every model is a Llama built from a LlamaConfig with random weights
(the weights do not change the speed). It imports the standard library, torch, transformers, dda.features.capture
and dda.features.projection (which need torch alone); peft only for the LoRA floor, which is skipped without it.

(a) checks, each a PASS/FAIL line with its tolerance:
    * float32 model, hook features with the identity projection (batched, right-padded) vs autograd
      per-example weight gradients (one backward per example): relative L2 error per example <= 1e-4;
    * the same with dda's default Kronecker sketch, the autograd gradients projected through the same
      projector: <= 1e-4;
    * bfloat16 and float16 models (the same weights, cast) against the float32 autograd projection: cosine per
      example >= 0.99 (bf16) / 0.999 (fp16); the relative error is reported beside it.
(b) throughput on random Llama-architecture models (bf16; ~0.5B: hidden 1024, 24 layers; ~7B: hidden 4096,
    32 layers, intermediate 11008, vocab 32000), the same random batches (8 x 512 tokens, response = last third)
    for every row, warm-up batches first, CUDA-synchronised wall clock:
    * dda_index: dda's featurizer at its defaults (7 projections of the last third of the layers, Kronecker
      64 x 64 -> 256 per module, float32 projections), features copied to the host as the indexer does (the
      store write is left out: 0.1% of the index time on the CPU benchmark);
    * hf_full: plain HF forward + backward, model.train(), every parameter requires grad (a full fine-tuning
      step without the optimizer): the floor;
    * hf_lora: the same with a peft LoRA (r 16 on q_proj, v_proj) trainable (a LoRA fine-tuning step).
    tokens/s, peak GPU memory (torch.cuda.max_memory_allocated, weights included) and the ratio to each floor.
(c) OUT/gpu_check.json and OUT/gpu_check.md, rewritten after every section (a run stopped half-way still leaves
    what it measured); the markdown table is printed last.

A deadline (--budget-s, default 420 s from start) bounds the run: a section that cannot start in time is
recorded as skipped and a timed loop stops at the deadline with the batches it finished. Exit status 0 when
every check passed and no row failed, else 1.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import datetime as dt
import gc
import importlib.metadata
import json
import os
import platform
import sys
import time
import traceback
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

SRC = Path(__file__).resolve().parents[1] / "src"
if str(SRC) not in sys.path:
    sys.path.insert(0, str(SRC))

from dda.families import DECODER_PROJECTIONS  # noqa: E402 (after the path; names only, no yaml or torch)

# dda's feature defaults (dda.config.FeatureConfig; tests/test_gpu_check.py keeps the two equal). dda.config is
# not imported: it needs yaml, which the GPU machine may lack.
MODULES = list(DECODER_PROJECTIONS)
LAYERS = "last:1/3"
PROJ_K = 64
MODULE_DIM = 256
SEED = 0
LORA_R = 16

# Tolerances of section (a), and why. Float32 paths differ only in summation order (a batched per-example
# product against one weight-gradient GEMM per example): relative errors ~1e-6 expected. A half-precision model
# differs from the float32 one by its own arithmetic through every layer: on a CPU, at CHECK_SHAPE and these
# lengths, bf16 gave cosine 0.99995 (relative error 0.0105) and fp16 0.999999 (0.0013); GPU kernels (flash
# attention, other GEMM tilings) may differ, so the bounds leave room: 0.99 (the issue's bound) and 0.999.
FP32_REL_TOL = 1e-4
HALF_COS_TOL = {"bfloat16": 0.99, "float16": 0.999}


def llama_shape(hidden: int, intermediate: int, layers: int, heads: int, kv_heads: int, vocab: int) -> dict[str, int]:
    keys = ("hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads", "num_key_value_heads")
    return dict(zip((*keys, "vocab_size"), (hidden, intermediate, layers, heads, kv_heads, vocab), strict=True))


SHAPES: dict[str, dict[str, int]] = {
    "0.5B": llama_shape(1024, 4096, 24, 16, 16, 32000),  # ~0.47B: Qwen2.5-0.5B / SmolLM2-360M class
    "7B": llama_shape(4096, 11008, 32, 32, 32, 32000),  # Llama-2-7B's shape: 6.74B parameters, 13.5 GB in bf16
    "tiny-a": llama_shape(64, 128, 3, 4, 2, 256),
    "tiny-b": llama_shape(96, 192, 6, 4, 4, 256),
}
CHECK_SHAPE = llama_shape(256, 688, 6, 8, 4, 1024)
CHECK_SHAPE_TINY = llama_shape(32, 48, 3, 4, 2, 160)
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    ap.add_argument("--out", default="runs/gpu-check", help="folder for gpu_check.json and gpu_check.md")
    ap.add_argument("--device", default="auto", help="auto (cuda when available), cuda, cuda:N or cpu")
    ap.add_argument("--tiny", action="store_true", help="tiny shapes (seconds on a CPU): exercises the script")
    ap.add_argument("--models", default=None, help="comma list of shapes (default 0.5B,7B; --tiny: tiny-a,tiny-b)")
    ap.add_argument(
        "--dtype",
        default=None,
        choices=sorted(DTYPES),
        help="model dtype of section (b) (default bfloat16; --tiny: float32, a CPU's fast path)",
    )
    ap.add_argument("--seq-len", type=int, default=None, help="tokens per sequence (default 512; --tiny 32)")
    ap.add_argument("--batch-size", type=int, default=None, help="sequences per batch (default 8; --tiny 2)")
    ap.add_argument("--batches", type=int, default=None, help="timed batches per row (default 16; --tiny 2)")
    ap.add_argument("--warmup", type=int, default=None, help="untimed batches first (default 3; --tiny 1)")
    ap.add_argument("--budget-s", type=float, default=420.0, help="deadline for the whole run, from start")
    ap.add_argument("--skip-checks", action="store_true", help="section (b) only")
    ap.add_argument("--skip-throughput", action="store_true", help="section (a) only")
    args = ap.parse_args(argv)
    tiny = args.tiny
    args.models = (args.models or ("tiny-a,tiny-b" if tiny else "0.5B,7B")).split(",")
    unknown = [m for m in args.models if m not in SHAPES]
    if unknown:
        ap.error(f"--models: unknown {unknown} (known: {', '.join(SHAPES)})")
    args.dtype = args.dtype or ("float32" if tiny else "bfloat16")
    args.seq_len = args.seq_len or (32 if tiny else 512)
    args.batch_size = args.batch_size or (2 if tiny else 8)
    args.batches = args.batches or (2 if tiny else 16)
    args.warmup = args.warmup if args.warmup is not None else (1 if tiny else 3)
    return args


# ---------------------------------------------------------------------------------------------------- plumbing


class Deadline:
    def __init__(self, budget_s: float):
        self.start = time.monotonic()
        self.budget_s = budget_s

    def left(self) -> float:
        return self.budget_s - (time.monotonic() - self.start)

    def elapsed(self) -> float:
        return time.monotonic() - self.start


def version(pkg: str) -> str | None:
    try:
        return importlib.metadata.version(pkg)
    except importlib.metadata.PackageNotFoundError:
        return None


def machine_info(device: torch.device) -> dict[str, Any]:
    info: dict[str, Any] = {
        "date_utc": dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M"),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "logical_cpus": os.cpu_count(),
        "versions": {p: version(p) for p in ("torch", "transformers", "peft", "accelerate", "numpy")},
        "device": str(device),
        "float32_matmul_precision": torch.get_float32_matmul_precision(),
    }
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        info |= {
            "gpu": props.name,
            "gpu_memory_gib": round(props.total_memory / 2**30, 1),
            "compute_capability": f"{props.major}.{props.minor}",
            "multiprocessors": props.multi_processor_count,
            "cuda": torch.version.cuda,
        }
    return info


def write_text(path: Path, text: str) -> None:
    """Atomic: a temporary file renamed into place (dda.io's writer needs yaml, which may be missing here)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    tmp.replace(path)


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def free_memory(device: torch.device) -> None:
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()


@contextlib.contextmanager
def default_dtype(dtype: torch.dtype) -> Iterator[None]:
    old = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        yield
    finally:
        torch.set_default_dtype(old)


def build_llama(shape: dict[str, int], dtype: torch.dtype, device: torch.device, seed: int = 0) -> Any:
    """A randomly initialised LlamaForCausalLM, created directly on `device` in `dtype` (a 7B model built on
    the host in float32 would take 27 GB and minutes of initialisation)."""
    from transformers import LlamaConfig, LlamaForCausalLM

    cfg = LlamaConfig(
        **shape, max_position_embeddings=4096, pad_token_id=0, bos_token_id=1, eos_token_id=2, tie_word_embeddings=False
    )
    torch.manual_seed(seed)
    with default_dtype(dtype), torch.device(device):
        model = LlamaForCausalLM(cfg)
    first = next(model.parameters())
    if first.device.type != device.type or first.dtype != dtype:  # a constructor that ignored the context
        model.to(device=device, dtype=dtype)
    model.eval()
    return model


def n_params(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def param_bytes(model: torch.nn.Module) -> int:
    return sum(p.numel() * p.element_size() for p in model.parameters())


# ------------------------------------------------------------------------------------------------ (a) checks


def check_batch(vocab: int, lengths: list[int], device: torch.device, seed: int = 1):
    """Right-padded random sequences of different lengths; the response is each sequence's last two thirds."""
    from dda.features.capture import pad_batch

    gen = torch.Generator().manual_seed(seed)
    seqs = [torch.randint(3, vocab, (n,), generator=gen).tolist() for n in lengths]
    masks = [[j >= n // 3 for j in range(n)] for n in lengths]
    return seqs, masks, pad_batch(seqs, masks, 0, device)


def autograd_gradients(model: Any, names: list[str], seqs, masks, device: torch.device) -> list[dict]:
    """Reference: one backward per example with real weight gradients, {module: (d_out, d_in)} per example."""
    from dda.features.capture import pad_batch, per_example_loss

    mods = dict(model.named_modules())
    for p in model.parameters():
        p.requires_grad_(False)
    weights = {n: mods[n].weight for n in names}
    out = []
    for s, m in zip(seqs, masks, strict=True):
        for w in weights.values():
            w.requires_grad_(True)
            w.grad = None
        per_example_loss(model, *pad_batch([s], [m], 0, device)).sum().backward()
        out.append({n: w.grad.detach().clone() for n, w in weights.items()})
    for w in weights.values():
        w.requires_grad_(False)
        w.grad = None
    return out


def project_full_gradient(projector: Any, name: str, grad: torch.Tensor) -> torch.Tensor:
    """Project an explicit weight gradient G through the projector the hooks use: G = sum_j G[:, j] e_j^T, so
    'tokens' j with g_j = G[:, j] and x_j = e_j give the projection of G itself."""
    d_out, d_in = grad.shape
    eye = torch.eye(d_in, device=grad.device, dtype=grad.dtype)
    return projector.project(name, grad.T.unsqueeze(0), eye.unsqueeze(0))[0]


def reference_features(projector: Any, names: list[str], grads: list[dict]) -> torch.Tensor:
    return torch.stack(
        [torch.cat([project_full_gradient(projector, n, g[n]).reshape(-1) for n in names]) for g in grads]
    ).double()


def compare(feats: torch.Tensor, ref: torch.Tensor) -> dict[str, float]:
    feats = feats.double()
    rel = (feats - ref).norm(dim=1) / ref.norm(dim=1)
    cos = torch.nn.functional.cosine_similarity(feats, ref, dim=1)
    finite = bool(torch.isfinite(feats).all())
    return {
        "max_rel_error": float(rel.max()) if finite else float("inf"),
        "min_cosine": float(cos.min()) if finite else float("-inf"),
    }


def run_checks(device: torch.device, tiny: bool) -> list[dict[str, Any]]:
    from dda.features.capture import GradientFeaturizer, freeze, select_modules
    from dda.features.projection import IdentityProjector, KroneckerProjector

    shape = CHECK_SHAPE_TINY if tiny else CHECK_SHAPE
    lengths = [9, 14, 20, 12] if tiny else [96, 192, 150, 128]
    model = build_llama(shape, torch.float32, device, seed=0)
    seqs, masks, batch = check_batch(shape["vocab_size"], lengths, device)
    all_names = select_modules(model, MODULES, "all")
    default_names = select_modules(model, MODULES, LAYERS)
    grads = autograd_gradients(model, all_names, seqs, masks, device)
    freeze(model)
    checks: list[dict[str, Any]] = []

    def add(name: str, metric: str, value: float, tol: float, detail: dict[str, Any]) -> None:
        passed = value <= tol if metric == "max_rel_error" else value >= tol
        checks.append(
            {
                "name": name,
                "metric": metric,
                "value": value,
                "tolerance": f"{'<=' if metric == 'max_rel_error' else '>='} {tol:g}",
                "passed": passed,
                "detail": detail,
            }
        )

    ident = GradientFeaturizer(model, all_names, IdentityProjector())(*batch)
    ref_ident = reference_features(IdentityProjector(), all_names, grads)
    got = compare(ident, ref_ident)
    add(
        "fp32 hooks, identity projection vs autograd",
        "max_rel_error",
        got["max_rel_error"],
        FP32_REL_TOL,
        got | {"modules": len(all_names), "dims": int(ident.shape[1]), "tokens": lengths},
    )

    def kron() -> KroneckerProjector:
        return KroneckerProjector(PROJ_K, SEED, MODULE_DIM)

    ref_kron = reference_features(kron(), default_names, grads)
    feats = GradientFeaturizer(model, default_names, kron())(*batch)
    got = compare(feats, ref_kron)
    add(
        "fp32 hooks, default Kronecker sketch vs autograd projected",
        "max_rel_error",
        got["max_rel_error"],
        FP32_REL_TOL,
        got | {"modules": len(default_names), "dims": int(feats.shape[1])},
    )

    for dname in ("bfloat16", "float16"):
        half = copy.deepcopy(model).to(DTYPES[dname])
        feats = GradientFeaturizer(half, default_names, kron())(*batch)
        got = compare(feats, ref_kron)
        add(
            f"{dname} model, default Kronecker sketch vs fp32 autograd projected",
            "min_cosine",
            got["min_cosine"],
            HALF_COS_TOL[dname],
            got | {"feature_dtype": str(feats.dtype).replace("torch.", "")},
        )
        del half
    del model
    free_memory(device)
    return checks


# -------------------------------------------------------------------------------------------- (b) throughput


@dataclass
class Batches:
    ids: torch.Tensor  # (n, B, T) token ids on the device
    resp: torch.Tensor  # (B, T) bool, response positions (the loss)
    attn: torch.Tensor  # (B, T) all ones: equal lengths, as length bucketing makes them

    def labels(self, i: int) -> torch.Tensor:
        return self.ids[i].masked_fill(~self.resp, -100)


def make_batches(n: int, batch_size: int, seq_len: int, vocab: int, device: torch.device) -> Batches:
    gen = torch.Generator().manual_seed(123)
    ids = torch.randint(3, vocab, (n, batch_size, seq_len), generator=gen).to(device)
    resp = torch.zeros(batch_size, seq_len, dtype=torch.bool)
    resp[:, seq_len - seq_len // 3 :] = True  # the response: the last third (a summary after its document)
    return Batches(ids=ids, resp=resp.to(device), attn=torch.ones(batch_size, seq_len, dtype=torch.long, device=device))


def timed_loop(
    step: Callable[[int], None], batches: Batches, warmup: int, timed: int, device: torch.device, deadline: Deadline
) -> dict[str, Any]:
    """Warm-up steps, then timed steps until `timed` are done or the deadline passes (at least one timed)."""
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    for i in range(warmup):
        step(i % batches.ids.shape[0])
    sync(device)
    t0 = time.perf_counter()
    done = 0
    while done < timed and (done == 0 or deadline.left() > 0):
        step((warmup + done) % batches.ids.shape[0])
        done += 1
    sync(device)
    seconds = time.perf_counter() - t0
    tokens = done * batches.ids.shape[1] * batches.ids.shape[2]
    peak = torch.cuda.max_memory_allocated(device) / 1e9 if device.type == "cuda" else None
    return {
        "status": "ok" if done == timed else f"ok ({done} of {timed} batches: deadline)",
        "batches": done,
        "tokens": tokens,
        "seconds": seconds,
        "tokens_per_s": tokens / seconds,
        "peak_mem_gb": peak,
    }


def bench_dda(
    model: Any, batches: Batches, args: argparse.Namespace, device: torch.device, deadline: Deadline
) -> dict[str, Any]:
    from dda.features.capture import GradientFeaturizer, freeze, select_modules
    from dda.features.projection import KroneckerProjector

    freeze(model)
    model.eval()
    names = select_modules(model, MODULES, LAYERS)
    fz = GradientFeaturizer(model, names, KroneckerProjector(PROJ_K, SEED, MODULE_DIM))

    def step(i: int) -> None:
        feats = fz(batches.ids[i], batches.attn, batches.resp)
        feats.cpu()  # the indexer's host copy (its store write is left out)

    row = timed_loop(step, batches, args.warmup, args.batches, device, deadline)
    return row | {
        "note": f"{len(names)} modules, Kronecker {PROJ_K}x{PROJ_K} -> {MODULE_DIM}, dim {fz.dim}",
        "dim": fz.dim,
    }


def hf_step(model: Any, batches: Batches) -> Callable[[int], None]:
    def step(i: int) -> None:
        loss = model(input_ids=batches.ids[i], attention_mask=batches.attn, labels=batches.labels(i)).loss
        loss.backward()
        model.zero_grad(set_to_none=True)

    return step


def bench_hf_full(
    model: Any, batches: Batches, args: argparse.Namespace, device: torch.device, deadline: Deadline
) -> dict[str, Any]:
    model.train()
    for p in model.parameters():
        p.requires_grad_(True)
    try:
        row = timed_loop(hf_step(model, batches), batches, args.warmup, args.batches, device, deadline)
    finally:
        model.zero_grad(set_to_none=True)
        for p in model.parameters():
            p.requires_grad_(False)
        model.eval()
    return row | {"note": "HF forward + backward, every parameter requires grad, no optimizer"}


def bench_hf_lora(
    model: Any, batches: Batches, args: argparse.Namespace, device: torch.device, deadline: Deadline
) -> dict[str, Any]:
    try:
        from peft import LoraConfig, get_peft_model
    except ImportError:
        return {"status": "skipped: peft not installed"}
    # Last row on this model: peft wraps its Linear layers in place.
    peft_model = get_peft_model(
        model, LoraConfig(r=LORA_R, lora_alpha=2 * LORA_R, target_modules=["q_proj", "v_proj"], lora_dropout=0.0)
    )
    peft_model.train()
    row = timed_loop(hf_step(peft_model, batches), batches, args.warmup, args.batches, device, deadline)
    trainable = sum(p.numel() for p in peft_model.parameters() if p.requires_grad)
    return row | {
        "note": f"HF forward + backward, LoRA r {LORA_R} on q_proj, v_proj trainable ({trainable:,} "
        "parameters), no optimizer"
    }


ROWS: dict[str, Callable[..., dict[str, Any]]] = {
    "dda_index": bench_dda,
    "hf_full": bench_hf_full,
    "hf_lora": bench_hf_lora,
}
# A row needs at least this much time left to start (the 7B model's rows take ~10 s each on an H200 by the FLOP
# count; the margin covers compilation and allocator warm-up).
MIN_LEFT_S = {"model": 45.0, "row": 20.0}


def run_throughput(
    args: argparse.Namespace,
    device: torch.device,
    deadline: Deadline,
    save: Callable[[], None],
    rows: list[dict[str, Any]],
) -> None:
    dtype = DTYPES[args.dtype]
    for shape_name in args.models:
        shape = SHAPES[shape_name]
        base = {"model": shape_name, "dtype": args.dtype, "seq_len": args.seq_len, "batch_size": args.batch_size}
        if deadline.left() < (0 if args.tiny else MIN_LEFT_S["model"]):
            rows.extend(base | {"method": m, "status": "skipped: deadline"} for m in ROWS)
            save()
            continue
        model = None
        try:
            t0 = time.perf_counter()
            model = build_llama(shape, dtype, device, seed=0)
            build_s = time.perf_counter() - t0
            info = {
                "params": n_params(model),
                "weights_gb": param_bytes(model) / 1e9,
                "build_s": build_s,
                "attn_implementation": getattr(model.config, "_attn_implementation", None),
            }
            batches = make_batches(
                args.warmup + args.batches, args.batch_size, args.seq_len, shape["vocab_size"], device
            )
            for method, fn in ROWS.items():
                if deadline.left() < (0 if args.tiny else MIN_LEFT_S["row"]):
                    rows.append(base | info | {"method": method, "status": "skipped: deadline"})
                    continue
                try:
                    row = fn(model, batches, args, device, deadline)
                except torch.cuda.OutOfMemoryError as e:
                    row = {"status": "oom", "error": str(e).splitlines()[0]}
                except Exception as e:  # recorded, and the run goes on to the next row
                    row = {"status": "error", "error": f"{type(e).__name__}: {e}", "traceback": traceback.format_exc()}
                rows.append(base | info | {"method": method} | row)
                free_memory(device)
                save()
        except torch.cuda.OutOfMemoryError as e:
            rows.append(base | {"method": "build", "status": "oom", "error": str(e).splitlines()[0]})
        finally:
            del model
            free_memory(device)
        add_ratios(rows)
        save()


def add_ratios(rows: list[dict[str, Any]]) -> None:
    by_model: dict[str, dict[str, dict[str, Any]]] = {}
    for r in rows:
        by_model.setdefault(r["model"], {})[r["method"]] = r
    for methods in by_model.values():
        for r in methods.values():
            for floor, key in (("hf_full", "ratio_to_hf_full"), ("hf_lora", "ratio_to_hf_lora")):
                f = methods.get(floor)
                ok = f and r.get("tokens_per_s") and f.get("tokens_per_s")
                r[key] = (f["tokens_per_s"] / r["tokens_per_s"]) if ok else None  # time per token / the floor's


# ------------------------------------------------------------------------------------------------ (c) report


def fmt(x: Any, spec: str) -> str:
    return "–" if x is None else format(x, spec)


def markdown(result: dict[str, Any]) -> str:
    m = result["machine"]
    gpu = m.get("gpu", "no GPU")
    lines = [
        f"# dda GPU check, {m['date_utc']} UTC",
        "",
        f"{gpu} ({m.get('gpu_memory_gib', '–')} GiB, CUDA {m.get('cuda', '–')}), torch "
        f"{m['versions']['torch']}, transformers {m['versions']['transformers']}, peft {m['versions']['peft']}; "
        f"device {m['device']}; float32 matmul precision '{m['float32_matmul_precision']}'. "
        f"Command: `{result['command']}`. Total {result['seconds_total']:.0f} s.",
        "",
        "## (a) capture on the device",
        "",
        "| check | value | tolerance | result |",
        "|---|---|---|---|",
    ]
    for c in result["checks"]:
        lines.append(
            f"| {c['name']} | {c['metric']} {c['value']:.6g} | {c['tolerance']} | {'PASS' if c['passed'] else 'FAIL'} |"
        )
    if result.get("checks_status"):
        lines.append(f"\n{result['checks_status']}")
    s = result["settings"]
    lines += [
        "",
        f"## (b) index throughput ({s['dtype']} weights, random init; {s['batch_size']} x {s['seq_len']} "
        f"tokens per batch, {s['warmup']} warm-up + {s['batches']} timed batches; response = last third)",
        "",
        "| model | params | row | status | tokens/s | time / HF full | time / HF LoRA | peak GPU GB | weights GB |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in result["throughput"]:
        params = f"{r['params'] / 1e9:.2f}B" if r.get("params") else "–"
        lines.append(
            f"| {r['model']} | {params} | {r['method']} | {r['status']} | {fmt(r.get('tokens_per_s'), ',.0f')}"
            f" | {fmt(r.get('ratio_to_hf_full'), '.2f')} | {fmt(r.get('ratio_to_hf_lora'), '.2f')} | "
            f"{fmt(r.get('peak_mem_gb'), '.1f')} | {fmt(r.get('weights_gb'), '.1f')} |"
        )
    lines += [
        "",
        "dda_index: dda's featurizer at its defaults (7 projections of the last third of the layers, "
        f"Kronecker {PROJ_K}x{PROJ_K} -> {MODULE_DIM} per module, float32 projections), features copied to "
        "the host; hf_full: HF forward + backward with every parameter trainable; hf_lora: the same with a "
        f"LoRA (r {LORA_R}, q_proj/v_proj) trainable. 'time / HF ...' = seconds per token over the floor's.",
        "",
        f"Overall: **{result['status']}**",
        "",
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    deadline = Deadline(args.budget_s)
    if args.device == "auto":
        device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    else:
        device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        print("gpu_check: --device cuda but torch sees no GPU", file=sys.stderr)
        return 2
    if device.type == "cpu" and not args.tiny:
        print("gpu_check: the 0.5B/7B shapes need a GPU; on a CPU run it with --tiny", file=sys.stderr)
        return 2
    torch.set_float32_matmul_precision("highest")  # float32 means float32 (no TF32) in the checks' references
    out = Path(args.out)
    result: dict[str, Any] = {
        "schema": 1,
        "command": " ".join([Path(sys.argv[0]).name, *(argv if argv is not None else sys.argv[1:])]),
        "machine": machine_info(device),
        "settings": {
            "tiny": args.tiny,
            "dtype": args.dtype,
            "seq_len": args.seq_len,
            "batch_size": args.batch_size,
            "batches": args.batches,
            "warmup": args.warmup,
            "budget_s": args.budget_s,
            "models": {m: SHAPES[m] for m in args.models},
            "modules": MODULES,
            "layers": LAYERS,
            "proj_k": PROJ_K,
            "module_dim": MODULE_DIM,
            "lora_r": LORA_R,
            "tolerances": {"fp32_max_rel_error": FP32_REL_TOL, "half_min_cosine": HALF_COS_TOL},
        },
        "checks": [],
        "throughput": [],
        "status": "running",
        "seconds_total": 0.0,
    }

    def save() -> None:
        result["seconds_total"] = deadline.elapsed()
        write_text(out / "gpu_check.json", json.dumps(result, indent=2) + "\n")
        write_text(out / "gpu_check.md", markdown(result))

    save()
    failed = False
    if not args.skip_checks:
        try:
            result["checks"] = run_checks(device, args.tiny)
        except Exception as e:
            result["checks_status"] = f"error: {type(e).__name__}: {e}"
            result["checks_traceback"] = traceback.format_exc()
            failed = True
        for c in result["checks"]:
            print(
                f"{'PASS' if c['passed'] else 'FAIL'}  {c['name']}: {c['metric']} {c['value']:.6g} "
                f"(tolerance {c['tolerance']})",
                flush=True,
            )
        failed |= not all(c["passed"] for c in result["checks"])
        save()
    if not args.skip_throughput:
        run_throughput(args, device, deadline, save, result["throughput"])
        failed |= any(r["status"] in ("error", "oom") for r in result["throughput"])
    result["status"] = "FAIL" if failed else "PASS"
    save()
    print(markdown(result), flush=True)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
