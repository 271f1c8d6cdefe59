"""vqz-edge demo: the whole pipeline on MobileNetV2 (ImageNet weights) + the bundled real photos.

export -> calibrate -> evaluate -> plan -> check-memory, artifacts under calibration/mobilenet_v2/.
"""

from __future__ import annotations

import argparse
import math
from pathlib import Path
from typing import Any

from ..calib import CalibrationOptions, calibrate
from ..calib.evaluate import evaluate
from ..data.source import open_data
from ..demo import DEMO_MODEL, mobilenet_weights
from ..export import ExportOptions, export_model
from ..fsutil import atomic_write_json
from ..memory import check_budget
from ..memory.estimate import estimate_onnx
from ..onnx_io import graph_inputs, load_model
from ..progress import tqdm_factory
from ..targets import list_targets
from ..vocab import CALIBRATION_METHODS, ONNX_FILE
from . import COMMANDS, emit_json, options
from .evaluate_cmd import format_fidelity

CALIBRATION_CROPS = 256
EVALUATION_CROPS = 500
DEMO_TARGET = "orin-nx-16gb"


def register(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    p = sub.add_parser(
        "demo",
        help=COMMANDS["demo"].summary,
        description="Export torchvision's ImageNet MobileNetV2 (packaged weights) with BatchNorm folded, calibrate "
        f"INT8 on {CALIBRATION_CROPS} crops of the demo calibration photos, evaluate the Q/DQ model against FP32 "
        f"on {EVALUATION_CROPS} crops of the held-out photos, and check the memory budget on every Jetson target. "
        "Artifacts go to calibration/mobilenet_v2/.",
    )
    p.add_argument("--workdir", type=Path, default=Path("."), help="where calibration/ and engines/ live (default .)")
    p.add_argument("--method", default="auto", choices=CALIBRATION_METHODS,
                   help="activation thresholds (default auto: MSE for non-negative tensors, entropy for signed)")
    options.add_common(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    progress = None if args.quiet or args.json else tqdm_factory
    say = (lambda *_: None) if args.json else print
    outdir = args.workdir / "calibration" / DEMO_MODEL
    outdir.mkdir(parents=True, exist_ok=True)
    summary: dict[str, Any] = {"model": DEMO_MODEL, "artifacts": str(outdir)}
    say(f"vqz-edge demo: {DEMO_MODEL} (torchvision ImageNet weights) on real photos shipped with scikit-image")

    model_path = outdir / ONNX_FILE
    exp = export_model(DEMO_MODEL, model_path, ExportOptions(weights=mobilenet_weights()))
    summary["export"] = exp.to_dict()
    say(f"[1/4 export]    {model_path}: BatchNormalization {exp.batchnorm_before} -> {exp.batchnorm_after}, "
        f"max abs err {exp.max_abs_error:.2e} vs torch on {exp.errors[0].shape[0]} real photo crops")

    cal = calibrate(model_path, "demo", outdir, CalibrationOptions(method=args.method, num_images=CALIBRATION_CROPS),
                    model_name=DEMO_MODEL, progress=progress)
    summary["calibrate"] = cal.to_dict()
    q = cal.qdq
    say(f"[2/4 calibrate] {cal.images} crops of the calibration photos, method {cal.method}, "
        f"{len(cal.amax)} tensors in {cal.seconds['total']:.1f}s; {q.int8_layers} layers INT8, "
        f"{q.skipped_layers} kept above INT8 (final head FP32)")
    say(f"                {cal.files['cache']} (TRT-{cal.version_code}-EntropyCalibration2), {cal.files['qdq']}")

    model = load_model(model_path)
    src = open_data("demo", graph_inputs(model)[0], count=EVALUATION_CROPS, split="evaluation")
    rep = evaluate(model, load_model(cal.files["qdq"]), src.batches(50), total_batches=math.ceil(src.count / 50),
                   data_description=src.description, progress=progress)
    fidelity = rep.to_dict() | {"reference": str(model_path), "candidate": str(cal.files["qdq"])}
    atomic_write_json(outdir / "fidelity.json", fidelity)
    summary["evaluate"] = fidelity
    say(f"[3/4 evaluate]  INT8 Q/DQ vs FP32 on {rep.samples} crops of the held-out photos (ONNX Runtime CPU):")
    say(format_fidelity(rep.outputs).replace("  output:", "                "))

    est = estimate_onnx(model_path, batch=1, precision="auto")
    verdicts: list[dict[str, Any]] = []
    for target in list_targets():
        report = check_budget(target, est.items, subject=str(model_path))
        verdicts.append({"target": target.name, "fits": report.fits, "headroom_mib": report.headroom_bytes / 2**20})
    summary["check_memory"] = verdicts
    worst = min(verdicts, key=lambda v: v["headroom_mib"])
    say(f"[4/4 memory]    fits on {sum(v['fits'] for v in verdicts)}/{len(verdicts)} Jetson targets; "
        f"least headroom {worst['headroom_mib']:.0f} MiB on {worst['target']} "
        f"(vqz-edge check-memory {model_path} for the breakdown)")
    say(f"next: on the Jetson, vqz-edge build with this calibration directory ({outdir}); see README 'Build'")
    if args.json:
        emit_json(summary)
    return 0
