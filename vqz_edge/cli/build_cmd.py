"""vqz-edge build spec.toml --target T"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from ..errors import InputError
from ..progress import tqdm_factory
from ..spec import load_spec
from ..targets import get_target
from ..trt.builder import BuildRequest, run_build
from ..trt.compat import tensorrt_available
from ..vocab import CLI_BUILD_MODES
from . import COMMANDS, emit_json, options


def register(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    p = sub.add_parser(
        "build",
        help=COMMANDS["build"].summary,
        description="Build a TensorRT engine under engines/<model>/<target>/<trt-version>/ with a manifest. "
        "Needs TensorRT and the target GPU: run it on the Jetson or in the Jetson container. A build with "
        "the same inputs and TensorRT version is skipped unless --force.",
    )
    p.add_argument("spec", type=Path, metavar="SPEC", help="build spec (TOML)")
    t = p.add_argument_group("target")
    t.add_argument("--target", help="target name (vqz-edge targets); default: the spec's only build.targets entry")
    t.add_argument("--dla-core", type=options.nonnegative_int, metavar="N", help="run on DLA core N, layers DLA cannot run fall back to the GPU")
    t.add_argument("--allow-gpu-mismatch", action="store_true",
                   help="build although this GPU is not the target's (the engine only runs on GPUs like this one)")
    m = p.add_argument_group("precision")
    m.add_argument("--mode", choices=CLI_BUILD_MODES, default="auto",
                   help="explicit: Q/DQ model; implicit: IInt8EntropyCalibrator2 + cache (TensorRT <= 10); "
                   "fp16: no INT8; auto (default): explicit if model.qdq.onnx exists, else implicit")
    m.add_argument("--precision-constraints", choices=("obey", "prefer"), default="obey",
                   help="layers the plan keeps above INT8: obey (build fails if impossible, default) or prefer "
                   "(TensorRT may override; overridden layers are reported)")
    m.add_argument("--plan", type=Path, help="resolved precision plan (default: <calibration-dir>/plan.json)")
    io = p.add_argument_group("files")
    io.add_argument("--calibration-dir", type=Path, help="artifacts of `vqz-edge calibrate` (default: calibration/<model>)")
    io.add_argument("--out-root", type=Path, default=Path("engines"), help="engines root (default: engines)")
    io.add_argument("--targets-file", type=Path, action="append", default=[], help="extra target definitions (TOML)")
    io.add_argument("--force", action="store_true", help="rebuild even if an engine from the same inputs exists")
    options.add_common(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    spec = load_spec(args.spec)
    name = args.target
    if name is None:
        if len(spec.build.targets) != 1:
            raise InputError(f"--target is required (the spec lists build.targets = {list(spec.build.targets)})")
        name = spec.build.targets[0]
    target = get_target(name, args.targets_file)
    req = BuildRequest(
        spec=spec, target=target, mode=args.mode, dla_core=args.dla_core, force=args.force, out_root=args.out_root,
        calibration_dir=args.calibration_dir, plan_path=args.plan, precision_constraints=args.precision_constraints,
        allow_gpu_mismatch=args.allow_gpu_mismatch,
    )
    quiet = args.quiet or args.json
    if not quiet and tensorrt_available():  # otherwise run_build says where to run
        print(f"vqz-edge build: {spec.model.name} for {target.name} (mode {args.mode}); a TensorRT build takes "
              "minutes on a Jetson, -v logs its phases", file=sys.stderr)
    outcome = run_build(req, progress=None if quiet else tqdm_factory)
    if args.json:
        emit_json(outcome.to_dict())
        return 0
    where = outcome.directory
    if outcome.status == "skipped":
        print(f"up to date: {where}/model.engine ({outcome.reason}; --force rebuilds)")
        return 0
    man = outcome.manifest or {}
    print(f"built {where}/model.engine: {spec.model.name} for {target.name}, TensorRT {outcome.tensorrt_version}, "
          f"mode {outcome.mode}, {man.get('engine', {}).get('bytes', 0) / 2**20:.1f} MiB, "
          f"{man.get('build', {}).get('seconds', 0):.0f}s")
    mem = man.get("device_memory_bytes") or []
    if mem:
        print(f"  activation memory per profile: {', '.join(f'{b / 2**20:.1f} MiB' for b in mem)}")
    if outcome.report is not None:
        summary = ", ".join(f"{k}: {v}" for k, v in sorted(outcome.report.summary().items()))
        print(f"  layer precisions (plan layers): {summary}")
        high = outcome.report.stayed_high
        if high:
            print(f"  {len(high)} layer(s) planned INT8 run in FP16/FP32: {', '.join(x.name for x in high[:5])}"
                  + (" ... (all in manifest.json build.stayed_high)" if len(high) > 5 else ""))
        for x in outcome.report.overridden:
            print(f"  planned {x.planned}, runs {x.actual}: {x.name}")
    fallback = man.get("build", {}).get("dla_fallback") or []
    if fallback:
        print(f"  {len(fallback)} layer(s) fall back from DLA to the GPU: {', '.join(fallback[:10])}"
              + (" ..." if len(fallback) > 10 else ""))
    for note in outcome.notes:
        print(f"  note: {note}")
    return 0
