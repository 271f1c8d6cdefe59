"""TensorRT engine builder: ONNX -> engine + manifest, for one target, following the precision plan.

Two layers:

- :func:`build_engine` -- one engine from one ONNX file with TensorRT (parse, configure, build,
  inspect). Everything it decides comes from ``constraints.py`` (pure, unit-tested); every API that
  differs between TensorRT 8.6 / 10.x / 11.x goes through ``compat.py``.
- :func:`run_build` -- what ``vqz-edge build`` does: find the calibration artifacts and the plan,
  skip when the same inputs were already built with this TensorRT, build, check the precisions the
  engine actually runs against the plan, write ``model.engine`` + ``manifest.json`` atomically.

Phases are logged; TensorRT >= 10 also reports its optimiser's progress (IProgressMonitor).
"""

from __future__ import annotations

import contextlib
import ctypes
import fcntl
import importlib
import logging
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from ..errors import DependencyError, EngineBuildError, InputError
from ..fsutil import atomic_write_bytes, canonical_json, sha256_bytes, sha256_file
from ..log import get_logger
from ..progress import ProgressBar, ProgressFactory, make_bar
from .calibrator import BatchSource, CalibrationFeed, make_entropy_calibrator, spec_batches
from .compat import (
    WHERE_TO_RUN,
    TrtVersion,
    device_memory_per_profile,
    import_tensorrt,
    layer_metadata,
    network_flags,
    parser_error_text,
    runtime_version,
)
from .constraints import (
    PRECISION_CONSTRAINTS,
    BuildDecision,
    CacheVerdict,
    ConstraintSet,
    NetLayer,
    NetTensor,
    NetworkDesc,
    ProfileShapes,
    build_key,
    check_calibration_cache,
    check_dla,
    check_profiles,
    decide_build,
    plan_constraints,
    workspace_bytes,
)
from .inspect import EngineLayer, PrecisionReport, check_report, compare_with_plan, parse_engine_info

if TYPE_CHECKING:
    import tensorrt as trt

    from ..policy.plan import ResolvedPlan
    from ..spec import Spec

_log = get_logger(__name__)

# TensorRT DataType member name -> numpy-style name used in plans and manifests.
DTYPE_NAMES = {
    "FLOAT": "float32", "HALF": "float16", "BF16": "bfloat16", "INT8": "int8", "UINT8": "uint8",
    "INT32": "int32", "INT64": "int64", "BOOL": "bool", "FP8": "float8", "INT4": "int4",
}


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


# --- small helpers ---------------------------------------------------------------------------------


@contextlib.contextmanager
def file_lock(path: Path) -> Iterator[None]:
    """Exclusive fcntl lock on ``<path>.lock`` (other builds on this host wait)."""
    lock = path.with_name(path.name + ".lock")
    lock.parent.mkdir(parents=True, exist_ok=True)
    with open(lock, "a+b") as fh:
        fcntl.flock(fh.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh.fileno(), fcntl.LOCK_UN)


def _dims(d: trt.Dims) -> list[int]:
    return [int(d[i]) for i in range(len(d))]


def _dtype(dt: trt.DataType) -> str:
    return DTYPE_NAMES.get(str(dt.name), str(dt.name).lower())


def gpu_info() -> dict[str, Any]:
    """Name, compute capability and integrated flag of CUDA device 0, from the driver API (libcuda,
    present wherever a GPU driver is; no pycuda needed). Nones when there is no usable GPU."""
    unknown: dict[str, Any] = {"name": None, "compute_capability": None, "integrated": None}
    try:
        cuda = ctypes.CDLL("libcuda.so.1")
    except OSError:
        return unknown
    dev = ctypes.c_int()
    if cuda.cuInit(0) != 0 or cuda.cuDeviceGet(ctypes.byref(dev), 0) != 0:
        return unknown
    name = ctypes.create_string_buffer(256)
    values = []
    for attribute in (75, 76, 18):  # CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MAJOR/_MINOR, _INTEGRATED
        v = ctypes.c_int()
        if cuda.cuDeviceGetAttribute(ctypes.byref(v), attribute, dev) != 0:
            return unknown
        values.append(v.value)
    cuda.cuDeviceGetName(name, len(name), dev)
    return {"name": name.value.decode(errors="replace") or None, "compute_capability": f"{values[0]}.{values[1]}",
            "integrated": bool(values[2])}


# --- TensorRT callbacks (Python subclasses of TensorRT interfaces, called from C++) -----------------


def _make_logger() -> tuple[trt.ILogger, list[str]]:
    """A trt.ILogger that forwards to Python logging and keeps TensorRT's error messages."""
    import tensorrt as trt

    errors: list[str] = []
    sev = trt.ILogger.Severity
    levels = {sev.INTERNAL_ERROR: logging.ERROR, sev.ERROR: logging.ERROR, sev.WARNING: logging.WARNING,
              sev.INFO: logging.DEBUG, sev.VERBOSE: logging.DEBUG}
    trt_log = get_logger("vqz_edge.trt.tensorrt")

    # type-ignore "misc": where mypy cannot read the tensorrt stubs, trt.* is Any (see docs/build.md); with
    # readable stubs the ignore is unused and the class is checked against them.
    class Logger(trt.ILogger):  # type: ignore[misc,unused-ignore]
        def __init__(self) -> None:
            trt.ILogger.__init__(self)

        def log(self, severity: trt.ILogger.Severity, msg: str) -> None:
            level = levels.get(severity, logging.INFO)
            if level >= logging.ERROR:
                errors.append(msg)
            if trt_log.isEnabledFor(level):
                trt_log.log(level, "TensorRT: %s", msg)

    return Logger(), errors


def _make_progress_monitor(progress: ProgressFactory | None) -> trt.IProgressMonitor:
    """TensorRT >= 10: one progress bar per top-level optimiser phase; nested phases are logged."""
    import tensorrt as trt

    lock = threading.Lock()  # TensorRT may call from several threads
    bars: dict[str, ProgressBar] = {}

    class Monitor(trt.IProgressMonitor):  # type: ignore[misc,unused-ignore]  # as Logger above
        def __init__(self) -> None:
            trt.IProgressMonitor.__init__(self)

        def phase_start(self, phase_name: str, parent_phase: str | None, num_steps: int) -> None:
            with lock:
                if parent_phase is None:
                    _log.info("TensorRT phase: %s (%d steps)", phase_name, num_steps)
                    bars[phase_name] = make_bar(progress, f"{phase_name} (steps)", num_steps)
                else:
                    _log.debug("TensorRT phase: %s / %s (%d steps)", parent_phase, phase_name, num_steps)

        def step_complete(self, phase_name: str, step: int) -> bool:
            with lock:
                bar = bars.get(phase_name)
                if bar is not None:
                    bar.update(1)
            return True  # False would cancel the build

        def phase_finish(self, phase_name: str) -> None:
            with lock:
                bar = bars.pop(phase_name, None)
                if bar is not None:
                    bar.close()

    return Monitor()


# --- one engine --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class CalibrationInputs:
    """Implicit INT8: the offline cache (raw bytes, or None) and, should it not fit, the data."""

    offline_cache: bytes | None
    data: Callable[[str, tuple[int, ...]], BatchSource] | None  # (input name, batch shape) -> batches
    batch_size: int
    cache_out: Path | None  # where TensorRT's own cache goes if it calibrates on the device


@dataclass(frozen=True)
class EngineConfig:
    onnx_path: Path
    decision: BuildDecision
    profiles: tuple[ProfileShapes, ...]
    workspace_bytes: int
    plan: ResolvedPlan | None = None
    precision_constraints: str = "obey"
    dla_core: int | None = None
    timing_cache: Path | None = None
    calibration: CalibrationInputs | None = None


@dataclass
class EngineBuild:
    engine: bytes
    trt_version: TrtVersion
    network: NetworkDesc
    constraints: ConstraintSet
    engine_layers: list[EngineLayer]
    io: list[dict[str, Any]]
    device_memory_bytes: list[int]
    seconds: float
    dla_fallback: list[str] = field(default_factory=list)
    cache_verdict: CacheVerdict | None = None
    device_calibration_batches: int = 0


def describe_network(network: trt.INetworkDefinition) -> NetworkDesc:
    """The parsed network as plain data for the pure logic in constraints.py."""
    inputs = []
    for i in range(network.num_inputs):
        t = network.get_input(i)
        inputs.append(NetTensor(t.name, _dtype(t.dtype), tuple(_dims(t.shape))))
    layers = []
    for i in range(network.num_layers):
        layer = network.get_layer(i)
        ins = []
        for j in range(layer.num_inputs):
            t = layer.get_input(j)
            ins.append(t.name if t is not None else "")  # optional inputs are None
        outs = [NetTensor(layer.get_output(j).name, _dtype(layer.get_output(j).dtype)) for j in range(layer.num_outputs)]
        layers.append(NetLayer(layer.name, layer.type.name, tuple(ins), tuple(outs), layer_metadata(layer)))
    return NetworkDesc(tuple(inputs), tuple(layers))


def engine_io(engine: trt.ICudaEngine) -> list[dict[str, Any]]:
    import tensorrt as trt

    out: list[dict[str, Any]] = []
    for i in range(engine.num_io_tensors):
        name = engine.get_tensor_name(i)
        is_input = engine.get_tensor_mode(name) == trt.TensorIOMode.INPUT
        entry: dict[str, Any] = {"name": name, "mode": "input" if is_input else "output",
                                 "dtype": _dtype(engine.get_tensor_dtype(name)), "shape": _dims(engine.get_tensor_shape(name))}
        if is_input:
            lo, opt, hi = engine.get_tensor_profile_shape(name, 0)
            entry.update(profile_min=_dims(lo), profile_opt=_dims(opt), profile_max=_dims(hi))
        out.append(entry)
    return out


def _apply_constraints(network: trt.INetworkDefinition, constraints: ConstraintSet) -> None:
    import tensorrt as trt

    layers = {network.get_layer(i).name: network.get_layer(i) for i in range(network.num_layers)}
    for c in constraints.constraints:
        dt = trt.DataType.HALF if c.precision == "fp16" else trt.DataType.FLOAT
        layer = layers[c.layer]
        layer.precision = dt
        for k in c.outputs:
            layer.set_output_type(k, dt)
        _log.debug("pinned %s (%s) to %s", c.layer, c.node, c.precision)


def _load_timing_cache(config: trt.IBuilderConfig, path: Path) -> trt.ITimingCache:
    data = b""
    if path.is_file():
        with file_lock(path):
            data = path.read_bytes()
    try:
        cache = config.create_timing_cache(data)
    except (RuntimeError, TypeError) as exc:  # a cache from another TensorRT / a damaged file
        _log.warning("ignoring timing cache %s: %s", path, exc)
        cache = config.create_timing_cache(b"")
    config.set_timing_cache(cache, False)
    return cache


def _save_timing_cache(config: trt.IBuilderConfig, cache: trt.ITimingCache, path: Path) -> None:
    """Merge what this build timed with what other builds wrote meanwhile, under the lock."""
    with file_lock(path):
        if path.is_file():
            try:
                if not cache.combine(config.create_timing_cache(path.read_bytes()), False):
                    _log.warning("timing cache %s could not be merged; overwriting it", path)
            except (RuntimeError, TypeError) as exc:
                _log.warning("timing cache %s unreadable (%s); overwriting it", path, exc)
        atomic_write_bytes(path, bytes(cache.serialize()))


def _calibration_batch_shape(tensor: NetTensor, profile: ProfileShapes, batch_size: int) -> tuple[int, ...]:
    batch = tensor.shape[0] if tensor.shape and tensor.shape[0] > 0 else batch_size
    return (batch, *profile.opt[1:])


def build_engine(cfg: EngineConfig, progress: ProgressFactory | None = None) -> EngineBuild:
    """Parse ``cfg.onnx_path`` and build one serialized engine. Raises EngineBuildError with TensorRT's
    own messages (parser errors name the ONNX node)."""
    version = runtime_version(import_tensorrt())
    import tensorrt as trt

    decision = cfg.decision
    logger, trt_errors = _make_logger()
    builder = trt.Builder(logger)

    _log.info("[1/5] parsing %s with TensorRT %s", cfg.onnx_path, version)
    network = builder.create_network(network_flags(version, strongly_typed=decision.strongly_typed))
    parser = trt.OnnxParser(network, logger)
    if not parser.parse_from_file(str(cfg.onnx_path)):
        errors = [parser_error_text(parser.get_error(i)) for i in range(parser.num_errors)]
        raise EngineBuildError(
            f"TensorRT {version}'s ONNX parser rejected {cfg.onnx_path} ({len(errors)} error(s)):\n  "
            + "\n  ".join(errors or trt_errors[-10:]),
            hint="the node names above are ONNX node names; an unsupported op needs a plugin or a different export",
        )
    desc = describe_network(network)
    problems = check_profiles(desc.inputs, cfg.profiles)
    if problems:
        raise InputError("spec [[inputs]] do not fit the network:\n  " + "\n  ".join(problems))

    _log.info("[2/5] configuring: mode %s, %s typed, workspace %d MiB", decision.mode,
              "strongly" if decision.strongly_typed else "weakly", cfg.workspace_bytes >> 20)
    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, cfg.workspace_bytes)
    config.profiling_verbosity = trt.ProfilingVerbosity.DETAILED  # the inspector needs per-layer formats
    if decision.fp16:
        config.set_flag(trt.BuilderFlag.FP16)
    if decision.int8:
        config.set_flag(trt.BuilderFlag.INT8)

    constraints = plan_constraints(cfg.plan, desc, decision.constrain)
    if constraints.unmatched:
        raise EngineBuildError(
            f"{len(constraints.unmatched)} layer(s) the plan keeps above INT8 are not in the network parsed from "
            f"{cfg.onnx_path.name}: {list(constraints.unmatched[:8])}",
            hint="the plan was made for another model; re-run `vqz-edge plan` / `vqz-edge calibrate`",
        )
    if constraints.constraints:
        _apply_constraints(network, constraints)
        obey = cfg.precision_constraints == "obey"
        config.set_flag(trt.BuilderFlag.OBEY_PRECISION_CONSTRAINTS if obey else trt.BuilderFlag.PREFER_PRECISION_CONSTRAINTS)
        _log.info("pinned %d network layer(s) above INT8 (%s)", len(constraints.constraints), cfg.precision_constraints)

    profile = builder.create_optimization_profile()
    for p in cfg.profiles:
        profile.set_shape(p.name, trt.Dims(list(p.min)), trt.Dims(list(p.opt)), trt.Dims(list(p.max)))
    config.add_optimization_profile(profile)

    feed: CalibrationFeed | None = None
    calibrator: trt.IInt8EntropyCalibrator2 | None = None
    verdict: CacheVerdict | None = None
    if decision.calibrator:
        feed, verdict, calibration_profile = _setup_calibration(cfg, builder, desc, version)
        calibrator = make_entropy_calibrator(feed)
        config.int8_calibrator = calibrator  # deprecated in 10.1; decide_build allows it only for <= 10
        if calibration_profile is not None:
            config.set_calibration_profile(calibration_profile)

    dla_fallback: list[str] = []
    if cfg.dla_core is not None:
        if cfg.dla_core >= builder.num_DLA_cores:
            raise InputError(f"--dla-core {cfg.dla_core}: this device has {builder.num_DLA_cores} DLA core(s)")
        config.default_device_type = trt.DeviceType.DLA
        config.DLA_core = cfg.dla_core
        config.set_flag(trt.BuilderFlag.GPU_FALLBACK)
        dla_fallback = [network.get_layer(i).name for i in range(network.num_layers)
                        if not config.can_run_on_DLA(network.get_layer(i))]
        _log.info("DLA core %d: %d layer(s) fall back to the GPU", cfg.dla_core, len(dla_fallback))

    timing_cache = _load_timing_cache(config, cfg.timing_cache) if cfg.timing_cache else None
    monitor = _make_progress_monitor(progress) if version.supports_progress_monitor else None
    if monitor is not None:
        config.progress_monitor = monitor

    _log.info("[3/5] building (TensorRT tries kernels for every layer: minutes on a Jetson)")
    t0 = time.monotonic()
    try:
        serialized = builder.build_serialized_network(network, config)
    finally:
        if feed is not None:
            feed.free()
    seconds = time.monotonic() - t0
    if feed is not None and feed.error is not None:
        raise feed.error
    if serialized is None:
        raise EngineBuildError(
            f"TensorRT {version} failed to build the engine after {seconds:.0f}s:\n  " + "\n  ".join(trt_errors[-15:]),
            hint="with OBEY precision constraints a layer without a kernel in the pinned precision fails the "
            "build; --precision-constraints prefer lets TensorRT override (and reports which layers)",
        )
    engine_bytes = bytes(serialized)
    if cfg.timing_cache is not None and timing_cache is not None:
        _save_timing_cache(config, timing_cache, cfg.timing_cache)

    _log.info("[4/5] inspecting the engine (%.1f MiB, built in %.0fs)", len(engine_bytes) / 2**20, seconds)
    engine = trt.Runtime(logger).deserialize_cuda_engine(engine_bytes)
    if engine is None:
        raise EngineBuildError("TensorRT could not deserialize the engine it just built:\n  " + "\n  ".join(trt_errors[-5:]))
    info = engine.create_engine_inspector().get_engine_information(trt.LayerInformationFormat.JSON)
    return EngineBuild(
        engine=engine_bytes, trt_version=version, network=desc, constraints=constraints,
        engine_layers=parse_engine_info(info), io=engine_io(engine), device_memory_bytes=device_memory_per_profile(engine),
        seconds=seconds, dla_fallback=dla_fallback, cache_verdict=verdict,
        device_calibration_batches=feed.batches_used if feed is not None else 0,
    )


def _setup_calibration(
    cfg: EngineConfig, builder: trt.Builder, desc: NetworkDesc, version: TrtVersion,
) -> tuple[CalibrationFeed, CacheVerdict, trt.IOptimizationProfile | None]:
    """Decide offline cache vs on-device calibration before the build starts."""
    import tensorrt as trt

    from ..calib.cache import parse_cache

    calib = cfg.calibration
    if calib is None:
        raise InputError("implicit INT8 needs a calibration cache or calibration data")
    if calib.offline_cache is not None:
        cache = parse_cache(calib.offline_cache, "calibration.cache")
        verdict = check_calibration_cache(algorithm=cache.algorithm, version_code=cache.version_code, names=cache.scales,
                                          trt_version=version, network=desc, plan=cfg.plan)
    else:
        verdict = CacheVerdict(False, "no offline calibration cache")
    if verdict.extra:
        _log.warning("calibration cache has %d tensor(s) this network does not (ignored), e.g. %s",
                     len(verdict.extra), list(verdict.extra[:3]))
    by_name = {p.name: p for p in cfg.profiles}
    dynamic = [t for t in desc.inputs if any(d < 0 for d in t.shape)]
    batches: BatchSource | None = None
    calibration_profile = None
    batch_size = calib.batch_size
    if len(desc.inputs) == 1 and desc.inputs[0].name in by_name:
        tensor = desc.inputs[0]
        shape = _calibration_batch_shape(tensor, by_name[tensor.name], calib.batch_size)
        batch_size = shape[0]
        data = calib.data
        if data is not None:
            if verdict.accepted:  # TensorRT should not ask; if it does, open the data only then
                batches = lambda: data(tensor.name, shape)()  # noqa: E731
            else:  # open it now: a missing folder or a wrong shape is an ordinary error, not a callback's
                batches = data(tensor.name, shape)
        if dynamic:  # TensorRT calibrates at the calibration profile's opt shape
            calibration_profile = builder.create_optimization_profile()
            calibration_profile.set_shape(tensor.name, trt.Dims(list(shape)), trt.Dims(list(shape)), trt.Dims(list(shape)))
    feed = CalibrationFeed(offline_cache=calib.offline_cache if verdict.accepted else None, batches=batches,
                           batch_size=batch_size, cache_out=calib.cache_out)
    if verdict.accepted:
        _log.info("calibration: offline cache accepted (%s)", verdict.reason)
    else:
        _log.warning("calibration: offline cache not used (%s); calibrating on the device", verdict.reason)
        feed.prepare()  # pycuda and data now, not inside TensorRT's callback
    return feed, verdict, calibration_profile


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
            "status": self.status, "directory": str(self.directory), "engine": str(self.directory / "model.engine"),
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
    """The resolved plan: --plan, else <calibration>/plan.json, else the spec's rules resolved now
    (``vqz_edge.policy.resolve_plan``, where that exists)."""
    import json

    from ..policy.plan import ResolvedPlan

    path = req.plan_path or calib_dir / "plan.json"
    if path.is_file():
        try:
            plan = ResolvedPlan.from_dict(json.loads(path.read_text(encoding="utf-8")))
        except (ValueError, KeyError, TypeError) as exc:
            raise InputError(f"precision plan {path} is not a valid plan.json: {exc}") from exc
        source = str(path)
    elif req.plan_path is not None:
        raise InputError(f"precision plan {req.plan_path} does not exist")
    else:
        resolver = getattr(importlib.import_module("vqz_edge.policy"), "resolve_plan", None)
        if resolver is None or not onnx_fp32.is_file():
            return None, "none (no plan.json; the spec's precision rules are not applied)"
        from ..onnx_io import load_model

        plan = resolver(req.spec, load_model(onnx_fp32))
        if not isinstance(plan, ResolvedPlan):
            raise TypeError(f"vqz_edge.policy.resolve_plan returned {type(plan).__name__}, not ResolvedPlan")
        source = "resolved from the spec's [precision] rules"
    if onnx_fp32.is_file() and plan.onnx_sha256 and plan.onnx_sha256 != sha256_file(onnx_fp32):
        raise InputError(
            f"precision plan ({source}) was made for another model.onnx (sha256 {plan.onnx_sha256[:12]}..., "
            f"{onnx_fp32} is {sha256_file(onnx_fp32)[:12]}...)",
            hint="re-run `vqz-edge plan` / `vqz-edge calibrate` for the current model",
        )
    return plan, source


def run_build(req: BuildRequest, progress: ProgressFactory | None = None) -> BuildOutcome:
    """``vqz-edge build``: nothing is written unless TensorRT is importable and the build succeeds."""
    from .. import __version__
    from ..device_info import host_name, read_jetpack, read_l4t
    from ..engine_manifest import (
        TIMING_CACHE_FILE,
        build_manifest,
        engine_dir,
        up_to_date,
        utc_now,
        write_engine_and_manifest,
    )

    spec, target = req.spec, req.target
    check_dla(target.name, target.dla_cores, req.dla_core)
    if req.precision_constraints not in PRECISION_CONSTRAINTS:
        raise InputError(f"--precision-constraints {req.precision_constraints!r} is not one of {list(PRECISION_CONSTRAINTS)}")
    version = runtime_version(import_tensorrt())  # DependencyError (exit 3) before anything is written
    if str(version).split(".")[:2] != target.default_trt_version.split(".")[:2]:
        _log.warning("building with TensorRT %s; target %s ships TensorRT %s with its default JetPack",
                     version, target.name, target.default_trt_version)

    calib_dir = req.calibration_dir or Path("calibration") / spec.model.name
    onnx_fp32, qdq, cache_path = calib_dir / "model.onnx", calib_dir / "model.qdq.onnx", calib_dir / "calibration.cache"
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
    hashes: dict[str, str | None] = {
        "onnx_sha256": sha256_file(onnx_path),
        "cache_sha256": sha256_bytes(offline_cache) if offline_cache is not None else None,
        "spec_sha256": sha256_bytes(canonical_json(spec.to_dict()).encode("utf-8")),
        "plan_sha256": sha256_bytes(canonical_json(plan.to_dict()).encode("utf-8")) if plan else None,
    }
    key = build_key(vqz_edge_version=__version__, model=spec.model.name, target=target.name, trt_version=str(version),
                    mode=decision.mode, onnx_sha256=str(hashes["onnx_sha256"]), cache_sha256=hashes["cache_sha256"],
                    spec_sha256=str(hashes["spec_sha256"]), plan_sha256=hashes["plan_sha256"], dla_core=req.dla_core,
                    precision_constraints=req.precision_constraints, workspace_bytes=ws)
    out_dir = engine_dir(req.out_root, spec.model.name, target.name, str(version))
    if not req.force:
        fresh, why = up_to_date(out_dir, key)
        if fresh:
            _log.info("skipping: %s (--force rebuilds)", why)
            return BuildOutcome("skipped", out_dir, key, why, decision.mode, str(version), notes=notes)

    gpu = gpu_info()
    if gpu["compute_capability"] is None:
        raise DependencyError("TensorRT is installed but no CUDA GPU was found (libcuda.so.1 / device 0)",
                              hint=WHERE_TO_RUN)
    if gpu["compute_capability"] != target.compute_capability:
        msg = (f"this GPU ({gpu['name']}, compute capability {gpu['compute_capability']}) is not the target's "
               f"({target.name}: {target.compute_capability}); the engine would only run on GPUs like this one")
        if not req.allow_gpu_mismatch:
            raise InputError(msg, hint="build on the device (or in the Jetson container on it); "
                             "--allow-gpu-mismatch builds anyway, for testing")
        notes.append(msg)
        _log.warning("%s", msg)

    calibration = None
    if decision.calibrator:
        calibration = CalibrationInputs(
            offline_cache=offline_cache, data=lambda name, shape: spec_batches(spec, name, shape),
            batch_size=spec.calibration.batch_size, cache_out=out_dir / "calibration.cache",
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
            model=spec.model.name, target=target.name, engine=result.engine, tensorrt_version=str(version), gpu=gpu,
            l4t=l4t, jetpack=read_jetpack(l4t), mode=decision.mode, inputs=hashes, io=result.io,
            device_memory_bytes=result.device_memory_bytes,
            layers=report.manifest_layers() if report is not None else engine_layer_precisions(result.engine_layers),
            build=build_info,
        )
        write_engine_and_manifest(out_dir, result.engine, manifest)
    return BuildOutcome("built", out_dir, key, "built", decision.mode, str(version), manifest, report, notes)
