"""Sensitivity sweep, diagnostics and the automatic plan: MobileNetV2 (real weights, real photos) and the real
pretrained MiniLM (all-MiniLM-L6-v2) for a real softmax."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from tests.conftest import run_cli
from vqz_edge.calib.evaluate import evaluate
from vqz_edge.calib.histogram import AbsHistogram
from vqz_edge.calib.qdq import insert_qdq
from vqz_edge.data.source import open_data
from vqz_edge.errors import InputError
from vqz_edge.onnx_io import graph_inputs
from vqz_edge.policy.resolve import resolve_plan
from vqz_edge.sensitivity import (
    Evaluator,
    SweepOptions,
    TargetOptions,
    analyze,
    auto_plan,
    block_of,
    build_units,
    diagnose,
    layer_costs,
    load_calibration,
    plan_with,
    sweep,
    twin_peak,
)
from vqz_edge.sensitivity.diagnostics import activation_flags, weight_flag
from vqz_edge.sensitivity.stats import amax_from_histograms, collect_feeds
from vqz_edge.spec import load_spec

# ---- compute costs, units ---------------------------------------------------------------------------------------


def _cost_graph() -> onnx.ModelProto:
    rng = np.random.default_rng(0)

    def w(name: str, *shape: int) -> onnx.TensorProto:
        return numpy_helper.from_array(rng.standard_normal(shape).astype(np.float32), name)

    nodes = [
        helper.make_node("Conv", ["x", "c.w", "c.b"], ["c"], name="/c/Conv", pads=[1, 1, 1, 1], strides=[2, 2]),
        helper.make_node("Conv", ["c", "dw.w"], ["dw"], name="/dw/Conv", pads=[1, 1, 1, 1], group=8),
        helper.make_node("ConvTranspose", ["dw", "t.w"], ["t"], name="/t/ConvTranspose", strides=[2, 2]),
        helper.make_node("Reshape", ["t", "shape"], ["seq"], name="/Reshape"),
        helper.make_node("MatMul", ["seq", "m.w"], ["mm"], name="/m/MatMul"),
        helper.make_node("ReduceMean", ["mm"], ["pooled"], name="/ReduceMean", axes=[1], keepdims=0),
        helper.make_node("Gemm", ["pooled", "g.w", "g.b"], ["y"], name="/g/Gemm", transB=1),
    ]
    inits = [w("c.w", 8, 3, 3, 3), w("c.b", 8), w("dw.w", 8, 1, 3, 3), w("t.w", 8, 4, 2, 2), w("m.w", 16, 6),
             w("g.w", 5, 6), w("g.b", 5), numpy_helper.from_array(np.array([0, 64, 16], np.int64), "shape")]
    g = helper.make_graph(nodes, "costs", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 3, 16, 16])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 5])], initializer=inits)
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", 13)])


def test_layer_costs_by_hand() -> None:
    costs = layer_costs(_cost_graph())
    assert costs["/c/Conv"].macs == 8 * 8 * 8 * 3 * 9  # out 8x8x8, 3 in-channels x 3x3 per output
    assert costs["/c/Conv"].params == 8 * 3 * 9 + 8
    assert costs["/dw/Conv"].macs == 8 * 8 * 8 * 1 * 9  # depthwise: 1 in-channel per output
    assert costs["/t/ConvTranspose"].macs == (8 * 8 * 8) * 4 * 4  # every input element x out-ch x 2x2
    assert costs["/m/MatMul"].macs == 64 * 6 * 16  # (64x16) @ (16x6)
    assert costs["/g/Gemm"].macs == 5 * 6 and costs["/g/Gemm"].params == 35


def test_mobilenet_macs_match_the_published_300m(mobilenet_onnx: Path, caplog: pytest.LogCaptureFixture) -> None:
    costs = layer_costs(onnx.load(str(mobilenet_onnx)))
    total = sum(c.macs for c in costs.values())
    assert 295e6 < total < 306e6, f"MobileNetV2 is ~300M MACs (Sandler et al. 2018), got {total / 1e6:.1f}M"
    assert 3.4e6 < sum(c.params for c in costs.values()) < 3.6e6  # 3.5M parameters
    assert "MACs unknown" not in caplog.text


def test_block_of() -> None:
    assert block_of("/features/features.3/conv/conv.0/conv.0.0/Conv") == "features.3"
    assert block_of("/classifier/classifier.1/Gemm") == "classifier.1"
    assert block_of("/vision_model/encoder/layers.0/self_attn/q_proj/MatMul") == "vision_model.encoder.layers.0"
    assert block_of("/bert/encoder/layer.2/attention/self/query/MatMul") == "bert.encoder.layer.2"
    assert block_of("/vit/embeddings/patch_embeddings/projection/Conv") == "vit.embeddings"
    assert block_of("/features/features.3/conv/conv.0/conv.0.0/Conv", depth=1) == "features"
    assert block_of("Conv_12") == "<root>"


def test_units_name_exactly_what_insert_qdq_quantizes(mobilenet_onnx: Path) -> None:
    model = onnx.load(str(mobilenet_onnx))
    base = resolve_plan(model, model_name="m", onnx_sha256="x").plan
    units = build_units(model, base, "block")
    assert [u.name for u in units] == [f"features.{i}" for i in range(19)] + ["classifier.1"]
    cands = {n for u in units for n in u.nodes}
    amax = {t: 1.0 for u in units for t in u.activations}
    for u in (units[3], units[-1]):  # a residual block (Add) and the classifier
        q, _ = insert_qdq(model, amax, plan_with(base, set(u.nodes), cands, "t"))
        quantized = {n.input[0] for n in q.graph.node if n.op_type == "QuantizeLinear"}
        assert quantized == set(u.activations) | set(u.weights), u.name


# ---- evaluator --------------------------------------------------------------------------------------------------


def test_evaluator_metrics_equal_vqz_evaluate(mobilenet_onnx: Path, mobilenet_calibrated: Path) -> None:
    model = onnx.load(str(mobilenet_onnx))
    cal = load_calibration(mobilenet_calibrated)
    batches = list(open_data("demo", graph_inputs(model)[0], count=12, split="evaluation").batches(6))
    base = resolve_plan(model, model_name="m", onnx_sha256="x").plan
    ev = Evaluator(model, cal.amax, batches, sources=[f"s{i % 3}" for i in range(12)])
    m = ev.evaluate(base)
    ref = evaluate(model, ev.qdq_model(base), batches, total_batches=2, data_description="t").primary
    assert m.samples == 12 == ref["samples"]
    assert m.cosine == pytest.approx(ref["mean_cosine"], abs=1e-9)
    assert m.agreement == pytest.approx(ref["top1_agreement"], abs=1e-9)
    assert m.sqnr_db == pytest.approx(ref["sqnr_db"], abs=1e-3)
    assert sorted(m.per_source) == ["s0", "s1", "s2"] and all(v["samples"] == 4 for v in m.per_source.values())
    assert np.mean([v["cosine"] for v in m.per_source.values()]) == pytest.approx(m.cosine)
    assert m.cosine < 0.999, "the all-INT8 model must differ from FP32"


# ---- diagnostics on known distributions --------------------------------------------------------------------------


def _hist(values: np.ndarray) -> AbsHistogram:
    h = AbsHistogram()
    h.update(values.astype(np.float32))
    return h


def test_twin_peak_on_known_distributions() -> None:
    rng = np.random.default_rng(0)
    n = 400_000
    # post-softmax-like: most mass near 0, 1% in a bump near the top
    softmaxish = np.concatenate([rng.exponential(0.01, n), rng.uniform(0.9, 1.0, n // 100)])
    assert twin_peak(_hist(softmaxish)).twin
    # ReLU6-like saturation: mass near zero plus a spike exactly at the top
    relu6 = np.concatenate([np.minimum(rng.exponential(0.5, n), 6.0), np.full(n // 500, 6.0)])
    assert twin_peak(_hist(relu6)).twin
    assert not twin_peak(_hist(np.abs(rng.standard_normal(n)))).twin, "a half-Gaussian decays: no second peak"
    assert not twin_peak(_hist(rng.uniform(-1, 1, n))).twin, "uniform: not concentrated near zero"
    # a long tail with a handful of extreme values is an outlier problem, not a second mode
    tail = np.concatenate([rng.exponential(0.3, n), np.full(5, 30.0)])
    tp = twin_peak(_hist(tail))
    assert not tp.twin and tp.peak_share < 1e-4
    flags = activation_flags("t", _hist(tail), amax=3.0)
    assert [f.kind for f in flags] == ["outliers"] and "99.9th percentile" in flags[0].detail


def test_twin_peak_flag_says_whether_the_threshold_clips_the_peak() -> None:
    rng = np.random.default_rng(1)
    x = np.concatenate([rng.exponential(0.05, 200_000), rng.uniform(0.85, 1.0, 2_000)])
    clipped = activation_flags("p", _hist(x), amax=0.5)
    assert clipped[0].kind == "twin_peak" and "clips that peak" in clipped[0].detail
    kept = activation_flags("p", _hist(x), amax=1.0)
    assert kept[0].kind == "twin_peak" and "levels" in kept[0].detail and "FP16" in kept[0].suggestion


def test_channel_spread_flags_depthwise_weights() -> None:
    node = helper.make_node("Conv", ["x", "w"], ["y"], name="/dw/Conv", group=4)
    w = np.ones((4, 1, 3, 3), np.float32)
    w[2] *= 1e-3  # one channel 1000x weaker (what BN folding does to a nearly dead channel)
    flag = weight_flag(node, "w", w, 1)
    assert flag is not None and flag.kind == "channel_spread" and flag.value == pytest.approx(1000, rel=1e-3)
    assert "depthwise" in flag.detail and "per channel" in flag.suggestion
    assert weight_flag(node, "w", np.ones((4, 1, 3, 3), np.float32), 1) is None


def test_diagnose_mobilenet(mobilenet_onnx: Path, mobilenet_calibrated: Path) -> None:
    model = onnx.load(str(mobilenet_onnx))
    cal = load_calibration(mobilenet_calibrated)
    flags = diagnose(model, cal.histograms, cal.amax)
    spread = {f.tensor for f in flags if f.kind == "channel_spread"}
    assert "features.1.conv.0.0.weight" in spread, "the first depthwise conv's folded weights span >1000x"
    twin = {f.tensor for f in flags if f.kind == "twin_peak"}
    # the ReLU6 output that saturates at 6 (features.1's depthwise output) is twin-peaked
    assert "/features/features.1/conv/conv.0/conv.0.2/Clip_output_0" in twin
    assert all(f.suggestion for f in flags)


# ---- the real MiniLM: twin peaks on a real softmax, sweep and automatic plan --------------------------------------


@pytest.fixture(scope="module")
def minilm(tmp_path_factory: pytest.TempPathFactory) -> tuple[onnx.ModelProto, list[dict[str, np.ndarray]]]:
    from vqz_edge.export import ExportOptions, export_model
    from vqz_edge.export.hf import sentences, tokenize

    out = tmp_path_factory.mktemp("minilm") / "minilm.onnx"
    export_model("vqz_edge.export.hf:minilm", out, ExportOptions(verify_samples=4))
    feeds = tokenize(sentences())
    batches = [{k: v[i : i + 16] for k, v in feeds.items()} for i in range(0, 48, 16)]
    return onnx.load(str(out)), batches


def test_twin_peak_on_a_real_softmax(minilm: tuple[onnx.ModelProto, list[dict[str, np.ndarray]]]) -> None:
    model, batches = minilm
    softmax = [n.output[0] for n in model.graph.node if n.op_type == "Softmax"]
    gelu = [n.output[0] for n in model.graph.node if n.op_type == "Mul" and n.name.endswith("intermediate_act_fn/Mul_1")]
    assert len(softmax) == 6 and len(gelu) == 6
    hists = collect_feeds(model, batches, softmax + gelu)
    twins = [t for t in softmax if twin_peak(hists[t]).twin]
    # post-softmax attention probabilities: mass at ~0 and a second population near 1 (tokens attending to one key)
    assert len(twins) >= 3, {t: twin_peak(hists[t]) for t in softmax}
    assert all(hists[t].max_value <= 1.0 and hists[t].min_value >= 0.0 for t in softmax)
    # GELU outputs of the same model: long-tailed with rare large values -> outliers, not a second mode
    assert not any(twin_peak(hists[t]).twin for t in gelu)
    assert any(f.kind == "outliers" for t in gelu for f in activation_flags(t, hists[t], None))


def test_minilm_sweep_and_automatic_plan_meets_its_target(
    minilm: tuple[onnx.ModelProto, list[dict[str, np.ndarray]]],
) -> None:
    model, batches = minilm
    hists = collect_feeds(model, batches)
    amax = amax_from_histograms(hists, "entropy")
    base = resolve_plan(model, model_name="minilm", onnx_sha256="x", preset="none").plan
    ev = Evaluator(model, amax, batches)
    ranked, all_int8 = sweep(model, ev, base, SweepOptions(granularity="block"))
    assert {f"bert.encoder.layer.{i}" for i in range(6)} <= {r.unit.name for r in ranked}
    assert all(a.score >= b.score for a, b in zip(ranked, ranked[1:]))
    assert all(math.isfinite(r.score) and r.score >= 0 for r in ranked)
    assert all_int8.cosine < 0.999
    target = round(1 - (1 - all_int8.cosine) / 3, 4)  # remove two thirds of the all-INT8 loss
    plan = auto_plan(model, ev, base, ranked, all_int8, "cosine", TargetOptions(target), preset="none")
    assert plan.met and plan.achieved.cosine >= target
    assert 0 < len(plan.kept) < len(ranked)
    # the plan that was resolved from the emitted rules is the one that was measured
    again = ev.evaluate(plan.plan)
    assert again.cosine == pytest.approx(plan.achieved.cosine, abs=1e-9)
    # 1-minimal: dropping any single kept unit misses the target
    cands = {n for r in ranked for n in r.unit.nodes}
    for unit in plan.kept:
        high = {n for r in ranked if r.unit.name in plan.kept and r.unit.name != unit for n in r.unit.nodes}
        assert ev.evaluate(plan_with(base, cands - high, cands, "t")).cosine < target, unit


# ---- the CLI on the demo MobileNetV2 ----------------------------------------------------------------------------


@pytest.mark.slow
def test_cli_sensitivity_block_sweep_with_target(tmp_path: Path, mobilenet_onnx: Path, mobilenet_calibrated: Path) -> None:
    out, rep = tmp_path / "out", tmp_path / "report"
    r = run_cli("sensitivity", str(mobilenet_onnx), "--calibration", str(mobilenet_calibrated), "--data", "demo",
                "--granularity", "block", "--num-images", "24", "--verify-images", "24", "--goal", "0.99",
                "-o", str(out), "--report", str(rep), "--json")
    assert r.returncode == 0, r.stderr
    doc = json.loads(r.stdout)
    units = doc["units"]
    assert len(units) == 20 and [u["rank"] for u in units] == list(range(1, 21))
    assert all(a["score"] >= b["score"] for a, b in zip(units, units[1:]))
    auto = doc["auto_plan"]
    assert doc["all_int8"]["cosine"] < 0.99, "the target must not be met by the all-INT8 model already"
    assert auto["met_on_sweep_data"] and auto["achieved"]["cosine"] >= 0.99
    assert auto["verification"]["samples"] == 24 and "disjoint" in auto["verification"]["data"]
    share = auto["share_above_int8"]
    assert share["conv_gemm_layers"] == 53 and 0 < share["macs_share"] < 1
    # the rules snippet is a valid [precision] table and resolves to exactly the written plan
    spec_path = tmp_path / "spec.toml"
    spec_path.write_text('version = 1\n[model]\nname = "m"\nsource = "mobilenet_v2"\n'
                         '[[inputs]]\nname = "input"\nshape = [1, 3, 224, 224]\n\n'
                         + (out / "precision_rules.toml").read_text())
    spec = load_spec(spec_path)
    assert all(rule.precision == "fp16" and rule.node for rule in spec.precision.rules)
    model = onnx.load(str(mobilenet_onnx))
    plan = json.loads((out / "plan.json").read_text())
    again = resolve_plan(model, model_name=plan["model"], onnx_sha256=plan["onnx_sha256"],
                         rules=spec.precision.rules, preset=spec.precision.preset).plan
    assert again.to_dict() == plan
    kept = {layer["name"] for layer in plan["layers"] if layer["quantizable"] and layer["precision"] != "int8"}
    assert kept == set(share["above_int8"]) | {
        x["name"] for x in plan["layers"] if x["op_type"] == "Add" and x["precision"] != "int8"}
    # the written Q/DQ model is that plan: no Q/DQ in front of the kept layers
    q = onnx.load(str(out / "model.qdq.onnx"))
    producers = {o: n for n in q.graph.node for o in n.output}
    for n in q.graph.node:
        if n.name in kept and n.op_type == "Conv":
            assert producers[n.input[0]].op_type != "DequantizeLinear", n.name
    for name in ("sensitivity.png", "histograms.png", "precision_map.png", "report.html"):
        assert (rep / name).stat().st_size > 1000, name
    assert all((rep / n).stat().st_size < 200_000 for n in ("sensitivity.png", "histograms.png", "precision_map.png"))


def test_calibration_of_another_model_is_refused(tmp_path: Path, mobilenet_calibrated: Path) -> None:
    from tests.test_calibrate import residual_model

    onnx.save(residual_model(), str(tmp_path / "other.onnx"))
    with pytest.raises(InputError, match="made for a different model"):
        analyze(tmp_path / "other.onnx", mobilenet_calibrated, "demo", num_images=4)
    with pytest.raises(InputError, match="has no summary.json"):
        analyze(tmp_path / "other.onnx", tmp_path, "demo", num_images=4)
    r = run_cli("sensitivity", str(tmp_path / "other.onnx"), "--calibration", str(mobilenet_calibrated),
                "--data", "demo", "--num-images", "4")
    assert r.returncode == 2 and "different model" in r.stderr


def test_threshold_refinement_never_worsens_the_calibration_loss(mobilenet_onnx: Path, mobilenet_calibrated: Path) -> None:
    from vqz_edge.sensitivity import refine_thresholds
    from vqz_edge.sensitivity.sweep import loss

    model = onnx.load(str(mobilenet_onnx))
    cal = load_calibration(mobilenet_calibrated)
    base = resolve_plan(model, model_name="m", onnx_sha256="x").plan
    units = build_units(model, base)[:3]
    batches = list(open_data("demo", graph_inputs(model)[0], count=8, split="calibration").batches(8))
    ev = Evaluator(model, cal.amax, batches)
    amax, changes = refine_thresholds(model, cal.amax, cal.histograms, base, units, ev)
    touched = {t for u in units for t in u.activations}
    assert {k for k in amax if amax[k] != cal.amax[k]} <= touched
    for c in changes:
        assert c.tensor in touched and c.loss_after < c.loss_before and c.method != "calibrated"
        # the recorded loss is what the refined threshold gives with only its consumers in INT8
        ev.amax = dict(amax)
        unit = next(u for u in units if c.tensor in u.activations)
        cands = {n for u in build_units(model, base) for n in u.nodes}
        assert loss("cosine", ev.evaluate(plan_with(base, set(unit.nodes), cands, "t"))) == pytest.approx(c.loss_after)


def test_rechosen_thresholds_are_written_as_a_cache(tmp_path: Path, mobilenet_onnx: Path, mobilenet_calibrated: Path) -> None:
    from vqz_edge.artifacts.calib_cache import read_cache
    from vqz_edge.calib.thresholds import compute_amax
    from vqz_edge.sensitivity import cache_version, write_outputs

    result, cal = analyze(mobilenet_onnx, mobilenet_calibrated, "demo", SweepOptions(granularity="block", block_depth=1),
                          num_images=4, method="mse")
    files = write_outputs(result, tmp_path, mobilenet_onnx, cache_version(cal))
    cache = read_cache(files["cache"])
    assert cache.version_code == 100300 and result.thresholds == "method mse"
    name = "/features/features.0/features.0.2/Clip_output_0"
    assert cache.amax()[name] == pytest.approx(compute_amax(cal.histograms[name], "mse"), rel=1e-6)
    assert [u.unit.name for u in result.units] == ["features", "classifier"]  # --block-depth 1
