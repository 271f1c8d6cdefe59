"""Install on the "device" (this CPU host, ONNX Runtime backend): verification, refusals, atomic switch,
idempotence, JetPack upgrade rebuild, rollback, pruning, status; and the whole flow on the demo MobileNetV2.

Jetson devices are simulated with injected files: an /etc/nv_tegra_release line as L4T 36.x writes it, a
/proc/device-tree with ``model`` and ``compatible`` (NUL-separated, as the kernel exposes them), and a
/proc/meminfo whose MemTotal is what such a module reports (constructed for these tests: ~15.3 GiB for an
Orin NX 16GB, ~7.4 GiB for an Orin Nano 8GB, see tests/fixtures/meminfo/README.md for the 8GB figure).
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import onnx
import pytest

from tests.bundle_fixtures import (
    NV_TEGRA_60,
    NV_TEGRA_61,
    NV_TEGRA_62,
    fake_jetson,
    make_bundles,
    opts,
    smoke_through_current,
    tiny_model,
)
from tests.conftest import run_cli
from vqz_edge.bundle import (
    BundleIntegrityError,
    InstallRefusedError,
    install_bundle,
    refresh,
    rollback,
    status,
)
from vqz_edge.errors import InputError, VerificationError


@pytest.fixture(scope="session")
def bundles(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    return make_bundles(tmp_path_factory.mktemp("bundles"))


def test_install_switch_and_status(bundles: dict[str, Path], tmp_path: Path) -> None:
    root = tmp_path / "root"
    res = install_bundle(bundles["v1"], root, opts(bundles))
    assert res.action == "installed" and res.signature == "verified" and res.smoke is not None and res.smoke.passed
    link = os.readlink(root / "current")
    assert not os.path.isabs(link) and link == f"releases/{res.bundle_id}/builds/{res.device_key}"
    served = root / "current" / "model.onnx"
    kept = root / "releases" / res.bundle_id / "bundle"
    assert served.read_bytes() == (kept / "model.qdq.onnx").read_bytes()  # the Q/DQ model is what is served
    assert smoke_through_current(root) >= res.smoke.threshold
    st = status(root)
    assert st["healthy"] and st["state_consistent"] and st["current"]["bundle_id"] == res.bundle_id
    assert st["last_operation"]["result"] == "done" and st["highest_bundle_version"] == 1
    assert any("not a Jetson" in n for n in res.notes)


def test_idempotent(bundles: dict[str, Path], tmp_path: Path) -> None:
    root = tmp_path / "root"
    first = install_bundle(bundles["v1"], root, opts(bundles))
    served = root / "current" / "model.onnx"
    before = (served.stat().st_ino, served.stat().st_mtime_ns, os.readlink(root / "current"))
    again = install_bundle(bundles["v1"], root, opts(bundles))
    assert again.action == "noop" and again.bundle_id == first.bundle_id
    assert (served.stat().st_ino, served.stat().st_mtime_ns, os.readlink(root / "current")) == before
    assert status(root)["last_operation"]["result"] == "noop"
    forced = install_bundle(bundles["v1"], root, opts(bundles, force=True))
    assert forced.action == "installed"


def test_downgrade_refused(bundles: dict[str, Path], tmp_path: Path) -> None:
    root = tmp_path / "root"
    v2 = install_bundle(bundles["v2"], root, opts(bundles))
    for older in ("v1", "v2_as_v1"):  # a genuinely signed lower version, and v2's content re-signed as version 1
        with pytest.raises(InstallRefusedError, match="bundle version 1 is lower than the highest version installed here"):
            install_bundle(bundles[older], root, opts(bundles))
    assert status(root)["current"]["bundle_id"] == v2.bundle_id
    assert status(root)["last_operation"]["result"] == "failed"


def test_wrong_target_refused(bundles: dict[str, Path], tmp_path: Path) -> None:
    with pytest.raises(InstallRefusedError, match="is for target orin-nx-16gb, this device is orin-nano-8gb"):
        install_bundle(bundles["v1"], tmp_path / "a", opts(bundles, device_target="orin-nano-8gb"))
    nano = fake_jetson(tmp_path / "nano", model="NVIDIA Jetson Orin Nano Developer Kit", total_kib=7_620_000)
    with pytest.raises(InstallRefusedError, match="looks like orin-nano-8gb / orin-nano-super"):
        install_bundle(bundles["v1"], tmp_path / "b", opts(bundles, nano))
    xavier = fake_jetson(tmp_path / "xavier", soc="tegra194")
    with pytest.raises(InstallRefusedError, match="compute capability 7.2"):
        install_bundle(bundles["v1"], tmp_path / "c", opts(bundles, xavier))
    for r in ("a", "b", "c"):
        assert not (tmp_path / r / "current").exists() and list((tmp_path / r / "releases").iterdir()) == []


def test_outside_jetpack_range_refused(bundles: dict[str, Path], tmp_path: Path) -> None:
    dev = fake_jetson(tmp_path / "dev", release=NV_TEGRA_60)
    with pytest.raises(InstallRefusedError, match=r"L4T 36.3.0 \(JetPack 6.0\); .* allows JetPack 6.1 \(L4T 36.4.0\), JetPack 6.2"):
        install_bundle(bundles["v1"], tmp_path / "root", opts(bundles, dev))
    assert not (tmp_path / "root" / "current").exists()


def test_jetpack_upgrade_rebuilds_from_kept_bundle(bundles: dict[str, Path], tmp_path: Path) -> None:
    dev = fake_jetson(tmp_path / "dev", release=NV_TEGRA_61)
    root = tmp_path / "root"
    first = install_bundle(bundles["v1"], root, opts(bundles, dev))
    assert first.device_key == "onnxruntime-l4t36.4.0" and first.device.jetpack == "6.1"
    assert refresh(root, opts(bundles, dev)).action == "noop"
    (tmp_path / "dev" / "nv_tegra_release").write_text(NV_TEGRA_62)  # JetPack 6.1 -> 6.2
    res = refresh(root, opts(bundles, dev))
    assert res.action == "rebuilt" and res.device_key == "onnxruntime-l4t36.4.3" and res.bundle_id == first.bundle_id
    assert os.readlink(root / "current").endswith("/builds/onnxruntime-l4t36.4.3") and res.smoke.passed
    assert status(root)["last_operation"]["kind"] == "refresh"
    # an upgrade outside the bundle's range: refused, current stays on the last verified build
    (tmp_path / "dev" / "nv_tegra_release").write_text(NV_TEGRA_60)
    with pytest.raises(InstallRefusedError, match="L4T 36.3.0"):
        refresh(root, opts(bundles, dev))
    assert os.readlink(root / "current").endswith("/builds/onnxruntime-l4t36.4.3")


def test_rollback(bundles: dict[str, Path], tmp_path: Path) -> None:
    root = tmp_path / "root"
    v1 = install_bundle(bundles["v1"], root, opts(bundles))
    v2 = install_bundle(bundles["v2"], root, opts(bundles))
    assert v2.previous == v1.release
    back = rollback(root, opts(bundles))
    assert back.action == "rolled_back" and back.bundle_id == v1.bundle_id and back.smoke.passed
    st = status(root)
    assert st["current"]["bundle_id"] == v1.bundle_id and [e["bundle_id"] for e in st["history"]] == [v1.bundle_id]
    assert st["highest_bundle_version"] == 2  # rollback is explicit; installing v1 again stays a downgrade
    assert smoke_through_current(root) >= back.smoke.threshold
    with pytest.raises(InputError, match="nothing to roll back to"):
        rollback(root, opts(bundles))


def test_rollback_across_upgrade_rebuilds(bundles: dict[str, Path], tmp_path: Path) -> None:
    dev = fake_jetson(tmp_path / "dev", release=NV_TEGRA_61)
    root = tmp_path / "root"
    v1 = install_bundle(bundles["v1"], root, opts(bundles, dev))
    install_bundle(bundles["v2"], root, opts(bundles, dev))
    (tmp_path / "dev" / "nv_tegra_release").write_text(NV_TEGRA_62)
    assert refresh(root, opts(bundles, dev)).action == "rebuilt"
    back = rollback(root, opts(bundles, dev))
    assert back.bundle_id == v1.bundle_id and back.device_key == "onnxruntime-l4t36.4.3"
    assert any("rebuilding it for onnxruntime-l4t36.4.3" in n for n in back.notes)


def test_keep_prunes_old_releases(bundles: dict[str, Path], tmp_path: Path) -> None:
    root = tmp_path / "root"
    v1 = install_bundle(bundles["v1"], root, opts(bundles, keep=1))
    v2 = install_bundle(bundles["v2"], root, opts(bundles, keep=1))
    assert sorted(p.name for p in (root / "releases").iterdir()) == [v2.bundle_id]
    assert not (root / "releases" / v1.bundle_id).exists()
    with pytest.raises(InputError, match="nothing to roll back to"):
        rollback(root, opts(bundles))


def test_failed_smoke_test_does_not_switch(bundles: dict[str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A build whose outputs do not match the bundle's reference is never switched to."""
    import vqz_edge.bundle.build as build

    root = tmp_path / "root"
    v1 = install_bundle(bundles["v1"], root, opts(bundles))

    def wrong_build(bundle_dir: Path, manifest: object, out: Path, progress: object) -> dict[str, str]:
        onnx.save(tiny_model(99), out / "model.onnx")  # a real model, but not the one in the bundle
        return {"served": "model.onnx", "mode": "fp32"}

    monkeypatch.setattr(build, "_build_onnxruntime", wrong_build)
    with pytest.raises(VerificationError, match="smoke test failed"):
        install_bundle(bundles["v2"], root, opts(bundles))
    st = status(root)
    assert st["current"]["bundle_id"] == v1.bundle_id and st["healthy"]
    assert st["last_operation"]["result"] == "failed" and "smoke test failed" in st["last_operation"]["reason"]
    assert st["highest_bundle_version"] == 1


def test_damaged_kept_bundle_detected(bundles: dict[str, Path], tmp_path: Path) -> None:
    root = tmp_path / "root"
    v1 = install_bundle(bundles["v1"], root, opts(bundles))
    install_bundle(bundles["v2"], root, opts(bundles))
    victim = root / "releases" / v1.bundle_id / "bundle" / "model.qdq.onnx"
    data = bytearray(victim.read_bytes())
    data[-10] ^= 0x55
    victim.write_bytes(bytes(data))
    with pytest.raises(BundleIntegrityError, match="does not match its manifest"):
        rollback(root, opts(bundles))
    # installing the same bundle again re-extracts the damaged copy
    res = install_bundle(bundles["v2"], root, opts(bundles, force=True))
    assert res.action == "installed"


def test_cli_signature_policy_and_status(bundles: dict[str, Path], tmp_path: Path) -> None:
    root = str(tmp_path / "root")
    r = run_cli("install", str(bundles["unsigned"]), "--root", root, "--key", str(bundles["pub"]), "--backend", "onnxruntime")
    assert r.returncode == 2 and "NOT signed" in r.stderr
    r = run_cli("install", str(bundles["v1"]), "--root", root, "--backend", "onnxruntime")  # no --key
    assert r.returncode == 2 and "no --key" in r.stderr
    r = run_cli("install", str(bundles["unsigned"]), "--root", root, "--allow-unsigned", "--backend", "onnxruntime", "--json")
    assert r.returncode == 0, r.stderr
    assert "WARNING" in r.stderr and "NOT verified" in r.stderr and json.loads(r.stdout)["signature"] == "unsigned"
    r = run_cli("status", "--root", root, "--json")
    assert r.returncode == 0
    st = json.loads(r.stdout)
    assert st["healthy"] and st["current"]["bundle_version"] == 1 and st["last_operation"]["result"] == "done"
    r = run_cli("status", "--root", str(tmp_path / "missing"))
    assert r.returncode == 2


@pytest.mark.slow
def test_demo_mobilenet_end_to_end(mobilenet_onnx: Path, tmp_path: Path) -> None:
    """bundle -> bundle verify -> install --backend onnxruntime -> run through current -> v2 -> rollback (CLI)."""
    import shutil
    import sys

    if sys.version_info < (3, 10):
        pytest.skip("starts with `vqz-edge calibrate`, a workstation command (Python 3.10+)")

    cal = tmp_path / "calibration" / "mobilenet_v2"
    cal.mkdir(parents=True)
    shutil.copy(mobilenet_onnx, cal / "model.onnx")
    r = run_cli("calibrate", str(cal / "model.onnx"), "--data", "demo", "--num-images", "16", "--target", "orin-nx-16gb",
                "-o", str(cal), "-q")
    assert r.returncode == 0, r.stderr
    spec = tmp_path / "spec.toml"
    spec.write_text('version = 1\n[model]\nname = "mobilenet_v2"\nsource = "mobilenet_v2"\n'
                    '[[inputs]]\nname = "input"\nshape = [1, 3, 224, 224]\nmax_shape = [8, 3, 224, 224]\n'
                    '[build]\ntargets = ["orin-nx-16gb"]\n')
    assert run_cli("keys", "generate", "-o", str(tmp_path / "fleet")).returncode == 0
    key, pub, root = str(tmp_path / "fleet.key"), str(tmp_path / "fleet.pub"), str(tmp_path / "root")
    for version in ("1", "2"):
        r = run_cli("bundle", str(spec), "--target", "orin-nx-16gb", "-o", str(tmp_path / f"v{version}.tar"),
                    "--sign-key", key, "--bundle-version", version, "--calibration-dir", str(cal), "-q", cwd=tmp_path)
        assert r.returncode == 0, r.stderr
    r = run_cli("bundle", "verify", str(tmp_path / "v1.tar"), "--key", pub)
    assert r.returncode == 0 and "signature OK" in r.stdout
    r = run_cli("install", str(tmp_path / "v1.tar"), "--root", root, "--key", pub, "--backend", "onnxruntime", "--json")
    assert r.returncode == 0, r.stderr
    first = json.loads(r.stdout)
    assert first["smoke"]["passed"] and first["action"] == "installed"
    from vqz_edge.data.images import demo_sources

    photos = [str(p) for s in demo_sources("evaluation")[:2] for p in s.paths[:1]]
    r = run_cli("run", str(Path(root) / "current" / "model.onnx"), "--input", *photos, "--json")
    assert r.returncode == 0, r.stderr
    assert len(json.dumps(json.loads(r.stdout))) > 0
    r = run_cli("install", str(tmp_path / "v2.tar"), "--root", root, "--key", pub, "--backend", "onnxruntime", "-q")
    assert r.returncode == 0, r.stderr
    r = run_cli("rollback", "--root", root, "--backend", "onnxruntime", "--json")
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["bundle_id"] == first["bundle_id"]
    st = json.loads(run_cli("status", "--root", root, "--json").stdout)
    assert st["current"]["bundle_id"] == first["bundle_id"] and st["healthy"]
