"""Scorers. Importing this package registers every method (see base.REGISTRY / base.PRESETS)."""

from . import gradient, text  # noqa: F401  (registration side effects)
from .base import PRESETS, REGISTRY, FeatureSet, ScoringContext, dot_scores, parse_method, run_method

__all__ = ["PRESETS", "REGISTRY", "FeatureSet", "ScoringContext", "dot_scores", "parse_method", "run_method"]
