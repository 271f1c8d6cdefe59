"""Bundles: deterministic tar, manifest, Ed25519 signature, tamper evidence, safe extraction, plan header."""

from __future__ import annotations

import io
import json
import os
import random
import tarfile
import time
from pathlib import Path

import numpy as np
import pytest

from tests.bundle_fixtures import make_calibration_dir
from tests.conftest import run_cli
from vqz_edge.bundle import (
    BundleIntegrityError,
    BundleOptions,
    InstallRefusedError,
    UnsafeBundleError,
    create_bundle,
    generate_keypair,
    load_public_key,
    parse_plan_header,
    read_plan_header,
    safe_extract,
    tar_bytes,
    verify_bundle,
)
from vqz_edge.bundle.plan_header import check_plan_version, synthetic_plan_header
from vqz_edge.errors import InputError, VerificationError, VqzError


@pytest.fixture(scope="session")
def keys(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("keys")
    fleet = generate_keypair(d / "fleet")
    other = generate_keypair(d / "other")
    return {"key": fleet.private_path, "pub": fleet.public_path, "other_key": other.private_path, "other_pub": other.public_path}


@pytest.fixture(scope="session")
def small(tmp_path_factory: pytest.TempPathFactory, keys: dict[str, Path]) -> dict[str, Path]:
    """One small signed bundle (1 smoke sample) of the tiny model, made once."""
    root = tmp_path_factory.mktemp("small")
    spec, cal = make_calibration_dir(root / "work")
    out = root / "small.tar"
    create_bundle(spec, out, BundleOptions("orin-nx-16gb", calibration_dir=cal, smoke_samples=1, sign_key=keys["key"]))
    return {"bundle": out, "spec": spec, "cal": cal, "root": root}


# ------------------------------------------------------------------------------------------ tar


def test_tar_is_deterministic_and_canonical(small: dict[str, Path], keys: dict[str, Path], tmp_path: Path) -> None:
    # same inputs -> same bytes, even when the source files' mtimes change and the calls are apart in time
    for p in small["cal"].iterdir():
        os.utime(p, (time.time() + 1000, time.time() + 1000))
    again = tmp_path / "again.tar"
    create_bundle(small["spec"], again, BundleOptions("orin-nx-16gb", calibration_dir=small["cal"], smoke_samples=1,
                                                      sign_key=keys["key"]))
    assert again.read_bytes() == small["bundle"].read_bytes()
    # insertion order does not matter
    a = tar_bytes({"b.txt": b"1", "a/x.bin": b"22", "A.json": b"{}"})
    b = tar_bytes({"A.json": b"{}", "b.txt": b"1", "a/x.bin": b"22"})
    assert a == b
    with tarfile.open(small["bundle"]) as tf:
        members = tf.getmembers()
    names = [m.name for m in members]
    assert names == sorted(names, key=lambda n: n.encode()) and names[:2] == ["MANIFEST.json", "SIGNATURE.json"]
    for m in members:
        assert m.isreg() and m.mtime == 0 and m.uid == 0 and m.gid == 0 and m.mode == 0o644 and m.uname == ""
        assert not m.name.startswith("/") and ".." not in m.name.split("/")


def test_manifest_lists_everything(small: dict[str, Path]) -> None:
    vb = verify_bundle(small["bundle"], None, allow_unsigned=True)
    m = vb.manifest
    assert m.target == "orin-nx-16gb" and m.model == "tiny" and m.bundle_version == 1
    assert set(m.files) == {
        "model.onnx", "model.qdq.onnx", "calibration.cache", "plan.json", "spec.toml", "fidelity.json",
        "reference/input_0.npy", "reference/output_0.npy",
    }
    comp = m.compatibility
    assert comp.jetpack == ("6.1", "6.2") and comp.l4t == ("36.4.0", "36.4.3")
    assert (comp.tensorrt_min, comp.tensorrt_max, comp.compute_capability) == ("10.3.0", "10.3.0", "8.7")
    # the cache was written for TensorRT 8.6.1 (8601) and is restamped with the target's 10.3.0 (100300)
    cache = m.build["calibration_cache"]
    assert cache["header"] == "TRT-100300-EntropyCalibration2" and cache["restamped_from"] == 8601
    assert m.build["modes"] == ["explicit", "implicit", "fp16"]
    assert m.bundle_id.startswith("tiny-orin-nx-16gb-v1-")
    assert vb.signature == "not-checked"


def test_cache_in_bundle_is_stamped(small: dict[str, Path], tmp_path: Path) -> None:
    safe_extract(small["bundle"], tmp_path)
    first = (tmp_path / "calibration.cache").read_text().splitlines()[0]
    assert first == "TRT-100300-EntropyCalibration2"
    ref = np.load(tmp_path / "reference" / "input_0.npy")
    assert ref.shape == (1, 3, 8, 8) and ref.dtype == np.float32 and float(ref.std()) > 0.1  # real photo pixels


# ------------------------------------------------------------------------------------------ tamper


def test_every_single_byte_flip_is_rejected(small: dict[str, Path], keys: dict[str, Path]) -> None:
    """Flip each byte of the signed bundle (XOR 0xFF) in turn: every one of them must be rejected."""
    data = small["bundle"].read_bytes()
    pub = load_public_key(keys["pub"])
    assert verify_bundle(data, pub).signature == "verified"
    accepted = []
    t0 = time.monotonic()
    for i in range(len(data)):
        tampered = bytearray(data)
        tampered[i] ^= 0xFF
        try:
            verify_bundle(bytes(tampered), pub)
        except (BundleIntegrityError, InstallRefusedError):
            continue
        accepted.append(i)
    seconds = time.monotonic() - t0
    assert not accepted, f"{len(accepted)} of {len(data)} byte flips were accepted, first at {accepted[:5]}"
    print(f"{len(data)} byte flips, all rejected, {seconds:.1f}s")


def test_random_bit_patterns_rejected(small: dict[str, Path], keys: dict[str, Path]) -> None:
    """A seeded sample of 1500 (position, non-zero XOR mask) pairs, single bits included."""
    data = small["bundle"].read_bytes()
    pub = load_public_key(keys["pub"])
    rng = random.Random(20240607)
    for _ in range(1500):
        i, mask = rng.randrange(len(data)), rng.choice([1, 2, 4, 8, 16, 32, 64, 128, rng.randrange(1, 256)])
        tampered = bytearray(data)
        tampered[i] ^= mask
        with pytest.raises((BundleIntegrityError, InstallRefusedError)):
            verify_bundle(bytes(tampered), pub)


def test_key_of_another_signer_rejected(small: dict[str, Path], keys: dict[str, Path]) -> None:
    with pytest.raises(BundleIntegrityError, match="signed by key .* not by the trusted key"):
        verify_bundle(small["bundle"], load_public_key(keys["other_pub"]))


def test_resigned_by_another_key_rejected(small: dict[str, Path], keys: dict[str, Path], tmp_path: Path) -> None:
    out = tmp_path / "other.tar"
    create_bundle(small["spec"], out, BundleOptions("orin-nx-16gb", calibration_dir=small["cal"], smoke_samples=1,
                                                    sign_key=keys["other_key"]))
    with pytest.raises(BundleIntegrityError, match="signed by key"):
        verify_bundle(out, load_public_key(keys["pub"]))


def test_unsigned_bundle(small: dict[str, Path], keys: dict[str, Path], tmp_path: Path) -> None:
    out = tmp_path / "unsigned.tar"
    create_bundle(small["spec"], out, BundleOptions("orin-nx-16gb", calibration_dir=small["cal"], smoke_samples=1))
    with pytest.raises(InstallRefusedError, match="NOT signed"):
        verify_bundle(out, load_public_key(keys["pub"]))
    assert verify_bundle(out, None, allow_unsigned=True).signature == "unsigned"
    # a signed bundle stripped of its signature is an unsigned bundle with a wrong container: refused too
    data = small["bundle"].read_bytes()
    with pytest.raises(InstallRefusedError):
        verify_bundle(data, None)


@pytest.mark.parametrize("cut", [0, 100, 512, 1024, 4000, -1, -512, -1024, -1025])
def test_truncated_bundle_rejected(small: dict[str, Path], keys: dict[str, Path], cut: int) -> None:
    data = small["bundle"].read_bytes()
    with pytest.raises(BundleIntegrityError, match="truncated|marker|padding|checksum"):
        verify_bundle(data[:cut], load_public_key(keys["pub"]))


def test_appended_bytes_rejected(small: dict[str, Path], keys: dict[str, Path]) -> None:
    data = small["bundle"].read_bytes()
    with pytest.raises(BundleIntegrityError, match="extra bytes"):
        verify_bundle(data + b"\0" * 512, load_public_key(keys["pub"]))


def test_missing_manifest_rejected(small: dict[str, Path], tmp_path: Path) -> None:
    safe_extract(small["bundle"], tmp_path / "x")
    entries = {p.relative_to(tmp_path / "x").as_posix(): p.read_bytes() for p in (tmp_path / "x").rglob("*")
               if p.is_file() and p.name != "MANIFEST.json"}
    with pytest.raises(BundleIntegrityError, match="no MANIFEST.json"):
        verify_bundle(tar_bytes(entries), None, allow_unsigned=True)


def test_extra_file_not_in_manifest_rejected(small: dict[str, Path], tmp_path: Path, keys: dict[str, Path]) -> None:
    safe_extract(small["bundle"], tmp_path / "x")
    entries = {p.relative_to(tmp_path / "x").as_posix(): p.read_bytes() for p in (tmp_path / "x").rglob("*") if p.is_file()}
    entries["zz-extra.sh"] = b"#!/bin/sh\n"
    with pytest.raises(BundleIntegrityError, match="not listed in the manifest"):
        verify_bundle(tar_bytes(entries), load_public_key(keys["pub"]))


def _raw_tar(info: tarfile.TarInfo, data: bytes = b"") -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.USTAR_FORMAT) as tf:
        tf.addfile(info, io.BytesIO(data) if data else None)
    return buf.getvalue()


@pytest.mark.parametrize(
    ("name", "kind", "match"),
    [
        ("../evil.sh", tarfile.REGTYPE, r"'\.\.' \(path traversal\)"),
        ("reference/../../evil.sh", tarfile.REGTYPE, "path traversal"),
        ("/etc/cron.d/evil", tarfile.REGTYPE, "absolute path"),
        ("model.onnx", tarfile.SYMTYPE, "symbolic link"),
        ("model.onnx", tarfile.LNKTYPE, "hard link"),
        ("dev0", tarfile.CHRTYPE, "character device"),
        ("dev1", tarfile.BLKTYPE, "block device"),
        ("pipe", tarfile.FIFOTYPE, "FIFO"),
        ("sub", tarfile.DIRTYPE, "directory"),
    ],
)
def test_unsafe_entries_refused(tmp_path: Path, name: str, kind: bytes, match: str) -> None:
    info = tarfile.TarInfo(name)
    info.type = kind
    data = b""
    if kind == tarfile.REGTYPE:
        data = b"echo pwned\n"
        info.size = len(data)
    if kind in (tarfile.SYMTYPE, tarfile.LNKTYPE):
        info.linkname = "/etc/passwd"
    raw = _raw_tar(info, data)
    with pytest.raises(UnsafeBundleError, match=match):
        verify_bundle(raw, None, allow_unsigned=True)
    (tmp_path / "dest").mkdir()
    (tmp_path / "b.tar").write_bytes(raw)
    with pytest.raises(UnsafeBundleError):
        safe_extract(tmp_path / "b.tar", tmp_path / "dest")
    assert list((tmp_path / "dest").iterdir()) == []
    assert not (tmp_path / "evil.sh").exists()


def test_writer_refuses_unsafe_names() -> None:
    for bad in ("../x", "/abs", "a/../b", ".hidden", "a//b", "x" * 101):
        with pytest.raises(UnsafeBundleError):
            tar_bytes({bad: b"1"})


def test_altered_header_field_rejected(small: dict[str, Path], keys: dict[str, Path]) -> None:
    """A re-packed tar with the same contents but another mtime/owner is not the signed container."""
    data = small["bundle"].read_bytes()
    buf = io.BytesIO()
    with tarfile.open(fileobj=io.BytesIO(data)) as src, tarfile.open(fileobj=buf, mode="w", format=tarfile.USTAR_FORMAT) as dst:
        for m in src.getmembers():
            f = src.extractfile(m)
            m.mtime = 1_700_000_000
            dst.addfile(m, f)
    with pytest.raises(BundleIntegrityError, match="canonical|extra bytes"):
        verify_bundle(buf.getvalue(), load_public_key(keys["pub"]))


# ------------------------------------------------------------------------------------------ creation


def test_stale_plan_refused(tmp_path: Path) -> None:
    spec, cal = make_calibration_dir(tmp_path / "w")
    plan = json.loads((cal / "plan.json").read_text())
    plan["onnx_sha256"] = "0" * 64
    (cal / "plan.json").write_text(json.dumps(plan))
    with pytest.raises(InputError, match="resolved for another model"):
        create_bundle(spec, tmp_path / "b.tar", BundleOptions("orin-nx-16gb", calibration_dir=cal, smoke_samples=1))
    assert not (tmp_path / "b.tar").exists()


def test_jetpack_range_and_cache_stamp(tmp_path: Path) -> None:
    spec, cal = make_calibration_dir(tmp_path / "w")
    r = create_bundle(spec, tmp_path / "b.tar", BundleOptions("orin-nx-16gb", calibration_dir=cal, smoke_samples=1,
                                                              jetpack=("6.0", "6.2")))
    comp = r.manifest.compatibility
    assert (comp.tensorrt_min, comp.tensorrt_max, comp.l4t) == ("8.6.2", "10.3.0", ("36.3.0", "36.4.3"))
    # without the Q/DQ model, JetPack 6.0 (TensorRT 8.6) could not use the 10.3-stamped cache: refused
    (cal / "model.qdq.onnx").unlink()
    with pytest.raises(InputError, match="another TensorRT"):
        create_bundle(spec, tmp_path / "c.tar", BundleOptions("orin-nx-16gb", calibration_dir=cal, smoke_samples=1,
                                                              jetpack=("6.0", "6.2")))


def test_target_not_in_spec_refused(tmp_path: Path) -> None:
    spec, cal = make_calibration_dir(tmp_path / "w")
    with pytest.raises(InputError, match="not in the spec's build.targets"):
        create_bundle(spec, tmp_path / "b.tar", BundleOptions("agx-orin-64gb", calibration_dir=cal))


def test_bad_qdq_model_not_shipped(tmp_path: Path) -> None:
    """The bundle checks the artifact the device will serve against the FP32 reference before shipping."""
    import onnx

    from tests.bundle_fixtures import tiny_model

    spec, cal = make_calibration_dir(tmp_path / "w")
    onnx.save(tiny_model(7, qdq=True), cal / "model.qdq.onnx")  # other weights: unrelated outputs
    with pytest.raises(VerificationError):
        create_bundle(spec, tmp_path / "b.tar", BundleOptions("orin-nx-16gb", calibration_dir=cal, min_cosine=0.98))
    assert not (tmp_path / "b.tar").exists()


# ------------------------------------------------------------------------------------------ plan header


def test_plan_header_synthetic(tmp_path: Path) -> None:
    h = parse_plan_header(synthetic_plan_header((10, 3, 0, 26)) + b"rest of the engine")
    assert h.trt_version == (10, 3, 0, 26) and h.version_text == "10.3.0.26"
    assert h.matches("10.3.0") and h.matches("10.3.0.26") and not h.matches("10.3.1") and not h.matches("8.6.2")
    assert synthetic_plan_header((8, 6, 2, 3))[:4] == b"ftrt"  # 0x74727466 little-endian
    with pytest.raises(BundleIntegrityError, match="not a TensorRT plan"):
        parse_plan_header(b"\x7fELF" + bytes(40))
    with pytest.raises(BundleIntegrityError, match="serialization version 1"):
        parse_plan_header(synthetic_plan_header((10, 3, 0, 0), serialization=1))
    with pytest.raises(BundleIntegrityError, match="shorter"):
        parse_plan_header(b"ftrt" + bytes(10))
    engine = tmp_path / "model.engine"
    engine.write_bytes(synthetic_plan_header((8, 6, 2, 3)) + bytes(100))
    assert read_plan_header(engine).version_text == "8.6.2.3"
    with pytest.raises(InputError, match="built with TensorRT 8.6.2.3, this device runs TensorRT 10.3.0"):
        check_plan_version(engine, "10.3.0")
    with pytest.raises(BundleIntegrityError, match="manifest says 10.3.0"):
        check_plan_version(engine, "8.6.2", "10.3.0")
    assert check_plan_version(engine, "8.6.2", "8.6.2").trt_version[:3] == (8, 6, 2)


# ------------------------------------------------------------------------------------------ CLI


def test_cli_keys_bundle_verify(tmp_path: Path) -> None:
    spec, cal = make_calibration_dir(tmp_path / "w")
    r = run_cli("keys", "generate", "-o", str(tmp_path / "k"), "--json")
    assert r.returncode == 0, r.stderr
    kid = json.loads(r.stdout)["key_id"]
    assert (tmp_path / "k.key").stat().st_mode & 0o777 == 0o600
    assert run_cli("keys", "generate", "-o", str(tmp_path / "k")).returncode == 2  # never overwrites a key
    out = tmp_path / "b.tar"
    r = run_cli("bundle", str(spec), "--target", "orin-nx-16gb", "-o", str(out), "--sign-key", str(tmp_path / "k.key"),
                "--calibration-dir", str(cal), "--bundle-version", "7", "--json")
    assert r.returncode == 0, r.stderr
    doc = json.loads(r.stdout)
    assert doc["bundle_version"] == 7 and doc["signed"] and doc["key_id"] == kid
    r = run_cli("bundle", "verify", str(out), "--key", str(tmp_path / "k.pub"))
    assert r.returncode == 0 and "signature OK" in r.stdout, r.stderr
    data = bytearray(out.read_bytes())
    data[len(data) // 2] ^= 1
    (tmp_path / "bad.tar").write_bytes(bytes(data))
    r = run_cli("bundle", "verify", str(tmp_path / "bad.tar"), "--key", str(tmp_path / "k.pub"), "--json")
    assert r.returncode == 5 and json.loads(r.stdout)["type"] == "BundleIntegrityError"
    r = run_cli("bundle", str(spec), "--target", "orin-nx-16gb")  # no -o
    assert r.returncode == 2 and "--output" in r.stderr


def test_errors_are_vqz_errors() -> None:
    assert issubclass(BundleIntegrityError, VqzError) and BundleIntegrityError.exit_code == 5
    assert InstallRefusedError.exit_code == 2
