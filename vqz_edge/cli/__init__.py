"""The ``vqz-edge`` command line. Every command lives in its own module, named in :data:`COMMANDS`.

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
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from types import ModuleType
from typing import Any

from .. import __version__
from ..errors import DependencyError, VerificationError, VqzError, storage_error
from ..log import configure


@dataclass(frozen=True)
class Command:
    """One row of the dispatch table: ``module`` (under vqz_edge/cli/) has ``register(subparsers)``, which adds the
    command's parser with ``summary`` as its help and sets ``func``; ``workstation``: the command needs Python 3.10+
    (torch export, calibration, sensitivity, VLMs, reports), every other one is the device side and runs on JetPack
    5's Python 3.8 too."""

    module: str
    summary: str
    workstation: bool


# The dispatch table, in --help order. Only the module of the command being run is imported (importlib, by the
# name here), so `vqz-edge install` on a Jetson loads the device side alone -- never torch, numba or the
# workstation stages -- and a command module imports what it needs at its top. `vqz-edge --help` lists every
# command from the summaries here without importing any. A module that fails to import is an error, never skipped.
COMMANDS: dict[str, Command] = {
    "demo": Command("demo_cmd", "run the pipeline on the bundled MobileNetV2 + real photos", workstation=True),
    "data": Command("data_cmd", "photos -> preprocessed .npy arrays, split by source photo", workstation=True),
    "export": Command("export_cmd", "torch or ONNX -> BatchNorm-free ONNX, verified against the source", workstation=True),
    "calibrate": Command("calibrate_cmd", "INT8 calibration on the CPU: TensorRT cache + Q/DQ ONNX", workstation=True),
    "evaluate": Command("evaluate_cmd", "fidelity of a candidate (e.g. INT8 Q/DQ) vs a reference on held-out data", workstation=True),
    "plan": Command("plan_cmd", "resolve the spec's precision policy into a per-layer plan", workstation=True),
    "sensitivity": Command("sensitivity_cmd", "layer-wise INT8 sensitivity, calibration diagnostics, automatic mixed-precision plan", workstation=True),
    "build": Command("build_cmd", "ONNX + calibration + precision plan -> TensorRT engine for a target (run on the device)", workstation=False),
    "targets": Command("targets_cmd", "list deployment targets (Jetson modules) and the JetPack version table", workstation=False),
    "check-memory": Command("check_memory_cmd", "will it fit? memory breakdown and verdict per Jetson target", workstation=False),
    "run": Command("run_cmd", "run an engine or ONNX model on images: top-k labels for classifiers, raw outputs otherwise", workstation=False),
    "bench": Command("bench_cmd", "latency p50/p90/p99, throughput and peak memory of an engine or ONNX model", workstation=False),
    "vlm": Command("vlm_cmd", "vision-language models: memory plan, vision export + 4-bit LLM config, quantization audit", workstation=True),
    "doctor": Command("doctor_cmd", "self-test: run a real NF4 kernel (quantize + matmul) on the GPU before reporting 4-bit available", workstation=False),
    "keys": Command("keys_cmd", "Ed25519 signing keys for bundles", workstation=False),
    "bundle": Command("bundle_cmd", "x86 -> device: make a deterministic signed bundle (or 'bundle verify' one)", workstation=False),
    "install": Command("install_cmd", "device: verify a bundle, build, verify the build, switch 'current' atomically", workstation=False),
    "rollback": Command("rollback_cmd", "device: switch 'current' back to the previous verified release", workstation=False),
    "status": Command("status_cmd", "device: what is installed, what happened last (also after a crash)", workstation=False),
    "fleet": Command("fleet_cmd", "fleet view: which devices run which bundle, what failed and why (from the provisioning records)", workstation=True),
}


def command_module(name: str) -> ModuleType:
    """The module that implements command ``name`` (its import errors propagate)."""
    return importlib.import_module(f"{__name__}.{COMMANDS[name].module}")


def build_parser(only: Iterable[str] | None = None) -> argparse.ArgumentParser:
    """The parser; ``only``: the commands whose modules are imported and registered in full (default: all of
    them), every other command is listed with its summary and nothing else."""
    full = set(COMMANDS) if only is None else set(only)
    parser = argparse.ArgumentParser(
        prog="vqz-edge",
        description="Edge deployment build system for NVIDIA Jetson Orin.",
    )
    parser.add_argument("--version", action="version", version=f"vqz-edge {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    for name, cmd in COMMANDS.items():
        if name in full:
            command_module(name).register(sub)
        else:
            sub.add_parser(name, help=cmd.summary, add_help=False)
    return parser


def _command_in(argv: Sequence[str]) -> str | None:
    """The command named on the command line (the first word that is not an option), if it is one."""
    word = next((a for a in argv if not a.startswith("-")), None)
    return word if word in COMMANDS else None


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


def _workstation_only(name: str) -> DependencyError:
    return DependencyError(
        f"'vqz-edge {name}' is a workstation command and needs Python 3.10 or newer; this is Python "
        f"{sys.version_info.major}.{sys.version_info.minor}",
        hint="run it on the x86 workstation; the device commands ("
        + ", ".join(n for n, c in COMMANDS.items() if not c.workstation) + ") run on Python 3.8",
    )


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    name = _command_in(argv)
    if name is not None and COMMANDS[name].workstation and sys.version_info < (3, 10):
        # refused before its module is imported: the workstation stages are not Python 3.8 code
        return _fail(argparse.Namespace(command=name, json="--json" in argv), _workstation_only(name))
    args = build_parser(only=[name] if name else []).parse_args(argv)
    configure(args.verbose, quiet=args.quiet)
    try:
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
