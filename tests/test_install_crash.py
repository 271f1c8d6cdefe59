"""Crash safety: the installer is SIGKILLed (``VQZ_TEST_CRASH_AT=<stage>``, the installer kills itself with
SIGKILL at that point: no cleanup, no finally blocks) at each stage of an install, a JetPack-upgrade
rebuild and a rollback. Afterwards ``current`` must point to a verified, working release (we run the
bundle's reference input through it), ``status`` must say what happened, and the next run must recover.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.bundle_fixtures import (
    NV_TEGRA_61,
    NV_TEGRA_62,
    fake_jetson,
    make_bundles,
    opts,
    smoke_through_current,
)
from tests.conftest import ROOT
from vqz_edge.bundle import CRASH_ENV, CRASH_POINTS, install_bundle, refresh, rollback, status


@pytest.fixture(scope="session")
def bundles(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    return make_bundles(tmp_path_factory.mktemp("crash-bundles"))


def killed_cli(stage: str, *args: str) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    env[CRASH_ENV] = stage
    return subprocess.run([sys.executable, "-m", "vqz_edge", *args], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=300)


def cli_args(bundles: dict[str, Path], device_dir: Path | None = None) -> list[str]:
    out = ["--key", str(bundles["pub"]), "--backend", "onnxruntime", "--no-jtop", "-q"]
    if device_dir is not None:
        out += ["--nv-tegra-release", str(device_dir / "nv_tegra_release"), "--device-tree", str(device_dir / "device-tree"),
                "--meminfo", str(device_dir / "meminfo")]
    return out


# stage -> (last stage the journal recorded, whether current had been switched to the new release)
EXPECTED = {
    "after_extract": ("extracted", False),
    "mid_build": ("building", False),
    "before_switch": ("release_verified", False),
    "after_switch": ("release_verified", True),
}


@pytest.mark.parametrize("stage", CRASH_POINTS)
def test_kill_during_install(bundles: dict[str, Path], tmp_path: Path, stage: str) -> None:
    root = tmp_path / "root"
    v1 = install_bundle(bundles["v1"], root, opts(bundles))
    r = killed_cli(stage, "install", str(bundles["v2"]), "--root", str(root), *cli_args(bundles))
    assert r.returncode == -9, (r.returncode, r.stderr)  # SIGKILL: nothing after the crash point ran

    last_stage, switched = EXPECTED[stage]
    st = status(root)
    cur = st["current"]
    assert cur is not None and st["healthy"]
    if switched:
        assert cur["bundle_id"] != v1.bundle_id and cur["bundle_version"] == 2  # only ever switched after verification
        assert not st["state_consistent"]  # state.json is completed by the next run
    else:
        assert cur["bundle_id"] == v1.bundle_id
    assert smoke_through_current(root) >= cur["smoke"]["threshold"]  # current really works
    op = st["last_operation"]
    assert op["result"] == "interrupted" and op["kind"] == "install" and op["last_stage"] == last_stage
    assert op["switched"] is switched and not op["recovered"]
    assert ("switching current to the new" in op["explanation"]) is switched
    if stage == "mid_build":
        assert list(root.glob("releases/*/builds/.tmp-*"))  # the half-built folder is still there...

    res = install_bundle(bundles["v2"], root, opts(bundles))  # ...until the next run recovers
    assert res.action == ("noop" if switched else "installed")
    assert res.notes[0].startswith("recovered interrupted operation")
    st = status(root)
    assert st["state_consistent"] and st["current"]["bundle_version"] == 2 and st["highest_bundle_version"] == 2
    assert [e["bundle_version"] for e in st["history"]] == [1, 2]
    li = st["last_interrupted"]
    assert li["recovered"] and li["last_stage"] == last_stage and li["switched"] is switched
    assert not list(root.glob("releases/*/builds/.tmp-*")) and not list((root / "staging").iterdir())
    assert smoke_through_current(root) >= st["current"]["smoke"]["threshold"]


def test_kill_during_first_install(bundles: dict[str, Path], tmp_path: Path) -> None:
    root = tmp_path / "root"
    r = killed_cli("before_switch", "install", str(bundles["v1"]), "--root", str(root), *cli_args(bundles))
    assert r.returncode == -9
    s = subprocess.run([sys.executable, "-m", "vqz_edge", "status", "--root", str(root), "--json"], cwd=ROOT,
                       env={**os.environ, "PYTHONPATH": str(ROOT)}, capture_output=True, text=True, timeout=120)
    assert s.returncode == 1  # not healthy: nothing is being served
    st = json.loads(s.stdout)
    assert st["current"] is None and not (root / "current").exists()
    assert st["last_operation"]["result"] == "interrupted" and st["last_operation"]["last_stage"] == "release_verified"
    assert install_bundle(bundles["v1"], root, opts(bundles)).action == "installed"
    assert status(root)["healthy"]


@pytest.mark.parametrize("stage", ["before_switch", "after_switch"])
def test_kill_during_upgrade_rebuild(bundles: dict[str, Path], tmp_path: Path, stage: str) -> None:
    dev = tmp_path / "dev"
    paths = fake_jetson(dev, release=NV_TEGRA_61)
    root = tmp_path / "root"
    first = install_bundle(bundles["v1"], root, opts(bundles, paths))
    (dev / "nv_tegra_release").write_text(NV_TEGRA_62)
    r = killed_cli(stage, "install", "--root", str(root), *cli_args(bundles, dev))
    assert r.returncode == -9, r.stderr
    st = status(root)
    want = "onnxruntime-l4t36.4.3" if stage == "after_switch" else first.device_key
    assert st["current"]["device_key"] == want and st["healthy"]
    assert smoke_through_current(root) >= st["current"]["smoke"]["threshold"]
    assert st["last_operation"]["kind"] == "refresh" and st["last_operation"]["result"] == "interrupted"
    res = refresh(root, opts(bundles, paths))
    assert res.action == ("noop" if stage == "after_switch" else "rebuilt")
    st = status(root)
    assert st["state_consistent"] and [e["device_key"] for e in st["history"]] == ["onnxruntime-l4t36.4.3"]


def test_kill_during_rollback(bundles: dict[str, Path], tmp_path: Path) -> None:
    root = tmp_path / "root"
    v1 = install_bundle(bundles["v1"], root, opts(bundles))
    install_bundle(bundles["v2"], root, opts(bundles))
    r = killed_cli("after_switch", "rollback", "--root", str(root), "--backend", "onnxruntime", "--no-jtop", "-q")
    assert r.returncode == -9, r.stderr
    st = status(root)
    assert st["current"]["bundle_id"] == v1.bundle_id and not st["state_consistent"]
    assert st["last_operation"]["kind"] == "rollback" and st["last_operation"]["switched"]
    # the next run completes the rollback's bookkeeping: v1 is the only release left in the history
    assert install_bundle(bundles["v2"], root, opts(bundles)).action == "installed"
    st = status(root)
    assert [e["bundle_version"] for e in st["history"]] == [1, 2] and st["state_consistent"]
    assert rollback(root, opts(bundles)).bundle_id == v1.bundle_id
