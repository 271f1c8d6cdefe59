"""The ``vqz-edge`` command line. Every subcommand lives in its own module with ``register`` and ``run``.

Library errors (VqzError) become one clear message on stderr and the error's exit code; ``--json``
makes a command print exactly one JSON object on stdout.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from typing import Any

from .. import __version__
from ..errors import VqzError
from ..log import configure
from . import data_cmd, demo_cmd, export_cmd

COMMANDS = [export_cmd, data_cmd, demo_cmd]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="vqz-edge",
        description="Edge deployment build system for NVIDIA Jetson Orin.",
    )
    parser.add_argument("--version", action="version", version=f"vqz-edge {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    for mod in COMMANDS:
        mod.register(sub)
    return parser


def add_common(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("output")
    g.add_argument("--json", action="store_true", help="print one JSON object on stdout instead of text")
    g.add_argument("-v", "--verbose", action="count", default=0, help="more log output on stderr (-vv for debug)")
    g.add_argument("-q", "--quiet", action="store_true", help="only errors on stderr, no progress bars")


def emit_json(obj: Any) -> None:
    sys.stdout.write(json.dumps(obj, indent=2, sort_keys=True, default=str) + "\n")


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    configure(args.verbose, quiet=args.quiet)
    try:
        return int(args.func(args) or 0)
    except VqzError as exc:
        if getattr(args, "json", False):
            emit_json({"error": exc.message, "hint": exc.hint, "type": type(exc).__name__, "exit_code": exc.exit_code})
        print(f"vqz-edge {args.command}: error: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print("vqz-edge: interrupted; nothing was written", file=sys.stderr)
        return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
