"""Compute and parameter counts per layer, from the ONNX graph alone (shape inference at batch 1).

MACs (multiply-accumulates) per sample:
  * Conv / ConvTranspose: output elements x (input channels / groups) x kernel size
    (ConvTranspose: input elements x (output channels / groups) x kernel size);
  * Gemm: M x N x K; MatMul: output elements x K (K the contracted dim; batched MatMul counts every batch).
Parameters: elements of the layer's initializer inputs (weights and bias).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import onnx
from onnx import helper

from ..log import get_logger

_log = get_logger(__name__)

COMPUTE_OPS = ("Conv", "ConvTranspose", "Gemm", "MatMul")


@dataclass(frozen=True)
class LayerCost:
    macs: int
    params: int

    def to_dict(self) -> dict[str, int]:
        return {"macs": self.macs, "params": self.params}


def _static_batch(model: onnx.ModelProto, batch: int = 1) -> onnx.ModelProto:
    """A copy with every free input dim (the batch) set to ``batch``: costs are per sample."""
    m = onnx.ModelProto()
    m.CopyFrom(model)
    inits = {i.name for i in m.graph.initializer}
    for vi in m.graph.input:
        if vi.name in inits:
            continue
        for k, d in enumerate(vi.type.tensor_type.shape.dim):
            if k == 0 or not d.HasField("dim_value") or d.dim_value <= 0:
                d.Clear()
                d.dim_value = batch
    del m.graph.value_info[:]
    return m


def _infer(model: onnx.ModelProto) -> onnx.ModelProto:
    """ONNX shape inference; where it leaves dims unknown (Reshape to computed shapes, as attention blocks do),
    ONNX Runtime's symbolic shape inference, which propagates the computed shape values."""
    static = _static_batch(model)
    try:
        inferred = onnx.shape_inference.infer_shapes(static, data_prop=True)
    except (onnx.shape_inference.InferenceError, ValueError) as exc:
        _log.debug("onnx shape inference failed: %s", exc)
        inferred = static
    try:
        from onnxruntime.tools.symbolic_shape_infer import SymbolicShapeInference

        sym: onnx.ModelProto = SymbolicShapeInference.infer_shapes(static, auto_merge=True)
        return sym
    except Exception as exc:  # noqa: BLE001 -- an optional tool with untyped failures; ONNX's result stands
        _log.debug("symbolic shape inference failed: %s", exc)
        return inferred


def _shapes(model: onnx.ModelProto) -> dict[str, tuple[int, ...] | None]:
    inferred = _infer(model)
    out: dict[str, tuple[int, ...] | None] = {}
    for vi in [*inferred.graph.input, *inferred.graph.value_info, *inferred.graph.output]:
        dims = vi.type.tensor_type.shape.dim
        if all(d.HasField("dim_value") for d in dims) and vi.type.tensor_type.HasField("shape"):
            out[vi.name] = tuple(int(d.dim_value) for d in dims)
        else:
            out[vi.name] = None
    for init in model.graph.initializer:
        out[init.name] = tuple(int(d) for d in init.dims)
    return out


def _prod(xs: tuple[int, ...]) -> int:
    return int(np.prod(xs, dtype=np.int64)) if xs else 1


def node_macs(node: onnx.NodeProto, shapes: dict[str, tuple[int, ...] | None]) -> int | None:
    """MACs per sample of one compute node, or None when a shape is unknown."""
    attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
    if node.op_type in ("Conv", "ConvTranspose"):
        w = shapes.get(node.input[1])
        y = shapes.get(node.output[0])
        x = shapes.get(node.input[0])
        if w is None or y is None or x is None:
            return None
        kernel = _prod(w[2:])
        if node.op_type == "Conv":  # W: (M, C/g, k...)
            return _prod(y) * w[1] * kernel
        return _prod(x) * w[1] * kernel  # ConvTranspose W: (C, M/g, k...): every input element scatters
    if node.op_type == "Gemm":
        a, y = shapes.get(node.input[0]), shapes.get(node.output[0])
        if a is None or y is None or len(a) != 2:
            return None
        k = a[0] if attrs.get("transA", 0) else a[1]
        return _prod(y) * k
    if node.op_type == "MatMul":
        a, y = shapes.get(node.input[0]), shapes.get(node.output[0])
        if a is None or y is None or not a:
            return None
        return _prod(y) * a[-1]
    return None


def layer_costs(model: onnx.ModelProto) -> dict[str, LayerCost]:
    """node name -> LayerCost for every Conv/ConvTranspose/Gemm/MatMul (unknown MACs count as 0, logged)."""
    shapes = _shapes(model)
    inits = {i.name: i for i in model.graph.initializer}
    out: dict[str, LayerCost] = {}
    unknown = []
    for node in model.graph.node:
        if node.op_type not in COMPUTE_OPS:
            continue
        macs = node_macs(node, shapes)
        if macs is None:
            unknown.append(node.name)
        params = sum(_prod(tuple(inits[i].dims)) for i in node.input if i in inits)
        out[node.name] = LayerCost(int(macs or 0), int(params))
    if unknown:
        _log.warning("MACs unknown (no static shape) for %d layers, e.g. %s", len(unknown), unknown[:3])
    return out
