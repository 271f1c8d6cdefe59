"""The runner API every backend implements: numpy in, numpy out.

    with open_runner("engines/mobilenet_v2/orin-nx-16gb/10.3.0") as r:
        r.inputs        # [IOInfo(name="input", dtype="float32", shape=(-1, 3, 224, 224), min_shape=..., max_shape=...)]
        out = r.run({"input": batch})   # {"output": array(...)}
"""

from __future__ import annotations

import abc
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any

import numpy as np

from ..errors import InputError


@dataclass(frozen=True)
class IOInfo:
    """One input or output. Dynamic dims are -1; ``min_shape``/``max_shape`` bound inputs when known."""

    name: str
    dtype: str
    shape: tuple[int, ...]
    min_shape: tuple[int, ...] | None = None
    max_shape: tuple[int, ...] | None = None
    opt_shape: tuple[int, ...] | None = None

    @property
    def dynamic(self) -> bool:
        return any(d < 0 for d in self.shape)

    def concrete(self, batch: int | None = None) -> tuple[int, ...]:
        """A runnable shape: ``batch`` for a dynamic leading dim, the profile opt (else min, else 1) elsewhere."""
        ref = self.opt_shape or self.min_shape
        dims = []
        for i, d in enumerate(self.shape):
            if d >= 0:
                dims.append(d)
            elif i == 0 and batch is not None:
                dims.append(batch)
            elif ref is not None:
                dims.append(ref[i])
            elif i == 0:
                dims.append(1)
            else:
                raise InputError(
                    f"input {self.name!r} has a dynamic dimension {i} with no profile to take a size from",
                    hint="feed arrays of a concrete shape",
                )
        return tuple(dims)

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name, "dtype": self.dtype, "shape": list(self.shape),
            "min_shape": list(self.min_shape) if self.min_shape else None,
            "opt_shape": list(self.opt_shape) if self.opt_shape else None,
            "max_shape": list(self.max_shape) if self.max_shape else None,
        }


class EngineRunner(abc.ABC):
    """Runs one model. Use as a context manager (or call :meth:`close`)."""

    backend: str = "?"

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self._closed = False

    @property
    @abc.abstractmethod
    def inputs(self) -> list[IOInfo]: ...

    @property
    @abc.abstractmethod
    def outputs(self) -> list[IOInfo]: ...

    @abc.abstractmethod
    def _run(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]: ...

    def _release(self) -> None:  # noqa: B027 -- optional hook, nothing to release by default
        """Free backend resources (called once by close())."""

    @property
    def max_batch(self) -> int | None:
        """The largest leading dim the first input accepts (None: unbounded)."""
        first = self.inputs[0]
        if first.shape and first.shape[0] >= 0:
            return first.shape[0]
        return first.max_shape[0] if first.max_shape else None

    def check_feeds(self, feeds: Mapping[str, Any]) -> dict[str, np.ndarray]:
        """Names, dtypes (same-kind casts allowed), ranks, static dims and profile bounds -> contiguous arrays."""
        expected = {i.name: i for i in self.inputs}
        missing = sorted(set(expected) - set(feeds))
        extra = sorted(set(feeds) - set(expected))
        if missing or extra:
            raise InputError(
                f"{self.path.name}: inputs must be {sorted(expected)}; missing {missing}, unexpected {extra}"
            )
        out: dict[str, np.ndarray] = {}
        for name, info in expected.items():
            arr = np.asarray(feeds[name])
            want = np.dtype(info.dtype)
            if arr.dtype != want:
                if not np.can_cast(arr.dtype, want, casting="same_kind"):
                    raise InputError(f"input {name!r} has dtype {arr.dtype}, the model takes {want}")
                arr = arr.astype(want)
            if arr.ndim != len(info.shape):
                raise InputError(f"input {name!r} has shape {list(arr.shape)}, the model takes rank {len(info.shape)} "
                                 f"{list(info.shape)}")
            for i, (have, d) in enumerate(zip(arr.shape, info.shape)):
                if d >= 0 and have != d:
                    raise InputError(f"input {name!r} dim {i} is {have}, the model takes {d} (shape {list(info.shape)})")
                lo = info.min_shape[i] if info.min_shape else 1
                hi = info.max_shape[i] if info.max_shape else None
                if have < lo or (hi is not None and have > hi):
                    raise InputError(
                        f"input {name!r} shape {list(arr.shape)} is outside the profile "
                        f"{list(info.min_shape or ())} .. {list(info.max_shape or ())} (dim {i})",
                        hint="split the batch, or rebuild the engine with a larger max_shape",
                    )
            out[name] = np.ascontiguousarray(arr)
        return out

    def run(self, feeds: Mapping[str, Any]) -> dict[str, np.ndarray]:
        """Run once. ``feeds``: input name -> array. Returns output name -> array (owned by the caller)."""
        if self._closed:
            raise InputError(f"runner for {self.path} is closed")
        return self._run(self.check_feeds(feeds))

    def close(self) -> None:
        if not self._closed:
            self._closed = True
            self._release()

    def __enter__(self) -> EngineRunner:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def describe(self) -> dict[str, Any]:
        return {
            "backend": self.backend, "path": str(self.path),
            "inputs": [i.to_dict() for i in self.inputs], "outputs": [o.to_dict() for o in self.outputs],
        }


def shape_from_onnx(dims: Sequence[int | str]) -> tuple[int, ...]:
    return tuple(d if isinstance(d, int) and d > 0 else -1 for d in dims)
