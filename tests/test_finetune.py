"""Quantization-aware fine-tuning of the Q/DQ graph: the torch interpreter runs exactly what ONNX Runtime runs,
training lowers held-out error on real photos, the result is deterministic and its weights sit on the grid."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from tests.conftest import run_cli
from vqz_edge import ort as ortu
from vqz_edge.artifacts.plan import ResolvedPlan
from vqz_edge.calib.evaluate import row_cosine
from vqz_edge.calib.finetune import FinetuneOptions, _Interpreter, _rebatch, finetune, quant_points
from vqz_edge.calib.qdq import insert_qdq
from vqz_edge.data.images import Preprocessing, demo_crops
from vqz_edge.errors import CalibrationError
from vqz_edge.policy.resolve import resolve_plan
from vqz_edge.sensitivity import load_calibration
from vqz_edge.sensitivity.evaluator import Metrics, _Accumulator
from vqz_edge.sensitivity.run import domain_gap
from vqz_edge.spec import PrecisionRule

torch = pytest.importorskip("torch")

SIZE = 32


def _tiny_cnn(seed: int = 0) -> onnx.ModelProto:
    """Stem conv -> ReLU6 -> depthwise -> ReLU6 -> pointwise (+ residual Add) -> GAP -> Gemm, with output channels
    scaled over two decades so per-tensor activation ranges really lose information."""
    rng = np.random.default_rng(seed)

    def arr(name: str, a: np.ndarray) -> onnx.TensorProto:
        return numpy_helper.from_array(a.astype(np.float32), name)

    spread = np.logspace(-3, 0.5, 16)[rng.permutation(16)]
    inits = [
        arr("stem.w", rng.standard_normal((16, 3, 3, 3)) * 0.3 * spread[:, None, None, None]),
        arr("stem.b", rng.standard_normal(16) * 0.1),
        arr("dw.w", rng.standard_normal((16, 1, 3, 3)) * 0.5 * spread[::-1, None, None, None]),
        arr("dw.b", rng.standard_normal(16) * 0.1),
        arr("pw.w", rng.standard_normal((16, 16, 1, 1)) * 0.3),
        arr("pw.b", rng.standard_normal(16) * 0.1),
        arr("fc.w", rng.standard_normal((10, 16)) * 0.5),
        arr("fc.b", rng.standard_normal(10) * 0.1),
        arr("lo", np.array(0.0)), arr("hi", np.array(6.0)),
    ]
    nodes = [
        helper.make_node("Conv", ["input", "stem.w", "stem.b"], ["s"], name="/stem/Conv", pads=[1, 1, 1, 1], strides=[2, 2]),
        helper.make_node("Clip", ["s", "lo", "hi"], ["s6"], name="/stem/Clip"),
        helper.make_node("Conv", ["s6", "dw.w", "dw.b"], ["d"], name="/dw/Conv", pads=[1, 1, 1, 1], group=16),
        helper.make_node("Clip", ["d", "lo", "hi"], ["d6"], name="/dw/Clip"),
        helper.make_node("Conv", ["d6", "pw.w", "pw.b"], ["p"], name="/pw/Conv"),
        helper.make_node("Add", ["p", "s6"], ["r"], name="/res/Add"),
        helper.make_node("GlobalAveragePool", ["r"], ["g"], name="/GlobalAveragePool"),
        helper.make_node("Flatten", ["g"], ["f"], name="/Flatten", axis=1),
        helper.make_node("Gemm", ["f", "fc.w", "fc.b"], ["output"], name="/fc/Gemm", transB=1),
    ]
    graph = helper.make_graph(
        nodes, "tiny_cnn", [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["N", 3, SIZE, SIZE])],
        [helper.make_tensor_value_info("output", TensorProto.FLOAT, ["N", 10])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    onnx.checker.check_model(model)
    return model


def _crops(split: str, n: int) -> np.ndarray:
    return demo_crops(split, n, Preprocessing.for_input_shape((1, 3, SIZE, SIZE)))


def _all_int8(model: onnx.ModelProto) -> ResolvedPlan:
    return resolve_plan(model, model_name="tiny", onnx_sha256="0" * 64, preset="none").plan


def _amax(model: onnx.ModelProto, x: np.ndarray, plan: ResolvedPlan) -> dict[str, float]:
    """Max calibration (simple and deterministic) of the tensors the plan quantizes."""
    acts = quant_points(model, plan).tensors
    m = onnx.ModelProto()
    m.CopyFrom(model)
    names = sorted(acts)
    for t in names:
        if t not in {o.name for o in m.graph.output}:
            m.graph.output.append(helper.make_tensor_value_info(t, TensorProto.FLOAT, None))
    outs = ortu.session(m).run(names, {"input": x})
    return {t: float(np.abs(v).max()) for t, v in zip(names, outs)}


def _fidelity(reference: onnx.ModelProto, candidate: onnx.ModelProto, x: np.ndarray) -> float:
    r = ortu.session(reference).run(None, {"input": x})[0]
    c = ortu.session(candidate).run(None, {"input": x})[0]
    return float(row_cosine(r, c).mean())


@pytest.fixture(scope="module")
def tiny() -> tuple[onnx.ModelProto, ResolvedPlan, dict[str, float], np.ndarray, np.ndarray]:
    model = _tiny_cnn()
    plan = _all_int8(model)
    calib = _crops("calibration", 64)
    return model, plan, _amax(model, calib, plan), calib, _crops("evaluation", 128)


def _interpreted(model: onnx.ModelProto, amax: dict[str, float], plan: ResolvedPlan, x: np.ndarray,
                 quantize: bool = True) -> np.ndarray:
    net = _Interpreter(model, amax, quant_points(model, plan))
    net.quantize = quantize
    with torch.no_grad():
        return net(torch.from_numpy(x))["output"].numpy()  # type: ignore[no-any-return]


def test_interpreter_runs_what_onnxruntime_runs(tiny: tuple) -> None:  # type: ignore[type-arg]
    model, plan, amax, _, held_out = tiny
    points = quant_points(model, plan)
    # p (the pointwise conv output) is the residual Add input TensorRT fuses into that conv: no fake quantization
    assert points.tensors == {"input", "s6", "d6", "f"} and set(points.weight_axes) == {"stem.w", "dw.w", "pw.w", "fc.w"}
    x = held_out[:16]
    q = _interpreted(model, amax, plan, x)
    f = _interpreted(model, amax, plan, x, quantize=False)
    fp32 = ortu.session(model).run(None, {"input": x})[0]
    qdq = ortu.session(insert_qdq(model, amax, plan)[0], optimize=False).run(None, {"input": x})[0]
    np.testing.assert_allclose(f, fp32, rtol=1e-4, atol=1e-5)
    # same quantization points, rounding and saturation: equal up to float summation order
    np.testing.assert_allclose(q, qdq, rtol=1e-3, atol=1e-4)
    assert np.abs(q - fp32).max() > 10 * np.abs(q - qdq).max()  # the quantization is really in there


def test_interpreter_quantizes_per_consumer_like_the_qdq_writer(tiny: tuple) -> None:  # type: ignore[type-arg]
    """s6 feeds the INT8 depthwise conv and an FP16 Add: the Add must read the float tensor, as in the Q/DQ model."""
    model, _, amax, _, held_out = tiny
    plan = resolve_plan(model, model_name="tiny", onnx_sha256="0" * 64, preset="none",
                        rules=[PrecisionRule(precision="fp16", node="/res/Add")]).plan
    points = quant_points(model, plan)
    assert ("/dw/Conv", 0) in points.activations and ("/res/Add", 1) not in points.activations
    x = held_out[:16]
    qdq = ortu.session(insert_qdq(model, amax, plan)[0], optimize=False).run(None, {"input": x})[0]
    np.testing.assert_allclose(_interpreted(model, amax, plan, x), qdq, rtol=1e-3, atol=1e-4)
    all_int8 = _interpreted(model, amax, _all_int8(model), x)
    assert np.abs(all_int8 - qdq).max() > 10 * np.abs(_interpreted(model, amax, plan, x) - qdq).max()


def test_rebatch_neither_drops_nor_repeats_samples() -> None:
    data = np.arange(40, dtype=np.float32).reshape(40, 1)
    parts = [data[:5], data[5:12], data[12:32], data[32:]]
    out = list(_rebatch(parts, 16, 37))
    assert [len(b) for b in out] == [16, 16, 5]
    np.testing.assert_array_equal(np.concatenate(out)[:, 0], np.arange(37))
    assert [len(b) for b in _rebatch(parts, 16, 100)] == [16, 16, 8]


def test_interpreter_matches_the_real_mobilenet_qdq(mobilenet_onnx: Path, mobilenet_calibrated: Path) -> None:
    model = onnx.load(str(mobilenet_onnx))
    cal = load_calibration(mobilenet_calibrated)
    plan = ResolvedPlan.from_dict(json.loads((mobilenet_calibrated / "plan.json").read_text()))
    x = demo_crops("evaluation", 4)
    ours = _interpreted(model, cal.amax, plan, x)
    qdq = insert_qdq(model, cal.amax, plan)[0]
    spec = ortu.session(qdq, optimize=False).run(None, {"input": x})[0]  # Q/DQ as the ONNX spec defines them
    fused = ortu.session(qdq).run(None, {"input": x})[0]  # ONNX Runtime's fused integer kernels
    fp32 = ortu.session(model).run(None, {"input": x})[0]
    # All-INT8 MobileNetV2 is chaotic in rounding: a last-bit difference in an accumulation flips a level and the
    # flip propagates, so two correct implementations (ORT fused vs unfused) differ by ~1% cosine. The interpreter
    # must be that close to the spec, and far closer to it than FP32 is.
    gap = 1 - row_cosine(ours, spec)
    assert gap.mean() <= 2 * (1 - row_cosine(fused, spec)).mean() + 1e-4
    assert gap.mean() < 0.25 * (1 - row_cosine(fp32, spec)).mean()


@pytest.mark.slow
def test_finetuning_lowers_held_out_error_on_the_real_mobilenet(mobilenet_onnx: Path, mobilenet_calibrated: Path) -> None:
    """256 calibration crops, one pass: the all-INT8 (entropy) model's error on held-out photos must drop a lot."""
    model = onnx.load(str(mobilenet_onnx))
    cal = load_calibration(mobilenet_calibrated)
    plan = ResolvedPlan.from_dict(json.loads((mobilenet_calibrated / "plan.json").read_text()))
    held_out = demo_crops("evaluation", 96)
    res = finetune(model, cal.amax, plan, [demo_crops("calibration", 256, seed=1)],
                   FinetuneOptions(samples=256, batch_size=16))
    err_before = 1 - _fidelity(model, insert_qdq(model, cal.amax, plan)[0], held_out)
    err_after = 1 - _fidelity(model, insert_qdq(res.model, res.amax, plan, res.weight_scales)[0], held_out)
    assert err_after < 0.8 * err_before, (err_before, err_after)
    assert res.history[-1]["loss"] < res.history[0]["loss"]
    assert set(res.amax) == set(cal.amax) and res.amax != cal.amax  # every range kept, trained ones moved


def test_finetuned_weights_sit_on_their_int8_grid_and_qdq_reproduces_them(tiny: tuple) -> None:  # type: ignore[type-arg]
    model, plan, amax, calib, _ = tiny
    res = finetune(model, amax, plan, [calib], FinetuneOptions(samples=64, batch_size=16, lr=1e-3))
    inits = {i.name: numpy_helper.to_array(i) for i in res.model.graph.initializer}
    for name, scale in res.weight_scales.items():
        shape = [1] * inits[name].ndim  # channel axis 0: Conv output channels, Gemm (transB=1) rows
        shape[0] = -1
        q = inits[name] / scale.reshape(shape)
        assert np.abs(q - np.round(q)).max() < 1e-3 and np.abs(q).max() <= 127 + 1e-3, name
    short = sum(int((np.abs(np.round(inits[n] / s.reshape([-1] + [1] * (inits[n].ndim - 1)))).reshape(len(s), -1)
                     .max(1) < 127).sum()) for n, s in res.weight_scales.items())
    assert res.implicit_scale_changes == short
    qdq = insert_qdq(res.model, res.amax, plan, res.weight_scales)[0]
    scales = {i.name: numpy_helper.to_array(i) for i in qdq.graph.initializer if i.name.endswith("_scale_axis0")}
    np.testing.assert_array_equal(scales["stem.w_scale_axis0"], res.weight_scales["stem.w"])


def test_finetuning_is_deterministic(tiny: tuple) -> None:  # type: ignore[type-arg]
    model, plan, amax, calib, _ = tiny
    opts = FinetuneOptions(samples=64, batch_size=16, lr=1e-3)
    a = finetune(model, amax, plan, [calib], opts)
    b = finetune(model, amax, plan, [calib], opts)
    assert a.model.SerializeToString() == b.model.SerializeToString()
    assert a.amax == b.amax


def test_unsupported_op_and_short_data_are_errors(tiny: tuple) -> None:  # type: ignore[type-arg]
    model, plan, amax, calib, _ = tiny
    bad = onnx.ModelProto()
    bad.CopyFrom(model)
    bad.graph.node[1].op_type = "LRN"
    with pytest.raises(CalibrationError, match="LRN"):
        finetune(bad, amax, plan, [calib], FinetuneOptions(samples=16))
    with pytest.raises(CalibrationError, match="wanted 128 samples but the data gave 64"):
        finetune(model, amax, plan, [calib], FinetuneOptions(samples=128))
    with pytest.raises(ValueError, match="learning rates"):
        FinetuneOptions(lr=0)


def test_cli_finetune_needs_a_goal(tmp_path: Path, mobilenet_onnx: Path, mobilenet_calibrated: Path) -> None:
    r = run_cli("sensitivity", str(mobilenet_onnx), "--calibration", str(mobilenet_calibrated), "--data", "demo",
                "--finetune", "-o", str(tmp_path / "s"))
    assert r.returncode == 2 and "--finetune only apply with --goal" in r.stderr
    assert not (tmp_path / "s").exists()


def test_domain_gap_compares_held_out_and_calibration_loss(caplog: pytest.LogCaptureFixture) -> None:
    rng = np.random.default_rng(3)
    ref = rng.standard_normal((8, 10)).astype(np.float32)
    got = ref + rng.standard_normal((8, 10)).astype(np.float32) * np.linspace(0.01, 0.3, 8, dtype=np.float32)[:, None]
    acc = _Accumulator()
    acc.update(ref[:5], got[:5])
    acc.update(ref[5:], got[5:])
    m = acc.result(None)
    r, g = ref.astype(np.float64), got.astype(np.float64)
    by_hand = float(np.mean(((r - g) ** 2).sum(1) / (r**2).sum(1)))
    assert m.nmse == pytest.approx(by_hand, rel=1e-12)
    with caplog.at_level("WARNING"):
        near = domain_gap(by_hand / 1.1, m)
    assert near is not None and not near["large"] and near["ratio"] == pytest.approx(1.1, abs=1e-4)
    assert "unlike the calibration data" not in caplog.text
    with caplog.at_level("WARNING"):
        far = domain_gap(by_hand / 1.6, m)
    assert far is not None and far["large"] and "unlike the calibration data" in caplog.text
    # a near-lossless plan: a large ratio of two tiny losses is no finding
    tiny = domain_gap(1e-6, Metrics(16, 1.0, 1.0, 60.0, nmse=5e-5))
    assert tiny is not None and tiny["ratio"] == pytest.approx(50) and not tiny["large"]


def test_finetune_final_loss_is_the_mean_of_the_last_steps(tiny: tuple) -> None:  # type: ignore[type-arg]
    model, plan, amax, calib, _ = tiny
    res = finetune(model, amax, plan, [calib], FinetuneOptions(samples=64, batch_size=4, threads=1))
    # 16 steps: the last eighth is the last 2 steps, which the last history window (every 2 steps) also holds
    assert res.final_loss == pytest.approx(res.history[-1]["loss"], rel=1e-9)


@pytest.mark.slow
def test_cli_sensitivity_finetune_writes_a_verified_finetuned_model(
    tmp_path: Path, mobilenet_onnx: Path, mobilenet_calibrated: Path
) -> None:
    out = tmp_path / "s"
    r = run_cli("sensitivity", str(mobilenet_onnx), "--calibration", str(mobilenet_calibrated), "--data", "demo",
                "--num-images", "16", "--verify-images", "16", "--preset", "cnn", "--goal", "0.999",
                "--max-kept", "2", "--finetune", "--finetune-samples", "48", "--finetune-lr", "2e-5", "-o", str(out),
                "--json")
    assert r.returncode == 0, r.stderr
    doc = json.loads(r.stdout)
    auto = doc["auto_plan"]
    assert auto["finetune"]["options"]["samples"] == 48 and auto["finetuned"]["samples"] == 16
    gap = auto["finetune"]["domain_gap"]
    assert gap["calibration_loss"] > 0 and gap["held_out_loss"] == pytest.approx(auto["finetuned"]["nmse"], abs=1e-7)
    assert gap["ratio"] == pytest.approx(gap["held_out_loss"] / gap["calibration_loss"], rel=1e-3)
    v = auto["verification"]
    assert v["samples"] == 16 and v["plan_finetuned"] is not None
    assert v["met"] == (v["plan_finetuned"]["cosine"] >= 0.999)
    tuned = onnx.load(str(out / "model.finetuned.onnx"))
    qdq = onnx.load(str(out / "model.qdq.onnx"))
    # the written Q/DQ model is the fine-tuned one: same weights as model.finetuned.onnx
    w = "features.18.0.weight" if any(i.name == "features.18.0.weight" for i in tuned.graph.initializer) else None
    tuned_w = {i.name: numpy_helper.to_array(i) for i in tuned.graph.initializer}
    qdq_w = {i.name: numpy_helper.to_array(i) for i in qdq.graph.initializer}
    name = w or next(n for n in tuned_w if n.endswith(".weight") and tuned_w[n].ndim == 4)
    np.testing.assert_array_equal(tuned_w[name], qdq_w[name])
    original = {i.name: numpy_helper.to_array(i) for i in onnx.load(str(mobilenet_onnx)).graph.initializer}
    assert not np.array_equal(original[name], tuned_w[name])
    cache = (out / "calibration.finetuned.cache").read_text()
    assert cache.startswith("TRT-") and "input:" in cache
    assert "fine-tuned on 48 samples" in (out / "precision_rules.toml").read_text()


@pytest.mark.slow
def test_cli_calibrate_finetune_is_deterministic_and_consistent(tmp_path: Path, mobilenet_onnx: Path) -> None:
    outs = []
    for k in range(2):
        out = tmp_path / f"c{k}"
        r = run_cli("calibrate", str(mobilenet_onnx), "--data", "demo", "--num-images", "16", "--finetune",
                    "--finetune-samples", "32", "-o", str(out), "--json")
        assert r.returncode == 0, r.stderr
        outs.append(out)
    for name in ("model.qdq.onnx", "calibration.cache", "calibration.finetuned.cache", "model.finetuned.onnx",
                 "summary.json"):
        assert (outs[0] / name).read_bytes() == (outs[1] / name).read_bytes(), name
    summary = json.loads((outs[0] / "summary.json").read_text())
    ft = summary["finetune"]
    assert ft["options"]["samples"] == 32 and ft["history"][-1]["samples"] == 32
    # calibration.finetuned.cache holds the trained ranges; calibration.cache the original model's thresholds
    from vqz_edge.artifacts.calib_cache import read_cache

    tuned_cache = read_cache(outs[0] / "calibration.finetuned.cache")
    cache = read_cache(outs[0] / "calibration.cache")
    trained = {k: v for k, v in ft["amax"].items() if v != summary["tensors"][k]["amax"]}
    assert trained
    for name, amax in trained.items():
        assert tuned_cache.scales[name] == pytest.approx(amax / 127, rel=1e-6)
        assert cache.scales[name] == pytest.approx(summary["tensors"][name]["amax"] / 127, rel=1e-6)
    tuned = {i.name: numpy_helper.to_array(i) for i in onnx.load(str(outs[0] / "model.finetuned.onnx")).graph.initializer}
    qdq = {i.name: numpy_helper.to_array(i) for i in onnx.load(str(outs[0] / "model.qdq.onnx")).graph.initializer}
    assert all(np.array_equal(tuned[n], qdq[n]) for n in tuned if n in qdq)
