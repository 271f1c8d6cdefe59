"""Diagnostics from calibration statistics: why a tensor is hard to quantize, each with a suggestion.

Three tests, all on data calibration already has (the 2048-bin |x| histograms, the chosen amax, the weights):

* **twin-peaked** activations (post-softmax attention probabilities, ReLU6 outputs that saturate): most
  values sit near zero while a second mode sits near the top of the range. The |x| histogram is re-binned
  into 32 bins over [0, max|x|]; the tensor is twin-peaked when
    - at least ``TWIN_LOW_SHARE`` (50%) of the values lie in the lowest 1/8 of the range,
    - the highest bin of the upper half (the *top peak*, with its two neighbours) holds at least
      ``TWIN_PEAK_SHARE`` (0.02%) of the values -- a population, not a handful of outliers,
    - and that bin is at least ``TWIN_PROMINENCE`` (2x) as full as the emptiest bin between the zero region
      and the peak: the density dips and rises again (a decaying long tail never does).
  One symmetric int8 scale then has to choose between clipping the top peak (entropy/percentile do) and
  leaving the dense region near zero a handful of levels (max does).
* **outliers**: ``max|x| / p99.9(|x|)`` >= ``OUTLIER_RATIO`` (8): a max threshold wastes most levels on
  rare values; a clipping threshold (entropy/percentile) drops them.
* **per-channel weight range spread**: per output channel absmax, ``max / min`` over channels >=
  ``SPREAD_RATIO`` (32): a per-tensor weight scale leaves the weakest channel fewer than 127/32 ~ 4 levels.
  Typical of depthwise convolutions after BatchNorm folding; per-channel scales (which vqz-edge writes and
  TensorRT uses) are what makes them quantizable.
* **GELU range** (``gelu_range``): a GELU output lies in [-0.17, max]; a symmetric INT8 scale spends its negative
  127 levels on [-0.17, 0] -- flagged when fewer than ``GELU_LEVELS`` (16) of them are used.

Flags on a tensor the graph identifies are named by what it is (``role``): *post-softmax* (a Softmax output, also
after a Cast/Reshape) and *GELU output* (a Gelu node or its erf form).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import onnx
from onnx import numpy_helper

from ..calib.histogram import AbsHistogram
from ..calib.thresholds import percentile_amax
from ..policy.placement import Placement, place, weight_axis
from ..policy.presets import gelu_outputs
from .units import quantized_inputs

COARSE_BINS = 32
TWIN_LOW_SHARE = 0.5
TWIN_PEAK_SHARE = 2e-4
TWIN_PROMINENCE = 2.0
OUTLIER_RATIO = 8.0
SPREAD_RATIO = 32.0
KINDS = ("twin_peak", "outliers", "channel_spread", "gelu_range")
GELU_MIN = 0.1700  # min of x * Phi(x), at x ~ -0.75: GELU outputs lie in [-0.17, max]
GELU_LEVELS = 16  # flag a GELU output whose negative lobe gets fewer of the 127 negative levels than this
_PASS = ("Cast", "Reshape", "Transpose", "Identity", "Dropout", "Squeeze", "Unsqueeze")


def tensor_roles(model: onnx.ModelProto) -> dict[str, str]:
    """What a tensor is, where the graph says: 'post-softmax' (a Softmax output, also through Cast/Reshape/...:
    attention probabilities in [0, 1]) and 'GELU output' (a Gelu node or the erf form)."""
    consumers: dict[str, list[onnx.NodeProto]] = {}
    for n in model.graph.node:
        for i in n.input:
            consumers.setdefault(i, []).append(n)
    roles: dict[str, str] = {}
    starts = [(n.output[0], "post-softmax") for n in model.graph.node if n.op_type == "Softmax"]
    starts += [(t, "GELU output") for t in gelu_outputs(model)]
    for tensor, role in starts:
        frontier = [tensor]
        while frontier:
            t = frontier.pop()
            if t in roles:
                continue
            roles[t] = role
            frontier.extend(c.output[0] for c in consumers.get(t, []) if c.op_type in _PASS and c.output)
    return roles


@dataclass(frozen=True)
class TwinPeak:
    twin: bool
    low_share: float  # share of values in the lowest 1/8 of [0, max|x|]
    peak_position: float  # centre of the top peak as a fraction of max|x|
    peak_share: float  # share of values in the top peak (3 coarse bins)
    valley_ratio: float  # top-peak bin count / emptiest bin between (inf when the valley is empty)


def _coarse(hist: AbsHistogram, bins: int = COARSE_BINS) -> np.ndarray | None:
    counts = hist.counts.astype(np.float64)
    top = hist.amax
    if counts.sum() == 0 or hist.range == 0.0 or top <= 0:
        return None
    width = hist.range / hist.nbins
    centers = (np.arange(hist.nbins) + 0.5) * width
    idx = np.minimum((centers / top * bins).astype(np.int64), bins - 1)
    return np.bincount(idx, weights=counts, minlength=bins)[:bins]


def twin_peak(hist: AbsHistogram) -> TwinPeak:
    """The twin-peak test on one |x| histogram (see the module docstring)."""
    cc = _coarse(hist)
    if cc is None:
        return TwinPeak(False, 1.0, 0.0, 0.0, 0.0)
    total = cc.sum()
    k = COARSE_BINS
    low = float(cc[: k // 8].sum() / total)
    j = k // 2 + int(np.argmax(cc[k // 2 :]))
    peak_share = float(cc[max(j - 1, k // 2) : j + 2].sum() / total)
    between = cc[k // 8 : j]
    valley = float(between.min()) if between.size else float(cc[j])
    ratio = float("inf") if valley == 0 else float(cc[j] / valley)
    twin = low >= TWIN_LOW_SHARE and peak_share >= TWIN_PEAK_SHARE and cc[j] > 0 and ratio >= TWIN_PROMINENCE
    return TwinPeak(bool(twin), low, (j + 0.5) / k, peak_share, ratio)


def clipped_share(hist: AbsHistogram, amax: float) -> float:
    """Share of values with |x| above ``amax`` (they saturate in INT8)."""
    total = hist.counts.sum()
    if total == 0 or hist.range == 0.0:
        return 0.0
    edges_hi = (np.arange(hist.nbins) + 1) * hist.range / hist.nbins
    above = hist.counts[edges_hi > amax]
    # the bin that straddles amax counts half: the histogram cannot say more
    lo_edge = edges_hi - hist.range / hist.nbins
    straddle = (lo_edge < amax) & (edges_hi > amax)
    return float((above.sum() - 0.5 * hist.counts[straddle].sum()) / total)


@dataclass(frozen=True)
class Flag:
    tensor: str
    kind: str  # one of KINDS
    value: float  # twin: peak share; outliers: max/p99.9; spread: max/min channel absmax
    detail: str
    suggestion: str
    consumers: tuple[str, ...] = field(default_factory=tuple)  # quantizable layers that read it
    role: str = ""  # what the tensor is ('post-softmax', 'GELU output'), where the graph says

    def to_dict(self) -> dict[str, Any]:
        return {"tensor": self.tensor, "kind": self.kind, "value": round(self.value, 6), "detail": self.detail,
                "suggestion": self.suggestion, "consumers": list(self.consumers), "role": self.role}


def _fmt_pct(x: float) -> str:
    return f"{x * 100:.2g}%" if x < 0.01 else f"{x * 100:.1f}%"


def activation_flags(name: str, hist: AbsHistogram, amax: float | None, consumers: Sequence[str] = (),
                     role: str = "") -> list[Flag]:
    flags = _activation_flags(name, hist, amax, consumers)
    if role == "GELU output":
        used = amax if amax is not None and amax > 0 else hist.amax
        levels = 127 * GELU_MIN / max(used, 1e-12)
        if used > 0 and levels < GELU_LEVELS:
            flags.append(Flag(
                name, "gelu_range", levels,
                f"GELU output in [-{GELU_MIN}, {hist.amax:.3g}]: a symmetric INT8 scale at {used:.3g} spends its "
                f"negative half (127 levels) on [-{GELU_MIN}, 0], where ~{levels:.1f} of them are used -- the "
                "negative lobe collapses to a few values and the positive side gets 7 bits",
                "keep its consumer (the FFN down-projection) FP16 -- the vit preset does; TensorRT's INT8 is symmetric, "
                "so no zero point can reclaim the negative half", tuple(consumers)))
    if role:
        flags = [Flag(f.tensor, f.kind, f.value, f.detail if f.detail.startswith(role) else f"{role}: {f.detail}",
                      f.suggestion, f.consumers, role) for f in flags]
    return flags


def _activation_flags(name: str, hist: AbsHistogram, amax: float | None, consumers: Sequence[str] = ()) -> list[Flag]:
    flags: list[Flag] = []
    top = hist.amax
    tp = twin_peak(hist)
    if tp.twin:
        peak_at = tp.peak_position * top
        detail = (f"{_fmt_pct(tp.low_share)} of values within {top / 8:.3g} of zero and a second peak holding "
                  f"{_fmt_pct(tp.peak_share)} at |x|~{peak_at:.3g} (max {top:.3g})")
        if amax is not None and amax < peak_at:
            detail += f"; the chosen threshold {amax:.3g} clips that peak ({_fmt_pct(clipped_share(hist, amax))} of values saturate)"
            suggestion = ("keep its consumers FP16 (for post-softmax/GELU tensors the vit preset does), or calibrate this "
                          "tensor with max/MSE so the top peak is kept (costs resolution near zero)")
        else:
            levels = 127 * (top / 8) / max(amax or top, 1e-12)
            detail += f"; with the threshold at {amax or top:.3g} the values near zero get only ~{levels:.0f} of 127 levels"
            suggestion = "keep its consumers FP16 (the vit preset does this for Softmax/GELU neighbourhoods)"
        flags.append(Flag(name, "twin_peak", tp.peak_share, detail, suggestion, tuple(consumers)))
    p999 = percentile_amax(hist, 99.9)
    if p999 > 0 and top / p999 >= OUTLIER_RATIO:
        ratio = top / p999
        detail = f"max |x| {top:.3g} is {ratio:.1f}x the 99.9th percentile {p999:.3g}"
        if amax is not None:
            detail += f"; chosen threshold {amax:.3g} clips {_fmt_pct(clipped_share(hist, amax))} of values"
        suggestion = ("never calibrate it with max (most int8 levels would cover a few outliers); entropy/percentile "
                      "clip them -- if the outliers carry signal (transformer residual streams, LayerNorm inputs) keep "
                      "its consumers FP16")
        flags.append(Flag(name, "outliers", ratio, detail, suggestion, tuple(consumers)))
    return flags


def weight_flag(node: onnx.NodeProto, weight: str, w: np.ndarray, index: int) -> Flag | None:
    if w.ndim < 2:
        return None
    axis = weight_axis(node, index, w.ndim)
    reduce = tuple(i for i in range(w.ndim) if i != axis)
    amax = np.max(np.abs(w.astype(np.float64)), axis=reduce)
    nonzero = amax[amax > 0]
    if nonzero.size < 2:
        return None
    spread = float(nonzero.max() / nonzero.min())
    if spread < SPREAD_RATIO:
        return None
    dead = int((amax == 0).sum())
    attrs = {a.name: a.i for a in node.attribute if a.name == "group"}
    depthwise = node.op_type == "Conv" and attrs.get("group", 1) > 1 and w.shape[1] == 1
    detail = (f"per-channel absmax spans {spread:.0f}x ({nonzero.min():.3g} .. {nonzero.max():.3g}) over "
              f"{amax.size} output channels{' (depthwise conv)' if depthwise else ''}"
              + (f", {dead} all-zero channels" if dead else "")
              + f"; a per-tensor scale would leave the weakest channel ~{127 / spread:.1f} levels")
    suggestion = ("quantize its weights per channel (vqz-edge's Q/DQ and TensorRT do); never force per-tensor weight "
                  "scales for it -- where a runtime only has per-tensor kernels keep this layer FP16")
    return Flag(weight, "channel_spread", spread, detail, suggestion, (node.name,))


def diagnose(
    model: onnx.ModelProto,
    histograms: Mapping[str, AbsHistogram],
    amax: Mapping[str, float],
    layers: Sequence[str] | None = None,
    placement: Placement | None = None,
) -> list[Flag]:
    """Flags for the activations and weights of ``layers`` (default: every quantizable layer), in graph order."""
    placement = placement or place(model)
    inits = {i.name: i for i in model.graph.initializer}
    wanted = set(layers) if layers is not None else None
    consumers: dict[str, list[str]] = {}
    weight_of: list[tuple[onnx.NodeProto, str, int]] = []
    for node in model.graph.node:
        if not placement.quantizable(node.name) or (wanted is not None and node.name not in wanted):
            continue
        acts, weights = quantized_inputs(node, placement)
        for a in acts:
            consumers.setdefault(a, []).append(node.name)
        for w in weights:
            weight_of.append((node, w, list(node.input).index(w)))
    flags: list[Flag] = []
    roles = tensor_roles(model)
    for tensor, users in consumers.items():
        hist = histograms.get(tensor)
        if hist is not None:
            flags.extend(activation_flags(tensor, hist, amax.get(tensor), users, roles.get(tensor, "")))
    seen: set[str] = set()
    for node, w, index in weight_of:
        if w in seen:
            continue
        seen.add(w)
        flag = weight_flag(node, w, numpy_helper.to_array(inits[w]), index)
        if flag is not None:
            flags.append(flag)
    return flags
