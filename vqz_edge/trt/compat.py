"""TensorRT version handling in one place: lazy import, version parsing, and the version codes
TensorRT writes into calibration-cache headers and plan files.

Nothing here imports tensorrt at module import time.
"""

from __future__ import annotations

import importlib
import re
from dataclasses import dataclass
from types import ModuleType

from ..errors import DependencyError, InputError

WHERE_TO_RUN = (
    "run this on the Jetson (JetPack ships TensorRT: python3-libnvinfer) or inside the vqz-edge Jetson "
    "container (docker/), or on an x86 host with NVIDIA's TensorRT wheels and a GPU"
)


@dataclass(frozen=True, order=True)
class TrtVersion:
    major: int
    minor: int
    patch: int = 0

    def __str__(self) -> str:
        return f"{self.major}.{self.minor}.{self.patch}"

    @property
    def code(self) -> int:
        """NV_TENSORRT_VERSION as TensorRT itself computes it (and writes into cache headers).

        TensorRT 8.x: major*1000 + minor*100 + patch (8.6.1 -> 8601).
        TensorRT 10+: major*10000 + minor*100 + patch (10.3.0 -> 100300).
        """
        if self.major >= 10:
            return self.major * 10000 + self.minor * 100 + self.patch
        return self.major * 1000 + self.minor * 100 + self.patch

    @property
    def supports_implicit_int8(self) -> bool:
        """IInt8EntropyCalibrator2 exists up to TensorRT 10 (deprecated since 10.1, removed in 11)."""
        return self.major <= 10

    @property
    def implicit_int8_deprecated(self) -> bool:
        return self >= TrtVersion(10, 1, 0)

    @property
    def supports_strongly_typed(self) -> bool:
        """NetworkDefinitionCreationFlag.STRONGLY_TYPED appeared in TensorRT 9/10."""
        return self.major >= 10


_VERSION_RE = re.compile(r"^\s*(\d+)\.(\d+)(?:\.(\d+))?(?:\.\d+)*\s*$")


def parse_trt_version(text: str) -> TrtVersion:
    """'8.6.1', '10.3.0', '10.3.0.26' -> TrtVersion."""
    m = _VERSION_RE.match(str(text))
    if not m:
        raise InputError(f"TensorRT version {text!r} is not of the form MAJOR.MINOR[.PATCH] (e.g. 10.3.0)")
    v = TrtVersion(int(m.group(1)), int(m.group(2)), int(m.group(3) or 0))
    if v.major < 8 or v.major > 11:
        raise InputError(f"TensorRT {v} is not supported; vqz-edge supports 8.5 - 11.x")
    return v


def import_tensorrt() -> ModuleType:
    """Import the real tensorrt module or raise DependencyError saying where to run.

    tensorrt-stubs installs a ``tensorrt`` namespace package holding only .pyi files; importing it
    "succeeds" with nothing inside, so presence of ``Builder`` is checked explicitly.
    """
    try:
        trt = importlib.import_module("tensorrt")
    except ImportError as exc:
        raise DependencyError(f"TensorRT is not installed on this host ({exc})", hint=WHERE_TO_RUN) from exc
    if not hasattr(trt, "Builder") or not hasattr(trt, "__version__"):
        raise DependencyError(
            "TensorRT is not installed on this host (only type stubs were found)", hint=WHERE_TO_RUN
        )
    return trt


def tensorrt_available() -> bool:
    try:
        import_tensorrt()
    except DependencyError:
        return False
    return True
