from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


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
def mobilenet_onnx(tmp_path_factory: pytest.TempPathFactory, mobilenet_weights: Path) -> Path:
    """The demo MobileNetV2 exported once per session (BN folded, verified)."""
    from vqz_edge.export import ExportOptions, export_model

    out = tmp_path_factory.mktemp("mobilenet") / "model.onnx"
    export_model("mobilenet_v2", out, ExportOptions(weights=mobilenet_weights))
    return out


@pytest.fixture(scope="session")
def mobilenet_calibrated(tmp_path_factory: pytest.TempPathFactory, mobilenet_onnx: Path) -> Path:
    """The demo MobileNetV2 calibrated once per session on 64 demo crops (entropy); returns OUTDIR."""
    from vqz_edge.calib import CalibrationOptions, calibrate

    out = tmp_path_factory.mktemp("mobilenet_calib")
    calibrate(mobilenet_onnx, "demo", out, CalibrationOptions(num_images=64, batch_size=16), model_name="mobilenet_v2")
    return out
