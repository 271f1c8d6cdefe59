"""Precision policy: rules in the spec -> one resolved plan (every layer's precision and the rule that decided it)."""

from .plan import PLAN_VERSION, LayerDecision, ResolvedPlan

__all__ = ["PLAN_VERSION", "LayerDecision", "ResolvedPlan"]
