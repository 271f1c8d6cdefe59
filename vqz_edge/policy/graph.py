"""What the precision policy asks of an ONNX graph beyond its nodes: the initializer names. Which nodes can run
INT8 (and which of their inputs get Q/DQ) is the placement rules' (vqz_edge.policy.placement)."""

from __future__ import annotations

import onnx


def initializer_names(model: onnx.ModelProto) -> set[str]:
    return {i.name for i in model.graph.initializer}
