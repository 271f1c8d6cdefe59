"""Calibration / evaluation data: a folder of images, a .npy array, or the demo photos -- streamed in
batches and checked against the model's input before any work is done."""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Union

import numpy as np

from ..errors import DataError, describe_path
from ..log import get_logger
from ..onnx_io import TensorInfo
from ..preprocessing import Preprocessing, PreprocessingRequest, check_against_record
from .images import DEMO_PREPROCESSING, demo_sources, folder_sources, iter_crops

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
    # where ``preprocessing`` came from: 'declared (...)', 'default for the demo photos', 'recorded in X.json',
    # or, for an array with neither a sidecar nor a declaration, 'unknown'
    preprocessing_origin: str = "unknown"

    def preprocessing_record(self) -> dict[str, object] | None:
        """What summaries record: the recipe (None when unknown) and where it came from."""
        if self.preprocessing is None:
            return None
        return {**self.preprocessing.to_dict(), "origin": self.preprocessing_origin}

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


def recorded_preprocessing(summary: Mapping[str, Any]) -> Preprocessing | None:
    """The recipe a calibration recorded in its summary.json (None when its data had none: an array without a
    sidecar)."""
    data = summary.get("data")
    rec = data.get("preprocessing") if isinstance(data, Mapping) else None
    return Preprocessing.from_dict(rec) if isinstance(rec, Mapping) else None


def read_recorded_preprocessing(outdir: Path) -> tuple[Preprocessing | None, str]:
    """(recipe, 'DIR/summary.json') from a calibration output directory; (None, '') without a summary there."""
    path = Path(outdir) / "summary.json"
    if not path.is_file():
        return None, ""
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        raise DataError(f"{path} is not readable JSON: {exc}") from exc
    return (recorded_preprocessing(doc) if isinstance(doc, Mapping) else None), str(path)


def npy_sidecar_preprocessing(path: Path) -> Preprocessing | None:
    """The preprocessing ``vqz-edge data`` recorded in the .json beside ``path`` (None without one)."""
    sidecar = path.with_suffix(".json")
    if not sidecar.is_file():
        return None
    try:
        doc = json.loads(sidecar.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        raise DataError(f"{sidecar} (the sidecar of {path.name}) is not readable JSON: {exc}",
                        hint="remove it, or write the array again with vqz-edge data") from exc
    if not isinstance(doc, dict) or not isinstance(doc.get("preprocessing"), dict):
        return None
    return Preprocessing.from_dict(doc["preprocessing"])


Declared = Union[PreprocessingRequest, Preprocessing, None]


def _declared_recipe(shape: tuple[int | str, ...], declared: Declared, origin: str | None) -> tuple[Preprocessing, str] | None:
    """A declaration (a request, or a recipe another stage recorded) resolved for a model input of ``shape``."""
    if isinstance(declared, Preprocessing):
        fixed = [(d, want) for d, want in zip(_hw(shape, declared.layout), declared.size) if isinstance(d, int)]
        if any(d != want for d, want in fixed):
            raise DataError(f"the preprocessing {origin or 'given'} makes {declared.size[0]}x{declared.size[1]} images; "
                            f"the model input is {list(shape)}")
        return declared, origin or "given by the caller"
    if declared is not None and not declared.is_empty():
        return declared.resolve(shape), origin or f"declared ({declared.origin or 'by the caller'})"
    return None


def _hw(shape: tuple[int | str, ...], layout: str) -> tuple[int | str, int | str]:
    return (shape[2], shape[3]) if layout == "NCHW" else (shape[1], shape[2])


def resolve_image_preprocessing(
    model_input: TensorInfo, preprocessing: Declared, *, demo: bool, origin: str | None = None
) -> tuple[Preprocessing, str]:
    """The recipe photos get for ``model_input`` and a note on where it came from. Photos of your own need a
    declaration; the demo photos default to the demo classifier's ``imagenet`` preset, and say so."""
    if (demo and isinstance(preprocessing, PreprocessingRequest) and not preprocessing.is_empty()
            and preprocessing.preset is None and preprocessing.mean is None):
        # e.g. only a size: the demo photos' default preset fills in the rest, and says so
        found = _declared_recipe(tuple(model_input.shape), replace(preprocessing, preset="imagenet"), origin)
        assert found is not None
        return found[0], f"{found[1]} on the imagenet preset: the default for the demo photos"
    found = _declared_recipe(tuple(model_input.shape), preprocessing, origin)
    if found is not None:
        return found
    if demo:
        if tuple(model_input.shape[1:]) == (3, 224, 224):
            return DEMO_PREPROCESSING, "the imagenet preset: the default for the demo photos"
        pre = PreprocessingRequest(preset="imagenet").resolve(model_input.shape)
        return pre, "the imagenet preset: the default for the demo photos"
    raise DataError(
        f"no preprocessing declared for the images fed to model input {model_input.name!r} {list(model_input.shape)}; "
        "vqz-edge does not guess a model's normalisation",
        hint="name it: --preprocess imagenet|clip|siglip|yolo|raw (plus --size/--mean/--std/--channel-order ... to "
        "adjust), or [preprocessing] preset = \"...\" in the spec (docs/spec.md)",
    )


def open_data(
    spec: str | Path, model_input: TensorInfo, *, count: int | None, split: str = "calibration",
    preprocessing: Declared = None, preprocessing_origin: str | None = None,
) -> DataSource:
    """Resolve ``--data`` ('demo', a folder of images, or FILE.npy) for a model input and check it fits.

    ``preprocessing``: what the user declared (or a recipe recorded by calibration, ``preprocessing_origin`` saying
    where). Photos of a folder need it; the demo photos default to the imagenet
    preset (the demo classifier's, noted in ``preprocessing_origin``); an .npy is already preprocessed: its
    ``vqz-edge data`` sidecar says how, and a declaration that differs from the sidecar is refused.
    """
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
            if isinstance(want, int) and want > 0 and want != have:
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
        pre, origin = _npy_preprocessing(path, fshape, preprocessing, preprocessing_origin)
        return DataSource("npy", f"{path} ({n} of {fshape[0]} samples)", n, digest, path=path, split=split,
                          preprocessing=pre, preprocessing_origin=origin)

    sources = None if text == "demo" else folder_sources(Path(text))  # a missing/empty folder is named first
    pre, origin = resolve_image_preprocessing(model_input, preprocessing, demo=text == "demo",
                                              origin=preprocessing_origin)
    n = count or 256
    if sources is None:
        files = [p for s in demo_sources(split) for p in s.paths]
        ident = hashlib.sha256((_file_digest(files) + repr(pre.to_dict()) + split).encode()).hexdigest()
        return DataSource("demo", f"demo photos ({split} split, {n} crops)", n, ident, preprocessing=pre, split=split,
                          preprocessing_origin=origin)
    folder = Path(text)
    files = [p for s in sources for p in s.paths]
    ident = hashlib.sha256((_file_digest(files) + repr(pre.to_dict())).encode()).hexdigest()
    return DataSource("images", f"{folder} ({len(sources)} sources, {n} crops)", n, ident, path=folder,
                      preprocessing=pre, preprocessing_origin=origin)


def _npy_preprocessing(
    path: Path, fshape: tuple[int, ...], declared: Declared, origin: str | None
) -> tuple[Preprocessing | None, str]:
    sidecar = npy_sidecar_preprocessing(path)
    found = _declared_recipe(tuple(fshape), declared, origin)
    name = path.with_suffix(".json").name
    if sidecar is not None and found is not None:
        check_against_record(sidecar, found[0], recorded_where=f"{name} (the array's sidecar)", used_where="declared")
        return found[0], f"{found[1]}, matches {name}"
    if sidecar is not None:
        return sidecar, f"recorded in {name}"
    if found is not None:
        return found[0], f"{found[1]}, for a preprocessed array"
    return None, "unknown: a preprocessed array without a vqz-edge data sidecar"
