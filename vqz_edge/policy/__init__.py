"""Precision policy: rules in the spec -> one resolved plan (every layer's precision and the rule that decided it).

``resolve_plan`` is the one operation: a preset's rules, then the spec's, over every node of the ONNX graph."""

from __future__ import annotations

from ..artifacts.plan import PLAN_VERSION, LayerDecision, ResolvedPlan
from .resolve import Resolution, resolve, resolve_plan, resolve_spec

__all__ = ["PLAN_VERSION", "LayerDecision", "Resolution", "ResolvedPlan", "resolve", "resolve_plan", "resolve_spec"]
