"""TensorRT runtime on a real GPU (Jetson or x86 + NVIDIA GPU): `pytest -m trt tests/trt`.

Skipped (with the reason shown) where TensorRT, pycuda or a GPU is missing, e.g. on the CPU CI host.
The engine is built with vqz-edge's builder (``build_engine``: FP16 where the version has the flag, else strongly
typed FP32; dynamic batch 1..4) without the plan and inspector checks of `vqz-edge build`.
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
    """The demo MobileNetV2 built with vqz-edge's builder (FP16 where TensorRT has the flag, else strongly
    typed FP32), dynamic batch 1..4, and the manifest the builder writes."""
    _cuda()
    from vqz_edge.artifacts.engine_manifest import build_manifest, write_engine_and_manifest
    from vqz_edge.device import read_gpu
    from vqz_edge.trt.compat import import_tensorrt, runtime_version
    from vqz_edge.trt.constraints import BuildDecision, ProfileShapes
    from vqz_edge.trt.engine import EngineConfig, build_engine

    version = runtime_version(import_tensorrt())
    weak = version.supports_weak_typing
    decision = BuildDecision("fp16" if weak else "explicit", not weak, weak, False, False, ())
    cfg = EngineConfig(onnx_path=mobilenet_onnx, decision=decision,
                       profiles=(ProfileShapes("input", (1, 3, 224, 224), (2, 3, 224, 224), (4, 3, 224, 224)),),
                       workspace_bytes=1 << 30)
    built = build_engine(cfg)
    gpu = read_gpu()
    assert gpu is not None
    out = tmp_path_factory.mktemp("engine")
    manifest = build_manifest(
        model="mobilenet_v2", target="", engine=built.engine, tensorrt_version=str(version), gpu=gpu.to_dict(),
        l4t=None, jetpack=None, mode=decision.mode,
        inputs={"onnx_sha256": hashlib.sha256(mobilenet_onnx.read_bytes()).hexdigest(), "cache_sha256": None,
                "spec_sha256": "0" * 64, "plan_sha256": None},
        io=built.io, device_memory_bytes=built.device_memory_bytes, layers=[],
        build={"seconds": round(built.seconds, 2), "host": "pytest", "built_at": "", "key": "tests/trt", "dla_core": None},
    )
    write_engine_and_manifest(out, built.engine, manifest)
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
            assert np.abs(out - ref[:batch]).max() < 0.02 * np.abs(ref[:batch]).max()  # FP16 where the version has it
        d = r.describe()
        assert d["zero_copy"] == d["integrated"]  # Jetson: mapped pinned memory; discrete: device buffers
        from vqz_edge.errors import InputError

        with pytest.raises(InputError, match="outside the profile"):
            r.run({"input": np.zeros((5, 3, 224, 224), np.float32)})


def test_mismatched_manifest_refused(engine_dir: Path, tmp_path: Path) -> None:
    from vqz_edge.artifacts.engine_manifest import EngineMismatchError
    from vqz_edge.runtime import open_runner

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
