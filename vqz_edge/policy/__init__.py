"""Precision policy: rules in the spec -> one resolved plan (every layer's precision and the rule that decided it)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from .plan import PLAN_VERSION, LayerDecision, ResolvedPlan
from .resolve import Resolution, resolve, resolve_spec

if TYPE_CHECKING:
    import onnx

    from ..spec import Spec

__all__ = ["PLAN_VERSION", "LayerDecision", "Resolution", "ResolvedPlan", "resolve", "resolve_plan", "resolve_spec"]


def resolve_plan(spec: Spec, onnx_model: onnx.ModelProto, onnx_sha256: str = "") -> ResolvedPlan:
    """The one resolved plan for a spec and its ONNX model (presets, then the spec's rules)."""
    return resolve_spec(
        onnx_model, model_name=spec.model.name, onnx_sha256=onnx_sha256, rules=spec.precision.rules,
        preset=spec.precision.preset, default=spec.precision.default,
    ).plan
