from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption(
        "--trt-double", metavar="VERSION", choices=("8.5", "8.6", "10.3", "11.1"),
        help="run with the tensorrt/pycuda test doubles of this TensorRT release (tests/doubles) in place of a "
        "real TensorRT, e.g. `pytest -m trt --trt-double 10.3 tests/trt` (CI does this for every release)",
    )


def pytest_configure(config: pytest.Config) -> None:
    key = config.getoption("--trt-double")
    if key:  # before collection: tests/trt's skip conditions must see the double
        from tests.doubles import install_doubles

        patcher = pytest.MonkeyPatch()
        install_doubles(patcher, key)
        config._vqz_double_patch = patcher  # type: ignore[attr-defined]  # undone at the end of the session


def pytest_unconfigure(config: pytest.Config) -> None:
    patcher = getattr(config, "_vqz_double_patch", None)
    if patcher is not None:
        patcher.undo()


@pytest.fixture(scope="session")
def mobilenet_weights() -> Path:
    from vqz_edge.demo import mobilenet_weights

    return mobilenet_weights()


def run_cli(*args: str, cwd: Path | None = None, timeout: float = 600) -> subprocess.CompletedProcess[str]:
    """Run the real console entry point as a user would (a fresh process)."""
    env = dict(os.environ)
    env["PYTHONPATH"] = str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    return subprocess.run(
        [sys.executable, "-m", "vqz_edge", *args], cwd=cwd or ROOT, env=env, capture_output=True, text=True,
        timeout=timeout,
    )


@pytest.fixture(scope="session")
def mobilenet_onnx(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The demo MobileNetV2 exported once per session (BN folded, verified); $VQZ_TEST_MOBILENET_ONNX points at one
    exported already (CI reuses the demo's calibration/mobilenet_v2/model.onnx across its test runs)."""
    given = os.environ.get("VQZ_TEST_MOBILENET_ONNX")
    if given and Path(given).is_file():
        return Path(given)
    pytest.importorskip("torch", reason="exporting the demo model needs torch (the workstation side)")
    from vqz_edge.demo import mobilenet_weights
    from vqz_edge.export import ExportOptions, export_model

    out = tmp_path_factory.mktemp("mobilenet") / "model.onnx"
    export_model("mobilenet_v2", out, ExportOptions(weights=mobilenet_weights()))
    return out


@pytest.fixture(scope="session")
def mobilenet_calibrated(tmp_path_factory: pytest.TempPathFactory, mobilenet_onnx: Path) -> Path:
    """The demo MobileNetV2 calibrated once per session on 64 demo crops (entropy); returns OUTDIR."""
    if sys.version_info < (3, 10):
        pytest.skip("calibration is a workstation stage (Python 3.10+); this is the device's Python")
    from vqz_edge.calib import CalibrationOptions, calibrate

    out = tmp_path_factory.mktemp("mobilenet_calib")
    calibrate(mobilenet_onnx, "demo", out, CalibrationOptions(num_images=64, batch_size=16), model_name="mobilenet_v2")
    return out
