"""Calibration outputs: TensorRT cache format, Q/DQ placement, MobileNetV2 end to end, bad input."""

from __future__ import annotations

import json
import struct
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from tests.conftest import run_cli
from vqz_edge import ort as ortu
from vqz_edge.artifacts.calib_cache import (
    CalibrationCache,
    cache_bytes,
    check_cache,
    parse_cache,
    read_cache,
    write_cache,
)
from vqz_edge.calib import CalibrationOptions, calibrate
from vqz_edge.calib.collect import calibration_tensors
from vqz_edge.calib.qdq import insert_qdq
from vqz_edge.errors import DataError, InputError
from vqz_edge.policy.resolve import resolve_plan
from vqz_edge.preprocessing import PreprocessingRequest
from vqz_edge.spec import PrecisionRule

# ---- cache format -------------------------------------------------------------------------------


def test_cache_exact_bytes_and_round_trip(tmp_path: Path) -> None:
    cache = CalibrationCache.from_amax({"input": 127.0, "b/conv_out": 2.54}, version_code=8601)
    data = cache_bytes(cache)
    lines = data.decode().splitlines()
    assert lines[0] == "TRT-8601-EntropyCalibration2"
    # sorted by name; scale 127/127 = 1.0 -> 3f800000 (big-endian float32 bits)
    assert lines[1].startswith("b/conv_out: ") and lines[2] == "input: 3f800000"
    assert lines[1].split(": ")[1] == struct.pack(">f", 2.54 / 127).hex()
    assert data.endswith(b"\n") and len(lines) == 3
    write_cache(tmp_path / "c.cache", cache)
    back = read_cache(tmp_path / "c.cache")
    assert back.version_code == 8601 and back.algorithm == "EntropyCalibration2"
    assert back.scales["input"] == 1.0
    assert back.amax()["b/conv_out"] == pytest.approx(2.54, rel=1e-6)
    assert cache_bytes(back) == data


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("", "is empty"),
        ("TRT-8601\nx: 3f800000\n", "is not a TensorRT header"),
        ("TRT-8601-EntropyCalibration2\nx 3f800000\n", "line 2"),
        ("TRT-8601-EntropyCalibration2\nx: 3f80\n", "8 hex digits"),
        ("TRT-8601-EntropyCalibration2\nx: 3f800000\nx: 3f800000\n", "appears twice"),
        ("TRT-8601-EntropyCalibration2\nx: bf800000\n", "finite and positive"),
    ],
)
def test_bad_cache_is_reported(text: str, message: str) -> None:
    with pytest.raises(InputError, match=message):
        parse_cache(text.encode(), "bad.cache")


def test_cache_checked_against_another_model(mobilenet_calibrated: Path) -> None:
    from tests.onnx_graphs import image_model
    from vqz_edge.export.onnx_passes import remove_batchnorm

    cache = read_cache(mobilenet_calibrated / "calibration.cache")
    other, _ = remove_batchnorm(image_model())
    check = check_cache(cache, calibration_tensors(other), version_code=8601)
    assert not check.ok and not check.version_ok
    assert "/features/features.0/features.0.2/Clip_output_0" in check.extra
    assert "logits" in check.missing
    assert "missing from the cache" in check.describe() and "not in the network" in check.describe()


# ---- Q/DQ placement ------------------------------------------------------------------------------


def residual_model() -> onnx.ModelProto:
    """input -> Conv(c1) -> Relu -> Conv(c2) -> Add(with Relu out) -> ConvTranspose(t) -> GAP -> Flatten -> Gemm(fc, transB)."""
    rng = np.random.default_rng(0)

    def w(name: str, *shape: int) -> onnx.TensorProto:
        return numpy_helper.from_array((rng.standard_normal(shape) * 0.3).astype(np.float32), name)

    nodes = [
        helper.make_node("Conv", ["input", "c1.w", "c1.b"], ["c1"], name="/c1/Conv", pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["c1"], ["r1"], name="/r1/Relu"),
        helper.make_node("Conv", ["r1", "c2.w"], ["c2"], name="/c2/Conv", pads=[1, 1, 1, 1]),
        helper.make_node("Add", ["c2", "r1"], ["res"], name="/block/Add"),
        helper.make_node("ConvTranspose", ["res", "t.w"], ["t"], name="/up/ConvTranspose", strides=[2, 2]),
        helper.make_node("GlobalAveragePool", ["t"], ["gap"], name="/GlobalAveragePool"),
        helper.make_node("Flatten", ["gap"], ["flat"], name="/Flatten"),
        helper.make_node("Gemm", ["flat", "fc.w", "fc.b"], ["logits"], name="/fc/Gemm", transB=1),
    ]
    inits = [w("c1.w", 8, 3, 3, 3), w("c1.b", 8), w("c2.w", 8, 8, 3, 3), w("t.w", 8, 6, 2, 2), w("fc.w", 5, 6), w("fc.b", 5)]
    g = helper.make_graph(nodes, "res", [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["N", 3, 16, 16])],
                          [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", 5])], initializer=inits)
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
    m.ir_version = 8
    return m


def _producer(model: onnx.ModelProto, tensor: str) -> onnx.NodeProto:
    return next(n for n in model.graph.node if tensor in n.output)


def test_qdq_placement_follows_plan() -> None:
    model = residual_model()
    names = calibration_tensors(model)
    assert "c1" not in names, "Conv output consumed only by Relu is fused by TensorRT: no scale needed"
    assert {"input", "r1", "c2", "res", "t", "flat", "logits"} <= set(names)
    amax = {n: 2.0 for n in names}
    rules = [PrecisionRule(precision="fp16", match="/up/*")]
    plan = resolve_plan(model, rules, model_name="res", onnx_sha256="x").plan
    assert plan.precision_of("/up/ConvTranspose") == "fp16" and plan.precision_of("/c1/Conv") == "int8"
    q, report = insert_qdq(model, amax, plan)
    onnx.checker.check_model(q)
    nodes = {n.name: n for n in q.graph.node}
    dq_in = lambda node, k: _producer(q, nodes[node].input[k])  # noqa: E731

    # activations: per-tensor, zero point 0 int8
    for node, k in [("/c1/Conv", 0), ("/c2/Conv", 0), ("/block/Add", 1), ("/fc/Gemm", 0)]:
        dq = dq_in(node, k)
        assert dq.op_type == "DequantizeLinear", f"{node} input {k} must come from a DequantizeLinear, got {dq.op_type}"
        scale = numpy_helper.to_array(next(i for i in q.graph.initializer if i.name == dq.input[1]))
        assert scale.shape == () and scale == pytest.approx(2.0 / 127)
    # weights: per-channel on the output-channel axis
    for node, axis, channels in [("/c1/Conv", 0, 8), ("/c2/Conv", 0, 8), ("/fc/Gemm", 0, 5)]:
        dq = dq_in(node, 1)
        assert dq.op_type == "DequantizeLinear"
        assert helper.get_attribute_value(next(a for a in dq.attribute if a.name == "axis")) == axis, node
        scale = numpy_helper.to_array(next(i for i in q.graph.initializer if i.name == dq.input[1]))
        assert scale.shape == (channels,), f"{node}: per-channel scale expected"
    # the relu output feeds both c2 and the residual Add: one shared Q/DQ pair; c2's output is the Add input
    # TensorRT fuses into c2 (placement rule residual_add): no Q/DQ on it
    assert nodes["/c2/Conv"].input[0] == nodes["/block/Add"].input[1] == "r1_dequantized"
    assert nodes["/block/Add"].input[0] == "c2"
    # the FP16 layer gets no Q/DQ at all
    assert nodes["/up/ConvTranspose"].input == ["res", "t.w"]
    assert report.int8_layers == 4 and report.skipped_layers == 1
    assert report.weights == 3 and report.activations == 3  # input, r1 (shared), flat
    x = np.random.default_rng(1).standard_normal((2, 3, 16, 16)).astype(np.float32)
    ref = ortu.run(ortu.session(model), {"input": x})[0]
    got = ortu.run(ortu.session(q), {"input": x})[0]
    assert np.corrcoef(ref.ravel(), got.ravel())[0, 1] > 0.95  # arbitrary amax=2: a sanity bound only


def test_convtranspose_weight_axis_is_1() -> None:
    model = residual_model()
    plan = resolve_plan(model, model_name="res", onnx_sha256="x").plan
    q, _ = insert_qdq(model, {n: 1.0 for n in calibration_tensors(model)}, plan)
    t = next(n for n in q.graph.node if n.name == "/up/ConvTranspose")
    dq = _producer(q, t.input[1])
    assert helper.get_attribute_value(next(a for a in dq.attribute if a.name == "axis")) == 1


# ---- MobileNetV2 end to end ----------------------------------------------------------------------


@pytest.mark.slow
def test_mobilenet_calibration_outputs(mobilenet_calibrated: Path, mobilenet_onnx: Path) -> None:
    out = mobilenet_calibrated
    cache = read_cache(out / "calibration.cache")
    assert cache.version_code == 100300
    model = onnx.load(str(mobilenet_onnx))
    values = {"input"} | {o for n in model.graph.node for o in n.output}
    assert "input" in cache.scales
    assert set(cache.scales) <= values, "cache names must be ONNX value names (TensorRT's tensor names)"
    assert check_cache(cache, calibration_tensors(model), 100300).ok
    summary = json.loads((out / "summary.json").read_text())
    assert summary["images"] == 64 and summary["method"] == "entropy"
    assert summary["model"]["sha256"] and summary["data"]["sha256"]
    # entropy clips: some thresholds well below the observed max
    clipped = [t for t in summary["tensors"].values() if t["amax"] < 0.8 * max(abs(t["min"]), abs(t["max"]))]
    assert len(clipped) > 10
    q = onnx.load(str(out / "model.qdq.onnx"))
    onnx.checker.check_model(q)
    convs = [n for n in q.graph.node if n.op_type in ("Conv", "Gemm")]
    assert all(_producer(q, n.input[0]).op_type == "DequantizeLinear" for n in convs if n.op_type == "Conv")
    gemm = next(n for n in convs if n.op_type == "Gemm")
    assert _producer(q, gemm.input[0]).op_type != "DequantizeLinear", "the FP32 head gets no Q/DQ"
    plan = json.loads((out / "plan.json").read_text())
    # preset cnn: every Conv/Gemm/residual Add INT8 except the final head (FP32)
    assert sum(1 for layer in plan["layers"] if layer["precision"] == "int8") == 62
    head = next(layer for layer in plan["layers"] if layer["name"] == "/classifier/classifier.1/Gemm")
    assert head["precision"] == "fp32" and "final head" in head["rule"]
    with np.load(out / "histograms.npz") as z:
        assert z["t0000_counts"].shape == (2048,)


@pytest.mark.slow
def test_calibration_is_deterministic(tmp_path: Path, mobilenet_onnx: Path, mobilenet_calibrated: Path) -> None:
    calibrate(mobilenet_onnx, "demo", tmp_path, CalibrationOptions(num_images=64, batch_size=16), model_name="mobilenet_v2")
    for name in ["calibration.cache", "model.qdq.onnx", "histograms.npz", "summary.json", "plan.json"]:
        assert (tmp_path / name).read_bytes() == (mobilenet_calibrated / name).read_bytes(), f"{name} differs"


@pytest.mark.slow
def test_cli_calibrate_and_evaluate(tmp_path: Path, mobilenet_onnx: Path) -> None:
    out = tmp_path / "cal"
    r = run_cli("calibrate", str(mobilenet_onnx), "--data", "demo", "--num-images", "32", "--method", "auto",
                "--trt-version", "8.6.1", "-o", str(out), "--json")
    assert r.returncode == 0, r.stderr
    rep = json.loads(r.stdout)
    assert rep["cache_header"] == "TRT-8601-EntropyCalibration2" and rep["images"] == 32
    assert (out / "calibration.cache").read_text().startswith("TRT-8601-EntropyCalibration2\n")
    r = run_cli("evaluate", str(mobilenet_onnx), str(out / "model.qdq.onnx"), "--data", "demo", "--num-images", "40",
                "-o", str(tmp_path / "fidelity.json"), "--json")
    assert r.returncode == 0, r.stderr
    o = json.loads(r.stdout)["outputs"][0]
    assert o["samples"] == 40 and 0.8 < o["mean_cosine"] < 1.0
    assert 0.3 < o["top1_agreement"] <= 1.0 and o["top5_contains_reference_top1"] >= o["top1_agreement"]
    assert json.loads((tmp_path / "fidelity.json").read_text())["outputs"][0] == o


# ---- bad input: clear error, non-zero exit, nothing written --------------------------------------


def _empty(d: Path) -> bool:
    return not d.exists() or not any(d.iterdir())


def test_empty_folder(tmp_path: Path, mobilenet_onnx: Path) -> None:
    (tmp_path / "imgs").mkdir()
    r = run_cli("calibrate", str(mobilenet_onnx), "--data", str(tmp_path / "imgs"), "-o", str(tmp_path / "out"))
    assert r.returncode == 2 and "contains no images" in r.stderr
    assert _empty(tmp_path / "out")


def test_unreadable_image(tmp_path: Path, mobilenet_onnx: Path) -> None:
    from PIL import Image

    d = tmp_path / "imgs"
    d.mkdir()
    Image.fromarray(np.zeros((64, 64, 3), np.uint8)).save(d / "a.png")
    (d / "b.jpg").write_bytes(b"\xff\xd8\xff garbage")
    with pytest.raises(DataError, match=r"cannot read image .*b\.jpg"):
        calibrate(mobilenet_onnx, d, tmp_path / "out", CalibrationOptions(num_images=4, batch_size=2),
                  preprocessing=PreprocessingRequest(preset="imagenet"))
    assert _empty(tmp_path / "out")


def test_wrong_channel_count_and_shape(tmp_path: Path, mobilenet_onnx: Path) -> None:
    np.save(tmp_path / "four.npy", np.zeros((4, 4, 224, 224), np.float32))
    with pytest.raises(DataError, match="channel count 4 does not match model input 'input'"):
        calibrate(mobilenet_onnx, tmp_path / "four.npy", tmp_path / "out")
    np.save(tmp_path / "small.npy", np.zeros((4, 3, 96, 96), np.float32))
    with pytest.raises(DataError, match=r"dim 2 96 does not match model input 'input' shape \['batch', 3, 224, 224\]"):
        calibrate(mobilenet_onnx, tmp_path / "small.npy", tmp_path / "out")
    assert _empty(tmp_path / "out")


def test_nan_in_data_names_the_sample_before_any_statistic(tmp_path: Path, mobilenet_onnx: Path) -> None:
    x = np.random.default_rng(0).standard_normal((8, 3, 224, 224)).astype(np.float32)
    x[5, 0, 0, 0] = np.nan
    np.save(tmp_path / "nan.npy", x)
    with pytest.raises(DataError, match=r"nan\.npy \(8 of 8 samples\): sample 5 holds nan at position \[0, 0, 0\]"):
        calibrate(mobilenet_onnx, tmp_path / "nan.npy", tmp_path / "out", CalibrationOptions(batch_size=4))
    assert not (tmp_path / "out").exists()


def test_output_directory_not_writable(tmp_path: Path, mobilenet_onnx: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    r = run_cli("calibrate", str(mobilenet_onnx), "--data", "demo", "-o", str(blocker / "out"))
    assert r.returncode == 2 and "cannot create output directory" in r.stderr


def test_good_cache_not_replaced_by_failed_run(tmp_path: Path, mobilenet_onnx: Path, mobilenet_calibrated: Path) -> None:
    out = tmp_path / "out"
    out.mkdir()
    good = (mobilenet_calibrated / "calibration.cache").read_bytes()
    (out / "calibration.cache").write_bytes(good)
    x = np.full((4, 3, 224, 224), np.inf, np.float32)
    np.save(tmp_path / "inf.npy", x)
    with pytest.raises(DataError, match="sample 0 holds inf"):
        calibrate(mobilenet_onnx, tmp_path / "inf.npy", out)
    assert (out / "calibration.cache").read_bytes() == good
    assert sorted(p.name for p in out.iterdir()) == ["calibration.cache"]


def test_constant_node_weights_are_refused_until_exported(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """A Paddle-style ONNX (PP-OCRv4's detector has 342 Constant nodes, 0 initializers) holds its conv weights in
    Constant nodes: the Q/DQ writer quantizes initializers only, so calibrating it as is left every weight float
    without a word. calibrate now refuses, naming the layers and `vqz-edge export`; the exported model (Constant
    nodes turned into initializers) calibrates with per-channel INT8 weights."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    from vqz_edge.cli import main

    rng = np.random.default_rng(0)
    w = numpy_helper.from_array(rng.standard_normal((4, 3, 3, 3)).astype(np.float32) * 0.2, "w")
    b = numpy_helper.from_array(np.zeros(4, np.float32), "b")
    graph = helper.make_graph(
        [helper.make_node("Constant", [], ["w"], name="w_const", value=w),
         helper.make_node("Constant", [], ["b"], name="b_const", value=b),
         helper.make_node("Conv", ["x", "w", "b"], ["c"], name="conv0", pads=[1, 1, 1, 1]),
         helper.make_node("Relu", ["c"], ["y"], name="relu0")],
        "paddle_like", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 3, 32, 32])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 4, 32, 32])])
    src = tmp_path / "paddle_like.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)]), src)

    rc = main(["calibrate", str(src), "--data", "demo", "--num-images", "4", "--preset", "none", "-o",
               str(tmp_path / "cal_raw"), "-q"])
    err = capsys.readouterr().err
    assert rc == 2 and "conv0" in err and "Constant nodes" in err and "vqz-edge export" in err, err
    assert not (tmp_path / "cal_raw" / "model.qdq.onnx").exists()

    exported = tmp_path / "model.onnx"
    assert main(["export", str(src), "-o", str(exported), "-q"]) == 0, capsys.readouterr().err
    assert main(["calibrate", str(exported), "--data", "demo", "--num-images", "4", "--preset", "none", "-o",
                 str(tmp_path / "cal"), "-q"]) == 0, capsys.readouterr().err
    qdq = onnx.load(str(tmp_path / "cal" / "model.qdq.onnx"))
    weight_q = [n for n in qdq.graph.node if n.op_type == "QuantizeLinear"
                and n.input[0] in {i.name for i in qdq.graph.initializer}]
    assert len(weight_q) == 1 and weight_q[0].attribute[0].i in (0, 1)  # the conv's weights, per channel (axis 0)
