"""End to end on tiny random Llama/Qwen2/Mistral models: fine-tune, checkpoints, index, resume, refuse, score."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import TINY_SETTINGS, make_model, make_tokenizer, random_examples

from dda import Attributor, Example, Query, apply_overrides
from dda.config import DDAConfig
from dda.features.store import FeatureStore, StoreMismatchError


def _examples(n: int, seed: int = 0) -> list[Example]:
    return random_examples(n, seed)


def _cfg(**extra) -> DDAConfig:
    base = {
        **TINY_SETTINGS,
        "train.lora.target_modules": ["q_proj", "v_proj", "down_proj"],
        "features.modules": ["q_proj", "v_proj", "down_proj"],
        "features.batch_size": 3,
    }
    base.update(extra)
    return apply_overrides(DDAConfig(), base)


def _attributor(tmp: Path, family: str = "llama", **extra) -> Attributor:
    tok = make_tokenizer()
    return Attributor(_cfg(**extra), tmp, model=make_model(family, vocab_size=len(tok)), tokenizer=tok)


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("run")
    att = _attributor(tmp)
    train = _examples(10)
    ckpts = att.finetune(train)
    att.index(train)
    return att, train, ckpts, tmp


def test_finetune_writes_epoch_checkpoints(trained):
    att, _, ckpts, tmp = trained
    assert [c.name for c in ckpts] == ["epoch-1", "epoch-2"]
    for c in ckpts:
        info = json.loads((Path(c.path) / "dda_checkpoint.json").read_text())
        assert info["lr"] == pytest.approx(1e-2) and info["epoch"] == c.epoch
        assert (Path(c.path) / "adapter_model.safetensors").exists()
    assert (tmp / "checkpoints" / "config.yaml").exists()
    # LoRA is unloaded after training: the model is theta0 again (no lora modules left)
    assert not any("lora_" in n for n, _ in att.model.named_parameters())


def test_index_stores_every_checkpoint(trained):
    att, train, _, tmp = trained
    for name in ("base", "epoch-1", "epoch-2"):
        store = FeatureStore.read(tmp / "features" / "train" / name)
        assert store.features.shape == (len(train), 3 * 2 * 16)
        assert np.isfinite(store.features).all() and np.abs(store.features).sum() > 0
    a = np.asarray(FeatureStore.read(tmp / "features" / "train" / "base").features)
    b = np.asarray(FeatureStore.read(tmp / "features" / "train" / "epoch-2").features)
    assert not np.allclose(a, b)  # fine-tuning changed the gradients
    stats = json.loads((tmp / "features" / "train" / "index.json").read_text())
    assert stats["computed_rows"] == 3 * len(train)


def test_reindex_reuses_features(trained):
    att, train, _, _ = trained
    att.index(train)
    assert att.index_stats["computed_rows"] == 0


def test_identical_training_example_ranks_first(trained):
    att, train, _, tmp = trained
    target = train[4]
    q = Query("q", target.prompt, target.response, None)
    res = att.attribute([q], methods=["grad_cos", "grad_dot", "dda_no_contrast", "tracin"], out_dir=tmp / "attr")
    for m in res.scores:
        assert res.top(1, m)[0]["train_id"] == target.id, m
    ranking = json.loads((tmp / "attr" / "ranking.json").read_text())
    assert ranking["top"]["grad_cos"][0][0]["train_id"] == target.id
    assert (tmp / "attr" / "config.yaml").exists() and (tmp / "attr" / "scores.csv").exists()


def test_contrastive_query_prefers_the_negative_source(trained):
    """Query negative = training example 2's response, positive = example 6's: 2 must outrank 6."""
    att, train, _, _ = trained
    q = Query("q", train[2].prompt, train[2].response, train[6].response)
    s = att.attribute([q], methods=["dda"]).scores["dda"][0]
    assert s[2] > s[6]


def test_killed_index_run_resumes_to_identical_features(tmp_path):
    train = _examples(7, seed=3)
    full = _attributor(tmp_path / "a")  # theta0 only: no fine-tuning needed
    from dda.models import BASE

    data = full.tokenize(train)
    ref = full.indexer.featurize(BASE, data, tmp_path / "a" / "store")

    killed = _attributor(tmp_path / "b")
    calls = {"n": 0}

    def die_after_first_batch(_n: int) -> None:
        calls["n"] += 1
        if calls["n"] == 2:
            raise KeyboardInterrupt  # simulates a kill between batches

    with pytest.raises(KeyboardInterrupt):
        killed.indexer.featurize(BASE, data, tmp_path / "b" / "store", progress=die_after_first_batch)
    partial = FeatureStore.open(tmp_path / "b" / "store")
    assert 0 < int(np.asarray(partial.done).sum()) < len(train) and not partial.complete
    resumed = _attributor(tmp_path / "b").indexer.featurize(BASE, data, tmp_path / "b" / "store")
    assert resumed.complete
    np.testing.assert_allclose(np.asarray(resumed.features), np.asarray(ref.features), rtol=1e-5, atol=1e-7)


def test_store_with_other_settings_is_refused(tmp_path):
    from dda.models import BASE

    train = _examples(5, seed=4)
    att = _attributor(tmp_path)
    att.indexer.featurize(BASE, att.tokenize(train), tmp_path / "store")
    other_proj = _attributor(tmp_path, **{"features.proj_dim": 3})
    with pytest.raises(StoreMismatchError, match="projection"):
        other_proj.indexer.featurize(BASE, other_proj.tokenize(train), tmp_path / "store")
    other_data = _attributor(tmp_path)
    with pytest.raises(StoreMismatchError, match="data"):
        other_data.indexer.featurize(BASE, other_data.tokenize(_examples(5, seed=5)), tmp_path / "store")
    tok = make_tokenizer()
    other_model = Attributor(_cfg(), tmp_path, model=make_model("llama", len(tok), seed=9), tokenizer=tok)
    with pytest.raises(StoreMismatchError, match="model"):
        other_model.indexer.featurize(BASE, other_model.tokenize(train), tmp_path / "store")


@pytest.mark.parametrize("family", ["qwen2", "mistral"])
def test_other_families_end_to_end(tmp_path, family):
    att = _attributor(tmp_path, family, **{"train.epochs": 1})
    train = _examples(6, seed=1)
    att.finetune(train)
    att.index(train)
    res = att.attribute(
        [Query("q", train[1].prompt, train[1].response, train[0].response)], methods=["dda(beta=0.4)", "trak", "bm25"]
    )
    assert all(np.isfinite(s).all() for s in res.scores.values())


def test_finetune_resume_matches_uninterrupted(tmp_path):
    train = _examples(8, seed=2)
    straight = _attributor(tmp_path / "s")
    straight.finetune(train)
    # interrupted: train 1 epoch, then a new process asks for 2 and resumes from epoch-1
    first = _attributor(tmp_path / "r", **{"train.epochs": 1})
    first.finetune(train)
    again = _attributor(tmp_path / "r")
    again.finetune(train)
    from safetensors.torch import load_file

    a = load_file(str(tmp_path / "s" / "checkpoints" / "epoch-2" / "adapter_model.safetensors"))
    b = load_file(str(tmp_path / "r" / "checkpoints" / "epoch-2" / "adapter_model.safetensors"))
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=1e-5, atol=1e-6)


def test_full_finetuning_checkpoints(tmp_path):
    att = _attributor(tmp_path, **{"train.method": "full", "train.epochs": 1, "train.lr": 1e-3})
    train = _examples(5, seed=6)
    tok = att.tokenizer
    base_model = att.model
    ckpts = att.finetune(train)
    assert ckpts[0].kind == "full"
    # theta0 must be reloaded for attribution: the API drops the trained model
    att._model = make_model("llama", vocab_size=len(tok))
    att._tokenizer = tok
    del base_model
    att.index(train)
    res = att.attribute([Query("q", train[0].prompt, train[0].response, train[1].response)], methods=["dda"])
    assert np.isfinite(res.scores["dda"]).all()


def test_finetune_refuses_checkpoints_of_another_run(tmp_path):
    train = _examples(6, seed=7)
    _attributor(tmp_path, **{"train.epochs": 1}).finetune(train)
    other = _attributor(tmp_path, **{"train.epochs": 2, "train.lr": 3e-3})
    with pytest.raises(ValueError, match="another fine-tuning run"):
        other.finetune(train)


def test_query_tokens_diff_focuses_the_contrast_only(trained):
    """diff: the contrast comes from the swapped tokens; the whole negative stays for non-contrastive scorers."""
    att, train, _, tmp = trained
    resp = train[2].response.split()
    swapped = " ".join(["China" if w != "China" else "England" for w in resp[:1]] + resp[1:])
    q = Query("q", train[2].prompt, swapped, train[2].response)
    fs_diff = att.feature_set([q])
    att_all = _attributor(tmp, **{"features.query_tokens": "all"})
    att_all.use_checkpoints(tmp / "checkpoints")
    fs_all = att_all.feature_set([q])
    for c in ("base", "epoch-1", "epoch-2"):
        np.testing.assert_allclose(fs_diff.neg[c], fs_all.neg[c], rtol=1e-5, atol=1e-6)  # whole output in both
        assert c in fs_diff.contrast_neg and not fs_all.contrast_neg
        assert not np.allclose(fs_diff.contrast(c), fs_all.contrast(c), atol=1e-6)
        assert np.isfinite(fs_diff.contrast(c)).all() and np.abs(fs_diff.contrast(c)).sum() > 0
    no_contrast = [
        att.attribute([q], methods=["dda_no_contrast"]).scores["dda_no_contrast"],
        att_all.attribute([q], methods=["dda_no_contrast"]).scores["dda_no_contrast"],
    ]
    np.testing.assert_allclose(no_contrast[0], no_contrast[1], rtol=1e-4, atol=1e-6)


def test_float16_store_keeps_rankings_and_refuses_values_it_cannot_hold(tmp_path):
    from scipy.stats import spearmanr

    train = _examples(16, seed=6)
    queries = [Query("q", train[2].prompt, train[2].response, train[5].response)]
    first = _attributor(tmp_path / "float32", **{"features.dtype": "float32"})
    first.finetune(train)
    scores = {}
    for dtype in ("float32", "float16"):
        att = first if dtype == "float32" else _attributor(tmp_path / dtype, **{"features.dtype": dtype})
        att.use_checkpoints(first.workdir.checkpoints)
        att.index(train)
        scores[dtype] = att.attribute(queries, methods=["dda", "tracin"]).scores
    for method in ("dda", "tracin"):
        a, b = scores["float32"][method][0], scores["float16"][method][0]
        assert spearmanr(a, b).statistic > 0.999, method
        assert list(np.argsort(-a)[:5]) == list(np.argsort(-b)[:5]), method
    store = FeatureStore.open(tmp_path / "float16" / "features" / "train" / "base")
    before = np.asarray(store.features[0]).copy()
    with pytest.raises(ValueError, match="not finite as float16"):
        store.write(np.array([0]), np.full((1, store.features.shape[1]), 1e6, dtype=np.float32))
    np.testing.assert_array_equal(np.asarray(store.features[0]), before)  # nothing of the bad row was written
