"""The ``vqz-edge`` command line. Every subcommand lives in its own module with ``register`` and ``run``.

Library errors (VqzError) become one clear message on stderr and the error's exit code; ``--json``
makes a command print exactly one JSON object on stdout.
"""

from __future__ import annotations

import argparse
import importlib
import json
import math
import numbers
import os
import sys
from collections.abc import Sequence
from types import ModuleType
from typing import Any

from .. import __version__
from ..errors import DependencyError, VerificationError, VqzError, storage_error
from ..log import configure
from . import options

# The workstation stages (torch export, calibration, sensitivity, VLMs, reports) need Python 3.10+; everything else
# is the device side and runs on JetPack 5's Python 3.8 as well.
WORKSTATION_COMMANDS = ("demo", "data", "export", "calibrate", "evaluate", "plan", "sensitivity", "vlm", "fleet")

# Each command is a module vqz_edge/cli/<name>_cmd.py with register(subparsers) and run(args).
# Listed in --help order; a module that does not exist yet is skipped.
COMMAND_MODULES = [
    "demo", "data", "export", "calibrate", "evaluate", "plan", "sensitivity", "build", "targets",
    "check_memory", "run", "bench", "vlm", "doctor", "keys", "bundle", "install", "rollback", "status", "fleet",
]


def _command_modules() -> list[ModuleType]:
    mods = []
    for name in COMMAND_MODULES:
        full = f"{__name__}.{name}_cmd"
        try:
            mods.append(importlib.import_module(full))
        except ModuleNotFoundError as exc:
            if exc.name != full:
                raise
    return mods


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="vqz-edge",
        description="Edge deployment build system for NVIDIA Jetson Orin.",
    )
    parser.add_argument("--version", action="version", version=f"vqz-edge {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    for mod in _command_modules():
        mod.register(sub)
    return parser


def add_common(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("output")
    g.add_argument("--json", action="store_true", help="print one JSON object on stdout instead of text")
    g.add_argument("-v", "--verbose", action="count", default=0, help="more log output on stderr (-vv for debug)")
    g.add_argument("-q", "--quiet", action="store_true", help="only errors on stderr, no progress bars")


def add_finetune_args(p: argparse.ArgumentParser, title: str, when: str) -> argparse._ArgumentGroup:
    """The --finetune options shared by calibrate and sensitivity (``when``: what is fine-tuned); the group."""
    f = p.add_argument_group(title)
    f.add_argument("--finetune", action="store_true",
                   help=f"{when}, train the INT8 weights and activation ranges to reproduce the FP32 outputs on fresh "
                   "calibration crops (distillation, no labels; torch on the CPU, ~3.5 min per 4096 MobileNetV2 "
                   "samples on 2 cores); also writes model.finetuned.onnx and calibration.finetuned.cache")
    f.add_argument("--finetune-samples", type=options.positive_int, default=4096, help="calibration samples, one pass (default 4096)")
    f.add_argument("--finetune-lr", type=options.positive_float, default=1e-5, help="Adam step for weights (default 1e-5)")
    return f


def finetune_options(args: argparse.Namespace) -> Any:
    """FinetuneOptions from add_finetune_args' options, or None without --finetune (ValueError if invalid)."""
    if not args.finetune:
        return None
    from ..calib.finetune import FinetuneOptions

    return FinetuneOptions(samples=args.finetune_samples, lr=args.finetune_lr, max_memory=memory_budget(args))


def add_memory_arg(g: argparse._ArgumentGroup) -> None:
    """--max-memory, shared by the commands that calibrate, sweep or fine-tune."""
    g.add_argument("--max-memory", metavar="SIZE",
                   help="memory budget, e.g. 8G, 1500M (default: half of this host's RAM): calibration picks its "
                   "batch per run and, when one image of every tensor does not fit, several passes over the data; "
                   "sensitivity and fine-tuning shrink their batches to it")


def memory_budget(args: argparse.Namespace) -> int | None:
    """--max-memory in bytes, or None for the default (InputError for a bad size)."""
    from ..calib.memory import parse_memory

    text = getattr(args, "max_memory", None)
    return None if text is None else parse_memory(text)


def _nonfinite_at(obj: Any, where: str = "$") -> str | None:
    """The JSON path of the first NaN/Inf in ``obj`` (None when every number is finite)."""
    if isinstance(obj, dict):
        for k, v in obj.items():
            hit = _nonfinite_at(v, f"{where}.{k}")
            if hit:
                return hit
    elif isinstance(obj, (list, tuple)):
        for i, v in enumerate(obj):
            hit = _nonfinite_at(v, f"{where}[{i}]")
            if hit:
                return hit
    elif isinstance(obj, numbers.Real) and not isinstance(obj, int) and not math.isfinite(float(obj)):
        return f"{where} = {float(obj)}"
    return None


def emit_json(obj: Any) -> None:
    """Print ``obj`` as one strict JSON object: a NaN/Inf is refused (it is not JSON), never printed."""
    bad = _nonfinite_at(obj)
    if bad:
        raise VerificationError(f"the result holds a non-finite number ({bad}); refusing to report it as valid",
                                hint="an input, a weight or an output is NaN/Inf: check the model and the data")
    sys.stdout.write(json.dumps(obj, indent=2, sort_keys=True, default=str, allow_nan=False) + "\n")


def _fail(args: argparse.Namespace, exc: VqzError) -> int:
    if getattr(args, "json", False):
        emit_json({"error": exc.message, "hint": exc.hint, "type": type(exc).__name__, "exit_code": exc.exit_code})
    print(f"vqz-edge {args.command}: error: {exc}", file=sys.stderr)
    return exc.exit_code


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    configure(args.verbose, quiet=args.quiet)
    try:
        if args.command in WORKSTATION_COMMANDS and sys.version_info < (3, 10):
            raise DependencyError(
                f"'vqz-edge {args.command}' is a workstation command and needs Python 3.10 or newer; this is Python "
                f"{sys.version_info.major}.{sys.version_info.minor}",
                hint="run it on the x86 workstation; the device commands (build, run, bench, check-memory, targets, "
                "install, status, rollback, keys, bundle verify) run on Python 3.8",
            )
        return int(args.func(args) or 0)
    except VqzError as exc:
        return _fail(args, exc)
    except BrokenPipeError:  # e.g. piped into head: not an error
        sys.stdout = open(os.devnull, "w")  # noqa: SIM115 -- silence the flush at exit
        return 0
    except OSError as exc:  # disk full, read-only, a path of the wrong kind: a message, never a traceback
        return _fail(args, storage_error(exc, action="accessing"))
    except KeyboardInterrupt:
        print("vqz-edge: interrupted; no artifact was left half-written (a set interrupted while being switched "
              "into place is refused when it is read)", file=sys.stderr)
        return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
