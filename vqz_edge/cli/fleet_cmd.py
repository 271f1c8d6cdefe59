"""vqz-edge fleet report DIR_OR_JSON... [-o FLEET.json] [--json]: the report is built by :mod:`vqz_edge.fleet`."""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from pathlib import Path

from ..fleet import build_report, collect, format_table
from ..fsutil import atomic_write_json, check_output_path
from . import COMMANDS, emit_json, options


def register(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    p = sub.add_parser(
        "fleet",
        help=COMMANDS["fleet"].summary,
        description="Summarise the per-host records written by the provisioning playbooks (tools/provision/).",
    )
    fs = p.add_subparsers(dest="fleet_command", metavar="ACTION")
    fs.required = True
    r = fs.add_parser(
        "report",
        help="table + JSON from the playbooks' report folder or per-host JSON files",
        description="Read report folders (run.json, hosts/<host>.json) or host JSON files (playbook records or "
        "plain `vqz-edge status --json` output named <host>.json), print one row per host -- result of the last "
        "rollout, current bundle and version, backend, health -- with the reasons of failures, and write the "
        "report as JSON. Exit code 0 when every host of the run succeeded and is healthy, 1 otherwise.",
    )
    r.add_argument("inputs", nargs="+", type=Path, metavar="DIR_OR_JSON", help="report folder(s) or JSON file(s)")
    r.add_argument("-o", "--output", type=Path, metavar="FLEET.json", help="write the report JSON here (atomically)")
    options.add_common(r)
    r.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    inputs: Sequence[Path] = args.inputs
    if args.output is not None:
        check_output_path(args.output)
    report = build_report(collect(inputs))
    if args.output is not None:
        atomic_write_json(args.output, report)
    if args.json:
        emit_json(report)
    else:
        print("\n".join(format_table(report)))
        if args.output is not None:
            print(f"report written to {args.output}")
    return 0 if report["ok"] else 1
