"""vqz-edge export MODEL -o OUT.onnx"""

from __future__ import annotations

import argparse
from pathlib import Path

from ..errors import InputError
from ..export import ExportOptions, export_model
from ..spec import load_spec
from . import COMMANDS, emit_json, options


def register(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    p = sub.add_parser(
        "export",
        help=COMMANDS["export"].summary,
        description="Export a torchvision model name, a 'package.module:factory' or an existing .onnx file to an "
        "ONNX model with every BatchNormalization folded into the preceding Conv/ConvTranspose/Gemm/MatMul "
        "(or rewritten as Mul+Add), verified on real photo crops with ONNX Runtime.",
    )
    p.add_argument("model", metavar="MODEL", nargs="?",
                   help="torchvision name, package.module:factory, or FILE.onnx (default: the spec's model.source)")
    p.add_argument("-o", "--output", type=Path,
                   help="output .onnx path, written atomically (default with --spec: calibration/<model.name>/model.onnx)")
    g = p.add_argument_group("model")
    g.add_argument("--spec", type=Path, help="build spec: model.source, model.weights, model.opset and the [[inputs]] "
                   "shape are the defaults of MODEL, --weights, --opset and --input-shape")
    g.add_argument("--weights", type=Path, help="state dict (.pth) to load into a torch model")
    g.add_argument("--input-shape", type=options.shape,
                   help="input shape NxCxHxW (torch default 1x3x224x224); fills an ONNX input's dynamic dims (-1, 0, "
                   "named or unnamed), e.g. 1x3x48x192 for a Paddle [-1, 3, ?, ?] input")
    g.add_argument("--opset", type=options.positive_int, help="ONNX opset for torch exports (default 17)")
    g.add_argument("--static-batch", action="store_true", help="do not mark the batch axis dynamic")
    v = p.add_argument_group("verification")
    v.add_argument("--atol", type=options.nonnegative_float, default=1e-4, help="max abs error allowed (default 1e-4)")
    v.add_argument("--rtol", type=options.nonnegative_float, default=1e-4, help="max error relative to max |output| (default 1e-4)")
    v.add_argument("--samples", type=options.positive_int, default=8, help="real photo crops used to verify (default 8)")
    options.add_common(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    spec = load_spec(args.spec) if args.spec else None
    model = args.model or (spec.model.source if spec else None)
    if model is None:
        raise InputError("no model to export: give MODEL or --spec with [model] source")
    weights, opset, shape, output = args.weights, args.opset, args.input_shape, args.output
    if spec is not None and spec.model_table is not None:
        m = spec.model_table
        if args.model is None and not model.lower().endswith(".onnx"):
            weights = weights or (spec.resolve_path(m.weights) if m.weights else None)
            opset = opset or m.opset
        elif args.model is None:
            model = str(spec.resolve_path(model))
        output = output or Path("calibration") / m.name / "model.onnx"
    if spec is not None and shape is None and len(spec.inputs) == 1:
        shape = spec.inputs[0].shape
    if output is None:
        raise InputError("no output path: give -o OUT.onnx (or --spec with [model] name)")
    try:
        opts = ExportOptions(
            input_shape=shape, opset=opset or 17, weights=weights,
            dynamic_batch=not args.static_batch, verify_samples=args.samples, atol=args.atol, rtol=args.rtol,
        )
    except ValueError as exc:
        raise InputError(str(exc)) from exc
    result = export_model(model, output, opts)
    if args.json:
        emit_json(result.to_dict())
        return 0
    print(f"exported {result.source} -> {result.output} ({result.nodes} nodes, opset {result.opset}, {result.seconds:.1f}s)")
    print(f"  BatchNormalization: {result.batchnorm_before} before, {result.batchnorm_after} after"
          + (f" ({result.torch_folded} folded on the torch side)" if result.source_kind == "torch" else ""))
    p = result.passes
    if p.folded or p.affine:
        print(f"  ONNX passes: folded into {dict(p.folded)}, rewritten as Mul+Add: {p.affine}")
    for e in result.errors:
        print(f"  verified {e.name} {list(e.shape)}: max abs err {e.max_abs_error:.3g}, max rel err {e.max_rel_error:.3g}")
    for note in result.verification_data:
        print(f"  data: {note}")
    for left in p.left:
        print(f"  WARNING: BatchNormalization left in the graph: {left}")
    return 0
