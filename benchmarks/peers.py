"""Peer adapters for benchmarks/speed.py, plus the helpers every method shares.

Each `run_<name>(bench)` scores the same 2*Q query sequences (Q negatives, then Q positives) against the
same N training documents, on the same model and LoRA checkpoint, and returns a `MethodResult` whose
`scores` has shape (2*Q, N) in the original training order; speed.py forms the contrast (negative minus
positive) and compares it with the exact reference.

Every adapter uses the library the way its documentation shows, on its CPU path, with gradients taken
w.r.t. the LoRA parameters (lora_A / lora_B of q_proj and v_proj) and the same per-example loss: the mean
token cross-entropy over the summary tokens. Two shared rules keep the comparison fair:

* the training set is fed in dda's length-sorted batch order (batch size 8) wherever the library takes a
  dataset or data loader, so every method pads equally little; scores are mapped back to the original order;
* model and adapter loading is outside the timed region for every in-process method. Bergson runs as its CLI,
  so its time includes its own start-up and model load (stated in its note).

A library that is missing or raises is reported with the exception text by speed.py; nothing is estimated.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

LORA_SUFFIXES = ("lora_A.default", "lora_B.default")


# ---------------------------------------------------------------------------------------------- shared types


@dataclass
class MethodResult:
    seconds: float
    scores: np.ndarray | None = None  # (2*Q, N): rows 0..Q-1 negatives, Q..2Q-1 positives
    note: str = ""
    phases: dict[str, float] = field(default_factory=dict)
    extra: dict[str, Any] = field(default_factory=dict)
    variants: dict[str, np.ndarray] = field(default_factory=dict)  # other (2Q, N) matrices to rank-compare


@dataclass
class Bench:
    """Everything a method needs; built by speed.py in each child process (model load is not timed)."""

    args: Any
    out: Path
    model: Any  # the base model (theta0), float32, eval mode
    tokenizer: Any
    train: Any  # dda.data.Tokenized, N rows
    queries: Any  # dda.data.Tokenized, 2*Q rows: negatives then positives
    ckpt: Any  # dda.models.Checkpoint of the LoRA adapter
    pad_id: int

    @property
    def n_train(self) -> int:
        return len(self.train)

    @property
    def work(self) -> Path:
        return self.out / "work"

    def lengths(self, data: Any = None) -> np.ndarray:
        data = self.train if data is None else data
        return np.array([len(s) for s in data.input_ids])

    def batches(self, data: Any = None) -> list[np.ndarray]:
        """dda's own batching: rows sorted longest first, `batch_size` per batch."""
        from dda.features.index import length_sorted_batches

        data = self.train if data is None else data
        return length_sorted_batches(self.lengths(data), np.arange(len(data)), self.args.batch_size)

    def order(self) -> np.ndarray:
        """Training rows in batch order: position j of a peer's dataset holds training row order[j]."""
        return np.concatenate(self.batches())

    def unpermute(self, scores_in_order: np.ndarray) -> np.ndarray:
        out = np.empty_like(scores_in_order)
        out[:, self.order()] = scores_in_order
        return out


# --------------------------------------------------------------------------------------------- shared helpers


def lora_model(bench: Bench, trainable: bool = True) -> Any:
    """The base model with the benchmark's LoRA adapter injected; only LoRA weights require grad."""
    from peft import PeftModel

    model = PeftModel.from_pretrained(bench.model, bench.ckpt.path, is_trainable=trainable)
    model.eval()
    for name, p in model.named_parameters():
        p.requires_grad_(trainable and "lora_" in name)
    return model


def lora_param_names(model: torch.nn.Module) -> list[str]:
    return [n for n, p in model.named_parameters() if "lora_" in n and p.requires_grad]


def lora_module_names(model: torch.nn.Module) -> list[str]:
    return [n for n, _ in model.named_modules() if n.endswith(LORA_SUFFIXES)]


def labels_for(ids: Sequence[int], mask: Sequence[bool]) -> list[int]:
    """HF-style labels: the token where it is a summary token, -100 elsewhere (HF shifts internally)."""
    return [t if m else -100 for t, m in zip(ids, mask, strict=True)]


def pad_rows(data: Any, rows: Sequence[int], pad_id: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(input_ids, attention_mask, labels), right-padded to the longest row."""
    rows = [int(r) for r in rows]
    width = max(len(data.input_ids[r]) for r in rows)
    ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    attn = torch.zeros((len(rows), width), dtype=torch.long)
    labels = torch.full((len(rows), width), -100, dtype=torch.long)
    for i, r in enumerate(rows):
        seq = data.input_ids[r]
        ids[i, : len(seq)] = torch.tensor(seq)
        attn[i, : len(seq)] = 1
        labels[i, : len(seq)] = torch.tensor(labels_for(seq, data.response_mask[r]))
    return ids, attn, labels


def mean_response_ce(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Per-example mean next-token cross-entropy over label != -100 positions, shape (B,). Same loss as
    dda.features.capture.per_example_loss and as HF's model(..., labels=...).loss for a batch of one."""
    tgt = labels[:, 1:]
    lg = logits[:, :-1].float()
    tok = F.cross_entropy(lg.reshape(-1, lg.shape[-1]), tgt.reshape(-1), ignore_index=-100, reduction="none")
    tok = tok.view(tgt.shape)
    valid = (tgt != -100).to(tok.dtype)
    return (tok * valid).sum(1) / valid.sum(1).clamp_min(1)


class _RowsDataset(torch.utils.data.Dataset):
    """Items are (input_ids, labels) 1-D tensors of variable length, in the given row order."""

    def __init__(self, data: Any, rows: Sequence[int]):
        self.items = [
            (torch.tensor(data.input_ids[r]), torch.tensor(labels_for(data.input_ids[r], data.response_mask[r])))
            for r in rows
        ]

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        return self.items[i]


def _pad_pairs(items: Sequence[tuple[torch.Tensor, torch.Tensor]], pad_id: int):
    width = max(len(ids) for ids, _ in items)
    ids = torch.full((len(items), width), pad_id, dtype=torch.long)
    attn = torch.zeros((len(items), width), dtype=torch.long)
    labels = torch.full((len(items), width), -100, dtype=torch.long)
    for i, (a, lab) in enumerate(items):
        ids[i, : len(a)] = a
        attn[i, : len(a)] = 1
        labels[i, : len(a)] = lab
    return ids, attn, labels


class PadCollate:
    """Collate (ids, labels) items into a padded batch; `kind` picks the output layout a library expects."""

    def __init__(self, pad_id: int, kind: str):
        self.pad_id, self.kind = pad_id, kind

    def __call__(self, items):
        ids, attn, labels = _pad_pairs(items, self.pad_id)
        if self.kind == "dict":
            return {"input_ids": ids, "attention_mask": attn, "labels": labels}
        if self.kind == "ids_labels":
            return ids, labels
        return ids, attn, labels


def _functional_loss(model: torch.nn.Module, params: Any, input_ids: torch.Tensor, labels: torch.Tensor):
    """Loss of ONE example (1-D tensors) through torch.func.functional_call, as TRAK and dattri require.
    No attention mask: padding is on the right and attention is causal, so pads never reach real tokens, and
    pad positions carry label -100."""
    out = torch.func.functional_call(model, params, args=(), kwargs={"input_ids": input_ids.unsqueeze(0)})
    return mean_response_ce(out.logits, labels.unsqueeze(0)).sum()


@contextlib.contextmanager
def _quiet_logs() -> Iterator[None]:
    old = logging.root.manager.disable
    logging.disable(logging.WARNING)
    try:
        yield
    finally:
        logging.disable(old)


# ---------------------------------------------------------------------------------------------------- TRAK


def run_trak(bench: Bench) -> MethodResult:
    """traker.TRAKer on CPU: FunctionalGradientComputer (torch.func vmap per-sample gradients), the
    BasicProjector it picks on CPU (Gaussian, regenerated blockwise per batch) to --proj-dim, float32,
    grad_wrt = the LoRA parameters, model output = the per-example mean summary loss (out-to-loss gradient 1)."""
    from trak import TRAKer
    from trak.modelout_functions import AbstractModelOutput

    model = lora_model(bench)
    names = lora_param_names(model)

    class LMLossOutput(AbstractModelOutput):
        def __init__(self) -> None:
            super().__init__()

        def get_output(self, model, weights, buffers, input_ids, labels):  # noqa: D102 - TRAK's signature
            return _functional_loss(model, (weights, buffers), input_ids, labels)

        def get_out_to_loss_grad(self, model, weights, buffers, batch):  # noqa: D102
            return torch.ones(batch[0].shape[0], 1)

    work = bench.work / "trak"
    shutil.rmtree(work, ignore_errors=True)
    q = len(bench.queries)
    t0 = time.perf_counter()
    with _quiet_logs():
        traker = TRAKer(
            model=model,
            task=LMLossOutput(),
            train_set_size=bench.n_train,
            save_dir=str(work),
            load_from_save_dir=True,
            device="cpu",
            proj_dim=bench.args.proj_dim,
            use_half_precision=False,
            grad_wrt=names,
            logging_level=logging.WARNING,
        )
        traker.load_checkpoint(model.state_dict(), model_id=0)
        for rows in bench.batches():
            ids, _attn, labels = pad_rows(bench.train, rows, bench.pad_id)
            traker.featurize(batch=(ids, labels), inds=np.asarray(rows))
        # TRAK's default ridge is 0, and Phi^T Phi is singular when N < proj_dim: use 1e-2 x its mean diagonal.
        phi = np.asarray(traker.saver.current_store["grads"], dtype=np.float32)
        lam = 1e-2 * float((phi.astype(np.float64) ** 2).sum() / phi.shape[1])
        traker.score_computer.lambda_reg = lam
        traker.finalize_features()
        t_train = time.perf_counter()
        traker.start_scoring_checkpoint(exp_name="queries", checkpoint=model.state_dict(), model_id=0, num_targets=q)
        for start in range(0, q, bench.args.batch_size):
            rows = list(range(start, min(q, start + bench.args.batch_size)))
            ids, _attn, labels = pad_rows(bench.queries, rows, bench.pad_id)
            traker.score(batch=(ids, labels), num_samples=len(rows))
        scores = np.array(traker.finalize_scores(exp_name="queries"), dtype=np.float64).T  # (2Q, N)
    t1 = time.perf_counter()
    phi_q = np.asarray(traker.saver.current_store["queries_grads"], dtype=np.float64)
    return MethodResult(
        seconds=t1 - t0,
        scores=scores,
        phases={"train_features": t_train - t0, "queries_and_scores": t1 - t_train},
        note=(
            f"proj_dim={bench.args.proj_dim} Gaussian (BasicProjector), ridge lambda={lam:.3g} "
            "(1e-2 x mean diag of Phi^T Phi); scores include (Phi^T Phi + lambda I)^-1, so they are not plain "
            "dot products by design"
        ),
        variants={"projected_dot": phi_q @ phi.astype(np.float64).T},
    )


# -------------------------------------------------------------------------------------------- Captum TracInCP


class _LogitsOnly(torch.nn.Module):
    def __init__(self, model: torch.nn.Module):
        super().__init__()
        self.m = model

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        return self.m(input_ids=input_ids, attention_mask=attention_mask).logits


class _SummedMeanCE(torch.nn.Module):
    """Sum over examples of each example's mean summary loss: a 'sum'-reduction loss in Captum's sense."""

    reduction = "sum"

    def forward(self, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        return mean_response_ce(logits, labels).sum()


def run_captum_tracincp(bench: Bench) -> MethodResult:
    """captum.influence.TracInCP with sample_wise_grads_per_batch=True (per-sample gradients from layer hooks),
    layers = the LoRA Linear modules, one checkpoint (the adapter, learning-rate weight 1): exact gradient dot
    products in LoRA space, no projection."""
    from captum.influence import TracInCP

    model = lora_model(bench)
    # Captum hooks each layer's input tensor; layer 0's input (the frozen embeddings) must require grad. HF's own
    # switch for that (as used with PEFT + gradient checkpointing):
    model.enable_input_require_grads()
    wrapper = _LogitsOnly(model)
    layers = ["m." + n for n in lora_module_names(model)]
    order = bench.order()
    collate = PadCollate(bench.pad_id, "tuple")
    t0 = time.perf_counter()
    train_loader = torch.utils.data.DataLoader(
        _RowsDataset(bench.train, order), batch_size=bench.args.batch_size, shuffle=False, collate_fn=collate
    )
    query_loader = torch.utils.data.DataLoader(
        _RowsDataset(bench.queries, range(len(bench.queries))),
        batch_size=bench.args.batch_size,
        shuffle=False,
        collate_fn=collate,
    )
    ckpt_file = str(Path(bench.ckpt.path) / "adapter_model.safetensors")
    with warnings_off():
        tracin = TracInCP(
            wrapper,
            train_dataset=train_loader,
            checkpoints=[ckpt_file],
            checkpoints_load_func=lambda _model, _path: 1.0,
            layers=layers,
            loss_fn=_SummedMeanCE(),
            batch_size=bench.args.batch_size,
            sample_wise_grads_per_batch=True,
        )
        scores = tracin.influence(inputs=query_loader, k=None)
    t1 = time.perf_counter()
    scores = bench.unpermute(scores.detach().double().numpy())
    return MethodResult(
        seconds=t1 - t0,
        scores=scores,
        note="exact per-sample LoRA gradients (layer hooks); enable_input_require_grads() so layer 0 can be hooked",
    )


@contextlib.contextmanager
def warnings_off() -> Iterator[None]:
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        yield


# ------------------------------------------------------------------------------------------------ Kronfluence


def run_kronfluence(bench: Bench) -> MethodResult:
    """kronfluence Analyzer with FactorArguments(strategy="identity"): tracked modules = the LoRA Linear modules,
    per-sample gradients from its module wrappers, pairwise scores query x train, no preconditioning."""
    return _run_kronfluence(bench, "identity")


def run_kronfluence_ekfac(bench: Bench) -> MethodResult:
    """The same with strategy="ekfac", Kronfluence's own method: covariance and eigendecomposition factors fitted
    on the training documents (with sampled labels, as its docs prescribe), then preconditioned pairwise scores.
    Its scores are influence, not gradient dot products, so its Spearman vs the exact dot products is not 1."""
    return _run_kronfluence(bench, "ekfac")


def _run_kronfluence(bench: Bench, strategy: str) -> MethodResult:
    from kronfluence.analyzer import Analyzer, prepare_model
    from kronfluence.arguments import FactorArguments, ScoreArguments
    from kronfluence.task import Task
    from kronfluence.utils.dataset import DataLoaderKwargs

    model = lora_model(bench, trainable=False)
    modules = lora_module_names(model)

    class LMTask(Task):
        def compute_train_loss(self, batch, model, sample=False):  # noqa: D102
            logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
            if sample:  # only for Fisher-based strategies (ekfac); identity never samples
                with torch.no_grad():
                    probs = torch.softmax(logits.float(), dim=-1)
                    sampled = torch.multinomial(probs.view(-1, probs.shape[-1]), 1).view(batch["labels"].shape)
                labels = torch.where(batch["labels"] == -100, batch["labels"], torch.roll(sampled, 1, dims=1))
                return mean_response_ce(logits, labels).sum()
            return mean_response_ce(logits, batch["labels"]).sum()

        def compute_measurement(self, batch, model):  # noqa: D102
            logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
            return mean_response_ce(logits, batch["labels"]).sum()

        def get_influence_tracked_modules(self):  # noqa: D102
            return modules

        def get_attention_mask(self, batch):  # noqa: D102
            return batch["attention_mask"]

    task = LMTask()
    work = bench.work / "kronfluence"
    shutil.rmtree(work, ignore_errors=True)
    order = bench.order()
    dl_kwargs = DataLoaderKwargs(collate_fn=PadCollate(bench.pad_id, "dict"))
    t0 = time.perf_counter()
    train_ds = _DictView(_RowsDataset(bench.train, order))
    query_ds = _DictView(_RowsDataset(bench.queries, range(len(bench.queries))))
    with _quiet_logs(), warnings_off():
        model = prepare_model(model, task)
        analyzer = Analyzer(
            analysis_name="speed", model=model, task=task, cpu=True, disable_tqdm=True, output_dir=str(work)
        )
        analyzer.set_dataloader_kwargs(dl_kwargs)
        analyzer.fit_all_factors(
            factors_name=strategy,
            dataset=train_ds,
            per_device_batch_size=bench.args.batch_size,
            factor_args=FactorArguments(strategy=strategy),
            overwrite_output_dir=True,
        )
        t_factors = time.perf_counter()
        analyzer.compute_pairwise_scores(
            scores_name="pairwise",
            factors_name=strategy,
            query_dataset=query_ds,
            train_dataset=train_ds,
            per_device_query_batch_size=len(bench.queries),
            per_device_train_batch_size=bench.args.batch_size,
            score_args=ScoreArguments(),
            overwrite_output_dir=True,
        )
        scores = analyzer.load_pairwise_scores("pairwise")["all_modules"]
    t1 = time.perf_counter()
    scores = bench.unpermute(scores.detach().double().numpy())
    note = (
        "identity strategy: exact per-sample LoRA gradients, no projection"
        if strategy == "identity"
        else "ekfac strategy: fitted EK-FAC factors (covariance, eigendecomposition, lambda), preconditioned scores"
    )
    return MethodResult(
        seconds=t1 - t0,
        scores=scores,
        note=note,
        phases={"fit_factors": t_factors - t0, "pairwise_scores": t1 - t_factors},
    )


class _DictView(torch.utils.data.Dataset):
    """Passes (ids, labels) items through unchanged; PadCollate('dict') builds the dict batches."""

    def __init__(self, base: _RowsDataset):
        self.base = base

    def __len__(self) -> int:
        return len(self.base)

    def __getitem__(self, i: int):
        return self.base[i]


# ----------------------------------------------------------------------------------------------------- dattri


def _run_dattri(bench: Bench, projected: bool) -> MethodResult:
    from dattri.algorithm.tracin import TracInAttributor
    from dattri.task import AttributionTask

    model = lora_model(bench)
    names = lora_param_names(model)

    def loss_func(params, data):
        input_ids, labels = data
        return _functional_loss(model, params, input_ids, labels)

    order = bench.order()
    collate = PadCollate(bench.pad_id, "ids_labels")
    t0 = time.perf_counter()
    train_loader = torch.utils.data.DataLoader(
        _RowsDataset(bench.train, order), batch_size=bench.args.batch_size, shuffle=False, collate_fn=collate
    )
    test_loader = torch.utils.data.DataLoader(
        _RowsDataset(bench.queries, range(len(bench.queries))),
        batch_size=len(bench.queries),
        shuffle=False,
        collate_fn=collate,
    )
    with warnings_off():
        task = AttributionTask(loss_func=loss_func, model=model, checkpoints=model.state_dict())
        proj = {"proj_dim": bench.args.proj_dim, "proj_max_batch_size": 32, "proj_seed": 0, "device": "cpu"}
        attributor = TracInAttributor(
            task=task,
            weight_list=torch.ones(1),
            normalized_grad=False,
            projector_kwargs=proj,
            layer_name=names,
            device="cpu",
        )
        if not projected:
            # attribute() has an unprojected path (projector_kwargs None) that the constructor cannot reach
            # (it always merges its defaults): switch it on for the exact Grad-Dot.
            attributor.projector_kwargs = None
        scores = attributor.attribute(train_loader, test_loader)  # (N, 2Q) in loader order
    t1 = time.perf_counter()
    scores = bench.unpermute(scores.detach().double().numpy().T)
    note = (
        f"TracInAttributor, lr weight 1 (one checkpoint), Gaussian projection to {bench.args.proj_dim}"
        if projected
        else "TracInAttributor(weight_list=ones, normalized_grad=False), unprojected: exact Grad-Dot in LoRA space"
    )
    return MethodResult(
        seconds=t1 - t0,
        scores=scores,
        note=note + "; torch.func vmap per-sample gradients; query gradients are recomputed for "
        "every training batch (the library's loop)",
    )


def run_dattri_tracin(bench: Bench) -> MethodResult:
    return _run_dattri(bench, projected=True)


def run_dattri_grad_dot(bench: Bench) -> MethodResult:
    return _run_dattri(bench, projected=False)


# ---------------------------------------------------------------------------------------------------- Bergson


def bergson_executable() -> str:
    exe = Path(sys.executable).parent / "bergson"
    if exe.exists():
        return str(exe)
    found = shutil.which("bergson")
    if not found:
        raise ModuleNotFoundError("bergson CLI not found (pip install --no-deps -r requirements-bench.txt)")
    return found


def run_bergson(bench: Bench) -> MethodResult:
    """`bergson build` on a pre-tokenized dataset (input_ids + labels, the same tokens as every method) holding
    the N training rows followed by the 2Q query rows, --model = the LoRA adapter directory (Bergson detects the
    PEFT adapter and collects gradients of the LoRA modules), per-module two-sided projection to --bergson-k,
    mean loss per document, batches of at most 8 documents; scores = query rows . training rows of its index."""
    import datasets

    exe = bergson_executable()
    from bergson.data import load_gradients

    from dda.config import ModelConfig
    from dda.models import resolve_model_source

    # Absolute paths: the CLI runs with cwd=work, and a relative --dataset that does not exist from there is taken
    # for a hub dataset name (load_dataset_builder fails offline; that was the "Bergson fails" of earlier runs).
    work = (bench.work / "bergson").resolve()
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    n, q = bench.n_train, len(bench.queries)
    ids = list(bench.train.input_ids) + list(bench.queries.input_ids)
    masks = list(bench.train.response_mask) + list(bench.queries.response_mask)
    ds = datasets.Dataset.from_dict(
        {"input_ids": ids, "labels": [labels_for(a, m) for a, m in zip(ids, masks, strict=True)]}
    )
    data_dir = work / "dataset"
    ds.save_to_disk(str(data_dir))
    base_dir, _ = resolve_model_source(ModelConfig())
    run_dir = work / "index"
    max_len = int(max(len(a) for a in ids))
    cmd = [
        exe,
        "build",
        str(run_dir),
        "--model",
        str(Path(bench.ckpt.path).resolve()),
        "--tokenizer",
        base_dir,
        "--dataset",
        str(data_dir),
        "--projection_dim",
        str(bench.args.bergson_k),
        "--loss_reduction",
        "mean",
        "--precision",
        "fp32",
        "--token_batch_size",
        str(max_len * bench.args.batch_size),
        "--max_batch_size",
        str(bench.args.batch_size),
    ]
    env = dict(os.environ)
    env.setdefault("HF_HUB_OFFLINE", "1")
    env.setdefault("HF_DATASETS_OFFLINE", "1")
    log = bench.out / "logs" / "bergson_cli.log"
    log.parent.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    with open(log, "w") as fh:
        proc = subprocess.run(cmd, env=env, stdout=fh, stderr=subprocess.STDOUT, cwd=str(work), check=False)
    t_build = time.perf_counter()
    if proc.returncode != 0:
        tail = log.read_text(errors="replace").strip().splitlines()[-6:]
        raise RuntimeError(f"bergson build exited {proc.returncode}: " + " | ".join(tail))
    grads = np.asarray(load_gradients(run_dir), dtype=np.float32)
    if grads.shape[0] != n + q:
        raise RuntimeError(f"bergson index has {grads.shape[0]} rows, expected {n + q}")
    scores = grads[n:].astype(np.float64) @ grads[:n].astype(np.float64).T
    t1 = time.perf_counter()
    return MethodResult(
        seconds=t1 - t0,
        scores=scores,
        phases={"cli_build": t_build - t0, "scores": t1 - t_build},
        note=(
            f"CLI: time includes its process start-up and its own model load; index dim {grads.shape[1]}, "
            f"projection_dim {bench.args.bergson_k} per module"
        ),
        extra={"command": " ".join(cmd)},
    )


RUNNERS = {
    "trak": run_trak,
    "captum_tracincp": run_captum_tracincp,
    "kronfluence": run_kronfluence,
    "kronfluence_ekfac": run_kronfluence_ekfac,
    "dattri_tracin": run_dattri_tracin,
    "dattri_grad_dot": run_dattri_grad_dot,
    "bergson": run_bergson,
}

__all__ = ["RUNNERS", "Bench", "MethodResult", "lora_model", "mean_response_ce", "pad_rows"]
