"""vqz-edge plan spec.toml: the resolved precision table (layer, op, precision, rule), written as JSON."""

from __future__ import annotations

import argparse
from collections import Counter
from pathlib import Path

from ..errors import InputError
from ..fsutil import atomic_write_json, sha256_file
from ..onnx_io import check_spec_inputs, load_model
from ..policy import resolve_plan
from ..spec import Spec, load_spec
from ..vocab import ONNX_FILE, PLAN_FILE
from . import COMMANDS, emit_json, options


def register(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    p = sub.add_parser(
        "plan",
        help=COMMANDS["plan"].summary,
        description="Apply the preset (final head FP32; ViT: Softmax/LayerNorm FP32, Q/K projections and the "
        "softmax/GELU neighbourhood FP16; VLM vision: FP16) and then the spec's [[precision.rules]] (later rules "
        "override earlier ones) to every node of the ONNX model. Prints the table and writes plan.json.",
    )
    p.add_argument("spec", type=Path, metavar="spec.toml")
    p.add_argument("--onnx", type=Path, help="the FP32 ONNX (default: model.source if .onnx, else calibration/<name>/model.onnx)")
    p.add_argument("-o", "--output", type=Path, help="plan JSON (default calibration/<name>/plan.json)")
    p.add_argument("--all", action="store_true", help="list every node, not only quantizable layers and pinned ones")
    options.add_common(p)
    p.set_defaults(func=run)


def onnx_for_spec(spec: Spec, explicit: Path | None) -> Path:
    if explicit:
        return explicit
    if spec.model.source.lower().endswith(".onnx"):
        return spec.resolve_path(spec.model.source)
    path = Path("calibration") / spec.model.name / ONNX_FILE
    if not path.is_file():
        raise InputError(
            f"no ONNX for model {spec.model.name!r}: {path} does not exist",
            hint=f"run 'vqz-edge export {spec.model.source} -o {path}' first, or pass --onnx",
        )
    return path


def run(args: argparse.Namespace) -> int:
    spec = load_spec(args.spec)
    onnx_path = onnx_for_spec(spec, args.onnx)
    model = load_model(onnx_path)
    check_spec_inputs(spec.inputs, model, str(onnx_path), args.spec)
    res = resolve_plan(model, model_name=spec.model.name, onnx_sha256=sha256_file(onnx_path),
                       rules=spec.precision.rules, preset=spec.precision.preset, default=spec.precision.default)
    out = args.output or Path("calibration") / spec.model.name / PLAN_FILE
    out.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_json(out, res.plan.to_dict())
    counts = Counter(layer.precision for layer in res.plan.layers if layer.quantizable)
    if args.json:
        emit_json({"plan": str(out), "onnx": str(onnx_path), "quantizable": dict(sorted(counts.items())),
                   "unmatched_rules": res.unmatched_rules, "warnings": res.warnings, **res.plan.to_dict()})
        return 0
    rows = [layer for layer in res.plan.layers if args.all or layer.quantizable or layer.precision == "fp32"]
    width = min(70, max((len(r.name) for r in rows), default=10))
    print(f"{'layer':{width}s} {'op':14s} {'precision':9s} rule")
    for r in rows:
        name = r.name if len(r.name) <= width else "..." + r.name[-(width - 3):]
        print(f"{name:{width}s} {r.op_type:14s} {r.precision:9s} {r.rule}")
    print("\nquantizable layers: " + ", ".join(f"{v} {k}" for k, v in sorted(counts.items())) + f"; plan written to {out}")
    for rule in res.unmatched_rules:
        print(f"WARNING: rule matched no layer: {rule}")
    for w in res.warnings:
        print(f"WARNING: {w}")
    return 0
