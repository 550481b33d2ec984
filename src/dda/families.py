"""Model families: what dda assumes about an architecture's module names, keyed by HF `config.model_type`.

Gradient features are taken at named Linear layers (`features.modules`), LoRA adapters go on named layers
(`train.lora.target_modules`), and `features.layers=last:1/3` needs each module's decoder-layer index, read from
its name. Those names differ between architectures, so they live here, once per family, instead of as constants
in the config and the capture code (Kronfluence asks for the same thing as a `Task` naming its tracked modules).

llama, qwen2 and mistral share one naming (`model.layers.N.self_attn.q_proj`, `...mlp.down_proj`); an unknown
model_type gets the generic family, which assumes that naming and says so in its `fallback_note`. A user's architecture
is one `register_family(ModelFamily(...))` call. Nothing here imports torch: a family is names and a pattern.
"""

from __future__ import annotations

import dataclasses
import re
from dataclasses import dataclass

# The 7 Linear layers of a Llama-style decoder layer: attention q/k/v/o, MLP gate/up/down.
DECODER_PROJECTIONS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
DECODER_LAYER_PATTERN = r"\.layers\.(\d+)\."


@dataclass(frozen=True)
class ModelFamily:
    """An architecture's module naming, as dda uses it."""

    name: str
    """The family's name (registry key, shown in notes)."""
    model_types: tuple[str, ...]  # the HF config.model_type values it covers
    """The Hugging Face `config.model_type` values it covers."""
    tracked_modules: tuple[str, ...] = DECODER_PROJECTIONS  # last name parts whose weight gradients are features
    """Last name parts of the Linear modules whose weight gradients are the features (`features.modules`)."""
    lora_targets: tuple[str, ...] = DECODER_PROJECTIONS  # last name parts that get LoRA adapters
    """Last name parts of the modules `dda finetune` puts LoRA adapters on."""
    layer_pattern: str = DECODER_LAYER_PATTERN  # regex whose group 1 is a module's decoder-layer index
    """A regex whose group 1 is a module's decoder-layer index (for `features.layers`)."""
    layers_attr: str = "layers"  # the decoder's list of layers (the backward pass starts at the first selected)
    """The decoder's attribute holding its list of layers (the backward pass starts at the first selected)."""
    fallback_note: str = ""  # set on the generic family handed out for an unregistered model_type: why
    """Set on the generic family handed out for an unregistered model_type: why it was used."""

    def __post_init__(self) -> None:
        if re.compile(self.layer_pattern).groups < 1:
            raise ValueError(f"model family '{self.name}': layer_pattern {self.layer_pattern!r} needs a group")

    @property
    def is_fallback(self) -> bool:
        """True for the generic family given to a model_type no family registered."""
        return bool(self.fallback_note)

    def layer_index(self, module_name: str) -> int | None:
        """The decoder-layer index in a module's full name (None outside the decoder layers, e.g. lm_head)."""
        m = re.search(self.layer_pattern, module_name)  # `re` caches the compiled pattern
        return int(m.group(1)) if m else None


FAMILIES: dict[str, ModelFamily] = {}  # {model_type: family}
GENERIC = ModelFamily("generic", ())  # what dda assumed of every model before families existed


def register_family(family: ModelFamily) -> ModelFamily:
    """Make `family` the one of each of its model_types (replacing a registered one: a user's own naming wins)."""
    if not family.model_types:
        raise ValueError(f"model family '{family.name}' names no model_type to register it for")
    for model_type in family.model_types:
        FAMILIES[model_type] = family
    return family


def family_for(model_type: str | None) -> ModelFamily:
    """The family registered for `model_type`, or the generic one with a note saying why it was assumed."""
    if model_type in FAMILIES:
        return FAMILIES[model_type]
    what = f"model_type '{model_type}'" if model_type else "a model without config.model_type"
    note = (
        f"{what} has no registered model family; assuming the generic one: modules named "
        f"{', '.join(GENERIC.tracked_modules)}, layer indices matched by {GENERIC.layer_pattern!r}. If its Linear "
        "layers are named otherwise, set features.modules and train.lora.target_modules to their names and "
        "register its family (dda.families.register_family) so that features.layers finds their layer indices"
    )
    return dataclasses.replace(GENERIC, fallback_note=note)


def family_of(model: object) -> ModelFamily:
    """The family of a loaded model (a peft model reads its base model's config)."""
    return family_for(getattr(getattr(model, "config", None), "model_type", None))


for _name in ("llama", "qwen2", "mistral"):  # one naming; tests/test_families.py checks each on a tiny model
    register_family(ModelFamily(_name, (_name,)))
