"""``vqz-edge calibrate``: INT8 entropy calibration on the CPU with ONNX Runtime.

Outputs (in OUTDIR, written as one set, see outputs.py): calibration.cache (TensorRT text format),
model.qdq.onnx (explicit quantization), histograms.npz, plan.json, and summary.json (last, with their sha256).
"""

from __future__ import annotations

import io
import math
import time
import zipfile
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import onnx

from .. import __version__
from ..artifacts.calib_cache import CalibrationCache, cache_bytes
from ..artifacts.calib_dir import write_calibration_set
from ..artifacts.plan import ResolvedPlan
from ..data.source import DataSource, Declared, open_data
from ..errors import CalibrationError, InputError
from ..fsutil import canonical_json, check_output_dir, sha256_bytes
from ..log import get_logger
from ..onnx_io import (
    check_spec_inputs,
    fill_dynamic,
    graph_inputs,
    load_model,
    require_finite_weights,
)
from ..policy.placement import require_initializer_weights
from ..policy.resolve import Resolution, resolve_plan
from ..preprocessing import Preprocessing
from ..progress import ProgressFactory
from ..spec import InputSpec, PrecisionRule
from ..versions import parse_trt_version
from ..vocab import CALIBRATION_METHODS
from .collect import calibration_tensors, collect
from .finetune import FinetuneOptions, FinetuneResult, finetune_on_data
from .histogram import AbsHistogram
from .memory import MemoryPlan
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
    max_memory: int | None = None  # bytes; None: calib.memory.default_budget() (a share of the host's RAM)

    def __post_init__(self) -> None:
        if self.method not in CALIBRATION_METHODS:
            raise ValueError(f"method {self.method!r} is not one of {list(CALIBRATION_METHODS)}")
        if not 50.0 < self.percentile <= 100.0:
            raise ValueError(f"percentile must be in (50, 100], got {self.percentile}")
        if self.num_images <= 0 or self.batch_size <= 0:
            raise ValueError("num_images and batch_size must be positive")
        if self.max_memory is not None and self.max_memory <= 0:
            raise ValueError(f"max_memory must be positive, got {self.max_memory}")
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
    warnings: list[str] = field(default_factory=list)
    memory: MemoryPlan | None = None
    preprocessing: Preprocessing | None = None
    preprocessing_origin: str = "unknown"

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
            "warnings": list(self.warnings),
            "seconds": {k: round(v, 3) for k, v in self.seconds.items()},
            "memory": self.memory.to_dict() if self.memory else None,
            "preprocessing": ({**self.preprocessing.to_dict(), "origin": self.preprocessing_origin}
                              if self.preprocessing else None),
        }


def histograms_npz(hists: dict[str, AbsHistogram]) -> bytes:
    """A deterministic .npz (fixed zip timestamps, sorted entries): counts, range and min/max per tensor."""
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        for i, name in enumerate(sorted(hists)):
            h = hists[name]
            arrays = {
                f"t{i:04d}_counts": h.counts,
                f"t{i:04d}_meta": np.array([h.range, h.min_value, h.max_value, h.count, h.bin_width,
                                            0.0 if h.first_max is None else float(h.first_max), h.zeros], np.float64),
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
            if meta.size != 7:
                raise InputError(f"{path} was written by an older vqz-edge (histograms with another bin layout)",
                                 hint="run vqz-edge calibrate again")
            h = AbsHistogram(counts=z[f"t{i:04d}_counts"].astype(np.int64))
            width, first_max = float(meta[4]), float(meta[5])
            h.width = None if width == 0 else np.float32(width)
            h.first_max = None if first_max == 0 else np.float32(first_max)
            h.min_value, h.max_value, h.count, h.zeros = float(meta[1]), float(meta[2]), int(meta[3]), int(meta[6])
            out[name] = h
    return out


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
    spec_inputs: Sequence[InputSpec] = (),
    preprocessing: Declared = None,
    preprocessing_origin: str | None = None,
    input_shape: Sequence[int] | None = None,
) -> CalibrationResult:
    """Calibrate ``model_path`` on ``data`` and write the artifacts to ``outdir``.

    ``preprocessing``: how photos become the input (a request from the spec / command line); required for a folder
    of photos, the imagenet preset by default for the demo photos; recorded in summary.json and plan.json.
    ``input_shape``: fills the model input's dynamic dims (else the spec's [[inputs]] shape does).

    ``preset`` ('cnn', 'vit', 'vlm-vision' or 'none') and ``rules`` resolve the precision plan that the Q/DQ
    model follows; 'none' with no rules puts every quantizable layer in INT8. ``spec_inputs``: the build spec's
    [[inputs]], checked against the model before any work.
    """
    opts = options or CalibrationOptions()
    model_path = Path(model_path)
    model = load_model(model_path)
    require_finite_weights(model, str(model_path))
    require_initializer_weights(model, str(model_path))
    if spec_inputs:
        check_spec_inputs(spec_inputs, model, str(model_path))
    outdir = check_output_dir(outdir)  # created only when the set is written: a failed run leaves no folder
    trt = parse_trt_version(opts.trt_version)
    infos = graph_inputs(model)
    if len(infos) != 1:
        raise InputError(f"{model_path}: calibration feeds single-input models; inputs are {[i.name for i in infos]}")
    shape = input_shape if input_shape is not None else next(
        (tuple(i.shape) for i in spec_inputs if i.name == infos[0].name), None)
    model_input = fill_dynamic(infos[0], shape, "--input-shape" if input_shape is not None else "[[inputs]] shape")
    source: DataSource = open_data(data, model_input, count=opts.num_images, preprocessing=preprocessing,
                                   preprocessing_origin=preprocessing_origin)
    model_bytes = model_path.read_bytes()
    onnx_sha = sha256_bytes(model_bytes)
    name = model_name or model_path.parent.name or model_path.stem
    # resolve the plan first: a bad rule fails before any expensive work
    resolution = resolve_plan(model, model_name=name, onnx_sha256=onnx_sha, rules=rules, preset=preset,
                              default=default_precision)

    t0 = time.perf_counter()
    tensors = calibration_tensors(model)
    stats = collect(model, source.batches, count=source.count, batch_size=opts.batch_size, tensors=tensors,
                    budget=opts.max_memory, progress=progress)
    t1 = time.perf_counter()
    amax = {n: compute_amax(h, opts.method, opts.percentile) for n, h in stats.histograms.items()}
    warnings = check_ranges(amax, stats.histograms, source.description)
    t2 = time.perf_counter()
    tuned: FinetuneResult | None = None
    if finetune is None:
        qdq_model, qrep = insert_qdq(model, amax, resolution.plan)
    else:
        tuned, _ = finetune_on_data(model, amax, resolution.plan, data, model_input, finetune, progress=progress,
                                    preprocessing=source.preprocessing or preprocessing)
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
                 "preprocessing": source.preprocessing_record()},
        "model": {"path": model_path.name, "sha256": onnx_sha},
        "qdq": qrep.to_dict(),
        # later stages (sensitivity) inherit the policy the Q/DQ model was written with
        "precision": {"preset": preset, "default": default_precision},
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
    payloads = {
        "cache": cache_bytes(cache),
        "qdq": qdq_model.SerializeToString(),
        "histograms": histograms_npz(stats.histograms),
        # the plan carries the preprocessing the ranges were measured with: the builder, bundles and reports read it
        "plan": canonical_json({**resolution.plan.to_dict(), "preprocessing": source.preprocessing_record()}).encode(),
    }
    if tuned is not None:
        payloads["finetuned"] = tuned.model.SerializeToString()
        payloads["finetuned_cache"] = cache_bytes(CalibrationCache.from_amax(tuned.amax, trt.code))
    # every payload is ready (a failure above wrote nothing); written as one set, summary.json last
    files = write_calibration_set(outdir, payloads, summary)
    _log.info("calibrated %s: %d tensors, %d images -> %s", model_path, len(amax), stats.images, outdir)
    return CalibrationResult(
        outdir=outdir, files=files, amax=amax, images=stats.images, batches=stats.batches, method=opts.method,
        trt_version=str(trt), version_code=trt.code, data=source.description, qdq=qrep, resolution=resolution,
        seconds={"statistics": t1 - t0, **{f"statistics.{k}": v for k, v in stats.seconds.items()},
                 "thresholds": t2 - t1, ("finetune+qdq" if tuned is not None else "qdq"): t3 - t2,
                 "total": time.perf_counter() - t0},
        warnings=warnings, memory=stats.plan, preprocessing=source.preprocessing,
        preprocessing_origin=source.preprocessing_origin,
    )


# An activation range beyond the FP16 range cannot be served: every FP16 layer the tensor reaches overflows, and
# an INT8 scale of amax/127 that large quantizes every ordinary value to 0.
MAX_AMAX = 65504.0


def check_ranges(amax: dict[str, float], hists: dict[str, AbsHistogram], data: str) -> list[str]:
    """Refuse non-finite or absurd activation ranges (CalibrationError naming the tensor and its observed range);
    return warnings for degenerate ones (a tensor that is 0 on every calibration sample)."""
    warnings = []
    for name in sorted(amax):
        a, h = amax[name], hists[name]
        observed = f"observed range [{h.min_value:g}, {h.max_value:g}] over {h.count} values of {data}"
        if not math.isfinite(a):
            raise CalibrationError(f"tensor {name!r}: amax is {a} ({observed})",
                                   hint="the model or the data produce non-finite values; check both")
        if a > MAX_AMAX:
            raise CalibrationError(
                f"tensor {name!r}: amax {a:g} is beyond the FP16 range +-{MAX_AMAX:g} ({observed}); an engine "
                "cannot represent it and INT8 would round every ordinary value of it to 0",
                hint="an outlier sample or a broken layer: check the calibration data and the FP32 model's outputs",
            )
        if a == 0.0:
            warnings.append(f"tensor {name!r} is 0 on every calibration sample (amax 0, {observed}): its INT8 range "
                            "is degenerate; check that the data exercise the model")
    for w in warnings:
        _log.warning("%s", w)
    return warnings


def model_calibration_tensors(model: onnx.ModelProto) -> list[str]:
    """Exposed for cache checks: the tensor names a cache for ``model`` should hold."""
    return calibration_tensors(model)
