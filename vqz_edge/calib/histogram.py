"""Streaming histograms of |x| with exact range growth.

Each tracked tensor keeps a fixed 2048-bin histogram of |x| over [0, R]. The first batch sets R to
its max |x|. When a later batch exceeds R, R doubles (k times, as few as needed) and every 2^k
neighbouring bins merge into one. Because the bin index is computed as floor(|x| * s) with a float32
scale s that is only ever divided by powers of two, the merged histogram is *exactly* the histogram
one would get by binning all data seen so far at the final range (tested). Nothing but the counts is
kept: memory does not grow with the number of images.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

NUM_BINS = 2048
_CHUNK = 1 << 18  # elements binned at a time: keeps the float and index buffers in cache


@dataclass
class AbsHistogram:
    nbins: int = NUM_BINS
    counts: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))
    scale: np.float32 | None = None  # bin index = floor(|x| * scale); None until a non-zero value is seen
    zeros: int = 0  # values seen while the range was still undefined (all exactly zero)
    min_value: float = math.inf
    max_value: float = -math.inf
    count: int = 0

    def __post_init__(self) -> None:
        if self.nbins < 2 or self.nbins & (self.nbins - 1):
            raise ValueError(f"nbins must be a power of two >= 2, got {self.nbins}")
        if self.counts.size == 0:
            self.counts = np.zeros(self.nbins, np.int64)

    @property
    def range(self) -> float:
        """Upper edge R of the histogram (0 while only zeros were seen)."""
        return 0.0 if self.scale is None else float(self.nbins / np.float64(self.scale))

    @property
    def amax(self) -> float:
        return max(abs(self.min_value), abs(self.max_value)) if self.count else 0.0

    def edges(self) -> np.ndarray:
        return np.arange(self.nbins + 1, dtype=np.float64) * (self.range / self.nbins)

    def _grow_to(self, m: float) -> None:
        assert self.scale is not None
        k = 0
        while float(np.float32(m) * (self.scale / np.float32(2**k))) >= self.nbins:
            k += 1
        if k == 0:
            return
        f = 2**k
        merged = np.zeros(self.nbins, np.int64)
        if f >= self.nbins:
            merged[0] = self.counts.sum()
        else:
            merged[: self.nbins // f] = self.counts.reshape(-1, f).sum(axis=1)
        self.counts = merged
        self.scale = np.float32(self.scale / np.float32(f))

    def update(self, x: np.ndarray, lo: float | None = None, hi: float | None = None) -> None:
        """Add a batch. ``lo``/``hi`` (the batch min/max) may be passed when already computed."""
        flat = np.ascontiguousarray(x, dtype=np.float32).reshape(-1)
        if flat.size == 0:
            return
        lo = float(flat.min()) if lo is None else lo
        hi = float(flat.max()) if hi is None else hi
        self.min_value, self.max_value = min(self.min_value, lo), max(self.max_value, hi)
        self.count += flat.size
        m = max(abs(lo), abs(hi))
        if self.scale is None:
            if m == 0.0:
                self.zeros += flat.size
                return
            scale = np.float32(self.nbins / m)
            while float(np.float32(m) * scale) >= self.nbins:  # keep the max strictly inside the last bin
                scale = np.nextafter(scale, np.float32(0))
            self.scale = scale
            self.counts[0] += self.zeros
            self.zeros = 0
        else:
            self._grow_to(m)
        self.counts += _bincount_abs(flat, self.scale, self.nbins)


def _bincount_abs(flat: np.ndarray, scale: np.float32, nbins: int) -> np.ndarray:
    counts = np.zeros(nbins + 1, np.int64)
    n = flat.size
    fbuf = np.empty(min(n, _CHUNK), np.float32)
    ibuf = np.empty(min(n, _CHUNK), np.intp)
    for start in range(0, n, _CHUNK):
        chunk = flat[start : start + _CHUNK]
        f, i = fbuf[: chunk.size], ibuf[: chunk.size]
        np.multiply(chunk, scale, out=f)
        np.abs(f, out=f)
        np.copyto(i, f, casting="unsafe")  # truncation == floor for non-negative values
        counts += np.bincount(i, minlength=nbins + 1)[: nbins + 1]
    # the scale always maps the largest |x| strictly below nbins, so the overflow bin stays empty
    counts[nbins - 1] += counts[nbins]
    return counts[:nbins]


def reference_histogram(values: np.ndarray, scale: np.float32, nbins: int = NUM_BINS) -> np.ndarray:
    """Bin ``values`` in one go at a given scale (used to check streaming == one big histogram)."""
    return _bincount_abs(np.ascontiguousarray(values, np.float32).reshape(-1), scale, nbins)
