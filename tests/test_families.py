"""Model families (dda.families) on tiny random models built from real transformers configs: the registered
llama/qwen2/mistral families select exactly the modules dda selected before families existed, an unknown
model_type falls back to the generic family with a note, and a user's family makes another naming work."""

from __future__ import annotations

import re
import warnings

import pytest
import torch
from conftest import make_model, random_token_batch

from dda.config import DDAConfig
from dda.families import FAMILIES, GENERIC, ModelFamily, family_for, family_of, register_family
from dda.features.capture import GradientFeaturizer, _parse_layers, freeze, pad_batch, per_example_loss, select_modules
from dda.features.projection import IdentityProjector

# What features.modules and train.lora.target_modules defaulted to before they came from the generic family.
BEFORE = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
LAYER_SPECS = ["all", "last:1", "first:1", "last:1/3", "0", "1"]


def _selected_before_families(model: torch.nn.Module, suffixes: list[str], layers: str) -> list[str]:
    """select_modules as it was: Linear layers by last name part, layer index from '.layers.N.'."""
    layer_re = re.compile(r"\.layers\.(\d+)\.")
    picked = [
        n
        for n, mod in model.named_modules()
        if n.rsplit(".", 1)[-1] in suffixes and hasattr(mod, "in_features") and hasattr(mod, "out_features")
    ]
    keep = _parse_layers(layers, sorted({int(m.group(1)) for n in picked if (m := layer_re.search(n))}))
    return [n for n in picked if (m := layer_re.search(n)) is None or int(m.group(1)) in keep]


def test_config_defaults_come_from_the_generic_family():
    cfg = DDAConfig()
    assert cfg.features.modules == cfg.train.lora.target_modules == list(GENERIC.tracked_modules) == BEFORE
    assert list(GENERIC.lora_targets) == BEFORE


def test_registered_families_select_what_dda_selected_before(family):
    model = make_model(family)
    fam = family_of(model)
    assert fam.name == family and not fam.is_fallback and fam is FAMILIES[family]
    for layers in LAYER_SPECS:
        for suffixes in (list(fam.tracked_modules), ["q_proj", "v_proj", "down_proj"]):
            with warnings.catch_warnings():
                warnings.simplefilter("error")  # a registered family warns about nothing
                got = select_modules(model, suffixes, layers)
            assert got == _selected_before_families(model, suffixes, layers), (layers, suffixes)
    every = select_modules(model, fam.tracked_modules)
    assert len(every) == 2 * 7 and every[0] == "model.layers.0.self_attn.q_proj"
    assert [fam.layer_index(n) for n in every] == [0] * 7 + [1] * 7 and fam.layer_index("lm_head") is None


def test_lora_targets_are_the_tracked_modules_of_a_peft_model(family):
    """peft finds every LoRA target of the family; the wrapped model keeps its family and its selection."""
    from peft import LoraConfig, get_peft_model

    fam = family_for(family)
    model = get_peft_model(make_model(family), LoraConfig(r=2, target_modules=list(fam.lora_targets)))
    assert family_of(model) is fam
    wrapped = [n for n, m in model.named_modules() if hasattr(m, "lora_A")]
    got = select_modules(model, fam.tracked_modules, "last:1")
    assert got == _selected_before_families(model, list(fam.tracked_modules), "last:1")
    assert len(wrapped) == 14 and set(got) <= set(wrapped) and len(got) == 7


def test_unknown_model_type_falls_back_with_a_note():
    """Qwen3 has Llama-style names but no registered family: today's selection, with a warning saying why."""
    from transformers import Qwen3Config, Qwen3ForCausalLM

    torch.manual_seed(0)
    model = Qwen3ForCausalLM(
        Qwen3Config(
            hidden_size=32,
            intermediate_size=48,
            num_hidden_layers=2,
            num_attention_heads=4,
            num_key_value_heads=2,
            head_dim=8,
            vocab_size=160,
        )
    )
    fam = family_of(model)
    assert fam.is_fallback and fam.name == "generic" and fam.tracked_modules == GENERIC.tracked_modules
    assert "model_type 'qwen3' has no registered model family" in fam.fallback_note
    assert "register_family" in fam.fallback_note
    with pytest.warns(UserWarning, match="model_type 'qwen3' has no registered model family"):
        got = select_modules(model, BEFORE, "last:1")
    assert got == _selected_before_families(model, BEFORE, "last:1")
    assert "a model without config.model_type" in family_of(torch.nn.Linear(2, 2)).fallback_note


def _falcon():
    from transformers import FalconConfig, FalconForCausalLM

    torch.manual_seed(0)
    model = FalconForCausalLM(FalconConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=4, vocab_size=160))
    return model.eval()


FALCON = ModelFamily(
    "falcon",
    ("falcon",),
    tracked_modules=("query_key_value", "dense", "dense_h_to_4h", "dense_4h_to_h"),
    lora_targets=("query_key_value", "dense", "dense_h_to_4h", "dense_4h_to_h"),
    layer_pattern=r"\.h\.(\d+)\.",
    layers_attr="h",
)


@pytest.fixture
def falcon_family():
    register_family(FALCON)
    yield FALCON
    FAMILIES.pop("falcon")


def test_without_its_family_another_naming_is_misread():
    """Falcon's layers are `transformer.h.N`: the generic pattern finds no layer index, so last:1 keeps every
    layer, and the modules it names are not found at all. The errors and warning name the fallback."""
    model = _falcon()
    with pytest.warns(UserWarning, match="model_type 'falcon'"):
        assert len(select_modules(model, FALCON.tracked_modules, "last:1")) == 8
    with pytest.warns(UserWarning), pytest.raises(ValueError, match="no registered model family"):
        select_modules(model, BEFORE)


def test_a_users_family_selects_its_layers_and_starts_the_backward_there(falcon_family):
    model = _falcon()
    assert family_of(model) is falcon_family
    names = select_modules(model, falcon_family.tracked_modules, "last:1")
    assert names == [f"transformer.h.1.{m}" for m in ("self_attention.query_key_value", "self_attention.dense")] + [
        f"transformer.h.1.mlp.{m}" for m in ("dense_h_to_4h", "dense_4h_to_h")
    ]
    with pytest.raises(ValueError, match="the falcon family's modules are query_key_value"):
        select_modules(model, ["q_proj"])
    # the backward pass starts at the first selected layer: h[1], found through layers_attr
    seqs, masks = random_token_batch()
    batch = pad_batch(seqs, masks, 0, torch.device("cpu"))
    freeze(model)
    fz = GradientFeaturizer(model, names, IdentityProjector())
    handle = fz._grad_start_hook()
    assert handle.id in model.transformer.h[1]._forward_pre_hooks
    handle.remove()
    feats = fz(*batch)
    # and the features are each example's exact weight gradients
    mods = dict(model.named_modules())
    exact = []
    for s, m in zip(seqs, masks, strict=True):
        weights = [mods[n].weight for n in names]
        for w in weights:
            w.requires_grad_(True)
        per_example_loss(model, *pad_batch([s], [m], 0, torch.device("cpu"))).sum().backward()
        exact.append(torch.cat([w.grad.reshape(-1) for w in weights]))
        for w in weights:
            w.grad = None
            w.requires_grad_(False)
    torch.testing.assert_close(feats, torch.stack(exact), rtol=1e-4, atol=1e-6)


def test_a_family_needs_a_model_type_and_a_layer_group():
    with pytest.raises(ValueError, match="names no model_type"):
        register_family(ModelFamily("nameless", ()))
    with pytest.raises(ValueError, match="needs a group"):
        ModelFamily("flat", ("flat",), layer_pattern=r"\.layers\.")
