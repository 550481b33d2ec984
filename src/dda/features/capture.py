"""Per-example gradient features for a whole batch from one forward and one backward pass.

Hooks on the selected Linear layers keep each layer's input x (forward) and receive the gradient g of the
loss w.r.t. the layer output (backward); the projector turns (g, x) into features. No parameter requires a
gradient: autograd computes activation gradients only and skips every weight-gradient GEMM. The batch loss
is the sum of per-example losses, so each example's slice of g is exactly its own gradient.

Per-example loss = mean token cross-entropy over that example's response tokens (the fine-tuning loss).
Padding is on the right; with causal attention pads cannot affect real tokens, and their g is zero.
"""

from __future__ import annotations

import time
import warnings
from collections.abc import Callable, Sequence
from typing import Any

import torch

from ..families import ModelFamily, family_of
from .projection import Projector


def select_modules(
    model: torch.nn.Module, suffixes: Sequence[str], layers: str = "all", family: ModelFamily | None = None
) -> list[str]:
    """Names of Linear layers (or peft LoRA wrappers of them) whose last name part is in `suffixes`, in the
    decoder layers `layers` selects; `family` (default: the model's, by config.model_type) says where a name
    holds its layer index."""
    family = family or family_of(model)
    if family.is_fallback:
        warnings.warn(family.fallback_note, UserWarning, stacklevel=2)
    named = dict(model.named_modules())
    picked = []
    for name, mod in named.items():
        last = name.rsplit(".", 1)[-1]
        if last not in suffixes or not hasattr(mod, "in_features") or not hasattr(mod, "out_features"):
            continue
        picked.append(name)
    layer_ids = sorted({i for n in picked if (i := family.layer_index(n)) is not None})
    keep = _parse_layers(layers, layer_ids)
    picked = [n for n in picked if (i := family.layer_index(n)) is None or i in keep]
    if not picked:
        hint = ""
        if family.is_fallback:
            hint = f"; {family.fallback_note}"
        elif set(suffixes) != set(family.tracked_modules):
            hint = f"; the {family.name} family's modules are {', '.join(family.tracked_modules)}"
        raise ValueError(f"no Linear layers named {list(suffixes)} (layers={layers}) in the model{hint}")
    return picked


def _layer_count(text: str, total: int, spec: str) -> int:
    """'10' -> 10; '1/3' -> a third of the layers (rounded, at least 1), so one spec fits models of any depth."""
    try:
        if "/" in text:
            num, den = (int(t) for t in text.split("/", 1))
            return max(1, round(total * num / den))
        return int(text)
    except (ValueError, ZeroDivisionError):
        raise ValueError(f"features.layers='{spec}': expected N or a fraction like 1/3 after ':'") from None


def _parse_layers(spec: str, available: list[int]) -> set[int]:
    if spec == "all":
        return set(available)
    if spec.startswith("last:"):
        return set(available[-_layer_count(spec[5:], len(available), spec) :])
    if spec.startswith("first:"):
        return set(available[: _layer_count(spec[6:], len(available), spec)])
    return {int(s) for s in spec.split(",") if s.strip()}


def module_shapes(model: torch.nn.Module, names: Sequence[str]) -> dict[str, tuple[int, int]]:
    mods = dict(model.named_modules())
    return {n: (int(mods[n].out_features), int(mods[n].in_features)) for n in names}


def pad_batch(
    seqs: Sequence[Sequence[int]], masks: Sequence[Sequence[bool]], pad_id: int, device: torch.device
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    width = max(len(s) for s in seqs)
    ids = torch.full((len(seqs), width), pad_id, dtype=torch.long)
    attn = torch.zeros((len(seqs), width), dtype=torch.long)
    resp = torch.zeros((len(seqs), width), dtype=torch.bool)
    for i, (s, m) in enumerate(zip(seqs, masks, strict=True)):
        ids[i, : len(s)] = torch.tensor(s, dtype=torch.long)
        attn[i, : len(s)] = 1
        resp[i, : len(s)] = torch.tensor(m, dtype=torch.bool)
    return ids.to(device), attn.to(device), resp.to(device)


def per_example_loss(model: Any, ids: torch.Tensor, attn: torch.Tensor, resp: torch.Tensor) -> torch.Tensor:
    """Mean response-token cross-entropy per example, shape (B,). The LM head runs on response positions only
    (on a 49k vocabulary that is ~10% of the FLOPs of a full forward)."""
    backbone = model.get_decoder() if hasattr(model, "get_decoder") else model.model
    hidden = backbone(input_ids=ids, attention_mask=attn).last_hidden_state
    target_mask = resp[:, 1:]
    rows = torch.nonzero(target_mask, as_tuple=True)[0]
    h = hidden[:, :-1][target_mask]
    logits = model.get_output_embeddings()(h).float()
    tok_loss = torch.nn.functional.cross_entropy(logits, ids[:, 1:][target_mask], reduction="none")
    n = ids.shape[0]
    sums = torch.zeros(n, device=ids.device, dtype=tok_loss.dtype).index_add(0, rows, tok_loss)
    counts = torch.zeros(n, device=ids.device, dtype=tok_loss.dtype).index_add(0, rows, torch.ones_like(tok_loss))
    return sums / counts.clamp_min(1)


class GradientFeaturizer:
    """Callable: padded batch -> (B, D) projected per-example gradient features (float32)."""

    def __init__(
        self,
        model: torch.nn.Module,
        module_names: Sequence[str],
        projector: Projector,
        family: ModelFamily | None = None,
    ):
        self.model = model
        self.family = family or family_of(model)  # where the decoder layers are, for the backward's start
        self.names = list(module_names)
        self.projector = projector
        self.shapes = module_shapes(model, self.names)
        dims = [projector.module_dim(*self.shapes[n]) for n in self.names]
        self.dim = dims[0] if projector.combine == "sum" else sum(dims)
        # Per-module column counts of the concatenated feature (None when modules are summed into one
        # sketch): scorers use them to normalise each module's gradient separately.
        self.blocks: list[int] | None = None if projector.combine == "sum" else dims
        # Where the time goes, summed over calls (the speed benchmark's profile): forward and backward are the
        # autograd passes without the hooks' projection work, which is counted under "projection".
        self.phase_seconds = {"forward": 0.0, "backward": 0.0, "projection": 0.0}

    def _grad_start_hook(self) -> torch.utils.hooks.RemovableHandle:
        """Make autograd start at the input of the first decoder layer that holds a selected module: nothing
        below it needs a gradient, so with `features.layers=last:N` the backward pass covers N layers only."""
        layer_ids = [i for n in self.names if (i := self.family.layer_index(n)) is not None]
        backbone = self.model.get_decoder() if hasattr(self.model, "get_decoder") else None
        layers = getattr(backbone, self.family.layers_attr, None)
        if len(layer_ids) == len(self.names) and layers is not None and len(layers) > min(layer_ids):

            def start(_mod, args, kwargs):
                hidden = args[0] if args else kwargs["hidden_states"]
                hidden.requires_grad_(True)  # a leaf: no parameter upstream requires grad

            return layers[min(layer_ids)].register_forward_pre_hook(start, with_kwargs=True)
        emb = self.model.get_input_embeddings()
        return emb.register_forward_hook(lambda _m, _i, out: out.requires_grad_(True))

    def __call__(self, ids: torch.Tensor, attn: torch.Tensor, resp: torch.Tensor) -> torch.Tensor:
        feats = self._capture(ids, attn, resp, positions=False)
        if self.projector.combine == "sum":
            return torch.stack([feats[n] for n in self.names]).sum(0)
        return torch.cat([feats[n] for n in self.names], dim=1)

    def per_position(self, ids: torch.Tensor, attn: torch.Tensor, resp: torch.Tensor) -> torch.Tensor:
        """(B, T, D): each token position's term of the features (g_t x_t^T projected); summed over T it is
        the row `__call__` returns. Pads get zeros. Prompt positions are not zero: attention carries the
        response tokens' losses back to them, and their inputs x_t enter the weight gradient."""
        feats = self._capture(ids, attn, resp, positions=True)
        if self.projector.combine == "sum":
            return torch.stack([feats[n] for n in self.names]).sum(0)
        return torch.cat([feats[n] for n in self.names], dim=2)

    def per_position_reduced(
        self, ids: torch.Tensor, attn: torch.Tensor, resp: torch.Tensor, reduce: Callable[[str, torch.Tensor], Any]
    ) -> dict[str, Any]:
        """{module: reduce(module, its (B, T, dim) per-position features)}, reduced inside the backward hook, so
        the (B, T, D) tensor of all modules is never held (at 64x64 per module it is ~1 GB per document)."""
        return self._capture(ids, attn, resp, positions=True, reduce=reduce)

    def _capture(
        self,
        ids: torch.Tensor,
        attn: torch.Tensor,
        resp: torch.Tensor,
        positions: bool,
        reduce: Callable[[str, torch.Tensor], Any] | None = None,
    ) -> dict[str, Any]:
        """One forward and one backward; {module: (B, dim)} features, or (B, T, dim) with `positions`, or what
        `reduce(module, features)` makes of them."""
        mods = dict(self.model.named_modules())
        feats: dict[str, torch.Tensor] = {}
        keep = attn.unsqueeze(-1).to(torch.float32)
        project = self.projector.project_positions if positions else self.projector.project_captured
        handles = []
        hook_seconds = {"forward": 0.0, "backward": 0.0}

        def forward_hook(name: str):
            def hook(_mod, inputs, output):
                t0 = time.perf_counter()
                x = inputs[0].detach()
                x = self.projector.capture_input(name, x * keep.to(x.dtype))

                def grad_hook(g: torch.Tensor) -> None:
                    t1 = time.perf_counter()
                    out = project(name, g, x).float()
                    feats[name] = out if reduce is None else reduce(name, out)
                    hook_seconds["backward"] += time.perf_counter() - t1

                output.register_hook(grad_hook)
                hook_seconds["forward"] += time.perf_counter() - t0

            return hook

        handles.append(self._grad_start_hook())
        for n in self.names:
            handles.append(mods[n].register_forward_hook(forward_hook(n)))
        try:
            with torch.enable_grad():
                t0 = time.perf_counter()
                loss = per_example_loss(self.model, ids, attn, resp)
                t1 = time.perf_counter()
                loss.sum().backward()
                t2 = time.perf_counter()
        finally:
            for h in handles:
                h.remove()
        self.phase_seconds["forward"] += t1 - t0 - hook_seconds["forward"]
        self.phase_seconds["backward"] += t2 - t1 - hook_seconds["backward"]
        self.phase_seconds["projection"] += hook_seconds["forward"] + hook_seconds["backward"]
        missing = [n for n in self.names if n not in feats]
        if missing:
            raise RuntimeError(f"no gradient reached {missing[:3]}: is the module on the loss path?")
        return feats


def freeze(model: torch.nn.Module) -> None:
    for p in model.parameters():
        p.requires_grad_(False)
