"""Scorers. Importing this package registers every method (see base.REGISTRY / base.PRESETS)."""

from . import cea, combined, gradient, repsim, text  # noqa: F401  (registration side effects)
from .base import (
    PRESETS,
    REGISTRY,
    FeatureSet,
    ModelAccess,
    ScoringContext,
    dot_scores,
    method_needs,
    parse_method,
    run_method,
)

__all__ = [
    "PRESETS",
    "REGISTRY",
    "FeatureSet",
    "ModelAccess",
    "ScoringContext",
    "dot_scores",
    "method_needs",
    "parse_method",
    "run_method",
]
