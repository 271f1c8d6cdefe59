"""The device commands as a user types them, in fresh processes whose ``tensorrt`` and ``pycuda`` are the
doubles (tests/doubles/site on PYTHONPATH): build -> run -> bench -> check-memory on the real demo MobileNetV2,
and install --backend tensorrt -> status -> rollback of a signed bundle on a simulated JetPack 5.1.2 Orin with
TensorRT 8.5 (what JetPack 5 ships). Nothing here ran against a real TensorRT."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from tests.bundle_fixtures import fake_jetson, make_calibration_dir
from tests.doubles import double_env

NV_TEGRA_512 = "# R35 (release), REVISION: 4.1, GCID: 33958178, BOARD: t186ref, EABI: aarch64, DATE: Tue Aug  1 19:57:35 UTC 2023\n"


def vqz(*args: str, cwd: Path, trt: str | None = "10.3", gpu: str = "orin-nx-16gb", version: str | None = None,
        timeout: float = 300) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "vqz_edge", *args], cwd=cwd, capture_output=True, text=True,
                          env=double_env(trt, gpu=gpu, version=version), timeout=timeout)


MOBILENET_SPEC = """version = 1
[model]
name = "mobilenet_v2"
source = "mobilenet_v2"
[[inputs]]
name = "input"
shape = [1, 3, 224, 224]
max_shape = [8, 3, 224, 224]
[calibration]
data = "demo"
[build]
targets = ["orin-nx-16gb"]
"""


@pytest.mark.parametrize("trt", ["10.3", "8.5"])
def test_build_run_bench_on_the_demo_mobilenet(trt: str, tmp_path: Path, mobilenet_calibrated: Path) -> None:
    import shutil

    import skimage.data

    shutil.copytree(mobilenet_calibrated, tmp_path / "calibration" / "mobilenet_v2")
    (tmp_path / "spec.toml").write_text(MOBILENET_SPEC)
    r = vqz("build", "spec.toml", "--json", cwd=tmp_path, trt=trt)
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout)
    assert out["status"] == "built" and out["mode"] == "explicit"
    assert out["precisions"].get("int8", 0) >= 50 and out["precisions"].get("fp32", 0) >= 1, out["precisions"]
    assert (tmp_path / out["directory"] / "model.engine").is_file() and out["tensorrt_version"].startswith(trt)

    photos = Path(skimage.data.__file__).parent
    r = vqz("run", out["directory"], "--input", str(photos / "chelsea.png"), str(photos / "coffee.png"), "--json",
            cwd=tmp_path, trt=trt)
    assert r.returncode == 0, r.stderr
    top = json.loads(r.stdout)["top_k"]
    assert top[0]["predictions"][0]["label"] in ("Egyptian cat", "tabby", "tiger cat")  # the cat, through the engine
    assert top[1]["predictions"][0]["label"] == "espresso"
    # the engine's manifest carries the recipe calibration recorded, and run reads it from there (no fallback)
    manifest = json.loads((tmp_path / out["directory"] / "manifest.json").read_text())
    assert manifest["preprocessing"]["preset"] == "imagenet" and manifest["preprocessing"]["size"] == [224, 224]
    assert manifest["preprocessing"]["origin"].startswith("recorded in ") and "plan.json" in manifest["preprocessing"]["origin"]
    assert json.loads(r.stdout)["warnings"] == [] and json.loads(r.stdout)["preprocessing"]["preset"] == "imagenet"
    r = vqz("run", out["directory"], "--input", str(photos / "chelsea.png"), "--preprocess", "clip", cwd=tmp_path, trt=trt)
    assert r.returncode == 2 and "manifest.json recorded" in r.stderr and "* mean" in r.stderr, r.stderr

    r = vqz("bench", out["directory"], "--batch", "2", "--iterations", "3", "--warmup", "1", "--json", cwd=tmp_path, trt=trt)
    assert r.returncode == 0, r.stderr
    bench = json.loads(r.stdout)
    assert bench["backend"] == "tensorrt" and bench["throughput_per_s"] > 0

    r = vqz("check-memory", out["directory"], "--json", cwd=tmp_path, trt=trt)
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["fits"] is True

    r = vqz("build", "spec.toml", "--json", cwd=tmp_path, trt=trt)  # same inputs, same TensorRT: skipped
    assert r.returncode == 0 and json.loads(r.stdout)["status"] == "skipped"
    r = vqz("run", out["directory"], "--input", str(photos / "chelsea.png"), cwd=tmp_path, trt="11.1")
    assert r.returncode == 5 and "built with TensorRT" in r.stderr  # a JetPack upgrade: refused before loading


def test_install_with_tensorrt_backend_on_jetpack_512(tmp_path: Path) -> None:
    """JetPack 5.1.2 (L4T 35.4.1, TensorRT 8.5.2, Python 3.8 on the device): install builds the engine from the
    signed bundle, smoke-tests it, switches; status reads it back; a tampered bundle is refused."""
    keys = tmp_path / "fleet"
    r = vqz("keys", "generate", "-o", str(keys), cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    spec, cal = make_calibration_dir(tmp_path / "ws")
    r = vqz("bundle", str(spec), "--target", "orin-nx-16gb", "--calibration-dir", str(cal), "--jetpack", "5.1.2",
            "--sign-key", f"{keys}.key", "-o", str(tmp_path / "b.tar"), "--json", cwd=tmp_path, trt=None)
    assert r.returncode == 0, r.stderr
    dev = fake_jetson(tmp_path / "dev", release=NV_TEGRA_512)
    device = ["--nv-tegra-release", str(dev.nv_tegra_release), "--device-tree", str(dev.device_tree),
              "--meminfo", str(dev.meminfo), "--no-jtop"]
    root = tmp_path / "root"
    r = vqz("install", str(tmp_path / "b.tar"), "--root", str(root), "--key", f"{keys}.pub", "--backend", "tensorrt",
            "--json", *device, cwd=tmp_path, trt="8.5")
    assert r.returncode == 0, r.stderr
    res = json.loads(r.stdout)
    assert res["backend"] == "tensorrt" and res["device_key"] == "tensorrt-l4t35.4.1-trt8.5.2-sm87"
    assert res["smoke"]["passed"] is True
    r = vqz("status", "--root", str(root), "--json", cwd=tmp_path, trt="8.5")
    assert r.returncode == 0, r.stderr
    st = json.loads(r.stdout)
    assert st["current"]["backend"] == "tensorrt"
    x = np.load(next(root.rglob("reference/input_0.npy")))  # the bundle's own smoke input, kept beside the release
    np.save(tmp_path / "x.npy", x[:1])
    r = vqz("run", str(root / "current"), "--input", str(tmp_path / "x.npy"), "--json", cwd=tmp_path, trt="8.5")
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["outputs"]["output"]["shape"] == [1, 10]


def test_workstation_commands_say_they_need_python_310_on_the_device(tmp_path: Path) -> None:
    """On JetPack 5's Python 3.8 the device commands run (above) and the workstation ones refuse clearly."""
    r = vqz("vlm", "plan", "--all", cwd=tmp_path, trt=None)
    if sys.version_info >= (3, 10):
        assert r.returncode == 0, r.stderr
        return
    assert r.returncode == 3 and "workstation command and needs Python 3.10" in r.stderr
    r = vqz("targets", "--json", cwd=tmp_path, trt=None)
    assert r.returncode == 0 and len(json.loads(r.stdout)["targets"]) == 7
