"""What the sweep quantizes one at a time: a *layer* (one quantizable node) or a *block* (the quantizable
layers of one module scope, e.g. ``features.3`` or ``encoder.layer.0``).

For every unit the tensors that get Q/DQ when it runs in INT8 are recorded (exactly what
:func:`vqz_edge.calib.qdq.insert_qdq` does: the placement rules of :mod:`vqz_edge.policy.placement`), so
diagnostics and histograms can point at them.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass

import onnx

from ..artifacts.plan import ResolvedPlan
from ..policy.placement import Placement, place
from ..policy.resolve import scope_of

GRANULARITIES = ("layer", "block")
_INDEX = re.compile(r"^\d+$")


@dataclass(frozen=True)
class Unit:
    name: str  # the node name (layer) or the block scope (block)
    kind: str  # 'layer' or 'block'
    nodes: tuple[str, ...]
    op_types: tuple[str, ...]
    block: str
    activations: tuple[str, ...]  # activation tensors quantized when the unit is INT8
    weights: tuple[str, ...]

    def to_dict(self) -> dict[str, object]:
        return {
            "name": self.name,
            "kind": self.kind,
            "nodes": list(self.nodes),
            "op_types": list(self.op_types),
            "block": self.block,
            "activations": list(self.activations),
            "weights": list(self.weights),
        }


def block_of(node_name: str, depth: int | None = None) -> str:
    """The block a node belongs to: its module scope cut after the first numeric component
    (``features.3.conv.0.0`` -> ``features.3``; ``vision_model.encoder.layers.0.self_attn.q_proj`` ->
    ``vision_model.encoder.layers.0``), else its first two components; ``depth`` forces a component count.
    Nodes without a scope form the block ``<root>``."""
    scope = scope_of(node_name)
    if not scope:
        return "<root>"
    parts = scope.split(".")
    if depth is not None:
        return ".".join(parts[: max(1, depth)])
    for i, p in enumerate(parts):
        if _INDEX.match(p) and i > 0:
            return ".".join(parts[: i + 1])
    return ".".join(parts[:2])


def quantized_inputs(node: onnx.NodeProto, placement: Placement) -> tuple[list[str], list[str]]:
    """(activations, weights) that get Q/DQ when ``node`` runs in INT8 (the placement insert_qdq uses)."""
    return placement.activation_inputs(node), placement.weight_inputs(node)


def candidate_layers(plan: ResolvedPlan) -> list[str]:
    """Layers the sweep may move: quantizable and INT8 in the base plan (presets/rules that pin a layer
    above INT8 keep it there)."""
    return [layer.name for layer in plan.layers if layer.quantizable and layer.precision == "int8"]


def build_units(
    model: onnx.ModelProto, plan: ResolvedPlan, granularity: str = "layer", *, block_depth: int | None = None,
    placement: Placement | None = None,
) -> list[Unit]:
    """Units in graph order."""
    if granularity not in GRANULARITIES:
        raise ValueError(f"granularity {granularity!r} is not one of {list(GRANULARITIES)}")
    placement = placement or place(model)
    nodes = {n.name: n for n in model.graph.node}
    cands = candidate_layers(plan)
    per_layer = []
    for name in cands:
        node = nodes[name]
        acts, weights = quantized_inputs(node, placement)
        per_layer.append(Unit(name, "layer", (name,), (node.op_type,), block_of(name, block_depth),
                              tuple(acts), tuple(weights)))
    if granularity == "layer":
        return per_layer
    groups: dict[str, list[Unit]] = {}
    for u in per_layer:
        groups.setdefault(u.block, []).append(u)
    out = []
    for block, members in groups.items():  # dicts keep first-seen (graph) order
        out.append(Unit(
            block, "block", tuple(n for m in members for n in m.nodes), tuple(o for m in members for o in m.op_types),
            block, _dedupe(a for m in members for a in m.activations), _dedupe(w for m in members for w in m.weights),
        ))
    return out


def _dedupe(items: Iterable[str]) -> tuple[str, ...]:
    return tuple(dict.fromkeys(items))
