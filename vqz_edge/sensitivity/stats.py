"""Activation statistics for models that ``vqz-edge calibrate`` does not feed (several inputs, integer inputs
such as token ids): the same streaming |x| histograms and thresholds, one batch of named feeds at a time.

Image models go through :func:`vqz_edge.calib.calibrate` (IOBinding, constant memory); this path runs a
plain ORT session with the tensors of interest as extra outputs -- fine for the small text encoders it serves.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence

import numpy as np
import onnx

from .. import ort as ortu
from ..calib.collect import calibration_tensors, with_outputs
from ..calib.histogram import AbsHistogram
from ..calib.thresholds import compute_amax
from ..errors import CalibrationError, DataError
from ..onnx_io import graph_inputs


def collect_feeds(
    model: onnx.ModelProto,
    batches: Iterable[Mapping[str, np.ndarray]],
    tensors: Sequence[str] | None = None,
) -> dict[str, AbsHistogram]:
    """|x| histograms of ``tensors`` (default: every calibration tensor) over batches of named feeds."""
    names = list(tensors) if tensors is not None else calibration_tensors(model)
    inputs = {i.name for i in graph_inputs(model)}
    run_names = [n for n in names if n not in inputs]
    sess = ortu.session(with_outputs(model, run_names), optimize=False)
    hists = {n: AbsHistogram() for n in names}
    seen = 0
    for b, feeds in enumerate(batches):
        outs = dict(zip(run_names, ortu.run(sess, dict(feeds), run_names)))
        for n in names:
            arr = outs[n] if n in outs else np.asarray(feeds[n])
            if arr.size == 0 or not np.issubdtype(arr.dtype, np.floating):
                continue
            lo, hi = float(arr.min()), float(arr.max())
            if not (np.isfinite(lo) and np.isfinite(hi)):
                raise CalibrationError(f"tensor {n!r} has NaN/Inf values in batch {b}")
            hists[n].update(arr, lo, hi)
        seen += 1
    if seen == 0:
        raise DataError("statistics data yielded no batches")
    return {n: h for n, h in hists.items() if h.count > 0}


def amax_from_histograms(hists: Mapping[str, AbsHistogram], method: str = "entropy",
                         percentile: float = 99.99) -> dict[str, float]:
    return {n: compute_amax(h, method, percentile) for n, h in sorted(hists.items())}
