"""TensorRT version handling in one place: lazy import, version parsing, the version codes
TensorRT writes into calibration-cache headers and plan files, what each version supports
(``TrtVersion`` properties), and the few API calls that differ between 8.6, 10.x and 11.x.

Nothing here imports tensorrt at module import time.
"""

from __future__ import annotations

import importlib
import re
from dataclasses import dataclass
from types import ModuleType
from typing import TYPE_CHECKING

from ..errors import DependencyError, InputError

if TYPE_CHECKING:  # type-checked against tensorrt-stubs; never imported at run time here
    import tensorrt as trt

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

    @property
    def supports_weak_typing(self) -> bool:
        """BuilderFlag.FP16/INT8 and per-layer precision / output types (weakly typed networks).

        Deprecated in TensorRT 10.12 ("superseded by strong typing"); we assume 11 drops them.
        """
        return self.major <= 10

    @property
    def needs_explicit_batch_flag(self) -> bool:
        """TensorRT 8.x needs NetworkDefinitionCreationFlag.EXPLICIT_BATCH; 10 ignores it (deprecated)."""
        return self.major < 10

    @property
    def supports_progress_monitor(self) -> bool:
        """IBuilderConfig.progress_monitor / trt.IProgressMonitor exist from TensorRT 10.0."""
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


# --- TensorRT API differences between 8.6, 10.x and 11.x, in one place ----------------------------
# Each function takes real TensorRT objects and returns plain Python values. APIs missing from the
# 10.x stubs (or from older runtimes) are reached with getattr, with a comment saying which version.


def runtime_version(module: ModuleType) -> TrtVersion:
    """The version of the TensorRT actually imported (not the target's catalog version)."""
    return parse_trt_version(str(module.__version__))


def network_flags(version: TrtVersion, *, strongly_typed: bool) -> int:
    """Flags for Builder.create_network()."""
    import tensorrt as trt

    flags = 0
    if version.needs_explicit_batch_flag:  # 8.x: implicit batch is the default there
        flags |= 1 << int(trt.NetworkDefinitionCreationFlag.EXPLICIT_BATCH)
    if strongly_typed:
        if not version.supports_strongly_typed:
            raise InputError(f"TensorRT {version} has no strongly typed networks (needs 10.0 or newer)")
        flags |= 1 << int(trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED)
    return flags


def parser_error_text(error: trt.ParserError) -> str:
    """One line per ONNX parser error, naming the node. node_name()/node_operator() exist from
    TensorRT 10.0; 8.6 only has the node index."""
    node_name = getattr(error, "node_name", None)  # absent in 8.6
    node_op = getattr(error, "node_operator", None)  # absent in 8.6
    where = f"node #{int(error.node())}"
    if node_name is not None:
        where += f" {node_name()!r}"
    if node_op is not None:
        where += f" ({node_op()})"
    return f"{where}: {error.desc()} [{error.code()}]"


def layer_metadata(layer: trt.ILayer) -> str:
    """The ONNX parser's '[ONNX Layer: <node>]' metadata (TensorRT 8.6+/10); '' where unavailable."""
    return str(getattr(layer, "metadata", "") or "")


def device_memory_per_profile(engine: trt.ICudaEngine) -> list[int]:
    """Activation (device) memory per optimisation profile. get_device_memory_size_for_profile exists
    from TensorRT 10.1; older runtimes only report the maximum over all profiles."""
    per_profile = getattr(engine, "get_device_memory_size_for_profile", None)
    n = int(engine.num_optimization_profiles)
    if per_profile is not None:
        return [int(per_profile(i)) for i in range(n)]
    return [int(engine.device_memory_size)] * n
