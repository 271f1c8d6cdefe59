"""vqz-edge demo: the whole pipeline, as far as it exists, on MobileNetV2 + the bundled photos."""

from __future__ import annotations

import argparse
from pathlib import Path

from ..demo import DEMO_MODEL, mobilenet_weights
from ..export import ExportOptions, export_model


def register(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    from . import add_common

    p = sub.add_parser(
        "demo",
        help="run the pipeline on the bundled MobileNetV2 + real photos",
        description="Export torchvision's ImageNet MobileNetV2 (packaged weights) with BatchNorm folded and "
        "verify it on real photos; artifacts go to calibration/mobilenet_v2/.",
    )
    p.add_argument("--workdir", type=Path, default=Path("."), help="where calibration/ and engines/ live (default .)")
    add_common(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from . import emit_json

    outdir = args.workdir / "calibration" / DEMO_MODEL
    outdir.mkdir(parents=True, exist_ok=True)
    summary: dict[str, object] = {"model": DEMO_MODEL, "artifacts": str(outdir)}
    exp = export_model(DEMO_MODEL, outdir / "model.onnx", ExportOptions(weights=mobilenet_weights()))
    summary["export"] = exp.to_dict()
    if args.json:
        emit_json(summary)
        return 0
    print(f"vqz-edge demo: {DEMO_MODEL} (ImageNet weights) on real photos from scikit-image")
    print(f"  [export]  {exp.output}: BatchNormalization {exp.batchnorm_before} -> {exp.batchnorm_after}, "
          f"max abs err {exp.max_abs_error:.2e} vs torch on {len(exp.verification_data)} input(s) of real crops")
    return 0
