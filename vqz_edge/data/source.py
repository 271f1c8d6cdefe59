"""Calibration / evaluation data: a folder of images, a .npy array, or the demo photos -- streamed in
batches and checked against the model's input before any work is done."""

from __future__ import annotations

import hashlib
import math
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..errors import DataError, describe_path
from ..log import get_logger
from ..onnx_io import TensorInfo
from .images import Preprocessing, demo_sources, folder_sources, iter_crops

_log = get_logger(__name__)


@dataclass(frozen=True)
class DataSource:
    """Where batches come from. ``kind`` is 'demo', 'images' or 'npy'."""

    kind: str
    description: str
    count: int
    identity: str  # stable hash of what the data is (files and preprocessing), recorded in summaries
    path: Path | None = None
    preprocessing: Preprocessing | None = None
    split: str = "calibration"

    def batches(self, batch: int) -> Iterator[np.ndarray]:
        """Batches of at most ``batch`` samples, each checked on the way in (see ``checked_batches``)."""
        if batch < 1:
            raise DataError(f"batch size must be positive, got {batch}")
        if self.kind == "npy":
            assert self.path is not None
            yield from checked_batches(_npy_batches(self.path, self.count, batch), self.description)
            return
        assert self.preprocessing is not None
        sources = demo_sources(self.split) if self.kind == "demo" else folder_sources(self.path)  # type: ignore[arg-type]
        yield from checked_batches(iter_crops(sources, self.count, self.preprocessing, batch=batch), self.description)


# Input values beyond the FP16 range cannot be represented by an FP16 or INT8 engine (a scale of amax/127 with
# amax above this overflows every FP16 layer it reaches): such data is a preprocessing error, not a range.
MAX_ABS_INPUT = 65504.0


def checked_batches(batches: Iterator[np.ndarray], where: str) -> Iterator[np.ndarray]:
    """Pass ``batches`` through, refusing (DataError naming the sample and the position) a NaN/Inf value, a value
    beyond +-65504, and, once the stream ends, data whose every value is the same (all zeros, a constant)."""
    seen = 0
    lo, hi = math.inf, -math.inf
    for x in batches:
        bad = ~np.isfinite(x)
        if bad.any():
            at = tuple(int(i) for i in np.argwhere(bad)[0])
            raise DataError(
                f"{where}: sample {seen + at[0]} holds {x[at]} at position {list(at[1:])}; data must be finite",
                hint="fix the preprocessing or drop that sample; NaN/Inf would poison every statistic computed from it",
            )
        if x.size:
            mag = np.abs(x)
            flat = int(np.argmax(mag))
            if float(mag.flat[flat]) > MAX_ABS_INPUT:
                at = tuple(int(i) for i in np.unravel_index(flat, x.shape))
                raise DataError(
                    f"{where}: sample {seen + at[0]} holds {float(x[at]):g} at position {list(at[1:])}, beyond the "
                    f"+-{MAX_ABS_INPUT:g} an FP16/INT8 engine can represent",
                    hint="the data is not preprocessed like the model's input (or is corrupt); check it",
                )
            lo, hi = min(lo, float(x.min())), max(hi, float(x.max()))
        seen += int(x.shape[0]) if x.ndim else 1
        yield x
    if seen and lo == hi:
        raise DataError(
            f"{where}: every value of all {seen} samples is {lo:g}; degenerate data gives no range to calibrate "
            "or evaluate with", hint="give real samples (e.g. --data demo or a folder of photos)",
        )


def _npy_header(path: Path) -> tuple[tuple[int, ...], np.dtype, int]:
    with open(path, "rb") as fh:
        try:
            version = np.lib.format.read_magic(fh)
            if version == (1, 0):
                shape, fortran, dtype = np.lib.format.read_array_header_1_0(fh)
            else:
                shape, fortran, dtype = np.lib.format.read_array_header_2_0(fh)
        except (ValueError, EOFError) as exc:
            raise DataError(f"cannot read {path} as a .npy array: {exc or 'the file is empty'}") from exc
        if fortran:
            raise DataError(f"{path} is stored in Fortran order; save it with np.save(np.ascontiguousarray(x))")
        return tuple(shape), np.dtype(dtype), fh.tell()


def _npy_batches(path: Path, count: int, batch: int) -> Iterator[np.ndarray]:
    """Read a .npy batch by batch with plain reads (an mmap would grow RSS with the file size)."""
    shape, dtype, offset = _npy_header(path)
    per = int(np.prod(shape[1:]))
    with open(path, "rb") as fh:
        fh.seek(offset)
        for start in range(0, count, batch):
            n = min(batch, count - start)
            arr = np.fromfile(fh, dtype=dtype, count=n * per)
            if arr.size != n * per:
                raise DataError(f"{path} is truncated: expected {count} samples, got fewer at sample {start}")
            yield arr.reshape((n, *shape[1:])).astype(np.float32, copy=False)


def _file_digest(paths: list[Path]) -> str:
    h = hashlib.sha256()
    for p in paths:
        h.update(p.name.encode())
        h.update(hashlib.sha256(p.read_bytes()).digest())
    return h.hexdigest()


def open_data(spec: str | Path, model_input: TensorInfo, *, count: int | None, split: str = "calibration") -> DataSource:
    """Resolve ``--data`` ('demo', a folder of images, or FILE.npy) for a model input and check it fits."""
    shape = tuple(model_input.shape)
    if count is not None and count < 1:
        raise DataError(f"asked for {count} samples; the sample count must be positive")
    if len(shape) != 4:
        raise DataError(
            f"model input {model_input.name!r} has shape {list(shape)}; image data feeds 4-D inputs (N,C,H,W)",
            hint="give a .npy array with the exact input shape instead",
        )
    text = str(spec)
    if text.lower().endswith(".npy"):
        path = Path(text)
        if not path.is_file():
            kind = describe_path(path)
            raise DataError(f"data file {path} " + ("does not exist" if kind.startswith("nothing") else f"is {kind}, not a file"))
        fshape, dtype, _ = _npy_header(path)
        if not np.issubdtype(dtype, np.floating):
            raise DataError(f"{path} has dtype {dtype}; expected preprocessed float data (N,C,H,W)")
        if len(fshape) != len(shape):
            raise DataError(
                f"{path} holds shape {list(fshape)} but model input {model_input.name!r} has rank {len(shape)} "
                f"(shape {list(shape)})"
            )
        for i, (have, want) in enumerate(zip(fshape[1:], shape[1:]), start=1):
            if isinstance(want, int) and want != have:
                what = "channel count" if i == 1 else f"dim {i}"
                raise DataError(
                    f"{path}: {what} {have} does not match model input {model_input.name!r} shape {list(shape)}"
                )
        if fshape[0] == 0:
            raise DataError(f"{path} holds no samples")
        n = fshape[0] if count is None else min(count, fshape[0])
        if count is not None and count > fshape[0]:
            _log.warning("%s holds %d samples; %d requested, using %d", path, fshape[0], count, n)
        digest = hashlib.sha256(path.read_bytes()).hexdigest()
        return DataSource("npy", f"{path} ({n} of {fshape[0]} samples)", n, digest, path=path, split=split)

    c, h, w = shape[1], shape[2], shape[3]
    if not all(isinstance(d, int) for d in (c, h, w)):
        raise DataError(f"model input {model_input.name!r} has dynamic C/H/W {list(shape)}; image data needs fixed sizes")
    pre = Preprocessing.for_input_shape((1, int(c), int(h), int(w)))
    n = count or 256
    if text == "demo":
        files = [p for s in demo_sources(split) for p in s.paths]
        ident = hashlib.sha256((_file_digest(files) + repr(pre.to_dict()) + split).encode()).hexdigest()
        return DataSource("demo", f"demo photos ({split} split, {n} crops)", n, ident, preprocessing=pre, split=split)
    folder = Path(text)
    sources = folder_sources(folder)  # raises DataError for a missing/empty folder
    files = [p for s in sources for p in s.paths]
    ident = hashlib.sha256((_file_digest(files) + repr(pre.to_dict())).encode()).hexdigest()
    return DataSource("images", f"{folder} ({len(sources)} sources, {n} crops)", n, ident, path=folder, preprocessing=pre)
