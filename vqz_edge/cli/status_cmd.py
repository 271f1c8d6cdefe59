"""vqz-edge status --root DIR [--json]"""

from __future__ import annotations

import argparse
from typing import Any

from ..bundle.install import status
from . import COMMANDS, emit_json, options


def register(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    from pathlib import Path

    p = sub.add_parser(
        "status",
        help=COMMANDS["status"].summary,
        description="Report the current release, the history, the kept releases and the last operation from the "
        "install root's journal -- including an operation that was interrupted (power loss, kill -9) and at which "
        "stage -- and hash every file of the current release. Read-only. Exit code 0 when current points to an "
        "intact release, 1 otherwise (install the same bundle again to repair a damaged one).",
    )
    p.add_argument("--root", required=True, type=Path, metavar="DIR", help="install root")
    p.add_argument("--no-verify", action="store_true",
                   help="do not hash the current release's files (by default every kept bundle file and every served "
                   "file is checked against the hashes recorded at install; a mismatch is reported as damaged)")
    options.add_common(p)
    p.set_defaults(func=run)


def _op_line(op: dict[str, Any]) -> str:
    text = f"{op['kind']} {op.get('bundle_id') or ''} -> {op['result']}".replace("  ", " ")
    if op["result"] == "failed":
        text += f": {op.get('reason')}"
    if op["result"] == "interrupted":
        text += f" after stage '{op['last_stage']}': {op.get('explanation')}"
        if not op.get("switched"):
            text += " (cleaned up)" if op.get("recovered") else " (the next install/rollback cleans up)"
    return text


def run(args: argparse.Namespace) -> int:
    st = status(args.root, verify=not args.no_verify)
    if args.json:
        emit_json(st)
        return 0 if st["healthy"] else 1
    cur = st["current"]
    if cur is None:
        print(f"{st['root']}: nothing installed" + (" (current is a dangling link!)" if st["current_link_dangling"] else ""))
    else:
        smoke = cur.get("smoke") or {}
        print(f"{st['root']}: current = {cur['bundle_id']} (version {cur['bundle_version']}, {cur['backend']}, "
              f"{cur['device_key']})")
        integ = st["integrity"]
        if not integ["checked"]:
            word = "healthy (files NOT verified)" if st["healthy"] else "ARTIFACT MISSING"
        elif integ["problems"]:
            word = f"DAMAGED: {'; '.join(integ['problems'])}"
        else:
            word = f"healthy ({integ['files']} files match their recorded sha256)" if st["healthy"] else "ARTIFACT MISSING"
        print(f"  serving {cur['served']}; smoke min cosine {smoke.get('min_cosine')} at install; {word}")
        if integ["problems"]:
            print("  repair: install the same bundle again (vqz-edge install BUNDLE --root ...) or run "
                  "'vqz-edge install --root ...' to rebuild from the kept bundle")
        for note in integ["notes"]:
            print(f"  note: {note}")
    print(f"  history: {' -> '.join(e['bundle_id'] for e in st['history']) or '-'}; "
          f"highest bundle version {st['highest_bundle_version']}")
    if not st["state_consistent"]:
        print("  note: state.json lags behind current (an interrupted operation); the next install/rollback completes it")
    if st["last_operation"]:
        print(f"  last operation: {_op_line(st['last_operation'])}")
    li = st["last_interrupted"]
    if li and (not st["last_operation"] or li["op_id"] != st["last_operation"]["op_id"]):
        print(f"  last interrupted: {_op_line(li)}")
    return 0 if st["healthy"] else 1
