"""Install with the TensorRT backend on a real Jetson: `pytest -m trt tests/trt` on the device.

Skipped (with the reason shown) where TensorRT is missing or the host is not a Jetson (no
/etc/nv_tegra_release): the bundle targets an Orin module, and the installer refuses to build its engine
anywhere else. The bundle is made here from the tiny test model; its target is the module this test runs
on (identified from the device tree and RAM).
"""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.bundle_fixtures import make_calibration_dir
from vqz_edge.trt.compat import tensorrt_available, tensorrt_version

pytestmark = [
    pytest.mark.trt,
    pytest.mark.skipif(not tensorrt_available(), reason="TensorRT is not installed on this host: run on a Jetson "
                       "(JetPack ships it)"),
    pytest.mark.skipif(not Path("/etc/nv_tegra_release").is_file(),
                       reason="not a Jetson (no /etc/nv_tegra_release): engines for Orin targets are built on the device"),
]


def test_install_tensorrt_on_device(tmp_path: Path) -> None:
    from vqz_edge.bundle import (
        BundleOptions,
        InstallOptions,
        create_bundle,
        generate_keypair,
        install_bundle,
        status,
    )
    from vqz_edge.bundle.plan_header import read_plan_header
    from vqz_edge.device import detect_device, identify_targets
    from vqz_edge.targets import jetpack_table, list_targets

    device = detect_device(tensorrt=tensorrt_version())
    names = identify_targets(device, list_targets())
    if not names:
        pytest.skip(f"cannot identify this module from the device tree ({device.model!r})")
    spec, cal = make_calibration_dir(tmp_path / "w")
    spec.write_text(spec.read_text().replace('targets = ["orin-nx-16gb", "orin-nano-8gb"]', f'targets = ["{names[0]}"]'))
    keys = generate_keypair(tmp_path / "k")
    jp = tuple(j.version for j in jetpack_table() if j.l4t == device.l4t)
    create_bundle(spec, tmp_path / "b.tar", BundleOptions(names[0], calibration_dir=cal, sign_key=keys.private_path,
                                                          jetpack=jp))
    res = install_bundle(tmp_path / "b.tar", tmp_path / "root",
                         InstallOptions(backend="tensorrt", public_key=keys.public_path))
    assert res.action == "installed" and res.smoke is not None and res.smoke.passed
    header = read_plan_header(tmp_path / "root" / "current" / "model.engine")
    assert device.tensorrt is not None and header.matches(device.tensorrt)
    assert status(tmp_path / "root")["healthy"]
