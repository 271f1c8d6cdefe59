"""Calibration statistics: streaming histograms and thresholds against independent references."""

from __future__ import annotations

from collections import Counter

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from vqz_edge.calib.histogram import AbsHistogram, reference_histogram
from vqz_edge.calib.thresholds import entropy_amax, entropy_divergences, mse_amax, percentile_amax


def kl_reference(bins: np.ndarray, start_bin: int = 128, levels: int = 128) -> list[float]:
    """Direct, loop-based EntropyCalibration2 divergence (the GTC 2017 algorithm as written in
    pytorch-quantization's _compute_amax_entropy), independent of the vectorised closed form."""
    out = []
    total = bins.sum()
    for i in range(start_bin, len(bins) + 1):
        space = np.linspace(0, i, num=levels + 1)
        level = np.digitize(np.arange(i), space) - 1
        level[bins[:i] == 0] = -1
        dens = np.zeros(levels)
        for j, lv in enumerate(level):
            if lv != -1:
                dens[lv] += bins[j]
        for key, val in Counter(level.tolist()).items():
            if key != -1:
                dens[key] /= val
        q = np.array([dens[lv] if lv != -1 else 0.0 for lv in level])
        p = bins[:i].astype(np.float64).copy()
        p[-1] += bins[i:].sum()
        assert round(p.sum()) == total
        p, q = p / p.sum(), q / q.sum()
        mask = p > 0
        if np.any(q[mask] == 0):
            out.append(np.inf)
        else:
            out.append(float(np.sum(p[mask] * np.log(p[mask] / q[mask]))))
    return out


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_vectorised_kl_matches_direct_loop(seed: int) -> None:
    rng = np.random.default_rng(seed)
    x = np.abs(np.concatenate([rng.standard_normal(20000), rng.standard_normal(30) * 8]))
    bins = np.histogram(x, bins=400, range=(0, x.max()))[0].astype(np.float64)
    bins[0] = bins[1]
    cands, kl = entropy_divergences(bins, start_bin=128)
    ref = kl_reference(bins, 128)
    assert len(ref) == len(kl) == 400 - 128 + 1
    finite = np.isfinite(ref)
    assert np.array_equal(finite, np.isfinite(kl)), "infinite candidates must agree"
    np.testing.assert_allclose(kl[finite], np.asarray(ref)[finite], rtol=1e-7, atol=1e-10)
    best_ref = len(ref) - 1 - int(np.argmin(np.asarray(ref)[::-1]))
    best = len(kl) - 1 - int(np.argmin(kl[::-1]))
    assert cands[best] == 128 + best_ref


def _hist(x: np.ndarray, batches: int = 1) -> AbsHistogram:
    h = AbsHistogram()
    for part in np.array_split(x, batches):
        h.update(part)
    return h


def test_gaussian_with_outliers_threshold_well_below_max() -> None:
    rng = np.random.default_rng(0)
    x = np.concatenate([rng.standard_normal(200_000), rng.uniform(-40, 40, 20)]).astype(np.float32)
    h = _hist(x, 4)
    amax = entropy_amax(h)
    assert h.amax > 30
    assert 2.5 < amax < 0.25 * h.amax, f"entropy threshold {amax} should clip the outliers (max {h.amax})"
    assert percentile_amax(h, 99.99) < 0.25 * h.amax
    # MSE weighs the 20 clipped outliers against rounding error of 200k samples: it clips less
    assert amax < mse_amax(h) < 0.9 * h.amax


def test_uniform_threshold_is_about_max() -> None:
    x = np.random.default_rng(1).uniform(-3, 3, 200_000).astype(np.float32)
    h = _hist(x, 3)
    assert entropy_amax(h) == pytest.approx(h.amax, rel=0.02)
    assert mse_amax(h) == pytest.approx(h.amax, rel=0.05)


@settings(max_examples=40, deadline=None)
@given(
    scales=st.lists(st.floats(0.05, 20.0), min_size=1, max_size=6),
    sizes=st.lists(st.integers(1, 3000), min_size=6, max_size=6),
    seed=st.integers(0, 2**16),
)
def test_streaming_equals_one_big_histogram(scales: list[float], sizes: list[int], seed: int) -> None:
    """Appending bins across batches gives exactly the histogram of all data at the final number of bins,
    whatever the batch split; the compiled kernel bins exactly as the plain-numpy bin index."""
    rng = np.random.default_rng(seed)
    parts = [(rng.standard_normal(n) * s).astype(np.float32) for s, n in zip(scales, sizes)]
    if parts[0].size > 1:
        parts[0][0] = 0.0  # exact zeros are included (the first batch max itself always is)
    h = AbsHistogram()
    for p in parts:
        h.update(p)
    everything = np.concatenate(parts)
    assert h.count == everything.size
    assert h.width == np.float32(np.abs(parts[0]).max() / np.float32(2048))
    np.testing.assert_array_equal(h.counts, reference_histogram(everything, h))
    assert h.counts.sum() == everything.size
    assert h.counts[-1] > 0, "the last bin holds the max"
    assert h.range >= float(np.abs(everything).max())
    assert h.amax == pytest.approx(float(np.abs(everything).max()))
    # the same stream cut into other batches (same first batch): identical counts
    rest = np.concatenate(parts[1:]) if len(parts) > 1 else np.zeros(0, np.float32)
    h2 = AbsHistogram()
    for p in [parts[0], *np.array_split(rest, 3)]:
        h2.update(p)
    np.testing.assert_array_equal(h2.counts, h.counts)


def test_first_batch_max_stays_in_the_last_first_range_bin() -> None:
    """torch.histc closes the last bin on the right: the first batch's max is in bin 2047, and so is the
    same value in later batches (the bin of a value never depends on how many bins there are)."""
    first = np.array([0.0, 1.0, 6.0, 6.0], np.float32)
    h = AbsHistogram()
    h.update(first)
    assert h.nbins == 2048 and h.counts[2047] == 2
    h.update(np.array([6.0, 12.0], np.float32))
    assert h.counts[2047] == 3 and h.nbins == 4097 and h.counts[4096] == 1


def test_absurd_range_growth_is_refused() -> None:
    h = AbsHistogram()
    h.update(np.ones(4, np.float32))
    with pytest.raises(ValueError, match="first batch"):
        h.update(np.array([1e30], np.float32))
    assert h.nbins == 2048


def test_non_finite_batch_is_refused() -> None:
    h = AbsHistogram()
    h.update(np.ones(4, np.float32))
    with pytest.raises(ValueError, match="non-finite"):
        h.update(np.array([1.0, np.nan], np.float32))


def test_zero_batches_before_data() -> None:
    h = AbsHistogram()
    h.update(np.zeros(10, np.float32))
    assert h.range == 0.0 and h.zeros == 10
    h.update(np.array([0.0, 1.0, -2.0], np.float32))
    assert h.counts.sum() == 13 and h.counts[0] == 11
    assert h.amax == 2.0


def test_bad_bins() -> None:
    with pytest.raises(ValueError, match="initial_bins"):
        AbsHistogram(initial_bins=1)
