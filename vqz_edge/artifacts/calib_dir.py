"""The calibration output directory as one set: written together, checked together.

``vqz-edge calibrate`` writes calibration.cache, model.qdq.onnx, histograms.npz, plan.json (and, after
fine-tuning, model.finetuned.onnx and calibration.finetuned.cache) through ``fsutil.write_set``: staged, fsynced,
renamed into place, summary.json last. summary.json's ``set`` records the sha256 of every other file of the run
and an id derived from them, so a reader can tell a complete set from a mixed one (a run killed during the
renames, a file copied in from another run or another model) and refuse it.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from ..errors import InputError
from ..fsutil import canonical_json, sha256_bytes, sha256_file, write_set
from ..vocab import CACHE_FILE, HISTOGRAMS_FILE, PLAN_FILE, QDQ_ONNX_FILE, SUMMARY_FILE

SUMMARY = SUMMARY_FILE
SET_FILES = {
    "cache": CACHE_FILE,
    "qdq": QDQ_ONNX_FILE,
    "histograms": HISTOGRAMS_FILE,
    "plan": PLAN_FILE,
    "finetuned": "model.finetuned.onnx",
    "finetuned_cache": "calibration.finetuned.cache",
}
RERUN_HINT = "run 'vqz-edge calibrate' again into this directory (or point at the directory the run wrote)"


def set_record(payloads: Mapping[str, bytes]) -> dict[str, Any]:
    """The ``set`` entry of summary.json for these files (name -> bytes): their sha256 and an id of the set."""
    files = {name: sha256_bytes(data) for name, data in sorted(payloads.items())}
    return {"id": sha256_bytes(canonical_json(files).encode())[:16], "files": files}


def write_calibration_set(outdir: Path, payloads: Mapping[str, bytes], summary: Mapping[str, Any]) -> dict[str, Path]:
    """Write ``payloads`` (keys of SET_FILES -> bytes) and summary.json (stamped with their ``set``) as one set."""
    named = {SET_FILES[key]: data for key, data in payloads.items()}
    doc = dict(summary)
    doc["set"] = set_record(named)
    paths = write_set(outdir, {**named, SUMMARY: canonical_json(doc).encode()}, last=SUMMARY, tag="calibrate",
                      drop=SET_FILES.values())
    by_name = {v: k for k, v in SET_FILES.items()}
    return {by_name.get(name, "summary"): path for name, path in paths.items()}


def read_summary(outdir: Path) -> dict[str, Any] | None:
    """summary.json of a calibration directory (None when there is none)."""
    path = Path(outdir) / SUMMARY
    if not path.is_file():
        return None
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
    except (ValueError, UnicodeDecodeError) as exc:
        raise InputError(f"{path} is not a readable calibration summary ({exc})", hint=RERUN_HINT) from exc
    if not isinstance(doc, dict):
        raise InputError(f"{path} is not a calibration summary (a JSON object)", hint=RERUN_HINT)
    return doc


def check_calibration_set(outdir: Path, used: Iterable[str] | None = None, *, model_sha256: str | None = None) -> str | None:
    """Refuse a mixed calibration directory. ``used``: the file names the caller reads (default: every file of the
    set). Each one present must be the file the summary's run wrote (same sha256); a set file present that the
    run did not write, or one it wrote that is gone, is refused too. ``model_sha256``: the FP32 model the caller
    pairs with the set; the summary must have been made for it. Returns the set id (None: no summary, or one
    written before sets were stamped: nothing to check against)."""
    outdir = Path(outdir)
    summary = read_summary(outdir)
    if summary is None:
        return None
    made_for = (summary.get("model") or {}).get("sha256")
    if model_sha256 and made_for and made_for != model_sha256:
        raise InputError(
            f"the calibration in {outdir} was made for another model (sha256 {str(made_for)[:12]}...), not for this "
            f"model.onnx ({model_sha256[:12]}...)", hint="calibrate this exact ONNX file first")
    record = summary.get("set")
    if not isinstance(record, dict) or not isinstance(record.get("files"), dict):
        return None
    files: dict[str, str] = {str(k): str(v) for k, v in record["files"].items()}
    names = list(SET_FILES.values()) if used is None else list(used)
    problems = []
    for name in names:
        path = outdir / name
        if name in files:
            if not path.is_file():
                problems.append(f"{name} is missing")
            elif sha256_file(path) != files[name]:
                problems.append(f"{name} is not the file this run wrote")
        elif name in SET_FILES.values() and path.is_file():
            problems.append(f"{name} was not written by this run")
    if problems:
        raise InputError(
            f"{outdir} holds a mixed calibration set (summary.json is run {record.get('id')}): " + "; ".join(problems),
            hint=f"a run was interrupted or files were copied in from elsewhere; {RERUN_HINT}",
        )
    return str(record.get("id"))


__all__ = ["SET_FILES", "SUMMARY", "check_calibration_set", "read_summary", "set_record", "write_calibration_set"]
