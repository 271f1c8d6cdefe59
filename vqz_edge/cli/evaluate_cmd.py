"""vqz-edge evaluate REFERENCE.onnx CANDIDATE.onnx --data ..."""

from __future__ import annotations

import argparse
import math
from pathlib import Path

from ..calib.evaluate import evaluate, image_retrieval_data, retrieval_evaluate, text_retrieval_data
from ..data.source import open_data, read_recorded_preprocessing
from ..errors import InputError
from ..fsutil import atomic_write_json, check_output_path
from ..onnx_io import graph_inputs, load_model
from ..progress import tqdm_factory
from ..spec import load_spec
from . import COMMANDS, emit_json, options
from .task_options import add_task_options, task_from_args


def register(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    p = sub.add_parser(
        "evaluate",
        help=COMMANDS["evaluate"].summary,
        description="Run both models on ONNX Runtime CPU over held-out data: top-1 agreement, top-5 containment of "
        "the reference top-1, mean logit cosine, mean KL of softmaxes (classifier outputs), and per-output SQNR.",
    )
    p.add_argument("reference", type=Path, metavar="REFERENCE.onnx")
    p.add_argument("candidate", type=Path, metavar="CANDIDATE.onnx")
    p.add_argument("--task", choices=["fidelity", "retrieval", "dense", "detection"], default="fidelity",
                   help="fidelity (default): output agreement metrics of every output; retrieval: Recall@1/@5 of "
                   "embeddings (reference, candidate, and candidate queries against a reference index); dense: "
                   "fidelity plus mIoU of label maps and correlation of pre-activation maps; detection: fidelity "
                   "plus mAP@0.5, mAP@0.5:0.95 and recall of the candidate's detections against the reference's")
    d = p.add_argument_group("data")
    d.add_argument("--data", required=True,
                   help="folder of images, FILE.npy, or 'demo' (the evaluation split); retrieval with a text "
                   "encoder: 'sentences' (built-in paraphrase pairs) or a file of tab-separated pairs")
    d.add_argument("--num-images", type=options.positive_int, default=1000, help="samples (default 1000)")
    d.add_argument("--batch-size", type=options.positive_int, default=50)
    d.add_argument("--spec", type=Path, help="build spec: its [preprocessing]")
    options.add_preprocessing_args(p)
    r = p.add_argument_group("retrieval")
    r.add_argument("--crops-per-source", type=options.int_at_least(2), default=10,
                   help="image retrieval: crops per held-out photo, labelled by photo (default 10)")
    r.add_argument("--tokenizer", type=Path,
                   help="text retrieval: a transformers tokenizer directory (default: the packaged MiniLM's)")
    add_task_options(p)
    p.add_argument("-o", "--output", type=Path, help="also write the report as JSON here (e.g. fidelity.json)")
    options.add_common(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    if args.output:
        check_output_path(args.output)
    ref = load_model(args.reference)
    cand = load_model(args.candidate)
    if args.task == "retrieval":
        return _retrieval(args, ref, cand)
    info = graph_inputs(ref)[0]
    spec = load_spec(args.spec) if args.spec else None
    declared, notes = options.declared_preprocessing(args, spec.preprocessing if spec else None)
    # the candidate's calibration (model.qdq.onnx beside its summary.json) recorded how its ranges were measured
    recorded, where = read_recorded_preprocessing(args.candidate.parent)
    warnings: list[str] = []
    if str(args.data).lower().endswith(".npy"):
        src = open_data(args.data, info, count=args.num_images, split="evaluation", preprocessing=declared)
    else:
        declared, used, warnings = options.inherit_preprocessing(args, declared, recorded, info.shape,
                                                                 recorded_where=where)
        src = open_data(args.data, info, count=args.num_images, split="evaluation",
                        preprocessing=declared if declared is not None else used,
                        preprocessing_origin=None if declared is not None or used is None else f"recorded in {where}")
    if recorded is not None and src.preprocessing is not None and str(args.data).lower().endswith(".npy"):
        warning = options.check_against_record(recorded, src.preprocessing, recorded_where=where,
                                               used_where="data", allow=args.allow_preprocessing_mismatch)
        warnings += [warning] if warning else []
    report = evaluate(
        ref, cand, src.batches(args.batch_size), total_batches=math.ceil(src.count / args.batch_size),
        data_description=src.description, progress=None if args.quiet or args.json else tqdm_factory,
        task=task_from_args(args.task, args),
    )
    doc = report.to_dict() | {"reference": str(args.reference), "candidate": str(args.candidate),
                              "preprocessing": src.preprocessing_record(), "preprocessing_notes": notes,
                              "warnings": warnings}
    if args.output:
        atomic_write_json(args.output, doc)
    if args.json:
        emit_json(doc)
        return 0
    print(f"{args.candidate} vs {args.reference} on {src.description}:")
    print(format_fidelity(doc["outputs"]))
    print(f"  preprocessing: {src.preprocessing.describe() if src.preprocessing else 'unknown'} "
          f"({src.preprocessing_origin})")
    for line in notes:
        print(f"  note: {line}")
    for line in warnings:
        print(f"  WARNING: {line}")
    if report.task is not None:
        print(format_task(report.task))
    return 0


def format_task(t: dict) -> str:  # type: ignore[type-arg]
    drive = ", ".join(t["driving_outputs"])
    if t["task"] == "dense":
        corr = "n/a" if t["map_correlation"] is None else f"{t['map_correlation']:.4f} (min {t['map_correlation_min']:.4f})"
        miou = "n/a" if t["miou"] is None else f"{t['miou']:.4f}"
        return f"  dense task on {drive}: map correlation {corr} of the {t['correlation_of']}; mIoU {miou} over {t['classes']} classes"
    if t["map50"] is None:
        return (f"  detection task on {drive}: the reference made no detection at conf >= {t['conf']} on "
                f"{t['images']} images; nothing to score")
    prec = "n/a" if t["precision_at_op"] is None else f"{t['precision_at_op'] * 100:.1f}%"
    return (f"  detection task on {drive} ({t['reference_detections']} reference detections at conf >= {t['conf']}, "
            f"{t['images']} images): mAP@0.5 {t['map50'] * 100:.1f}, mAP@0.5:0.95 {t['map50_95'] * 100:.1f}, "
            f"recall at the operating point {t['recall_at_op'] * 100:.1f}% (precision {prec})")


def format_fidelity(outputs: list[dict]) -> str:  # type: ignore[type-arg]
    lines = []
    for o in outputs:
        sqnr = "identical outputs" if o["sqnr_db"] is None else f"{o['sqnr_db']:.1f} dB"
        parts = [f"cosine {o['mean_cosine']:.4f}", f"SQNR {sqnr}"]
        if "top1_agreement" in o:
            parts = [f"top-1 agreement {o['top1_agreement'] * 100:.1f}%",
                     f"top-5 contains ref top-1 {o['top5_contains_reference_top1'] * 100:.1f}%",
                     *parts, f"KL {o['mean_kl']:.4f}"]
        lines.append(f"  {o['name']}: " + ", ".join(parts))
    return "\n".join(lines)


def _retrieval(args: argparse.Namespace, ref: object, cand: object) -> int:
    infos = graph_inputs(ref)  # type: ignore[arg-type]
    if args.crops_per_source < 2:
        raise InputError("--crops-per-source must be at least 2 (a query needs a positive)")
    if len(infos) == 1 and len(infos[0].shape) == 4 and infos[0].dtype.startswith("float"):
        spec = load_spec(args.spec) if args.spec else None
        declared, _ = options.declared_preprocessing(args, spec.preprocessing if spec else None)
        feeds, labels, desc = image_retrieval_data(args.data, infos[0], args.crops_per_source, args.batch_size,
                                                   preprocessing=declared)
    elif all(i.dtype.startswith("int") for i in infos) and all(len(i.shape) == 2 for i in infos):
        length = infos[0].shape[1]
        if not isinstance(length, int):
            raise InputError(f"text input {infos[0].name!r} has a dynamic sequence length {infos[0].shape}; "
                             "export it with a fixed length")
        feeds, labels, desc = text_retrieval_data(args.data, args.tokenizer, [i.name for i in infos], length)
    else:
        raise InputError(f"retrieval takes an image encoder (one N,C,H,W float input) or a text encoder (int token "
                         f"inputs of shape N,L); this model takes {[i.to_dict() for i in infos]}")
    report = retrieval_evaluate(ref, cand, feeds, labels, data_description=desc,  # type: ignore[arg-type]
                                reference_name=str(args.reference), candidate_name=str(args.candidate))
    doc = report.to_dict()
    if args.output:
        atomic_write_json(args.output, doc)
    if args.json:
        emit_json(doc)
        return 0
    print(f"retrieval: {args.candidate} vs {args.reference}")
    print(f"  data: {desc} ({report.items} items, {report.queries} queries with a positive)")
    print(f"  {'queries -> index':34s} {'R@1':>6s} {'R@5':>6s}")
    names = {"reference": "reference -> reference (FP32)", "candidate": "candidate -> candidate",
             "cross": "candidate -> reference index"}
    for key in ("reference", "candidate", "cross"):
        rec = report.recall[key]
        print(f"  {names[key]:34s} {rec['R@1'] * 100:5.1f}% {rec['R@5'] * 100:5.1f}%")
    print(f"  nearest neighbour kept: {report.neighbour_top1 * 100:.1f}%, top-5 overlap {report.neighbour_overlap5 * 100:.1f}%, "
          f"mean embedding cosine {report.embedding_cosine:.4f}")
    return 0
