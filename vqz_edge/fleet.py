"""The fleet report (``vqz-edge fleet report``): one view of a fleet from the per-host records the provisioning playbooks collect (tools/provision/): which
device runs which bundle version, what the last rollout did on it, which hosts failed and why, which were not
reached because the rollout stopped at a failed batch.

Inputs, any mix of:

* a report folder written by the playbooks: ``run.json`` (``vqz-edge-fleet-run/1``: run id, operation, the hosts
  of the play) and ``hosts/<host>.json`` (``vqz-edge-fleet-host/1``: the install/rollback JSON, or the failure,
  and the host's ``vqz-edge status --json``);
* single host records, or plain ``vqz-edge status --json`` output saved as ``<host>.json``.

Per host ``result``: ``installed`` / ``rebuilt`` / ``unchanged`` / ``rolled-back`` (the operation succeeded;
``unchanged`` = the install was a no-op), ``failed`` (with the reason), ``not-reached`` (in the run, no record
from it, and a host of the run failed: the rollout stopped before its batch), ``pending`` (in the run, no record
from it yet and no failure: its batch has not run -- a report refreshed mid-rollout), ``status-only`` (a bare
status file). Records from an older run than the
newest ``run.json`` are kept with ``stale: true``. Exit code 0 when no host failed, none is unhealthy and every
host of the run has its result; 1 otherwise.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .errors import InputError

HOST_SCHEMA = "vqz-edge-fleet-host/1"
RUN_SCHEMA = "vqz-edge-fleet-run/1"
REPORT_SCHEMA = "vqz-edge-fleet-report/1"
_ACTION_RESULT = {"installed": "installed", "rebuilt": "rebuilt", "noop": "unchanged", "rolled_back": "rolled-back"}


@dataclass
class Inputs:
    runs: list[dict[str, Any]] = field(default_factory=list)
    hosts: dict[str, dict[str, Any]] = field(default_factory=dict)
    sources: list[str] = field(default_factory=list)


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise InputError(f"fleet report input {path} does not exist") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise InputError(f"fleet report input {path} is not readable JSON: {exc}") from exc


def _add(inputs: Inputs, path: Path, doc: Any, *, strict: bool) -> None:
    if not isinstance(doc, dict):
        if strict:
            raise InputError(f"{path}: expected a JSON object, got {type(doc).__name__}")
        return
    schema = doc.get("schema")
    if schema == RUN_SCHEMA:
        inputs.runs.append(doc)
    elif schema == HOST_SCHEMA:
        host = str(doc.get("host") or path.stem)
        old = inputs.hosts.get(host)
        if old is None or str(doc.get("run_id") or "") >= str(old.get("run_id") or ""):
            inputs.hosts[host] = doc
    elif "root" in doc and "current" in doc and "history" in doc:  # plain `vqz-edge status --json`
        inputs.hosts.setdefault(path.stem, {"schema": HOST_SCHEMA, "host": path.stem, "operation": None,
                                            "status": doc, "status_rc": 0 if doc.get("healthy") else 1})
    elif schema == REPORT_SCHEMA:
        if strict:
            raise InputError(f"{path} is a fleet report (output of this command), not an input",
                             hint="pass the report folder or the per-host records it was made from")
        return
    else:
        if strict:
            raise InputError(
                f"{path}: not a fleet host record ({HOST_SCHEMA}), run record ({RUN_SCHEMA}) or `vqz-edge status "
                f"--json` output (keys: {sorted(doc)[:8]})",
            )
        return
    inputs.sources.append(str(path))


def collect(paths: Iterable[Path]) -> Inputs:
    """Read report folders (``run.json``, ``hosts/*.json``, ``*.json``) and single JSON files."""
    inputs = Inputs()
    for p in paths:
        if p.is_dir():
            files = sorted({*p.glob("*.json"), *p.glob("hosts/*.json")})
            for f in files:
                _add(inputs, f, _read_json(f), strict=False)
        elif p.is_file():
            _add(inputs, p, _read_json(p), strict=True)
        else:
            raise InputError(f"fleet report input {p} does not exist",
                             hint="pass the playbooks' report folder (vqz_report_dir) or host JSON files")
    if not inputs.hosts and not inputs.runs:
        raise InputError(f"no fleet records found in {', '.join(str(p) for p in paths)}",
                         hint="run tools/provision/deploy.yml first; it writes <vqz_report_dir>/hosts/<host>.json")
    return inputs


_STOPPED = "the rollout stopped before this host's batch (a host of an earlier batch failed)"
_PENDING = "no result from this run yet (its batch has not run)"


def _host_row(name: str, rec: dict[str, Any] | None, run: dict[str, Any] | None, run_failed: bool) -> dict[str, Any]:
    run_id = run.get("run_id") if run else None
    missing = ("not-reached", _STOPPED) if run_failed else ("pending", _PENDING)
    if rec is None:
        return {"host": name, "result": missing[0], "stale": False, "run_id": None, "target": None,
                "operation": run.get("operation") if run else None, "bundle": None, "changed": False,
                "current": None, "bundle_version": None, "backend": None, "device_key": None, "healthy": None,
                "reason": missing[1], "hint": None, "last_operation": None}
    stale = bool(run_id and rec.get("run_id") != run_id)
    in_run = bool(run and name in (run.get("hosts") or []))
    status = rec.get("status") if isinstance(rec.get("status"), dict) else None
    cur = (status or {}).get("current") if status and "error" not in status else None
    result_doc = rec.get("result") if isinstance(rec.get("result"), dict) else None
    failure = rec.get("failure") if isinstance(rec.get("failure"), dict) else None
    reason = hint = None
    if stale and in_run:  # in this run, but its record is from an earlier one
        result = missing[0]
        reason = f"{missing[1]}; last known state from run {rec.get('run_id') or '?'}"
    elif rec.get("operation") is None:
        result = "status-only"
    elif failure or rec.get("ok") is False:
        result = "failed"
        reason = (failure or {}).get("reason") or (result_doc or {}).get("error") or "failed"
        hint = (failure or {}).get("hint") or (result_doc or {}).get("hint") or None
    elif rec.get("skipped"):
        result = "unchanged"
    else:
        action = (result_doc or {}).get("action")
        result = _ACTION_RESULT.get(str(action), str(action) if action else "unknown")
    if status and "error" in status:
        reason = reason or f"status: {status['error']}"
    last = (status or {}).get("last_operation") if status else None
    healthy = (status or {}).get("healthy") if status and "error" not in status else False
    return {
        "host": name,
        "result": result,
        "stale": stale and not in_run,
        "run_id": rec.get("run_id"),
        "target": rec.get("target") or (cur or {}).get("target"),
        "operation": rec.get("operation"),
        "bundle": rec.get("bundle"),
        "changed": bool(rec.get("changed")) and not stale,  # only what this run changed
        "current": (cur or {}).get("bundle_id"),
        "bundle_version": (cur or {}).get("bundle_version"),
        "backend": (cur or {}).get("backend"),
        "device_key": (cur or {}).get("device_key"),
        "healthy": healthy,
        "reason": reason,
        "hint": hint,
        "last_operation": None if not last else {k: last.get(k) for k in ("kind", "result", "bundle_id", "reason")},
    }


def build_report(inputs: Inputs) -> dict[str, Any]:
    """The fleet report: one row per host, a summary, and ``ok``."""
    run = max(inputs.runs, key=lambda r: str(r.get("run_id") or "")) if inputs.runs else None
    names = list(dict.fromkeys([*(run.get("hosts") or [] if run else []), *sorted(inputs.hosts)]))
    run_id = run.get("run_id") if run else None
    run_failed = any(
        rec.get("run_id") == run_id and (rec.get("failure") or rec.get("ok") is False) for rec in inputs.hosts.values()
    ) if run else False
    rows = [_host_row(n, inputs.hosts.get(n), run, run_failed) for n in names]
    in_run = set(run.get("hosts") or []) if run else {r["host"] for r in rows}
    by_result = Counter(r["result"] for r in rows if r["host"] in in_run and not r["stale"])
    versions: dict[str, list[str]] = {}
    for r in rows:
        versions.setdefault(r["current"] or "(nothing installed)", []).append(r["host"])
    failed = [r["host"] for r in rows if r["result"] == "failed" and not r["stale"]]
    not_reached = [r["host"] for r in rows if r["result"] == "not-reached"]
    pending = [r["host"] for r in rows if r["result"] == "pending"]
    unhealthy = [r["host"] for r in rows if r["healthy"] is False and r["result"] not in ("not-reached", "pending")]
    return {
        "schema": REPORT_SCHEMA,
        "run_id": run.get("run_id") if run else None,
        "operation": run.get("operation") if run else None,
        "hosts": rows,
        "summary": {
            "hosts": len(rows),
            "in_run": sorted(in_run),
            "by_result": dict(sorted(by_result.items())),
            "changed": sorted(r["host"] for r in rows if r["changed"] and not r["stale"]),
            "failed": failed,
            "not_reached": not_reached,
            "pending": pending,
            "unhealthy": unhealthy,
            "current_bundles": {k: sorted(v) for k, v in sorted(versions.items())},
        },
        "ok": not failed and not not_reached and not pending and not unhealthy,
        "sources": sorted(inputs.sources),
    }


def _cell(v: Any) -> str:
    return "-" if v is None or v == "" else str(v)


def format_table(report: dict[str, Any]) -> list[str]:
    """The report as text lines: one row per host, then the failures with their reasons, then a summary."""
    head = ("HOST", "TARGET", "RESULT", "CURRENT BUNDLE", "VER", "BACKEND", "HEALTHY")
    rows = []
    for r in report["hosts"]:
        result = r["result"] + (" (stale)" if r["stale"] else "")
        healthy = {True: "yes", False: "NO", None: "-"}[r["healthy"]]
        rows.append((r["host"], _cell(r["target"]), result, _cell(r["current"]), _cell(r["bundle_version"]),
                     _cell(r["backend"]), healthy))
    widths = [max(len(h), *(len(row[i]) for row in rows)) if rows else len(h) for i, h in enumerate(head)]
    lines = []
    if report["run_id"]:
        lines.append(f"fleet run {report['run_id']} ({report['operation']})")
    lines.append("  ".join(h.ljust(w) for h, w in zip(head, widths)).rstrip())
    lines += ["  ".join(c.ljust(w) for c, w in zip(row, widths)).rstrip() for row in rows]
    for r in report["hosts"]:
        if r["reason"]:
            lines.append(f"  {r['host']}: {r['result']}: {r['reason']}" + (f" (hint: {r['hint']})" if r["hint"] else ""))
    s = report["summary"]
    counts = ", ".join(f"{n} {k}" for k, n in s["by_result"].items()) or "no results"
    lines.append(f"{s['hosts']} host(s), {len(s['in_run'])} in this run: {counts}; changed: {len(s['changed'])}")
    lines.append("current bundles:")
    for bundle, hosts in s["current_bundles"].items():
        lines.append(f"  {bundle}: {', '.join(hosts)}")
    problems = [f"{k} {', '.join(s[k])}" for k in ("failed", "not_reached", "pending", "unhealthy") if s[k]]
    lines.append("fleet OK" if report["ok"] else "fleet NOT OK: " + "; ".join(problems))
    return lines
