"""Real TensorRT builds of the demo MobileNetV2 (run on a Jetson, in the Jetson container, or on a GPU
host with TensorRT): FP16, INT8 implicit from the offline cache, INT8 explicit from the Q/DQ model.
Each engine's per-layer precisions are checked against the plan and its outputs against ONNX Runtime.

Run with ``tools/run_trt_tests.sh`` (or ``pytest -m trt tests/trt``). Skipped, with the reason, where
TensorRT or a CUDA GPU is missing.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from vqz_edge.trt.compat import tensorrt_available


def _gpu() -> object:
    from vqz_edge.device import read_gpu
    from vqz_edge.errors import DependencyError

    try:
        return read_gpu()
    except DependencyError:  # no pycuda: the runtime cannot run here either
        return None


pytestmark = [
    pytest.mark.trt,
    pytest.mark.skipif(not tensorrt_available(),
                       reason="TensorRT is not installed on this host: run tools/run_trt_tests.sh on a Jetson or GPU host"),
    pytest.mark.skipif(not tensorrt_available() or _gpu() is None, reason="no CUDA GPU on this host (pycuda device 0)"),
]

SPEC = """version = 1
[model]
name = "mobilenet_v2"
source = "mobilenet_v2"
[[inputs]]
name = "input"
shape = [1, 3, 224, 224]
max_shape = [8, 3, 224, 224]
[calibration]
data = "demo"
num_images = 64
batch_size = 16
[build]
targets = ["orin-nx-16gb"]
"""
MIN_COSINE = {"fp16": 0.999, "implicit": 0.98, "explicit": 0.98}  # vs FP32 (fp16); vs the Q/DQ model (INT8: the
# other layers run FP16 on weakly typed builds)


@pytest.fixture(scope="module")
def workdir(tmp_path_factory: pytest.TempPathFactory, request: pytest.FixtureRequest) -> Path:
    """calibration/mobilenet_v2/ as `vqz-edge calibrate` leaves it. With $VQZ_EDGE_TRT_TEST_CALIBRATION
    (a calibration/mobilenet_v2 folder copied from a workstation: a Jetson often has no torch) those
    artifacts are used; otherwise the model is exported and calibrated here for this TensorRT version."""
    import tensorrt

    root = tmp_path_factory.mktemp("trt-build")
    calib = root / "calibration" / "mobilenet_v2"
    given = os.environ.get("VQZ_EDGE_TRT_TEST_CALIBRATION")
    if given:
        shutil.copytree(given, calib)
    else:
        pytest.importorskip("torch", reason="exporting the demo model needs torch; or set VQZ_EDGE_TRT_TEST_CALIBRATION")
        from vqz_edge.calib import CalibrationOptions, calibrate
        from vqz_edge.spec import PrecisionRule

        calib.mkdir(parents=True)
        shutil.copy(request.getfixturevalue("mobilenet_onnx"), calib / "model.onnx")
        calibrate(calib / "model.onnx", "demo", calib,
                  CalibrationOptions(num_images=64, batch_size=16, trt_version=str(tensorrt.__version__)),
                  rules=[PrecisionRule(precision="fp32", match="classifier*", reason="head stays FP32")],
                  model_name="mobilenet_v2")
    (root / "spec.toml").write_text(SPEC)
    return root


def _build(workdir: Path, mode: str, **kw: Any) -> Any:
    from vqz_edge.spec import load_spec
    from vqz_edge.targets import get_target
    from vqz_edge.trt.builder import BuildRequest, run_build

    req = BuildRequest(spec=load_spec(workdir / "spec.toml"), target=get_target("orin-nx-16gb"), mode=mode,
                       out_root=workdir / "engines", calibration_dir=workdir / "calibration" / "mobilenet_v2",
                       allow_gpu_mismatch=True, **kw)  # the manifest records the real GPU
    return run_build(req)


def _run_engine(engine: Path, x: np.ndarray) -> np.ndarray:
    """Through vqz-edge's own runtime (manifest check, zero-copy buffers on a Jetson)."""
    from vqz_edge.runtime import open_runner

    with open_runner(engine.parent) as runner:
        return np.concatenate([runner.run({"input": x[i:i + 8]})["output"] for i in range(0, len(x), 8)])


def _cosine(a: np.ndarray, b: np.ndarray) -> float:
    a, b = a.reshape(len(a), -1).astype(np.float64), b.reshape(len(b), -1).astype(np.float64)
    return float(np.mean(np.sum(a * b, 1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))))


def _check_against_onnxruntime(workdir: Path, engine: Path, mode: str) -> float:
    """FP16 engines reproduce the FP32 model; INT8 engines reproduce the Q/DQ model (the same scales), and are as
    close to FP32 as the Q/DQ model is (its own agreement with FP32 is what calibration achieved: ~0.94-0.95 cosine
    on the demo's held-out crops, not a fixed number)."""
    from vqz_edge.data import demo_crops
    from vqz_edge.ort import run, session

    x = demo_crops("evaluation", 32)
    cal = workdir / "calibration" / "mobilenet_v2"
    ref = run(session(cal / "model.onnx"), {"input": x})[0]
    got = _run_engine(engine, x)
    if mode == "fp16":
        cos = _cosine(got, ref)
        assert cos >= MIN_COSINE[mode], f"{mode}: logit cosine vs ONNX Runtime FP32 {cos:.4f} < {MIN_COSINE[mode]}"
        return cos
    qdq = run(session(cal / "model.qdq.onnx"), {"input": x})[0]
    cos = _cosine(got, qdq)
    assert cos >= MIN_COSINE[mode], f"{mode}: logit cosine vs the Q/DQ model on ONNX Runtime {cos:.4f} < {MIN_COSINE[mode]}"
    floor = _cosine(qdq, ref) - 0.02
    assert _cosine(got, ref) >= floor, f"{mode}: further from FP32 ({_cosine(got, ref):.4f}) than the Q/DQ model allows"
    return cos


def _precisions(manifest: dict[str, Any]) -> dict[str, str | None]:
    return {x["name"]: x["precision"] for x in manifest["layers"]}


def test_fp16_engine(workdir: Path) -> None:
    import tensorrt

    from vqz_edge.versions import parse_trt_version

    version = parse_trt_version(str(tensorrt.__version__))
    if not version.supports_weak_typing:
        pytest.skip(f"TensorRT {version} has no FP16 builder flag (strongly typed only)")
    out = _build(workdir, "fp16")
    assert out.status == "built" and out.mode == "fp16"
    m = out.manifest
    assert m["gpu"]["compute_capability"] == _gpu().compute_capability  # type: ignore[attr-defined]
    assert m["io"][0]["profile_max"] == [8, 3, 224, 224] and len(m["device_memory_bytes"]) == 1
    prec = _precisions(m)
    assert "int8" not in prec.values()
    head = [n for n in prec if "classifier" in n]
    # pinned FP32 (None: fused inside a larger layer where the inspector cannot show its precision)
    assert head and all(prec[n] in ("fp32", None) for n in head), {n: prec[n] for n in head}
    _check_against_onnxruntime(workdir, out.directory / "model.engine", "fp16")


def test_int8_implicit_from_offline_cache(workdir: Path) -> None:
    import tensorrt

    from vqz_edge.artifacts.calib_cache import read_cache
    from vqz_edge.versions import parse_trt_version

    version = parse_trt_version(str(tensorrt.__version__))
    if not version.supports_implicit_int8:
        pytest.skip(f"implicit INT8 calibration does not exist in TensorRT {version}")
    if read_cache(workdir / "calibration/mobilenet_v2/calibration.cache").version_code != version.code:
        pytest.skip(f"the calibration cache was not made for TensorRT {version} (see VQZ_EDGE_TRT_TEST_CALIBRATION)")
    out = _build(workdir, "implicit")
    m = out.manifest
    assert m["build"]["calibration"]["offline_cache_used"] is True, m["build"]["calibration"]
    assert m["build"]["calibration"]["device_batches"] == 0  # the device needed no data
    assert m["inputs"]["cache_sha256"] is not None
    prec = _precisions(m)
    convs = [n for n in prec if n.endswith("/Conv")]
    assert sum(prec[n] == "int8" for n in convs) >= 0.9 * len(convs), out.report.summary()
    assert all(prec[n] != "int8" for n in prec if "classifier" in n)
    _check_against_onnxruntime(workdir, out.directory / "model.engine", "implicit")


def test_int8_explicit_from_qdq_model(workdir: Path) -> None:
    out = _build(workdir, "explicit")
    m = out.manifest
    prec = _precisions(m)
    convs = [n for n in prec if n.endswith("/Conv")]
    assert sum(prec[n] == "int8" for n in convs) >= 0.9 * len(convs), out.report.summary()
    assert all(prec[n] != "int8" for n in prec if "classifier" in n)
    _check_against_onnxruntime(workdir, out.directory / "model.engine", "explicit")

    again = _build(workdir, "explicit")  # same inputs, same TensorRT: skipped
    assert again.status == "skipped" and again.key == out.key
    forced = _build(workdir, "explicit", force=True)
    assert forced.status == "built" and (out.directory / "timing.cache").stat().st_size > 0


def test_parser_errors_name_the_node(tmp_path: Path) -> None:
    import onnx
    from onnx import TensorProto, helper

    from vqz_edge.errors import EngineBuildError
    from vqz_edge.trt.compat import import_tensorrt, runtime_version
    from vqz_edge.trt.constraints import ProfileShapes, decide_build
    from vqz_edge.trt.engine import EngineConfig, build_engine

    x = helper.make_tensor_value_info("input", TensorProto.FLOAT, [1, 4])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4])
    node = helper.make_node("NoSuchOp", ["input"], ["y"], name="broken/NoSuchOp", domain="vqz.test")
    model = helper.make_model(helper.make_graph([node], "g", [x], [y]),
                              opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid("vqz.test", 1)])
    path = tmp_path / "broken.onnx"
    onnx.save(model, str(path))
    version = runtime_version(import_tensorrt())
    cfg = EngineConfig(onnx_path=path, decision=decide_build(version, "explicit", have_cache=False, have_qdq=True),
                       profiles=(ProfileShapes("input", (1, 4), (1, 4), (1, 4)),), workspace_bytes=1 << 28)
    with pytest.raises(EngineBuildError, match="NoSuchOp"):
        build_engine(cfg)
