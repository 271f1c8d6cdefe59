"""``vqz-edge calibrate``: INT8 entropy calibration on the CPU with ONNX Runtime.

Outputs (in OUTDIR, each written atomically): calibration.cache (TensorRT text format), model.qdq.onnx
(explicit quantization), histograms.npz, summary.json, plan.json.
"""

from __future__ import annotations

import io
import math
import os
import time
import zipfile
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import onnx

from .. import __version__
from ..errors import InputError
from ..fsutil import atomic_write_bytes, canonical_json, sha256_bytes
from ..log import get_logger
from ..onnx_io import graph_inputs, load_model
from ..policy.plan import ResolvedPlan
from ..policy.resolve import Resolution, resolve_spec
from ..progress import ProgressFactory
from ..spec import CALIBRATION_METHODS, PrecisionRule
from ..versions import parse_trt_version
from .cache import CalibrationCache, cache_bytes
from .collect import calibration_tensors, collect
from .datasource import DataSource, open_data
from .finetune import FinetuneOptions, FinetuneResult, finetune_on_data
from .histogram import AbsHistogram
from .qdq import QdqReport, insert_qdq
from .thresholds import compute_amax

_log = get_logger(__name__)

DEFAULT_TRT_VERSION = "10.3.0"  # JetPack 6.1 / 6.2

__all__ = ["CalibrationOptions", "CalibrationResult", "calibrate", "histograms_npz"]


@dataclass(frozen=True)
class CalibrationOptions:
    method: str = "entropy"
    percentile: float = 99.99
    num_images: int = 256
    batch_size: int = 8
    trt_version: str = DEFAULT_TRT_VERSION
    version: int = 1

    def __post_init__(self) -> None:
        if self.method not in CALIBRATION_METHODS:
            raise ValueError(f"method {self.method!r} is not one of {list(CALIBRATION_METHODS)}")
        if not 50.0 < self.percentile <= 100.0:
            raise ValueError(f"percentile must be in (50, 100], got {self.percentile}")
        if self.num_images <= 0 or self.batch_size <= 0:
            raise ValueError("num_images and batch_size must be positive")
        parse_trt_version(self.trt_version)


@dataclass
class CalibrationResult:
    outdir: Path
    files: dict[str, Path]
    amax: dict[str, float]
    images: int
    batches: int
    method: str
    trt_version: str
    version_code: int
    data: str
    qdq: QdqReport
    resolution: Resolution
    seconds: dict[str, float] = field(default_factory=dict)

    @property
    def plan(self) -> ResolvedPlan:
        return self.resolution.plan

    def to_dict(self) -> dict[str, Any]:
        return {
            "outdir": str(self.outdir),
            "files": {k: str(v) for k, v in sorted(self.files.items())},
            "method": self.method,
            "trt_version": self.trt_version,
            "cache_header": f"TRT-{self.version_code}-EntropyCalibration2",
            "images": self.images,
            "batches": self.batches,
            "tensors": len(self.amax),
            "data": self.data,
            "qdq": self.qdq.to_dict(),
            "unmatched_rules": self.resolution.unmatched_rules,
            "seconds": {k: round(v, 3) for k, v in self.seconds.items()},
        }


def histograms_npz(hists: dict[str, AbsHistogram]) -> bytes:
    """A deterministic .npz (fixed zip timestamps, sorted entries): counts, range and min/max per tensor."""
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        for i, name in enumerate(sorted(hists)):
            h = hists[name]
            arrays = {
                f"t{i:04d}_counts": h.counts,
                f"t{i:04d}_meta": np.array([h.range, h.min_value, h.max_value, h.count], np.float64),
            }
            for key, arr in arrays.items():
                info = zipfile.ZipInfo(f"{key}.npy", date_time=(1980, 1, 1, 0, 0, 0))
                info.compress_type = zipfile.ZIP_DEFLATED
                body = io.BytesIO()
                np.lib.format.write_array(body, np.ascontiguousarray(arr), allow_pickle=False)
                zf.writestr(info, body.getvalue())
        names = "\n".join(sorted(hists)).encode()
        info = zipfile.ZipInfo("names.npy", date_time=(1980, 1, 1, 0, 0, 0))
        body = io.BytesIO()
        np.lib.format.write_array(body, np.frombuffer(names, np.uint8), allow_pickle=False)
        zf.writestr(info, body.getvalue())
    return buf.getvalue()


def load_histograms(path: Path) -> dict[str, AbsHistogram]:
    with np.load(path, allow_pickle=False) as z:
        names = bytes(z["names"]).decode().split("\n") if z["names"].size else []
        out = {}
        for i, name in enumerate(names):
            meta = z[f"t{i:04d}_meta"]
            h = AbsHistogram(counts=z[f"t{i:04d}_counts"].astype(np.int64))
            rng = float(meta[0])
            h.scale = None if rng == 0 else np.float32(h.nbins / rng)
            h.min_value, h.max_value, h.count = float(meta[1]), float(meta[2]), int(meta[3])
            out[name] = h
    return out


def _prepare_outdir(outdir: Path) -> Path:
    outdir = Path(outdir)
    try:
        outdir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise InputError(f"cannot create output directory {outdir}: {exc.strerror}") from exc
    if not os.access(outdir, os.W_OK):
        raise InputError(f"output directory {outdir} is not writable", hint="choose another -o directory")
    return outdir


def calibrate(
    model_path: Path,
    data: str | Path,
    outdir: Path,
    options: CalibrationOptions | None = None,
    *,
    rules: Sequence[PrecisionRule] = (),
    preset: str = "cnn",
    default_precision: str = "int8",
    model_name: str | None = None,
    finetune: FinetuneOptions | None = None,
    progress: ProgressFactory | None = None,
) -> CalibrationResult:
    """Calibrate ``model_path`` on ``data`` and write the artifacts to ``outdir``.

    ``preset`` ('cnn', 'vit', 'vlm-vision' or 'none') and ``rules`` resolve the precision plan that the Q/DQ
    model follows; 'none' with no rules puts every quantizable layer in INT8.
    """
    opts = options or CalibrationOptions()
    model_path = Path(model_path)
    model = load_model(model_path)
    outdir = _prepare_outdir(outdir)
    trt = parse_trt_version(opts.trt_version)
    infos = graph_inputs(model)
    if len(infos) != 1:
        raise InputError(f"{model_path}: calibration feeds single-input models; inputs are {[i.name for i in infos]}")
    source: DataSource = open_data(data, infos[0], count=opts.num_images)
    model_bytes = model_path.read_bytes()
    onnx_sha = sha256_bytes(model_bytes)
    name = model_name or model_path.parent.name or model_path.stem
    # resolve the plan first: a bad rule fails before any expensive work
    resolution = resolve_spec(model, model_name=name, onnx_sha256=onnx_sha, rules=rules, preset=preset,
                              default=default_precision)

    t0 = time.perf_counter()
    tensors = calibration_tensors(model)
    stats = collect(
        model, source.batches(opts.batch_size), total_batches=math.ceil(source.count / opts.batch_size),
        tensors=tensors, progress=progress,
    )
    t1 = time.perf_counter()
    amax = {n: compute_amax(h, opts.method, opts.percentile) for n, h in stats.histograms.items()}
    t2 = time.perf_counter()
    tuned: FinetuneResult | None = None
    if finetune is None:
        qdq_model, qrep = insert_qdq(model, amax, resolution.plan)
    else:
        tuned, _ = finetune_on_data(model, amax, resolution.plan, data, infos[0], finetune, progress=progress)
        qdq_model, qrep = insert_qdq(tuned.model, tuned.amax, resolution.plan, tuned.weight_scales)
    t3 = time.perf_counter()

    cache = CalibrationCache.from_amax(amax, trt.code)
    summary: dict[str, Any] = {
        "vqz_edge_version": __version__,
        "method": opts.method,
        "percentile": opts.percentile if opts.method == "percentile" else None,
        "trt_version": str(trt),
        "cache_header": f"TRT-{trt.code}-EntropyCalibration2",
        "images": stats.images,
        "batch_size": opts.batch_size,
        "data": {"kind": source.kind, "description": source.description, "sha256": source.identity,
                 "preprocessing": source.preprocessing.to_dict() if source.preprocessing else None},
        "model": {"path": model_path.name, "sha256": onnx_sha},
        "qdq": qrep.to_dict(),
        "tensors": {
            n: {"amax": amax[n], "min": h.min_value, "max": h.max_value, "histogram_range": h.range}
            for n, h in sorted(stats.histograms.items())
        },
    }
    if tuned is not None and finetune is not None:
        summary["finetune"] = {
            "options": finetune.to_dict(), "history": tuned.history,
            "implicit_scale_changes": tuned.implicit_scale_changes,
            "amax": {n: tuned.amax[n] for n in sorted(tuned.amax)},
            "note": "model.qdq.onnx holds the fine-tuned weights and ranges (explicit path); the implicit path "
                    "builds model.finetuned.onnx with calibration.finetuned.cache; calibration.cache and 'tensors' "
                    "stay the histogram thresholds of the original model",
        }
    files = {
        "cache": outdir / "calibration.cache",
        "qdq": outdir / "model.qdq.onnx",
        "histograms": outdir / "histograms.npz",
        "summary": outdir / "summary.json",
        "plan": outdir / "plan.json",
    }
    payloads = {
        "cache": cache_bytes(cache),
        "qdq": qdq_model.SerializeToString(),
        "histograms": histograms_npz(stats.histograms),
        "summary": canonical_json(summary).encode(),
        "plan": canonical_json(resolution.plan.to_dict()).encode(),
    }
    if tuned is not None:
        files["finetuned"] = outdir / "model.finetuned.onnx"
        payloads["finetuned"] = tuned.model.SerializeToString()
        files["finetuned_cache"] = outdir / "calibration.finetuned.cache"
        payloads["finetuned_cache"] = cache_bytes(CalibrationCache.from_amax(tuned.amax, trt.code))
    for key, path in files.items():  # every payload is ready: a failure above wrote nothing
        atomic_write_bytes(path, payloads[key])
    _log.info("calibrated %s: %d tensors, %d images -> %s", model_path, len(amax), stats.images, outdir)
    return CalibrationResult(
        outdir, files, amax, stats.images, stats.batches, opts.method, str(trt), trt.code, source.description,
        qrep, resolution,
        {"statistics": t1 - t0, "thresholds": t2 - t1, ("finetune+qdq" if tuned is not None else "qdq"): t3 - t2,
         "total": time.perf_counter() - t0},
    )


def model_calibration_tensors(model: onnx.ModelProto) -> list[str]:
    """Exposed for cache checks: the tensor names a cache for ``model`` should hold."""
    return calibration_tensors(model)
