"""What the precision policy asks of an ONNX graph: which nodes have an INT8 kernel. Shared by the resolver and
the presets (and the sensitivity diagnostics)."""

from __future__ import annotations

import onnx

LINEAR_OPS = ("Conv", "ConvTranspose", "Gemm", "MatMul")


def initializer_names(model: onnx.ModelProto) -> set[str]:
    return {i.name for i in model.graph.initializer}


def is_quantizable(node: onnx.NodeProto, inits: set[str]) -> bool:
    """Ops with an INT8 implementation in TensorRT that vqz-edge places Q/DQ for."""
    if node.op_type in LINEAR_OPS:
        return True
    if node.op_type == "Add":  # residual Add: both inputs are activations
        return len(node.input) == 2 and all(i and i not in inits for i in node.input)
    return False
