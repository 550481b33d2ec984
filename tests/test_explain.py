"""Token-level attribution: per-position features sum to the stored rows, token contributions sum to scores."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from conftest import make_model

from dda.features.capture import GradientFeaturizer, freeze, pad_batch, select_modules
from dda.features.projection import DenseProjector, IdentityProjector, KroneckerProjector


def _batch(n: int = 3):
    g = torch.Generator().manual_seed(3)
    seqs, masks = [], []
    for i in range(n):
        length = 7 + 4 * i
        seqs.append(torch.randint(6, 150, (length,), generator=g).tolist())
        masks.append([j >= length // 2 for j in range(length)])
    return seqs, masks


PROJECTORS = {
    "kronecker": lambda: KroneckerProjector(4, seed=1),
    "kronecker_module_dim": lambda: KroneckerProjector(4, seed=1, module_dim=5),
    # small blocks so the per-position path crosses block and chunk boundaries inside one module's rows
    "dense": lambda: DenseProjector(16, seed=2, block_elems=16 * 300),
    "identity": IdentityProjector,
}


@pytest.mark.parametrize("kind", list(PROJECTORS))
def test_per_position_features_sum_to_the_row(kind):
    model = make_model("llama")
    freeze(model)
    names = select_modules(model, ["q_proj", "v_proj", "down_proj"])
    fz = GradientFeaturizer(model, names, PROJECTORS[kind]())
    seqs, masks = _batch()
    batch = pad_batch(seqs, masks, 0, torch.device("cpu"))
    rows = fz(*batch)
    per_pos = fz.per_position(*batch)
    assert per_pos.shape == (len(seqs), batch[0].shape[1], fz.dim)
    torch.testing.assert_close(per_pos.sum(1), rows, rtol=1e-4, atol=1e-6)
    # padding carries nothing; prompt positions do carry something (attention takes the loss back to them)
    for i, s in enumerate(seqs):
        assert torch.all(per_pos[i, len(s):] == 0)
        prompt = [t for t, m in enumerate(masks[i]) if not m]
        assert per_pos[i, prompt].abs().sum() > 0
