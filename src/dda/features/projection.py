"""Seeded random projections of per-example Linear-layer gradients.

The per-example gradient of a Linear layer's weight is G = sum_t g_t x_t^T (g: gradient of the loss w.r.t.
the layer output at token t, x: the layer input). Projections act on (g, x) so G is never needed:

* kronecker (LoGra/Bergson style): P_out G P_in^T = sum_t (P_out g_t)(P_in x_t)^T, per module, k*k dims.
  With `module_dim` = m < k*k, each module's k*k sketch is then compressed by a seeded dense Gaussian to m
  dims (a two-stage sketch). Why: a Kronecker sketch's inner-product error is set by k per side, not by its
  k*k dims, so a wide Kronecker stage (k = 64) followed by a cheap dense stage (4096 -> 256 per module, one
  small matmul per example) gives the store size of k = 16 with much of the agreement of k = 64.
* dense: a Johnson-Lindenstrauss projection of the concatenated full gradient, the matrix generated
  blockwise from seeds (never held whole); costs O(k * n_params) per batch, so it suits small gradient
  spaces (a few layers, small models) and exactness checks.
* identity: the full gradient, flattened; exact, for tests and tiny models.

Every matrix is a pure function of (seed, module name, side), so theta0 and every checkpoint project into
the same space. Entries are N(0, 1/k): E[<Pu, Pv>] = <u, v>.

Precision: g and x arrive in the model's dtype (bfloat16/float16 on a GPU). Every projection casts them to
float32 first and keeps its matrices in float32, so the sum over tokens and both sketch stages accumulate in
float32 and a bf16 model projects with the very matrices a float32 one uses (one feature space whatever the
model dtype). For a float32 model the casts are no-ops: its features are bitwise what they were.
"""

from __future__ import annotations

import hashlib

import torch

from ..config import FeatureConfig, register_choices

ACCUMULATE = torch.float32  # dtype of every projection matrix, product and sum over tokens


def _acc(t: torch.Tensor) -> torch.Tensor:
    """`t` in the accumulation dtype; the same tensor (no copy) when it already is."""
    return t.to(ACCUMULATE)


def _seed_for(seed: int, *parts: object) -> int:
    key = ":".join(str(p) for p in (seed, *parts)).encode()
    return int.from_bytes(hashlib.sha256(key).digest()[:8], "little") & ((1 << 63) - 1)


def gaussian(rows: int, cols: int, seed: int, device: torch.device, dtype: torch.dtype) -> torch.Tensor:
    gen = torch.Generator(device="cpu").manual_seed(seed)
    mat = torch.randn(rows, cols, generator=gen, dtype=torch.float32) / rows**0.5
    return mat.to(device=device, dtype=dtype)


PROJECTIONS: dict[str, type[Projector]] = {}


def register_projection(cls: type[Projector]) -> type[Projector]:
    """A new projection is one class with this decorator: `features.projection=<its kind>` then selects it."""
    PROJECTIONS[cls.kind] = cls
    return cls


# `--set features.projection=KIND` accepts a registered kind, not only the Literal's built-ins
register_choices("features.projection", lambda: PROJECTIONS)


class Projector:
    """Per-module projection of (g, x) pairs into feature vectors: the whole interface the featurizer uses.

    The featurizer calls `capture_input` in the forward hook (what it returns is all it keeps of x) and
    `project_captured` in the backward hook; `project` is both in one step."""

    kind = "base"
    combine = "concat"  # concat module features, or sum them (dense JL of the concatenation)

    @classmethod
    def from_config(cls, cfg: FeatureConfig) -> Projector:
        raise NotImplementedError

    def module_dim(self, d_out: int, d_in: int) -> int:
        raise NotImplementedError

    def capture_input(self, name: str, x: torch.Tensor) -> torch.Tensor:
        """x: (B, T, d_in) -> what the backward hook needs of it (x itself unless the projection reduces it)."""
        return x

    def project_captured(self, name: str, g: torch.Tensor, captured: torch.Tensor) -> torch.Tensor:
        """g: (B, T, d_out) and `capture_input`'s output -> (B, module_dim)."""
        raise NotImplementedError

    def project(self, name: str, g: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """g: (B, T, d_out), x: (B, T, d_in) -> (B, module_dim)."""
        return self.project_captured(name, g, self.capture_input(name, x))

    def project_positions(self, name: str, g: torch.Tensor, captured: torch.Tensor) -> torch.Tensor:
        """The projection of each position's term g_t x_t^T: (B, T, module_dim), summing over T to
        `project_captured(name, g, captured)`; `captured` is `capture_input`'s output.

        Every projection is linear in G = sum_t g_t x_t^T, so a feature splits exactly over token positions
        (token-level attribution, dda.explain)."""
        raise NotImplementedError

    def describe(self) -> dict:
        return {"kind": self.kind}


@register_projection
class IdentityProjector(Projector):
    kind = "identity"

    @classmethod
    def from_config(cls, cfg: FeatureConfig) -> Projector:
        return cls()

    def module_dim(self, d_out: int, d_in: int) -> int:
        return d_out * d_in

    def project_captured(self, name: str, g: torch.Tensor, captured: torch.Tensor) -> torch.Tensor:
        return torch.einsum("bto,bti->boi", _acc(g), _acc(captured)).reshape(g.shape[0], -1)

    def project_positions(self, name: str, g: torch.Tensor, captured: torch.Tensor) -> torch.Tensor:
        return torch.einsum("bto,bti->btoi", _acc(g), _acc(captured)).reshape(*g.shape[:2], -1)


@register_projection
class KroneckerProjector(Projector):
    kind = "kronecker"

    def __init__(self, k: int, seed: int, module_dim: int | None = None):
        if module_dim is not None and module_dim < 1:
            raise ValueError(f"module_dim must be >= 1 or None, not {module_dim}")
        self.k, self.seed, self.m = k, seed, module_dim
        self._cache: dict[tuple, torch.Tensor] = {}

    @classmethod
    def from_config(cls, cfg: FeatureConfig) -> Projector:
        return cls(cfg.proj_dim, cfg.seed, cfg.module_dim or None)  # 0/None: no second stage

    def _side(self, name: str, side: str, d: int, device: torch.device, dtype: torch.dtype) -> torch.Tensor:
        key = (name, side, d, device, dtype)
        if key not in self._cache:
            k = min(self.k, d)
            self._cache[key] = gaussian(k, d, _seed_for(self.seed, name, side, d), device, dtype)
        return self._cache[key]

    def module_dim(self, d_out: int, d_in: int) -> int:
        kk = min(self.k, d_out) * min(self.k, d_in)
        return kk if self.m is None else min(self.m, kk)

    def _compress(self, name: str, sketch: torch.Tensor) -> torch.Tensor:
        """(..., k*k) -> (..., m): the second, dense stage (linear, so it commutes with sums over positions)."""
        kk = sketch.shape[-1]
        if self.m is None or self.m >= kk:
            return sketch
        key = (name, "compress", kk, sketch.device, sketch.dtype)
        if key not in self._cache:
            self._cache[key] = gaussian(
                self.m, kk, _seed_for(self.seed, name, "compress", kk, self.m), sketch.device, sketch.dtype
            )
        return sketch @ self._cache[key].T

    def capture_input(self, name: str, x: torch.Tensor) -> torch.Tensor:
        # project the input in the forward hook: the (B, T, k) copy is all the backward hook needs
        return _acc(x) @ self._side(name, "in", x.shape[-1], x.device, ACCUMULATE).T

    def project_captured(self, name: str, g: torch.Tensor, captured: torch.Tensor) -> torch.Tensor:
        gp = _acc(g) @ self._side(name, "out", g.shape[-1], g.device, ACCUMULATE).T
        return self._compress(name, torch.einsum("bto,bti->boi", gp, _acc(captured)).reshape(g.shape[0], -1))

    def project_positions(self, name: str, g: torch.Tensor, captured: torch.Tensor) -> torch.Tensor:
        gp = _acc(g) @ self._side(name, "out", g.shape[-1], g.device, ACCUMULATE).T
        return self._compress(name, torch.einsum("bto,bti->btoi", gp, _acc(captured)).reshape(*g.shape[:2], -1))

    def describe(self) -> dict:
        out = {"kind": self.kind, "k": self.k, "seed": self.seed}
        if self.m is not None:
            out["module_dim"] = self.m
        return out


@register_projection
class DenseProjector(Projector):
    kind = "dense"
    combine = "sum"

    def __init__(self, k: int, seed: int, block_elems: int = 1 << 24):
        self.k, self.seed = k, seed
        self.block_rows = max(256, block_elems // k)

    @classmethod
    def from_config(cls, cfg: FeatureConfig) -> Projector:
        return cls(cfg.proj_dim, cfg.seed)

    def module_dim(self, d_out: int, d_in: int) -> int:
        return self.k

    def project_captured(self, name: str, g: torch.Tensor, captured: torch.Tensor) -> torch.Tensor:
        full = torch.einsum("bto,bti->boi", _acc(g), _acc(captured)).reshape(g.shape[0], -1)
        out = torch.zeros(g.shape[0], self.k, device=g.device, dtype=ACCUMULATE)
        for b, start in enumerate(range(0, full.shape[1], self.block_rows)):
            stop = min(start + self.block_rows, full.shape[1])
            # Entries N(0, 1/k): the block is generated (k, rows) so the scale matches `gaussian`.
            block = gaussian(self.k, stop - start, _seed_for(self.seed, name, "dense", b), g.device, ACCUMULATE)
            out += full[:, start:stop] @ block.T
        return out

    def project_positions(
        self, name: str, g: torch.Tensor, captured: torch.Tensor, chunk_elems: int = 1 << 22
    ) -> torch.Tensor:
        """Per position, with the same seeded blocks as `project`; the flattened gradient index is o * d_in + i,
        and each block is formed from the rows of g it covers, in column chunks of about `chunk_elems`
        (B*T*chunk values), so the (B, T, d_out*d_in) tensor is never held whole."""
        g, x = _acc(g), _acc(captured)
        bsz, steps, d_out = g.shape
        d_in = x.shape[-1]
        chunk = max(d_in, chunk_elems // max(1, bsz * steps))
        out = torch.zeros(bsz, steps, self.k, device=g.device, dtype=ACCUMULATE)
        for b, start in enumerate(range(0, d_out * d_in, self.block_rows)):
            stop = min(start + self.block_rows, d_out * d_in)
            block = gaussian(self.k, stop - start, _seed_for(self.seed, name, "dense", b), g.device, ACCUMULATE)
            for c0 in range(start, stop, chunk):
                c1 = min(c0 + chunk, stop)
                o0, o1 = c0 // d_in, (c1 - 1) // d_in + 1
                piece = torch.einsum("bto,bti->btoi", g[..., o0:o1], x).reshape(bsz, steps, -1)
                piece = piece[..., c0 - o0 * d_in : c1 - o0 * d_in]
                out += piece @ block[:, c0 - start : c1 - start].T
        return out

    def describe(self) -> dict:
        return {"kind": self.kind, "k": self.k, "seed": self.seed, "block_rows": self.block_rows}


def projector_from_config(cfg: FeatureConfig) -> Projector:
    if cfg.projection not in PROJECTIONS:
        raise ValueError(f"unknown projection '{cfg.projection}' ({', '.join(PROJECTIONS)})")
    return PROJECTIONS[cfg.projection].from_config(cfg)


def make_projector(kind: str, k: int, seed: int, module_dim: int | None = None) -> Projector:
    if module_dim is not None and kind != "kronecker":
        raise ValueError(f"module_dim applies to the kronecker projection only, not '{kind}'")
    return projector_from_config(FeatureConfig(projection=kind, proj_dim=k, seed=seed, module_dim=module_dim))
