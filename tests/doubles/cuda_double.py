"""A simulated CUDA device and a double of ``pycuda.driver`` on top of it.

The device (:class:`SimGpu`): an Orin-like integrated GPU (compute capability 8.7, shares system RAM, maps
page-locked host memory), a discrete GPU, or none. Memory is real bytes: device allocations are buffers at
fake device addresses; page-locked host allocations mapped with DEVICEMAP are the host buffer itself at its
real address (Jetson's unified addressing), so zero-copy really is zero-copy. Work queued on a stream runs
when the stream is synchronised, in order.

The pycuda double follows pycuda's own semantics (src/cpp/cuda.hpp, read at v2026.1):

* a context belongs to the thread that created or retained it; every context-dependent object (stream,
  allocation) binds to the context current *in the calling thread* when it is created, and creating one with
  no current context raises LogicError ("no currently active context?");
* freeing an object activates its context: a detached (dead) context -> "cannot activate dead context"; a
  context current in no stack of this thread and owned by another thread -> "cannot activate out-of-thread
  context";
* ``Context.pop()`` pops this thread's stack ("cannot pop non-current context" when empty); ``detach()``
  releases the context (from another thread it is silently leaked, as pycuda does);
* an object garbage-collected after its context died cannot be freed: pycuda prints a warning and leaks it.
  The double records it in :data:`LEAKS` so tests can assert that teardown order is right.

Its API surface is ``tests/doubles/api/pycuda-*.json`` (tools/extract_pycuda_api.py, from pycuda's sources):
the names both v2022.2 (the oldest the ``jetson`` extra allows) and v2026.1 have.
"""

from __future__ import annotations

import importlib.machinery
import sys
import threading
import types
import weakref
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from .surface import StrictBase, Surface, load_surface, make_enum, strict_class

LEAKS: list[str] = []


# ------------------------------------------------------------------------------------------------ the device


@dataclass(frozen=True)
class SimGpu:
    name: str
    compute_capability: tuple[int, int]
    integrated: bool
    can_map_host_memory: bool
    total_bytes: int
    dla_cores: int


GPUS: dict[str, SimGpu | None] = {
    # Jetson Orin NX 16GB: GA10B, sm 8.7, 2 DLA cores, 16 GiB shared
    "orin-nx-16gb": SimGpu("Orin", (8, 7), True, True, 16 << 30, 2),
    "orin-nano-8gb": SimGpu("Orin", (8, 7), True, True, 8 << 30, 0),
    "discrete": SimGpu("NVIDIA L4", (8, 9), False, True, 24 << 30, 0),
    "none": None,
}


class CudaSimError(Exception):
    pass


class _Block:
    __slots__ = ("addr", "nbytes", "view", "kind", "owner")

    def __init__(self, addr: int, nbytes: int, view: memoryview, kind: str, owner: Any) -> None:
        self.addr, self.nbytes, self.view, self.kind, self.owner = addr, nbytes, view, kind, owner


class Device:
    """The simulated GPU: memory blocks, streams, primary context retain count."""

    DEVICE_BASE = 0x7F0000000000

    def __init__(self, gpu: SimGpu | None) -> None:
        self.gpu = gpu
        self.blocks: dict[int, _Block] = {}
        self._next = self.DEVICE_BASE
        self.streams: weakref.WeakValueDictionary[int, Any] = weakref.WeakValueDictionary()
        self.primary_retains = 0
        self.device_bytes = 0
        self.lock = threading.RLock()

    # memory -----------------------------------------------------------------------------------------
    def alloc(self, nbytes: int, owner: Any) -> int:
        with self.lock:
            assert self.gpu is not None
            if self.device_bytes + nbytes > self.gpu.total_bytes:
                raise CudaSimError("out of memory")
            buf = bytearray(max(1, nbytes))
            addr = self._next
            self._next += (max(1, nbytes) + 255) // 256 * 256 + 256
            self.blocks[addr] = _Block(addr, nbytes, memoryview(buf), "device", owner)
            self.device_bytes += nbytes
            return addr

    def map_host(self, array: np.ndarray, owner: Any) -> int:
        addr = int(array.ctypes.data)
        with self.lock:
            self.blocks[addr] = _Block(addr, array.nbytes, memoryview(array.reshape(-1).view(np.uint8)), "mapped", owner)
        return addr

    def free(self, addr: int) -> None:
        with self.lock:
            block = self.blocks.pop(addr, None)
            if block is not None and block.kind == "device":
                self.device_bytes -= block.nbytes

    def memory(self, addr: int, nbytes: int) -> memoryview:
        """The bytes at [addr, addr+nbytes): an address inside one live allocation, else an illegal access."""
        with self.lock:
            for block in self.blocks.values():
                if block.addr <= addr and addr + nbytes <= block.addr + max(block.nbytes, 1):
                    off = addr - block.addr
                    return block.view[off:off + nbytes]
        raise CudaSimError(f"an illegal memory access was encountered (address 0x{addr:x}, {nbytes} bytes is "
                           "not inside a live device or mapped allocation)")

    # streams ------------------------------------------------------------------------------------------
    def enqueue(self, handle: int, op: Callable[[], None]) -> None:
        if handle == 0:
            op()  # the legacy default stream: the double runs it at once
            return
        stream = self.streams.get(handle)
        if stream is None:
            raise CudaSimError(f"invalid resource handle (stream 0x{handle:x} does not exist)")
        stream._queue.append(op)


_DEVICES: dict[str, Device] = {}


def sim_device(gpu_name: str) -> Device:
    if gpu_name not in GPUS:
        raise ValueError(f"unknown simulated GPU {gpu_name!r}; one of {sorted(GPUS)}")
    if gpu_name not in _DEVICES:
        _DEVICES[gpu_name] = Device(GPUS[gpu_name])
    return _DEVICES[gpu_name]


# ------------------------------------------------------------------------------------------------ pycuda


CURRENT_GPU = "orin-nx-16gb"  # set by tests/doubles.install / the site shim


def _dev() -> Device:
    return sim_device(CURRENT_GPU)


class Error(Exception):
    pass


class LogicError(Error):
    pass


class RuntimeError_(Error):
    pass


class MemoryError_(Error):
    pass


class LaunchError(Error):
    pass


_tls = threading.local()


def _stack() -> list[Any]:
    if not hasattr(_tls, "stack"):
        _tls.stack = []
    return _tls.stack  # type: ignore[no-any-return]


class _State:
    initialized = False


def init(flags: int = 0) -> None:
    if _dev().gpu is None:
        raise RuntimeError_("cuInit failed: no CUDA-capable device is detected")
    _State.initialized = True


def _require_init(what: str) -> None:
    if not _State.initialized:
        raise LogicError(f"{what} failed: initialization error")


def _current() -> ContextImpl | None:
    stack = _stack()
    while stack:
        top = stack[-1]
        if top._valid:
            return top  # type: ignore[no-any-return]
        stack.pop()
    return None


def _context_dependent(what: str) -> ContextImpl:
    ctx = _current()
    if ctx is None:
        raise LogicError(f"{what} failed: explicit_context_dependent failed: invalid device context - "
                         "no currently active context?")
    return ctx


def _activate(ctx: ContextImpl, what: str) -> bool:
    """pycuda's scoped_context_activation; returns whether it pushed (the caller pops)."""
    if not ctx._valid:
        raise LogicError(f"{what} failed: cannot activate dead context")
    if _current() is ctx:
        return False
    if ctx._thread != threading.get_ident():
        raise LogicError(f"{what} failed: cannot activate out-of-thread context")
    _stack().append(ctx)
    return True


class DeviceImpl(StrictBase):
    def __init__(self, ordinal: int) -> None:
        _require_init("cuDeviceGet")
        if ordinal != 0 or _dev().gpu is None:
            raise LogicError(f"cuDeviceGet failed: invalid device ordinal {ordinal}")
        self._ordinal = ordinal

    @staticmethod
    def count() -> int:
        _require_init("cuDeviceGetCount")
        return 0 if _dev().gpu is None else 1

    def name(self) -> str:
        return _dev().gpu.name  # type: ignore[union-attr]

    def compute_capability(self) -> tuple[int, int]:
        return _dev().gpu.compute_capability  # type: ignore[union-attr]

    def total_memory(self) -> int:
        return _dev().gpu.total_bytes  # type: ignore[union-attr]

    def get_attribute(self, attr: Any) -> int:
        gpu = _dev().gpu
        assert gpu is not None
        known = {"INTEGRATED": int(gpu.integrated), "CAN_MAP_HOST_MEMORY": int(gpu.can_map_host_memory),
                 "COMPUTE_CAPABILITY_MAJOR": gpu.compute_capability[0],
                 "COMPUTE_CAPABILITY_MINOR": gpu.compute_capability[1], "UNIFIED_ADDRESSING": 1}
        if attr.name not in known:
            raise NotImplementedError(f"the pycuda double does not simulate device attribute {attr.name}")
        return known[attr.name]

    def retain_primary_context(self) -> Any:
        _dev().primary_retains += 1
        return MODULE_CLASSES["Context"](primary=True)

    def make_context(self, flags: int = 0) -> Any:
        ctx = MODULE_CLASSES["Context"](primary=False)
        _stack().append(ctx)
        ctx._use += 1
        return ctx


class ContextImpl(StrictBase):
    def __init__(self, *, primary: bool) -> None:
        self._primary = primary
        self._valid = True
        self._thread = threading.get_ident()
        self._use = 1
        self._handle = id(self)

    @property
    def handle(self) -> int:
        return self._handle

    def push(self) -> None:
        if not self._valid:
            raise LogicError("cuCtxPushCurrent failed: invalid device context")
        _stack().append(self)
        self._use += 1

    @staticmethod
    def pop() -> None:
        stack = _stack()
        if _current() is None:
            raise LogicError("context::pop failed: cannot pop non-current context")
        top = stack.pop()
        top._use -= 1

    def detach(self) -> None:
        if not self._valid:
            raise LogicError("context::detach failed: cannot detach from invalid context")
        active = _current() is self
        if active or self._thread == threading.get_ident():
            if self._primary:
                _dev().primary_retains -= 1
        else:
            LEAKS.append("context detached from another thread than the one that owns it (leaked)")
        self._valid = False
        stack = _stack()
        if active:
            stack.pop()

    @staticmethod
    def get_current() -> Any:
        return _current()

    @staticmethod
    def synchronize() -> None:
        ctx = _context_dependent("cuCtxSynchronize")
        for s in list(_dev().streams.values()):
            if s._context is ctx:
                s._drain()

    @staticmethod
    def get_device() -> Any:
        _context_dependent("cuCtxGetDevice")
        return MODULE_CLASSES["Device"](0)


class _ContextDependent(StrictBase):
    _what = "object"

    def _bind(self, what: str) -> None:
        self._context = _context_dependent(what)
        self._freed = False

    def _release(self) -> None:  # subclass: give the resource back to the simulated device
        pass

    def free(self) -> None:
        if self._freed:
            return
        pushed = _activate(self._context, f"{self._what} free")
        try:
            self._release()
            self._freed = True
        finally:
            if pushed:
                _stack().pop()

    def __del__(self) -> None:
        if getattr(self, "_freed", True):
            return
        try:
            self.free()
        except LogicError as exc:
            LEAKS.append(f"{self._what}: a clean-up operation failed ({exc}); the {self._what} leaked")
            print(f"PyCUDA WARNING: a clean-up operation failed (dead context maybe?)\n{exc}", file=sys.stderr)


class StreamImpl(_ContextDependent):
    _what = "stream"

    def __init__(self, flags: int = 0) -> None:
        self._bind("cuStreamCreate")
        self._queue: list[Callable[[], None]] = []
        self._handle = id(self)
        _dev().streams[self._handle] = self

    @property
    def handle(self) -> int:
        return self._handle

    def _drain(self) -> None:
        while self._queue:
            op = self._queue.pop(0)
            op()

    def synchronize(self) -> None:
        if self._freed:
            raise LogicError("cuStreamSynchronize failed: invalid resource handle")
        pushed = _activate(self._context, "cuStreamSynchronize")
        try:
            self._drain()
        finally:
            if pushed:
                _stack().pop()

    def is_done(self) -> bool:
        return not self._queue

    def _release(self) -> None:
        self._queue.clear()
        _dev().streams.pop(self._handle, None)

    def __del__(self) -> None:
        if getattr(self, "_freed", True):
            return
        try:
            pushed = _activate(self._context, "cuStreamDestroy")
        except LogicError as exc:
            LEAKS.append(f"stream: a clean-up operation failed ({exc}); the stream leaked")
            print(f"PyCUDA WARNING: a clean-up operation failed (dead context maybe?)\n{exc}", file=sys.stderr)
            return
        self._release()
        self._freed = True
        if pushed:
            _stack().pop()


class DeviceAllocationImpl(_ContextDependent):
    _what = "device allocation"

    def __init__(self, nbytes: int) -> None:
        self._bind("cuMemAlloc")
        try:
            self._addr = _dev().alloc(int(nbytes), self)
        except CudaSimError as exc:
            raise MemoryError_(f"cuMemAlloc failed: {exc}") from None

    def __int__(self) -> int:
        if self._freed:
            raise LogicError("device allocation was freed")
        return self._addr

    __index__ = __int__

    def _release(self) -> None:
        _dev().free(self._addr)


class PagelockedHostAllocationImpl(_ContextDependent):
    """The .base of an array from pagelocked_empty. Its memory is the array's own bytes."""

    _what = "page-locked host allocation"

    def __init__(self, array: np.ndarray, flags: int) -> None:
        self._bind("cuMemHostAlloc")
        self._array = array
        self._flags = flags
        self._mapped = bool(flags & HOST_ALLOC_DEVICEMAP)
        self._addr = _dev().map_host(array, self) if self._mapped else int(array.ctypes.data)

    def get_device_pointer(self) -> int:
        _context_dependent("cuMemHostGetDevicePointer")
        if not self._mapped:
            raise LogicError("cuMemHostGetDevicePointer failed: invalid argument (memory not allocated with "
                             "host_alloc_flags.DEVICEMAP)")
        if self._freed:
            raise LogicError("cuMemHostGetDevicePointer failed: memory was freed")
        return self._addr

    def get_flags(self) -> int:
        return self._flags

    def _release(self) -> None:
        if self._mapped:
            _dev().free(self._addr)


HOST_ALLOC_PORTABLE, HOST_ALLOC_DEVICEMAP, HOST_ALLOC_WRITECOMBINED = 1, 2, 4


class _HostAllocFlags:
    PORTABLE = HOST_ALLOC_PORTABLE
    DEVICEMAP = HOST_ALLOC_DEVICEMAP
    WRITECOMBINED = HOST_ALLOC_WRITECOMBINED


class _PagelockedArray(np.ndarray):
    """ndarray whose ``.base`` is the allocation object, as pycuda's pagelocked_empty returns."""

    @property
    def base(self) -> Any:  # type: ignore[override]
        return getattr(self, "_vqz_alloc", None) or super().base


def pagelocked_empty(shape: Any, dtype: Any, order: str = "C", mem_flags: int = 0) -> np.ndarray:
    raw = np.empty(shape, dtype=dtype, order=order)  # type: ignore[call-overload]
    arr = raw.view(_PagelockedArray)
    arr._vqz_alloc = MODULE_CLASSES["PagelockedHostAllocation"](raw, mem_flags)  # type: ignore[attr-defined]
    return arr


def mem_alloc(nbytes: int) -> Any:
    return MODULE_CLASSES["DeviceAllocation"](nbytes)


def mem_get_info() -> tuple[int, int]:
    _context_dependent("cuMemGetInfo")
    d = _dev()
    assert d.gpu is not None
    return d.gpu.total_bytes - d.device_bytes, d.gpu.total_bytes


def _ptr(x: Any) -> int:
    return int(x)


def _copy_to_device(dest: int, src: np.ndarray) -> None:
    data = np.ascontiguousarray(src).reshape(-1).view(np.uint8)
    _dev().memory(dest, data.nbytes)[:] = data.tobytes()


def _copy_from_device(dest: np.ndarray, src: int) -> None:
    out = dest.reshape(-1).view(np.uint8)
    out[:] = np.frombuffer(_dev().memory(src, out.nbytes), dtype=np.uint8)


def memcpy_htod(dest: Any, src: np.ndarray) -> None:
    _context_dependent("cuMemcpyHtoD")
    _copy_to_device(_ptr(dest), src)


def memcpy_dtoh(dest: np.ndarray, src: Any) -> None:
    _context_dependent("cuMemcpyDtoH")
    _copy_from_device(dest, _ptr(src))


def _stream_handle(stream: Any) -> int:
    return 0 if stream is None else int(stream.handle)


def memcpy_htod_async(dest: Any, src: np.ndarray, stream: Any = None) -> None:
    _context_dependent("cuMemcpyHtoDAsync")
    d, s = _ptr(dest), src
    _dev().enqueue(_stream_handle(stream), lambda: _copy_to_device(d, s))


def memcpy_dtoh_async(dest: np.ndarray, src: Any, stream: Any = None) -> None:
    _context_dependent("cuMemcpyDtoHAsync")
    s, d = _ptr(src), dest
    _dev().enqueue(_stream_handle(stream), lambda: _copy_from_device(d, s))


MODULE_CLASSES: dict[str, type] = {}


def _surface() -> Surface:
    """The names both ends of the supported pycuda range have (the strictest double)."""
    old, new = load_surface("pycuda-2022.2.json"), load_surface("pycuda-2026.1.json")
    doc = dict(new.doc)
    doc["module"] = sorted(old.module & new.module)
    classes = {}
    for name in set(old.classes) & set(new.classes):
        a, b = old.classes[name], new.classes[name]
        classes[name] = {k: sorted(set(a.get(k, ())) & set(b.get(k, ()))) if isinstance(b.get(k), list) else b.get(k)
                         for k in b}
    doc["classes"] = classes
    doc["tag"] = f"{old.doc['tag']} and {new.doc['tag']}"
    return Surface(doc, "pycuda (v2022.2 and v2026.1)")


def make_driver_module(gpu: str) -> types.ModuleType:
    """A fresh ``pycuda.driver`` double for the simulated ``gpu``."""
    global CURRENT_GPU
    CURRENT_GPU = gpu
    _State.initialized = False
    surface = _surface()
    mod = types.ModuleType("pycuda.driver")
    mod.__spec__ = importlib.machinery.ModuleSpec("pycuda.driver", None)
    mod.__doc__ = f"pycuda.driver test double ({surface.label}, simulated GPU {gpu})"
    impls = {"Device": DeviceImpl, "Context": ContextImpl, "Stream": StreamImpl,
             "DeviceAllocation": DeviceAllocationImpl, "PagelockedHostAllocation": PagelockedHostAllocationImpl}
    for name, impl in impls.items():
        MODULE_CLASSES[name] = strict_class(impl, surface, name, module="pycuda._driver", label=surface.label)
    MODULE_CLASSES["HostAllocation"] = MODULE_CLASSES["PagelockedHostAllocation"]
    values = {"Error": Error, "LogicError": LogicError, "RuntimeError": RuntimeError_, "MemoryError": MemoryError_,
              "LaunchError": LaunchError, "init": init, "pagelocked_empty": pagelocked_empty, "mem_alloc": mem_alloc,
              "mem_get_info": mem_get_info, "memcpy_htod": memcpy_htod, "memcpy_dtoh": memcpy_dtoh,
              "memcpy_htod_async": memcpy_htod_async, "memcpy_dtoh_async": memcpy_dtoh_async,
              "host_alloc_flags": _HostAllocFlags,
              "device_attribute": make_enum(surface, "device_attribute", "pycuda._driver"), **MODULE_CLASSES}
    for name in surface.module:
        if name in values:
            setattr(mod, name, values[name])
        elif not name.startswith("_"):
            setattr(mod, name, _unimplemented(name))
    return mod


def _unimplemented(name: str) -> Any:
    def stub(*args: Any, **kwargs: Any) -> Any:
        raise NotImplementedError(f"pycuda.driver.{name} exists in pycuda; the test double does not implement it")

    stub.__name__ = name
    return stub
