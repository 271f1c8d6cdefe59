"""One TensorRT engine from one ONNX file (:func:`build_engine`).

The TensorRT steps Polygraphy's TensorRT backend covers are Polygraphy's (NVIDIA maintains and tests them against
TensorRT 8.x - 11.x): registering the built-in plugins and parsing the ONNX file (``NetworkFromOnnxPath``), creating
the builder config across versions (``CreateConfig``: precision flags, profiles, the calibrator and its profile,
precision constraints, the workspace pool, profiling verbosity, the progress monitor), building
(``EngineBytesFromNetwork``) and deserialising (``EngineFromBytes``). vqz-edge's own code is what Polygraphy has no
equivalent for: the plan -> per-layer constraints (``constraints.py``; precisions *and* output types, which
``SetLayerPrecisions`` does not set), DLA placement with a core number and the list of layers that fall back, the
timing cache (``timing_cache.py``), and the inspector check.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..artifacts.calib_cache import parse_cache
from ..artifacts.plan import ResolvedPlan
from ..device import GpuInfo, read_gpu
from ..errors import DependencyError, EngineBuildError, InputError
from ..log import get_logger
from ..progress import ProgressFactory
from ..versions import TrtVersion
from ..vocab import CACHE_FILE
from .calibrator import CalibrationFeed, make_entropy_calibrator
from .callbacks import collect_errors, make_progress_monitor, polygraphy
from .compat import WHERE_TO_RUN, device_memory_per_profile, import_tensorrt, layer_metadata, runtime_version
from .constraints import (
    BuildDecision,
    CacheVerdict,
    ConstraintSet,
    NetLayer,
    NetTensor,
    NetworkDesc,
    ProfileShapes,
    check_calibration_cache,
    check_profiles,
    plan_constraints,
)
from .inspect import EngineLayer, parse_engine_info
from .timing_cache import TimingCacheUse, load_timing_cache, save_timing_cache

if TYPE_CHECKING:
    import tensorrt as trt

    from .calibrator import BatchSource


_log = get_logger(__name__)


# TensorRT DataType member name -> numpy-style name used in plans and manifests.
DTYPE_NAMES = {
    "FLOAT": "float32", "HALF": "float16", "BF16": "bfloat16", "INT8": "int8", "UINT8": "uint8",
    "INT32": "int32", "INT64": "int64", "BOOL": "bool", "FP8": "float8", "INT4": "int4",
}


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


def _calibration_shape(tensor: NetTensor, profile: ProfileShapes) -> tuple[int, ...]:
    """TensorRT calibrates at the calibration profile's opt shape (Polygraphy uses the build profile)."""
    return tuple(s if s > 0 else o for s, o in zip(tensor.shape, profile.opt)) if tensor.shape else profile.opt


def setup_calibration(cfg: EngineConfig, desc: NetworkDesc, version: TrtVersion) -> tuple[CalibrationFeed, CacheVerdict]:
    """Decide offline cache vs on-device calibration before the build starts."""
    calib = cfg.calibration
    if calib is None:
        raise InputError("implicit INT8 needs a calibration cache or calibration data")
    if calib.offline_cache is not None:
        cache = parse_cache(calib.offline_cache, CACHE_FILE)
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
