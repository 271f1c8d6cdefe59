"""vqz-edge rollback --root DIR"""

from __future__ import annotations

import argparse

from ..bundle.install import rollback
from ..progress import tqdm_factory
from . import COMMANDS, emit_json, options
from .install_cmd import options_from_args, print_result


def register(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    from pathlib import Path

    p = sub.add_parser(
        "rollback",
        help=COMMANDS["rollback"].summary,
        description="Switch ROOT/current back to the previous release in the history, after re-checking its files "
        "and running its smoke test (rebuilding it first if it was built for another JetPack/TensorRT).",
    )
    p.add_argument("--root", required=True, type=Path, metavar="DIR", help="install root")
    options.add_device_options(p)
    options.add_common(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    res = rollback(args.root, options_from_args(args), progress=None if (args.quiet or args.json) else tqdm_factory)
    if args.json:
        emit_json(res.to_dict())
    else:
        print_result(res, "rollback")
    return 0
