"""Pure build logic: no tensorrt import, unit-tested on any host.

The TensorRT builder (``builder.py``) describes the parsed network as plain data (:class:`NetworkDesc`)
and asks this module what to do:

- :func:`decide_build`: mode (fp16 / implicit / explicit), strong vs weak typing, builder flags, per
  TensorRT version (8.5, 8.6, 10.x, 11.x) -- the decisions; the version facts live in ``versions.TrtVersion``.
- :func:`plan_constraints`: which network layers get a precision + output type, from the resolved plan.
- :func:`check_calibration_cache`: whether an offline calibration cache fits this TensorRT and network.
- :func:`check_profiles`: spec input shapes vs the network inputs.
- :func:`build_key`: the idempotence key (same inputs + same TensorRT -> same key -> skip the build).
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

from ..artifacts.plan import ResolvedPlan
from ..errors import InputError
from ..fsutil import canonical_json, sha256_bytes
from ..versions import TrtVersion
from ..vocab import CLI_BUILD_MODES, ONNX_FILE, QDQ_ONNX_FILE

PRECISION_CONSTRAINTS = ("obey", "prefer")
FLOAT_DTYPES = ("float32", "float16")
# Network layer types whose INT8 kernels need an input scale when there is no plan (LayerType names).
INT8_COMPUTE_TYPES = ("CONVOLUTION", "DECONVOLUTION", "MATRIX_MULTIPLY", "FULLY_CONNECTED")
# Layer types that never get a precision constraint (no arithmetic, or they define the types).
UNCONSTRAINED_TYPES = ("CONSTANT", "SHAPE", "QUANTIZE", "DEQUANTIZE", "CAST", "ASSERTION")
EXPECTED_ALGORITHM = "EntropyCalibration2"


# --- the parsed network, as plain data ---------------------------------------------------------


@dataclass(frozen=True)
class NetTensor:
    name: str
    dtype: str  # numpy-style name: float32, float16, int8, int32, int64, bool, ...
    shape: tuple[int, ...] = ()  # -1 for dynamic dimensions (recorded for network inputs)


@dataclass(frozen=True)
class NetLayer:
    name: str
    type: str  # TensorRT LayerType name, e.g. "CONVOLUTION"
    inputs: tuple[str, ...]
    outputs: tuple[NetTensor, ...]
    metadata: str = ""  # "[ONNX Layer: <node>]" entries from the ONNX parser (TensorRT 8.6+)

    @property
    def onnx_nodes(self) -> tuple[str, ...]:
        """The ONNX nodes this layer came from: from its metadata, else its own name (the parser
        names a node's main layer after the node)."""
        return onnx_nodes_from_metadata(self.metadata) or (self.name,)


@dataclass(frozen=True)
class NetworkDesc:
    inputs: tuple[NetTensor, ...]
    layers: tuple[NetLayer, ...]

    def tensor_names(self) -> set[str]:
        names = {t.name for t in self.inputs}
        for layer in self.layers:
            names.update(t.name for t in layer.outputs)
        return names

    def layers_by_node(self) -> dict[str, list[NetLayer]]:
        out: dict[str, list[NetLayer]] = {}
        for layer in self.layers:
            for node in layer.onnx_nodes:
                out.setdefault(node, []).append(layer)
        return out


_ONNX_LAYER_RE = re.compile(r"\[ONNX Layer: (.*?)\]")


def onnx_nodes_from_metadata(metadata: str) -> tuple[str, ...]:
    """'[ONNX Layer: /a/Conv]\\x1f[ONNX Layer: /a/Relu]' -> ('/a/Conv', '/a/Relu'), first-seen order.

    Each entry is ``[ONNX Layer: <node name> | <property> | ...]``: the ONNX parser appends the node's doc-string
    lines on 8.6 (onnx-tensorrt ``processMetadata``, 8.6-GA) and ``Local Function: <f>`` on 10.x; the node name
    is what precedes the first `` | ``."""
    return tuple(dict.fromkeys(entry.split(" | ", 1)[0].strip() for entry in _ONNX_LAYER_RE.findall(metadata or "")))


# --- version branching decisions ---------------------------------------------------------------


@dataclass(frozen=True)
class BuildDecision:
    mode: str  # fp16 | implicit | explicit
    strongly_typed: bool
    fp16: bool  # BuilderFlag.FP16
    int8: bool  # BuilderFlag.INT8
    calibrator: bool  # IInt8EntropyCalibrator2 (implicit quantization)
    constrain: tuple[str, ...]  # plan precisions pinned with per-layer constraints
    notes: tuple[str, ...] = ()  # things to tell the user (deprecations, precision trade-offs)

    @property
    def onnx_name(self) -> str:
        return QDQ_ONNX_FILE if self.mode == "explicit" else ONNX_FILE


def decide_build(
    version: TrtVersion, mode: str, *, have_cache: bool, have_qdq: bool, plan_has_fp16: bool = False,
    dla: bool = False,
) -> BuildDecision:
    """What to build, for this TensorRT version. ``mode`` is one of vocab.CLI_BUILD_MODES."""
    if mode not in CLI_BUILD_MODES:
        raise InputError(f"--mode {mode!r} is not one of {list(CLI_BUILD_MODES)}")
    if mode == "auto":
        if have_qdq:
            mode = "explicit"
        elif have_cache and version.supports_implicit_int8:
            mode = "implicit"
        else:
            raise InputError(
                "--mode auto found neither model.qdq.onnx nor (for TensorRT <= 10) calibration.cache",
                hint="run `vqz-edge calibrate` first, or build without INT8: --mode fp16",
            )
    notes: list[str] = []
    if mode == "fp16":
        if not version.supports_weak_typing:
            raise InputError(
                f"TensorRT {version} has no FP16 builder flag (strong typing only): --mode fp16 needs an "
                "FP16 ONNX model", hint="use --mode explicit with the Q/DQ model",
            )
        return BuildDecision(mode="fp16", strongly_typed=False, fp16=True, int8=False, calibrator=False,
                             constrain=("fp32",))
    if mode == "implicit":
        if not version.supports_implicit_int8:
            raise InputError(
                f"TensorRT {version} has no implicit INT8 calibration (removed in TensorRT 11)",
                hint="use --mode explicit (builds from calibration/<model>/model.qdq.onnx)",
            )
        if version.implicit_int8_deprecated:
            notes.append(
                f"implicit INT8 calibration is deprecated since TensorRT 10.1 (this is {version}); "
                "--mode explicit builds the same plan from model.qdq.onnx"
            )
        return BuildDecision(mode="implicit", strongly_typed=False, fp16=True, int8=True, calibrator=True,
                             constrain=("fp16", "fp32"), notes=tuple(notes))
    # explicit: Q/DQ nodes in the model decide INT8 placement.
    if not have_qdq:
        raise InputError("--mode explicit needs model.qdq.onnx", hint="run `vqz-edge calibrate` first")
    strong = version.supports_strongly_typed
    if strong and version.supports_weak_typing and (plan_has_fp16 or dla):
        strong = False
        why = "the plan keeps layers in FP16" if plan_has_fp16 else "DLA needs the FP16/INT8 builder flags"
        notes.append(
            f"weakly typed explicit build ({why}; a strongly typed network would run the FP32 ONNX's "
            "non-quantized layers in FP32)"
        )
    if strong:
        if plan_has_fp16:
            notes.append(
                f"TensorRT {version} builds strongly typed: layers the plan keeps in FP16 run in FP32 "
                "(the Q/DQ model is FP32 outside the quantized layers)"
            )
        return BuildDecision(mode="explicit", strongly_typed=True, fp16=False, int8=False, calibrator=False,
                             constrain=(), notes=tuple(notes))
    return BuildDecision(mode="explicit", strongly_typed=False, fp16=True, int8=True, calibrator=False,
                         constrain=("fp16", "fp32"), notes=tuple(notes))


def check_dla(target: str, dla_cores: int, dla_core: int | None) -> None:
    if dla_core is None:
        return
    if dla_cores <= 0:
        raise InputError(f"--dla-core {dla_core}: target {target} has no DLA", hint="build for the GPU (no --dla-core)")
    if not 0 <= dla_core < dla_cores:
        raise InputError(f"--dla-core {dla_core}: target {target} has DLA cores 0..{dla_cores - 1}")


def workspace_bytes(spec_mib: int | None, ram_bytes: int) -> int:
    """TensorRT workspace (tactic scratch) pool limit: the spec's build.workspace_mib, else 1/8 of the
    module's shared RAM capped at 4 GiB (Jetson GPU memory is the system RAM)."""
    if spec_mib is not None:
        return int(spec_mib) << 20
    return int(min(ram_bytes // 8, 4 << 30))


# --- plan -> per-layer constraints ---------------------------------------------------------------


@dataclass(frozen=True)
class LayerConstraint:
    layer: str  # network layer name
    node: str  # the plan's ONNX node it implements
    precision: str  # fp16 | fp32
    outputs: tuple[int, ...]  # output indices whose type is pinned to the same precision


@dataclass(frozen=True)
class ConstraintSet:
    constraints: tuple[LayerConstraint, ...]
    unmatched: tuple[str, ...]  # plan layers to pin that the network does not contain


def plan_constraints(plan: ResolvedPlan | None, network: NetworkDesc, precisions: Sequence[str]) -> ConstraintSet:
    """Every network layer that implements a layer the plan keeps above INT8 (``plan.kept_high()``),
    restricted to ``precisions`` (from BuildDecision.constrain), gets that precision, and so do its
    floating-point outputs. Integer/shape outputs and non-arithmetic layers are left alone."""
    if plan is None or not precisions:
        return ConstraintSet((), ())
    by_node = network.layers_by_node()
    out: list[LayerConstraint] = []
    unmatched: list[str] = []
    seen: set[str] = set()
    for decision in plan.kept_high():
        if decision.precision not in precisions:
            continue
        layers = by_node.get(decision.name, [])
        if not layers:
            unmatched.append(decision.name)
        for layer in layers:
            if layer.type in UNCONSTRAINED_TYPES or layer.name in seen:
                continue
            float_outputs = tuple(i for i, t in enumerate(layer.outputs) if t.dtype in FLOAT_DTYPES)
            if not float_outputs:
                continue
            seen.add(layer.name)
            out.append(LayerConstraint(layer.name, decision.name, decision.precision, float_outputs))
    return ConstraintSet(tuple(out), tuple(unmatched))


def expected_precision(planned: str, mode: str) -> str:
    """What a plan layer should run in for this build mode (an FP16 build has no INT8)."""
    if mode == "fp16" and planned == "int8":
        return "fp16"
    return planned


# --- spec input shapes vs network inputs ---------------------------------------------------------


@dataclass(frozen=True)
class ProfileShapes:
    name: str
    min: tuple[int, ...]
    opt: tuple[int, ...]
    max: tuple[int, ...]


def check_profiles(network_inputs: Sequence[NetTensor], profiles: Sequence[ProfileShapes]) -> list[str]:
    """Problems (empty list: fine) with the spec's min/opt/max shapes for this network."""
    problems: list[str] = []
    by_name = {p.name: p for p in profiles}
    for tensor in network_inputs:
        p = by_name.get(tensor.name)
        dynamic = any(d < 0 for d in tensor.shape)
        if p is None:
            if dynamic:
                problems.append(f"network input {tensor.name!r} {list(tensor.shape)} has dynamic dimensions "
                                "but the spec has no [[inputs]] entry for it")
            continue
        for label, shape in (("min", p.min), ("opt", p.opt), ("max", p.max)):
            if len(shape) != len(tensor.shape):
                problems.append(f"input {tensor.name!r}: spec {label} shape {list(shape)} has rank {len(shape)}, "
                                f"the network input {list(tensor.shape)} has rank {len(tensor.shape)}")
                break
            bad = [i for i, (s, d) in enumerate(zip(shape, tensor.shape)) if d >= 0 and s != d]
            if bad:
                problems.append(f"input {tensor.name!r}: spec {label} shape {list(shape)} differs from the "
                                f"network's fixed dimensions {list(tensor.shape)} at axis {bad}")
                break
    known = {t.name for t in network_inputs}
    for name in sorted(set(by_name) - known):
        problems.append(f"spec input {name!r} is not an input of the network (inputs: {sorted(known)})")
    return problems


# --- calibration cache acceptance -------------------------------------------------------------------


@dataclass(frozen=True)
class CacheVerdict:
    accepted: bool
    reason: str
    missing: tuple[str, ...] = ()  # tensors INT8 layers need that the cache lacks
    extra: tuple[str, ...] = ()  # cache tensors the network does not have (harmless; reported)


def required_scales(network: NetworkDesc, plan: ResolvedPlan | None) -> set[str]:
    """Tensors whose scale an implicit-INT8 build needs from the cache: the float network inputs and
    the activation inputs of every layer implementing an INT8-planned node (without a plan: of every
    Conv/Deconv/MatMul layer). Weights and constants are quantized by TensorRT itself."""
    constant_outputs = {t.name for layer in network.layers if layer.type == "CONSTANT" for t in layer.outputs}
    int8_nodes = None if plan is None else {d.name for d in plan.by_precision("int8")}
    needed = {t.name for t in network.inputs if t.dtype in FLOAT_DTYPES}
    for layer in network.layers:
        if layer.type in UNCONSTRAINED_TYPES:
            continue
        if int8_nodes is None:
            if layer.type not in INT8_COMPUTE_TYPES:
                continue
        elif not int8_nodes.intersection(layer.onnx_nodes):
            continue
        needed.update(name for name in layer.inputs if name and name not in constant_outputs)
    return needed


def check_calibration_cache(
    *, algorithm: str, version_code: int, names: Iterable[str], trt_version: TrtVersion, network: NetworkDesc,
    plan: ResolvedPlan | None,
) -> CacheVerdict:
    """TensorRT ignores a cache whose header version differs from its own and silently leaves layers
    without scales out of INT8; we check both up front so the outcome is stated, not discovered."""
    if algorithm != EXPECTED_ALGORITHM:
        return CacheVerdict(False, f"cache algorithm is {algorithm!r}, the calibrator is {EXPECTED_ALGORITHM}")
    if version_code != trt_version.code:
        return CacheVerdict(
            False, f"cache header is for TensorRT version code {version_code}, this TensorRT {trt_version} is "
            f"{trt_version.code} (recalibrate with the target's TensorRT version)",
        )
    have = set(names)
    missing = tuple(sorted(required_scales(network, plan) - have))
    extra = tuple(sorted(have - network.tensor_names()))
    if missing:
        shown = ", ".join(missing[:8]) + (" ..." if len(missing) > 8 else "")
        return CacheVerdict(False, f"cache lacks {len(missing)} tensor(s) INT8 layers need: {shown}", missing, extra)
    return CacheVerdict(True, "header version and tensor names match the network", (), extra)


# --- idempotence ---------------------------------------------------------------------------------------


def build_key(
    *, vqz_edge_version: str, model: str, target: str, trt_version: str, mode: str, onnx_sha256: str,
    cache_sha256: str | None, spec_sha256: str, plan_sha256: str | None, dla_core: int | None,
    precision_constraints: str, workspace_bytes: int,
) -> str:
    """sha256 over everything that decides the engine's content. Same key -> the build is skipped."""
    doc: Mapping[str, object] = {
        "vqz_edge_version": vqz_edge_version, "model": model, "target": target, "tensorrt_version": trt_version,
        "mode": mode, "onnx_sha256": onnx_sha256, "cache_sha256": cache_sha256, "spec_sha256": spec_sha256,
        "plan_sha256": plan_sha256, "dla_core": dla_core, "precision_constraints": precision_constraints,
        "workspace_bytes": workspace_bytes,
    }
    return sha256_bytes(canonical_json(doc).encode("utf-8"))
