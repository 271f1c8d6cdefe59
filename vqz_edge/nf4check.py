"""Is 4-bit (bitsandbytes NF4) really available here? Decided by running a kernel, never by ``import``.

On a Jetson Orin, bitsandbytes from PyPI imports fine and fails at the first 4-bit kernel ("Error named symbol
not found", bitsandbytes issues #1930 / #1941: the aarch64 wheels are built against server-ARM CUDA, not
JetPack's L4T CUDA). :func:`check_nf4` therefore quantizes a weight to NF4 on the GPU, dequantizes it, and
runs ``matmul_4bit`` through both paths a model uses (one token: the 4-bit GEMV inference kernel; several
tokens: dequantize + matmul), comparing against the same matmul on the dequantized weight and the dequantized
weight against the original. NF4 is reported available only when that ran on the GPU and matched.

Runs on the device: Python 3.8 compatible; torch and bitsandbytes are imported when the check runs.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

from .log import get_logger

_log = get_logger(__name__)

#: The NF4 code's largest gap between neighbouring levels is 0.277 of the block's absmax (between 0.723 and
#: 1.0), so a round-to-nearest value is at most half of that away: 0.139 x absmax; double quantization stores
#: the absmax itself in 8 bits (dynamic map, measured up to ~2% off), so the bound allows 0.139 + 0.06.
#: A kernel that runs but computes garbage lands far above (errors of the order of the absmax, or NaN).
NF4_MAX_ERR_OF_ABSMAX = 0.2
#: matmul_4bit vs the same product on the dequantized weight (FP16 accumulation on the GPU).
MATMUL_MAX_REL_ERR = 2e-2
#: The torch device the GPU check runs on.
GPU_DEVICE = "cuda"
BUILD_HINT = ("build bitsandbytes from source against this device's CUDA for its compute capability "
              "(Jetson Orin: COMPUTE_CAPABILITY=87, as jetson-containers does; docker/Dockerfile.jetson does it)")


@dataclass(frozen=True)
class KernelCheck:
    device: str
    ran: bool
    ok: bool
    detail: str
    seconds: float = 0.0
    dequant_max_err_of_absmax: float | None = None
    matmul_max_rel_err: float | None = None
    error: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


@dataclass(frozen=True)
class Nf4Status:
    available: bool  # True only when the kernel ran on a GPU and matched
    gpu: str | None
    torch_version: str | None
    bitsandbytes_version: str | None
    message: str
    hint: str | None
    checks: list[KernelCheck] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {"nf4_available": self.available, "gpu": self.gpu, "torch": self.torch_version,
                "bitsandbytes": self.bitsandbytes_version, "message": self.message, "hint": self.hint,
                "checks": [c.to_dict() for c in self.checks]}


def run_kernel_check(device: str) -> KernelCheck:
    """Quantize a 512x256 weight to NF4 (double quant) on ``device``, dequantize it, and run matmul_4bit with one
    and with four tokens; compare with the bounds above. Exceptions of the kernels become a failed check."""
    import torch

    t0 = time.perf_counter()
    try:
        import bitsandbytes
        import bitsandbytes.functional as bnbf

        bnb: Any = bitsandbytes

        dtype = torch.float16 if device != "cpu" else torch.float32
        gen = torch.Generator().manual_seed(0)
        w = torch.randn(256, 512, generator=gen).to(device=device, dtype=dtype)
        x4 = torch.randn(4, 512, generator=gen).to(device=device, dtype=dtype)
        x1 = x4[:1].contiguous()
        packed, state = bnbf.quantize_4bit(w, quant_type="nf4", compress_statistics=True)
        w_hat = bnbf.dequantize_4bit(packed, state)
        y4 = bnb.matmul_4bit(x4, packed.t(), quant_state=state)
        y1 = bnb.matmul_4bit(x1, packed.t(), quant_state=state)
        if device != "cpu":
            torch.cuda.synchronize()
    except (RuntimeError, OSError, AttributeError, ImportError, TypeError, ValueError) as exc:
        msg = f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"
        return KernelCheck(device, True, False, f"the 4-bit kernel failed on {device}: {msg}",
                           time.perf_counter() - t0, error=msg)
    seconds = time.perf_counter() - t0
    wf, wh = w.float(), w_hat.float()
    blocks = wf.reshape(-1, 64)
    absmax = blocks.abs().amax(dim=1, keepdim=True)
    deq_err = float(((blocks - wh.reshape(-1, 64)).abs() / absmax).max())
    ref4 = x4.float() @ wh.t()
    ref1 = x1.float() @ wh.t()
    rel = max(float((y4.float() - ref4).abs().max() / ref4.abs().max()),
              float((y1.float() - ref1).abs().max() / ref1.abs().max()))
    finite = bool(torch.isfinite(y4).all() and torch.isfinite(y1).all())
    ok = finite and deq_err <= NF4_MAX_ERR_OF_ABSMAX and rel <= MATMUL_MAX_REL_ERR
    detail = (f"quantize_4bit + dequantize_4bit + matmul_4bit (1 and 4 tokens) on {device}: dequantization error "
              f"{deq_err:.3f} x block absmax (bound {NF4_MAX_ERR_OF_ABSMAX}), matmul rel. error {rel:.2e} "
              f"(bound {MATMUL_MAX_REL_ERR:g})" + ("" if finite else ", NON-FINITE outputs"))
    return KernelCheck(device, True, ok, detail, seconds, deq_err, rel)


def check_nf4(*, cpu: bool = False) -> Nf4Status:
    """The NF4 status of this machine. ``cpu``: also run the kernel check on bitsandbytes' CPU backend."""
    try:
        import torch
    except ImportError:
        return Nf4Status(False, None, None, None, "NF4: not available -- torch is not installed",
                         "install torch (on a Jetson: NVIDIA's JetPack wheel)")
    try:
        import bitsandbytes
        bnb_version: str | None = str(bitsandbytes.__version__)
    except (ImportError, RuntimeError, OSError) as exc:
        return Nf4Status(False, None, torch.__version__, None,
                         f"NF4: not available -- bitsandbytes does not import ({type(exc).__name__}: {exc})",
                         BUILD_HINT)
    checks: list[KernelCheck] = []
    if cpu:
        checks.append(run_kernel_check("cpu"))
    if not torch.cuda.is_available():
        msg = ("NF4 on the GPU: NOT CHECKED -- no CUDA GPU is present (torch.cuda.is_available() is False), so no "
               "4-bit kernel could run; NF4 is not reported available")
        return Nf4Status(False, None, torch.__version__, bnb_version, msg, None, checks)
    major, minor = torch.cuda.get_device_capability(0)
    gpu = f"{torch.cuda.get_device_name(0)} (sm_{major}{minor})"
    check = run_kernel_check(GPU_DEVICE)
    checks.append(check)
    if check.ok:
        return Nf4Status(True, gpu, torch.__version__, bnb_version, f"NF4 on the GPU: available -- {check.detail}",
                         None, checks)
    return Nf4Status(False, gpu, torch.__version__, bnb_version,
                     f"NF4 on the GPU: NOT available on {gpu} -- {check.detail}", BUILD_HINT, checks)
