"""vqz-edge doctor: is 4-bit (bitsandbytes NF4) really usable on this machine? A real kernel decides."""

from __future__ import annotations

import argparse
import sys

from ..errors import DependencyError, DeviceRuntimeError
from ..nf4check import check_nf4
from . import COMMANDS, emit_json, options


def register(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    p = sub.add_parser(
        "doctor",
        help=COMMANDS["doctor"].summary,
        description="Quantize a weight to NF4 with bitsandbytes on the GPU, dequantize it, and run matmul_4bit with "
        "one and with four tokens against the dequantized reference. NF4 is reported available only when that ran "
        "and matched -- never judged from `import bitsandbytes` (on a Jetson the PyPI wheel imports and then fails "
        "at the first kernel). Without a GPU it says so and reports NF4 as not checked. Exit codes: 0 ok (or no "
        "GPU without --require-gpu), 3 no GPU / no torch / no bitsandbytes with --require-gpu, 9 the kernel failed.",
    )
    g = p.add_argument_group("checks")
    g.add_argument("--require-gpu", action="store_true",
                   help="fail (exit 3) unless NF4 ran on a GPU (use on the device and in its image's healthcheck)")
    g.add_argument("--cpu", action="store_true", help="also run the kernel check on bitsandbytes' CPU backend")
    options.add_common(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    import logging

    if not args.verbose:  # bitsandbytes warns at import that an optional CPU kernel package is absent (harmless)
        logging.getLogger("bitsandbytes.backends.cpu.ops").setLevel(logging.ERROR)
    status = check_nf4(cpu=args.cpu)
    kernel_failed = any(c.ran and not c.ok for c in status.checks)
    if args.json:
        emit_json(status.to_dict())
    else:
        print("vqz-edge doctor: 4-bit LLM backbone (bitsandbytes NF4)")
        print(f"  torch {status.torch_version or 'not installed'}, bitsandbytes {status.bitsandbytes_version or '-'}, "
              f"GPU: {status.gpu or 'none'}")
        for c in status.checks:
            print(f"  [{'ok' if c.ok else 'FAIL'}] {c.detail}")
        print(f"  {status.message}")
        if status.hint:
            print(f"  hint: {status.hint}")
    if kernel_failed:
        exc: Exception = DeviceRuntimeError(status.message, hint=status.hint)
        print(f"vqz-edge doctor: error: {exc}", file=sys.stderr)
        return DeviceRuntimeError.exit_code
    if args.require_gpu and not status.available:
        exc = DependencyError(status.message, hint=status.hint)
        print(f"vqz-edge doctor: error: {exc}", file=sys.stderr)
        return DependencyError.exit_code
    return 0
