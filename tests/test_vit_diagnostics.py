"""ViT diagnostics named by what the tensor is (post-softmax, GELU output) and GELU's range check, on a hand-built
attention + erf-GELU graph and real-valued distributions."""

from __future__ import annotations

import numpy as np
from onnx import TensorProto, helper, numpy_helper

from vqz_edge.calib.histogram import AbsHistogram
from vqz_edge.sensitivity.diagnostics import GELU_MIN, activation_flags, tensor_roles


def _graph() -> object:
    n = helper.make_node
    nodes = [
        n("MatMul", ["x", "wq"], ["s"], name="qk"), n("Softmax", ["s"], ["p"], name="softmax", axis=-1),
        n("Cast", ["p"], ["pc"], name="cast", to=TensorProto.FLOAT), n("MatMul", ["pc", "x"], ["o"], name="pv"),
        n("Div", ["o", "sqrt2"], ["d"], name="div"), n("Erf", ["d"], ["e"], name="erf"),
        n("Add", ["e", "one"], ["e1"], name="add1"), n("Mul", ["o", "e1"], ["m"], name="mul"),
        n("Mul", ["m", "half"], ["g"], name="mul_half"), n("MatMul", ["g", "w2"], ["y"], name="fc2"),
    ]
    c = numpy_helper.from_array
    inits = [c(np.eye(4, dtype=np.float32), "wq"), c(np.array(np.sqrt(2), np.float32), "sqrt2"),
             c(np.array(1, np.float32), "one"), c(np.array(0.5, np.float32), "half"), c(np.eye(4, dtype=np.float32), "w2")]
    g = helper.make_graph(nodes, "vit", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 4, 4])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 4, 4])], inits)
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])


def test_roles_follow_softmax_through_cast_and_find_the_erf_gelu() -> None:
    roles = tensor_roles(_graph())  # type: ignore[arg-type]
    assert roles["p"] == roles["pc"] == "post-softmax"
    assert roles["g"] == "GELU output" and "o" not in roles and "m" not in roles


def test_gelu_range_flag_and_named_flags() -> None:
    rng = np.random.default_rng(0)
    x = rng.standard_normal(200_000) * 2.0
    gelu = 0.5 * x * (1 + np.vectorize(__import__("math").erf)(x / np.sqrt(2)))
    assert gelu.min() > -GELU_MIN - 1e-3
    h = AbsHistogram()
    h.update(gelu.astype(np.float32))
    flags = activation_flags("g", h, float(np.abs(gelu).max()), ("fc2",), role="GELU output")
    kinds = {f.kind for f in flags}
    assert "gelu_range" in kinds and all(f.role == "GELU output" and f.detail.startswith("GELU output") for f in flags)
    levels = next(f.value for f in flags if f.kind == "gelu_range")
    assert levels == np.float64(127 * GELU_MIN / np.abs(gelu).max())
    # a small-range GELU (amax 1.0: 21 levels on the negative lobe) is not flagged; no role -> no GELU check at all
    assert not any(f.kind == "gelu_range" for f in activation_flags("g", h, 1.0, role="GELU output"))
    assert not any(f.kind == "gelu_range" for f in activation_flags("g", h, float(np.abs(gelu).max())))
    # post-softmax probabilities: most near zero, a population near 1 -> a twin peak, named post-softmax
    p = np.concatenate([rng.uniform(0, 0.02, 100_000), rng.uniform(0.9, 1.0, 2_000)])
    hp = AbsHistogram()
    hp.update(p.astype(np.float32))
    tw = [f for f in activation_flags("pc", hp, 0.5, role="post-softmax") if f.kind == "twin_peak"]
    assert tw and tw[0].detail.startswith("post-softmax: ") and tw[0].role == "post-softmax"
