"""The engine manifest (``manifest.json`` beside ``model.engine``): written by the builder, read and
verified by the runtime and the installer. One module reads and writes it. Pure Python: a wrong engine is
refused before TensorRT is even imported.

Layout: ``engines/<model>/<target>/<trt-version>/{model.engine, manifest.json, timing.cache}``. Schema 1::

    {"schema": 1, "vqz_edge_version": "0.1.0", "model": "mobilenet_v2", "target": "orin-nx-16gb",
     "engine": {"file": "model.engine", "sha256": "<hex>", "bytes": 123},
     "tensorrt_version": "10.3.0", "gpu": {"name": "Orin", "compute_capability": "8.7", "integrated": true},
     "jetpack": "6.2" | null, "l4t": "36.4.3" | null, "mode": "explicit" | "implicit" | "fp16",
     "inputs": {"onnx_sha256": "...", "cache_sha256": "..." | null, "spec_sha256": "...", "plan_sha256": "..." | null},
     "io": [{"name": "input", "mode": "input", "dtype": "float32", "shape": [-1, 3, 224, 224],
             "profile_min": [1, 3, 224, 224], "profile_opt": [1, 3, 224, 224], "profile_max": [8, 3, 224, 224]}],
     "device_memory_bytes": [<per optimisation profile>],
     "layers": [{"name": "...", "precision": "int8", "planned": "int8"}],
     "build": {"seconds": 12.3, "host": "...", "built_at": "...", "key": "<idempotence key>",
               "dla_core": null | 0 | 1, ...}}

A serialized TensorRT engine only runs on the TensorRT version and GPU (compute capability) that built it, and
an engine built for a DLA core must be deserialised for that core; every mismatch raises
:class:`EngineMismatchError`, which says to rebuild on this device.
"""

from __future__ import annotations

import datetime as _dt
import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .. import __version__
from ..errors import InputError, VerificationError
from ..fsutil import atomic_path, canonical_json, sha256_bytes, sha256_file
from ..versions import parse_trt_version
from ..vocab import BUILD_MODES, ENGINE_FILE, ENGINE_MANIFEST_FILE

MANIFEST_NAME = ENGINE_MANIFEST_FILE
MANIFEST_SCHEMA = 1
DTYPE_BYTES = {"float32": 4, "float16": 2, "bfloat16": 2, "int8": 1, "uint8": 1, "int32": 4, "int64": 8,
               "bool": 1, "float8": 1, "fp8": 1, "int4": 1, "float64": 8}  # names as vqz_edge.trt.builder writes them


class ManifestError(InputError):
    """manifest.json is missing, unreadable or does not follow the schema."""


class EngineMismatchError(VerificationError):
    """The engine does not belong on this device: hash, TensorRT version or compute capability differ."""


def _rebuild_hint(m: EngineManifest | None = None) -> str:
    where = f" --target {m.target}" if m is not None and m.target else ""
    return (f"rebuild the engine on this device (vqz-edge build SPEC{where}); serialized TensorRT engines are "
            "tied to the TensorRT version and GPU that built them")


@dataclass(frozen=True)
class IOTensor:
    name: str
    mode: str  # "input" | "output"
    dtype: str
    shape: tuple[int, ...]
    profile_min: tuple[int, ...] | None = None
    profile_opt: tuple[int, ...] | None = None
    profile_max: tuple[int, ...] | None = None

    @property
    def is_input(self) -> bool:
        return self.mode == "input"

    def max_shape(self, max_batch: int | None = None) -> tuple[int, ...]:
        """The largest shape this tensor takes: the profile max for inputs; for outputs the declared shape
        with a dynamic leading dim replaced by ``max_batch`` (other dynamic dims count as 1)."""
        if self.profile_max is not None:
            return self.profile_max
        dims = list(self.shape)
        if dims and dims[0] < 0 and max_batch:
            dims[0] = max_batch
        return tuple(d if d >= 0 else 1 for d in dims)

    def max_bytes(self, max_batch: int | None = None) -> int:
        return math.prod(self.max_shape(max_batch)) * DTYPE_BYTES.get(self.dtype, 4)


@dataclass(frozen=True)
class EngineManifest:
    schema: int
    vqz_edge_version: str
    model: str
    target: str
    engine_file: str
    engine_sha256: str
    engine_bytes: int
    tensorrt_version: str
    gpu_name: str
    compute_capability: str
    integrated: bool
    jetpack: str | None
    l4t: str | None
    mode: str
    io: tuple[IOTensor, ...]
    device_memory_bytes: tuple[int, ...]
    source_hashes: Mapping[str, str | None] = field(default_factory=dict)
    layers: tuple[Mapping[str, Any], ...] = ()
    build: Mapping[str, Any] = field(default_factory=dict)
    path: Path | None = None

    @property
    def directory(self) -> Path:
        return self.path.parent if self.path is not None else Path(".")

    @property
    def engine_path(self) -> Path:
        return self.directory / self.engine_file

    @property
    def inputs(self) -> list[IOTensor]:
        return [t for t in self.io if t.is_input]

    @property
    def outputs(self) -> list[IOTensor]:
        return [t for t in self.io if not t.is_input]

    @property
    def max_batch(self) -> int | None:
        for t in self.inputs:
            if t.profile_max:
                return t.profile_max[0]
        return None

    @property
    def dla_core(self) -> int | None:
        """The DLA core the engine was built for (None: GPU). The runtime must deserialise it on that core:
        TensorRT's runtime default (-1) would run it on core 0."""
        core = self.build.get("dla_core")
        return core if isinstance(core, int) and not isinstance(core, bool) else None

    @property
    def max_device_memory_bytes(self) -> int:
        return max(self.device_memory_bytes, default=0)

    def io_bytes_at_max(self) -> int:
        return sum(t.max_bytes(self.max_batch) for t in self.io)


def _req(doc: Mapping[str, Any], key: str, typ: type | tuple[type, ...], where: str) -> Any:
    if key not in doc:
        raise ManifestError(f"{where}: missing key '{key}'", hint=_rebuild_hint())
    v = doc[key]
    if isinstance(v, bool) and typ is int:
        raise ManifestError(f"{where}: '{key}' must be an integer, got a boolean")
    if not isinstance(v, typ):
        raise ManifestError(f"{where}: '{key}' has type {type(v).__name__}, expected {typ}")
    return v


def _shape(v: Any, where: str) -> tuple[int, ...] | None:
    if v is None:
        return None
    if not isinstance(v, list) or not all(isinstance(d, int) and not isinstance(d, bool) for d in v):
        raise ManifestError(f"{where} must be a list of integers, got {v!r}")
    return tuple(v)


def parse_manifest(doc: Mapping[str, Any], path: Path | None = None) -> EngineManifest:
    where = str(path) if path is not None else "manifest"
    schema = _req(doc, "schema", int, where)
    if schema != MANIFEST_SCHEMA:
        raise ManifestError(f"{where}: manifest schema {schema} is not supported (this vqz-edge reads {MANIFEST_SCHEMA})",
                            hint="rebuild the engine with this vqz-edge version")
    eng = _req(doc, "engine", dict, where)
    gpu = _req(doc, "gpu", dict, where)
    io = []
    for i, t in enumerate(_req(doc, "io", list, where)):
        w = f"{where}: io[{i}]"
        if not isinstance(t, dict):
            raise ManifestError(f"{w} must be an object")
        mode = _req(t, "mode", str, w)
        if mode not in ("input", "output"):
            raise ManifestError(f"{w}: mode {mode!r} must be 'input' or 'output'")
        io.append(IOTensor(
            name=_req(t, "name", str, w), mode=mode, dtype=_req(t, "dtype", str, w),
            shape=_shape(_req(t, "shape", list, w), f"{w}.shape") or (),
            profile_min=_shape(t.get("profile_min"), f"{w}.profile_min"),
            profile_opt=_shape(t.get("profile_opt"), f"{w}.profile_opt"),
            profile_max=_shape(t.get("profile_max"), f"{w}.profile_max"),
        ))
    if not any(t.is_input for t in io) or all(t.is_input for t in io):
        raise ManifestError(f"{where}: io must list at least one input and one output")
    dev_mem = _req(doc, "device_memory_bytes", list, where)
    if not dev_mem or not all(isinstance(x, int) and not isinstance(x, bool) and x >= 0 for x in dev_mem):
        raise ManifestError(f"{where}: device_memory_bytes must be a non-empty list of byte counts, got {dev_mem!r}")
    mode = _req(doc, "mode", str, where)
    if mode not in BUILD_MODES:
        raise ManifestError(f"{where}: mode {mode!r} not in {BUILD_MODES}")
    trt_version = _req(doc, "tensorrt_version", str, where)
    try:
        parse_trt_version(trt_version)
    except InputError as exc:
        raise ManifestError(f"{where}: {exc.message}") from exc
    engine_bytes = _req(eng, "bytes", int, f"{where}: engine")
    sha = _req(eng, "sha256", str, f"{where}: engine")
    if len(sha) != 64:
        raise ManifestError(f"{where}: engine.sha256 must be 64 hex digits, got {sha!r}")
    build = doc.get("build", {}) or {}
    if not isinstance(build, dict):
        raise ManifestError(f"{where}: 'build' must be an object")
    core = build.get("dla_core")
    if core is not None and (not isinstance(core, int) or isinstance(core, bool) or core < 0):
        raise ManifestError(f"{where}: build.dla_core must be null or a DLA core number, got {core!r}")
    efile = _req(eng, "file", str, f"{where}: engine")
    if "/" in efile or "\\" in efile or efile.startswith("."):
        raise ManifestError(f"{where}: engine.file {efile!r} must be a plain file name beside manifest.json")
    return EngineManifest(
        schema=schema,
        vqz_edge_version=str(doc.get("vqz_edge_version", "")),
        model=str(doc.get("model", "")),
        target=str(doc.get("target", "")),
        engine_file=efile,
        engine_sha256=sha.lower(),
        engine_bytes=engine_bytes,
        tensorrt_version=trt_version,
        gpu_name=str(gpu.get("name", "")),
        compute_capability=str(_req(gpu, "compute_capability", str, f"{where}: gpu")),
        integrated=bool(gpu.get("integrated", True)),
        jetpack=doc.get("jetpack"),
        l4t=doc.get("l4t"),
        mode=mode,
        io=tuple(io),
        device_memory_bytes=tuple(dev_mem),
        source_hashes=dict(doc.get("inputs", {}) or {}),
        layers=tuple(doc.get("layers", []) or []),
        build=dict(build),
        path=path,
    )


def manifest_path_for(path: Path) -> Path:
    """An engine directory, a manifest.json or an engine file -> the manifest.json to read."""
    path = Path(path)
    if path.is_dir():
        return path / MANIFEST_NAME
    if path.name == MANIFEST_NAME or path.suffix == ".json":
        return path
    return path.parent / MANIFEST_NAME


def load_manifest(path: Path) -> EngineManifest:
    """Read and validate the manifest for ``path`` (engine directory, manifest.json or engine file)."""
    mpath = manifest_path_for(Path(path))
    if not mpath.is_file():
        raise ManifestError(
            f"no {MANIFEST_NAME} for {path} (looked for {mpath})",
            hint="engines are run from the directory vqz-edge build wrote (model.engine + manifest.json)",
        )
    try:
        doc = json.loads(mpath.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ManifestError(f"{mpath} is not valid JSON: {exc}", hint=_rebuild_hint()) from exc
    if not isinstance(doc, dict):
        raise ManifestError(f"{mpath} must hold a JSON object")
    return parse_manifest(doc, mpath.resolve())


def verify_engine_file(m: EngineManifest, engine_path: Path | None = None) -> Path:
    """The engine file exists and its size and sha256 match the manifest."""
    p = Path(engine_path) if engine_path is not None else m.engine_path
    if not p.is_file():
        raise EngineMismatchError(f"engine file {p} (named in {m.path}) does not exist", hint=_rebuild_hint(m))
    size = p.stat().st_size
    if size != m.engine_bytes:
        raise EngineMismatchError(
            f"engine {p} is {size} bytes, the manifest says {m.engine_bytes}: the file is truncated or replaced",
            hint=_rebuild_hint(m),
        )
    digest = sha256_file(p)
    if digest != m.engine_sha256:
        raise EngineMismatchError(
            f"engine {p} sha256 {digest[:16]}... does not match the manifest ({m.engine_sha256[:16]}...): "
            "the file was modified or belongs to another build",
            hint=_rebuild_hint(m),
        )
    return p


def verify_manifest(
    m: EngineManifest, *, trt_version: str, compute_capability: str, engine_path: Path | None = None
) -> Path:
    """Everything that must hold before deserialising: engine hash, TensorRT version, compute capability.

    ``trt_version`` is this runtime's (``tensorrt.__version__``), ``compute_capability`` this GPU's ("8.7").
    Returns the verified engine path.
    """
    p = verify_engine_file(m, engine_path)
    built, here = parse_trt_version(m.tensorrt_version), parse_trt_version(trt_version)
    if built != here:
        raise EngineMismatchError(
            f"engine {p} was built with TensorRT {built}, this device runs TensorRT {here}"
            + (f" (engine built for JetPack {m.jetpack})" if m.jetpack else ""),
            hint=_rebuild_hint(m),
        )
    if m.compute_capability.strip() != compute_capability.strip():
        raise EngineMismatchError(
            f"engine {p} was built for compute capability {m.compute_capability} ({m.gpu_name or 'unknown GPU'}), "
            f"this GPU is {compute_capability}",
            hint=_rebuild_hint(m),
        )
    return p


def shapes_in_profile(m: EngineManifest, feeds: Mapping[str, Sequence[int]]) -> None:
    """Every input shape lies within its profile [min, max]."""
    for t in m.inputs:
        shape = tuple(feeds[t.name]) if t.name in feeds else None
        if shape is None or t.profile_min is None or t.profile_max is None:
            continue
        if len(shape) != len(t.profile_min) or any(s < lo or s > hi for s, lo, hi in zip(shape, t.profile_min, t.profile_max)):
            raise InputError(
                f"input {t.name!r} shape {list(shape)} is outside the engine's profile "
                f"{list(t.profile_min)} .. {list(t.profile_max)}",
                hint="use a batch within the profile, or rebuild with a larger max_shape",
            )


# --- writing, and the build's idempotence check -----------------------------------------------------


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
    if mode not in BUILD_MODES:
        raise ValueError(f"manifest mode {mode!r} not in {BUILD_MODES}")
    for key in ("onnx_sha256", "cache_sha256", "spec_sha256", "plan_sha256"):
        if key not in inputs:
            raise ValueError(f"manifest inputs lack {key!r}")
    for key in ("seconds", "host", "built_at", "key"):
        if key not in build:
            raise ValueError(f"manifest build info lacks {key!r}")
    return {
        "schema": MANIFEST_SCHEMA,
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
    with atomic_path(directory / MANIFEST_NAME) as manifest_tmp, atomic_path(directory / ENGINE_FILE) as engine_tmp:
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
    manifest = read_manifest(directory / MANIFEST_NAME)
    if manifest is None:
        return False, "no readable manifest.json"
    if manifest.get("schema") != MANIFEST_SCHEMA:
        return False, f"manifest schema {manifest.get('schema')!r} is not {MANIFEST_SCHEMA}"
    if manifest.get("build", {}).get("key") != key:
        return False, "inputs, options or TensorRT version changed since the last build"
    engine = directory / str(manifest.get("engine", {}).get("file", ENGINE_FILE))
    if not engine.is_file():
        return False, f"{engine.name} is missing"
    if engine.stat().st_size != manifest["engine"].get("bytes") or sha256_file(engine) != manifest["engine"].get("sha256"):
        return False, f"{engine.name} does not match the manifest's size/sha256"
    return True, "same inputs and TensorRT version as the existing engine"
