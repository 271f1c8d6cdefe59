"""vqz-edge check-memory (ENGINE_DIR | spec.toml | model.onnx) [--target T ...] [--live]"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from ..artifacts.engine_manifest import load_manifest
from ..device import read_live_memory
from ..errors import InputError
from ..memory import DEFAULT_MARGIN_FRACTION, MIB, check_budget
from ..memory.estimate import PRECISIONS, estimate_path, resident_item
from ..runtime.loader import artifact_kind, device_target, host_target
from ..spec import load_spec
from ..targets import resolve_targets
from . import COMMANDS, emit_json, options

EXIT_DOES_NOT_FIT = 7


def register(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    p = sub.add_parser(
        "check-memory",
        help=COMMANDS["check-memory"].summary,
        description="Break down what a model needs resident in a Jetson module's shared CPU/GPU RAM (OS reserve, "
        "CUDA context, TensorRT runtime, engine/weights, activations, I/O buffers, other resident models, margin) "
        "and say whether it fits, with the headroom. A built engine directory uses the sizes TensorRT measured; a "
        f"spec.toml or .onnx is estimated from the ONNX. Exit code 0: fits everywhere asked; {EXIT_DOES_NOT_FIT}: "
        "does not fit somewhere.",
    )
    p.add_argument("path", metavar="ENGINE_DIR|SPEC.toml|MODEL.onnx", type=Path)
    g = p.add_argument_group("target")
    g.add_argument("--target", "-t", action="append", default=[], metavar="NAME",
                   help="target(s) to check (repeatable, comma lists, or 'all'; default: the engine's target, the "
                   "spec's build.targets, else all)")
    options.add_targets_file(g)
    g.add_argument("--live", action="store_true",
                   help="use the memory free on this machine now (jtop on a Jetson, else /proc/meminfo) instead of the "
                   "catalog RAM minus the OS reserve")
    m = p.add_argument_group("model (estimates for spec/.onnx)")
    m.add_argument("--batch", type=options.positive_int, help="max batch to size activations and I/O for (default: spec max_shape, else 1)")
    m.add_argument("--precision", choices=PRECISIONS, default="auto",
                   help="weight/activation precision for the estimate (auto: Q/DQ or plan -> int8, else the spec's "
                   "default, else fp16)")
    m.add_argument("--resident", action="append", default=[], metavar="NAME=SIZE|PATH",
                   help="another model resident at the same time: 'detector=350MiB' or an engine dir / .onnx / spec "
                   "(repeatable)")
    b = p.add_argument_group("budget")
    b.add_argument("--os-reserve-mib", type=options.mib, help="override the OS + services reserve (MiB)")
    b.add_argument("--margin", type=options.float_range(0.0, 0.5, high_open=True), default=None, help="safety margin as a fraction of the capacity (default 0.05)")
    options.add_common(p)
    p.set_defaults(func=run)


def _default_targets(path: Path) -> list[str]:
    if path.suffix == ".toml":
        return list(load_spec(path).build.targets) or ["all"]
    if path.suffix != ".onnx" and artifact_kind(path) == "engine":
        t = load_manifest(path).target
        return [t] if t else ["all"]
    return ["all"]


def run(args: argparse.Namespace) -> int:
    if args.batch is not None and args.batch <= 0:
        raise InputError(f"--batch must be positive, got {args.batch}")
    margin = DEFAULT_MARGIN_FRACTION if args.margin is None else args.margin
    if not 0.0 <= margin < 0.5:
        raise InputError(f"--margin must be in [0, 0.5), got {margin}")
    est = estimate_path(args.path, batch=args.batch, precision=args.precision)
    resident = [resident_item(r) for r in args.resident]
    items = [*est.items, *resident]
    names = args.target or _default_targets(args.path)
    reserve = None if args.os_reserve_mib is None else int(args.os_reserve_mib * MIB)
    reports = []
    try:
        if args.live:
            live = read_live_memory()
            if args.target:
                targets = resolve_targets(names, args.targets_file)
                if len(targets) != 1:
                    raise InputError("--live checks this machine: give one --target (or none)")
                tgt = targets[0]
            elif est.kind == "engine":
                tgt = device_target(load_manifest(args.path), live.total_bytes)
            else:
                tgt = host_target(live.total_bytes)
            reports.append(check_budget(
                tgt, items, live_free_bytes=live.available_bytes, live_source=live.source, margin_fraction=margin,
                subject=est.subject, overhead=[] if tgt.compute_capability == "0.0" else None,
                trt_version=est.details.get("tensorrt_version"),
            ))
        else:
            for tgt in resolve_targets(names, args.targets_file):
                reports.append(check_budget(
                    tgt, items, os_reserve_bytes=reserve, margin_fraction=margin, subject=est.subject,
                    trt_version=est.details.get("tensorrt_version"),
                ))
    except ValueError as exc:
        raise InputError(str(exc)) from exc
    fits = all(r.fits for r in reports)
    if args.json:
        out: dict[str, Any] = {
            "path": str(args.path), "fits": fits, "estimate": est.to_dict(),
            "resident": [{"name": r.name, "bytes": r.bytes, "note": r.note} for r in resident],
            "reports": [r.to_dict() for r in reports],
        }
        emit_json(out)
        return 0 if fits else EXIT_DOES_NOT_FIT
    print(f"{est.subject}")
    for note in est.notes:
        print(f"  note: {note}")
    for r in reports:
        print()
        print(r.table())
    if len(reports) > 1:
        print()
        print(f"{'target':18} {'RAM MiB':>9} {'needs MiB':>10} {'headroom MiB':>13}  verdict")
        for r in reports:
            word = "DOES NOT FIT" if not r.fits else "fits (tight)" if r.tight else "fits"
            print(f"{r.target.name:18} {r.capacity_bytes / MIB:>9.0f} {r.required_bytes / MIB:>10.1f} "
                  f"{r.headroom_bytes / MIB:>13.1f}  {word}")
    return 0 if fits else EXIT_DOES_NOT_FIT
