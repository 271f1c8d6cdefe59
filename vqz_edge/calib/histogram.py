"""Streaming histograms of |x| with NVIDIA's bin growth: a fixed bin width, bins appended as the range grows.

This is the collector of NVIDIA's reference calibrator (pytorch-quantization ``calib/histogram.py``,
``HistogramCalibrator.collect``, which ModelOpt keeps): the first batch with a non-zero value sets the bin
width to ``max|x| / 2048``; a later batch whose max exceeds the range appends bins of the same width until it
fits. The bin of a value is ``trunc(float32(|x| / width))`` -- exactly the index ``torch.histc`` computes for
the first batch -- with the reference's closed right edge of that first range: a value equal to the first
batch's max lands in bin 2047.

Because a value's bin depends on nothing but the value and the fixed width, the streamed histogram is
*exactly* the histogram of all data seen so far at the final number of bins (property-tested), whatever the
batch split. Nothing but the counts is kept: memory does not grow with the number of images.

Where this differs from the reference's torch code (by design, all measured in tests/test_calib_reference.py):
counts are exact int64 (the reference accumulates float32 and loses counts above 2**24 per bin); after the range
grew, the reference re-derives the bin of every later value from ``x * n / range`` (float rounding may move a value
sitting on a bin edge by one bin) -- here a value's bin never depends on how many bins exist; and a batch
whose max falls exactly on a bin edge gets one more bin here (the reference closes that edge).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

NUM_BINS = 2048
MAX_BINS = 1 << 20  # a range 512x the first batch's: refused (the first batch did not represent the data)


@dataclass
class AbsHistogram:
    """Counts of |x| in bins of a fixed width; ``counts.size`` is 2048 after the first non-zero batch and grows."""

    counts: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))
    width: np.float32 | None = None  # bin width; None until a non-zero value is seen
    first_max: np.float32 | None = None  # max |x| of the batch that set the width (its bin is NUM_BINS - 1)
    zeros: int = 0  # values seen while the width was still undefined (all exactly zero)
    min_value: float = math.inf
    max_value: float = -math.inf
    count: int = 0
    initial_bins: int = NUM_BINS

    def __post_init__(self) -> None:
        if self.initial_bins < 2:
            raise ValueError(f"initial_bins must be >= 2, got {self.initial_bins}")

    @property
    def nbins(self) -> int:
        return int(self.counts.size)

    @property
    def range(self) -> float:
        """Upper edge of the last bin (0 while only zeros were seen)."""
        return 0.0 if self.width is None else float(self.nbins * np.float64(self.width))

    @property
    def bin_width(self) -> float:
        return 0.0 if self.width is None else float(self.width)

    @property
    def amax(self) -> float:
        return max(abs(self.min_value), abs(self.max_value)) if self.count else 0.0

    def edges(self) -> np.ndarray:
        return np.arange(self.nbins + 1, dtype=np.float64) * self.bin_width

    def bin_index(self, values: np.ndarray) -> np.ndarray:
        """The bin of each value, in plain numpy (the kernel computes the same; tests compare the two)."""
        if self.width is None or self.first_max is None:
            raise ValueError("the histogram has no bin width yet")
        return bin_index(values, self.width, self.first_max_quotient)

    @property
    def first_max_quotient(self) -> np.float32:
        """float32(first_max / width), 2048 unless the width is subnormal: values with this quotient go to bin 2047."""
        assert self.width is not None and self.first_max is not None
        return np.float32(self.first_max / self.width)

    def set_width(self, first_max: float) -> None:
        """Fix the bin width from the max |x| of the first non-zero batch (``update`` does this itself)."""
        m = np.float32(first_max)
        if not m > 0 or not np.isfinite(m):
            raise ValueError(f"the first range must be finite and positive, got {first_max}")
        self.first_max = m
        self.width = np.float32(m / np.float32(self.initial_bins))
        self.counts = np.zeros(self.initial_bins, np.int64)
        self.counts[0] += self.zeros
        self.zeros = 0

    def grow_to(self, m: float) -> None:
        """Append bins until ``m`` (a max |x|) has its own bin."""
        assert self.width is not None
        if float(np.float32(abs(m)) / self.width) >= MAX_BINS:  # before any integer conversion can overflow
            raise ValueError(
                f"the range grew to {m:.6g}, more than {MAX_BINS // self.initial_bins}x the first batch's max "
                f"{float(self.first_max or 0):.6g} (over {MAX_BINS} bins of the first batch's width)")
        need = int(bin_index(np.array([m], np.float32), self.width, self.first_max_quotient)[0]) + 1
        if need > self.nbins:
            self.counts = np.concatenate([self.counts, np.zeros(need - self.nbins, np.int64)])

    def observe(self, n: int, lo: float, hi: float) -> bool:
        """Record a batch's size and min/max and size the bins for it. False when there is nothing to bin
        (an all-zero batch before the width is known: its values are counted as zeros)."""
        if n == 0:
            return False
        if not (math.isfinite(lo) and math.isfinite(hi)):
            raise ValueError(f"non-finite values in a histogram batch (min {lo}, max {hi})")
        m = max(abs(lo), abs(hi))
        if self.width is not None:
            self.grow_to(m)  # may refuse: before anything of this batch is recorded
        elif m > 0.0:
            self.set_width(m)
        self.min_value, self.max_value = min(self.min_value, lo), max(self.max_value, hi)
        self.count += n
        if self.width is None:
            self.zeros += n
            return False
        return True

    def add_counts(self, flat: np.ndarray) -> None:
        """Bin ``flat`` (float32, contiguous, already ``observe``-d) into the counts; releases the GIL."""
        assert self.width is not None
        from . import _kernels  # numba, compiled on first use: the calib package imports without it

        _kernels.abs_bin_counts(flat, self.width, self.first_max_quotient, self.counts)

    def update(self, x: np.ndarray, lo: float | None = None, hi: float | None = None) -> None:
        """Add a batch. ``lo``/``hi`` (the batch min/max) may be passed when already computed."""
        flat = np.ascontiguousarray(x, dtype=np.float32).reshape(-1)
        if flat.size == 0:
            return
        lo = float(flat.min()) if lo is None else lo
        hi = float(flat.max()) if hi is None else hi
        if self.observe(flat.size, lo, hi):
            self.add_counts(flat)


def bin_index(values: np.ndarray, width: np.float32, first_max_quotient: np.float32) -> np.ndarray:
    """``trunc(float32(|x| / width))``, with the first range's closed right edge (quotient == 2048 -> 2047)."""
    q = np.abs(np.asarray(values, np.float32)) / np.float32(width)
    idx = q.astype(np.int64)
    idx[q == first_max_quotient] -= 1
    return idx


def reference_histogram(values: np.ndarray, hist: AbsHistogram) -> np.ndarray:
    """Bin ``values`` in one go with ``hist``'s width and number of bins (plain numpy, for tests)."""
    idx = hist.bin_index(np.ascontiguousarray(values, np.float32).reshape(-1))
    return np.bincount(idx, minlength=hist.nbins).astype(np.int64)  # longer than counts if a value lies outside
