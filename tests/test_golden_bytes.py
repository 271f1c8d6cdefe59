"""Byte-identical outputs pinned: the calibration cache, the Q/DQ model and a signed bundle of fixed small inputs
hash to the values the code wrote when these pins were taken (issue 19: refactoring must not change a byte).

The writers are pinned from fixed inputs (no numerics in between); the calibration pins run the tiny model through
ONNX Runtime on real demo crops, so a change of ONNX Runtime or numpy may move them: then re-check that the change is
theirs, not ours, and re-pin (``VQZ_PRINT_GOLDEN=1 pytest tests/test_golden_bytes.py -s`` prints the new values).
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import onnx
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from tests.bundle_fixtures import make_calibration_dir, tiny_model
from vqz_edge.artifacts.calib_cache import CalibrationCache, cache_bytes
from vqz_edge.bundle import BundleOptions, create_bundle
from vqz_edge.calib import CalibrationOptions, calibrate
from vqz_edge.calib.qdq import insert_qdq
from vqz_edge.policy.resolve import resolve_plan

GOLDEN = {
    "cache_writer": "2941e337273af39fae333220398316207a530ed20b7fff1587d0dafbc383058d",
    "qdq_writer": "451afce07eef59dcd27b979d3034716e2af6dc70ef866f404867430461eb85b4",
    "calibrate/calibration.cache": "19e20073932afddf0df1658aea038169bf50174f9ebc40f218ac2b576fd8f0b0",
    "calibrate/model.qdq.onnx": "16c810ce1e977ce9e00681c24e4957c01009e251ed1a144d1338462e7634ae67",
    "calibrate/plan.json": "6814cd91d03c1ff65976583eca5bc866076f62530f5e71a0e09a7ab05b182b2b",
    "bundle": "2465c337beb5a6b67091099fb962aa34164d7b119fc6b0f13a1ca1bd3979b366",
}


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _check(name: str, data: bytes) -> None:
    got = _sha(data)
    if os.environ.get("VQZ_PRINT_GOLDEN"):
        print(f'    "{name}": "{got}",')
        return
    assert got == GOLDEN[name], f"{name}: the bytes changed ({got}); behaviour must not change (see the docstring)"


def test_cache_and_qdq_writers_pinned() -> None:
    amax = {"input": 3.0, "c": 2.5, "r": 2.25, "p": 1.125, "f": 1.125}
    _check("cache_writer", cache_bytes(CalibrationCache.from_amax(amax, 100300)))
    model = tiny_model(0)
    qdq, _ = insert_qdq(model, amax, resolve_plan(model, model_name="tiny", onnx_sha256="", preset="none").plan)
    _check("qdq_writer", qdq.SerializeToString(deterministic=True))


def test_calibration_outputs_pinned(tmp_path: Path) -> None:
    src = tmp_path / "tiny.onnx"
    onnx.save(tiny_model(0), src)
    out = tmp_path / "cal"
    calibrate(src, "demo", out, CalibrationOptions(num_images=16, batch_size=8, trt_version="10.3.0"), model_name="tiny")
    for name in ("calibration.cache", "model.qdq.onnx", "plan.json"):
        _check(f"calibrate/{name}", (out / name).read_bytes())


def test_signed_bundle_pinned(tmp_path: Path) -> None:
    spec, cal = make_calibration_dir(tmp_path / "work")
    key = tmp_path / "fixed.key"  # a fixed Ed25519 key: signatures are deterministic, so the bundle is too
    key.write_bytes(Ed25519PrivateKey.from_private_bytes(bytes(range(32))).private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()))
    out = tmp_path / "b.tar"
    create_bundle(spec, out, BundleOptions("orin-nx-16gb", calibration_dir=cal, smoke_samples=1, sign_key=key))
    _check("bundle", out.read_bytes())
