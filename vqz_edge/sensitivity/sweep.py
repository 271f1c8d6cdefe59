"""Layer-wise sensitivity: quantize one unit at a time, measure against FP32, rank; and the automatic plan.

Forward sweep: every candidate layer above INT8 (FP16) except one unit, which runs INT8 (its activation inputs
and weights get Q/DQ with the calibrated ranges): the unit's own damage. Reverse sweep: every candidate in INT8
except one unit: how much keeping only that unit above INT8 buys back. Layers a preset or spec rule pins above
INT8 stay there in every run. FP16 is evaluated in FP32 on the CPU (FP16 rounding is not emulated; it is
orders of magnitude below INT8 noise).

Sensitivity score (higher = more sensitive): forward ``1 - cosine`` / ``1 - agreement`` / noise-to-signal
ratio ``10^(-SQNR/10)``; reverse: the improvement of the same quantity over the all-INT8 model.

Automatic plan (``target``): order units by score; keep the top-k above INT8 for k = 0, 1, 2, ... (steps grow
after 8, then bisect), evaluating every *combination* on the sweep data (effects interact, so single-unit scores
are only the order), stop at the first k that meets the target; then try dropping each kept unit again (least
sensitive first, repeated until no single unit can go) and keep the drop when the target still holds. The
result is written as node-exact FP16 rules,
resolved like any spec, and verified on separate held-out samples.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np
import onnx

from ..artifacts.plan import LayerDecision, ResolvedPlan
from ..log import get_logger
from ..policy.resolve import Resolution, resolve_plan
from ..progress import ProgressFactory, make_bar
from ..spec import PrecisionRule
from .costs import COMPUTE_OPS, LayerCost, layer_costs
from .diagnostics import Flag
from .evaluator import METRICS, TASK_METRICS, Evaluator, Metrics, Variant
from .units import GRANULARITIES, Unit, block_of, build_units

_log = get_logger(__name__)

SWEEP_VERSION = 1
GROW_AFTER = 8  # sequential steps before the step size grows
PRUNE_LIMIT = 24  # try dropping kept units only when at most this many were kept


@dataclass(frozen=True)
class SweepOptions:
    granularity: str = "layer"
    metric: str = "cosine"
    reverse: bool = False
    block_depth: int | None = None
    version: int = SWEEP_VERSION

    def __post_init__(self) -> None:
        if self.granularity not in GRANULARITIES:
            raise ValueError(f"granularity {self.granularity!r} is not one of {list(GRANULARITIES)}")
        if self.metric not in METRICS:
            raise ValueError(f"metric {self.metric!r} is not one of {list(METRICS)}")
        if self.block_depth is not None and self.block_depth < 1:
            raise ValueError(f"block_depth must be >= 1, got {self.block_depth}")

    def to_dict(self) -> dict[str, Any]:
        return dict(vars(self))


@dataclass(frozen=True)
class TargetOptions:
    target: float
    min_agreement: float | None = None  # an extra constraint on top-1 agreement (classifiers)
    max_kept: int | None = None  # never keep more units above INT8 than this
    prune: bool = True
    release_pins: bool = False  # after the search, release preset pins the target does not need (reverse sweep)
    # the search aims at target + margin on the sweep samples (dB for sqnr); verification checks the target itself.
    # A plan searched to exactly the target on a few dozen samples falls short on others: the margin is headroom.
    margin: float = 0.0
    version: int = SWEEP_VERSION

    def __post_init__(self) -> None:
        if not math.isfinite(self.target):
            raise ValueError(f"target must be finite, got {self.target}")
        if self.min_agreement is not None and not 0.0 <= self.min_agreement <= 1.0:
            raise ValueError(f"min_agreement must be within [0, 1], got {self.min_agreement}")
        if self.max_kept is not None and self.max_kept < 0:
            raise ValueError(f"max_kept must be >= 0, got {self.max_kept}")
        if not math.isfinite(self.margin) or self.margin < 0:
            raise ValueError(f"margin must be a finite number >= 0, got {self.margin}")

    @property
    def aim(self) -> float:
        """What the search must reach on the sweep samples: the target plus the margin."""
        return self.target + self.margin

    def searched(self) -> TargetOptions:
        """These options with the target raised to :attr:`aim` (what the search and the pin release test)."""
        return replace(self, target=self.aim, margin=0.0)

    def to_dict(self) -> dict[str, Any]:
        return dict(vars(self))


def loss(metric: str, m: Metrics) -> float:
    """The quantity the sweep ranks by (higher = worse): 1 - cosine, 1 - agreement, or noise/signal."""
    v = m.value(metric)
    if metric == "sqnr":
        return 0.0 if math.isinf(v) else 10.0 ** (-v / 10.0)
    return 1.0 - v


LOSS_LABEL = {"cosine": "1 - cosine", "agreement": "1 - top-1 agreement", "sqnr": "noise/signal (10^(-SQNR/10))",
              "map_correlation": "1 - pre-activation map correlation", "miou": "1 - mIoU", "map50": "1 - mAP@0.5",
              "map50_95": "1 - mAP@0.5:0.95", "recall_at_op": "1 - recall at the FP32 operating point"}
_DICT_KEY = {"cosine": "cosine", "agreement": "agreement", "sqnr": "sqnr_db"}


def metric_in(d: Mapping[str, Any], metric: str) -> Any:
    """``metric`` out of a :meth:`Metrics.to_dict` (task metrics live under ``task``)."""
    if metric in TASK_METRICS["dense"] or metric in TASK_METRICS["detection"]:
        return (d.get("task") or {}).get(metric)
    return d[_DICT_KEY[metric]]


@dataclass
class UnitResult:
    unit: Unit
    metrics: Metrics
    score: float
    macs: int
    params: int
    rank: int = 0
    flags: tuple[str, ...] = ()

    def to_dict(self) -> dict[str, Any]:
        return {**self.unit.to_dict(), "rank": self.rank, "score": self.score, "macs": self.macs,
                "params": self.params, "flags": list(self.flags), "metrics": self.metrics.to_dict()}


@dataclass
class AutoPlan:
    options: TargetOptions
    metric: str
    kept: list[str]  # unit names kept above INT8, most sensitive first
    kept_layers: list[str]
    met: bool  # on the sweep data
    baseline: Metrics  # all candidates INT8, on the sweep data
    achieved: Metrics  # the plan, on the sweep data
    steps: list[dict[str, Any]]
    resolution: Resolution
    rules: list[PrecisionRule]
    share: dict[str, Any]
    preset: str
    spec_rules: tuple[PrecisionRule, ...] = ()
    verification: dict[str, Any] | None = None
    # --finetune: the plan again after quantization-aware fine-tuning (sweep data), and how it was trained
    finetuned: Metrics | None = None
    finetune: dict[str, Any] | None = None
    # --release-pins: preset-pinned layers the reverse sweep put back in INT8, and the pinned groups it tried
    released: list[str] = field(default_factory=list)
    pins: dict[str, Any] | None = None

    @property
    def final(self) -> Metrics:
        """What the written artifacts reach on the sweep data: fine-tuned when fine-tuning ran."""
        return self.finetuned if self.finetuned is not None else self.achieved

    @property
    def plan(self) -> ResolvedPlan:
        return self.resolution.plan

    def meets(self, m: Metrics) -> bool:
        return meets(self.options, self.metric, m)

    def rules_toml(self, header: Sequence[str] = ()) -> str:
        """The [precision] table to put in a build spec (replaces the spec's own [precision] table)."""
        lines = [f"# {h}" for h in header]
        lines += ["[precision]", f"preset = {json.dumps(self.preset)}", 'default = "int8"', ""]
        for r in [*self.spec_rules, *self.rules]:
            lines.append("[[precision.rules]]")
            for key in ("match", "regex", "op_type", "node"):
                value = getattr(r, key)
                if value is not None:
                    lines.append(f"{key} = {json.dumps(value, ensure_ascii=False)}")
            lines.append(f"precision = {json.dumps(r.precision)}")
            if r.reason:
                lines.append(f"reason = {json.dumps(r.reason, ensure_ascii=False)}")
            lines.append("")
        return "\n".join(lines)

    def to_dict(self) -> dict[str, Any]:
        return {
            "options": self.options.to_dict(),
            "metric": self.metric,
            "kept": self.kept,
            "kept_layers": self.kept_layers,
            "met_on_sweep_data": self.met,
            "finetuned_met_on_sweep_data": None if self.finetuned is None else self.meets(self.finetuned),
            "finetuned": None if self.finetuned is None else self.finetuned.to_dict(),
            "finetune": self.finetune,
            "baseline_all_int8": self.baseline.to_dict(),
            "achieved": self.achieved.to_dict(),
            "steps": self.steps,
            "share_above_int8": self.share,
            "preset": self.preset,
            "released_pins": self.released,
            "pins": self.pins,
            "unmatched_rules": self.resolution.unmatched_rules,
            "verification": self.verification,
        }


@dataclass
class SensitivityResult:
    model: str
    options: SweepOptions
    data: str
    samples: int
    base_plan: ResolvedPlan
    preset: str
    units: list[UnitResult]  # ranked, most sensitive first
    all_int8: Metrics
    flags: list[Flag] = field(default_factory=list)
    costs: dict[str, LayerCost] = field(default_factory=dict)
    amax: dict[str, float] = field(default_factory=dict)
    auto: AutoPlan | None = None
    seconds: dict[str, float] = field(default_factory=dict)
    evaluations: int = 0
    calibration: str = ""
    thresholds: str = "calibrated"  # where amax came from: 'calibrated', 'method <m>', or 'refined'
    refined: list[dict[str, Any]] = field(default_factory=list)
    finetuned: Variant | None = None  # --finetune: the trained weights, ranges and weight scales

    def flags_by_tensor(self) -> dict[str, list[Flag]]:
        out: dict[str, list[Flag]] = {}
        for f in self.flags:
            out.setdefault(f.tensor, []).append(f)
        return out

    def to_dict(self) -> dict[str, Any]:
        return {
            "version": SWEEP_VERSION,
            "model": self.model,
            "calibration": self.calibration,
            "options": self.options.to_dict(),
            "loss": LOSS_LABEL[self.options.metric],
            "data": self.data,
            "samples": self.samples,
            "preset": self.preset,
            "all_int8": self.all_int8.to_dict(),
            "units": [u.to_dict() for u in self.units],
            "diagnostics": [f.to_dict() for f in self.flags],
            "auto_plan": self.auto.to_dict() if self.auto else None,
            "thresholds": self.thresholds,
            "refined_thresholds": self.refined,
            "evaluations": self.evaluations,
            "seconds": {k: round(v, 2) for k, v in sorted(self.seconds.items())},
        }


def plan_with(base: ResolvedPlan, int8: set[str], candidates: set[str], rule: str) -> ResolvedPlan:
    """``base`` with every candidate layer in ``int8`` INT8 and the other candidates FP16."""
    layers = []
    for layer in base.layers:
        if layer.name in candidates:
            precision = "int8" if layer.name in int8 else "fp16"
            layer = LayerDecision(layer.name, layer.op_type, precision, rule, layer.quantizable)
        layers.append(layer)
    return ResolvedPlan(base.model, base.onnx_sha256, tuple(layers))


def meets(opts: TargetOptions, metric: str, m: Metrics) -> bool:
    if m.value(metric) < opts.target:
        return False
    if opts.min_agreement is not None:
        return m.agreement is not None and m.agreement >= opts.min_agreement
    return True


def share_above_int8(plan: ResolvedPlan, costs: Mapping[str, LayerCost]) -> dict[str, Any]:
    """Share of compute layers (Conv/ConvTranspose/Gemm/MatMul), of their MACs and params, left above INT8."""
    compute = [layer for layer in plan.layers if layer.op_type in COMPUTE_OPS]
    high = [layer for layer in compute if layer.precision != "int8"]
    other = [layer for layer in plan.layers if layer.quantizable and layer.op_type not in COMPUTE_OPS]
    macs = sum(costs[x.name].macs for x in compute if x.name in costs)
    params = sum(costs[x.name].params for x in compute if x.name in costs)
    hmacs = sum(costs[x.name].macs for x in high if x.name in costs)
    hparams = sum(costs[x.name].params for x in high if x.name in costs)
    conv_gemm = [x for x in compute if x.op_type in ("Conv", "ConvTranspose", "Gemm")]
    return {
        "compute_layers": len(compute),
        "compute_layers_above_int8": len(high),
        "conv_gemm_layers": len(conv_gemm),
        "conv_gemm_layers_above_int8": sum(1 for x in conv_gemm if x.precision != "int8"),
        "layers_share": len(high) / len(compute) if compute else 0.0,
        "macs": macs,
        "macs_above_int8": hmacs,
        "macs_share": hmacs / macs if macs else 0.0,
        "params": params,
        "params_above_int8": hparams,
        "params_share": hparams / params if params else 0.0,
        "other_quantizable_above_int8": sum(1 for x in other if x.precision != "int8"),
        "other_quantizable": len(other),
        "above_int8": [x.name for x in high],
    }


def sweep(
    model: onnx.ModelProto,
    evaluator: Evaluator,
    base_plan: ResolvedPlan,
    options: SweepOptions,
    *,
    progress: ProgressFactory | None = None,
) -> tuple[list[UnitResult], Metrics]:
    """Run the one-at-a-time sweep. Returns (units ranked most sensitive first, all-INT8 metrics)."""
    units = build_units(model, base_plan, options.granularity, block_depth=options.block_depth,
                        placement=evaluator.placement)
    candidates = {n for u in units for n in u.nodes}
    costs = layer_costs(model)
    bar = make_bar(progress, "sensitivity (plans)", len(units) + 1)
    results: list[UnitResult] = []
    try:
        all_int8 = evaluator.evaluate(plan_with(base_plan, candidates, candidates, "sensitivity: all INT8"))
        base_loss = loss(options.metric, all_int8)
        bar.update(1)
        for u in units:
            if options.reverse:
                plan = plan_with(base_plan, candidates - set(u.nodes), candidates, "sensitivity: reverse sweep")
            else:
                plan = plan_with(base_plan, set(u.nodes), candidates, "sensitivity: forward sweep")
            m = evaluator.evaluate(plan)
            score = base_loss - loss(options.metric, m) if options.reverse else loss(options.metric, m)
            macs = sum(costs[n].macs for n in u.nodes if n in costs)
            params = sum(costs[n].params for n in u.nodes if n in costs)
            results.append(UnitResult(u, m, score, macs, params))
            bar.update(1)
    finally:
        bar.close()
    order = sorted(range(len(results)), key=lambda i: (-results[i].score, i))
    ranked = [results[i] for i in order]
    for r, res in enumerate(ranked, start=1):
        res.rank = r
    return ranked, all_int8


def auto_plan(
    model: onnx.ModelProto,
    evaluator: Evaluator,
    base_plan: ResolvedPlan,
    ranked: Sequence[UnitResult],
    all_int8: Metrics,
    metric: str,
    opts: TargetOptions,
    *,
    preset: str,
    spec_rules: Sequence[PrecisionRule] = (),
    onnx_sha256: str = "",
    progress: ProgressFactory | None = None,
    block_depth: int | None = None,
) -> AutoPlan:
    """The smallest set of units (greedy by sensitivity, combinations verified) that meets the target; with
    ``opts.release_pins`` then the preset pins the target does not need are released (:func:`release_pins`)."""
    user_opts, opts = opts, opts.searched()  # every test below is against the aim (target + margin)
    candidates = {n for r in ranked for n in r.unit.nodes}
    n = len(ranked)
    limit = n if opts.max_kept is None else min(n, opts.max_kept)
    steps: list[dict[str, Any]] = []
    cache: dict[frozenset[str], Metrics] = {}
    bar = make_bar(progress, "plan search (plans)", len(_growth(limit)) + max(1, limit).bit_length())

    def evaluate(kept: Sequence[UnitResult], phase: str) -> Metrics:
        key = frozenset(r.unit.name for r in kept)
        if key not in cache:
            high = {x for r in kept for x in r.unit.nodes}
            cache[key] = evaluator.evaluate(plan_with(base_plan, candidates - high, candidates, "sensitivity: auto plan"))
            m = cache[key]
            steps.append({"phase": phase, "kept": len(kept), "units": [r.unit.name for r in kept],
                          metric: round(m.value(metric), 6),
                          "agreement": None if m.agreement is None else round(m.agreement, 6), "met": meets(opts, metric, m)})
            current.update(1)
        return cache[key]

    current = bar

    cache[frozenset()] = all_int8
    steps.append({"phase": "baseline", "kept": 0, "units": [], metric: round(all_int8.value(metric), 6),
                  "agreement": None if all_int8.agreement is None else round(all_int8.agreement, 6),
                  "met": meets(opts, metric, all_int8)})
    try:
        chosen: list[UnitResult] = []
        if not meets(opts, metric, all_int8):
            lo, hi = 0, None
            for k in _growth(limit):
                if meets(opts, metric, evaluate(ranked[:k], "grow")):
                    hi = k
                    break
                lo = k
            if hi is None:
                chosen = list(ranked[:limit])
            else:
                while hi - lo > 1:  # bisect: the first k that meets the target
                    mid = (lo + hi) // 2
                    if meets(opts, metric, evaluate(ranked[:mid], "bisect")):
                        hi = mid
                    else:
                        lo = mid
                chosen = list(ranked[:hi])
                bar.close()
                if opts.prune and 1 < len(chosen) <= PRUNE_LIMIT:
                    changed = True
                    while changed and len(chosen) > 1:  # until no single unit can go: 1-minimal
                        changed = False
                        current = make_bar(progress, "plan pruning (plans)", len(chosen))
                        try:
                            for r in reversed(list(chosen)):
                                trial = [x for x in chosen if x is not r]
                                if meets(opts, metric, evaluate(trial, "prune")):
                                    chosen, changed = trial, True
                        finally:
                            current.close()
    finally:
        bar.close()
    achieved = cache[frozenset(r.unit.name for r in chosen)]
    released: list[str] = []
    pins_info: dict[str, Any] | None = None
    if opts.release_pins and meets(opts, metric, achieved):
        high = {x for r in chosen for x in r.unit.nodes}
        released, pins_info, m = release_pins(evaluator, base_plan, candidates, high, metric, opts, steps,
                                              block_depth=block_depth, progress=progress)
        if m is not None:
            achieved = m
    rules = [
        PrecisionRule(precision="fp16", node=node, reason=(
            f"sensitivity rank {r.rank}: alone it costs {LOSS_LABEL[metric]} {r.score:.4g}"))
        for r in chosen for node in r.unit.nodes
    ] + [PrecisionRule(precision="int8", node=node, reason="preset pin released: the target holds without it")
         for node in released]
    resolution = resolve_plan(model, model_name=base_plan.model, onnx_sha256=onnx_sha256 or base_plan.onnx_sha256,
                              rules=[*spec_rules, *rules], preset=preset)
    costs = layer_costs(model)
    return AutoPlan(user_opts, metric, [r.unit.name for r in chosen], [x for r in chosen for x in r.unit.nodes],
                    meets(opts, metric, achieved), all_int8, achieved, steps, resolution, rules,
                    share_above_int8(resolution.plan, costs), preset, tuple(spec_rules), released=released,
                    pins=pins_info)


def pinned_layers(base_plan: ResolvedPlan) -> list[str]:
    """Quantizable layers a preset pinned above INT8 (the user's own spec rules are never released)."""
    return [x.name for x in base_plan.layers
            if x.quantizable and x.precision != "int8" and x.rule.startswith("preset ")]


RANKING_MIN = 16  # the ranking subset's least size (all the sweep samples when there are fewer)


def ranking_size(samples: int) -> int:
    """How many sweep samples rank the pin groups: a quarter of them, at least RANKING_MIN, at most all."""
    return min(samples, max(RANKING_MIN, samples // 4))


def disagreement_subset(per_sample_cosine: np.ndarray, size: int) -> list[int]:
    """The ``size`` samples with the lowest output cosine (where the quantized model departs most from FP32), in
    sample order; ties keep sample order."""
    order = np.argsort(np.asarray(per_sample_cosine, dtype=np.float64), kind="stable")[:size]
    return sorted(int(i) for i in order)


def release_pins(
    evaluator: Evaluator,
    base_plan: ResolvedPlan,
    candidates: set[str],
    high: set[str],
    metric: str,
    opts: TargetOptions,
    steps: list[dict[str, Any]],
    *,
    block_depth: int | None = None,
    progress: ProgressFactory | None = None,
) -> tuple[list[str], dict[str, Any], Metrics | None]:
    """The reverse sweep from the preset: group the preset's pinned layers by block, rank the groups by what
    releasing each one alone (to INT8, the search's own FP16 set kept) costs on the *ranking subset* -- the sweep
    samples where the searched plan departs most from FP32 (lowest output cosine; a quarter of them, at least
    ``RANKING_MIN``), as NNCF's accuracy control ranks on the samples where the models disagree most -- then release
    them cheapest first, each release checked on all the sweep data and kept only while the target still holds.
    Returns (released layers, a summary, the metrics of the final plan or None when nothing was released)."""
    pinned = pinned_layers(base_plan)
    groups: dict[str, list[str]] = {}
    for name in pinned:
        groups.setdefault(block_of(name, block_depth), []).append(name)
    universe = candidates | set(pinned)
    int8_base = candidates - high

    seen: dict[frozenset[str], Metrics] = {}

    def run(released: set[str], phase: str, label: str, on: Evaluator | None = None) -> Metrics:
        """The plan with ``released`` back in INT8, on the sweep data (cached) or on the subset evaluator ``on``."""
        key = frozenset(released)
        if on is None and key in seen:
            return seen[key]
        m = (on or evaluator).evaluate(plan_with(base_plan, int8_base | released, universe, "sensitivity: pin release"))
        if on is None:
            seen[key] = m
        step = {"phase": phase, "kept": len(high), "units": [label], "released": len(released),
                metric: round(m.value(metric), 6),
                "agreement": None if m.agreement is None else round(m.agreement, 6), "met": meets(opts, metric, m)}
        if on is not None:
            step["samples"] = on.samples
        steps.append(step)
        return m

    summary: dict[str, Any] = {"pinned_layers": len(pinned), "groups": len(groups), "ranking": []}
    if not groups:
        return [], summary, None
    size = ranking_size(evaluator.samples)
    bar = make_bar(progress, "pin release (plans)", 2 * len(groups) + (size < evaluator.samples))
    try:
        ranker: Evaluator | None = None  # None: rank on all the sweep samples (there are too few for a subset)
        if size < evaluator.samples:
            searched = plan_with(base_plan, int8_base, universe, "sensitivity: pin release")
            subset = disagreement_subset(evaluator.per_sample_cosine(searched), size)
            ranker = evaluator.subset(subset)
            summary["ranking_subset"] = subset
            bar.update(1)
        summary["ranking_samples"] = size
        costs: list[tuple[float, str]] = []
        for g, names in groups.items():
            m = run(set(names), "release-rank", g, on=ranker)
            costs.append((loss(metric, m), g))
            summary["ranking"].append({"group": g, "layers": len(names), metric: round(m.value(metric), 6),
                                       "met_on_subset": meets(opts, metric, m)})
            bar.update(1)
        if ranker is not None:
            evaluator.evaluations += ranker.evaluations
        released: set[str] = set()
        final: Metrics | None = None
        for _, g in sorted(costs):
            trial = released | set(groups[g])
            m = run(trial, "release", g)
            if meets(opts, metric, m):
                released, final = trial, m
            bar.update(1)
    finally:
        bar.close()
    summary["released_groups"] = sorted({block_of(n, block_depth) for n in released})
    summary["released_layers"] = len(released)
    return sorted(released), summary, final


def _growth(limit: int) -> list[int]:
    """The k values the search tries: 1..GROW_AFTER one by one, then steps of k/4, ending at ``limit``."""
    ks, k = [], 1
    while k <= limit:
        ks.append(k)
        if k == limit:
            break
        k = min(limit, k + (max(1, k // 4) if k >= GROW_AFTER else 1))
    return ks


def timed(seconds: dict[str, float], key: str) -> Callable[[], None]:
    start = time.perf_counter()

    def done() -> None:
        seconds[key] = seconds.get(key, 0.0) + time.perf_counter() - start

    return done
