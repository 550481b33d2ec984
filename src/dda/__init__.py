"""dda: Debias and Denoise Attribution.

Trace what a fine-tuned causal LM says back to the training documents behind it.
Score orientation everywhere: arrays of shape (n_queries, n_train); HIGHER = MORE RESPONSIBLE.
"""

__version__ = "0.1.0"

from .api import Attribution, Attributor, load_attribution  # noqa: E402
from .config import DDAConfig, apply_overrides, config_from_dict, load_config  # noqa: E402
from .data import Example, Query, load_examples, load_queries  # noqa: E402

__all__ = ["Attribution", "Attributor", "DDAConfig", "Example", "Query", "apply_overrides", "config_from_dict",
           "load_attribution", "load_config", "load_examples", "load_queries"]
