"""The TensorRT + pycuda backend of :class:`vqz_edge.runtime.EngineRunner` (runs on the device).

* Before deserialising: the manifest is verified against this runtime (engine sha256, TensorRT version,
  compute capability) and the memory budget is checked against the memory free right now; a mismatch or
  a model that does not fit is refused before any TensorRT object exists.
* I/O buffers are allocated once, at the largest profile shape:
  - integrated GPU (Jetson): zero-copy -- page-locked host memory mapped into the GPU's address space
    (``pagelocked_empty(..., mem_flags=host_alloc_flags.DEVICEMAP)`` + ``get_device_pointer()``); TensorRT
    reads the input where numpy wrote it, no copies;
  - discrete GPU: device buffers (``mem_alloc``) with page-locked staging buffers and async copies.
* Execution is asynchronous on one CUDA stream, synchronised once per ``run``; dynamic shapes within the
  engine's optimisation profile 0.
* TensorRT 8.x (bindings API: ``num_bindings``, ``set_binding_shape``, ``execute_async_v2``) and 10.x
  (tensor-name API: ``num_io_tensors``, ``set_input_shape``, ``set_tensor_address``, ``execute_async_v3``)
  differ in one place only: :func:`io_api`.

tensorrt and pycuda are imported lazily (inside functions). pycuda has no type stubs: its objects are ``Any``.
"""

from __future__ import annotations

import abc
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from ..errors import DependencyError, DeviceRuntimeError, InputError
from ..log import get_logger
from ..runtime.base import EngineRunner, IOInfo
from ..runtime.manifest import EngineManifest, verify_manifest
from .compat import TrtVersion, import_tensorrt, parse_trt_version

if TYPE_CHECKING:
    import tensorrt as trt

_log = get_logger(__name__)

BudgetCallback = Callable[[int, str], None]
"""Called with (free bytes, where the number came from) before deserialising; raises BudgetError to refuse."""

_NUMPY_DTYPES: dict[str, type[np.generic]] = {
    "FLOAT": np.float32, "HALF": np.float16, "INT8": np.int8, "INT32": np.int32, "INT64": np.int64,
    "BOOL": np.bool_, "UINT8": np.uint8,
}


TrtRuntimeError = DeviceRuntimeError


def import_pycuda() -> Any:
    """``pycuda.driver`` or DependencyError (pycuda is the ``jetson`` extra)."""
    try:
        import pycuda.driver as cuda
    except ImportError as exc:
        raise DependencyError(
            "pycuda is not installed; the TensorRT runtime uses it for CUDA memory and streams",
            hint="on the Jetson: pip install 'vqz-edge[jetson]' (builds pycuda against JetPack's CUDA)",
        ) from exc
    return cuda


def dims(d: trt.Dims) -> tuple[int, ...]:
    """TensorRT Dims -> tuple (Dims supports len() and indexing)."""
    return tuple(int(d[i]) for i in range(len(d)))


def numpy_dtype(dtype: trt.DataType) -> np.dtype[Any]:
    name = dtype.name
    if name not in _NUMPY_DTYPES:
        raise TrtRuntimeError(f"TensorRT I/O dtype {name} has no numpy equivalent in this runtime")
    return np.dtype(_NUMPY_DTYPES[name])


@dataclass
class Binding:
    """One engine I/O tensor and its buffers (allocated at the max profile shape)."""

    name: str
    index: int
    is_input: bool
    dtype: np.dtype[Any]
    shape: tuple[int, ...]
    profile: tuple[tuple[int, ...], tuple[int, ...], tuple[int, ...]] | None
    host: np.ndarray[Any, Any] | None = None
    device_ptr: int = 0
    device_alloc: Any = None  # pycuda DeviceAllocation on discrete GPUs

    def info(self) -> IOInfo:
        lo, opt, hi = self.profile if self.profile is not None else (None, None, None)
        return IOInfo(self.name, self.dtype.name, self.shape, min_shape=lo, max_shape=hi, opt_shape=opt)


# ------------------------------------------------------------------------------ TensorRT version branch


class IoApi(abc.ABC):
    """The calls that differ between TensorRT 8.x and 10.x."""

    @abc.abstractmethod
    def bindings(self, engine: trt.ICudaEngine) -> list[Binding]: ...

    @abc.abstractmethod
    def set_input_shape(self, context: trt.IExecutionContext, b: Binding, shape: Sequence[int]) -> bool: ...

    @abc.abstractmethod
    def shape(self, context: trt.IExecutionContext, b: Binding) -> tuple[int, ...]: ...

    def bind(self, context: trt.IExecutionContext, bindings: Sequence[Binding]) -> None:  # noqa: B027 -- optional hook
        """Register buffer addresses that stay valid for the runner's lifetime (10.x); no-op for 8.x."""

    @abc.abstractmethod
    def execute(self, context: trt.IExecutionContext, bindings: Sequence[Binding], stream_handle: int) -> bool: ...


class TensorNameApi(IoApi):
    """TensorRT >= 10: tensors addressed by name, ``execute_async_v3``."""

    def bindings(self, engine: trt.ICudaEngine) -> list[Binding]:
        import tensorrt as trt

        out = []
        for i in range(engine.num_io_tensors):
            name = engine.get_tensor_name(i)
            is_input = engine.get_tensor_mode(name) == trt.TensorIOMode.INPUT
            shape = dims(engine.get_tensor_shape(name))
            profile = None
            if is_input and any(d < 0 for d in shape) and engine.num_optimization_profiles > 0:
                lo, opt, hi = (dims(d) for d in engine.get_tensor_profile_shape(name, 0))
                profile = (lo, opt, hi)
            out.append(Binding(name, i, is_input, numpy_dtype(engine.get_tensor_dtype(name)), shape, profile))
        return out

    def set_input_shape(self, context: trt.IExecutionContext, b: Binding, shape: Sequence[int]) -> bool:
        return bool(context.set_input_shape(b.name, list(shape)))

    def shape(self, context: trt.IExecutionContext, b: Binding) -> tuple[int, ...]:
        return dims(context.get_tensor_shape(b.name))

    def bind(self, context: trt.IExecutionContext, bindings: Sequence[Binding]) -> None:
        for b in bindings:
            if not context.set_tensor_address(b.name, b.device_ptr):
                raise TrtRuntimeError(f"TensorRT refused the buffer address for tensor {b.name!r}")

    def execute(self, context: trt.IExecutionContext, bindings: Sequence[Binding], stream_handle: int) -> bool:
        return bool(context.execute_async_v3(stream_handle))


class BindingsApi(IoApi):
    """TensorRT 8.x: binding indices, ``set_binding_shape``, ``execute_async_v2``.

    The stubs describe TensorRT 10, which removed these calls, so engine/context are handled as ``Any`` here.
    """

    def bindings(self, engine: trt.ICudaEngine) -> list[Binding]:
        eng: Any = engine
        out = []
        for i in range(int(eng.num_bindings)):
            is_input = bool(eng.binding_is_input(i))
            shape = tuple(int(x) for x in eng.get_binding_shape(i))
            profile = None
            if is_input and any(d < 0 for d in shape) and int(eng.num_optimization_profiles) > 0:
                lo, opt, hi = (tuple(int(x) for x in d) for d in eng.get_profile_shape(0, i))
                profile = (lo, opt, hi)
            out.append(Binding(str(eng.get_binding_name(i)), i, is_input, numpy_dtype(eng.get_binding_dtype(i)),
                               shape, profile))
        return out

    def set_input_shape(self, context: trt.IExecutionContext, b: Binding, shape: Sequence[int]) -> bool:
        ctx: Any = context
        return bool(ctx.set_binding_shape(b.index, tuple(shape)))

    def shape(self, context: trt.IExecutionContext, b: Binding) -> tuple[int, ...]:
        ctx: Any = context
        return tuple(int(x) for x in ctx.get_binding_shape(b.index))

    def execute(self, context: trt.IExecutionContext, bindings: Sequence[Binding], stream_handle: int) -> bool:
        ctx: Any = context
        ptrs = [0] * len(bindings)
        for b in bindings:
            ptrs[b.index] = b.device_ptr
        return bool(ctx.execute_async_v2(bindings=ptrs, stream_handle=stream_handle))


def io_api(version: TrtVersion) -> IoApi:
    """The one place where TensorRT 8.x and 10.x part ways."""
    return TensorNameApi() if version.major >= 10 else BindingsApi()


# ------------------------------------------------------------------------------ device facts


@dataclass(frozen=True)
class DeviceInfo:
    name: str
    compute_capability: str
    integrated: bool
    can_map_host_memory: bool
    total_bytes: int


def device_info(cuda: Any, device: Any) -> DeviceInfo:
    major, minor = device.compute_capability()
    attr = cuda.device_attribute
    return DeviceInfo(
        name=str(device.name()),
        compute_capability=f"{int(major)}.{int(minor)}",
        integrated=bool(device.get_attribute(attr.INTEGRATED)),
        can_map_host_memory=bool(device.get_attribute(attr.CAN_MAP_HOST_MEMORY)),
        total_bytes=int(device.total_memory()),
    )


def free_memory(cuda: Any, info: DeviceInfo) -> tuple[int, str]:
    """Bytes the engine can still get: system MemAvailable/jtop on an integrated GPU (cudaMemGetInfo there
    under-reports: it ignores reclaimable page cache), cudaMemGetInfo on a discrete one."""
    if info.integrated:
        from ..memory.meminfo import read_live_memory

        live = read_live_memory()
        return live.available_bytes, live.source
    free, _total = cuda.mem_get_info()
    return int(free), "cudaMemGetInfo"


# ------------------------------------------------------------------------------ the runner


class TrtRunner(EngineRunner):
    backend = "tensorrt"

    def __init__(self, manifest: EngineManifest, *, budget: BudgetCallback | None = None, device: int = 0) -> None:
        super().__init__(manifest.directory)
        self.manifest = manifest
        trt_mod = import_tensorrt()
        cuda = import_pycuda()
        import tensorrt as trt

        self._cuda = cuda
        self.trt_version = parse_trt_version(str(trt_mod.__version__))
        cuda.init()
        dev = cuda.Device(device)
        self.device = device_info(cuda, dev)
        self._ctx: Any = dev.retain_primary_context()  # TensorRT's runtime API uses the primary context too
        self._ctx.push()
        self._bindings: list[Binding] = []
        self._engine: trt.ICudaEngine | None = None
        self._context: trt.IExecutionContext | None = None
        try:
            engine_path = verify_manifest(
                manifest, trt_version=str(self.trt_version), compute_capability=self.device.compute_capability
            )
            if budget is not None:
                free, source = free_memory(cuda, self.device)
                budget(free, source)  # raises BudgetError: nothing deserialised yet
            self._api = io_api(self.trt_version)
            self._logger = trt.Logger(trt.Logger.WARNING)
            self._runtime = trt.Runtime(self._logger)
            engine = self._runtime.deserialize_cuda_engine(engine_path.read_bytes())
            if engine is None:
                raise TrtRuntimeError(f"TensorRT could not deserialise {engine_path} (see the TensorRT log above)")
            self._engine = engine
            context = engine.create_execution_context()
            if context is None:
                raise TrtRuntimeError(f"TensorRT could not create an execution context for {engine_path}")
            self._context = context
            self._stream: Any = cuda.Stream()
            self.zero_copy = self.device.integrated and self.device.can_map_host_memory
            self._bindings = self._api.bindings(engine)
            self._allocate(context)
            self._api.bind(context, self._bindings)
        except BaseException:
            self._free()
            raise
        _log.info("loaded %s on %s (cc %s, %s, TensorRT %s)", engine_path, self.device.name,
                  self.device.compute_capability, "zero-copy" if self.zero_copy else "device buffers", self.trt_version)

    # -- allocation ---------------------------------------------------------------------------

    def _allocate(self, context: trt.IExecutionContext) -> None:
        cuda = self._cuda
        for b in self._bindings:  # outputs are sized with every input at its profile max
            if b.is_input and b.profile is not None and not self._api.set_input_shape(context, b, b.profile[2]):
                raise TrtRuntimeError(f"TensorRT rejected the profile max shape {list(b.profile[2])} for {b.name!r}")
        for b in self._bindings:
            shape = b.profile[2] if (b.is_input and b.profile is not None) else self._api.shape(context, b)
            if any(d < 0 for d in shape):
                raise TrtRuntimeError(f"cannot size buffer {b.name!r}: shape {list(shape)} is still dynamic")
            count = max(1, math.prod(shape))
            if self.zero_copy:
                host = cuda.pagelocked_empty(count, b.dtype, mem_flags=cuda.host_alloc_flags.DEVICEMAP)
                b.host = host
                b.device_ptr = int(host.base.get_device_pointer())
            else:
                b.host = cuda.pagelocked_empty(count, b.dtype)
                b.device_alloc = cuda.mem_alloc(count * b.dtype.itemsize)
                b.device_ptr = int(b.device_alloc)

    # -- API ----------------------------------------------------------------------------------

    @property
    def inputs(self) -> list[IOInfo]:
        return [b.info() for b in self._bindings if b.is_input]

    @property
    def outputs(self) -> list[IOInfo]:
        return [b.info() for b in self._bindings if not b.is_input]

    def _run(self, feeds: dict[str, np.ndarray[Any, Any]]) -> dict[str, np.ndarray[Any, Any]]:
        cuda, stream, context = self._cuda, self._stream, self._context
        if context is None:
            raise InputError("runner is closed")
        for b in self._bindings:
            if not b.is_input:
                continue
            arr = feeds[b.name]
            if not self._api.set_input_shape(context, b, arr.shape):
                raise InputError(f"TensorRT rejected shape {list(arr.shape)} for input {b.name!r}")
            view = self._host(b)[: arr.size].reshape(arr.shape)
            np.copyto(view, arr)
            if not self.zero_copy:
                cuda.memcpy_htod_async(b.device_ptr, view, stream)
        if not self._api.execute(context, self._bindings, int(stream.handle)):
            raise TrtRuntimeError(f"TensorRT failed to execute {self.manifest.engine_file}")
        results: dict[str, np.ndarray[Any, Any]] = {}
        pending = []
        for b in self._bindings:
            if b.is_input:
                continue
            shape = self._api.shape(context, b)
            view = self._host(b)[: max(1, math.prod(shape))]
            if not self.zero_copy:
                cuda.memcpy_dtoh_async(view, b.device_ptr, stream)
            pending.append((b.name, view, shape))
        stream.synchronize()
        for name, view, shape in pending:
            results[name] = view.reshape(shape).copy()  # buffers are reused by the next run
        return results

    @staticmethod
    def _host(b: Binding) -> np.ndarray[Any, Any]:
        if b.host is None:
            raise InputError(f"buffer for {b.name!r} is released; the runner is closed")
        return b.host

    def _free(self) -> None:
        for b in self._bindings:
            if b.device_alloc is not None:
                b.device_alloc.free()
                b.device_alloc = None
            b.host = None
        self._context = None
        self._engine = None
        if getattr(self, "_ctx", None) is not None:
            self._ctx.pop()
            self._ctx.detach()
            self._ctx = None

    def _release(self) -> None:
        self._free()

    def describe(self) -> dict[str, Any]:
        return {
            **super().describe(),
            "tensorrt_version": str(self.trt_version),
            "device": self.device.name,
            "compute_capability": self.device.compute_capability,
            "integrated": self.device.integrated,
            "zero_copy": self.zero_copy,
        }
