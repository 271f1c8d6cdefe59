"""Layer-wise sensitivity analysis, calibration diagnostics and the automatic mixed-precision plan.

Library entry points (the CLI is ``vqz-edge sensitivity``):
  * :func:`analyze` -- sweep a calibrated model on held-out data (+ automatic plan with ``target``);
  * :func:`write_outputs` -- sensitivity.json, plan.json, precision_rules.toml, model.qdq.onnx;
  * :class:`Evaluator`, :func:`sweep`, :func:`auto_plan` -- the same on any model and feeds (e.g. text encoders);
  * :func:`diagnose`, :func:`twin_peak` -- diagnostics from calibration histograms and weights;
  * :func:`layer_costs` -- MACs/params per layer from ONNX shape inference.
"""

from .costs import LayerCost, layer_costs
from .diagnostics import Flag, TwinPeak, diagnose, twin_peak
from .evaluator import METRICS, Evaluator, Metrics, evaluate_stream
from .refine import Refined, refine_thresholds
from .run import Calibration, analyze, cache_version, crop_sources, load_calibration, write_outputs
from .sweep import (
    AutoPlan,
    SensitivityResult,
    SweepOptions,
    TargetOptions,
    UnitResult,
    auto_plan,
    plan_with,
    share_above_int8,
    sweep,
)
from .units import Unit, block_of, build_units

__all__ = [
    "METRICS", "AutoPlan", "Calibration", "Evaluator", "Flag", "LayerCost", "Metrics", "SensitivityResult",
    "Refined", "SweepOptions", "TargetOptions", "TwinPeak", "Unit", "UnitResult", "analyze", "auto_plan", "block_of",
    "build_units", "cache_version", "crop_sources", "refine_thresholds", "diagnose", "evaluate_stream", "layer_costs", "load_calibration", "plan_with",
    "share_above_int8", "sweep", "twin_peak", "write_outputs",
]
