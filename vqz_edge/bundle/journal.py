"""The install root's state journal: one JSON line per step, fsynced, append-only.

Every operation (install, refresh, rollback) appends ``start``, then one record per stage it completes,
then exactly one terminal record (``done``, ``noop`` or ``failed``). An operation whose last record is not
terminal was interrupted (power loss, kill -9); the next installer run appends ``recovered`` for it after
cleaning up, and ``vqz-edge status`` reports it either way. A torn last line (crash mid-write) is ignored.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..fsutil import FILE_MODE
from ..log import get_logger

_log = get_logger(__name__)

TERMINAL = ("done", "noop", "failed")

# What the last completed stage of an interrupted operation means for the device.
STAGE_MEANING = {
    "start": "stopped before the bundle was verified; nothing was changed",
    "verified": "stopped after verifying the bundle, before or while extracting it; current was not touched",
    "extracted": "stopped after extracting the bundle, before building; current was not touched",
    "building": "stopped while building the new release; current was not touched",
    "built": "stopped after building, before the new release was verified; current was not touched",
    "release_verified": "stopped after the new release was built and verified, before switching; "
                        "current still points to the previous release",
    "switched": "stopped right after switching current to the new, verified release",
}


def now_iso() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


@dataclass
class Operation:
    op_id: str
    kind: str
    records: list[dict[str, Any]] = field(default_factory=list)

    @property
    def stages(self) -> list[str]:
        return [str(r.get("stage")) for r in self.records]

    @property
    def terminal(self) -> str | None:
        for r in reversed(self.records):
            if r.get("stage") in TERMINAL:
                return str(r["stage"])
        return None

    @property
    def recovered(self) -> bool:
        return "recovered" in self.stages

    @property
    def last_stage(self) -> str:
        """The last stage the operation itself completed (``recovered`` is written by a later run)."""
        own = [s for s in self.stages if s != "recovered"]
        return own[-1] if own else "start"

    def field(self, key: str) -> Any:
        for r in reversed(self.records):
            if key in r:
                return r[key]
        return None

    def summary(self, current_release: str | None = None) -> dict[str, Any]:
        """``current_release``: where ROOT/current points now (relative), to tell whether an interrupted
        operation had already switched it."""
        result = self.terminal or "interrupted"
        out: dict[str, Any] = {
            "op_id": self.op_id,
            "kind": self.kind,
            "result": result,
            "last_stage": self.last_stage,
            "started": self.records[0].get("time") if self.records else None,
            "bundle_id": self.field("bundle_id"),
            "device_key": self.field("device_key"),
        }
        if result == "failed":
            out["reason"] = self.field("reason")
        if result == "interrupted":
            rec = next((r for r in self.records if r.get("stage") == "recovered"), None)
            if rec is not None:  # judge by where current pointed when the operation was recovered
                current_release = rec.get("current")
            stage = self.last_stage
            released = self.field("release")
            switched = stage == "switched" or (
                stage == "release_verified" and released is not None and released == current_release)
            if switched:
                stage = "switched"
            out["explanation"] = STAGE_MEANING.get(stage, f"stopped after stage {stage!r}")
            out["switched"] = switched
            if switched:
                out["explanation"] += ("; state.json was completed on recovery" if self.recovered
                                       else "; the next install/rollback completes state.json")
            out["recovered"] = self.recovered
            if rec is not None:
                out["recovery"] = {k: v for k, v in rec.items() if k not in ("op", "stage", "kind")}
        return out


class Journal:
    def __init__(self, path: Path) -> None:
        self.path = Path(path)

    def append(self, op: str, kind: str, stage: str, **fields: Any) -> None:
        rec = {"op": op, "kind": kind, "stage": stage, "time": now_iso(), "pid": os.getpid(), **fields}
        line = (json.dumps(rec, sort_keys=True, default=str) + "\n").encode("utf-8")
        fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, FILE_MODE)
        try:
            os.write(fd, line)
            os.fsync(fd)
        finally:
            os.close(fd)

    def records(self) -> Iterator[dict[str, Any]]:
        try:
            data = self.path.read_bytes()
        except FileNotFoundError:
            return
        for n, raw in enumerate(data.splitlines(), 1):
            try:
                rec = json.loads(raw.decode("utf-8"))
            except (UnicodeDecodeError, ValueError):
                _log.warning("%s:%d: ignoring a torn or unreadable journal line", self.path, n)
                continue
            if isinstance(rec, dict) and "op" in rec and "stage" in rec:
                yield rec

    def operations(self) -> list[Operation]:
        ops: dict[str, Operation] = {}
        for rec in self.records():
            op = ops.get(rec["op"])
            if op is None:
                op = ops[rec["op"]] = Operation(str(rec["op"]), str(rec.get("kind", "?")))
            op.records.append(rec)
        return list(ops.values())

    def interrupted(self) -> list[Operation]:
        """Operations with no terminal record that have not been recovered yet."""
        return [op for op in self.operations() if op.terminal is None and not op.recovered]
