"""``open_runner``: pick the backend for a path, check the memory budget, then load.

* an engine directory (``model.engine`` + ``manifest.json``), a ``.engine`` file or a manifest -> TensorRT
  (:mod:`vqz_edge.runtime.trt_backend`; needs the device). The manifest is verified and the budget checked against
  the memory free right now before the engine is deserialised.
* an ``.onnx`` file -> ONNX Runtime on the CPU (FP32 and Q/DQ models). With ``target`` the budget is
  checked against that module (what this model would need there, FP16/INT8 as planned); without, against
  this host's free memory (FP32, as ONNX Runtime holds it). Either way before the session is created.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from pathlib import Path

from ..artifacts.engine_manifest import MANIFEST_NAME, EngineManifest, load_manifest
from ..device import read_live_memory
from ..errors import InputError, require_file
from ..log import get_logger
from ..memory.budget import (
    DEFAULT_MARGIN_FRACTION,
    BudgetReport,
    MemoryItem,
    check_budget,
    require_fit,
    runtime_overhead,
)
from ..memory.estimate import estimate_engine_dir, estimate_onnx
from ..targets import Target, get_target, list_targets
from ..vocab import ENGINE_SUFFIXES, canonical_backend
from .base import EngineRunner
from .ort_backend import OrtRunner
from .trt_backend import TrtRunner

_log = get_logger(__name__)


def artifact_kind(path: Path) -> str:
    """"engine" or "onnx" (InputError for anything else)."""
    path = Path(path)
    if path.is_dir() or path.suffix in ENGINE_SUFFIXES or path.name == MANIFEST_NAME:
        if not path.exists():
            raise InputError(f"{path} does not exist")
        return "engine"
    if path.suffix == ".onnx":
        require_file(path, "ONNX file")
        return "onnx"
    if not path.exists():
        raise InputError(f"{path} does not exist", hint="give an engine directory, a .engine file or an .onnx file")
    raise InputError(f"{path} is neither an engine (directory with {MANIFEST_NAME}, .engine) nor an .onnx file")


def _resolve_target(target: Target | str | None, targets_files: Iterable[Path | str]) -> Target | None:
    if target is None or isinstance(target, Target):
        return target
    return get_target(target, targets_files)


def host_target(total_bytes: int) -> Target:
    """A pseudo-target for "this machine" (no GPU overhead, no OS reserve: live numbers are used)."""
    return Target(
        name="this-host", display_name="this host (CPU)", ram_bytes=max(total_bytes, 1), gpu_sm_count=1,
        compute_capability="0.0", dla_cores=0, default_jetpack="0", default_trt_version="0", os_reserve_bytes=0,
        integrated=False, origin="live",
    )


def device_target(m: EngineManifest, total_bytes: int) -> Target:
    return Target(
        name="this-device", display_name=m.gpu_name or "this device", ram_bytes=max(total_bytes, 1), gpu_sm_count=1,
        compute_capability=m.compute_capability, dla_cores=0, default_jetpack=m.jetpack or "0",
        default_trt_version=m.tensorrt_version, os_reserve_bytes=0, integrated=m.integrated, origin="live",
    )


def onnx_budget(
    path: Path,
    *,
    target: Target | None,
    max_batch: int = 1,
    margin_fraction: float = DEFAULT_MARGIN_FRACTION,
    os_reserve_bytes: int | None = None,
    resident: Sequence[MemoryItem] = (),
) -> BudgetReport:
    """The budget an ONNX model needs before ONNX Runtime loads it (see module docstring)."""
    if target is not None:
        est = estimate_onnx(path, batch=max_batch)
        return check_budget(target, [*est.items, *resident], os_reserve_bytes=os_reserve_bytes,
                            margin_fraction=margin_fraction, subject=est.subject)
    est = estimate_onnx(path, batch=max_batch, precision="fp32")
    live = read_live_memory(use_jtop=False)
    return check_budget(
        host_target(live.total_bytes), [*est.items, *resident], live_free_bytes=live.available_bytes,
        live_source=live.source, overhead=[], margin_fraction=margin_fraction, suggest_targets=False,
        subject=f"{path.name} on ONNX Runtime (fp32 weights, batch {max_batch})",
    )


def open_runner(
    path: Path | str,
    *,
    target: Target | str | None = None,
    backend: str = "auto",
    max_batch: int = 1,
    check_memory: bool = True,
    margin_fraction: float = DEFAULT_MARGIN_FRACTION,
    os_reserve_bytes: int | None = None,
    resident: Sequence[MemoryItem] = (),
    targets_files: Iterable[Path | str] = (),
    threads: int = 0,
) -> EngineRunner:
    """Open ``path`` (engine dir / .engine / .onnx) with the right backend. See the module docstring.

    Raises BudgetError (exit code 7) with the breakdown when the model does not fit, before any session
    or execution context exists; EngineMismatchError when the engine belongs to another TensorRT/GPU.
    """
    try:
        backend = canonical_backend(backend)
    except ValueError as exc:
        raise InputError(str(exc)) from None
    path = Path(path)
    kind = artifact_kind(path)
    tgt = _resolve_target(target, targets_files)
    if kind == "onnx":
        if backend == "tensorrt":
            raise InputError(
                f"{path} is an ONNX file; the TensorRT backend runs built engines",
                hint="build one on the device (vqz-edge build), or use --backend onnxruntime",
            )
        if check_memory:
            require_fit(onnx_budget(path, target=tgt, max_batch=max_batch, margin_fraction=margin_fraction,
                                    os_reserve_bytes=os_reserve_bytes, resident=resident),
                        action="creating the ONNX Runtime session")
        return OrtRunner(path, threads=threads)

    if backend == "onnxruntime":
        raise InputError(
            f"{path} is a TensorRT engine; ONNX Runtime runs .onnx files",
            hint="run the engine on the device (--backend tensorrt / auto), or run the .onnx it was built from",
        )
    manifest = load_manifest(path)
    est = estimate_engine_dir(manifest.path or path)
    if tgt is None and manifest.target in {t.name for t in list_targets(targets_files)}:
        tgt = get_target(manifest.target, targets_files)

    def budget(free: int, source: str) -> None:
        t = tgt or device_target(manifest, free)
        # the CUDA context exists by now (it was needed to read the GPU): only TensorRT's runtime remains
        ovh = [o for o in runtime_overhead(t, manifest.tensorrt_version) if o.name != "CUDA context"]
        report = check_budget(
            t, [*est.items, *resident], live_free_bytes=free, live_source=source, trt_version=manifest.tensorrt_version,
            overhead=ovh, margin_fraction=margin_fraction, subject=est.subject,
        )
        _log.info("%s", report.verdict())
        require_fit(report)

    return TrtRunner(manifest, budget=budget if check_memory else None)
