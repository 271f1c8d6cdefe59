"""Small, real inputs for the bundle/install tests (shared by test_bundle, test_install, test_install_crash).

A tiny CNN (Conv -> Relu -> GlobalAveragePool -> Flatten -> Gemm, 3x8x8 in, 10 logits out) with random
weights, its Q/DQ twin (QuantizeLinear/DequantizeLinear on the input and on the conv weight, runs on ONNX
Runtime), a hand-made calibration cache, a plan, a spec whose smoke data are real demo photo crops at 8x8.
Bundles made from these are a few KiB, so byte-flip tests over the whole file stay fast.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from vqz_edge.device import DevicePaths

if TYPE_CHECKING:
    from vqz_edge.bundle import InstallOptions

SPEC = """\
version = 1
[model]
name = "tiny"
source = "tiny.onnx"

[[inputs]]
name = "input"
shape = [1, 3, 8, 8]
max_shape = [4, 3, 8, 8]

[calibration]
data = "demo"

[build]
targets = ["orin-nx-16gb", "orin-nano-8gb"]
"""


def tiny_model(seed: int = 0, *, qdq: bool = False) -> onnx.ModelProto:
    rng = np.random.default_rng(seed)
    w = rng.standard_normal((4, 3, 3, 3)).astype(np.float32) * 0.5
    b = rng.standard_normal(4).astype(np.float32) * 0.1
    fc = rng.standard_normal((10, 4)).astype(np.float32)
    fcb = rng.standard_normal(10).astype(np.float32) * 0.1
    inits = [numpy_helper.from_array(w, "conv.weight"), numpy_helper.from_array(b, "conv.bias"),
             numpy_helper.from_array(fc, "fc.weight"), numpy_helper.from_array(fcb, "fc.bias")]
    nodes = []
    x, wname = "input", "conv.weight"
    if qdq:
        inits += [numpy_helper.from_array(np.array(3.0 / 127, np.float32), "in.scale"),
                  numpy_helper.from_array(np.array(0, np.int8), "zp"),
                  numpy_helper.from_array(np.array(float(np.abs(w).max()) / 127, np.float32), "w.scale")]
        nodes += [
            helper.make_node("QuantizeLinear", ["input", "in.scale", "zp"], ["input_q"], name="input_Q"),
            helper.make_node("DequantizeLinear", ["input_q", "in.scale", "zp"], ["input_dq"], name="input_DQ"),
            helper.make_node("QuantizeLinear", ["conv.weight", "w.scale", "zp"], ["w_q"], name="w_Q"),
            helper.make_node("DequantizeLinear", ["w_q", "w.scale", "zp"], ["w_dq"], name="w_DQ"),
        ]
        x, wname = "input_dq", "w_dq"
    nodes += [
        helper.make_node("Conv", [x, wname, "conv.bias"], ["c"], name="/conv/Conv", pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["c"], ["r"], name="/relu/Relu"),
        helper.make_node("GlobalAveragePool", ["r"], ["p"], name="/pool/GlobalAveragePool"),
        helper.make_node("Flatten", ["p"], ["f"], name="/flatten/Flatten"),
        helper.make_node("Gemm", ["f", "fc.weight", "fc.bias"], ["output"], name="/fc/Gemm", transB=1),
    ]
    graph = helper.make_graph(
        nodes, "tiny",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["batch", 3, 8, 8])],
        [helper.make_tensor_value_info("output", TensorProto.FLOAT, ["batch", 10])],
        inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], producer_name="vqz-edge-tests")
    model.ir_version = 8
    onnx.checker.check_model(model)
    return model


def make_calibration_dir(root: Path, seed: int = 0, *, with_plan: bool = True) -> tuple[Path, Path]:
    """(spec.toml, calibration dir) for the tiny model under ``root``."""
    from vqz_edge.artifacts.calib_cache import CalibrationCache, write_cache
    from vqz_edge.fsutil import sha256_file

    root.mkdir(parents=True, exist_ok=True)
    spec = root / "spec.toml"
    spec.write_text(SPEC, encoding="utf-8")
    cal = root / "calibration" / "tiny"
    cal.mkdir(parents=True, exist_ok=True)
    onnx.save(tiny_model(seed), cal / "model.onnx")
    onnx.save(tiny_model(seed, qdq=True), cal / "model.qdq.onnx")
    # stamped for TensorRT 8.6.1 on purpose: the bundle must restamp it for the target's TensorRT
    write_cache(cal / "calibration.cache", CalibrationCache.from_amax({"input": 3.0, "c": 2.5, "r": 2.5}, 8601))
    if with_plan:
        plan = {
            "version": 1, "model": "tiny", "onnx_sha256": sha256_file(cal / "model.onnx"),
            "layers": [
                {"name": "/conv/Conv", "op_type": "Conv", "precision": "int8", "rule": "default", "quantizable": True},
                {"name": "/fc/Gemm", "op_type": "Gemm", "precision": "fp32", "rule": "head", "quantizable": True},
            ],
        }
        (cal / "plan.json").write_text(json.dumps(plan), encoding="utf-8")
    (cal / "fidelity.json").write_text(json.dumps({"top1_agreement": 1.0, "samples": 4}), encoding="utf-8")
    return spec, cal


NV_TEGRA_62 = "# R36 (release), REVISION: 4.3, GCID: 38968081, BOARD: generic, EABI: aarch64, DATE: Wed Jan  8 01:49:37 UTC 2025\n"
NV_TEGRA_61 = "# R36 (release), REVISION: 4.0, GCID: 37537400, BOARD: generic, EABI: aarch64, DATE: Fri Sep 13 04:36:44 UTC 2024\n"
NV_TEGRA_60 = "# R36 (release), REVISION: 3.0, GCID: 36191598, BOARD: generic, EABI: aarch64, DATE: Mon May  6 17:34:21 UTC 2024\n"


def make_bundles(d: Path) -> dict[str, Path]:
    """Signed tiny bundles under ``d``: v1 and v2 (other weights), v2's content re-signed as version 1, an
    unsigned one; "pub"/"key" are the signer's key files."""
    from vqz_edge.bundle import BundleOptions, create_bundle, generate_keypair

    keys = generate_keypair(d / "fleet")
    out = {"pub": keys.public_path, "key": keys.private_path}
    spec1, cal1 = make_calibration_dir(d / "w1", seed=1)
    spec2, cal2 = make_calibration_dir(d / "w2", seed=2)
    jp = ("6.1", "6.2")
    for name, spec, cal, version, key in (
        ("v1", spec1, cal1, 1, keys.private_path),
        ("v2", spec2, cal2, 2, keys.private_path),
        ("v2_as_v1", spec2, cal2, 1, keys.private_path),
        ("unsigned", spec1, cal1, 1, None),
    ):
        out[name] = d / f"{name}.tar"
        create_bundle(spec, out[name], BundleOptions("orin-nx-16gb", bundle_version=version, calibration_dir=cal,
                                                     jetpack=jp, sign_key=key))
    return out


def fake_jetson(d: Path, release: str = NV_TEGRA_61, model: str = "NVIDIA Jetson Orin NX Engine Developer Kit",
                total_kib: int = 16_044_172, soc: str = "tegra234") -> DevicePaths:
    d.mkdir(parents=True, exist_ok=True)
    (d / "nv_tegra_release").write_text(release)
    dt = d / "device-tree"
    dt.mkdir(exist_ok=True)
    (dt / "model").write_bytes(model.encode() + b"\0")
    (dt / "compatible").write_bytes(f"nvidia,p3768-0000+p3767-0000\0nvidia,p3767-0000\0nvidia,{soc}\0".encode())
    (d / "meminfo").write_text(
        f"MemTotal:       {total_kib} kB\nMemFree:        {total_kib // 2} kB\nMemAvailable:   {total_kib * 3 // 4} kB\n"
        "Buffers:           12345 kB\nCached:          1234567 kB\nSwapTotal:             0 kB\nSwapFree:              0 kB\n"
    )
    return DevicePaths(d / "nv_tegra_release", d / "meminfo", dt, use_jtop=False)


def opts(bundles: dict[str, Path], device: DevicePaths | None = None, **kw: object) -> InstallOptions:
    """ONNX Runtime backend, the bundles' signer key, this host (or a fake Jetson) as the device."""
    from vqz_edge.bundle import InstallOptions

    return InstallOptions(backend="onnxruntime", public_key=bundles["pub"], device=device or DevicePaths(use_jtop=False),
                          **kw)  # type: ignore[arg-type]


def smoke_through_current(root: Path) -> float:
    """Run the bundle's reference input through ROOT/current with the runtime; cosine to the FP32 reference."""
    from vqz_edge.runtime import open_runner

    cur = root / "current"
    info = json.loads((cur / "release.json").read_text())
    bundle = root / info["bundle"]
    x = np.load(bundle / "reference" / "input_0.npy")
    ref = np.load(bundle / "reference" / "output_0.npy")
    with open_runner(cur / "model.onnx", backend="onnxruntime", check_memory=False) as r:
        y = np.concatenate([r.run({"input": x[i : i + 1]})["output"] for i in range(len(x))])
    cos = (y * ref).sum(1) / np.linalg.norm(y, axis=1) / np.linalg.norm(ref, axis=1)
    return float(cos.min())
