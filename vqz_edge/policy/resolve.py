"""Resolve precision rules against an ONNX graph: every node gets a precision and the rule that set it.

Rules apply in order; a later matching rule overrides an earlier one. Selectors:
  * ``match``  -- glob on the node name or on its module scope (``features.1.*``, ``classifier*``);
  * ``regex``  -- regular expression searched in the node name;
  * ``op_type``-- ONNX op type (``Gemm``);
  * ``node``   -- one exact node name.
Rules that match nothing are reported (a typo must not silently do nothing).
"""

from __future__ import annotations

import fnmatch
import re
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field

import onnx

from ..artifacts.plan import LayerDecision, ResolvedPlan
from ..errors import SpecError
from ..spec import PrecisionRule
from .placement import Placement, place
from .presets import preset_rules


def scope_of(node_name: str) -> str:
    """Module path of a node exported by torch: '/features/features.1/conv/conv.0/conv.0.0/Conv' ->
    'features.1.conv.0.0'.

    The TorchScript exporter writes one path component per module level, named relative to the enclosing
    named module ('features.1' under 'features', then 'conv', 'conv.0', 'conv.0.0'); this rebuilds the
    dotted path users write in rules. Nodes of other exporters get '' unless they use '/' paths too.
    """
    full, prev = "", ""
    for comp in [p for p in node_name.split("/") if p][:-1]:
        if prev and comp.startswith(prev + "."):
            full += comp[len(prev):]
        else:
            full = f"{full}.{comp}" if full else comp
        prev = comp
    return full


def rule_label(index: int, rule: PrecisionRule) -> str:
    for key in ("match", "regex", "op_type", "node"):
        value = getattr(rule, key)
        if value is not None:
            return f"rules[{index}] {key}={value!r}"
    return f"rules[{index}]"


def rule_matches(rule: PrecisionRule, node: onnx.NodeProto) -> bool:
    if rule.node is not None:
        return node.name == rule.node
    if rule.op_type is not None:
        return node.op_type == rule.op_type
    if rule.regex is not None:
        return re.search(rule.regex, node.name) is not None
    assert rule.match is not None
    pattern, scope = rule.match, scope_of(node.name)
    if fnmatch.fnmatchcase(node.name, pattern):
        return True
    # 'features.1.*' covers the module features.1 itself and everything below it
    return bool(scope) and (fnmatch.fnmatchcase(scope, pattern) or (pattern.endswith(".*") and scope == pattern[:-2]))


@dataclass
class Resolution:
    plan: ResolvedPlan
    unmatched_rules: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)


def resolve_plan(
    model: onnx.ModelProto,
    rules: Sequence[PrecisionRule] = (),
    *,
    model_name: str,
    onnx_sha256: str,
    preset: str = "none",
    default: str = "int8",
    float_default: str = "fp16",
    placement: Placement | None = None,
) -> Resolution:
    """The one resolved plan: every node of ``model`` gets a precision and the rule that decided it.

    The preset's rules first (final head FP32, transformer specifics; ``none``: no preset), then the user's
    ``rules`` in order, a later matching rule overriding an earlier one. Quantizable layers start at ``default``,
    the others at ``float_default``. Which nodes can run INT8 is ``placement``'s (default: the placement rules on
    ``model``, vqz_edge.policy.placement).
    """
    placement = placement or place(model)
    return _resolve(model, [*preset_rules(model, preset, placement), *((rule_label(i, r), r) for i, r in enumerate(rules))],
                    rules, placement, model_name=model_name, onnx_sha256=onnx_sha256, default=default,
                    float_default=float_default)


def _resolve(
    model: onnx.ModelProto,
    labelled: Sequence[tuple[str, PrecisionRule]],
    user_rules: Sequence[PrecisionRule],
    placement: Placement,
    *,
    model_name: str,
    onnx_sha256: str,
    default: str,
    float_default: str,
) -> Resolution:
    """Apply ``labelled`` (the preset's rules, then ``user_rules`` labelled) to every node."""
    for idx, rule in enumerate(user_rules):
        if rule.regex is not None:
            try:
                re.compile(rule.regex)
            except re.error as exc:
                raise SpecError(f"precision.rules[{idx}].regex {rule.regex!r} is not a valid regular expression: {exc}") from exc
    hits = [0] * len(labelled)
    layers = []
    notes = []
    for node in model.graph.node:
        if node.op_type in ("Constant",):
            continue
        quantizable = placement.quantizable(node.name)
        precision = default if quantizable else float_default
        if quantizable:
            why = "default"
        elif node.name in placement.excluded:
            why = f"placement {placement.excluded[node.name][0]}: {placement.excluded[node.name][1]}: {float_default}"
        else:
            why = f"no INT8 kernel: {float_default}"
        for k, (label, rule) in enumerate(labelled):
            if not rule_matches(rule, node):
                continue
            hits[k] += 1
            wanted = rule.precision
            if wanted in ("int4", "nf4"):
                raise SpecError(
                    f"{label} asks for {wanted} on node {node.name!r}: 4-bit is for LLM weights only; "
                    "vision layers go no lower than INT8"
                )
            if wanted == "int8" and not quantizable:
                continue  # an INT8 rule on e.g. Softmax cannot apply; it stays as decided
            precision, why = wanted, label + (f" ({rule.reason})" if rule.reason else "")
        layers.append(LayerDecision(node.name, node.op_type, precision, why, quantizable))
    unmatched = [label for (label, _), n in zip(labelled, hits) if n == 0]
    if not any(layer.quantizable for layer in layers):
        notes.append("the model has no quantizable layers (Conv/ConvTranspose/Gemm/MatMul/Conv-fused residual Add)")
    plan = ResolvedPlan(model=model_name, onnx_sha256=onnx_sha256, layers=tuple(layers))
    return Resolution(plan, unmatched, notes)


# The names before issue 19, kept for one release for callers on other branches: resolve_plan is the one.
def resolve(
    model: onnx.ModelProto,
    rules: Sequence[PrecisionRule] = (),
    *,
    model_name: str,
    onnx_sha256: str,
    default: str = "int8",
    float_default: str = "fp16",
) -> Resolution:
    """Deprecated: ``resolve_plan(..., preset="none")``."""
    warnings.warn("vqz_edge.policy.resolve is deprecated; use resolve_plan (preset='none')", DeprecationWarning,
                  stacklevel=2)
    return resolve_plan(model, rules, model_name=model_name, onnx_sha256=onnx_sha256, default=default,
                        float_default=float_default)


def resolve_spec(
    model: onnx.ModelProto,
    *,
    model_name: str,
    onnx_sha256: str,
    rules: Sequence[PrecisionRule] = (),
    preset: str = "cnn",
    default: str = "int8",
) -> Resolution:
    """Deprecated: ``resolve_plan(..., preset=...)`` (its default preset is ``none``, this one's ``cnn``)."""
    warnings.warn("vqz_edge.policy.resolve_spec is deprecated; use resolve_plan", DeprecationWarning, stacklevel=2)
    return resolve_plan(model, rules, model_name=model_name, onnx_sha256=onnx_sha256, preset=preset, default=default)
