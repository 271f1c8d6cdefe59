"""vqz-edge evaluate REFERENCE.onnx CANDIDATE.onnx --data ..."""

from __future__ import annotations

import argparse
import math
from pathlib import Path


def register(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    from . import add_common

    p = sub.add_parser(
        "evaluate",
        help="fidelity of a candidate (e.g. INT8 Q/DQ) vs a reference on held-out data",
        description="Run both models on ONNX Runtime CPU over held-out data: top-1 agreement, top-5 containment of "
        "the reference top-1, mean logit cosine, mean KL of softmaxes (classifier outputs), and per-output SQNR.",
    )
    p.add_argument("reference", type=Path, metavar="REFERENCE.onnx")
    p.add_argument("candidate", type=Path, metavar="CANDIDATE.onnx")
    d = p.add_argument_group("data")
    d.add_argument("--data", required=True, help="folder of images, FILE.npy, or 'demo' (the evaluation split)")
    d.add_argument("--num-images", type=int, default=1000, help="samples (default 1000)")
    d.add_argument("--batch-size", type=int, default=50)
    p.add_argument("-o", "--output", type=Path, help="also write the report as JSON here (e.g. fidelity.json)")
    add_common(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ..calib.datasource import open_data
    from ..calib.evaluate import evaluate
    from ..fsutil import atomic_write_json, check_output_path
    from ..onnx_io import graph_inputs, load_model
    from ..progress import tqdm_factory
    from . import emit_json

    if args.output:
        check_output_path(args.output)
    ref = load_model(args.reference)
    cand = load_model(args.candidate)
    src = open_data(args.data, graph_inputs(ref)[0], count=args.num_images, split="evaluation")
    report = evaluate(
        ref, cand, src.batches(args.batch_size), total_batches=math.ceil(src.count / args.batch_size),
        data_description=src.description, progress=None if args.quiet or args.json else tqdm_factory,
    )
    doc = report.to_dict() | {"reference": str(args.reference), "candidate": str(args.candidate)}
    if args.output:
        atomic_write_json(args.output, doc)
    if args.json:
        emit_json(doc)
        return 0
    print(f"{args.candidate} vs {args.reference} on {src.description}:")
    print(format_fidelity(doc["outputs"]))
    return 0


def format_fidelity(outputs: list[dict]) -> str:  # type: ignore[type-arg]
    lines = []
    for o in outputs:
        parts = [f"cosine {o['mean_cosine']:.4f}", f"SQNR {o['sqnr_db']:.1f} dB"]
        if "top1_agreement" in o:
            parts = [f"top-1 agreement {o['top1_agreement'] * 100:.1f}%",
                     f"top-5 contains ref top-1 {o['top5_contains_reference_top1'] * 100:.1f}%",
                     *parts, f"KL {o['mean_kl']:.4f}"]
        lines.append(f"  {o['name']}: " + ", ".join(parts))
    return "\n".join(lines)
