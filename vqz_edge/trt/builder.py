"""``vqz-edge build`` (:func:`run_build`): find the calibration artifacts and the plan, skip when the same inputs
were already built with this TensorRT, build one engine (:func:`vqz_edge.trt.engine.build_engine`), check the
precisions the engine actually runs against the plan, write ``model.engine`` + ``manifest.json`` atomically.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from .. import __version__
from ..artifacts.engine_manifest import (
    build_manifest,
    engine_dir,
    up_to_date,
    utc_now,
    write_engine_and_manifest,
)
from ..artifacts.plan import ResolvedPlan
from ..device import host_name, read_jetpack, read_l4t
from ..errors import InputError
from ..fsutil import canonical_json, file_lock, sha256_bytes, sha256_file
from ..log import get_logger
from ..onnx_io import load_model
from ..policy import resolve_plan
from ..preprocessing import Preprocessing, recorded_beside
from ..progress import ProgressFactory
from ..vocab import CACHE_FILE, ENGINE_FILE, ONNX_FILE, PLAN_FILE, QDQ_ONNX_FILE, TIMING_CACHE_FILE
from .calibrator import spec_batches
from .compat import import_tensorrt, runtime_version
from .constraints import (
    PRECISION_CONSTRAINTS,
    ProfileShapes,
    build_key,
    check_dla,
    decide_build,
    workspace_bytes,
)
from .engine import CalibrationInputs, EngineConfig, build_engine, require_gpu
from .inspect import EngineLayer, PrecisionReport, check_report, compare_with_plan

if TYPE_CHECKING:

    from ..spec import Spec


_log = get_logger(__name__)


class TargetLike(Protocol):
    """What the builder needs from ``vqz_edge.targets.Target``."""

    @property
    def name(self) -> str: ...
    @property
    def ram_bytes(self) -> int: ...
    @property
    def dla_cores(self) -> int: ...
    @property
    def compute_capability(self) -> str: ...
    @property
    def default_trt_version(self) -> str: ...


# --- vqz-edge build -------------------------------------------------------------------------------


@dataclass(frozen=True)
class BuildRequest:
    spec: Spec
    target: TargetLike
    mode: str = "auto"
    dla_core: int | None = None
    force: bool = False
    out_root: Path = Path("engines")
    calibration_dir: Path | None = None  # default calibration/<model>
    plan_path: Path | None = None  # default <calibration_dir>/plan.json, else the spec's rules resolved
    precision_constraints: str = "obey"
    allow_gpu_mismatch: bool = False


@dataclass
class BuildOutcome:
    status: str  # "built" | "skipped"
    directory: Path
    key: str
    reason: str
    mode: str
    tensorrt_version: str
    manifest: dict[str, Any] | None = None
    report: PrecisionReport | None = None
    notes: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "status": self.status, "directory": str(self.directory), "engine": str(self.directory / ENGINE_FILE),
            "key": self.key, "reason": self.reason, "mode": self.mode, "tensorrt_version": self.tensorrt_version,
            "notes": list(self.notes),
        }
        if self.manifest is not None:
            out["manifest"] = self.manifest
        if self.report is not None:
            out["precisions"] = self.report.summary()
            out["stayed_high"] = [x.name for x in self.report.stayed_high]
            out["overridden"] = [{"name": x.name, "planned": x.planned, "actual": x.actual} for x in self.report.overridden]
        return out


def engine_layer_precisions(layers: list[EngineLayer]) -> list[dict[str, str | None]]:
    """Manifest layers without a plan: every engine layer and its precision, nothing planned."""
    return [{"name": x.name, "precision": x.precision, "planned": None} for x in layers]


@contextlib.contextmanager
def _cleanup_if_new(directory: Path) -> Iterator[None]:
    """A failed first build leaves no engine folder behind (only lock files would be in it)."""
    created = not directory.exists()
    try:
        yield
    except BaseException:
        if created:
            for lock in directory.glob("*.lock"):
                lock.unlink(missing_ok=True)
            with contextlib.suppress(OSError):
                directory.rmdir()  # only if empty: a finished calibration or timing cache stays
        raise


def spec_profiles(spec: Spec) -> tuple[ProfileShapes, ...]:
    return tuple(ProfileShapes(i.name, tuple(i.min_shape or i.shape), tuple(i.shape), tuple(i.max_shape or i.shape))
                 for i in spec.inputs)


def load_plan(req: BuildRequest, calib_dir: Path, onnx_fp32: Path) -> tuple[ResolvedPlan | None, str]:
    """The resolved plan: --plan, else <calibration>/plan.json, else the spec's rules resolved now."""
    path = req.plan_path or calib_dir / PLAN_FILE
    if path.is_file():
        try:
            plan = ResolvedPlan.from_dict(json.loads(path.read_text(encoding="utf-8")))
        except (ValueError, KeyError, TypeError) as exc:
            raise InputError(f"precision plan {path} is not a valid plan.json: {exc}") from exc
        source = str(path)
    elif req.plan_path is not None:
        raise InputError(f"precision plan {req.plan_path} does not exist")
    elif not onnx_fp32.is_file():
        return None, "none (no plan.json; the spec's precision rules are not applied)"
    else:
        precision = req.spec.precision
        plan = resolve_plan(load_model(onnx_fp32), precision.rules, model_name=req.spec.model.name, onnx_sha256="",
                            preset=precision.preset, default=precision.default).plan
        source = "resolved from the spec's [precision] rules"
    if onnx_fp32.is_file() and plan.onnx_sha256 and plan.onnx_sha256 != sha256_file(onnx_fp32):
        raise InputError(
            f"precision plan ({source}) was made for another model.onnx (sha256 {plan.onnx_sha256[:12]}..., "
            f"{onnx_fp32} is {sha256_file(onnx_fp32)[:12]}...)",
            hint="re-run `vqz-edge plan` / `vqz-edge calibrate` for the current model",
        )
    return plan, source


@dataclass(frozen=True)
class EngineRecipe:
    """How camera frames become the engine's input, and where that was said."""

    preprocessing: Preprocessing
    origin: str

    def to_dict(self) -> dict[str, Any]:
        return {**self.preprocessing.to_dict(), "origin": self.origin}


def engine_preprocessing(req: BuildRequest, calib_dir: Path) -> EngineRecipe | None:
    """The recipe the engine's inputs need, for its manifest and the device calibrator: as calibration recorded it
    (the plan.json / summary.json beside --plan or in the calibration directory), else as the spec's
    [preprocessing] declares it for its first input, else None (``vqz-edge run`` then needs --preprocess)."""
    found = recorded_beside(req.plan_path if req.plan_path is not None else calib_dir)
    if found is not None:
        return EngineRecipe(found[0], f"recorded in {found[1]}")
    spec = req.spec
    if not spec.preprocessing.is_empty() and spec.inputs:
        recipe = spec.preprocessing.resolve(spec.inputs[0].shape)  # DataError names what the spec lacks
        where = f"spec {spec.path}" if spec.path is not None else "the spec"
        return EngineRecipe(recipe, f"declared in {where} [preprocessing]")
    return None


def run_build(req: BuildRequest, progress: ProgressFactory | None = None) -> BuildOutcome:
    """``vqz-edge build``: nothing is written unless TensorRT is importable and the build succeeds."""
    spec, target = req.spec, req.target
    check_dla(target.name, target.dla_cores, req.dla_core)
    if req.precision_constraints not in PRECISION_CONSTRAINTS:
        raise InputError(f"--precision-constraints {req.precision_constraints!r} is not one of {list(PRECISION_CONSTRAINTS)}")
    version = runtime_version(import_tensorrt())  # DependencyError (exit 3) before anything is written
    if str(version).split(".")[:2] != target.default_trt_version.split(".")[:2]:
        _log.warning("building with TensorRT %s; target %s ships TensorRT %s with its default JetPack",
                     version, target.name, target.default_trt_version)

    calib_dir = req.calibration_dir or Path("calibration") / spec.model.name
    onnx_fp32, qdq, cache_path = calib_dir / ONNX_FILE, calib_dir / QDQ_ONNX_FILE, calib_dir / CACHE_FILE
    plan, plan_source = load_plan(req, calib_dir, onnx_fp32)
    # Only a user's choice counts: non-quantizable ops are FP16 by default and fuse into INT8 layers.
    plan_has_fp16 = plan is not None and any(d.quantizable and d.precision == "fp16" for d in plan.layers)
    decision = decide_build(version, req.mode, have_cache=cache_path.is_file(), have_qdq=qdq.is_file(),
                            plan_has_fp16=plan_has_fp16, dla=req.dla_core is not None)
    notes = list(decision.notes)
    for note in notes:
        _log.warning("%s", note)
    if plan is None and decision.mode != "fp16":
        notes.append("no precision plan: no layer is pinned above INT8")
        _log.warning("%s", notes[-1])
    onnx_path = calib_dir / decision.onnx_name
    if not onnx_path.is_file():
        raise InputError(f"{onnx_path} does not exist", hint="run `vqz-edge calibrate` (or the demo) first")
    offline_cache = cache_path.read_bytes() if decision.calibrator and cache_path.is_file() else None

    ws = workspace_bytes(spec.build.workspace_mib, target.ram_bytes)
    recipe = engine_preprocessing(req, calib_dir)
    if recipe is None and decision.mode != "fp16":
        notes.append("no preprocessing recorded or declared: `vqz-edge run` on this engine needs --preprocess")
        _log.warning("%s", notes[-1])
    hashes: dict[str, str | None] = {
        "onnx_sha256": sha256_file(onnx_path),
        "cache_sha256": sha256_bytes(offline_cache) if offline_cache is not None else None,
        "spec_sha256": sha256_bytes(canonical_json(spec.to_dict()).encode("utf-8")),
        "plan_sha256": sha256_bytes(canonical_json(plan.to_dict()).encode("utf-8")) if plan else None,
    }
    key = build_key(vqz_edge_version=__version__, model=spec.model.name, target=target.name, trt_version=str(version),
                    mode=decision.mode, onnx_sha256=str(hashes["onnx_sha256"]), cache_sha256=hashes["cache_sha256"],
                    spec_sha256=str(hashes["spec_sha256"]), plan_sha256=hashes["plan_sha256"], dla_core=req.dla_core,
                    precision_constraints=req.precision_constraints, workspace_bytes=ws,
                    preprocessing_sha256=sha256_bytes(canonical_json(recipe.to_dict()).encode("utf-8")) if recipe else None)
    out_dir = engine_dir(req.out_root, spec.model.name, target.name, str(version))
    if not req.force:
        fresh, why = up_to_date(out_dir, key)
        if fresh:
            _log.info("skipping: %s (--force rebuilds)", why)
            return BuildOutcome("skipped", out_dir, key, why, decision.mode, str(version), notes=notes)

    gpu = require_gpu()
    if gpu.compute_capability != target.compute_capability:
        msg = (f"this GPU ({gpu.name}, compute capability {gpu.compute_capability}) is not the target's "
               f"({target.name}: {target.compute_capability}); the engine would only run on GPUs like this one")
        if not req.allow_gpu_mismatch:
            raise InputError(msg, hint="build on the device (or in the Jetson container on it); "
                             "--allow-gpu-mismatch builds anyway, for testing")
        notes.append(msg)
        _log.warning("%s", msg)

    calibration = None
    if decision.calibrator:
        calibration = CalibrationInputs(
            offline_cache=offline_cache,
            data=lambda name, shape: spec_batches(spec, name, shape, recipe.preprocessing if recipe else None),
            cache_out=out_dir / CACHE_FILE,
        )
    cfg = EngineConfig(onnx_path=onnx_path, decision=decision, profiles=spec_profiles(spec), workspace_bytes=ws, plan=plan,
                       precision_constraints=req.precision_constraints, dla_core=req.dla_core,
                       timing_cache=out_dir / TIMING_CACHE_FILE, calibration=calibration)
    with _cleanup_if_new(out_dir), file_lock(out_dir / ".build"):
        result = build_engine(cfg, progress)
        report = compare_with_plan(result.engine_layers, plan, decision.mode) if plan is not None else None
        if report is not None:
            check_report(report)  # a layer the plan keeps FP16/FP32 runs INT8: nothing is written
            if report.stayed_high:
                _log.warning("%d layer(s) planned INT8 run in FP16/FP32 (listed in manifest.json build.stayed_high), "
                             "e.g. %s", len(report.stayed_high), [x.name for x in report.stayed_high[:3]])
            for x in report.overridden:
                _log.warning("planned %s, runs %s (TensorRT overrode the constraint): %s", x.planned, x.actual, x.name)
        _log.info("[5/5] writing %s", out_dir)
        l4t = read_l4t()
        verdict = result.cache_verdict
        build_info: dict[str, Any] = {
            "seconds": round(result.seconds, 2), "host": host_name(), "built_at": utc_now(), "key": key,
            "dla_core": req.dla_core, "dla_fallback": result.dla_fallback,
            "precision_constraints": req.precision_constraints, "strongly_typed": decision.strongly_typed,
            "workspace_bytes": cfg.workspace_bytes, "plan": plan_source, "notes": notes,
            "pinned_layers": len(result.constraints.constraints),
            "calibration": None if verdict is None else {
                "offline_cache_used": verdict.accepted, "reason": verdict.reason,
                "device_batches": result.device_calibration_batches},
            "stayed_high": [x.name for x in report.stayed_high] if report else [],
            "overridden": [x.name for x in report.overridden] if report else [],
        }
        manifest = build_manifest(
            model=spec.model.name, target=target.name, engine=result.engine, tensorrt_version=str(version), gpu=gpu.to_dict(),
            l4t=l4t, jetpack=read_jetpack(l4t), mode=decision.mode, inputs=hashes, io=result.io,
            device_memory_bytes=result.device_memory_bytes,
            layers=report.manifest_layers() if report is not None else engine_layer_precisions(result.engine_layers),
            build=build_info, preprocessing=recipe.to_dict() if recipe else None,
        )
        write_engine_and_manifest(out_dir, result.engine, manifest)
    return BuildOutcome("built", out_dir, key, "built", decision.mode, str(version), manifest, report, notes)
