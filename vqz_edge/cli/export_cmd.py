"""vqz-edge export MODEL -o OUT.onnx"""

from __future__ import annotations

import argparse
from pathlib import Path

from ..errors import InputError
from ..export import ExportOptions, export_model
from . import COMMANDS, emit_json, options


def register(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    p = sub.add_parser(
        "export",
        help=COMMANDS["export"].summary,
        description="Export a torchvision model name, a 'package.module:factory' or an existing .onnx file to an "
        "ONNX model with every BatchNormalization folded into the preceding Conv/ConvTranspose/Gemm/MatMul "
        "(or rewritten as Mul+Add), verified on real photo crops with ONNX Runtime.",
    )
    p.add_argument("model", metavar="MODEL", help="torchvision name, package.module:factory, or FILE.onnx")
    p.add_argument("-o", "--output", required=True, type=Path, help="output .onnx path (written atomically)")
    g = p.add_argument_group("model")
    g.add_argument("--weights", type=Path, help="state dict (.pth) to load into a torch model")
    g.add_argument("--input-shape", type=options.shape, help="input shape NxCxHxW (torch default 1x3x224x224)")
    g.add_argument("--opset", type=options.positive_int, default=17, help="ONNX opset for torch exports (default 17)")
    g.add_argument("--static-batch", action="store_true", help="do not mark the batch axis dynamic")
    v = p.add_argument_group("verification")
    v.add_argument("--atol", type=options.nonnegative_float, default=1e-4, help="max abs error allowed (default 1e-4)")
    v.add_argument("--rtol", type=options.nonnegative_float, default=1e-4, help="max error relative to max |output| (default 1e-4)")
    v.add_argument("--samples", type=options.positive_int, default=8, help="real photo crops used to verify (default 8)")
    options.add_common(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    try:
        opts = ExportOptions(
            input_shape=args.input_shape, opset=args.opset, weights=args.weights,
            dynamic_batch=not args.static_batch, verify_samples=args.samples, atol=args.atol, rtol=args.rtol,
        )
    except ValueError as exc:
        raise InputError(str(exc)) from exc
    result = export_model(args.model, args.output, opts)
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
