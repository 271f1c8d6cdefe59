"""Threshold refinement: per activation tensor, pick the threshold that hurts the model's output least.

Calibration picks each tensor's amax from its own histogram (entropy, MSE...), blind to what the network
does with the clipped values: entropy clips the saturated ReLU6 peak that the next layer needs, MSE keeps a
range the next layer does not. Here every quantized activation tensor gets the candidates its stored histogram
gives under each method (entropy, MSE, percentile 99.9 / 99.99 / 99.999, max); with only that tensor's INT8
consumers quantized (everything else FP32), each candidate is scored by the model's output loss on
**calibration** data (never the held-out data the plan is judged on), and the best one is kept -- the
calibrated amax wins ties. One model evaluation per candidate: a few minutes for MobileNetV2 on 64 crops.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import onnx

from ..artifacts.plan import ResolvedPlan
from ..calib.histogram import AbsHistogram
from ..calib.thresholds import compute_amax
from ..progress import ProgressFactory, make_bar
from .evaluator import Evaluator
from .sweep import loss, plan_with
from .units import Unit, candidate_layers

CANDIDATES: tuple[tuple[str, str, float], ...] = (
    ("entropy", "entropy", 99.99),
    ("mse", "mse", 99.99),
    ("p99.9", "percentile", 99.9),
    ("p99.99", "percentile", 99.99),
    ("p99.999", "percentile", 99.999),
    ("max", "max", 99.99),
)
_SAME = 0.005  # candidates within 0.5% of each other are one candidate


@dataclass(frozen=True)
class Refined:
    tensor: str
    before: float
    after: float
    method: str  # the candidate that won ('calibrated' when the original amax stayed)
    loss_before: float
    loss_after: float

    def to_dict(self) -> dict[str, Any]:
        return {"tensor": self.tensor, "amax_before": self.before, "amax_after": self.after, "method": self.method,
                "loss_before": self.loss_before, "loss_after": self.loss_after}


def refine_thresholds(
    model: onnx.ModelProto,
    amax: Mapping[str, float],
    histograms: Mapping[str, AbsHistogram],
    base_plan: ResolvedPlan,
    units: Sequence[Unit],
    calibration: Evaluator,
    *,
    metric: str = "cosine",
    progress: ProgressFactory | None = None,
) -> tuple[dict[str, float], list[Refined]]:
    """Refined amax for every activation tensor ``units`` quantize (others unchanged), and what changed. While a
    tensor is scored, only its consumers run INT8; every other candidate layer of ``base_plan`` stays FP16."""
    metric = metric if metric in ("cosine", "sqnr") else "cosine"  # agreement and task metrics: too coarse to rank thresholds
    candidates = set(candidate_layers(base_plan))  # every other candidate stays above INT8 while a tensor is scored
    consumers: dict[str, set[str]] = {}
    for u in units:
        for node in u.nodes:
            for t in u.activations:
                consumers.setdefault(t, set()).add(node)
    # a block unit lists its activations for all its nodes: keep only the nodes that read the tensor
    reads = {n.name: set(n.input) for n in model.graph.node}
    tensors = [t for t in consumers if t in histograms and t in amax]
    out = dict(amax)
    changes: list[Refined] = []
    bar = make_bar(progress, "refining thresholds (tensors)", len(tensors))
    try:
        for t in tensors:
            nodes = {n for n in consumers[t] if t in reads.get(n, set())}
            plan = plan_with(base_plan, nodes, candidates, "sensitivity: threshold refinement")
            values: list[tuple[str, float]] = [("calibrated", float(amax[t]))]
            for label, method, pct in CANDIDATES:
                v = float(compute_amax(histograms[t], method, pct))
                if v > 0 and all(abs(v - w) > _SAME * max(v, w) for _, w in values):
                    values.append((label, v))
            scored = []
            for label, v in values:
                calibration.amax = {**out, t: v}
                scored.append((loss(metric, calibration.evaluate(plan)), label, v))
            base_loss = scored[0][0]
            best = min(scored, key=lambda s: s[0])  # min() keeps the first (calibrated) on ties
            out[t] = best[2]
            if best[1] != "calibrated":
                changes.append(Refined(t, float(amax[t]), best[2], best[1], base_loss, best[0]))
            bar.update(1)
    finally:
        bar.close()
        calibration.amax = dict(out)
    return out, changes
