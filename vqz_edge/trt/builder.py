"""TensorRT engine builder: ONNX -> engine + manifest, for one target, following the precision plan.

Two layers:

- :func:`build_engine` -- one engine from one ONNX file. The TensorRT steps Polygraphy's TensorRT backend
  covers are Polygraphy's (NVIDIA maintains and tests them against TensorRT 8.x - 11.x): registering the
  built-in plugins and parsing the ONNX file (``NetworkFromOnnxPath``), creating the builder config across
  versions (``CreateConfig``: precision flags, profiles, the calibrator and its profile, precision constraints,
  the workspace pool, profiling verbosity, the progress monitor), building (``EngineBytesFromNetwork``) and
  deserialising (``EngineFromBytes``). vqz-edge's own code is what Polygraphy has no equivalent for: the plan ->
  per-layer constraints (``constraints.py``; precisions *and* output types, which ``SetLayerPrecisions`` does
  not set), DLA placement with a core number and the list of layers that fall back, the timing cache (Polygraphy
  neither checks ``create_timing_cache`` for None nor ``set_timing_cache``'s result), and the inspector check.
- :func:`run_build` -- what ``vqz-edge build`` does: find the calibration artifacts and the plan, skip when
  the same inputs were already built with this TensorRT, build, check the precisions the engine actually runs
  against the plan, write ``model.engine`` + ``manifest.json`` atomically.
"""

from __future__ import annotations

import contextlib
import json
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from .. import __version__
from ..calib.cache import parse_cache
from ..device import GpuInfo, host_name, read_gpu, read_jetpack, read_l4t
from ..engine_manifest import build_manifest, engine_dir, up_to_date, utc_now, write_engine_and_manifest
from ..errors import DependencyError, EngineBuildError, InputError
from ..fsutil import atomic_write_bytes, canonical_json, file_lock, sha256_bytes, sha256_file
from ..log import get_logger
from ..onnx_io import load_model
from ..policy import resolve_plan
from ..policy.plan import ResolvedPlan
from ..progress import ProgressFactory
from ..versions import TrtVersion
from ..vocab import ENGINE_FILE, TIMING_CACHE_FILE
from .calibrator import CalibrationFeed, make_entropy_calibrator, spec_batches
from .callbacks import collect_errors, make_progress_monitor, polygraphy
from .compat import WHERE_TO_RUN, device_memory_per_profile, import_tensorrt, layer_metadata, runtime_version
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

    from ..spec import Spec
    from .calibrator import BatchSource

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


def _dims(d: trt.Dims) -> list[int]:
    return [int(d[i]) for i in range(len(d))]


def _dtype(dt: trt.DataType) -> str:
    return DTYPE_NAMES.get(str(dt.name), str(dt.name).lower())


def require_gpu() -> GpuInfo:
    """The CUDA GPU this build runs on, or DependencyError (exit 3) saying what is missing."""
    gpu = read_gpu()
    if gpu is None:
        raise DependencyError("TensorRT is installed but no CUDA GPU was found (pycuda sees no device 0)",
                              hint=WHERE_TO_RUN)
    return gpu


# --- one engine --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class CalibrationInputs:
    """Implicit INT8: the offline cache (raw bytes, or None) and, should it not fit, the data."""

    offline_cache: bytes | None
    data: Callable[[str, tuple[int, ...]], BatchSource] | None  # (input name, batch shape) -> batches
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


def apply_constraints(network: trt.INetworkDefinition, constraints: ConstraintSet) -> None:
    """Pin each constrained layer's precision and its floating-point outputs' types (weakly typed networks)."""
    import tensorrt as trt

    layers = {network.get_layer(i).name: network.get_layer(i) for i in range(network.num_layers)}
    for c in constraints.constraints:
        dt = trt.DataType.HALF if c.precision == "fp16" else trt.DataType.FLOAT
        layer = layers[c.layer]
        layer.precision = dt
        for k in c.outputs:
            layer.set_output_type(k, dt)
        _log.debug("pinned %s (%s) to %s", c.layer, c.node, c.precision)


@dataclass
class TimingCacheUse:
    """What happened to the timing cache file while configuring (filled in by the config step)."""

    path: Path
    loaded: bool = False  # the file's cache is what this build uses
    stale: bool = False  # the file was made by another TensorRT / device (or was unreadable): replace, do not merge
    config: Any = None


def load_timing_cache(config: trt.IBuilderConfig, use: TimingCacheUse) -> None:
    """Give the build the cache in ``use.path`` when it belongs to this TensorRT and device; otherwise an empty
    one, and say so. ``create_timing_cache`` returns None for a corrupt blob and ``set_timing_cache`` False for
    another TensorRT/device's cache: both are checked (passing None on would be a TypeError inside TensorRT)."""
    use.config = config
    data = b""
    if use.path.is_file():
        with file_lock(use.path):
            data = use.path.read_bytes()
    cache = None
    if data:
        try:
            cache = config.create_timing_cache(data)
        except (RuntimeError, TypeError, ValueError) as exc:
            _log.warning("ignoring timing cache %s: %s", use.path, exc)
        if cache is None:
            _log.warning("timing cache %s is unreadable (corrupt or not a timing cache); starting an empty one", use.path)
            use.stale = True
        elif config.set_timing_cache(cache, False):
            use.loaded = True
            return
        else:
            _log.warning("timing cache %s was made by another TensorRT version or GPU; starting an empty one "
                         "(it will be replaced, not merged)", use.path)
            use.stale = True
    fresh = config.create_timing_cache(b"")
    if fresh is None or not config.set_timing_cache(fresh, False):
        raise EngineBuildError("TensorRT refused an empty timing cache")


def save_timing_cache(use: TimingCacheUse) -> None:
    """Merge what this build timed with what other builds of the same TensorRT/device wrote meanwhile, under the
    file lock; a stale file is replaced."""
    config = use.config
    if config is None:
        return
    cache = config.get_timing_cache()
    if cache is None:
        return
    with file_lock(use.path):
        if use.path.is_file() and not use.stale:
            try:
                other = config.create_timing_cache(use.path.read_bytes())
            except (RuntimeError, TypeError, ValueError):
                other = None
            if other is None or not cache.combine(other, False):
                _log.warning("timing cache %s could not be merged (changed by another TensorRT or GPU meanwhile); "
                             "replacing it", use.path)
        atomic_write_bytes(use.path, bytes(cache.serialize()))


def _calibration_shape(tensor: NetTensor, profile: ProfileShapes) -> tuple[int, ...]:
    """TensorRT calibrates at the calibration profile's opt shape (Polygraphy uses the build profile)."""
    return tuple(s if s > 0 else o for s, o in zip(tensor.shape, profile.opt)) if tensor.shape else profile.opt


def setup_calibration(cfg: EngineConfig, desc: NetworkDesc, version: TrtVersion) -> tuple[CalibrationFeed, CacheVerdict]:
    """Decide offline cache vs on-device calibration before the build starts."""
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
    batches: BatchSource | None = None
    batch_size = 1
    if len(desc.inputs) == 1 and desc.inputs[0].name in by_name:
        tensor = desc.inputs[0]
        shape = _calibration_shape(tensor, by_name[tensor.name])
        batch_size = shape[0]
        data = calib.data
        if data is not None:
            if verdict.accepted:  # TensorRT should not ask; if it does, open the data only then
                batches = lambda: data(tensor.name, shape)()  # noqa: E731
            else:  # open it now: a missing folder or a wrong shape is an ordinary error, not a callback's
                batches = data(tensor.name, shape)
    feed = CalibrationFeed(offline_cache=calib.offline_cache if verdict.accepted else None, batches=batches,
                           batch_size=batch_size, cache_out=calib.cache_out)
    if verdict.accepted:
        _log.info("calibration: offline cache accepted (%s)", verdict.reason)
    else:
        _log.warning("calibration: offline cache not used (%s); calibrating on the device", verdict.reason)
        feed.prepare()  # pycuda and data now, not inside TensorRT's callback
    return feed, verdict


def _failed(what: str, errors: list[str], hint: str | None = None) -> EngineBuildError:
    shown = "\n  ".join(errors[-15:]) or "(TensorRT logged no error; run with -vv for its full log)"
    return EngineBuildError(f"{what}:\n  {shown}", hint=hint)


def build_engine(cfg: EngineConfig, progress: ProgressFactory | None = None) -> EngineBuild:
    """Parse ``cfg.onnx_path`` and build one serialized engine. Raises EngineBuildError with TensorRT's
    own messages (parser errors name the ONNX node)."""
    trt_mod = import_tensorrt()
    version = runtime_version(trt_mod)
    pg = polygraphy()
    from polygraphy.exception import PolygraphyException

    decision = cfg.decision
    _log.info("[1/5] parsing %s with TensorRT %s", cfg.onnx_path, version)
    with collect_errors() as errors:
        try:
            builder, network, _parser = pg.NetworkFromOnnxPath(str(cfg.onnx_path), strongly_typed=decision.strongly_typed)()
        except PolygraphyException as exc:
            raise _failed(f"TensorRT {version}'s ONNX parser rejected {cfg.onnx_path} ({exc})", errors,
                          "the node names above are ONNX node names; an unsupported op needs a plugin or a different "
                          "export") from None
    desc = describe_network(network)
    problems = check_profiles(desc.inputs, cfg.profiles)
    if problems:
        raise InputError("spec [[inputs]] do not fit the network:\n  " + "\n  ".join(problems))

    constraints = plan_constraints(cfg.plan, desc, decision.constrain)
    if constraints.unmatched:
        raise EngineBuildError(
            f"{len(constraints.unmatched)} layer(s) the plan keeps above INT8 are not in the network parsed from "
            f"{cfg.onnx_path.name}: {list(constraints.unmatched[:8])}",
            hint="the plan was made for another model; re-run `vqz-edge plan` / `vqz-edge calibrate`",
        )
    if constraints.constraints:
        apply_constraints(network, constraints)
        _log.info("pinned %d network layer(s) above INT8 (%s)", len(constraints.constraints), cfg.precision_constraints)

    feed: CalibrationFeed | None = None
    verdict: CacheVerdict | None = None
    if decision.calibrator:
        feed, verdict = setup_calibration(cfg, desc, version)

    profile = pg.Profile()
    for p in cfg.profiles:
        profile.add(p.name, min=list(p.min), opt=list(p.opt), max=list(p.max))
    _log.info("[2/5] configuring: mode %s, %s typed, workspace %d MiB", decision.mode,
              "strongly" if decision.strongly_typed else "weakly", cfg.workspace_bytes >> 20)
    options: dict[str, Any] = {
        "fp16": decision.fp16, "int8": decision.int8, "profiles": [profile] if cfg.profiles else None,
        "memory_pool_limits": {trt_mod.MemoryPoolType.WORKSPACE: cfg.workspace_bytes},
        "profiling_verbosity": trt_mod.ProfilingVerbosity.DETAILED,  # the inspector needs per-layer formats
        "precision_constraints": cfg.precision_constraints if constraints.constraints else None,
        "calibrator": make_entropy_calibrator(feed) if feed is not None else None,
    }
    if version.supports_progress_monitor:
        options["progress_monitor"] = make_progress_monitor(progress)
    timing = TimingCacheUse(cfg.timing_cache) if cfg.timing_cache is not None else None
    dla_fallback: list[str] = []

    def finish_config(builder: trt.Builder, network: trt.INetworkDefinition, config: trt.IBuilderConfig) -> None:
        if cfg.dla_core is not None:
            if cfg.dla_core >= builder.num_DLA_cores:
                raise InputError(f"--dla-core {cfg.dla_core}: this device has {builder.num_DLA_cores} DLA core(s)")
            config.default_device_type = trt_mod.DeviceType.DLA
            config.DLA_core = cfg.dla_core
            config.set_flag(trt_mod.BuilderFlag.GPU_FALLBACK)
            dla_fallback.extend(network.get_layer(i).name for i in range(network.num_layers)
                                if not config.can_run_on_DLA(network.get_layer(i)))
            _log.info("DLA core %d: %d layer(s) fall back to the GPU", cfg.dla_core, len(dla_fallback))
        if timing is not None:
            load_timing_cache(config, timing)

    config_loader = pg.PostprocessConfig(pg.CreateConfig(**options), finish_config)
    _log.info("[3/5] building (TensorRT tries kernels for every layer: minutes on a Jetson)")
    t0 = time.monotonic()
    with collect_errors() as errors:
        try:
            serialized = pg.EngineBytesFromNetwork((builder, network), config=config_loader)()
        except PolygraphyException:
            serialized = None
        finally:
            if feed is not None:
                feed.free()
    seconds = time.monotonic() - t0
    if feed is not None and feed.error is not None:
        raise feed.error
    if not serialized:
        raise _failed(f"TensorRT {version} failed to build the engine after {seconds:.0f}s", errors,
                      "with OBEY precision constraints a layer without a kernel in the pinned precision fails the "
                      "build; --precision-constraints prefer lets TensorRT override (and reports which layers)")
    engine_bytes = bytes(serialized)
    if timing is not None:
        save_timing_cache(timing)

    _log.info("[4/5] inspecting the engine (%.1f MiB, built in %.0fs)", len(engine_bytes) / 2**20, seconds)
    with collect_errors() as errors:
        try:
            engine = pg.EngineFromBytes(engine_bytes)()
        except PolygraphyException:
            raise _failed("TensorRT could not deserialize the engine it just built", errors) from None
    info = engine.create_engine_inspector().get_engine_information(trt_mod.LayerInformationFormat.JSON)
    return EngineBuild(
        engine=engine_bytes, trt_version=version, network=desc, constraints=constraints,
        engine_layers=parse_engine_info(info), io=engine_io(engine), device_memory_bytes=device_memory_per_profile(engine),
        seconds=seconds, dla_fallback=dla_fallback, cache_verdict=verdict,
        device_calibration_batches=feed.batches_used if feed is not None else 0,
    )


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
    path = req.plan_path or calib_dir / "plan.json"
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
            offline_cache=offline_cache, data=lambda name, shape: spec_batches(spec, name, shape),
            cache_out=out_dir / "calibration.cache",
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
            build=build_info,
        )
        write_engine_and_manifest(out_dir, result.engine, manifest)
    return BuildOutcome("built", out_dir, key, "built", decision.mode, str(version), manifest, report, notes)
