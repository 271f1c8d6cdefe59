"""Hand-built ONNX graphs with BatchNormalization, in the styles other exporters produce."""

from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper


def bn_params(prefix: str, c: int, rng: np.random.Generator) -> list[onnx.TensorProto]:
    """Randomised BN statistics (default stats would make a broken fold pass)."""
    return [
        numpy_helper.from_array(rng.standard_normal(c).astype(np.float32), f"{prefix}.gamma"),
        numpy_helper.from_array(rng.standard_normal(c).astype(np.float32), f"{prefix}.beta"),
        numpy_helper.from_array((rng.standard_normal(c) * 0.5).astype(np.float32), f"{prefix}.mean"),
        numpy_helper.from_array((rng.random(c) * 2 + 0.1).astype(np.float32), f"{prefix}.var"),
    ]


def bn_node(prefix: str, x: str, y: str, eps: float = 1e-3) -> onnx.NodeProto:
    return helper.make_node(
        "BatchNormalization", [x, f"{prefix}.gamma", f"{prefix}.beta", f"{prefix}.mean", f"{prefix}.var"], [y],
        name=f"{prefix}/BatchNormalization", epsilon=eps,
    )


def _w(rng: np.random.Generator, name: str, *shape: int) -> onnx.TensorProto:
    return numpy_helper.from_array((rng.standard_normal(shape) * 0.3).astype(np.float32), name)


def image_model(opset: int = 17, seed: int = 0, unnamed: bool = False) -> onnx.ModelProto:
    """Conv+BN, grouped Conv (no bias)+BN, ConvTranspose+BN, grouped ConvTranspose+BN, stand-alone BN,
    Gemm(transB=1, alpha/beta)+BN, Gemm(transB=0, no C)+BN, MatMul+BN. Input N x 3 x H x W (dynamic N, H, W)."""
    rng = np.random.default_rng(seed)
    inits: list[onnx.TensorProto] = []
    nodes: list[onnx.NodeProto] = []

    def add_bn(prefix: str, x: str, y: str, c: int) -> None:
        inits.extend(bn_params(prefix, c, rng))
        nodes.append(bn_node(prefix, x, y))

    inits += [_w(rng, "c1.w", 8, 3, 3, 3), _w(rng, "c1.b", 8)]
    nodes.append(helper.make_node("Conv", ["input", "c1.w", "c1.b"], ["c1"], name="stem/Conv", pads=[1, 1, 1, 1], strides=[2, 2]))
    add_bn("stem.bn", "c1", "b1", 8)
    nodes.append(helper.make_node("Relu", ["b1"], ["r1"], name="stem/Relu"))
    inits.append(_w(rng, "c2.w", 8, 2, 3, 3))
    nodes.append(helper.make_node("Conv", ["r1", "c2.w"], ["c2"], name="block/Conv", pads=[1, 1, 1, 1], group=4))
    add_bn("block.bn", "c2", "b2", 8)
    inits += [_w(rng, "t1.w", 8, 6, 2, 2), _w(rng, "t1.b", 6)]
    nodes.append(helper.make_node("ConvTranspose", ["b2", "t1.w", "t1.b"], ["t1"], name="up/ConvTranspose", strides=[2, 2]))
    add_bn("up.bn", "t1", "b3", 6)
    inits.append(_w(rng, "t2.w", 6, 2, 3, 3))
    nodes.append(helper.make_node("ConvTranspose", ["b3", "t2.w"], ["t2"], name="up2/ConvTranspose", pads=[1, 1, 1, 1], group=3))
    add_bn("up2.bn", "t2", "b4", 6)
    nodes.append(helper.make_node("Sigmoid", ["b4"], ["s4"], name="act/Sigmoid"))
    add_bn("lone.bn", "s4", "b5", 6)  # stand-alone BN (no producer to fold into)
    nodes.append(helper.make_node("GlobalAveragePool", ["b5"], ["gap"], name="pool/GlobalAveragePool"))
    inits.append(numpy_helper.from_array(np.array([0, -1], np.int64), "flat_shape"))
    nodes.append(helper.make_node("Reshape", ["gap", "flat_shape"], ["flat"], name="flatten/Reshape"))
    inits += [_w(rng, "g1.w", 10, 6), _w(rng, "g1.c", 10)]
    nodes.append(helper.make_node("Gemm", ["flat", "g1.w", "g1.c"], ["g1"], name="fc1/Gemm", transB=1, alpha=0.7, beta=1.3))
    add_bn("fc1.bn", "g1", "b6", 10)
    inits.append(_w(rng, "g2.w", 10, 7))
    nodes.append(helper.make_node("Gemm", ["b6", "g2.w"], ["g2"], name="fc2/Gemm"))
    add_bn("fc2.bn", "g2", "b7", 7)
    inits.append(_w(rng, "m1.w", 7, 5))
    nodes.append(helper.make_node("MatMul", ["b7", "m1.w"], ["m1"], name="head/MatMul"))
    add_bn("head.bn", "m1", "logits", 5)
    if unnamed:
        for n in nodes:
            n.name = ""
    graph = helper.make_graph(
        nodes, "other_exporter",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["N", 3, "H", "W"])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", 5])],
        initializer=inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)], producer_name="hand-built")
    model.ir_version = 7 if opset < 15 else 8
    onnx.checker.check_model(model)
    return model


def constant_node_bn_model(seed: int = 0) -> onnx.ModelProto:
    """Old-exporter style: BN parameters come from Constant nodes, not initializers; rank-3 input."""
    rng = np.random.default_rng(seed)
    nodes = []
    for t in bn_params("seq.bn", 4, rng):
        nodes.append(helper.make_node("Constant", [], [t.name], value=t))
    nodes.append(bn_node("seq.bn", "x", "y"))
    graph = helper.make_graph(
        nodes, "constant_params",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 4, 16])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 4, 16])],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 11)])
    model.ir_version = 6
    return model
