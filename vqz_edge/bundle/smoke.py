"""The smoke test that travels in a bundle: reference inputs, FP32 reference outputs, a tolerance.

The same comparison runs on the build host (``vqz-edge bundle`` checks the artifact the device will serve
before shipping it) and on the device (``vqz-edge install`` runs it on the freshly built engine, or on the
ONNX model with the ONNX Runtime backend, before switching ``current``).
"""

from __future__ import annotations

import typing
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import VerificationError
from ..ort import run as ort_run
from ..ort import session
from .manifest import SmokeTest

# feeds (name -> batch) -> outputs (name -> batch)
RunFn = typing.Callable[[typing.Dict[str, np.ndarray]], typing.Mapping[str, np.ndarray]]  # typing: Python 3.8


@dataclass(frozen=True)
class SmokeResult:
    samples: int
    batch: int
    min_cosine: float
    per_output_min_cosine: Mapping[str, float]
    top1_agreement: float | None
    threshold: float

    @property
    def passed(self) -> bool:
        return self.min_cosine >= self.threshold

    def to_dict(self) -> dict[str, Any]:
        return {
            "samples": self.samples,
            "batch": self.batch,
            "min_cosine": round(self.min_cosine, 6),
            "per_output_min_cosine": {k: round(v, 6) for k, v in sorted(self.per_output_min_cosine.items())},
            "top1_agreement": None if self.top1_agreement is None else round(self.top1_agreement, 6),
            "threshold": self.threshold,
            "passed": self.passed,
        }


def load_references(root: Path, smoke: SmokeTest) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
    def load(file: str) -> np.ndarray:
        arr: np.ndarray = np.load(root / file, allow_pickle=False)
        return arr

    inputs = {t.name: load(t.file) for t in smoke.inputs}
    outputs = {t.name: load(t.file) for t in smoke.outputs}
    return inputs, outputs


def per_sample_cosine(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Cosine similarity of each sample (axis 0) of ``a`` and ``b``; 1.0 where both are all zeros."""
    x = np.asarray(a, np.float64).reshape(a.shape[0], -1)
    y = np.asarray(b, np.float64).reshape(b.shape[0], -1)
    nx, ny = np.linalg.norm(x, axis=1), np.linalg.norm(y, axis=1)
    dot = np.sum(x * y, axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        cos = dot / (nx * ny)
    cos = np.where((nx == 0) & (ny == 0), 1.0, cos)
    cos = np.where(np.isfinite(cos), cos, -1.0)  # NaN/Inf in an output counts as a total mismatch
    return np.asarray(cos)


def run_batched(run: RunFn, inputs: Mapping[str, np.ndarray], batch: int, output_names: Sequence[str]) -> dict[str, np.ndarray]:
    """Run ``inputs`` (N samples each) through ``run`` ``batch`` samples at a time; concatenate outputs."""
    n = next(iter(inputs.values())).shape[0]
    parts: dict[str, list[np.ndarray]] = {name: [] for name in output_names}
    for start in range(0, n, batch):
        feeds = {k: np.ascontiguousarray(v[start : start + batch]) for k, v in inputs.items()}
        out = run(feeds)
        for name in output_names:
            if name not in out:
                raise VerificationError(f"smoke test: the model produced no output named {name!r} (got {sorted(out)})")
            parts[name].append(np.asarray(out[name]))
    return {name: np.concatenate(chunks, axis=0) for name, chunks in parts.items()}


def compare(
    got: Mapping[str, np.ndarray], reference: Mapping[str, np.ndarray], threshold: float, batch: int
) -> SmokeResult:
    per: dict[str, float] = {}
    top1: float | None = None
    samples = 0
    for name, ref in reference.items():
        out = got[name]
        if out.shape != ref.shape:
            raise VerificationError(
                f"smoke test: output {name!r} has shape {list(out.shape)}, the reference has {list(ref.shape)}"
            )
        cos = per_sample_cosine(out, ref)
        per[name] = float(cos.min())
        samples = max(samples, ref.shape[0])
        if top1 is None and ref.ndim == 2 and ref.shape[1] > 1:
            top1 = float(np.mean(np.argmax(out, axis=1) == np.argmax(ref, axis=1)))
    return SmokeResult(samples, batch, min(per.values()), per, top1, threshold)


def run_smoke(run: RunFn, root: Path, smoke: SmokeTest, batch: int) -> SmokeResult:
    """Feed the bundle's reference inputs (under ``root``) through ``run`` and compare with the references."""
    inputs, reference = load_references(root, smoke)
    got = run_batched(run, inputs, max(1, batch), [t.name for t in smoke.outputs])
    return compare(got, reference, smoke.min_cosine, batch)


def ort_run_fn(model: Path) -> RunFn:
    """A RunFn backed by an ONNX Runtime CPU session (the build host, and the onnxruntime backend)."""
    sess = session(Path(model))
    names = [o.name for o in sess.get_outputs()]

    def run(feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        return dict(zip(names, ort_run(sess, feeds, names)))

    return run
