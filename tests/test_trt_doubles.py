"""The TensorRT half, executed against version-faithful doubles of tensorrt 8.5 / 8.6 / 10.3 / 11.1 and pycuda
(tests/doubles: API surfaces extracted from NVIDIA's and pycuda's sources, behaviour from the cited sources).

Three groups:

* the doubles are strict: what a release lacks raises, what it has behaves as its source says;
* one test per defect the source reading found (issue 15, items 1-9), each failing on the code before the fix;
* the real code paths on every version: build (explicit / implicit / fp16 where the version has them, DLA with GPU
  fallback) -> manifest -> inspector check -> open_runner + run + bench with zero-copy buffers -> install with
  the TensorRT backend and its smoke test -> rebuild after a JetPack upgrade (8.6 -> 10.3).

Nothing here has run against a real TensorRT: tests/trt does that on a device (tools/run_trt_tests.sh).
"""

from __future__ import annotations

import json
import threading
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from tests.bundle_fixtures import NV_TEGRA_60, NV_TEGRA_61, fake_jetson, make_calibration_dir
from tests.doubles import TRT_KEYS, DoubleHandles, install_doubles, trt_double
from vqz_edge.artifacts.calib_cache import CalibrationCache, write_cache
from vqz_edge.artifacts.engine_manifest import load_manifest
from vqz_edge.errors import DependencyError, EngineBuildError
from vqz_edge.spec import load_spec
from vqz_edge.targets import get_target
from vqz_edge.trt.builder import BuildOutcome, BuildRequest, run_build
from vqz_edge.trt.constraints import onnx_nodes_from_metadata
from vqz_edge.trt.inspect import parse_engine_info
from vqz_edge.versions import parse_trt_version

WEAK = ("8.5", "8.6", "10.3")  # versions with FP16/INT8 flags, layer precisions and the implicit calibrator


@pytest.fixture(params=TRT_KEYS)
def double(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> DoubleHandles:
    return install_doubles(monkeypatch, request.param)


def _tiny(tmp_path: Path, version: str | None = None) -> tuple[Path, Path]:
    """The tiny CNN's workstation output (spec.toml, calibration/tiny/ with a plan keeping /fc/Gemm FP32), the
    cache stamped for ``version`` (as `vqz-edge calibrate --trt-version` would)."""
    spec, cal = make_calibration_dir(tmp_path / "ws")
    if version:
        write_cache(cal / "calibration.cache",
                    CalibrationCache.from_amax({"input": 3.0, "c": 2.5, "r": 2.5}, parse_trt_version(version).code))
    return spec, cal


def _build(spec: Path, cal: Path, out: Path, mode: str = "auto", **kw: Any) -> BuildOutcome:
    req = BuildRequest(spec=load_spec(spec), target=get_target(kw.pop("target", "orin-nx-16gb")), mode=mode,
                       out_root=out, calibration_dir=cal, **kw)
    return run_build(req)


def _x(n: int = 2) -> np.ndarray:
    return np.random.default_rng(0).standard_normal((n, 3, 8, 8)).astype(np.float32)


def _ort(path: Path, x: np.ndarray) -> np.ndarray:
    from vqz_edge.ort import run, session

    return np.asarray(run(session(path), {"input": x})[0])


# ------------------------------------------------------------------------------------- the doubles are strict


def test_every_double_has_exactly_its_releases_names(double: DoubleHandles) -> None:
    trt = double.trt
    assert trt is not None
    key = double.state.key
    v11 = key == "11.1"
    assert hasattr(trt, "IInt8EntropyCalibrator2") is not v11  # removed in 11 (no pyInt8.cpp at v11.1)
    assert hasattr(trt.BuilderFlag, "FP16") is not v11 and hasattr(trt.ILayer, "precision") is not v11
    assert hasattr(trt.ICudaEngine, "device_memory_size") is not v11
    assert hasattr(trt.ICudaEngine, "get_device_memory_size_for_profile_v2") is (key in ("10.3", "11.1"))
    assert hasattr(trt.ILayer, "metadata") is (key != "8.5")  # ILayer.metadata: 8.6+
    assert hasattr(trt.ICudaEngine, "num_bindings") is (key in ("8.5", "8.6"))  # bindings API gone in 10
    assert hasattr(trt, "OnnxParserFlag") is (key != "8.5")
    assert not hasattr(trt, "no_such_name") and not hasattr(trt.Builder, "build_engine_everywhere")
    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    with pytest.raises(AttributeError):
        builder.invented_attribute = 1  # pybind11 objects have no __dict__
    with pytest.raises(AttributeError):
        trt.Runtime(logger).num_DLA_cores = 3  # read-only property
    assert trt.Runtime(logger).DLA_core == -1  # TensorRT's default: no core chosen (a DLA engine runs on 0)
    with pytest.raises(NotImplementedError, match="exists in TensorRT"):
        _ = builder.create_network(0).add_einsum  # in the release, not in the double: never a silent pass

    class NoBaseInit(trt.ILogger):
        def __init__(self) -> None:  # forgets trt.ILogger.__init__(self), as pybind11 rejects
            pass

        def log(self, severity: Any, msg: str) -> None:
            pass

    with pytest.raises(TypeError, match="__init__"):
        trt.Builder(NoBaseInit())


def test_surfaces_come_from_the_tagged_sources() -> None:
    for key, filename in trt_double.SURFACES.items():
        doc = json.loads((Path(trt_double.__file__).parent / "api" / filename).read_text())
        assert doc["repository"] == "https://github.com/NVIDIA/TensorRT" and len(doc["commit"]) == 40
        assert doc["tag"].lstrip("v").startswith(key), (key, doc["tag"])
        assert "python/src/infer/pyCore.cpp" in doc["sources"]
        assert len(doc["classes"]) > 140 and "ICudaEngine" in doc["classes"]


def test_pycuda_double_binds_contexts_to_threads(monkeypatch: pytest.MonkeyPatch) -> None:
    h = install_doubles(monkeypatch, None)
    cuda = h.driver
    with pytest.raises(cuda.LogicError, match="initialization error"):
        cuda.Device(0)  # cuInit first
    cuda.init()
    with pytest.raises(cuda.LogicError, match="no currently active context"):
        cuda.Stream()
    ctx = cuda.Device(0).retain_primary_context()
    ctx.push()
    alloc = cuda.mem_alloc(64)
    cuda.Context.pop()
    errors: list[BaseException] = []

    def other() -> None:
        try:
            alloc.free()  # context current nowhere in this thread, owned by another
        except cuda.LogicError as exc:
            errors.append(exc)

    t = threading.Thread(target=other)
    t.start()
    t.join()
    assert errors and "out-of-thread" in str(errors[0])
    ctx.detach()
    with pytest.raises(cuda.LogicError, match="dead context"):
        alloc.free()
    with pytest.raises(cuda.LogicError, match="cannot pop non-current context"):
        cuda.Context.pop()
    assert not hasattr(cuda.Stream, "free")  # pycuda streams have no free(): destroyed when collected


# ------------------------------------------------------------------------------------- one test per defect


def test_defect1_trt11_build_records_device_memory_from_the_v2_api(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """TensorRT 11 has only the _v2 device-memory calls; the build used to crash after building."""
    install_doubles(monkeypatch, "11.1")
    spec, cal = _tiny(tmp_path)
    out = _build(spec, cal, tmp_path / "engines")
    assert out.status == "built" and out.mode == "explicit" and out.tensorrt_version == "11.1.0"
    assert out.manifest is not None and out.manifest["device_memory_bytes"][0] > 0


def _plugin_model(path: Path) -> Path:
    """Conv -> InstanceNormalization: the 8.x parsers import InstanceNormalization through the
    InstanceNormalization_TRT plugin (8.6 unless NATIVE_INSTANCENORM is set)."""
    rng = np.random.default_rng(0)
    inits = [numpy_helper.from_array(rng.standard_normal((4, 3, 3, 3)).astype(np.float32), "w"),
             numpy_helper.from_array(np.ones(4, np.float32), "gamma"),
             numpy_helper.from_array(np.zeros(4, np.float32), "beta")]
    nodes = [helper.make_node("Conv", ["input", "w"], ["c"], name="/conv/Conv", pads=[1, 1, 1, 1]),
             helper.make_node("InstanceNormalization", ["c", "gamma", "beta"], ["output"], name="/norm/InstanceNorm")]
    graph = helper.make_graph(nodes, "inorm", [helper.make_tensor_value_info("input", TensorProto.FLOAT, [1, 3, 8, 8])],
                              [helper.make_tensor_value_info("output", TensorProto.FLOAT, [1, 4, 8, 8])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, path)
    return path


@pytest.mark.parametrize("key", ["8.5", "8.6"])
def test_defect2_plugin_engine_deserialises_in_a_fresh_process(key: str, tmp_path: Path,
                                                                monkeypatch: pytest.MonkeyPatch) -> None:
    """8.x: the parser registers the plugins, so the engine builds; a fresh process must register them again
    before deserialising (the runtime used to fail there)."""
    from vqz_edge.runtime import open_runner
    from vqz_edge.trt.constraints import ProfileShapes, decide_build
    from vqz_edge.trt.engine import EngineConfig, build_engine

    install_doubles(monkeypatch, key)
    path = _plugin_model(tmp_path / "inorm.onnx")
    cfg = EngineConfig(onnx_path=path, decision=decide_build(parse_trt_version(key), "fp16", have_cache=False,
                                                             have_qdq=False),
                       profiles=(ProfileShapes("input", (1, 3, 8, 8), (1, 3, 8, 8), (1, 3, 8, 8)),), workspace_bytes=1 << 28)
    built = build_engine(cfg)
    assert any("InstanceNorm" in (x.name or "") for x in built.engine_layers)
    engine_dir = _write_engine_dir(tmp_path / "e", built, "fp16")
    h = install_doubles(monkeypatch, key)  # a fresh process: nothing registered yet
    assert h.state.plugins_registered is False
    with open_runner(engine_dir, check_memory=False) as r:
        y = r.run({"input": _x(1)})["output"]
    assert h.state.plugins_registered and y.shape == (1, 4, 8, 8)


def test_defect2_trt10_parser_needs_registered_plugins(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """10.x's parser does not register plugins itself: parsing a plugin-backed node failed unless the caller had."""
    from vqz_edge.trt.constraints import ProfileShapes, decide_build
    from vqz_edge.trt.engine import EngineConfig, build_engine

    h = install_doubles(monkeypatch, "10.3")
    trt = h.trt
    assert trt is not None
    path = tmp_path / "roi.onnx"
    x = helper.make_tensor_value_info("input", TensorProto.FLOAT, [1, 3, 8, 8])
    rois = helper.make_tensor_value_info("rois", TensorProto.FLOAT, [2, 4])
    idx = numpy_helper.from_array(np.zeros(2, np.int64), "idx")
    y = helper.make_tensor_value_info("output", TensorProto.FLOAT, [2, 3, 2, 2])
    node = helper.make_node("RoiAlign", ["input", "rois", "idx"], ["output"], name="/roi/RoiAlign", output_height=2,
                            output_width=2)
    model = helper.make_model(helper.make_graph([node], "roi", [x, rois], [y], [idx]), opset_imports=[helper.make_opsetid("", 17)])
    onnx.save(model, path)
    # TensorRT itself: without init_libnvinfer_plugins the 10.x parser fails on the plugin-backed node
    logger = trt.Logger(trt.Logger.ERROR)
    network = trt.Builder(logger).create_network(0)
    parser = trt.OnnxParser(network, logger)
    assert not parser.parse_from_file(str(path)) and "Plugin not found" in parser.get_error(0).desc()
    # vqz-edge (Polygraphy's loader) registers them first
    cfg = EngineConfig(onnx_path=path, decision=decide_build(parse_trt_version("10.3"), "fp16", have_cache=False,
                                                             have_qdq=False),
                       profiles=(ProfileShapes("input", (1, 3, 8, 8), (1, 3, 8, 8), (1, 3, 8, 8)),
                                 ProfileShapes("rois", (2, 4), (2, 4), (2, 4))), workspace_bytes=1 << 28)
    assert build_engine(cfg).engine


def _write_engine_dir(d: Path, built: Any, mode: str, dla_core: int | None = None) -> Path:
    from vqz_edge.artifacts.engine_manifest import build_manifest, write_engine_and_manifest
    from vqz_edge.device import read_gpu

    gpu = read_gpu()
    assert gpu is not None
    m = build_manifest(model="m", target="orin-nx-16gb", engine=built.engine, tensorrt_version=str(built.trt_version),
                       gpu=gpu.to_dict(), l4t=None, jetpack=None, mode=mode,
                       inputs={"onnx_sha256": "0" * 64, "cache_sha256": None, "spec_sha256": "0" * 64, "plan_sha256": None},
                       io=built.io, device_memory_bytes=built.device_memory_bytes, layers=[],
                       build={"seconds": 0, "host": "t", "built_at": "", "key": "k", "dla_core": dla_core})
    write_engine_and_manifest(d, built.engine, m)
    return d


def test_defect3_runtime_runs_a_dla_engine_on_its_core(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """An engine built for DLA core 1 must be deserialised with Runtime.DLA_core = 1 (default -1: core 0)."""
    from vqz_edge.runtime import open_runner

    install_doubles(monkeypatch, "10.3")
    spec, cal = _tiny(tmp_path)
    out = _build(spec, cal, tmp_path / "engines", mode="explicit", dla_core=1)
    assert out.manifest is not None and out.manifest["build"]["dla_core"] == 1
    fallback = out.manifest["build"]["dla_fallback"]
    assert "/fc/Gemm" in fallback and "/conv/Conv" not in fallback  # MatMul/Reduce have no DLA kernels here
    assert load_manifest(out.directory).dla_core == 1
    with open_runner(out.directory, check_memory=False) as r:
        assert r._engine._dla_core_used == 1  # type: ignore[attr-defined]  # the double records the core it ran on
        assert r.describe()["dla_core"] == 1
        assert r.run({"input": _x(1)})["output"].shape == (1, 10)


def test_defect4_metadata_with_doc_strings_and_local_functions_gives_the_bare_node_name() -> None:
    assert onnx_nodes_from_metadata("[ONNX Layer: /a/Conv | conv doc line | second line]") == ("/a/Conv",)
    assert onnx_nodes_from_metadata("[ONNX Layer: /blk/Add | Local Function: Block]\x1f[ONNX Layer: /blk/Relu]") == (
        "/blk/Add", "/blk/Relu")


def test_defect4_weakly_typed_86_build_pins_layers_whose_nodes_carry_doc_strings(tmp_path: Path,
                                                                               monkeypatch: pytest.MonkeyPatch) -> None:
    """The 8.6 parser appends doc-string lines to the metadata; the plan's nodes must still be found."""
    install_doubles(monkeypatch, "8.6")
    spec, cal = _tiny(tmp_path, "8.6.1")
    for name in ("model.onnx", "model.qdq.onnx"):
        m = onnx.load(cal / name)
        for node in m.graph.node:
            node.doc_string = f"File \"model.py\", line 12, in forward\n  {node.name}"
        onnx.save(m, cal / name)
    plan = json.loads((cal / "plan.json").read_text())
    from vqz_edge.fsutil import sha256_file

    plan["onnx_sha256"] = sha256_file(cal / "model.onnx")
    (cal / "plan.json").write_text(json.dumps(plan))
    out = _build(spec, cal, tmp_path / "engines", mode="explicit")
    assert out.report is not None
    got = {x.name: x.actual for x in out.report.layers}
    assert got["/fc/Gemm"] == "fp32" and got["/conv/Conv"] == "int8", got
    assert out.manifest is not None and out.manifest["build"]["pinned_layers"] >= 1


def test_defect5_timing_cache_corrupt_or_from_another_device(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    install_doubles(monkeypatch, "10.3")
    spec, cal = _tiny(tmp_path)
    engines = tmp_path / "engines"
    tc = engines / "tiny" / "orin-nx-16gb" / "10.3.0" / "timing.cache"
    tc.parent.mkdir(parents=True)
    tc.write_bytes(b"\x00garbage, not a timing cache")
    out = _build(spec, cal, engines, force=True)  # create_timing_cache -> None used to reach set_timing_cache
    assert out.status == "built"
    doc = json.loads(tc.read_bytes()[len(trt_double.TIMING_MAGIC):])
    assert doc["cc"] == "8.7" and doc["entries"], "the corrupt file was replaced by this build's timings"
    # a cache from another TensorRT/GPU: set_timing_cache returns False; the stale cache is replaced, not merged
    tc.write_bytes(trt_double.TIMING_MAGIC + json.dumps({"trt": "10.3.0.26", "cc": "8.9",
                                                         "entries": {"STALE:x": 1}}).encode())
    _build(spec, cal, engines, force=True)
    doc = json.loads(tc.read_bytes()[len(trt_double.TIMING_MAGIC):])
    assert doc["cc"] == "8.7" and "STALE:x" not in doc["entries"]
    before = dict(doc["entries"])
    _build(spec, cal, engines, force=True)  # a good cache is reused and merged
    assert json.loads(tc.read_bytes()[len(trt_double.TIMING_MAGIC):])["entries"] == before


def test_defect6_inspector_without_a_data_type_fails_loudly() -> None:
    ok = {"Layers": [{"Name": "/c/Conv + /c/Relu", "LayerType": "CaskConvolution",
                      "Inputs": [{"Name": "x", "Format/Datatype": "Row major linear FP16 format"}],
                      "Outputs": [{"Name": "y", "Format/Datatype": "Row major linear FP16 format"}]}]}
    assert parse_engine_info(json.dumps(ok))[0].precision == "fp16"
    drifted = json.loads(json.dumps(ok).replace("Format/Datatype", "Format/DataType"))  # a renamed field
    with pytest.raises(EngineBuildError, match="gives no data type for 1 layer"):
        parse_engine_info(json.dumps(drifted))
    with pytest.raises(EngineBuildError, match="lists no compute layer"):
        parse_engine_info(json.dumps({"Layers": []}))


@pytest.mark.parametrize("key", ["10.3", "8.5"])
def test_defect7_runner_tears_down_in_order_and_works_across_threads(key: str, tmp_path: Path,
                                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    from vqz_edge.runtime import open_runner

    h = install_doubles(monkeypatch, key)
    spec, cal = _tiny(tmp_path)
    out = _build(spec, cal, tmp_path / "engines", mode="explicit", force=True)
    retained = h.device.primary_retains
    runner = open_runner(out.directory, check_memory=False)
    assert h.device.primary_retains == retained + 1 and len(h.device.streams) == 1
    results: list[Any] = []
    t = threading.Thread(target=lambda: results.append(runner.run({"input": _x(2)})["output"]))
    t.start()
    t.join()
    assert results and results[0].shape == (2, 10)  # opened in this thread, run in another
    closer = threading.Thread(target=runner.close)
    closer.start()
    closer.join()
    import gc

    gc.collect()
    assert h.leaks == [], h.leaks  # the stream and buffers were freed before the context was released
    assert len(h.device.streams) == 0 and h.device.primary_retains == retained and h.device.device_bytes == 0
    with pytest.raises(Exception, match="closed"):
        runner.run({"input": _x(1)})


@pytest.mark.parametrize("key", ["8.5", "8.6"])
def test_defect8_runtime_uses_the_tensor_api_on_8x(key: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from vqz_edge.runtime import open_runner

    h = install_doubles(monkeypatch, key)
    spec, cal = _tiny(tmp_path)
    out = _build(spec, cal, tmp_path / "engines", mode="explicit")
    with warnings.catch_warnings():
        warnings.simplefilter("error", DeprecationWarning)  # TensorRT's bindings warn on deprecated members
        with open_runner(out.directory, check_memory=False) as r:
            y = r.run({"input": _x(3)})["output"]
    assert y.shape == (3, 10) and h.state.deprecated_calls == []


def test_defect9_unsupported_tensorrt_is_refused_with_the_range(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from vqz_edge.trt.compat import import_tensorrt

    install_doubles(monkeypatch, "8.5", version="8.4.1.5")  # JetPack 5.0.2's TensorRT
    with pytest.raises(DependencyError, match=r"TensorRT 8\.4\.1 is not supported.*8\.5 \(JetPack 5\.1\) to 11\.x"):
        import_tensorrt()
    spec, cal = _tiny(tmp_path)
    with pytest.raises(DependencyError, match="not supported"):
        _build(spec, cal, tmp_path / "engines")
    assert not (tmp_path / "engines").exists()


# ------------------------------------------------------------------------------------- the real code paths


def _modes(key: str) -> list[str]:
    return ["explicit", "implicit", "fp16"] if key in WEAK else ["explicit"]


def test_build_run_bench_every_mode_on_every_version(double: DoubleHandles, tmp_path: Path) -> None:
    from vqz_edge.runtime import open_runner
    from vqz_edge.runtime.bench import benchmark

    key = double.state.key
    spec, cal = _tiny(tmp_path, double.state.version_string)
    x = _x(4)
    ref_qdq, ref_fp32 = _ort(cal / "model.qdq.onnx", x), _ort(cal / "model.onnx", x)
    for mode in _modes(key):
        out = _build(spec, cal, tmp_path / "engines" / mode, mode=mode)
        assert out.status == "built" and out.mode == mode and out.report is not None
        m = load_manifest(out.directory)
        assert m.tensorrt_version == str(parse_trt_version(double.state.version_string)) and m.mode == mode
        assert m.compute_capability == "8.7" and m.integrated and m.io[0].profile_max == (4, 3, 8, 8)
        prec = {x.name: x.actual for x in out.report.layers}
        assert prec["/fc/Gemm"] == "fp32", prec  # the plan keeps the head FP32
        assert prec["/conv/Conv"] == ("fp16" if mode == "fp16" else "int8"), prec
        if mode == "implicit":
            assert out.manifest is not None and out.manifest["build"]["calibration"]["offline_cache_used"] is True
        with open_runner(out.directory) as r:  # memory budget checked, zero-copy on the integrated GPU
            assert r.describe()["zero_copy"] is True
            y = r.run({"input": x})["output"]
            stats = benchmark(r, batch=2, iterations=3, warmup=1, sample_jtop=False)
        assert stats.throughput > 0 and stats.backend == "tensorrt" and len(stats.latencies_ms) == 3
        ref = ref_qdq if mode == "explicit" else ref_fp32
        cos = np.sum(y * ref, 1) / np.linalg.norm(y, axis=1) / np.linalg.norm(ref, axis=1)
        assert cos.min() > (0.9999 if mode == "explicit" else 0.99), (mode, cos)
        again = _build(spec, cal, tmp_path / "engines" / mode, mode=mode)
        assert again.status == "skipped" and again.key == out.key
    assert double.leaks == []


def test_discrete_gpu_uses_device_buffers(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from vqz_edge.runtime import open_runner

    install_doubles(monkeypatch, "10.3", gpu="discrete")
    spec, cal = _tiny(tmp_path)
    out = _build(spec, cal, tmp_path / "engines", allow_gpu_mismatch=True)
    with open_runner(out.directory) as r:
        assert r.describe()["zero_copy"] is False and r.describe()["integrated"] is False
        y = r.run({"input": _x(2)})["output"]
    ref = _ort(cal / "model.qdq.onnx", _x(2))
    assert np.allclose(y, ref, atol=1e-5)


def test_plan_layer_running_int8_fails_the_build(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A Q/DQ model with Q/DQ on the layer the plan keeps FP32 (a stale model.qdq.onnx): strongly typed 10.x
    runs it INT8; the inspector check refuses the engine and nothing is written."""
    install_doubles(monkeypatch, "10.3")
    spec, cal = _tiny(tmp_path)
    m = onnx.load(cal / "model.qdq.onnx")
    g = m.graph
    g.initializer.append(numpy_helper.from_array(np.array(0.05, np.float32), "f.scale"))
    g.node.insert(len(g.node) - 1, helper.make_node("QuantizeLinear", ["f", "f.scale", "zp"], ["f_q"], name="f_Q"))
    g.node.insert(len(g.node) - 1, helper.make_node("DequantizeLinear", ["f_q", "f.scale", "zp"], ["f_dq"], name="f_DQ"))
    g.node[-1].input[0] = "f_dq"
    onnx.save(m, cal / "model.qdq.onnx")
    with pytest.raises(EngineBuildError, match=r"(?s)keeps above INT8 run in INT8.*/fc/Gemm: planned fp32, runs int8"):
        _build(spec, cal, tmp_path / "engines", mode="explicit")
    assert not (tmp_path / "engines" / "tiny" / "orin-nx-16gb" / "10.3.0" / "model.engine").exists()


def test_parser_errors_name_the_node_on_each_version(double: DoubleHandles, tmp_path: Path) -> None:
    from vqz_edge.trt.constraints import ProfileShapes, decide_build
    from vqz_edge.trt.engine import EngineConfig, build_engine

    x = helper.make_tensor_value_info("input", TensorProto.FLOAT, [1, 4])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4])
    node = helper.make_node("NoSuchOp", ["input"], ["y"], name="broken/NoSuchOp", domain="vqz.test")
    model = helper.make_model(helper.make_graph([node], "g", [x], [y]),
                              opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid("vqz.test", 1)])
    onnx.save(model, tmp_path / "broken.onnx")
    v = parse_trt_version(double.state.version_string)
    cfg = EngineConfig(onnx_path=tmp_path / "broken.onnx", decision=decide_build(v, "explicit", have_cache=False, have_qdq=True),
                       profiles=(ProfileShapes("input", (1, 4), (1, 4), (1, 4)),), workspace_bytes=1 << 28)
    with pytest.raises(EngineBuildError, match="NoSuchOp") as exc:
        build_engine(cfg)
    assert "ONNX parser rejected" in str(exc.value)


def test_install_with_tensorrt_backend_then_jetpack_upgrade_86_to_103(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """JetPack 6.0 (TensorRT 8.6) installs, builds and smoke-tests the engine; after the upgrade to 6.1
    (TensorRT 10.3) `install --root` rebuilds from the kept bundle and the new engine serves."""
    from vqz_edge.bundle import (
        BundleOptions,
        InstallOptions,
        create_bundle,
        generate_keypair,
        install_bundle,
        refresh,
    )
    from vqz_edge.bundle.install import status

    keys = generate_keypair(tmp_path / "fleet")
    spec, cal = _tiny(tmp_path)
    bundle = tmp_path / "b.tar"
    create_bundle(spec, bundle, BundleOptions("orin-nx-16gb", bundle_version=1, calibration_dir=cal, jetpack=("6.0", "6.1"),
                                              sign_key=keys.private_path))
    dev = fake_jetson(tmp_path / "dev", release=NV_TEGRA_60)
    opts = InstallOptions(backend="tensorrt", public_key=keys.public_path, device=dev)
    root = tmp_path / "root"
    install_doubles(monkeypatch, "8.6", version="8.6.2.3")  # JetPack 6.0 ships TensorRT 8.6.2
    first = install_bundle(bundle, root, opts)
    assert first.backend == "tensorrt" and first.device_key == "tensorrt-l4t36.3.0-trt8.6.2-sm87"
    assert first.smoke is not None and first.smoke.passed
    served = root / "current"
    assert (served / "model.engine").is_file() and load_manifest(served).tensorrt_version == "8.6.2"
    (tmp_path / "dev" / "nv_tegra_release").write_text(NV_TEGRA_61)  # JetPack 6.0 -> 6.1
    install_doubles(monkeypatch, "10.3")
    res = refresh(root, opts)
    assert res.action == "rebuilt" and res.device_key == "tensorrt-l4t36.4.0-trt10.3.0-sm87" and res.smoke.passed
    assert load_manifest(root / "current").tensorrt_version == "10.3.0"
    st = status(root)
    assert st["current"]["backend"] == "tensorrt"
    assert refresh(root, opts).action == "noop"


def test_build_refuses_without_a_gpu(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    install_doubles(monkeypatch, "10.3", gpu="none")
    spec, cal = _tiny(tmp_path)
    with pytest.raises(DependencyError, match="no CUDA GPU"):
        _build(spec, cal, tmp_path / "engines")

