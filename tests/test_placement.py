"""Placement rules (vqz_edge.policy.placement): which inputs of an INT8 layer get Q/DQ, on small graphs built by hand
whose answer is known, and the Q/DQ writer following them."""

from __future__ import annotations

from typing import Any

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from vqz_edge import ort as ortu
from vqz_edge.calib.qdq import insert_qdq
from vqz_edge.errors import CalibrationError
from vqz_edge.policy.placement import PlacementOptions, place
from vqz_edge.policy.resolve import resolve_plan


def _init(rng: np.random.Generator, name: str, *shape: int) -> onnx.TensorProto:
    return numpy_helper.from_array((rng.standard_normal(shape) * 0.2).astype(np.float32), name)


def _model(nodes: list[onnx.NodeProto], inits: list[onnx.TensorProto], x_shape: list[object],
           y_shape: list[object]) -> onnx.ModelProto:
    inputs = [helper.make_tensor_value_info("x", TensorProto.FLOAT, x_shape)]
    graph = helper.make_graph(nodes, "g", inputs, [helper.make_tensor_value_info("y", TensorProto.FLOAT, y_shape)],
                              inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    onnx.checker.check_model(model)
    return model


def resnet_block() -> onnx.ModelProto:
    """stem Conv+Relu -> h; main branch Conv+Relu+Conv (long); shortcut Conv (short, a downsample); Add; then a
    MobileNet-style identity block: Conv+Relu+Conv added to its own input."""
    rng = np.random.default_rng(0)
    n = helper.make_node
    nodes = [
        n("Conv", ["x", "w0"], ["s"], name="stem", pads=[1, 1, 1, 1]), n("Relu", ["s"], ["h"], name="stem_relu"),
        n("Conv", ["h", "w1"], ["a"], name="main1", pads=[1, 1, 1, 1]), n("Relu", ["a"], ["ar"], name="main1_relu"),
        n("Conv", ["ar", "w2"], ["b"], name="main2", pads=[1, 1, 1, 1]),
        n("Conv", ["h", "wd"], ["d"], name="down"),
        n("Add", ["d", "b"], ["r"], name="res_add"),  # input 1 (main branch) is the one fused into main2
        n("Conv", ["r", "w3"], ["e"], name="expand"), n("Relu", ["e"], ["er"], name="expand_relu"),
        n("Conv", ["er", "w4"], ["p"], name="project"),
        n("Add", ["r", "p"], ["y"], name="id_add"),  # identity skip r, fused project branch p
    ]
    inits = [_init(rng, "w0", 4, 3, 3, 3), _init(rng, "w1", 4, 4, 3, 3), _init(rng, "w2", 4, 4, 3, 3),
             _init(rng, "wd", 4, 4, 1, 1), _init(rng, "w3", 8, 4, 1, 1), _init(rng, "w4", 4, 8, 1, 1)]
    return _model(nodes, inits, ["N", 3, 8, 8], ["N", 4, 8, 8])


def transformer_block() -> onnx.ModelProto:
    """x -> LN -> Q/K projections -> Q.K^T -> Softmax -> .V -> out proj (+bias) -> + x (residual stream);
    then a pooled (N, 1, D) head: a GEMV."""
    rng = np.random.default_rng(1)
    n = helper.make_node
    nodes = [
        n("LayerNormalization", ["x", "g", "be"], ["ln"], name="ln", axis=-1),
        n("MatMul", ["ln", "wq"], ["q"], name="q_proj"), n("MatMul", ["ln", "wk"], ["k"], name="k_proj"),
        n("MatMul", ["ln", "wv"], ["v"], name="v_proj"),
        n("Transpose", ["k"], ["kt"], name="kt", perm=[0, 2, 1]),
        n("MatMul", ["q", "kt"], ["s"], name="qk"), n("Softmax", ["s"], ["p"], name="softmax", axis=-1),
        n("MatMul", ["p", "v"], ["o"], name="pv"),
        n("MatMul", ["o", "wo"], ["o1"], name="out_proj"), n("Add", ["bo", "o1"], ["o2"], name="out_bias"),
        n("Add", ["x", "o2"], ["r"], name="residual"),
        n("ReduceMean", ["r", "axes"], ["pooled"], name="pool", keepdims=1),
        n("MatMul", ["pooled", "wh"], ["y"], name="head"),
    ]
    inits = [numpy_helper.from_array(np.ones(8, np.float32), "g"), numpy_helper.from_array(np.zeros(8, np.float32), "be"),
             _init(rng, "wq", 8, 8), _init(rng, "wk", 8, 8), _init(rng, "wv", 8, 8), _init(rng, "wo", 8, 8),
             _init(rng, "bo", 8), _init(rng, "wh", 8, 3), numpy_helper.from_array(np.array([1], np.int64), "axes")]
    return _model(nodes, inits, ["N", 5, 8], ["N", 1, 3])


def _qdq_inputs(model: onnx.ModelProto, node: str) -> list[bool]:
    """For each input of ``node`` in a Q/DQ model: does it come from a DequantizeLinear?"""
    producer = {o: p for p in model.graph.node for o in p.output}
    target = next(x for x in model.graph.node if x.name == node)
    return [producer.get(i) is not None and producer[i].op_type == "DequantizeLinear" for i in target.input]


def test_conv_residual_add_quantizes_the_skip_input_only() -> None:
    model = resnet_block()
    p = place(model)
    # ResNet downsample: both inputs come from a Conv; the longer path from their common ancestor (main2) is fused
    assert p.sites["res_add"].activations == (0,) and p.sites["res_add"].pattern == "residual_add"
    # MobileNet identity block: r is the skip, the project Conv's output p is fused
    assert p.sites["id_add"].activations == (0,)
    assert p.sites["main2"].weights == ((1, 0),) and p.sites["stem"].activations == (0,)
    plan = resolve_plan(model, model_name="m", onnx_sha256="x", preset="none").plan
    amax = {t: 2.0 for t in ("x", "h", "ar", "d", "b", "r", "er", "p")}
    q, report = insert_qdq(model, amax, plan)
    assert _qdq_inputs(q, "id_add") == [True, False] and _qdq_inputs(q, "res_add") == [True, False]
    assert report.activations == 6  # x, h (stem -> main1, down), ar, d (the shortcut), r (expand, id_add), er
    seed, _ = insert_qdq(model, amax, resolve_plan(model, model_name="m", onnx_sha256="x", preset="none",
                                                   placement=place(model, PlacementOptions("both"))).plan,
                         placement=place(model, PlacementOptions("both")))
    assert _qdq_inputs(seed, "id_add") == [True, True]  # the seed's placement, for comparison


def test_transformer_residual_stream_stays_float_attention_and_gemv() -> None:
    model = transformer_block()
    p = place(model)
    assert "residual" not in p.sites and p.excluded["residual"][0] == "float_add"
    assert p.sites["qk"].pattern == "attention" and p.sites["qk"].activations == (0, 1)
    assert p.sites["pv"].activations == (0, 1)
    assert p.sites["q_proj"].pattern == "linear" and p.sites["q_proj"].weights == ((1, 1),)
    assert p.excluded["head"][0] == "gemv"  # (N, 1, 8) x (8, 3): one row per sample
    assert "out_bias" not in p.sites and "out_bias" not in p.excluded  # a bias Add is not a candidate at all
    plan = resolve_plan(model, model_name="t", onnx_sha256="x", preset="none").plan
    residual = next(x for x in plan.layers if x.name == "residual")
    assert residual.precision == "fp16" and not residual.quantizable and "float_add" in residual.rule
    amax = {t: 3.0 for t in ("x", "ln", "q", "k", "kt", "v", "p", "o", "o2", "pooled")}
    q, _ = insert_qdq(model, amax, plan)
    assert _qdq_inputs(q, "residual") == [False, False]
    assert _qdq_inputs(q, "qk") == [True, True] and _qdq_inputs(q, "pv") == [True, True]
    assert _qdq_inputs(q, "head") == [False, False]
    x = np.random.default_rng(2).standard_normal((2, 5, 8)).astype(np.float32)
    ref = ortu.session(model).run(None, {"x": x})[0]
    got = ortu.session(q).run(None, {"x": x})[0]
    assert ref.shape == got.shape and np.isfinite(got).all() and not np.array_equal(ref, got)
    # without the attention rule, the activation x activation MatMuls stay float
    no_attn = place(model, PlacementOptions(attention=False))
    assert "qk" not in no_attn.sites and no_attn.excluded["qk"][0] == "attention"
    assert "head" in place(model, PlacementOptions(gemv="int8")).sites


def test_a_plan_from_another_placement_is_refused_by_name() -> None:
    model = transformer_block()
    seed_plan = resolve_plan(model, model_name="t", onnx_sha256="x", preset="none",
                             placement=place(model, PlacementOptions("both"))).plan
    assert next(x for x in seed_plan.layers if x.name == "residual").precision == "int8"
    with pytest.raises(CalibrationError, match="'residual'"):
        insert_qdq(model, {t: 1.0 for t in ("x", "o2", "ln", "q", "kt", "p", "v", "o", "pooled")}, seed_plan)


def test_options_are_validated() -> None:
    with pytest.raises(ValueError, match="residual_add"):
        PlacementOptions(residual_add="skip")
    with pytest.raises(ValueError, match="gemv"):
        PlacementOptions(gemv="fp8")


def test_placement_on_mobilenet_v2(mobilenet_onnx: object) -> None:
    """The demo MobileNetV2: its 10 residual Adds each fuse the project Conv and quantize the skip input; the
    rank-2 classifier Gemm stays a linear site (the cnn preset pins it FP32)."""
    model = onnx.load(str(mobilenet_onnx))
    p = place(model)
    counts = p.counts()
    assert counts == {"conv": 52, "linear": 1, "residual_add": 10}, counts
    producer = {o: n for n in model.graph.node for o in n.output}
    for site in (s for s in p.sites.values() if s.pattern == "residual_add"):
        node = next(n for n in model.graph.node if n.name == site.node)
        fused = node.input[1 - site.activations[0]]
        assert producer[fused].op_type == "Conv" and "/conv/conv.2/" in producer[fused].name, producer[fused].name


def _swept(preset: str) -> tuple[Any, Any, Any, Any, Any]:
    """The transformer block, its plan under ``preset``, an evaluator on 8 seeded samples and the layer sweep."""
    from vqz_edge.sensitivity.evaluator import Evaluator
    from vqz_edge.sensitivity.sweep import SweepOptions, sweep

    model = transformer_block()
    base = resolve_plan(model, model_name="t", onnx_sha256="x", preset=preset).plan
    rng = np.random.default_rng(3)
    batches = [rng.standard_normal((4, 5, 8)).astype(np.float32) * 2 for _ in range(2)]
    amax = {t: 2.5 for t in ("x", "ln", "q", "kt", "v", "p", "o", "o2", "pooled")}
    ev = Evaluator(model, amax, batches)
    ranked, all_int8 = sweep(model, ev, base, SweepOptions())
    return model, base, ev, ranked, all_int8


def _auto(target: float) -> tuple[object, object]:
    from vqz_edge.sensitivity.sweep import TargetOptions, auto_plan, pinned_layers

    model, base, ev, ranked, all_int8 = _swept("vit")
    plan = auto_plan(model, ev, base, ranked, all_int8, "cosine", TargetOptions(target, release_pins=True),
                     preset="vit")
    return plan, pinned_layers(base)


def test_release_pins_frees_what_the_target_does_not_need() -> None:
    plan, pinned = _auto(-1.0)  # any cosine meets it: every preset pin goes back to INT8
    assert pinned and sorted(plan.released) == sorted(pinned)  # type: ignore[attr-defined]
    resolved = {x.name: x.precision for x in plan.plan.layers}  # type: ignore[attr-defined]
    assert all(resolved[n] == "int8" for n in pinned)
    assert plan.share["above_int8"] == ["head"]  # type: ignore[attr-defined]  # the GEMV head has no INT8 site
    # near-lossless: the search keeps a layer FP16 to meet it; releasing the pins would break it again -> reverted
    strict, _ = _auto(0.9999995)
    assert strict.met and strict.meets(strict.achieved) and strict.released == []  # type: ignore[attr-defined]
    tried = [s for s in strict.steps if s["phase"].startswith("release")]  # type: ignore[attr-defined]
    assert tried and not any(s["met"] for s in tried)


def test_pin_ranking_runs_on_the_samples_where_the_models_disagree_most() -> None:
    """NNCF-style ranking subset: with 40 sweep samples the pin groups are ranked on the 16 whose output departs
    most from FP32 under the searched plan; the subset evaluator gives exactly what an evaluator built on those
    samples alone gives (the FP32 reference sliced, not recomputed)."""
    from vqz_edge.sensitivity.evaluator import Evaluator
    from vqz_edge.sensitivity.sweep import (
        SweepOptions,
        TargetOptions,
        auto_plan,
        disagreement_subset,
        plan_with,
        ranking_size,
        sweep,
    )

    model = transformer_block()
    base = resolve_plan(model, model_name="t", onnx_sha256="x", preset="vit").plan
    rng = np.random.default_rng(5)
    batches = [rng.standard_normal((8, 5, 8)).astype(np.float32) * rng.uniform(0.5, 3.0) for _ in range(5)]
    amax = {t: 2.5 for t in ("x", "ln", "q", "kt", "v", "p", "o", "o2", "pooled")}
    ev = Evaluator(model, amax, batches)
    assert ev.samples == 40 and ranking_size(40) == 16 and ranking_size(8) == 8 and ranking_size(400) == 100
    all_int8_plan = plan_with(base, {x.name for x in base.layers if x.quantizable}, {x.name for x in base.layers},
                              "test")
    cos = ev.per_sample_cosine(all_int8_plan)
    assert cos.shape == (40,) and np.isfinite(cos).all() and cos.std() > 0
    subset = disagreement_subset(cos, 16)
    assert len(subset) == 16 and max(cos[subset]) <= min(np.delete(cos, subset))  # the 16 lowest, nothing lower left
    alone = Evaluator(model, amax, [np.concatenate(batches)[subset]])
    a, b = ev.subset(subset).evaluate(all_int8_plan), alone.evaluate(all_int8_plan)
    assert a.samples == b.samples == 16 and a.cosine == pytest.approx(b.cosine, abs=1e-6)
    assert a.cosine < float(cos.mean())  # the subset is the hard part of the data
    assert a.sqnr_db == pytest.approx(b.sqnr_db, abs=1e-4)

    ranked, all_int8 = sweep(model, ev, base, SweepOptions())
    plan = auto_plan(model, ev, base, ranked, all_int8, "cosine", TargetOptions(-1.0, release_pins=True), preset="vit")
    pins = plan.pins  # type: ignore[attr-defined]
    assert pins["ranking_samples"] == 16 and len(pins["ranking_subset"]) == 16
    rank_steps = [s for s in plan.steps if s["phase"] == "release-rank"]  # type: ignore[attr-defined]
    assert rank_steps and all(s["samples"] == 16 for s in rank_steps)
    release_steps = [s for s in plan.steps if s["phase"] == "release"]  # type: ignore[attr-defined]
    assert release_steps  # each release is checked on all 40 samples (the evaluator's own data)


def test_margin_makes_the_search_aim_above_the_goal() -> None:
    """--margin: the search must reach goal + margin on the sweep samples; the plan still names (and is verified
    against) the goal itself. With a goal all-INT8 already meets, no margin keeps nothing; a margin that lifts the aim
    above all-INT8 keeps units until the aim is reached."""
    from vqz_edge.sensitivity.sweep import TargetOptions, auto_plan

    model, base, ev, ranked, all_int8 = _swept("none")
    d = (1.0 - all_int8.cosine) / 3
    assert d > 0
    goal, margin = all_int8.cosine - d, 2 * d  # all-INT8 meets the goal; the aim lies between it and lossless
    plain = auto_plan(model, ev, base, ranked, all_int8, "cosine", TargetOptions(goal), preset="none")
    aimed = auto_plan(model, ev, base, ranked, all_int8, "cosine", TargetOptions(goal, margin=margin), preset="none")
    assert plain.met and plain.kept == []
    assert aimed.met and aimed.kept and aimed.achieved.cosine >= goal + margin
    assert aimed.options.target == goal and aimed.options.aim == pytest.approx(goal + margin)
    assert aimed.meets(aimed.achieved) and aimed.to_dict()["options"]["margin"] == margin
    with pytest.raises(ValueError, match="margin"):
        TargetOptions(0.9, margin=-0.01)


def test_constant_node_weights_are_found_on_either_matmul_operand() -> None:
    """place() takes only initializers for weights, on Conv input 1 and on either Gemm/MatMul operand: a Constant
    node in any of those positions is found (calibrate refuses it), an activation x activation MatMul is not."""
    from vqz_edge.errors import ModelLoadError
    from vqz_edge.policy.placement import constant_node_weights, require_initializer_weights

    w = numpy_helper.from_array(np.ones((8, 8), np.float32), "w")
    v = numpy_helper.from_array(np.ones((4, 4), np.float32), "v")
    graph = helper.make_graph(
        [helper.make_node("Constant", [], ["w"], name="cw", value=w),
         helper.make_node("Constant", [], ["v"], name="cv", value=v),
         helper.make_node("MatMul", ["x", "w"], ["a"], name="right_weight"),
         helper.make_node("MatMul", ["v", "a"], ["b"], name="left_weight"),
         helper.make_node("Transpose", ["b"], ["bt"], name="t"),
         helper.make_node("MatMul", ["b", "bt"], ["y"], name="attention")],
        "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [4, 8])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [4, 4])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    assert constant_node_weights(model) == ["right_weight", "left_weight"]
    with pytest.raises(ModelLoadError, match="2 layer.*right_weight, left_weight"):
        require_initializer_weights(model, "m.onnx")
