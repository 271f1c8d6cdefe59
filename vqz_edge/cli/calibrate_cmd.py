"""vqz-edge calibrate MODEL.onnx --data DIR|FILE.npy|demo -o OUTDIR"""

from __future__ import annotations

import argparse
from pathlib import Path

from ..calib import CalibrationOptions, calibrate
from ..calib.memory import default_budget, fmt_bytes, host_memory_bytes, peak_rss
from ..errors import InputError
from ..progress import tqdm_factory
from ..spec import CalibrationSpec, load_spec
from ..targets import get_target
from ..vocab import CALIBRATION_METHODS, PRESETS
from . import COMMANDS, emit_json, options


def register(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    p = sub.add_parser(
        "calibrate",
        help=COMMANDS["calibrate"].summary,
        description="Collect per-tensor activation histograms with ONNX Runtime (batch by batch, constant memory), "
        "pick per-tensor thresholds (entropy = TensorRT EntropyCalibration2 semantics), and write a TensorRT "
        "calibration cache, an explicit-quantization Q/DQ ONNX, histograms and a summary.",
    )
    p.add_argument("model", type=Path, metavar="MODEL.onnx", help="FP32 ONNX (BatchNorm folded: vqz-edge export)")
    d = p.add_argument_group("data")
    d.add_argument("--data", help="folder of images, a preprocessed FILE.npy (N,C,H,W), or 'demo' (bundled photos)")
    d.add_argument("--num-images", type=options.positive_int, help="calibration samples to use (default 256)")
    d.add_argument("--batch-size", type=options.positive_int, help="calibration batch (default 8): its first batch sets every histogram's bin "
                   "width, as in NVIDIA's calibrators; ONNX Runtime runs it whole or in parts, as --max-memory allows")
    options.add_memory_arg(d)
    m = p.add_argument_group("method")
    m.add_argument("--method", choices=CALIBRATION_METHODS,
                   help="threshold per tensor (default entropy); auto = MSE for non-negative tensors, entropy for signed")
    m.add_argument("--percentile", type=options.float_range(50.0, 100.0, low_open=True), help="for --method percentile (default 99.99)")
    t = p.add_argument_group("target")
    t.add_argument("--trt-version", help="TensorRT version of the device, stamps the cache header (default 10.3.0)")
    t.add_argument("--target", help="a target from 'vqz-edge targets': its default JetPack's TensorRT version")
    pol = p.add_argument_group("precision policy")
    pol.add_argument("--preset", choices=PRESETS,
                     help="preset rules (default: the spec's, else cnn = final head FP32); none = every layer INT8")
    options.add_finetune_args(p, "quantization-aware fine-tuning", "after calibration")
    o = p.add_argument_group("spec and output")
    o.add_argument("--spec", type=Path, help="build spec (TOML): calibration defaults and precision rules")
    o.add_argument("-o", "--output", type=Path, help="output directory (default calibration/<model>/)")
    options.add_common(p)
    p.set_defaults(func=run)


def _trt_version(args: argparse.Namespace) -> str | None:
    if args.trt_version and args.target:
        raise InputError("give either --trt-version or --target, not both")
    if args.target:
        return str(get_target(args.target).default_trt_version)
    return str(args.trt_version) if args.trt_version else None


def default_outdir(model: Path, name: str | None) -> Path:
    if name:
        return Path("calibration") / name
    if model.parent.parent.name == "calibration":
        return model.parent
    return Path("calibration") / model.stem


def run(args: argparse.Namespace) -> int:
    spec = load_spec(args.spec) if args.spec else None
    cs = spec.calibration if spec else CalibrationSpec()
    data = args.data or (str(spec.resolve_path(cs.data)) if spec and cs.data != "demo" else cs.data if spec else None)
    if data is None:
        raise InputError("no calibration data: pass --data DIR|FILE.npy|demo (or a --spec with [calibration].data)")
    try:
        opts = CalibrationOptions(
            method=args.method or cs.method,
            percentile=args.percentile if args.percentile is not None else cs.percentile,
            num_images=cs.num_images if args.num_images is None else args.num_images,
            batch_size=cs.batch_size if args.batch_size is None else args.batch_size,
            trt_version=_trt_version(args) or "10.3.0",
            max_memory=options.memory_budget(args),
        )
        finetune = options.finetune_options(args)
    except ValueError as exc:
        raise InputError(str(exc)) from exc
    name = spec.model.name if spec else None
    outdir = args.output or default_outdir(args.model, name)
    result = calibrate(
        args.model, data, outdir, opts, rules=spec.precision.rules if spec else (), model_name=name,
        preset=args.preset or (spec.precision.preset if spec else "cnn"),
        default_precision=spec.precision.default if spec else "int8", finetune=finetune,
        spec_inputs=spec.inputs if spec else (),
        progress=None if args.quiet or args.json else tqdm_factory,
    )
    if args.json:
        doc = result.to_dict()
        doc["peak_rss_bytes"] = peak_rss()
        emit_json(doc)
        return 0
    s = result.seconds
    print(f"calibrated {args.model} on {result.data}: {result.images} samples, {len(result.amax)} tensors, "
          f"method {result.method} ({s['total']:.1f}s: statistics {s['statistics']:.1f}s, thresholds {s['thresholds']:.2f}s)")
    q = result.qdq
    print(f"  Q/DQ: {q.int8_layers} INT8 layers ({q.activations} activation tensors, {q.weights} weights per-channel), "
          f"{q.skipped_layers} kept above INT8 by the plan")
    print(f"  cache header TRT-{result.version_code}-EntropyCalibration2 (TensorRT {result.trt_version})")
    if result.memory is not None:
        default = "" if args.max_memory else (f" (default: half of this host's {fmt_bytes(host_memory_bytes())})"
                                              if result.memory.budget == default_budget() else "")
        print(f"  {result.memory.describe()}{default}; measured peak RSS {fmt_bytes(peak_rss())}")
    if "finetune+qdq" in s:
        print(f"  fine-tuned on {args.finetune_samples} samples in {s['finetune+qdq']:.0f}s: model.qdq.onnx holds the "
              "trained weights and ranges; the implicit path builds model.finetuned.onnx with calibration.finetuned.cache")
    for key, path in sorted(result.files.items()):
        print(f"  {key:10s} {path}")
    for rule in result.resolution.unmatched_rules:
        print(f"  WARNING: precision rule matched no layer: {rule}")
    for warning in result.warnings:
        print(f"  WARNING: {warning}")
    return 0
