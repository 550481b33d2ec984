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
"""

from __future__ import annotations

import hashlib

import torch


def _seed_for(seed: int, *parts: object) -> int:
    key = ":".join(str(p) for p in (seed, *parts)).encode()
    return int.from_bytes(hashlib.sha256(key).digest()[:8], "little") & ((1 << 63) - 1)


def gaussian(rows: int, cols: int, seed: int, device: torch.device, dtype: torch.dtype) -> torch.Tensor:
    gen = torch.Generator(device="cpu").manual_seed(seed)
    mat = torch.randn(rows, cols, generator=gen, dtype=torch.float32) / rows**0.5
    return mat.to(device=device, dtype=dtype)


class Projector:
    """Base: per-module projection of (g, x) pairs into feature vectors."""

    kind = "base"
    combine = "concat"  # concat module features, or sum them (dense JL of the concatenation)

    def module_dim(self, d_out: int, d_in: int) -> int:
        raise NotImplementedError

    def project(self, name: str, g: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """g: (B, T, d_out), x: (B, T, d_in) -> (B, module_dim)."""
        raise NotImplementedError

    def project_positions(self, name: str, g: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """The projection of each position's term g_t x_t^T: (B, T, module_dim), summing over T to `project`.

        Every projection is linear in G = sum_t g_t x_t^T, so a feature splits exactly over token positions
        (token-level attribution, dda.explain)."""
        raise NotImplementedError

    def describe(self) -> dict:
        return {"kind": self.kind}


class IdentityProjector(Projector):
    kind = "identity"

    def module_dim(self, d_out: int, d_in: int) -> int:
        return d_out * d_in

    def project(self, name: str, g: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        return torch.einsum("bto,bti->boi", g, x).reshape(g.shape[0], -1)

    def project_positions(self, name: str, g: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        return torch.einsum("bto,bti->btoi", g, x).reshape(*g.shape[:2], -1)


class KroneckerProjector(Projector):
    kind = "kronecker"

    def __init__(self, k: int, seed: int, module_dim: int | None = None):
        if module_dim is not None and module_dim < 1:
            raise ValueError(f"module_dim must be >= 1 or None, not {module_dim}")
        self.k, self.seed, self.m = k, seed, module_dim
        self._cache: dict[tuple, torch.Tensor] = {}

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
            self._cache[key] = gaussian(self.m, kk, _seed_for(self.seed, name, "compress", kk, self.m),
                                        sketch.device, sketch.dtype)
        return sketch @ self._cache[key].T

    def project_input(self, name: str, x: torch.Tensor) -> torch.Tensor:
        return x @ self._side(name, "in", x.shape[-1], x.device, x.dtype).T

    def project(self, name: str, g: torch.Tensor, x: torch.Tensor, x_projected: bool = False) -> torch.Tensor:
        xp = x if x_projected else self.project_input(name, x)
        gp = g @ self._side(name, "out", g.shape[-1], g.device, g.dtype).T
        return self._compress(name, torch.einsum("bto,bti->boi", gp, xp).reshape(g.shape[0], -1))

    def project_positions(self, name: str, g: torch.Tensor, x: torch.Tensor,
                          x_projected: bool = False) -> torch.Tensor:
        xp = x if x_projected else self.project_input(name, x)
        gp = g @ self._side(name, "out", g.shape[-1], g.device, g.dtype).T
        return self._compress(name, torch.einsum("bto,bti->btoi", gp, xp).reshape(*g.shape[:2], -1))

    def describe(self) -> dict:
        out = {"kind": self.kind, "k": self.k, "seed": self.seed}
        if self.m is not None:
            out["module_dim"] = self.m
        return out


class DenseProjector(Projector):
    kind = "dense"
    combine = "sum"

    def __init__(self, k: int, seed: int, block_elems: int = 1 << 24):
        self.k, self.seed = k, seed
        self.block_rows = max(256, block_elems // k)

    def module_dim(self, d_out: int, d_in: int) -> int:
        return self.k

    def project(self, name: str, g: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        full = torch.einsum("bto,bti->boi", g, x).reshape(g.shape[0], -1)
        out = torch.zeros(g.shape[0], self.k, device=g.device, dtype=torch.float32)
        for b, start in enumerate(range(0, full.shape[1], self.block_rows)):
            stop = min(start + self.block_rows, full.shape[1])
            # Entries N(0, 1/k): the block is generated (k, rows) so the scale matches `gaussian`.
            block = gaussian(self.k, stop - start, _seed_for(self.seed, name, "dense", b), g.device, torch.float32)
            out += full[:, start:stop].float() @ block.T
        return out

    def project_positions(self, name: str, g: torch.Tensor, x: torch.Tensor,
                          chunk_elems: int = 1 << 22) -> torch.Tensor:
        """Per position, with the same seeded blocks as `project`; the flattened gradient index is o * d_in + i,
        and each block is formed from the rows of g it covers, in column chunks of about `chunk_elems`
        (B*T*chunk values), so the (B, T, d_out*d_in) tensor is never held whole."""
        bsz, steps, d_out = g.shape
        d_in = x.shape[-1]
        chunk = max(d_in, chunk_elems // max(1, bsz * steps))
        out = torch.zeros(bsz, steps, self.k, device=g.device, dtype=torch.float32)
        for b, start in enumerate(range(0, d_out * d_in, self.block_rows)):
            stop = min(start + self.block_rows, d_out * d_in)
            block = gaussian(self.k, stop - start, _seed_for(self.seed, name, "dense", b), g.device, torch.float32)
            for c0 in range(start, stop, chunk):
                c1 = min(c0 + chunk, stop)
                o0, o1 = c0 // d_in, (c1 - 1) // d_in + 1
                piece = torch.einsum("bto,bti->btoi", g[..., o0:o1], x).reshape(bsz, steps, -1)
                piece = piece[..., c0 - o0 * d_in: c1 - o0 * d_in]
                out += piece.float() @ block[:, c0 - start: c1 - start].T
        return out

    def describe(self) -> dict:
        return {"kind": self.kind, "k": self.k, "seed": self.seed, "block_rows": self.block_rows}


def make_projector(kind: str, k: int, seed: int, module_dim: int | None = None) -> Projector:
    if module_dim is not None and kind != "kronecker":
        raise ValueError(f"module_dim applies to the kronecker projection only, not '{kind}'")
    if kind == "kronecker":
        return KroneckerProjector(k, seed, module_dim)
    if kind == "dense":
        return DenseProjector(k, seed)
    if kind == "identity":
        return IdentityProjector()
    raise ValueError(f"unknown projection '{kind}' (kronecker, dense, identity)")
