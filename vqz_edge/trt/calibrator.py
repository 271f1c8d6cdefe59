"""Implicit INT8 calibration (TensorRT <= 10; deprecated from 10.1, removed in 11).

:class:`CalibrationFeed` holds the state and logic; :func:`make_entropy_calibrator` wraps it in a
``tensorrt.IInt8EntropyCalibrator2`` subclass (TensorRT calls the wrapper from C++):

- ``read_calibration_cache`` returns the offline cache made on the workstation (``vqz-edge calibrate``)
  when the builder found its header version and tensor names match the network; the device then
  needs no data. Otherwise it returns None and TensorRT calibrates:
- ``get_batch`` copies the spec's calibration data to one pycuda device buffer, batch by batch;
- ``write_calibration_cache`` stores TensorRT's cache atomically (beside the engine).

TensorRT's callbacks are C++ ``noexcept``: an exception escaping them would abort the process, so
the feed records the error, tells TensorRT "no more data", and the builder re-raises it afterwards.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from ..data.source import open_data
from ..errors import DataError, DependencyError
from ..fsutil import atomic_write_bytes
from ..log import get_logger
from ..onnx_io import TensorInfo
from ..preprocessing import Preprocessing

if TYPE_CHECKING:
    import tensorrt as trt

    from ..spec import Spec

    BatchSource = Callable[[], Iterator[np.ndarray]]  # evaluated only by type checkers (Python 3.8 on JetPack 5)

_log = get_logger(__name__)


def import_pycuda() -> Any:
    """pycuda.driver with a current context (the device's primary context, shared with TensorRT).
    pycuda has no type stubs: it stays Any and is used in two calls."""
    try:
        cuda = importlib.import_module("pycuda.driver")
        try:
            importlib.import_module("pycuda.autoprimaryctx")  # pycuda >= 2021.1
        except ImportError:
            importlib.import_module("pycuda.autoinit")
    except ImportError as exc:
        raise DependencyError(
            f"pycuda is needed to calibrate on the device ({exc})",
            hint="pip install 'vqz-edge[jetson]' on the device, or calibrate offline (vqz-edge calibrate) for "
            "this TensorRT version so the cache is used as is",
        ) from exc
    return cuda


def spec_batches(spec: Spec, input_name: str, batch_shape: tuple[int, ...],
                 recipe: Preprocessing | None = None) -> BatchSource:
    """The spec's [calibration] data as float32 batches of exactly ``batch_shape`` (N, C, H, W),
    read lazily; an incomplete last batch is dropped (TensorRT calibrates at the profile's shape). Photos are
    preprocessed with ``recipe`` (the one the offline calibration recorded), else as the spec declares."""
    data = spec.calibration.data
    where = data if data == "demo" else str(spec.resolve_path(data))
    source = open_data(where, TensorInfo(input_name, batch_shape, "float32"), count=spec.calibration.num_images,
                       preprocessing=recipe if recipe is not None else spec.preprocessing)

    def batches() -> Iterator[np.ndarray]:
        for x in source.batches(batch_shape[0]):
            if tuple(x.shape) != batch_shape:
                if x.shape[1:] != batch_shape[1:]:
                    raise DataError(f"calibration batch of shape {list(x.shape)} does not fit input {input_name!r} "
                                    f"{list(batch_shape)}")
                _log.info("dropping the last %d calibration sample(s): batches must be %d", x.shape[0], batch_shape[0])
                return
            yield np.ascontiguousarray(x, dtype=np.float32)

    return batches


class CalibrationFeed:
    """What the TensorRT calibrator does, in plain typed Python."""

    def __init__(
        self, *, offline_cache: bytes | None, batches: BatchSource | None, batch_size: int, cache_out: Path | None,
    ) -> None:
        self.offline_cache = offline_cache
        self.batch_size = batch_size
        self.cache_out = cache_out
        self.batches_used = 0
        self.error: BaseException | None = None
        self._source = batches
        self._iter: Iterator[np.ndarray] | None = None
        self._cuda: Any = None
        self._device: Any = None  # one pycuda DeviceAllocation, reused for every batch

    def prepare(self) -> None:
        """Import pycuda before the build, so a missing dependency is an ordinary error."""
        if self._source is None:
            raise DataError("the calibration cache does not fit and there is no calibration data to calibrate with")
        self._cuda = import_pycuda()

    def read_cache(self) -> bytes | None:
        if self.offline_cache is not None:
            _log.info("calibration: using the offline cache (%d bytes)", len(self.offline_cache))
        return self.offline_cache

    def next_batch(self, names: list[str]) -> list[int]:
        """Device pointers for the next batch, or [] when done (or on error: see ``self.error``)."""
        try:
            if len(names) != 1:
                raise DataError(f"device calibration supports single-input networks; this one has inputs {names}")
            if self._iter is None:
                if self._source is None:
                    raise DataError("TensorRT asked for calibration data but none was configured")
                if self._cuda is None:
                    self._cuda = import_pycuda()
                self._iter = self._source()
            batch = next(self._iter, None)
            if batch is None:
                _log.info("calibration: %d batch(es) done", self.batches_used)
                return []
            if self._device is None:
                self._device = self._cuda.mem_alloc(batch.nbytes)
            self._cuda.memcpy_htod(self._device, batch)
            self.batches_used += 1
            _log.debug("calibration batch %d %s", self.batches_used, batch.shape)
            return [int(self._device)]
        except Exception as exc:  # noqa: BLE001 -- must not propagate into TensorRT's noexcept C++ callback
            self.error = exc
            _log.error("calibration data failed: %s", exc)
            return []

    def write_cache(self, data: bytes) -> None:
        try:
            if self.cache_out is not None:
                atomic_write_bytes(self.cache_out, data)
                _log.info("calibration cache written to %s", self.cache_out)
        except Exception as exc:  # noqa: BLE001 -- must not propagate into TensorRT's noexcept C++ callback
            self.error = exc

    def free(self) -> None:
        if self._device is not None:
            self._device.free()
            self._device = None


def make_entropy_calibrator(feed: CalibrationFeed) -> trt.IInt8EntropyCalibrator2:
    """A tensorrt.IInt8EntropyCalibrator2 that delegates to ``feed`` (TensorRT <= 10 only)."""
    import tensorrt as trt

    # type-ignore "misc": where mypy cannot read the tensorrt stubs, trt.* is Any (see docs/build.md); with
    # readable stubs the ignore is unused and the class is checked against them.
    class EntropyCalibrator(trt.IInt8EntropyCalibrator2):  # type: ignore[misc,unused-ignore]
        def __init__(self) -> None:
            trt.IInt8EntropyCalibrator2.__init__(self)  # pybind11 needs the explicit base __init__

        def get_batch_size(self) -> int:
            return feed.batch_size

        def get_batch(self, names: list[str]) -> list[int]:
            return feed.next_batch(names)

        # The stubs say Buffer; TensorRT's pybind trampoline (python/src/infer/pyInt8.cpp) maps None to
        # "no cache", which is what we mean when the offline cache does not fit.
        def read_calibration_cache(self) -> bytes | None:  # type: ignore[override,unused-ignore]
            return feed.read_cache()

        def write_calibration_cache(self, cache: Any) -> None:
            feed.write_cache(bytes(cache))

    return EntropyCalibrator()
