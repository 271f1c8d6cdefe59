"""vqz-edge sensitivity MODEL.onnx --calibration OUTDIR --data EVAL [--goal 0.995] [--report DIR]"""

from __future__ import annotations

import argparse
import json
from dataclasses import dataclass
from pathlib import Path

from ..data.source import read_recorded_preprocessing
from ..errors import InputError
from ..fsutil import check_output_dir
from ..onnx_io import graph_inputs, load_model
from ..preprocessing import Preprocessing
from ..progress import tqdm_factory
from ..report import format_auto_plan, format_diagnostics, format_ranking, write_report
from ..sensitivity import SweepOptions, TargetOptions, analyze, cache_version, write_outputs
from ..spec import load_spec
from ..vocab import CALIBRATION_METHODS, PRESETS
from . import COMMANDS, emit_json, options
from .evaluate_cmd import format_task
from .task_options import METRICS, TASK_METRICS, add_task_options, task_from_args


def register(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    p = sub.add_parser(
        "sensitivity",
        help=COMMANDS["sensitivity"].summary,
        description="Quantize one layer (or block) at a time with the calibrated ranges, everything else FP32, and "
        "measure the damage against FP32 on held-out data; rank the units. --reverse: all INT8 except one. "
        "Diagnostics from the calibration histograms (twin-peaked distributions, outliers, per-channel weight "
        "spread), each with a suggestion. --goal: the smallest set of units kept above INT8 (FP16) that meets the "
        "goal, written as precision rules and a plan, verified on further held-out samples.",
    )
    p.add_argument("model", type=Path, metavar="MODEL.onnx", help="the FP32 ONNX that was calibrated")
    p.add_argument("--calibration", type=Path, required=True, metavar="OUTDIR",
                   help="output directory of 'vqz-edge calibrate' (summary.json, histograms.npz)")
    d = p.add_argument_group("data")
    d.add_argument("--data", required=True, help="held-out data: folder of images, FILE.npy, or 'demo' (evaluation split)")
    d.add_argument("--num-images", type=options.positive_int, default=256, help="samples for the sweep and the plan search (default 256)")
    d.add_argument("--verify-images", type=options.positive_int, default=1000,
                   help="with --goal: further samples (after the sweep's) to verify the plan on (default 1000)")
    d.add_argument("--batch-size", type=options.positive_int, default=32, help="evaluation batch (default 32; smaller if --max-memory needs)")
    options.add_memory_arg(d)
    s = p.add_argument_group("sweep")
    s.add_argument("--granularity", choices=["layer", "block"], default="layer",
                   help="layer: one quantizable node; block: the layers of one module scope (e.g. features.3)")
    s.add_argument("--block-depth", type=options.positive_int, help="block = the first N components of the module scope")
    s.add_argument("--metric", choices=list(METRICS), default="cosine",
                   help="cosine: mean output cosine; agreement: top-1 agreement (classifiers); sqnr: dB; with --task "
                   "dense: map_correlation (pre-activation maps), miou; with --task detection: map50, map50_95, "
                   "recall_at_op (the plan search aims at it: e.g. --metric map50 --goal 0.99)")
    s.add_argument("--task", choices=["dense", "detection"],
                   help="report task metrics for every plan (and allow them as --metric): dense maps or detections")
    s.add_argument("--reverse", action="store_true", help="all INT8 except one unit (gain of keeping it FP16)")
    s.add_argument("--output-name", help="graph output to measure (default: the first)")
    s.add_argument("--method", choices=CALIBRATION_METHODS,
                   help="recompute every threshold from the stored histograms (default: the calibrated amax)")
    s.add_argument("--percentile", type=options.float_range(50.0, 100.0, low_open=True), default=99.99)
    s.add_argument("--refine-thresholds", action="store_true",
                   help="re-pick each quantized tensor's threshold (entropy/MSE/percentiles/max) by output loss on "
                   "calibration data before the sweep; writes a calibration.cache with the result")
    s.add_argument("--refine-data", help="calibration data for --refine-thresholds (default: the calibration's, if demo)")
    s.add_argument("--refine-images", type=options.positive_int, default=64, help="calibration samples for --refine-thresholds (default 64)")
    pol = p.add_argument_group("precision policy")
    pol.add_argument("--preset", choices=PRESETS,
                     help="layers a preset pins above INT8 stay there (default: the spec's preset, else the one the "
                     "calibration used, from its summary.json)")
    pol.add_argument("--spec", type=Path, help="build spec: its [[precision.rules]] apply before the sweep")
    t = p.add_argument_group("automatic plan")
    t.add_argument("--goal", type=options.finite_float, help="metric the plan must reach, e.g. 0.995 (cosine) or 30 (SQNR dB)")
    t.add_argument("--target", dest="goal", type=options.finite_float, action=options.DeprecatedSpelling, new="--goal",
                   help=argparse.SUPPRESS)  # the old spelling, for one release: --target is a Jetson module elsewhere
    t.add_argument("--min-agreement", type=options.float_range(0.0, 1.0), help="also require this top-1 agreement, e.g. 0.92")
    t.add_argument("--max-kept", type=options.nonnegative_int, help="never keep more than N units above INT8")
    t.add_argument("--margin", type=options.nonnegative_float, default=0.0,
                   help="search until the sweep samples reach goal + MARGIN (dB for sqnr), so that the plan still meets "
                   "the goal on the verification samples (default 0: exactly the goal, which a few dozen sweep "
                   "samples overfit; e.g. 0.01 for map_correlation)")
    t.add_argument("--release-pins", action="store_true",
                   help="the preset is where the search starts: afterwards, release (to INT8) the preset's pinned "
                   "layers, block by block, cheapest first, wherever the goal still holds")
    f = options.add_finetune_args(p, "quantization-aware fine-tuning (with --goal)", "for the automatic plan")
    f.add_argument("--finetune-data", help="calibration data (default: the calibration's, if demo)")
    options.add_preprocessing_args(p)
    add_task_options(p)
    o = p.add_argument_group("output")
    o.add_argument("-o", "--output", type=Path,
                   help="where sensitivity.json (and with --goal plan.json, precision_rules.toml, model.qdq.onnx) go "
                   "(default OUTDIR/sensitivity)")
    o.add_argument("--report", type=Path, metavar="DIR", help="write PNG plots and a self-contained report.html here")
    o.add_argument("--top", type=options.positive_int, default=15, help="rows of the console ranking (default 15)")
    options.add_common(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    spec = load_spec(args.spec) if args.spec else None
    record = _recorded(args.calibration)
    recorded, recorded_where = record.preprocessing, record.summary
    from_spec = spec is not None and spec.precision.preset_declared
    preset = args.preset or (spec.precision.preset if spec is not None and from_spec else record.preset or "cnn")
    preset_origin = ("--preset" if args.preset else f"spec {args.spec}" if from_spec else
                     f"inherited from {recorded_where}" if record.preset else
                     f"calibrate's default: {recorded_where} records no preset (pass --preset if it used another)"
                     if recorded_where else "calibrate's default")
    declared, notes = options.declared_preprocessing(args, spec.preprocessing if spec else None)
    model_input = _model_input(args.model)
    warnings: list[str] = []
    if not str(args.data).lower().endswith(".npy"):
        declared, used, warnings = options.inherit_preprocessing(
            args, declared, recorded, model_input, recorded_where=recorded_where)
        pre_arg = declared if declared is not None else used
    else:
        pre_arg = declared
    try:
        sweep = SweepOptions(granularity=args.granularity, metric=args.metric, reverse=args.reverse,
                               block_depth=args.block_depth)
        target = None
        if args.goal is not None:
            target = TargetOptions(target=args.goal, min_agreement=args.min_agreement, max_kept=args.max_kept,
                                   release_pins=args.release_pins, margin=args.margin)
        elif (args.min_agreement is not None or args.max_kept is not None or args.finetune or args.release_pins
              or args.margin):
            raise InputError("--min-agreement, --max-kept, --margin, --release-pins and --finetune only apply with --goal")
        finetune = options.finetune_options(args)
    except ValueError as exc:
        raise InputError(str(exc)) from exc
    task = task_from_args(args.task, args)
    if args.metric in TASK_METRICS["dense"] + TASK_METRICS["detection"]:
        kind = "dense" if args.metric in TASK_METRICS["dense"] else "detection"
        if task is None or task.kind != kind:
            raise InputError(f"--metric {args.metric} is a {kind} metric", hint=f"add --task {kind}")
    if target is not None and args.metric != "sqnr" and not 0.0 < args.goal <= 1.0:
        raise InputError(f"--goal {args.goal} is impossible for --metric {args.metric} (a value in (0, 1])",
                         hint="e.g. --goal 0.995 for cosine, --goal 0.9 for agreement, --metric sqnr --goal 30")
    if target is not None and args.metric != "sqnr" and args.goal + args.margin > 1.0:
        raise InputError(f"--goal {args.goal} with --margin {args.margin} asks the search for {args.goal + args.margin:g}, "
                         f"above 1, which --metric {args.metric} cannot reach",
                         hint="lower the margin (e.g. --margin 0.005) or the goal")
    outdir = args.output or args.calibration / "sensitivity"
    if outdir.resolve() == args.calibration.resolve():
        raise InputError(f"-o {outdir} is the calibration directory itself; sensitivity writes its own set",
                         hint="leave -o out (default OUTDIR/sensitivity) or choose another directory")
    check_output_dir(outdir)  # before minutes of work, not after
    if args.report:
        check_output_dir(args.report)
    result, cal = analyze(
        args.model, args.calibration, args.data, sweep, target=target, num_images=args.num_images,
        verify_images=args.verify_images, batch_size=args.batch_size, preset=preset,
        rules=spec.precision.rules if spec else (), method=args.method, percentile=args.percentile,
        output=args.output_name, refine=args.refine_thresholds, refine_data=args.refine_data,
        refine_images=args.refine_images, finetune=finetune, finetune_data=args.finetune_data,
        max_memory=options.memory_budget(args), progress=None if args.quiet or args.json else tqdm_factory,
        preprocessing=pre_arg,
        task=task,
    )
    files = write_outputs(result, outdir, args.model, cache_version(cal))
    if args.report:
        files.update({f"report:{k}": v for k, v in write_report(result, cal.histograms, args.report).items()})
    if args.json:
        doc = result.to_dict()
        doc["files"] = {k: str(v) for k, v in sorted(files.items())}
        doc["preset"] = {"name": preset, "origin": preset_origin}
        doc["preprocessing"] = {"recipe": recorded.to_dict() if recorded and pre_arg is None else
                                (pre_arg.to_dict() if pre_arg is not None else None), "notes": notes,
                                "warnings": warnings}
        emit_json(doc)
        return 0
    a = result.all_int8
    print(f"{result.model}: {result.options.granularity} sensitivity on {result.data} "
          f"({result.evaluations} evaluations, {sum(result.seconds.values()):.0f}s)")
    print(f"all {len(result.units)} {result.options.granularity}s INT8: cosine {a.cosine:.4f}"
          + (f", top-1 agreement {a.agreement * 100:.1f}%" if a.agreement is not None else "")
          + (f", SQNR {a.sqnr_db:.1f} dB" if a.sqnr_db is not None else ""))
    if a.task is not None:
        print(format_task(a.task).replace("  ", "  all INT8: ", 1))
    if result.refined:
        print(f"thresholds {result.thresholds}: {len(result.refined)} tensors changed")
    print(f"precision preset {preset} ({preset_origin})")
    for line in notes:
        print(f"note: {line}")
    for line in warnings:
        print(f"WARNING: {line}")
    print(format_ranking(result, args.top))
    print(format_diagnostics(result))
    if result.auto is not None:
        print(format_auto_plan(result))
        if result.auto.resolution.unmatched_rules:
            print("WARNING: rules that matched no layer: " + ", ".join(result.auto.resolution.unmatched_rules))
    for key, path in sorted(files.items()):
        print(f"  {key:24s} {path}")
    return 0


@dataclass(frozen=True)
class CalibrationRecord:
    """What a calibration directory's summary.json says about how it was made."""

    preprocessing: Preprocessing | None
    summary: str  # 'DIR/summary.json', or '' without one
    preset: str | None  # the precision preset it recorded; None in summaries from before it was recorded


def _recorded(calibration: Path) -> CalibrationRecord:
    recorded, where = read_recorded_preprocessing(calibration)  # DataError for an unreadable summary
    preset = None
    if where:
        doc = json.loads(Path(where).read_text(encoding="utf-8"))
        policy = doc.get("precision") if isinstance(doc, dict) else None
        if isinstance(policy, dict) and isinstance(policy.get("preset"), str):
            preset = policy["preset"]
    return CalibrationRecord(recorded, where, preset)


def _model_input(model: Path) -> tuple[int | str, ...]:
    infos = graph_inputs(load_model(model))
    return tuple(infos[0].shape) if len(infos) == 1 else ()
