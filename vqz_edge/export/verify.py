"""Numerical verification of an exported/rewritten ONNX model against its source, on real inputs."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from ..data.images import Preprocessing, demo_crops
from ..errors import DataError, InputError, VerificationError
from ..log import get_logger
from ..onnx_io import TensorInfo

_log = get_logger(__name__)


@dataclass(frozen=True)
class OutputError:
    name: str
    shape: tuple[int, ...]
    max_abs_error: float
    max_rel_error: float  # max |a-b| / max |reference|: stable where elementwise relative error is not

    def to_dict(self) -> dict[str, object]:
        return {
            "name": self.name,
            "shape": list(self.shape),
            "max_abs_error": self.max_abs_error,
            "max_rel_error": self.max_rel_error,
        }


def compare(names: Sequence[str], reference: Sequence[np.ndarray], candidate: Sequence[np.ndarray]) -> list[OutputError]:
    if len(reference) != len(candidate):
        raise InputError(f"reference has {len(reference)} outputs, candidate has {len(candidate)}")
    errors = []
    for name, ref, got in zip(names, reference, candidate):
        ref64, got64 = np.asarray(ref, np.float64), np.asarray(got, np.float64)
        if ref64.shape != got64.shape:
            raise InputError(f"output {name!r}: reference shape {ref64.shape} != candidate shape {got64.shape}")
        for role, arr in (("the source model", ref64), ("the exported ONNX", got64)):
            bad = ~np.isfinite(arr)
            if bad.any():
                at = tuple(int(i) for i in np.argwhere(bad)[0])
                raise VerificationError(
                    f"output {name!r}: {role} produced {arr[at]} on verification sample {at[0] if at else 0}; "
                    "no output was written",
                    hint="a weight or an intermediate value is NaN/Inf (or overflows): check the checkpoint",
                )
        diff = float(np.max(np.abs(ref64 - got64))) if ref64.size else 0.0
        scale = float(np.max(np.abs(ref64))) if ref64.size else 0.0
        errors.append(OutputError(name, tuple(ref64.shape), diff, diff / scale if scale > 0 else diff))
    return errors


def concrete_shape(info: TensorInfo, override: Sequence[int] | None, batch: int) -> tuple[int, ...]:
    """Resolve an input's shape: the user's override (checked against static dims) or the graph's,
    with a dynamic leading dim set to ``batch``."""
    if override is not None:
        if len(override) != len(info.shape):
            raise InputError(
                f"--input-shape {'x'.join(map(str, override))} has rank {len(override)} but model input "
                f"{info.name!r} has rank {len(info.shape)} (shape {list(info.shape)})"
            )
        for i, (want, have) in enumerate(zip(override, info.shape)):
            if isinstance(have, int) and have != want:
                raise InputError(
                    f"--input-shape {'x'.join(map(str, override))} does not match model input {info.name!r} "
                    f"shape {list(info.shape)} at dim {i} ({want} != {have})"
                )
        return tuple(override)
    dims = []
    for i, d in enumerate(info.shape):
        if isinstance(d, int) and d > 0:
            dims.append(d)
        elif i == 0:
            dims.append(batch)
        else:
            raise InputError(
                f"model input {info.name!r} has dynamic dim {i} ({d!r}) in shape {list(info.shape)}",
                hint="pass --input-shape with concrete sizes, e.g. --input-shape 1x3x224x224",
            )
    return tuple(dims)


def is_image_input(shape: Sequence[int], dtype: str) -> bool:
    return dtype.startswith("float") and len(shape) == 4 and shape[1] in (1, 3) and min(shape[2], shape[3]) >= 16


def real_inputs(infos: Sequence[TensorInfo], shapes: Sequence[tuple[int, ...]], count: int) -> tuple[dict[str, np.ndarray], list[str]]:
    """Feeds for verification: demo photo crops (evaluation split, the imagenet preset: verification compares the
    source with the export on the same realistic inputs, whatever the model's own preprocessing) for image inputs,
    else loudly random.

    Returns (feeds with leading dim ``count``, notes describing where each input came from).
    """
    feeds: dict[str, np.ndarray] = {}
    notes = []
    rng = np.random.default_rng(0)
    for info, shape in zip(infos, shapes):
        full = (count, *shape[1:])
        if is_image_input(shape, info.dtype):
            try:
                pre = Preprocessing.for_input_shape(shape)
                feeds[info.name] = demo_crops("evaluation", count, pre).astype(info.dtype)
                notes.append(f"{info.name}: {count} real photo crops (scikit-image, evaluation split)")
                continue
            except DataError as exc:
                _log.warning("cannot use demo photos for %s (%s)", info.name, exc)
        if info.dtype.startswith("float"):
            feeds[info.name] = rng.standard_normal(full).astype(info.dtype)
        elif info.dtype == "bool":
            feeds[info.name] = rng.integers(0, 2, full).astype(bool)
        else:
            feeds[info.name] = rng.integers(0, 100, full).astype(info.dtype)
        notes.append(f"{info.name}: RANDOM data (not an image input) -- verification on random tensors only")
        _log.warning("VERIFYING %s ON RANDOM DATA: it is not an image input of shape N,C,H,W", info.name)
    return feeds, notes


def batches(feeds: dict[str, np.ndarray], batch: int) -> list[dict[str, np.ndarray]]:
    n = next(iter(feeds.values())).shape[0]
    return [{k: v[i : i + batch] for k, v in feeds.items()} for i in range(0, n, batch)]
