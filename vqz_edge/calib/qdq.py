"""Write the explicit-quantization model: QuantizeLinear/DequantizeLinear where the plan says INT8.

Placement follows TensorRT's explicit-quantization guidance (Q/DQ on the *inputs* of the layers to run
in INT8, so TensorRT fuses DQ -> layer -> Q into an INT8 kernel):
  * which inputs of an INT8 layer get Q/DQ is decided by the placement rules (vqz_edge.policy.placement,
    docs/placement.md): activation inputs of Conv / Gemm / MatMul, both inputs of attention MatMuls, only the
    skip input of a Conv-fused residual Add, nothing on a transformer's residual stream;
  * activations: per-tensor symmetric int8 (zero point 0, scale amax/127); one Q/DQ pair per tensor, shared by
    all its INT8 consumers (other consumers keep the float tensor);
  * weights: per-channel symmetric int8 Q->DQ on the FP32 weights, on the output-channel axis
    (Conv: 0; ConvTranspose: 1; Gemm: 0 if transB else 1; MatMul: last). TensorRT 8.6+ folds the
    weight Q at build time; ONNX Runtime runs the model as is, so accuracy is measured on the CPU.
Layers the plan keeps FP16/FP32 get no Q/DQ at all.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from ..artifacts.plan import ResolvedPlan
from ..errors import CalibrationError
from ..log import get_logger
from ..policy.placement import Placement, place

_log = get_logger(__name__)
QDQ_MIN_OPSET = 13
_MIN_SCALE = 1e-8  # a channel / tensor that is all zeros still needs a positive scale


@dataclass(frozen=True)
class QdqReport:
    activations: int  # activation tensors given a Q/DQ pair
    weights: int  # weight tensors quantized per channel
    int8_layers: int
    skipped_layers: int  # quantizable layers kept above INT8 by the plan

    def to_dict(self) -> dict[str, int]:
        return dict(vars(self))


def per_channel_scale(w: np.ndarray, axis: int) -> np.ndarray:
    reduce = tuple(i for i in range(w.ndim) if i != axis)
    amax = np.max(np.abs(w.astype(np.float64)), axis=reduce) if reduce else np.abs(w.astype(np.float64))
    return (np.maximum(amax, _MIN_SCALE * 127) / 127.0).astype(np.float32)


def _upgrade_opset(model: onnx.ModelProto) -> onnx.ModelProto:
    version = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 0)
    if version >= QDQ_MIN_OPSET:
        return model
    _log.info("converting the model from opset %d to %d for per-channel QuantizeLinear", version, QDQ_MIN_OPSET)
    return onnx.version_converter.convert_version(model, QDQ_MIN_OPSET)


def insert_qdq(
    model: onnx.ModelProto,
    amax: Mapping[str, float],
    plan: ResolvedPlan,
    weight_scales: Mapping[str, np.ndarray] | None = None,
    placement: Placement | None = None,
) -> tuple[onnx.ModelProto, QdqReport]:
    """``weight_scales``: per-channel scales for weights whose values were already put on an INT8 grid (weight
    rounding); every other weight gets absmax/127 per channel. ``placement``: where Q/DQ goes (default: the
    placement rules on ``model``; pass one to reuse it across many plans of one model)."""
    placement = placement or place(model)
    model = _upgrade_opset(model)
    out = onnx.ModelProto()
    out.CopyFrom(model)
    graph = out.graph
    inits = {i.name: i for i in graph.initializer}
    decided = {layer.name: layer for layer in plan.layers}
    new_nodes: list[onnx.NodeProto] = []
    act_pairs: dict[str, str] = {}  # tensor -> dequantized tensor name
    weight_pairs: dict[tuple[str, int], str] = {}
    n_int8 = n_skipped = 0

    def act_qdq(tensor: str) -> str:
        if tensor in act_pairs:
            return act_pairs[tensor]
        if tensor not in amax:
            raise CalibrationError(
                f"activation {tensor!r} feeds an INT8 layer but has no calibrated range",
                hint="re-run calibration on this exact model",
            )
        scale = max(float(amax[tensor]), _MIN_SCALE * 127) / 127.0
        s_name, z_name = f"{tensor}_scale", f"{tensor}_zero_point"
        graph.initializer.extend([
            numpy_helper.from_array(np.array(scale, np.float32), s_name),
            numpy_helper.from_array(np.array(0, np.int8), z_name),
        ])
        q, dq = f"{tensor}_quantized", f"{tensor}_dequantized"
        new_nodes.append(helper.make_node("QuantizeLinear", [tensor, s_name, z_name], [q], name=f"{tensor}_QuantizeLinear"))
        new_nodes.append(helper.make_node("DequantizeLinear", [q, s_name, z_name], [dq], name=f"{tensor}_DequantizeLinear"))
        act_pairs[tensor] = dq
        return dq

    def weight_qdq(name: str, axis: int) -> str:
        key = (name, axis)
        if key in weight_pairs:
            return weight_pairs[key]
        w = numpy_helper.to_array(inits[name])
        given = (weight_scales or {}).get(name)
        scale = per_channel_scale(w, axis) if given is None else np.asarray(given, np.float32)
        s_name, z_name = f"{name}_scale_axis{axis}", f"{name}_zero_point_axis{axis}"
        graph.initializer.extend([
            numpy_helper.from_array(scale, s_name),
            numpy_helper.from_array(np.zeros(scale.shape, np.int8), z_name),
        ])
        q, dq = f"{name}_quantized_axis{axis}", f"{name}_dequantized_axis{axis}"
        new_nodes.append(helper.make_node("QuantizeLinear", [name, s_name, z_name], [q], name=f"{name}_QuantizeLinear", axis=axis))
        new_nodes.append(helper.make_node("DequantizeLinear", [q, s_name, z_name], [dq], name=f"{name}_DequantizeLinear", axis=axis))
        weight_pairs[key] = dq
        return dq

    for node in graph.node:
        layer = decided.get(node.name)
        if layer is None or not layer.quantizable:
            continue
        if layer.precision != "int8":
            n_skipped += 1
            continue
        site = placement.site(node.name)
        if site is None:
            raise CalibrationError(
                f"the plan puts {node.op_type} {node.name!r} in INT8 but the placement rules give it no Q/DQ "
                f"({placement.excluded.get(node.name, ('', 'not an INT8 layer'))[1]})",
                hint="resolve the plan against this model with the same placement options",
            )
        n_int8 += 1
        for k in site.activations:
            node.input[k] = act_qdq(node.input[k])
        for k, axis in site.weights:
            node.input[k] = weight_qdq(node.input[k], axis)

    # Put each Q/DQ pair right after its producer so the graph stays topologically sorted.
    producers = {o: i for i, n in enumerate(graph.node) for o in n.output}
    order: dict[int, list[onnx.NodeProto]] = {}
    for qnode in new_nodes:
        src = qnode.input[0]
        anchor = producers.get(src, -1) if qnode.op_type == "QuantizeLinear" else None
        if anchor is None:  # a DequantizeLinear follows its QuantizeLinear
            continue
        order.setdefault(anchor, []).append(qnode)
    dq_of = {n.input[0]: n for n in new_nodes if n.op_type == "DequantizeLinear"}
    nodes = list(order.get(-1, []))
    nodes = [x for q in nodes for x in (q, dq_of[q.output[0]])]
    for i, node in enumerate(graph.node):
        nodes.append(node)
        for q in order.get(i, []):
            nodes.extend([q, dq_of[q.output[0]]])
    del graph.node[:]
    graph.node.extend(nodes)
    out.producer_name = "vqz-edge"
    onnx.checker.check_model(out)
    report = QdqReport(len(act_pairs), len(weight_pairs), n_int8, n_skipped)
    return out, report


def qdq_tensor_dtype_ok(model: onnx.ModelProto) -> bool:
    """True when every QuantizeLinear writes int8 (what TensorRT accepts)."""
    inits = {i.name: i for i in model.graph.initializer}
    for n in model.graph.node:
        if n.op_type == "QuantizeLinear" and len(n.input) > 2:
            zp = inits.get(n.input[2])
            if zp is None or zp.data_type != TensorProto.INT8:
                return False
    return True
