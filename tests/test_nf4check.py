"""vqz-edge doctor: NF4 is reported available only after a real 4-bit kernel ran on a GPU and matched; without a
GPU it says so clearly; a kernel that fails after a successful import (the Jetson PyPI-wheel failure) is caught.
The kernel check itself runs for real here on bitsandbytes' CPU backend."""

from __future__ import annotations

import json

import pytest

from tests.conftest import run_cli
from vqz_edge import nf4check
from vqz_edge.cli import main

torch = pytest.importorskip("torch")
pytest.importorskip("bitsandbytes", reason="the NF4 self-test needs bitsandbytes")


def test_kernel_check_runs_for_real_on_the_cpu_backend() -> None:
    c = nf4check.run_kernel_check("cpu")
    assert c.ran and c.ok, c.detail
    assert c.dequant_max_err_of_absmax is not None and 0.0 < c.dequant_max_err_of_absmax <= nf4check.NF4_MAX_ERR_OF_ABSMAX
    assert c.matmul_max_rel_err is not None and c.matmul_max_rel_err <= nf4check.MATMUL_MAX_REL_ERR


def test_no_gpu_is_said_clearly_and_nf4_is_not_reported_available(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    s = nf4check.check_nf4()
    assert not s.available and s.gpu is None and not s.checks
    assert "NOT CHECKED -- no CUDA GPU is present" in s.message


def test_import_is_not_availability_a_failing_kernel_is_caught(monkeypatch: pytest.MonkeyPatch) -> None:
    """What happens on an Orin with the PyPI wheel: bitsandbytes imports, a GPU is there, the first kernel raises."""
    import bitsandbytes.functional as bnbf

    def broken(*args: object, **kwargs: object) -> None:
        raise RuntimeError("Error named symbol not found at line 233 in file /src/csrc/ops.cu")

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda i=0: (8, 7))
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda i=0: "Orin")
    monkeypatch.setattr(bnbf, "quantize_4bit", broken)
    monkeypatch.setattr(nf4check, "GPU_DEVICE", "cpu")  # no real GPU here: the tensors stay on the CPU
    s = nf4check.check_nf4()
    assert not s.available and s.gpu == "Orin (sm_87)"
    assert "named symbol not found" in s.message and "NOT available" in s.message
    assert s.hint is not None and "COMPUTE_CAPABILITY=87" in s.hint


def test_wrong_results_are_a_failure(monkeypatch: pytest.MonkeyPatch) -> None:
    """A kernel that runs but returns garbage is not 'available' either."""
    import bitsandbytes as bnb

    real = bnb.matmul_4bit
    monkeypatch.setattr(bnb, "matmul_4bit", lambda *a, **k: real(*a, **k) * 1.5)
    c = nf4check.run_kernel_check("cpu")
    assert c.ran and not c.ok and c.matmul_max_rel_err is not None and c.matmul_max_rel_err > 0.3


def test_cli_doctor_exit_codes(capsys: pytest.CaptureFixture[str]) -> None:
    if torch.cuda.is_available():  # pragma: no cover - on a GPU host the GPU path is the real one
        pytest.skip("this host has a GPU: the no-GPU exit codes do not apply")
    r = run_cli("doctor", "--cpu", "--json")
    assert r.returncode == 0, r.stderr
    doc = json.loads(r.stdout)
    assert doc["nf4_available"] is False and doc["checks"][0]["device"] == "cpu" and doc["checks"][0]["ok"] is True
    assert "no CUDA GPU" in doc["message"]
    assert main(["doctor", "--require-gpu"]) == 3
    assert "NOT CHECKED" in capsys.readouterr().out
