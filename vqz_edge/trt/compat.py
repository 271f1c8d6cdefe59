"""The imported TensorRT: lazy import with the supported-version gate, and the few API calls that differ
between 8.5/8.6, 10.x and 11.x that Polygraphy does not cover. The version facts themselves (what each
version supports) are :class:`vqz_edge.versions.TrtVersion`.

Nothing here imports tensorrt at module import time.
"""

from __future__ import annotations

import importlib
from types import ModuleType
from typing import TYPE_CHECKING

from ..errors import DependencyError, InputError
from ..versions import TrtVersion, require_supported

if TYPE_CHECKING:  # type-checked against tensorrt-stubs; never imported at run time here
    import tensorrt as trt

WHERE_TO_RUN = (
    "run this on the Jetson (JetPack ships TensorRT: python3-libnvinfer) or inside the vqz-edge Jetson "
    "container (docker/), or on an x86 host with NVIDIA's TensorRT wheels and a GPU"
)


def import_tensorrt() -> ModuleType:
    """Import the real tensorrt module, or raise DependencyError saying where to run. A TensorRT outside the
    supported range (8.5 - 11.x) is refused here, before any of its API is touched.

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
    runtime_version(trt)
    return trt


def runtime_version(module: ModuleType) -> TrtVersion:
    """The version of the TensorRT actually imported; DependencyError outside the supported range."""
    try:
        return require_supported(str(module.__version__))
    except InputError as exc:
        raise DependencyError(f"this host's {exc.message}", hint=exc.hint) from exc


def tensorrt_available() -> bool:
    try:
        import_tensorrt()
    except DependencyError:
        return False
    return True


def tensorrt_version() -> str | None:
    """The version of the supported TensorRT this process can import, or None."""
    try:
        return str(runtime_version(import_tensorrt()))
    except DependencyError:
        return None


# --- TensorRT API differences between 8.5, 8.6, 10.x and 11.x, in one place ----------------------------
# Each function takes real TensorRT objects and returns plain Python values. Where a name exists only in
# some versions it is looked up with getattr and the versions are named.


def parser_error_text(error: trt.ParserError) -> str:
    """One line per ONNX parser error, naming the node. node_name()/node_operator() exist from
    TensorRT 10.0; 8.5/8.6 only have the node index."""
    node_name = getattr(error, "node_name", None)  # absent in 8.5/8.6
    node_op = getattr(error, "node_operator", None)  # absent in 8.5/8.6
    where = f"node #{int(error.node())}"
    if node_name is not None:
        where += f" {node_name()!r}"
    if node_op is not None:
        where += f" ({node_op()})"
    return f"{where}: {error.desc()} [{error.code()}]"


def layer_metadata(layer: trt.ILayer) -> str:
    """The ONNX parser's '[ONNX Layer: <node>...]' metadata (ILayer.metadata: TensorRT 8.6+); '' on 8.5."""
    return str(getattr(layer, "metadata", "") or "")


def device_memory_per_profile(engine: trt.ICudaEngine) -> list[int]:
    """Activation (device) memory per optimisation profile.

    TensorRT 10.1+: get_device_memory_size_for_profile_v2 (11.x has only the _v2 forms); 10.0 had the non-v2
    per-profile call; 8.5/8.6 only report the maximum over all profiles (device_memory_size)."""
    n = int(engine.num_optimization_profiles)
    for name in ("get_device_memory_size_for_profile_v2", "get_device_memory_size_for_profile"):
        per_profile = getattr(engine, name, None)
        if per_profile is not None:
            return [int(per_profile(i)) for i in range(n)]
    total = getattr(engine, "device_memory_size_v2", None)
    if total is None:
        total = engine.device_memory_size  # 8.5 / 8.6
    return [int(total)] * n
