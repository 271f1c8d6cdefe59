"""Task metrics (vqz_edge.calib.tasks): detection mAP / recall and dense-map correlation / mIoU on cases whose answer is
known by hand, YOLO decoding, and the metrics through evaluate, the CLI and the sensitivity evaluator (tiny random
graphs: pipeline checks only)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from tests.conftest import run_cli
from vqz_edge.calib.evaluate import evaluate
from vqz_edge.calib.qdq import insert_qdq
from vqz_edge.calib.tasks import (
    DETECTION_FORMATS,
    TASK_METRICS,
    DenseAccumulator,
    DetectionAccumulator,
    DetectionConfig,
    Detections,
    TaskSpec,
    box_iou,
    pre_activation,
)
from vqz_edge.cli import task_options
from vqz_edge.errors import InputError
from vqz_edge.policy.resolve import resolve_plan
from vqz_edge.sensitivity.evaluator import METRICS, Evaluator


def _dets(boxes: list[list[float]], scores: list[float], classes: list[int] | None = None) -> Detections:
    return Detections(np.asarray(boxes, float).reshape(-1, 4), np.asarray(scores, float),
                      np.asarray(classes if classes is not None else [0] * len(scores), np.int64))


def test_cli_names_match_the_library() -> None:
    assert task_options.METRICS == METRICS
    assert task_options.DETECTION_FORMATS == DETECTION_FORMATS
    assert task_options.TASK_METRICS == TASK_METRICS


def test_detection_map_and_recall_by_hand() -> None:
    gt = _dets([[0, 0, 10, 10], [20, 20, 40, 40], [50, 50, 60, 60]], [0.9, 0.8, 0.1])  # third: below conf 0.25
    same = DetectionAccumulator(DetectionConfig(conf=0.25))
    same.update([gt], [gt])
    r = same.result()
    assert r["reference_detections"] == 2 and r["map50"] == 1.0 and r["map50_95"] == 1.0 and r["recall_at_op"] == 1.0
    # the second box shifted by 5: IoU 225/575 = 0.39 < 0.5 -> a false positive ranked below one true positive:
    # precision 1 up to recall 0.5, none after: 101-point AP = 51/101
    shifted = _dets([[0, 0, 10, 10], [25, 25, 45, 45]], [0.9, 0.8])
    assert box_iou(shifted.boxes[1:], gt.boxes[1:2])[0, 0] == pytest.approx(225 / 575)
    acc = DetectionAccumulator(DetectionConfig(conf=0.25))
    acc.update([gt], [shifted])
    r = acc.result()
    assert r["map50"] == pytest.approx(51 / 101) and r["recall_at_op"] == 0.5 and r["precision_at_op"] == 0.5
    # a detection of the wrong class never matches; a candidate score below conf counts for AP, not at the op
    acc = DetectionAccumulator(DetectionConfig(conf=0.25))
    acc.update([gt], [_dets([[0, 0, 10, 10], [20, 20, 40, 40]], [0.9, 0.2], [1, 0])])
    r = acc.result()
    # class 0 (the only class with ground truth): one true positive at score 0.2 -> recall 0.5 at precision 1
    assert r["map50"] == pytest.approx(51 / 101) and r["classes"] == 1
    assert r["recall_at_op"] == 0.0 and r["candidate_detections_at_op"] == 1  # only the wrong-class box passes 0.25


def test_yolo_heads_decode_to_the_same_detections() -> None:
    # two boxes (cx, cy, w, h) for 2 classes; the duplicate of box 0 is suppressed by NMS
    xywh = np.array([[10, 10, 10, 10], [30, 30, 20, 20], [10.5, 10, 10, 10]], np.float32)
    cls = np.array([[0.9, 0.1], [0.2, 0.7], [0.8, 0.1]], np.float32)
    v5 = np.concatenate([xywh, np.ones((3, 1), np.float32), cls], axis=1)[None]
    v8 = np.concatenate([xywh, cls], axis=1).T[None]
    a = DetectionConfig(format="yolov5").decode([v5])[0]
    b = DetectionConfig(format="yolov8").decode([v8])[0]
    for d in (a, b):
        assert d.classes.tolist() == [0, 1] and np.allclose(d.scores, [0.9, 0.7])
        assert np.allclose(d.boxes[0], [5, 5, 15, 15]) and np.allclose(d.boxes[1], [20, 20, 40, 40])
    with pytest.raises(InputError, match="yolov8 head"):
        DetectionConfig(format="yolov8").decode([np.zeros((1, 3), np.float32)])


def test_dense_correlation_is_taken_before_the_sigmoid() -> None:
    """Saturated logits: the post-sigmoid maps look alike (cosine ~1) while the pre-activation maps disagree."""
    rng = np.random.default_rng(0)
    pre_r = rng.standard_normal((4, 1, 8, 8)) * 2 + 12  # deep in saturation
    pre_g = rng.standard_normal((4, 1, 8, 8)) * 2 + 12  # unrelated pattern, same saturation
    sig_r, sig_g = 1 / (1 + np.exp(-pre_r)), 1 / (1 + np.exp(-pre_g))
    acc = DenseAccumulator("map", "Sigmoid")
    acc.update(sig_r, sig_g, pre_r, pre_g)
    r = acc.result()
    cos = float(np.sum(sig_r * sig_g) / np.linalg.norm(sig_r) / np.linalg.norm(sig_g))
    assert cos > 0.9999 and abs(r["map_correlation"]) < 0.5 and r["miou"] == 1.0  # all foreground in both
    acc = DenseAccumulator("seg")
    labels = np.zeros((1, 3, 2, 2))
    labels[0, 0, 0, :] = 1  # class 0 on the top row, class 1 below
    labels[0, 1, 1, :] = 1
    moved = labels.copy()
    moved[0, :, 1, 1] = [0, 0, 1]  # one pixel of class 1 becomes class 2
    acc.update(labels, moved)
    # IoU: class 0 = 1, class 1 = 1/2, class 2 = 0/1 -> mean 0.5
    assert acc.result()["miou"] == pytest.approx(0.5)


def _dense_model() -> onnx.ModelProto:
    rng = np.random.default_rng(3)
    n = helper.make_node
    nodes = [n("Conv", ["x", "w0"], ["h"], name="conv0", pads=[1, 1, 1, 1]), n("Relu", ["h"], ["hr"], name="relu"),
             n("Conv", ["hr", "w1"], ["logits"], name="conv1", pads=[1, 1, 1, 1]),
             n("Sigmoid", ["logits"], ["y"], name="sigmoid")]
    inits = [numpy_helper.from_array((rng.standard_normal((8, 3, 3, 3)) * 0.3).astype(np.float32), "w0"),
             numpy_helper.from_array((rng.standard_normal((1, 8, 3, 3)) * 0.3).astype(np.float32), "w1")]
    g = helper.make_graph(nodes, "dense", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 3, 16, 16])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 1, 16, 16])], inits)
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])


def _detector() -> onnx.ModelProto:
    """x (N, 16, 4) -> boxes = anchors + 2 * x W (N, 16, 4) xyxy, scores = sigmoid(x V) (N, 16, 2)."""
    rng = np.random.default_rng(4)
    cx, cy = np.meshgrid(np.arange(4) * 10.0, np.arange(4) * 10.0)
    anchors = np.stack([cx - 4, cy - 4, cx + 4, cy + 4], -1).reshape(16, 4).astype(np.float32)
    n = helper.make_node
    nodes = [n("MatMul", ["x", "W"], ["off"], name="box_mm"), n("Mul", ["off", "two"], ["off2"], name="scale"),
             n("Add", ["off2", "anchors"], ["boxes"], name="decode"),
             n("MatMul", ["x", "V"], ["logits"], name="cls_mm"), n("Sigmoid", ["logits"], ["scores"], name="sig")]
    inits = [numpy_helper.from_array((rng.standard_normal((4, 4)) * 0.5).astype(np.float32), "W"),
             numpy_helper.from_array((rng.standard_normal((4, 2)) * 2).astype(np.float32), "V"),
             numpy_helper.from_array(np.array(2.0, np.float32), "two"), numpy_helper.from_array(anchors, "anchors")]
    g = helper.make_graph(nodes, "det", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 16, 4])],
                          [helper.make_tensor_value_info("boxes", TensorProto.FLOAT, ["N", 16, 4]),
                           helper.make_tensor_value_info("scores", TensorProto.FLOAT, ["N", 16, 2])], inits)
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])


def _int8(model: onnx.ModelProto, amax: dict[str, float]) -> onnx.ModelProto:
    plan = resolve_plan(model, model_name="t", onnx_sha256="x", preset="none").plan
    return insert_qdq(model, amax, plan)[0]


def test_dense_task_through_evaluate_and_the_sensitivity_evaluator() -> None:
    model = _dense_model()
    assert pre_activation(model, "y") == ("logits", "Sigmoid")
    q = _int8(model, {"x": 2.5, "hr": 3.0})
    x = np.random.default_rng(5).standard_normal((6, 3, 16, 16)).astype(np.float32)
    rep = evaluate(model, q, [x[:3], x[3:]], total_batches=2, data_description="random", task=TaskSpec("dense"))
    t = rep.task
    assert t is not None and t["driving_outputs"] == ["y"] and "Sigmoid" in t["correlation_of"]
    assert 0.5 < t["map_correlation"] < 1.0 and 0.0 < t["miou"] <= 1.0 and t["samples"] == 6
    assert [o["name"] for o in rep.outputs] == ["y"]  # the pre-activation map is read, not reported as an output
    same = evaluate(model, model, [x], total_batches=1, data_description="random", task=TaskSpec("dense"))
    assert same.task is not None and same.task["map_correlation"] == pytest.approx(1.0) and same.task["miou"] == 1.0
    plan = resolve_plan(model, model_name="t", onnx_sha256="x", preset="none").plan
    ev = Evaluator(model, {"x": 2.5, "hr": 3.0}, [x[:3], x[3:]], task=TaskSpec("dense"))
    m = ev.evaluate(plan)
    assert m.value("map_correlation") == pytest.approx(t["map_correlation"], abs=1e-9)
    assert m.value("miou") == pytest.approx(t["miou"], abs=1e-9)
    with pytest.raises(InputError, match="detection"):
        m.value("map50")


def test_detection_task_every_output_reported(tmp_path: Path) -> None:
    model = _detector()
    q = _int8(model, {"x": 2.0})
    x = np.random.default_rng(6).standard_normal((8, 16, 4)).astype(np.float32)
    spec = TaskSpec("detection", detection=DetectionConfig(conf=0.5))
    rep = evaluate(model, q, [x], total_batches=1, data_description="random", task=spec)
    assert [o["name"] for o in rep.outputs] == ["boxes", "scores"]  # both outputs, each with its fidelity
    t = rep.task
    assert t is not None and t["driving_outputs"] == ["boxes", "scores"] and t["reference_detections"] > 10
    assert 0.0 < t["map50_95"] <= t["map50"] <= 1.0 and 0.0 < t["recall_at_op"] <= 1.0
    same = evaluate(model, model, [x], total_batches=1, data_description="random", task=spec)
    assert same.task is not None and same.task["map50"] == 1.0 and same.task["recall_at_op"] == 1.0


def test_cli_evaluate_dense_task(tmp_path: Path) -> None:
    model = _dense_model()
    q = _int8(model, {"x": 2.5, "hr": 3.0})
    onnx.save(model, str(tmp_path / "m.onnx"))
    onnx.save(q, str(tmp_path / "m.int8.onnx"))
    x = np.random.default_rng(7).standard_normal((5, 3, 16, 16)).astype(np.float32)
    np.save(tmp_path / "x.npy", x)
    r = run_cli("evaluate", str(tmp_path / "m.onnx"), str(tmp_path / "m.int8.onnx"), "--task", "dense", "--data",
                str(tmp_path / "x.npy"), "--num-images", "5", "--json")
    assert r.returncode == 0, r.stderr
    doc = json.loads(r.stdout)
    direct = evaluate(model, q, [x], total_batches=1, data_description="x", task=TaskSpec("dense")).task
    assert direct is not None and doc["task"]["map_correlation"] == pytest.approx(direct["map_correlation"])
    r = run_cli("evaluate", str(tmp_path / "m.onnx"), str(tmp_path / "m.int8.onnx"), "--task", "dense", "--data",
                str(tmp_path / "x.npy"), "--num-images", "5", "--output-map", "nope")
    assert r.returncode != 0 and "'nope' is not a graph output" in r.stderr


def test_non_finite_task_outputs_are_refused() -> None:
    from vqz_edge.errors import VerificationError

    ok = np.zeros((1, 1, 2, 2))
    bad = ok.copy()
    bad[0, 0, 0, 0] = np.nan
    with pytest.raises(VerificationError, match="candidate model's map holds NaN"):
        DenseAccumulator("map").update(ok, bad)
    boxes = np.array([[[0, 0, 1, 1]]], np.float32)
    with pytest.raises(VerificationError, match="NaN/Inf"):
        DetectionConfig().decode([boxes, np.array([[np.inf]], np.float32)])
