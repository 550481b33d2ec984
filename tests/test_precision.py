"""Half-precision models: projections accumulate in float32, and features match the float32 model's."""

from __future__ import annotations

import copy

import pytest
import torch
from conftest import make_model

from dda.features.capture import GradientFeaturizer, freeze, pad_batch, select_modules
from dda.features.projection import DenseProjector, IdentityProjector, KroneckerProjector

ALL = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]

# Relative L2 error of a half-precision model's features against the same weights in float32, per example.
# The model's own arithmetic sets it (unit roundoff 2^-8 for bfloat16, 2^-11 for float16, grown by the depth of
# the forward and backward passes); measured here on the tiny models: <= 0.0091 (bf16), <= 0.0010 (fp16), with
# cosines >= 0.99996. The bounds leave ~3x / 5x room; a bf16 projection matrix or bf16 sums over tokens would
# add their own 2^-8-sized error on top.
REL_BOUND = {torch.bfloat16: 0.03, torch.float16: 0.005}
COS_BOUND = 0.999


def _projectors():
    return [KroneckerProjector(16, seed=0, module_dim=64), IdentityProjector(), DenseProjector(512, seed=0)]


@pytest.mark.parametrize("projector", _projectors(), ids=["kronecker_two_stage", "identity", "dense"])
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=["bf16", "fp16"])
def test_half_precision_inputs_are_projected_in_float32(projector, dtype):
    """A long sum over tokens (T = 2048) of half-precision g and x: the features must be exactly the float32
    projection of the same values (same matrices, float32 products and sums), returned as float32."""
    gen = torch.Generator().manual_seed(1)
    g = torch.randn(2, 2048, 24, generator=gen).to(dtype)
    x = torch.randn(2, 2048, 40, generator=gen).to(dtype)
    half = projector.project("layers.0.q_proj", g, x)
    full = projector.project("layers.0.q_proj", g.float(), x.float())
    assert half.dtype == torch.float32
    assert torch.equal(half, full)
    if isinstance(projector, KroneckerProjector):  # the hooks' path: the input projected in the forward pass
        xp = projector.capture_input("layers.0.q_proj", x)
        assert xp.dtype == torch.float32
        assert torch.equal(projector.project_captured("layers.0.q_proj", g, xp), full)


def _batch():
    gen = torch.Generator().manual_seed(0)
    seqs, masks = [], []
    for i in range(6):
        length = 12 + 9 * i  # 12 .. 57 tokens, right-padded in one batch
        seqs.append(torch.randint(6, 150, (length,), generator=gen).tolist())
        masks.append([j >= length // 3 for j in range(length)])
    return pad_batch(seqs, masks, 0, torch.device("cpu"))


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=["bf16", "fp16"])
def test_half_precision_model_features_match_float32(family, dtype):
    model = make_model(family)
    freeze(model)
    names = select_modules(model, ALL)
    batch = _batch()
    ref = GradientFeaturizer(model, names, KroneckerProjector(16, seed=0, module_dim=64))(*batch).double()
    half_model = copy.deepcopy(model).to(dtype)
    feats = GradientFeaturizer(half_model, names, KroneckerProjector(16, seed=0, module_dim=64))(*batch)
    assert feats.dtype == torch.float32 and torch.isfinite(feats).all()
    feats = feats.double()
    cos = torch.nn.functional.cosine_similarity(feats, ref, dim=1)
    rel = (feats - ref).norm(dim=1) / ref.norm(dim=1)
    print(f"{family} {dtype}: min cosine {float(cos.min()):.6f}, max relative error {float(rel.max()):.4f}")
    assert float(cos.min()) >= COS_BOUND
    assert float(rel.max()) <= REL_BOUND[dtype]
