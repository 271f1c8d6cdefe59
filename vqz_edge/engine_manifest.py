"""The manifest written beside every engine, and the idempotence check. Pure Python.

Layout: ``engines/<model>/<target>/<trt-version>/{model.engine, manifest.json, timing.cache}``.
The runtime reads the manifest before it deserialises the engine (hash, TensorRT version, GPU)::

    {"schema": 1, "vqz_edge_version": "0.1.0", "model": "mobilenet_v2", "target": "orin-nx-16gb",
     "engine": {"file": "model.engine", "sha256": "<hex>", "bytes": 123},
     "tensorrt_version": "10.3.0", "gpu": {"name": "Orin", "compute_capability": "8.7", "integrated": true},
     "jetpack": "6.2" | null, "l4t": "36.4.3" | null, "mode": "implicit" | "explicit" | "fp16",
     "inputs": {"onnx_sha256": "...", "cache_sha256": "..." | null, "spec_sha256": "...", "plan_sha256": "..." | null},
     "io": [{"name": "input", "mode": "input", "dtype": "float32", "shape": [-1, 3, 224, 224],
             "profile_min": [1, 3, 224, 224], "profile_opt": [1, 3, 224, 224], "profile_max": [8, 3, 224, 224]}],
     "device_memory_bytes": [<per optimisation profile>],
     "layers": [{"name": "...", "precision": "int8", "planned": "int8"}],
     "build": {"seconds": 12.3, "host": "...", "built_at": "...", "key": "<idempotence key>", ...}}
"""

from __future__ import annotations

import datetime as _dt
import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from . import __version__
from .fsutil import atomic_path, canonical_json, sha256_bytes, sha256_file

SCHEMA = 1
ENGINE_FILE = "model.engine"
MANIFEST_FILE = "manifest.json"
TIMING_CACHE_FILE = "timing.cache"
MODES = ("implicit", "explicit", "fp16")


def engine_dir(out_root: Path, model: str, target: str, trt_version: str) -> Path:
    return Path(out_root) / model / target / trt_version


def utc_now() -> str:
    return _dt.datetime.now(_dt.timezone.utc).replace(microsecond=0).isoformat()


def build_manifest(
    *, model: str, target: str, engine: bytes, tensorrt_version: str, gpu: Mapping[str, Any], l4t: str | None,
    jetpack: str | None, mode: str, inputs: Mapping[str, str | None], io: Sequence[Mapping[str, Any]],
    device_memory_bytes: Sequence[int], layers: Sequence[Mapping[str, Any]], build: Mapping[str, Any],
) -> dict[str, Any]:
    """The manifest dict (schema 1). ``build`` must hold seconds, host, built_at and key."""
    if mode not in MODES:
        raise ValueError(f"manifest mode {mode!r} not in {MODES}")
    for key in ("onnx_sha256", "cache_sha256", "spec_sha256", "plan_sha256"):
        if key not in inputs:
            raise ValueError(f"manifest inputs lack {key!r}")
    for key in ("seconds", "host", "built_at", "key"):
        if key not in build:
            raise ValueError(f"manifest build info lacks {key!r}")
    return {
        "schema": SCHEMA,
        "vqz_edge_version": __version__,
        "model": model,
        "target": target,
        "engine": {"file": ENGINE_FILE, "sha256": sha256_bytes(engine), "bytes": len(engine)},
        "tensorrt_version": tensorrt_version,
        "gpu": {"name": gpu.get("name"), "compute_capability": gpu.get("compute_capability"),
                "integrated": gpu.get("integrated")},
        "jetpack": jetpack,
        "l4t": l4t,
        "mode": mode,
        "inputs": {k: inputs[k] for k in ("onnx_sha256", "cache_sha256", "spec_sha256", "plan_sha256")},
        "io": [dict(x) for x in io],
        "device_memory_bytes": [int(x) for x in device_memory_bytes],
        "layers": [dict(x) for x in layers],
        "build": dict(build),
    }


def write_engine_and_manifest(directory: Path, engine: bytes, manifest: Mapping[str, Any]) -> None:
    """Write both atomically. Both temporary files are complete before anything is renamed; the engine
    is renamed first, then the manifest, so a manifest never describes an engine that is not there
    (a crash in between leaves a manifest whose sha256 does not match: the runtime refuses, the next
    build rebuilds). On any error nothing is replaced."""
    if manifest.get("engine", {}).get("sha256") != sha256_bytes(engine):
        raise ValueError("manifest engine.sha256 does not match the engine bytes")
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    with atomic_path(directory / MANIFEST_FILE) as manifest_tmp, atomic_path(directory / ENGINE_FILE) as engine_tmp:
        engine_tmp.write_bytes(engine)
        manifest_tmp.write_text(canonical_json(manifest), encoding="utf-8")


def read_manifest(path: Path) -> dict[str, Any] | None:
    """The manifest as a dict, or None when missing or unreadable."""
    try:
        doc = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return doc if isinstance(doc, dict) else None


def up_to_date(directory: Path, key: str) -> tuple[bool, str]:
    """Is there a good engine built from the same inputs with the same TensorRT? (True, why) / (False, why)."""
    directory = Path(directory)
    manifest = read_manifest(directory / MANIFEST_FILE)
    if manifest is None:
        return False, "no readable manifest.json"
    if manifest.get("schema") != SCHEMA:
        return False, f"manifest schema {manifest.get('schema')!r} is not {SCHEMA}"
    if manifest.get("build", {}).get("key") != key:
        return False, "inputs, options or TensorRT version changed since the last build"
    engine = directory / str(manifest.get("engine", {}).get("file", ENGINE_FILE))
    if not engine.is_file():
        return False, f"{engine.name} is missing"
    if engine.stat().st_size != manifest["engine"].get("bytes") or sha256_file(engine) != manifest["engine"].get("sha256"):
        return False, f"{engine.name} does not match the manifest's size/sha256"
    return True, "same inputs and TensorRT version as the existing engine"
