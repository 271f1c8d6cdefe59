"""The TensorRT + pycuda backend of :class:`vqz_edge.runtime.EngineRunner` (runs on the device).

* Before deserialising: the manifest is verified against this runtime (engine sha256, TensorRT version,
  compute capability) and the memory budget is checked against the memory free right now; a mismatch or a
  model that does not fit is refused before any TensorRT object exists.
* Deserialising goes through Polygraphy's ``EngineFromBytes``, which registers TensorRT's built-in plugins
  first (an engine with a plugin layer cannot be deserialised in a fresh process otherwise), with a
  ``trt.Runtime`` whose ``DLA_core`` is the manifest's: TensorRT's default (-1) runs a DLA engine on core 0.
* One execution API on every supported TensorRT (8.5 - 11.x): tensors by name (``set_input_shape``,
  ``set_tensor_address``, ``execute_async_v3``); the binding-index API is deprecated since 8.5 and gone in 10.
* I/O buffers are allocated once, at the largest profile shape:
  - integrated GPU (Jetson): zero-copy -- page-locked host memory mapped into the GPU's address space
    (``pagelocked_empty(..., mem_flags=host_alloc_flags.DEVICEMAP)`` + ``get_device_pointer()``); TensorRT
    reads the input where numpy wrote it, no copies;
  - discrete GPU: device buffers (``mem_alloc``) with page-locked staging buffers and async copies.
* Threads: a runner may be opened in one thread and used or closed from another, one call at a time (a lock
  serialises them). pycuda contexts are per thread, so every call pushes the device's primary context for its
  duration and pops it after; every CUDA object the runner owns is created and freed with that context current.
* Teardown, in dependency order, with the context current: synchronise the stream, free the I/O buffers, drop
  the execution context, the engine and the runtime, destroy the stream, then release the context (while it is
  current, so that pycuda really releases it from whichever thread closes the runner).

tensorrt and pycuda are imported lazily. pycuda has no type stubs: its objects are ``Any``.
"""

from __future__ import annotations

import contextlib
import math
import threading
import typing
from collections.abc import Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from ..artifacts.engine_manifest import EngineManifest, verify_manifest
from ..device import GpuInfo, gpu_from_device, import_pycuda, read_live_memory
from ..errors import DeviceRuntimeError, InputError
from ..log import get_logger
from ..trt.callbacks import collect_errors, polygraphy
from ..trt.compat import import_tensorrt, runtime_version
from .base import EngineRunner, IOInfo

if TYPE_CHECKING:
    import tensorrt as trt

_log = get_logger(__name__)

BudgetCallback = typing.Callable[[int, str], None]  # typing: Python 3.8
"""Called with (free bytes, where the number came from) before deserialising; raises BudgetError to refuse."""

_NUMPY_DTYPES: dict[str, type[np.generic]] = {
    "FLOAT": np.float32, "HALF": np.float16, "INT8": np.int8, "INT32": np.int32, "INT64": np.int64,
    "BOOL": np.bool_, "UINT8": np.uint8,
}


def dims(d: trt.Dims) -> tuple[int, ...]:
    """TensorRT Dims -> tuple (Dims supports len() and indexing)."""
    return tuple(int(d[i]) for i in range(len(d)))


def numpy_dtype(dtype: trt.DataType) -> np.dtype[Any]:
    name = dtype.name
    if name not in _NUMPY_DTYPES:
        raise DeviceRuntimeError(f"TensorRT I/O dtype {name} has no numpy equivalent in this runtime")
    return np.dtype(_NUMPY_DTYPES[name])


@dataclass
class Binding:
    """One engine I/O tensor and its buffers (allocated at the max profile shape)."""

    name: str
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


def engine_bindings(engine: trt.ICudaEngine) -> list[Binding]:
    """The engine's I/O tensors, by name (TensorRT >= 8.5)."""
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
        out.append(Binding(name, is_input, numpy_dtype(engine.get_tensor_dtype(name)), shape, profile))
    return out


def free_memory(cuda: Any, gpu: GpuInfo) -> tuple[int, str]:
    """Bytes the engine can still get: system MemAvailable/jtop on an integrated GPU (cudaMemGetInfo there
    under-reports: it ignores reclaimable page cache), cudaMemGetInfo on a discrete one."""
    if gpu.integrated:
        live = read_live_memory()
        return live.available_bytes, live.source
    free, _total = cuda.mem_get_info()
    return int(free), "cudaMemGetInfo"


class TrtRunner(EngineRunner):
    backend = "tensorrt"

    def __init__(self, manifest: EngineManifest, *, budget: BudgetCallback | None = None, device: int = 0) -> None:
        super().__init__(manifest.directory)
        self.manifest = manifest
        trt_mod = import_tensorrt()
        self.trt_version = runtime_version(trt_mod)
        cuda = import_pycuda()
        self._cuda = cuda
        self._lock = threading.RLock()
        self._bindings: list[Binding] = []
        self._engine: trt.ICudaEngine | None = None
        self._context: trt.IExecutionContext | None = None
        self._runtime: trt.Runtime | None = None
        self._stream: Any = None
        self._ctx: Any = None
        try:
            cuda.init()
            dev = cuda.Device(device)
            self.device = gpu_from_device(cuda, dev)
            self._ctx = dev.retain_primary_context()  # TensorRT's runtime API uses the primary context too
        except cuda.Error as exc:
            raise DeviceRuntimeError(f"CUDA device {device} is not usable: {exc}") from exc
        self.zero_copy = self.device.integrated and self.device.can_map_host_memory
        try:
            with self._current():
                self._open(trt_mod, cuda, budget)
        except BaseException:
            self._teardown()
            raise
        _log.info("loaded %s on %s (cc %s, %s, TensorRT %s%s)", manifest.engine_path, self.device.name,
                  self.device.compute_capability, "zero-copy" if self.zero_copy else "device buffers", self.trt_version,
                  f", DLA core {manifest.dla_core}" if manifest.dla_core is not None else "")

    @contextlib.contextmanager
    def _current(self) -> Iterator[None]:
        """The primary context current in the calling thread for the duration (any thread, one at a time)."""
        with self._lock:
            if self._ctx is None:
                raise InputError(f"runner for {self.path} is closed")
            self._ctx.push()
            try:
                yield
            finally:
                self._cuda.Context.pop()

    def _open(self, trt_mod: Any, cuda: Any, budget: BudgetCallback | None) -> None:
        engine_path = verify_manifest(
            self.manifest, trt_version=str(self.trt_version), compute_capability=self.device.compute_capability
        )
        if budget is not None:
            free, source = free_memory(cuda, self.device)
            budget(free, source)  # raises BudgetError: nothing deserialised yet
        pg = polygraphy()
        from polygraphy.exception import PolygraphyException

        runtime = trt_mod.Runtime(pg.get_trt_logger())
        if self.manifest.dla_core is not None:
            runtime.DLA_core = self.manifest.dla_core  # default -1 would run a DLA engine on core 0
        self._runtime = runtime
        with collect_errors() as errors:
            try:
                engine = pg.EngineFromBytes(engine_path.read_bytes(), runtime=runtime)()  # registers plugins first
            except PolygraphyException:
                raise DeviceRuntimeError(
                    f"TensorRT could not deserialise {engine_path}:\n  " + "\n  ".join(errors[-5:] or ["(no log)"]),
                    hint="rebuild the engine on this device (vqz-edge build / vqz-edge install --root DIR)",
                ) from None
        self._engine = engine
        context = engine.create_execution_context()
        if context is None:
            raise DeviceRuntimeError(f"TensorRT could not create an execution context for {engine_path}")
        self._context = context
        self._stream = cuda.Stream()
        self._bindings = engine_bindings(engine)
        self._allocate(context)
        for b in self._bindings:
            if not context.set_tensor_address(b.name, b.device_ptr):
                raise DeviceRuntimeError(f"TensorRT refused the buffer address for tensor {b.name!r}")

    # -- allocation ---------------------------------------------------------------------------

    def _allocate(self, context: trt.IExecutionContext) -> None:
        cuda = self._cuda
        for b in self._bindings:  # outputs are sized with every input at its profile max
            if b.is_input and b.profile is not None and not context.set_input_shape(b.name, list(b.profile[2])):
                raise DeviceRuntimeError(f"TensorRT rejected the profile max shape {list(b.profile[2])} for {b.name!r}")
        for b in self._bindings:
            shape = b.profile[2] if (b.is_input and b.profile is not None) else dims(context.get_tensor_shape(b.name))
            if any(d < 0 for d in shape):
                raise DeviceRuntimeError(f"cannot size buffer {b.name!r}: shape {list(shape)} is still dynamic")
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
        with self._current():
            return self._run_current(feeds)

    def _run_current(self, feeds: dict[str, np.ndarray[Any, Any]]) -> dict[str, np.ndarray[Any, Any]]:
        cuda, stream, context = self._cuda, self._stream, self._context
        if context is None:
            raise InputError("runner is closed")
        for b in self._bindings:
            if not b.is_input:
                continue
            arr = feeds[b.name]
            if not context.set_input_shape(b.name, list(arr.shape)):
                raise InputError(f"TensorRT rejected shape {list(arr.shape)} for input {b.name!r}")
            view = self._host(b)[: arr.size].reshape(arr.shape)
            np.copyto(view, arr)
            if not self.zero_copy:
                cuda.memcpy_htod_async(b.device_ptr, view, stream)
        with collect_errors() as errors:
            ok = context.execute_async_v3(int(stream.handle))
        if not ok:
            raise DeviceRuntimeError(f"TensorRT failed to execute {self.manifest.engine_file}:\n  "
                                     + "\n  ".join(errors[-5:] or ["(no log)"]))
        pending = []
        for b in self._bindings:
            if b.is_input:
                continue
            shape = dims(context.get_tensor_shape(b.name))
            view = self._host(b)[: max(1, math.prod(shape))]
            if not self.zero_copy:
                cuda.memcpy_dtoh_async(view, b.device_ptr, stream)
            pending.append((b.name, view, shape))
        try:
            stream.synchronize()
        except cuda.Error as exc:
            raise DeviceRuntimeError(f"CUDA failed while running {self.manifest.engine_file}: {exc}") from exc
        return {name: view.reshape(shape).copy() for name, view, shape in pending}  # buffers are reused

    @staticmethod
    def _host(b: Binding) -> np.ndarray[Any, Any]:
        if b.host is None:
            raise InputError(f"buffer for {b.name!r} is released; the runner is closed")
        return b.host

    def _teardown(self) -> None:
        """Free everything in dependency order with the context current, then release the context while it is
        current in this thread (pycuda releases a context detached from a thread where it is not current only if
        that thread created it; from any other thread it would silently leak it)."""
        with self._lock:
            if self._ctx is None:
                return
            self._ctx.push()
            try:
                if self._stream is not None:
                    with contextlib.suppress(self._cuda.Error):
                        self._stream.synchronize()  # nothing may still read or write the buffers
                for b in self._bindings:
                    if b.device_alloc is not None:
                        b.device_alloc.free()
                        b.device_alloc = None
                    if b.host is not None and b.host.base is not None and hasattr(b.host.base, "free"):
                        b.host.base.free()
                    b.host = None
                self._bindings = []
                self._context = None
                self._engine = None
                self._runtime = None
                self._stream = None  # pycuda destroys a stream when its last reference goes, with this context current
            finally:
                self._ctx.detach()  # current here: released here; pycuda drops it from this thread's stack
                self._ctx = None

    def _release(self) -> None:
        self._teardown()

    def describe(self) -> dict[str, Any]:
        return {
            **super().describe(),
            "tensorrt_version": str(self.trt_version),
            "device": self.device.name,
            "compute_capability": self.device.compute_capability,
            "integrated": self.device.integrated,
            "zero_copy": self.zero_copy,
            "dla_core": self.manifest.dla_core,
        }

