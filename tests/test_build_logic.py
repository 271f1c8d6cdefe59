"""The TensorRT builder's pure logic, on the CPU: plan -> per-layer constraints, TensorRT version
branching, calibration-cache acceptance, engine inspection, manifest + idempotence, L4T parsing, and
`vqz-edge build` on a host without TensorRT.

The network descriptions below are what builder.describe_network() produces from TensorRT's parsed
network; here they are derived from the real demo MobileNetV2 ONNX graph the way TensorRT's ONNX
parser names layers and tensors (layer = node name, tensor = ONNX value name, "[ONNX Layer: node]"
metadata). tests/trt/ checks the same logic against the real parser on a device.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import onnx
import pytest

from tests.conftest import run_cli
from vqz_edge.artifacts.calib_cache import CalibrationCache, cache_bytes, parse_cache
from vqz_edge.artifacts.engine_manifest import (
    ENGINE_FILE,
    MANIFEST_NAME,
    build_manifest,
    engine_dir,
    read_manifest,
    up_to_date,
    write_engine_and_manifest,
)
from vqz_edge.artifacts.plan import LayerDecision, ResolvedPlan
from vqz_edge.calib.collect import calibration_tensors
from vqz_edge.device import parse_jetpack_package_version, parse_l4t, read_l4t
from vqz_edge.errors import DependencyError, EngineBuildError, InputError
from vqz_edge.fsutil import sha256_file
from vqz_edge.policy.resolve import resolve_plan
from vqz_edge.spec import PrecisionRule
from vqz_edge.targets import get_target
from vqz_edge.trt.calibrator import CalibrationFeed
from vqz_edge.trt.compat import tensorrt_available
from vqz_edge.trt.constraints import (
    CacheVerdict,
    NetLayer,
    NetTensor,
    NetworkDesc,
    ProfileShapes,
    build_key,
    check_calibration_cache,
    check_dla,
    check_profiles,
    decide_build,
    onnx_nodes_from_metadata,
    plan_constraints,
    workspace_bytes,
)
from vqz_edge.trt.inspect import (
    check_report,
    compare_with_plan,
    parse_engine_info,
    precision_of_format,
)
from vqz_edge.versions import TrtVersion, require_supported

V86, V100, V103, V110 = TrtVersion(8, 6, 1), TrtVersion(10, 0, 1), TrtVersion(10, 3, 0), TrtVersion(11, 0, 0)

# --- a network description as TensorRT's ONNX parser would produce it ------------------------------

_LAYER_TYPES = {"Conv": "CONVOLUTION", "Clip": "ACTIVATION", "Add": "ELEMENTWISE", "GlobalAveragePool": "REDUCE",
                "Flatten": "SHUFFLE", "Reshape": "SHUFFLE", "Relu": "ACTIVATION"}


def network_from_onnx(model: onnx.ModelProto) -> NetworkDesc:
    """Main layer named after the node; Gemm becomes weights CONSTANT + MATRIX_MULTIPLY + bias ELEMENTWISE
    (as TensorRT 10's parser does), each carrying the node's metadata; a Shape layer has an int64 output."""
    inits = {i.name for i in model.graph.initializer}
    layers: list[NetLayer] = []
    for node in model.graph.node:
        meta = f"[ONNX Layer: {node.name}]"
        acts = tuple(i for i in node.input if i and i not in inits)
        if node.op_type == "Gemm":
            w = node.input[1]
            layers.append(NetLayer(f"{node.name}_weights", "CONSTANT", (), (NetTensor(w, "float32"),), meta))
            layers.append(NetLayer(node.name, "MATRIX_MULTIPLY", (*acts, w), (NetTensor(f"{node.name}_mm", "float32"),), meta))
            layers.append(NetLayer(f"{node.name}_bias", "ELEMENTWISE", (f"{node.name}_mm",),
                                   (NetTensor(node.output[0], "float32"),), meta))
            continue
        dtype = "int64" if node.op_type == "Shape" else "float32"
        layers.append(NetLayer(node.name, _LAYER_TYPES.get(node.op_type, node.op_type.upper()), acts,
                               tuple(NetTensor(o, dtype) for o in node.output), meta))
    inputs = tuple(NetTensor(i.name, "float32", tuple(d.dim_value if d.dim_value > 0 else -1
                                                         for d in i.type.tensor_type.shape.dim))
                   for i in model.graph.input if i.name not in inits)
    return NetworkDesc(inputs, tuple(layers))


@pytest.fixture(scope="module")
def mobilenet(mobilenet_onnx: Path) -> tuple[onnx.ModelProto, NetworkDesc, ResolvedPlan]:
    model = onnx.load(str(mobilenet_onnx))
    first_conv = next(n.name for n in model.graph.node if n.op_type == "Conv")
    rules = (PrecisionRule(precision="fp32", match="classifier*"), PrecisionRule(precision="fp16", node=first_conv))
    plan = resolve_plan(model, rules, model_name="mobilenet_v2", onnx_sha256=sha256_file(mobilenet_onnx)).plan
    return model, network_from_onnx(model), plan


# --- plan -> constraints ------------------------------------------------------------------------------


@pytest.mark.slow
def test_plan_constraints_pin_kept_high_layers_on_real_mobilenet(mobilenet: tuple[onnx.ModelProto, NetworkDesc, ResolvedPlan]) -> None:
    _, net, plan = mobilenet
    fp32 = [d.name for d in plan.layers if d.precision == "fp32" and d.quantizable]
    fp16 = [d.name for d in plan.layers if d.precision == "fp16" and d.quantizable]
    assert len(fp32) == 1 and len(fp16) == 1, (fp32, fp16)  # the classifier Gemm, the first Conv

    cs = plan_constraints(plan, net, ("fp16", "fp32"))
    assert cs.unmatched == ()
    pinned = {c.layer: c for c in cs.constraints}
    gemm = fp32[0]
    # the Gemm's matmul and bias add are pinned FP32 with their float outputs; its weights constant is not
    assert pinned[gemm].precision == "fp32" and pinned[gemm].outputs == (0,)
    assert pinned[f"{gemm}_bias"].precision == "fp32"
    assert f"{gemm}_weights" not in pinned
    assert pinned[fp16[0]].precision == "fp16" and pinned[fp16[0]].node == fp16[0]
    # nothing the plan leaves at INT8 is pinned, nor any non-quantizable FP16-default op
    assert set(pinned) == {gemm, f"{gemm}_bias", fp16[0]}

    # an FP16 build pins only the FP32 layers (everything else is FP16 anyway)
    assert {c.layer for c in plan_constraints(plan, net, ("fp32",)).constraints} == {gemm, f"{gemm}_bias"}
    # strongly typed builds pin nothing
    assert plan_constraints(plan, net, ()).constraints == ()


def test_plan_constraints_skip_integer_outputs_and_report_unknown_layers() -> None:
    net = NetworkDesc(
        (NetTensor("x", "float32", (-1, 8)),),
        (
            NetLayer("shape_of", "SHAPE", ("x",), (NetTensor("s", "int64"),), "[ONNX Layer: head/Shape]"),
            NetLayer("topk", "TOPK", ("x",), (NetTensor("v", "float32"), NetTensor("i", "int32")), "[ONNX Layer: head/TopK]"),
        ),
    )
    plan = ResolvedPlan("m", "", (
        LayerDecision("head/Shape", "Shape", "fp32", "rule", False),
        LayerDecision("head/TopK", "TopK", "fp32", "rule", False),
        LayerDecision("gone/Conv", "Conv", "fp16", "rule", True),
    ))
    cs = plan_constraints(plan, net, ("fp16", "fp32"))
    assert [(c.layer, c.outputs) for c in cs.constraints] == [("topk", (0,))]  # int32 indices untouched, Shape skipped
    assert cs.unmatched == ("gone/Conv",)


def test_metadata_parsing_handles_fused_and_separated_entries() -> None:
    assert onnx_nodes_from_metadata("[ONNX Layer: /a/Conv]\x1f[ONNX Layer: /a/Clip]\x1e[ONNX Layer: /a/Conv]") == (
        "/a/Conv", "/a/Clip")
    assert onnx_nodes_from_metadata("") == ()
    assert NetLayer("/b/Conv", "CONVOLUTION", (), ()).onnx_nodes == ("/b/Conv",)


# --- version branching ----------------------------------------------------------------------------------


def test_trt_version_facts() -> None:
    assert (V86.code, V103.code, V110.code) == (8601, 100300, 110000)
    assert V86.parser_registers_plugins and not V103.parser_registers_plugins
    assert V86.supports_implicit_int8 and V103.supports_implicit_int8 and not V110.supports_implicit_int8
    assert not V100.implicit_int8_deprecated and V103.implicit_int8_deprecated
    assert not V86.supports_strongly_typed and V103.supports_strongly_typed
    assert V103.supports_weak_typing and not V110.supports_weak_typing
    assert not V86.supports_progress_monitor and V100.supports_progress_monitor


def test_decide_build_by_version_and_mode() -> None:
    both = {"have_cache": True, "have_qdq": True}
    d = decide_build(V86, "explicit", **both)  # 8.6: no strong typing -> flags + constraints
    assert (d.strongly_typed, d.fp16, d.int8, d.calibrator, d.constrain) == (False, True, True, False, ("fp16", "fp32"))
    assert d.onnx_name == "model.qdq.onnx"
    d = decide_build(V103, "explicit", **both)  # 10.x: strongly typed, no flags, nothing to pin
    assert (d.strongly_typed, d.fp16, d.int8, d.constrain) == (True, False, False, ())
    d = decide_build(V103, "explicit", **both, plan_has_fp16=True)  # ... unless the plan wants FP16 layers
    assert not d.strongly_typed and d.fp16 and d.int8 and "FP16" in d.notes[0]
    assert not decide_build(V103, "explicit", **both, dla=True).strongly_typed
    d = decide_build(V110, "explicit", **both, plan_has_fp16=True)  # 11: strong typing is the only way
    assert d.strongly_typed and "run in FP32" in d.notes[0]

    d = decide_build(V86, "implicit", **both)
    assert (d.calibrator, d.int8, d.fp16, d.onnx_name, d.notes) == (True, True, True, "model.onnx", ())
    d = decide_build(V103, "implicit", **both)
    assert d.calibrator and "deprecated since TensorRT 10.1" in d.notes[0]
    with pytest.raises(InputError, match="removed in TensorRT 11"):
        decide_build(V110, "implicit", **both)

    d = decide_build(V103, "fp16", have_cache=False, have_qdq=False)
    assert (d.fp16, d.int8, d.constrain, d.onnx_name) == (True, False, ("fp32",), "model.onnx")
    with pytest.raises(InputError, match="FP16 ONNX"):
        decide_build(V110, "fp16", have_cache=False, have_qdq=False)

    assert decide_build(V103, "auto", **both).mode == "explicit"
    assert decide_build(V103, "auto", have_cache=True, have_qdq=False).mode == "implicit"
    with pytest.raises(InputError, match="neither"):
        decide_build(V110, "auto", have_cache=True, have_qdq=False)
    with pytest.raises(InputError, match="needs model.qdq.onnx"):
        decide_build(V103, "explicit", have_cache=True, have_qdq=False)
    with pytest.raises(InputError, match="not one of"):
        decide_build(V103, "int4", **both)


def test_dla_and_workspace_follow_the_target_catalog() -> None:
    nano, nx = get_target("orin-nano-8gb"), get_target("orin-nx-16gb")
    check_dla(nx.name, nx.dla_cores, 1)
    check_dla(nano.name, nano.dla_cores, None)
    with pytest.raises(InputError, match="has no DLA"):
        check_dla(nano.name, nano.dla_cores, 0)
    with pytest.raises(InputError, match="DLA cores 0..1"):
        check_dla(nx.name, nx.dla_cores, 2)
    assert workspace_bytes(None, nano.ram_bytes) == 1 << 30  # 1/8 of 8 GiB
    assert workspace_bytes(None, get_target("agx-orin-64gb").ram_bytes) == 4 << 30  # capped
    assert workspace_bytes(512, nx.ram_bytes) == 512 << 20  # the spec wins


def test_profile_shapes_checked_against_network_inputs() -> None:
    inputs = (NetTensor("input", "float32", (-1, 3, 224, 224)),)
    ok = ProfileShapes("input", (1, 3, 224, 224), (4, 3, 224, 224), (8, 3, 224, 224))
    assert check_profiles(inputs, [ok]) == []
    bad = ProfileShapes("input", (1, 3, 256, 256), (1, 3, 256, 256), (1, 3, 256, 256))
    assert "fixed dimensions" in check_profiles(inputs, [bad])[0]
    assert "no [[inputs]] entry" in check_profiles(inputs, [])[0]
    assert "not an input of the network" in check_profiles(inputs, [ok, ProfileShapes("x", (1,), (1,), (1,))])[0]


# --- calibration cache acceptance --------------------------------------------------------------------


@pytest.mark.slow
def test_offline_cache_acceptance_on_real_mobilenet(mobilenet: tuple[onnx.ModelProto, NetworkDesc, ResolvedPlan]) -> None:
    model, net, plan = mobilenet
    names = calibration_tensors(model)  # what `vqz-edge calibrate` writes into the cache
    data = cache_bytes(CalibrationCache.from_amax(dict.fromkeys(names, 2.5), V103.code))
    cache = parse_cache(data)

    def verdict(c: CalibrationCache, v: TrtVersion = V103, p: ResolvedPlan | None = plan) -> CacheVerdict:
        return check_calibration_cache(algorithm=c.algorithm, version_code=c.version_code, names=c.scales,
                                       trt_version=v, network=net, plan=p)

    good = verdict(cache)
    assert good.accepted, good.reason
    assert not verdict(cache, V86).accepted and "8601" in verdict(cache, V86).reason  # JetPack 6.0 would ignore it
    assert verdict(CalibrationCache(V103.code, "EntropyCalibration", cache.scales)).accepted is False

    # drop the input of one INT8 conv: rejected, naming it
    conv = next(d.name for d in plan.by_precision("int8") if d.op_type == "Conv")
    conv_input = next(i for i in next(n for n in model.graph.node if n.name == conv).input)
    partial = CalibrationCache(V103.code, cache.algorithm, {k: v for k, v in cache.scales.items() if k != conv_input})
    v = verdict(partial)
    assert not v.accepted and v.missing == (conv_input,) and conv_input in v.reason

    # the input of the FP32 classifier is not needed (it does not run INT8), with this plan
    gemm = next(n for n in model.graph.node if n.op_type == "Gemm")
    no_head = CalibrationCache(V103.code, cache.algorithm, {k: v for k, v in cache.scales.items() if k != gemm.input[0]})
    assert verdict(no_head).accepted
    assert not verdict(no_head, p=None).accepted  # without a plan every MatMul needs its scale

    # a cache made for another model: extra names are reported, and its missing names reject it
    other = CalibrationCache(V103.code, cache.algorithm, {"other/Conv_output_0": 0.1, "input": 0.02})
    v = verdict(other)
    assert not v.accepted and v.extra == ("other/Conv_output_0",) and len(v.missing) > 10


# --- calibrator feed (the logic behind IInt8EntropyCalibrator2), without a GPU ----------------------


def test_calibration_feed_contains_errors_and_writes_atomically(tmp_path: Path) -> None:
    import numpy as np

    out = tmp_path / "calibration.cache"
    feed = CalibrationFeed(offline_cache=b"TRT-100300-EntropyCalibration2\n", batches=None, batch_size=4, cache_out=out)
    assert feed.read_cache() == b"TRT-100300-EntropyCalibration2\n"
    assert feed.next_batch(["input"]) == [] and "none was configured" in str(feed.error)  # no exception escapes
    feed.write_cache(b"TRT-100300-EntropyCalibration2\ninput: 3c010204\n")
    assert out.read_bytes().endswith(b"3c010204\n") and [p.name for p in tmp_path.iterdir()] == [out.name]

    live = CalibrationFeed(offline_cache=None, batches=lambda: iter([np.zeros((4, 3, 8, 8), np.float32)]),
                           batch_size=4, cache_out=None)
    assert live.next_batch(["input"]) == []  # pycuda is not installed here: recorded, not raised
    assert isinstance(live.error, DependencyError) and "pycuda" in str(live.error)
    with pytest.raises(DependencyError, match="pycuda"):
        live.prepare()
    assert live.next_batch(["a", "b"]) == [] and "single-input" in str(live.error)


# --- engine inspection ------------------------------------------------------------------------------------

# The shape of IEngineInspector JSON (ProfilingVerbosity.DETAILED, TensorRT 10), trimmed to the keys we read.
def _io(fmt_in: str, fmt_out: str = "Row major linear FP32") -> dict[str, Any]:
    return {"Inputs": [{"Name": "in", "Format/Datatype": fmt_in}], "Outputs": [{"Name": "out", "Format/Datatype": fmt_out}]}


INT8_CHW32 = "Thirty-two wide channel vectorized row major Int8 format"
_ENGINE_JSON = {
    "Layers": [
        {"Name": "Reformatting CopyNode for Input Tensor 0 to /c1/Conv", "LayerType": "Reformat",
         **_io("Row major linear FP32", "Half"), "Metadata": "[ONNX Layer: /c1/Conv]"},
        {"Name": "/c1/Conv + /c1/Clip", "LayerType": "CaskConvolution",
         **_io("Channel major FP16 format where channel % 8 == 0", INT8_CHW32),
         "Metadata": "[ONNX Layer: /c1/Conv]\x1f[ONNX Layer: /c1/Clip]"},
        # explicit quantization: the Q/DQ nodes (not in the plan) are listed before the Conv
        {"Name": "/c2/Conv", "LayerType": "CaskConvolution", **_io(INT8_CHW32, INT8_CHW32),
         "Metadata": "[ONNX Layer: /c2/input/DequantizeLinear]\x1f[ONNX Layer: /c2/w/DequantizeLinear]"
                     "\x1f[ONNX Layer: /c2/Conv]\x1f[ONNX Layer: /c2/Clip]"},
        {"Name": "PWN(/c3/Conv, /add/Add)", "LayerType": "PointWiseV2", **_io("Row major linear FP32", "Half")},
        # a fused tail: pool -> flatten -> the FP32-pinned Gemm; the input type is the pool's
        {"Name": "{ForeignNode[/pool/GlobalAveragePool.../head/Gemm]}", "LayerType": "Myelin", **_io("Int8", "Float"),
         "Metadata": "[ONNX Layer: /pool/GlobalAveragePool]\x1f[ONNX Layer: /flat/Flatten]\x1f[ONNX Layer: /head/Gemm]"},
        {"Name": "/c4/Conv + /c4/Relu", "LayerType": "CaskConvolution", **_io(INT8_CHW32, "Half"),
         "Metadata": "[ONNX Layer: /c4/Conv]\x1f[ONNX Layer: /c4/Relu]"},
        {"Name": "/c4/Conv [profile 1]", "LayerType": "CaskConvolution", **_io("Float"), "Metadata": "[ONNX Layer: /c4/Conv]"},
    ],
    "Bindings": ["input", "logits"],
}


def _plan(**precisions: str) -> ResolvedPlan:
    """Quantizable Conv/Gemm/Add layers with the given precisions, plus the non-quantizable neighbours."""
    layers = [LayerDecision(n.replace("_", "/"), "Conv", p, "rule", True) for n, p in precisions.items()]
    layers += [LayerDecision(n, op, "fp16", "no INT8 kernel: fp16", False)
               for n, op in (("/c1/Clip", "Clip"), ("/c2/Clip", "Clip"), ("/pool/GlobalAveragePool", "GlobalAveragePool"),
                             ("/flat/Flatten", "Flatten"), ("/c4/Relu", "Relu"))]
    return ResolvedPlan("m", "", tuple(layers))


def test_engine_inspection_maps_precisions_and_flags_violations() -> None:
    layers = parse_engine_info(json.dumps(_ENGINE_JSON))
    assert [x.name for x in layers][:3] == ["/c1/Conv + /c1/Clip", "/c2/Conv", "PWN(/c3/Conv, /add/Add)"]
    assert len(layers) == 5  # no reformat, no second-profile copy
    assert [x.precision for x in layers] == ["fp16", "int8", "fp32", "int8", "int8"]
    assert layers[2].onnx_nodes == ("/c3/Conv", "/add/Add")  # no metadata: from the fused name

    plan = _plan(_c1_Conv="fp16", _c2_Conv="int8", _c3_Conv="int8", _add_Add="int8", _head_Gemm="fp32",
                 _c4_Conv="fp16", _gone_Conv="int8")
    report = compare_with_plan(layers, plan, "explicit")
    actual = {x.name: x.actual for x in report.layers}
    assert actual == {"/c1/Conv": "fp16", "/c2/Conv": "int8", "/c3/Conv": "fp32", "/add/Add": "fp16",
                      "/head/Gemm": "fp32", "/c4/Conv": "int8", "/gone/Conv": None}
    # the FP32 Gemm fused behind an INT8 pool is not a violation (it is the layer's last node: output type)
    assert [(x.name, x.actual) for x in report.violations] == [("/c4/Conv", "int8")]
    assert [x.name for x in report.stayed_high] == ["/c3/Conv", "/add/Add"]
    assert report.not_found == ["/gone/Conv"]
    assert report.manifest_layers()[0] == {"name": "/c1/Conv", "precision": "fp16", "planned": "fp16"}
    with pytest.raises(EngineBuildError, match="/c4/Conv: planned fp16, runs int8"):
        check_report(report)

    fp16_build = compare_with_plan(layers, _plan(_c1_Conv="int8"), "fp16")  # INT8 plan layers expect FP16 there
    assert fp16_build.layers[0].planned == "fp16" and fp16_build.stayed_high == []
    prefer = compare_with_plan(layers, _plan(_c3_Conv="fp16"), "implicit")
    assert [(x.name, x.planned, x.actual) for x in prefer.overridden] == [("/c3/Conv", "fp16", "fp32")]
    check_report(prefer)


def test_engine_inspection_formats_and_bad_input() -> None:
    cases = {"Row major linear FP32": "fp32", "Half": "fp16", "Channel major INT8 format where channel % 16 == 0": "int8",
             "Row major linear BFloat16 format": "bf16", "Row major linear UInt8 format": "uint8",
             "Row major linear Int32": "int32", "Unknown format": None}
    assert {k: precision_of_format(k) for k in cases} == cases
    with pytest.raises(EngineBuildError, match="DETAILED"):
        parse_engine_info(json.dumps({"Layers": ["conv1", "relu1"]}))
    with pytest.raises(EngineBuildError, match="not JSON"):
        parse_engine_info("Layers: conv1")


# --- manifest, atomic writes, idempotence ------------------------------------------------------------

_KEY_ARGS: dict[str, Any] = {
    "vqz_edge_version": "0.1.0", "model": "mobilenet_v2", "target": "orin-nx-16gb", "trt_version": "10.3.0",
    "mode": "explicit", "onnx_sha256": "a" * 64, "cache_sha256": None, "spec_sha256": "b" * 64, "plan_sha256": "c" * 64,
    "dla_core": None, "precision_constraints": "obey", "workspace_bytes": 2 << 30,
}


def test_idempotence_key_changes_with_every_input() -> None:
    base = build_key(**_KEY_ARGS)
    assert base == build_key(**dict(_KEY_ARGS)) and len(base) == 64
    changed = {"trt_version": "10.3.1", "mode": "implicit", "onnx_sha256": "d" * 64, "cache_sha256": "e" * 64,
               "spec_sha256": "f" * 64, "plan_sha256": None, "dla_core": 0, "precision_constraints": "prefer",
               "workspace_bytes": 1 << 30, "target": "orin-nx-8gb", "vqz_edge_version": "0.2.0"}
    keys = {build_key(**{**_KEY_ARGS, k: v}) for k, v in changed.items()}
    assert len(keys) == len(changed) and base not in keys


def _manifest(engine: bytes, key: str) -> dict[str, Any]:
    return build_manifest(
        model="mobilenet_v2", target="orin-nx-16gb", engine=engine, tensorrt_version="10.3.0",
        gpu={"name": "Orin", "compute_capability": "8.7", "integrated": True}, l4t="36.4.3", jetpack="6.2",
        mode="explicit", inputs={"onnx_sha256": "a" * 64, "cache_sha256": None, "spec_sha256": "b" * 64, "plan_sha256": "c" * 64},
        io=[{"name": "input", "mode": "input", "dtype": "float32", "shape": [-1, 3, 224, 224], "profile_min": [1, 3, 224, 224],
             "profile_opt": [1, 3, 224, 224], "profile_max": [8, 3, 224, 224]}],
        device_memory_bytes=[3 << 20], layers=[{"name": "/c/Conv", "precision": "int8", "planned": "int8"}],
        build={"seconds": 12.3, "host": "orin", "built_at": "2025-01-01T00:00:00+00:00", "key": key},
    )


def test_manifest_content_write_and_idempotence(tmp_path: Path) -> None:
    out = engine_dir(tmp_path / "engines", "mobilenet_v2", "orin-nx-16gb", "10.3.0")
    assert out == tmp_path / "engines/mobilenet_v2/orin-nx-16gb/10.3.0"
    engine = b"\x00plan" * 1000
    m = _manifest(engine, "k1")
    assert sorted(m) == ["build", "device_memory_bytes", "engine", "gpu", "inputs", "io", "jetpack", "l4t", "layers",
                         "mode", "model", "schema", "target", "tensorrt_version", "vqz_edge_version"]
    assert m["schema"] == 1 and m["engine"]["file"] == "model.engine" and m["engine"]["bytes"] == len(engine)

    assert up_to_date(out, "k1") == (False, "no readable manifest.json")
    write_engine_and_manifest(out, engine, m)
    assert sorted(p.name for p in out.iterdir()) == sorted([ENGINE_FILE, MANIFEST_NAME])  # no temp files left
    assert read_manifest(out / MANIFEST_NAME) == json.loads(json.dumps(m))
    assert m["engine"]["sha256"] == sha256_file(out / ENGINE_FILE)
    assert up_to_date(out, "k1")[0] is True
    assert up_to_date(out, "k2") == (False, "inputs, options or TensorRT version changed since the last build")

    # a failed write (manifest for other bytes) replaces nothing
    with pytest.raises(ValueError, match="sha256"):
        write_engine_and_manifest(out, b"broken", m)
    assert (out / ENGINE_FILE).read_bytes() == engine and up_to_date(out, "k1")[0]

    (out / ENGINE_FILE).write_bytes(engine[:-1] + b"X")  # tampered / half-copied engine
    assert up_to_date(out, "k1") == (False, "model.engine does not match the manifest's size/sha256")
    with pytest.raises(ValueError, match="mode"):
        build_manifest(**{**_manifest_kwargs(), "mode": "int8"})


def _manifest_kwargs() -> dict[str, Any]:
    return {"model": "m", "target": "t", "engine": b"", "tensorrt_version": "10.3.0", "gpu": {}, "l4t": None,
            "jetpack": None, "mode": "fp16", "inputs": {"onnx_sha256": "", "cache_sha256": None, "spec_sha256": "",
                                                          "plan_sha256": None},
            "io": [], "device_memory_bytes": [], "layers": [], "build": {"seconds": 0, "host": "", "built_at": "", "key": ""}}


# --- device facts -------------------------------------------------------------------------------------


def test_l4t_and_jetpack_parsing(tmp_path: Path) -> None:
    # First lines of /etc/nv_tegra_release on JetPack 6.2 and JetPack 5.1.2 (format from NVIDIA's Jetson Linux).
    jp62 = "# R36 (release), REVISION: 4.3, GCID: 38968081, BOARD: generic, EABI: aarch64, DATE: Wed Jan  8 01:49:37 UTC 2025\n"
    jp512 = "# R35 (release), REVISION: 4.1, GCID: 33958178, BOARD: t186ref, EABI: aarch64, DATE: Tue Aug  1 19:57:35 UTC 2023\n"
    assert parse_l4t(jp62) == "36.4.3" and parse_l4t(jp512) == "35.4.1"
    assert parse_l4t("# R36 (release), REVISION: 4, GCID: 1") == "36.4.0"
    assert parse_l4t("Ubuntu 22.04") is None and parse_l4t("") is None
    f = tmp_path / "nv_tegra_release"
    f.write_text(jp62)
    assert read_l4t(f) == "36.4.3"
    assert read_l4t(tmp_path / "missing") is None
    assert parse_jetpack_package_version("6.2+b77") == "6.2" and parse_jetpack_package_version("5.1.2-b104") == "5.1.2"
    assert parse_jetpack_package_version("") is None


def test_supported_tensorrt_range() -> None:
    """8.0-8.4 (JetPack 5.0.x) lack the tensor-name API: refused with the range in the message (defect 9)."""
    assert str(require_supported("8.5.2.2")) == "8.5.2" and str(require_supported("11.1.0")) == "11.1.0"
    for old in ("8.4.1", "8.2.1", "8.0.1.6"):
        with pytest.raises(InputError, match=r"8\.5 \(JetPack 5\.1\) to 11\.x"):
            require_supported(old)
    with pytest.raises(InputError, match="not supported"):
        require_supported("12.0.0")


# --- the CLI where TensorRT is missing ----------------------------------------------------------------


_SPEC = """version = 1
[model]
name = "mobilenet_v2"
source = "mobilenet_v2"
[[inputs]]
name = "input"
shape = [1, 3, 224, 224]
max_shape = [8, 3, 224, 224]
[build]
targets = ["orin-nx-16gb"]
"""


def test_build_without_tensorrt_says_where_to_run_and_writes_nothing(tmp_path: Path) -> None:
    if tensorrt_available():
        pytest.skip("TensorRT is installed here; tests/trt covers real builds")
    (tmp_path / "spec.toml").write_text(_SPEC)
    (tmp_path / "calibration" / "mobilenet_v2").mkdir(parents=True)
    before = sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*"))

    r = run_cli("build", "spec.toml", "--target", "orin-nx-16gb", cwd=tmp_path)
    assert r.returncode == 3, r.stderr
    assert "TensorRT is not installed on this host" in r.stderr and "Jetson" in r.stderr and "container" in r.stderr
    r = run_cli("build", "spec.toml", "--json", "--mode", "explicit", cwd=tmp_path)  # target from the spec
    assert r.returncode == 3
    doc = json.loads(r.stdout)
    assert doc["exit_code"] == 3 and doc["type"] == "DependencyError" and "Jetson" in doc["hint"]
    assert sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*")) == before  # no engines/, nothing

    r = run_cli("build", "spec.toml", "--target", "orin-nano-8gb", "--dla-core", "0", cwd=tmp_path)
    assert r.returncode == 2 and "orin-nano-8gb has no DLA" in r.stderr  # input errors come first
