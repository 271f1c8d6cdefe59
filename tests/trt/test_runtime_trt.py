"""TensorRT runtime on a real GPU (Jetson or x86 + NVIDIA GPU): `pytest -m trt tests/trt`.

Skipped (with the reason shown) where TensorRT, pycuda or a GPU is missing, e.g. on the CPU CI host.
The engine is built here with TensorRT's own builder API (FP32, TF32 off, dynamic batch 1..4) so this test
does not depend on `vqz-edge build`; its manifest follows the schema the builder writes.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from vqz_edge.trt.compat import tensorrt_available

pytestmark = [
    pytest.mark.trt,
    pytest.mark.skipif(not tensorrt_available(), reason="TensorRT is not installed on this host: run on a Jetson "
                       "(JetPack ships it) or an x86 host with TensorRT and an NVIDIA GPU"),
]


def _cuda() -> Any:
    try:
        import pycuda.driver as cuda
    except ImportError:
        pytest.skip("pycuda is not installed (pip install 'vqz-edge[jetson]')")
    cuda.init()
    if cuda.Device.count() == 0:
        pytest.skip("no CUDA device")
    return cuda


@pytest.fixture(scope="module")
def engine_dir(tmp_path_factory: pytest.TempPathFactory, mobilenet_onnx: Path) -> Path:
    cuda = _cuda()
    import tensorrt as trt

    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    flags = 0 if int(trt.__version__.split(".")[0]) >= 10 else 1 << int(trt.NetworkDefinitionCreationFlag.EXPLICIT_BATCH)
    network = builder.create_network(flags)
    parser = trt.OnnxParser(network, logger)
    assert parser.parse(mobilenet_onnx.read_bytes()), [parser.get_error(i) for i in range(parser.num_errors)]
    config = builder.create_builder_config()
    config.clear_flag(trt.BuilderFlag.TF32)
    profile = builder.create_optimization_profile()
    profile.set_shape("input", (1, 3, 224, 224), (2, 3, 224, 224), (4, 3, 224, 224))
    config.add_optimization_profile(profile)
    plan = builder.build_serialized_network(network, config)
    assert plan is not None
    data = bytes(plan)
    engine = trt.Runtime(logger).deserialize_cuda_engine(data)
    dev = cuda.Device(0)
    major, minor = dev.compute_capability()
    out = tmp_path_factory.mktemp("engine")
    (out / "model.engine").write_bytes(data)
    manifest = {
        "schema": 1, "vqz_edge_version": "0.1.0", "model": "mobilenet_v2", "target": "",
        "engine": {"file": "model.engine", "sha256": hashlib.sha256(data).hexdigest(), "bytes": len(data)},
        "tensorrt_version": trt.__version__,
        "gpu": {"name": dev.name(), "compute_capability": f"{major}.{minor}",
                "integrated": bool(dev.get_attribute(cuda.device_attribute.INTEGRATED))},
        "jetpack": None, "l4t": None, "mode": "fp32",
        "inputs": {"onnx_sha256": hashlib.sha256(mobilenet_onnx.read_bytes()).hexdigest(), "cache_sha256": None,
                   "spec_sha256": None, "plan_sha256": None},
        "io": [
            {"name": "input", "mode": "input", "dtype": "float32", "shape": [-1, 3, 224, 224],
             "profile_min": [1, 3, 224, 224], "profile_opt": [2, 3, 224, 224], "profile_max": [4, 3, 224, 224]},
            {"name": "output", "mode": "output", "dtype": "float32", "shape": [-1, 1000]},
        ],
        "device_memory_bytes": [int(engine.device_memory_size)],
        "layers": [], "build": {"seconds": 0.0, "host": "pytest", "built_at": ""},
    }
    (out / "manifest.json").write_text(json.dumps(manifest), encoding="utf-8")
    return out


def test_trt_matches_onnxruntime(engine_dir: Path, mobilenet_onnx: Path) -> None:
    from vqz_edge.data import demo_crops
    from vqz_edge.runtime import open_runner

    x = demo_crops("evaluation", 3)
    with open_runner(mobilenet_onnx) as ref_runner:
        ref = ref_runner.run({"input": x})["output"]
    with open_runner(engine_dir) as r:
        assert r.backend == "tensorrt"
        info = r.inputs[0]
        assert (info.shape, info.min_shape, info.max_shape) == ((-1, 3, 224, 224), (1, 3, 224, 224), (4, 3, 224, 224))
        for batch in (1, 3):  # dynamic shapes within the profile, buffers reused
            out = r.run({"input": x[:batch]})["output"]
            assert out.shape == (batch, 1000)
            np.testing.assert_array_equal(out.argmax(1), ref[:batch].argmax(1))
            assert np.abs(out - ref[:batch]).max() < 1e-2
        d = r.describe()
        assert d["zero_copy"] == d["integrated"]  # Jetson: mapped pinned memory; discrete: device buffers
        from vqz_edge.errors import InputError

        with pytest.raises(InputError, match="outside the profile"):
            r.run({"input": np.zeros((5, 3, 224, 224), np.float32)})


def test_mismatched_manifest_refused(engine_dir: Path, tmp_path: Path) -> None:
    from vqz_edge.runtime import EngineMismatchError, open_runner

    bad = tmp_path / "bad"
    shutil.copytree(engine_dir, bad)
    m = json.loads((bad / "manifest.json").read_text())
    m["tensorrt_version"] = "8.5.2" if not m["tensorrt_version"].startswith("8.5") else "10.3.0"
    (bad / "manifest.json").write_text(json.dumps(m))
    with pytest.raises(EngineMismatchError, match="rebuild"):
        open_runner(bad)
    m = json.loads((engine_dir / "manifest.json").read_text())
    m["gpu"]["compute_capability"] = "5.3"
    (bad / "manifest.json").write_text(json.dumps(m))
    with pytest.raises(EngineMismatchError, match="compute capability 5.3"):
        open_runner(bad)


def test_budget_refusal_on_device(engine_dir: Path) -> None:
    from vqz_edge.memory import BudgetError, MemoryItem
    from vqz_edge.runtime import open_runner

    with pytest.raises(BudgetError, match="refusing"):
        open_runner(engine_dir, resident=[MemoryItem("pretend LLM", 1 << 50, "", "resident")])


def test_bench_on_device(engine_dir: Path) -> None:
    from vqz_edge.runtime import open_runner
    from vqz_edge.runtime.bench import benchmark

    with open_runner(engine_dir) as r:
        res = benchmark(r, batch=4, iterations=20, warmup=5)
    assert res.percentile(50) > 0 and res.throughput > 0
    with open_runner(engine_dir) as r, pytest.raises(Exception, match="exceeds"):
        benchmark(r, batch=8, iterations=1, warmup=0)
