"""vqz-edge's histograms and entropy thresholds against a re-implementation of NVIDIA's reference calibrator.

The reference is pytorch-quantization's ``calib/histogram.py`` (TensorRT repository, tools/pytorch-quantization;
ModelOpt's ``modelopt/torch/quantization/calib/histogram.py`` is the same): ``HistogramCalibrator.collect`` on
its default ``torch_hist=True`` path, and ``_compute_amax_entropy``. ``ReferenceCollector`` and
``reference_entropy_amax`` below follow that code step by step (torch.histc with float32 counts, the fixed bin
width, bins appended with ``torch.arange`` when a batch exceeds the range; linspace/digitize over every candidate,
scipy's entropy (the same sum of rel_entr), the last argmin, the bin edge as amax), written here from its description, not copied.
"""

from __future__ import annotations

import numpy as np
import onnx
import pytest
import torch
from scipy.special import rel_entr

from vqz_edge import ort as ortu
from vqz_edge.calib.collect import calibration_tensors, session_with_outputs
from vqz_edge.calib.histogram import AbsHistogram
from vqz_edge.calib.thresholds import entropy_amax
from vqz_edge.data import demo_crops


class ReferenceCollector:
    """HistogramCalibrator.collect (torch_hist=True, skip_zeros=False), re-implemented."""

    def __init__(self, num_bins: int = 2048) -> None:
        self.num_bins = num_bins
        self.hist: torch.Tensor | None = None
        self.edges: torch.Tensor | None = None
        self.grew = False

    def collect(self, values: np.ndarray) -> None:
        x = torch.from_numpy(np.ascontiguousarray(values, np.float32))
        if torch.min(x) < 0.0:
            x = x.abs()
        x = x.float()
        x_max = x.max()
        if self.hist is None or self.edges is None:
            self.hist = torch.histc(x, bins=self.num_bins, min=0, max=float(x_max))
            self.edges = torch.linspace(0, float(x_max), self.num_bins + 1)
            return
        if x_max > self.edges[-1]:
            width = self.edges[1] - self.edges[0]
            self.num_bins = int((x_max / width).ceil().item())
            self.edges = torch.arange(0, float(x_max + width), float(width))
            self.grew = True
        hist = torch.histc(x, bins=self.num_bins, min=0, max=float(self.edges[-1]))
        hist[: self.hist.numel()] += self.hist
        self.hist = hist

    def counts(self) -> np.ndarray:
        assert self.hist is not None
        return self.hist.to(torch.int64).numpy()


def _entropy(p: np.ndarray, q: np.ndarray) -> float:
    """scipy.stats.entropy(p, q) (both normalised, then sum of p log(p/q)), without its per-call overhead."""
    return float(np.sum(rel_entr(p / p.sum(), q / q.sum())))


def reference_entropy_amax(hist: np.ndarray, edges: np.ndarray, start_bin: int = 128, num_bits: int = 8) -> float:
    """_compute_amax_entropy (stride 1, signed), re-implemented; numpy's bincount replaces the per-bin loops."""
    bins = hist.astype(np.int64).copy()
    bins[0] = bins[1]
    total = bins.sum()
    nbins = 1 << (num_bits - 1)
    divergences = []
    for i in range(start_bin, len(bins) + 1):
        space = np.linspace(0, i, num=nbins + 1)
        digitized = np.digitize(np.arange(i), space) - 1
        digitized[bins[:i] == 0] = -1
        kept = digitized != -1
        density = np.bincount(digitized[kept], weights=bins[:i][kept], minlength=nbins).astype(np.float64)
        members = np.bincount(digitized[kept], minlength=nbins)
        density[members > 0] /= members[members > 0]
        new_density = np.where(kept, density[np.maximum(digitized, 0)], 0.0)
        reference = bins[:i].astype(np.float64)
        reference[-1] += bins[i:].sum()
        assert round(new_density.sum() + bins[i:].sum()) == total and round(reference.sum()) == total
        divergences.append(_entropy(reference, new_density))
    div = np.asarray(divergences)
    last_argmin = len(div) - 1 - int(np.argmin(div[::-1]))
    return float(edges[last_argmin + start_bin])


@pytest.fixture(scope="module")
def real_activations(mobilenet_onnx) -> dict[str, list[np.ndarray]]:
    """Five tensors of the demo MobileNetV2 on real photo crops, in 6 batches of 4: the input, ReLU6 outputs, a
    linear bottleneck (signed), a residual sum and the logits."""
    model = onnx.load(str(mobilenet_onnx))
    names = calibration_tensors(model)
    wanted = ("input", "features.2/conv/conv.1/conv.1.2/Clip", "features.3/conv/conv.2/Conv", "features.5/Add",
              "features.16/conv/conv.0/conv.0.2/Clip", "classifier.1/Gemm")
    picked = [n for n in names if any(w in n for w in wanted)]
    assert len(picked) >= 5, picked
    run = [n for n in picked if n != "input"]
    sess = session_with_outputs(model, run)
    crops = demo_crops("calibration", 24)
    out: dict[str, list[np.ndarray]] = {n: [] for n in picked}
    for start in range(0, 24, 4):
        x = crops[start : start + 4]
        values = dict(zip(run, ortu.run(sess, {"input": x}, run)))
        values["input"] = x
        for n in picked:
            out[n].append(np.asarray(values[n], np.float32))
    return out


def test_histograms_and_entropy_thresholds_match_the_reference_on_real_activations(real_activations) -> None:
    grown = 0
    for name, batches in real_activations.items():
        ref, ours = ReferenceCollector(), AbsHistogram()
        for x in batches:
            ref.collect(x)
            ours.update(x)
        grown += ref.grew
        counts = ref.counts()
        assert ours.nbins in (counts.size, counts.size + 1), name  # +1 only when a max sits exactly on an edge
        assert float(ours.width) == pytest.approx(float(ref.edges[1] - ref.edges[0]), rel=1e-6)
        moved = (np.abs(ours.counts[: counts.size] - counts).sum() + ours.counts[counts.size :].sum()) // 2
        # a value on a bin edge may land one bin over after the reference re-derives its bins from x * n / range
        assert moved <= 1e-5 * counts.sum(), f"{name}: {moved} of {counts.sum()} values in another bin"
        if not ref.grew:
            np.testing.assert_array_equal(ours.counts, counts, err_msg=name)  # torch.histc's own index: exact
        expected = reference_entropy_amax(counts, ref.edges.numpy())
        assert entropy_amax(ours) == pytest.approx(expected, rel=1e-6), name
    assert grown >= 2, "the sample should include tensors whose range grew after the first batch"


def test_growth_appends_bins_of_the_first_width() -> None:
    rng = np.random.default_rng(3)
    first = rng.standard_normal(5000).astype(np.float32)
    later = (rng.standard_normal(5000) * 1.3).astype(np.float32)
    ref, ours = ReferenceCollector(), AbsHistogram()
    for x in (first, later):
        ref.collect(x)
        ours.update(x)
    width = np.float32(np.abs(first).max() / np.float32(2048))
    assert ours.width == width
    assert ours.nbins == int(np.abs(later).max() / width) + 1 > 2048
    assert ours.nbins == ref.counts().size
    assert entropy_amax(ours) == pytest.approx(reference_entropy_amax(ref.counts(), ref.edges.numpy()), rel=1e-6)
