"""Activation thresholds (amax) from |x| histograms: entropy (TensorRT EntropyCalibration2 semantics),
percentile, MSE, max.

Entropy follows NVIDIA's reference, pytorch-quantization ``calib/histogram.py::_compute_amax_entropy``
(TensorRT repository, tools/pytorch-quantization), which implements the method of Szymon Migacz,
"8-bit Inference with TensorRT", GTC 2017: for every candidate threshold bin i in [128, nbins], the
reference distribution P is bins[:i] with all outlier counts added to its last bin; Q merges bins[:i]
into 128 quantisation levels and spreads each level's mass uniformly over its non-empty bins; pick the
i minimising KL(P || Q) (the largest such i on ties) and return the upper edge of bin i. As in the
reference, bins[0] is replaced by bins[1] first so the spike of exact zeros (ReLU) does not dominate.

The reference loops in Python over bins for every candidate (minutes per model). Here KL for all
candidates is computed at once from prefix sums:

    KL_i = (1/T) * (sum_j P_j log P_j - sum_j P_j log Q_j) + log(S_i / T)

with T the total count and S_i = sum(bins[:i]); sum_j b_j log Q_j collapses to sum over levels of
L_l log(L_l / c_l) (level mass L_l, non-empty bins c_l). Tested against a direct implementation.
"""

from __future__ import annotations

import numpy as np

from .histogram import AbsHistogram


def _xlogx(v: np.ndarray) -> np.ndarray:
    out = np.zeros_like(v, dtype=np.float64)
    pos = v > 0
    out[pos] = v[pos] * np.log(v[pos])
    return out


def entropy_divergences(bins: np.ndarray, start_bin: int = 128, num_levels: int = 128) -> tuple[np.ndarray, np.ndarray]:
    """KL(P||Q) for every candidate i in [start_bin, len(bins)]; inf where Q is zero under P's mass.

    ``bins`` is used as given (the bins[0] = bins[1] adjustment is the caller's).
    Returns (candidates, divergences).
    """
    b = np.asarray(bins, np.float64)
    n = b.size
    cands = np.arange(start_bin, n + 1)
    if cands.size == 0:
        return cands, np.zeros(0)
    total = b.sum()
    cs = np.concatenate([[0.0], np.cumsum(b)])  # cs[k] = sum b[:k]
    cnz = np.concatenate([[0], np.cumsum(b > 0)])  # non-empty bins among b[:k]
    cxl = np.concatenate([[0.0], np.cumsum(_xlogx(b))])

    i = cands.astype(np.int64)
    last = b[i - 1]
    outliers = total - cs[i]
    p_last = last + outliers
    # sum_j P_j log P_j
    a = cxl[i] - _xlogx(last) + _xlogx(p_last)
    # level l covers bins [ceil(l*i/L), ceil((l+1)*i/L)) -- exactly np.digitize on linspace(0, i, L+1)
    lv = np.arange(num_levels + 1, dtype=np.int64)
    bounds = (lv[None, :] * i[:, None] + num_levels - 1) // num_levels  # (C, L+1)
    mass = cs[bounds[:, 1:]] - cs[bounds[:, :-1]]
    nonempty = cnz[bounds[:, 1:]] - cnz[bounds[:, :-1]]
    with np.errstate(divide="ignore", invalid="ignore"):
        q_level = np.where(nonempty > 0, mass / np.maximum(nonempty, 1), 0.0)
        b_term = np.where(mass > 0, mass * np.log(np.where(q_level > 0, q_level, 1.0)), 0.0).sum(axis=1)
        # the last bin's level: the outliers added to P_last pair with log Q_last
        last_level = ((i - 1) * num_levels) // i
        q_last = np.where(last > 0, q_level[np.arange(i.size), last_level], 0.0)  # empty bins get Q = 0
        log_q_last = np.where(q_last > 0, np.log(np.where(q_last > 0, q_last, 1.0)), -np.inf)
        b_term = b_term + np.where(outliers > 0, outliers * log_q_last, 0.0)
        s = cs[i]
        kl = (a - b_term) / total + np.log(s / total)
    kl = np.where(np.isnan(kl), np.inf, kl)
    return cands, kl


def entropy_amax(hist: AbsHistogram, start_bin: int = 128, num_levels: int = 128) -> float:
    """EntropyCalibration2-style threshold for one tensor's |x| histogram: the upper edge of the best
    candidate bin, as the reference returns it (``calib_bin_edges[i]``). The last bin always holds the max
    (histogram.py), so the candidates run over every bin, as in the reference."""
    counts = hist.counts
    if hist.width is None or hist.nbins <= start_bin or not counts.any():
        return hist.amax
    bins = counts.astype(np.float64)
    bins[0] = bins[1]
    if bins.sum() == 0:
        return hist.amax
    cands, kl = entropy_divergences(bins, start_bin, num_levels)
    best = len(kl) - 1 - int(np.argmin(kl[::-1]))
    return float(np.float32(cands[best] * np.float64(hist.width)))


def percentile_amax(hist: AbsHistogram, percentile: float = 99.99) -> float:
    if not 0.0 < percentile <= 100.0:
        raise ValueError(f"percentile must be in (0, 100], got {percentile}")
    total = hist.counts.sum()
    if total == 0 or hist.range == 0.0:
        return hist.amax
    cdf = np.cumsum(hist.counts) / total
    idx = int(np.searchsorted(cdf, percentile / 100.0))
    return min(float(idx + 1) * hist.range / hist.nbins, hist.amax)


def mse_amax(hist: AbsHistogram, start_bin: int = 128, qmax: int = 127) -> float:
    """Threshold minimising the expected squared error of symmetric int8 fake quantisation (bin centres as
    values; candidates are the centres of bins ``start_bin`` .. last). Only non-empty bins contribute, and the
    candidates go in chunks, so a range that grew to many bins costs time linear in them, not quadratic memory."""
    counts = hist.counts.astype(np.float64)
    nz = np.flatnonzero(counts)
    if nz.size == 0 or hist.range == 0.0:
        return hist.amax
    used = int(nz[-1]) + 1
    width = hist.range / hist.nbins
    centers = (nz + 0.5) * width
    c = counts[nz]
    amaxes = (np.arange(min(start_bin, used - 1), used) + 0.5) * width
    errors = np.empty(amaxes.size)
    chunk = max(1, (1 << 22) // max(1, nz.size))
    for s in range(0, amaxes.size, chunk):
        step = amaxes[s : s + chunk, None] / qmax
        q = np.clip(np.round(centers[None, :] / step), -qmax, qmax) * step
        errors[s : s + chunk] = ((q - centers[None, :]) ** 2 * c[None, :]).sum(axis=1)
    return min(float(amaxes[int(np.argmin(errors))]), hist.amax)


def max_amax(hist: AbsHistogram) -> float:
    return hist.amax


def compute_amax(hist: AbsHistogram, method: str, percentile: float = 99.99) -> float:
    """``auto`` picks per tensor: MSE for one-sided (non-negative, e.g. post-ReLU/ReLU6) tensors, whose
    bounded range entropy clips too hard, and entropy for signed tensors (linear bottlenecks, residual
    sums) with long tails. Measured on the demo MobileNetV2: see README."""
    if method == "auto":
        method = "mse" if hist.min_value >= 0 else "entropy"
    if method == "entropy":
        return entropy_amax(hist)
    if method == "percentile":
        return percentile_amax(hist, percentile)
    if method == "mse":
        return mse_amax(hist)
    if method == "max":
        return max_amax(hist)
    raise ValueError(f"unknown calibration method {method!r}; choose entropy, max, percentile, mse or auto")
