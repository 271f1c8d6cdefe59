"""The runtime: manifest verification (CPU), the ONNX Runtime backend end to end, refusal before loading."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from tests.conftest import run_cli
from vqz_edge.artifacts.engine_manifest import (
    EngineMismatchError,
    ManifestError,
    load_manifest,
    verify_manifest,
)
from vqz_edge.errors import DependencyError, InputError
from vqz_edge.memory import BudgetError
from vqz_edge.runtime import open_runner
from vqz_edge.runtime.bench import benchmark
from vqz_edge.targets import Target

MIB = 1 << 20


def write_fake_engine(
    directory: Path, *, payload: bytes | None = None, device_memory: list[int] | None = None, **overrides: Any
) -> Path:
    """An engine directory as the builder writes it, with a stand-in engine file (random bytes)."""
    directory.mkdir(parents=True, exist_ok=True)
    data = payload if payload is not None else np.random.default_rng(0).bytes(4096)
    (directory / "model.engine").write_bytes(data)
    manifest: dict[str, Any] = {
        "schema": 1, "vqz_edge_version": "0.1.0", "model": "mobilenet_v2", "target": "orin-nx-16gb",
        "engine": {"file": "model.engine", "sha256": hashlib.sha256(data).hexdigest(), "bytes": len(data)},
        "tensorrt_version": "10.3.0", "gpu": {"name": "Orin", "compute_capability": "8.7", "integrated": True},
        "jetpack": "6.2", "l4t": "36.4.3", "mode": "implicit",
        "inputs": {"onnx_sha256": "0" * 64, "cache_sha256": None, "spec_sha256": "1" * 64, "plan_sha256": "2" * 64},
        "io": [
            {"name": "input", "mode": "input", "dtype": "float32", "shape": [-1, 3, 224, 224],
             "profile_min": [1, 3, 224, 224], "profile_opt": [1, 3, 224, 224], "profile_max": [8, 3, 224, 224]},
            {"name": "output", "mode": "output", "dtype": "float32", "shape": [-1, 1000]},
        ],
        "device_memory_bytes": device_memory or [12 * MIB],
        "layers": [{"name": "/features/features.0/features.0.0/Conv", "precision": "int8", "planned": "int8"}],
        "build": {"seconds": 12.3, "host": "orin", "built_at": "2026-11-25T00:00:00Z"},
    }
    manifest.update(overrides)
    (directory / "manifest.json").write_text(json.dumps(manifest), encoding="utf-8")
    return directory


# ------------------------------------------------------------------------------------------ manifest


def test_manifest_loads_from_dir_engine_or_json(tmp_path: Path) -> None:
    d = write_fake_engine(tmp_path / "e")
    for p in (d, d / "model.engine", d / "manifest.json"):
        m = load_manifest(p)
        assert (m.model, m.target, m.tensorrt_version, m.compute_capability) == ("mobilenet_v2", "orin-nx-16gb", "10.3.0", "8.7")
        assert m.engine_path == (d / "model.engine").resolve()
        assert [t.name for t in m.inputs] == ["input"] and m.max_batch == 8
    assert verify_manifest(m, trt_version="10.3.0", compute_capability="8.7") == m.engine_path
    # tensorrt.__version__ has four parts on some releases
    assert verify_manifest(m, trt_version="10.3.0.30", compute_capability="8.7") == m.engine_path


def test_manifest_hash_mismatch_refused(tmp_path: Path) -> None:
    d = write_fake_engine(tmp_path / "e")
    raw = bytearray((d / "model.engine").read_bytes())
    raw[100] ^= 0xFF  # same size, different content
    (d / "model.engine").write_bytes(bytes(raw))
    with pytest.raises(EngineMismatchError, match="sha256") as e:
        verify_manifest(load_manifest(d), trt_version="10.3.0", compute_capability="8.7")
    assert "rebuild the engine on this device" in str(e.value) and e.value.exit_code == 5
    (d / "model.engine").write_bytes(bytes(raw[:-1]))
    with pytest.raises(EngineMismatchError, match="truncated"):
        verify_manifest(load_manifest(d), trt_version="10.3.0", compute_capability="8.7")
    (d / "model.engine").unlink()
    with pytest.raises(EngineMismatchError, match="does not exist"):
        verify_manifest(load_manifest(d), trt_version="10.3.0", compute_capability="8.7")


def test_manifest_trt_version_mismatch_refused(tmp_path: Path) -> None:
    m = load_manifest(write_fake_engine(tmp_path / "e"))
    with pytest.raises(EngineMismatchError, match=r"built with TensorRT 10\.3\.0, this device runs TensorRT 8\.6\.2") as e:
        verify_manifest(m, trt_version="8.6.2", compute_capability="8.7")
    assert "--target orin-nx-16gb" in str(e.value)
    with pytest.raises(EngineMismatchError, match="10.3.1"):
        verify_manifest(m, trt_version="10.3.1", compute_capability="8.7")


def test_manifest_compute_capability_mismatch_refused(tmp_path: Path) -> None:
    m = load_manifest(write_fake_engine(tmp_path / "e"))
    with pytest.raises(EngineMismatchError, match="compute capability 8.7 .*this GPU is 9.0") as e:
        verify_manifest(m, trt_version="10.3.0", compute_capability="9.0")
    assert "rebuild" in str(e.value)


@pytest.mark.parametrize(
    ("change", "match"),
    [
        ({"schema": 2}, "schema 2 is not supported"),
        ({"tensorrt_version": "ten"}, "not of the form"),
        ({"mode": "int4"}, "mode 'int4'"),
        ({"device_memory_bytes": []}, "device_memory_bytes"),
        ({"io": [{"name": "x", "mode": "input", "dtype": "float32", "shape": [1]}]}, "at least one input and one output"),
        ({"engine": {"file": "../x.engine", "sha256": "0" * 64, "bytes": 1}}, "plain file name"),
        ({"gpu": {"name": "Orin"}}, "compute_capability"),
    ],
)
def test_manifest_schema_errors(tmp_path: Path, change: dict[str, Any], match: str) -> None:
    d = write_fake_engine(tmp_path / "e", **change)
    with pytest.raises(ManifestError, match=match):
        load_manifest(d)


def test_manifest_missing_or_corrupt(tmp_path: Path) -> None:
    with pytest.raises(ManifestError, match="no manifest.json"):
        load_manifest(tmp_path)
    (tmp_path / "manifest.json").write_text("{not json", encoding="utf-8")
    with pytest.raises(ManifestError, match="not valid JSON"):
        load_manifest(tmp_path)


def test_engine_needs_tensorrt_here(tmp_path: Path) -> None:
    """On this CPU host an engine cannot run: a clear DependencyError (exit 3), after the manifest was read."""
    d = write_fake_engine(tmp_path / "e")
    with pytest.raises(DependencyError, match="TensorRT is not installed") as e:
        open_runner(d)
    assert e.value.exit_code == 3
    with pytest.raises(InputError, match="ONNX Runtime runs .onnx files"):
        open_runner(d, backend="onnxruntime")


# ------------------------------------------------------------------------------------------ ONNX Runtime backend


def _photo(name: str) -> Path:
    import skimage

    return Path(skimage.__file__).parent / "data" / name


def test_ort_backend_end_to_end(mobilenet_onnx: Path) -> None:
    from vqz_edge import ort
    from vqz_edge.cli.run_cmd import classify, load_inputs
    from vqz_edge.data import demo_crops

    with open_runner(mobilenet_onnx) as r:
        assert r.backend == "onnxruntime"
        assert [(i.name, i.dtype, i.shape) for i in r.inputs] == [("input", "float32", (-1, 3, 224, 224))]
        assert [(o.name, o.shape) for o in r.outputs] == [("output", (-1, 1000))]
        x = demo_crops("evaluation", 3)
        out = r.run({"input": x})["output"]
        ref = ort.run(ort.session(mobilenet_onnx), {"input": x})[0]
        np.testing.assert_array_equal(out, ref)
        single = r.run({"input": x[:1].astype(np.float64)})["output"]  # same-kind cast, dynamic batch
        np.testing.assert_allclose(single, ref[:1], rtol=1e-5, atol=1e-5)
        cat, _ = load_inputs([_photo("chelsea.png")], r.inputs[0].shape)
        top = classify(r.run({"input": cat})["output"], 5, [str(i) for i in range(1000)])[0]
        assert 281 <= top[0]["index"] <= 285  # ImageNet's domestic cat classes: chelsea is a tabby cat
    with pytest.raises(InputError, match="closed"):
        r.run({"input": x})


@pytest.mark.parametrize(
    ("feeds", "match"),
    [
        ({"image": np.zeros((1, 3, 224, 224), np.float32)}, "missing \\['input'\\], unexpected \\['image'\\]"),
        ({"input": np.zeros((3, 224, 224), np.float32)}, "rank 4"),
        ({"input": np.zeros((1, 1, 224, 224), np.float32)}, "dim 1 is 1, the model takes 3"),
        ({"input": np.zeros((1, 3, 224, 224), np.complex64)}, "dtype complex64"),
    ],
)
def test_ort_backend_rejects_bad_feeds(mobilenet_onnx: Path, feeds: dict[str, Any], match: str) -> None:
    with open_runner(mobilenet_onnx, check_memory=False) as r, pytest.raises(InputError, match=match):
        r.run(feeds)


def test_refuses_before_creating_a_session(mobilenet_onnx: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from vqz_edge import ort

    created: list[Any] = []
    real = ort.session

    def counting(*a: Any, **k: Any) -> Any:
        created.append(a)
        return real(*a, **k)

    monkeypatch.setattr(ort, "session", counting)
    tiny = Target(name="tiny-board", display_name="Tiny board", ram_bytes=1024 * MIB, gpu_sm_count=2,
                  compute_capability="8.7", dla_cores=0, default_jetpack="6.2", default_trt_version="10.3.0",
                  os_reserve_bytes=600 * MIB, origin="test")
    with pytest.raises(BudgetError) as e:
        open_runner(mobilenet_onnx, target=tiny)
    assert created == []  # refused before ONNX Runtime saw the model
    msg = str(e.value)
    assert "refusing creating the ONNX Runtime session" in msg and "DOES NOT FIT on tiny-board" in msg
    assert "OS + services reserve" in msg and e.value.exit_code == 7
    # on this host without a target: checked against the free memory; an absurd batch does not fit
    with pytest.raises(BudgetError, match="this-host"):
        open_runner(mobilenet_onnx, max_batch=200_000)
    assert created == []
    with open_runner(mobilenet_onnx, target="orin-nano-4gb", max_batch=8):
        pass
    assert len(created) == 1


def test_benchmark_library(mobilenet_onnx: Path) -> None:
    with open_runner(mobilenet_onnx) as r:
        res = benchmark(r, batch=2, iterations=5, warmup=1, sample_jtop=False)
    d = res.to_dict()
    assert len(res.latencies_ms) == 5 and res.input_shapes == {"input": [2, 3, 224, 224]}
    lat = d["latency_ms"]
    assert 0 < lat["min"] <= lat["p50"] <= lat["p90"] <= lat["p99"] <= lat["max"]
    assert d["throughput_per_s"] == pytest.approx(2 * 5 / (sum(res.latencies_ms) / 1000))
    assert d["peak_memory"]["process_peak_rss_bytes"] > 10 * MIB


def test_run_and_bench_cli(mobilenet_onnx: Path) -> None:
    r = run_cli("run", str(mobilenet_onnx), "--input", str(_photo("chelsea.png")), str(_photo("coffee.png")), "--json")
    assert r.returncode == 0, r.stderr
    doc = json.loads(r.stdout)
    assert doc["backend"] == "onnxruntime" and doc["outputs"]["output"]["shape"] == [2, 1000]
    cat, coffee = (t["predictions"] for t in doc["top_k"])
    assert "cat" in cat[0]["label"].lower()
    assert coffee[0]["label"] in ("cup", "coffee mug", "espresso", "eggnog")
    r = run_cli("bench", str(mobilenet_onnx), "--batch", "2", "--iterations", "5", "--warmup", "1", "--json")
    assert r.returncode == 0, r.stderr
    b = json.loads(r.stdout)
    assert b["batch"] == 2 and b["iterations"] == 5 and b["runner"]["backend"] == "onnxruntime"
    assert b["latency_ms"]["p50"] > 0 and b["throughput_per_s"] > 0
    r = run_cli("run", str(mobilenet_onnx), "--input", str(_photo("chelsea.png")), "--target", "no-such-board")
    assert r.returncode == 2 and "known targets" in r.stderr


@pytest.mark.slow
def test_ort_backend_qdq_model(mobilenet_onnx: Path, tmp_path: Path) -> None:
    """A Q/DQ MobileNetV2 (ONNX Runtime static quantization on demo calibration photos, classifier kept in FP32 as
    the precision policy's preset does) runs through the same API, mostly agrees with FP32, and is estimated INT8."""
    from onnxruntime.quantization import (
        CalibrationDataReader,
        CalibrationMethod,
        QuantFormat,
        QuantType,
        quantize_static,
    )

    from vqz_edge.cli.run_cmd import load_inputs
    from vqz_edge.data import demo_crops
    from vqz_edge.memory.estimate import estimate_onnx

    calib = demo_crops("calibration", 16)

    class Reader(CalibrationDataReader):
        def __init__(self) -> None:
            self.it = iter([{"input": calib[i:i + 1]} for i in range(len(calib))])

        def get_next(self) -> dict[str, np.ndarray] | None:
            return next(self.it, None)

    qdq = tmp_path / "model.qdq.onnx"
    quantize_static(str(mobilenet_onnx), str(qdq), Reader(), quant_format=QuantFormat.QDQ,
                    activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8, per_channel=True,
                    calibrate_method=CalibrationMethod.MinMax, nodes_to_exclude=["/classifier/classifier.1/Gemm"])
    photos = ["chelsea.png", "coffee.png", "astronaut.png", "rocket.jpg", "motorcycle_left.png"]
    x = np.concatenate([load_inputs([_photo(p) for p in photos], (-1, 3, 224, 224))[0], demo_crops("evaluation", 8)])
    with open_runner(mobilenet_onnx) as fp32, open_runner(qdq) as q:
        assert q.describe()["qdq"] is True and q.inputs == fp32.inputs
        a = fp32.run({"input": x})["output"].argmax(1)
        b = q.run({"input": x})["output"].argmax(1)
    assert (a == b).sum() >= 8, (a, b)  # measured: 9 of 13 agree
    assert 281 <= b[0] <= 285  # chelsea is still a cat
    e_q, e_f = estimate_onnx(qdq), estimate_onnx(mobilenet_onnx)
    assert e_q.precision == "int8" and e_q.details["qdq"]
    # the convolutions' 2.2M weights are stored and counted as int8; the FP32 classifier (1.28M) stays fp16
    assert e_q.details["weights_by_precision"]["int8"] > 2_000_000
    assert e_q.items[0].bytes < 0.75 * e_f.items[0].bytes
