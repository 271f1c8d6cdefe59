"""The ``vqz-edge`` command line. Every subcommand lives in its own module with ``register`` and ``run``.

Library errors (VqzError) become one clear message on stderr and the error's exit code; ``--json``
makes a command print exactly one JSON object on stdout.
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import sys
from collections.abc import Sequence
from types import ModuleType
from typing import Any

from .. import __version__
from ..errors import DependencyError, VqzError
from ..log import configure

# The workstation stages (torch export, calibration, sensitivity, VLMs, reports) need Python 3.10+; everything else
# is the device side and runs on JetPack 5's Python 3.8 as well.
WORKSTATION_COMMANDS = ("demo", "data", "export", "calibrate", "evaluate", "plan", "sensitivity", "vlm", "fleet")

# Each command is a module vqz_edge/cli/<name>_cmd.py with register(subparsers) and run(args).
# Listed in --help order; a module that does not exist yet is skipped.
COMMAND_MODULES = [
    "demo", "data", "export", "calibrate", "evaluate", "plan", "sensitivity", "build", "targets",
    "check_memory", "run", "bench", "vlm", "keys", "bundle", "install", "rollback", "status", "fleet",
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
    f.add_argument("--finetune-samples", type=int, default=4096, help="calibration samples, one pass (default 4096)")
    f.add_argument("--finetune-lr", type=float, default=1e-5, help="Adam step for weights (default 1e-5)")
    return f


def finetune_options(args: argparse.Namespace) -> Any:
    """FinetuneOptions from add_finetune_args' options, or None without --finetune (ValueError if invalid)."""
    if not args.finetune:
        return None
    from ..calib.finetune import FinetuneOptions

    return FinetuneOptions(samples=args.finetune_samples, lr=args.finetune_lr)


def emit_json(obj: Any) -> None:
    sys.stdout.write(json.dumps(obj, indent=2, sort_keys=True, default=str) + "\n")


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
        if getattr(args, "json", False):
            emit_json({"error": exc.message, "hint": exc.hint, "type": type(exc).__name__, "exit_code": exc.exit_code})
        print(f"vqz-edge {args.command}: error: {exc}", file=sys.stderr)
        return exc.exit_code
    except BrokenPipeError:  # e.g. piped into head: not an error
        sys.stdout = open(os.devnull, "w")  # noqa: SIM115 -- silence the flush at exit
        return 0
    except KeyboardInterrupt:
        print("vqz-edge: interrupted; nothing was written", file=sys.stderr)
        return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
