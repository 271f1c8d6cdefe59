"""Memory items from artifacts: a built engine directory, an ONNX file, or a build spec.

Engine directory (``model.engine`` + ``manifest.json``), measured by TensorRT at build time:

* engine: the serialized engine's size (weights + kernels; deserialised it occupies about that much),
* activations: ``max(device_memory_bytes)`` (TensorRT's scratch/activation memory for the largest profile),
* I/O buffers: every binding at the max profile shape (zero-copy on Jetson: host and device share them).

ONNX file or spec (no engine yet), estimated -- deliberately simple, documented, and conservative where it
is cheap to be:

* weights: every initializer at the planned precision. Q/DQ models: initializers that feed a
  QuantizeLinear/DequantizeLinear count 1 byte per element (INT8), other floating ones 2 (FP16). With a
  resolved plan: each node's weight inputs at that node's precision. Otherwise ``precision`` decides
  (default FP16: floating weights 2 bytes/element; ``int8``: Conv/Gemm/MatMul weights 1 byte, the rest FP16).
* activations: ONNX shape inference at the max batch, then the peak of simultaneously live intermediate
  tensors walking the graph in topological order (graph inputs/outputs excluded: they are I/O buffers),
  floating tensors at 2 bytes (FP16) or 1 byte (INT8). TensorRT fuses layers and adds tactic scratch
  space, so the engine's real device memory can differ; build the engine to get the measured number.
* I/O buffers: graph inputs and outputs at the max batch, at their declared dtype.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import onnx

from ..artifacts.engine_manifest import MANIFEST_NAME, load_manifest
from ..artifacts.plan import ResolvedPlan
from ..errors import InputError, ModelLoadError
from ..log import get_logger
from ..onnx_io import check_spec_inputs, load_model
from ..spec import load_spec
from ..vocab import ENGINE_SUFFIXES, ONNX_FILE, PLAN_FILE, QDQ_ONNX_FILE
from .budget import MIB, MemoryItem

_log = get_logger(__name__)

PRECISIONS = ("auto", "fp32", "fp16", "int8")
_BYTES = {"fp32": 4, "fp16": 2, "int8": 1}
_WEIGHT_OPS = {"Conv", "ConvTranspose", "Gemm", "MatMul"}
_QDQ_OPS = {"QuantizeLinear", "DequantizeLinear"}


@dataclass(frozen=True)
class Estimate:
    """What an artifact needs resident. ``items`` go straight into :func:`check_budget`."""

    subject: str
    kind: str  # "engine" | "onnx"
    items: tuple[MemoryItem, ...]
    precision: str
    max_batch: int | None
    notes: tuple[str, ...] = ()
    details: Mapping[str, Any] = field(default_factory=dict)

    @property
    def total_bytes(self) -> int:
        return sum(i.bytes for i in self.items)

    def to_dict(self) -> dict[str, Any]:
        return {
            "subject": self.subject, "kind": self.kind, "precision": self.precision, "max_batch": self.max_batch,
            "total_bytes": self.total_bytes,
            "items": [{"name": i.name, "bytes": i.bytes, "mib": round(i.mib, 2), "kind": i.kind, "note": i.note}
                      for i in self.items],
            "notes": list(self.notes), "details": dict(self.details),
        }


# ------------------------------------------------------------------------------------------ engines


def estimate_engine_dir(path: Path) -> Estimate:
    """Items for a built engine (directory, engine file or manifest.json)."""
    m = load_manifest(Path(path))
    mb = m.max_batch
    io_note = f"all bindings at the max profile (batch {mb})" if mb else "all bindings at their declared shapes"
    items = (
        MemoryItem(f"engine ({m.engine_file})", m.engine_bytes, f"{m.mode}, TensorRT {m.tensorrt_version}", "engine"),
        MemoryItem("activations (device memory)", m.max_device_memory_bytes,
                   f"max over {len(m.device_memory_bytes)} profile(s), measured at build", "activations"),
        MemoryItem("I/O buffers", m.io_bytes_at_max(), io_note + ", zero-copy", "io"),
    )
    return Estimate(
        subject=f"{m.model or m.directory.name} engine for {m.target or '?'} ({m.directory})", kind="engine",
        items=items, precision=m.mode, max_batch=mb,
        details={"tensorrt_version": m.tensorrt_version, "target": m.target, "manifest": str(m.path)},
    )


# ------------------------------------------------------------------------------------------ ONNX


def _elem_bytes(elem_type: int) -> int:
    try:
        return int(np.dtype(onnx.helper.tensor_dtype_to_np_dtype(elem_type)).itemsize)
    except (KeyError, TypeError, ValueError):
        return 4


def _is_float(elem_type: int) -> bool:
    return elem_type in (onnx.TensorProto.FLOAT, onnx.TensorProto.FLOAT16, onnx.TensorProto.DOUBLE,
                         onnx.TensorProto.BFLOAT16)


def _concrete_inputs(
    model: onnx.ModelProto, batch: int, input_shapes: Mapping[str, Sequence[int]] | None
) -> dict[str, tuple[int, ...]]:
    inits = {i.name for i in model.graph.initializer}
    out: dict[str, tuple[int, ...]] = {}
    for vi in model.graph.input:
        if vi.name in inits:
            continue
        if input_shapes and vi.name in input_shapes:
            out[vi.name] = tuple(int(d) for d in input_shapes[vi.name])
            continue
        dims: list[int] = []
        for i, d in enumerate(vi.type.tensor_type.shape.dim):
            if d.HasField("dim_value") and d.dim_value > 0:
                dims.append(int(d.dim_value))  # a static batch stays what the model says
            elif i == 0:
                dims.append(batch)
            else:
                raise InputError(
                    f"input {vi.name!r} has a dynamic dimension {i} ({d.dim_param or '?'}); the estimate needs "
                    "concrete sizes",
                    hint="estimate from a spec.toml whose [[inputs]] give max_shape",
                )
        out[vi.name] = tuple(dims)
    return out


def _with_shapes(model: onnx.ModelProto, shapes: Mapping[str, tuple[int, ...]]) -> onnx.ModelProto:
    m = onnx.ModelProto()
    m.CopyFrom(model)
    del m.graph.value_info[:]
    for vi in m.graph.input:
        if vi.name in shapes:
            dims = vi.type.tensor_type.shape.dim
            del dims[:]
            for d in shapes[vi.name]:
                dims.add().dim_value = int(d)
    for vi in m.graph.output:  # drop stale symbolic output dims; inference fills them in
        vi.type.tensor_type.ClearField("shape")
    try:
        return onnx.shape_inference.infer_shapes(m, strict_mode=False, data_prop=True)
    except (onnx.shape_inference.InferenceError, ValueError) as exc:
        raise InputError(f"ONNX shape inference failed at input shapes {dict(shapes)}: {exc}") from exc


def _weight_precisions(
    model: onnx.ModelProto, precision: str, plan_precisions: Mapping[str, str] | None
) -> dict[str, str]:
    """initializer name -> "fp32" | "fp16" | "int8" (floating initializers only)."""
    inits = {i.name: i for i in model.graph.initializer}
    out: dict[str, str] = {}
    qdq = any(n.op_type in _QDQ_OPS for n in model.graph.node)
    for node in model.graph.node:
        for idx, name in enumerate(node.input):
            if name not in inits or not _is_float(inits[name].data_type):
                continue
            if qdq:
                p = "int8" if node.op_type in _QDQ_OPS and idx == 0 else out.get(name, "fp16")
            elif plan_precisions is not None and node.name in plan_precisions:
                p = plan_precisions[node.name]
            elif precision == "int8":
                p = "int8" if node.op_type in _WEIGHT_OPS and idx == 1 else "fp16"
            else:
                p = precision if precision in _BYTES else "fp16"
            prev = out.get(name)
            out[name] = p if prev is None else max(prev, p, key=lambda x: _BYTES[x])
    return out


def _activation_peak(model: onnx.ModelProto, act_bytes: int) -> tuple[int, int, int]:
    """(peak live bytes, largest tensor bytes, tensors without a known shape)."""
    g = model.graph
    exclude = {i.name for i in g.initializer} | {i.name for i in g.input} | {o.name for o in g.output}
    sizes: dict[str, int] = {}
    unknown = 0
    for vi in g.value_info:
        if vi.name in exclude:
            continue
        tt = vi.type.tensor_type
        dims = [d.dim_value if d.HasField("dim_value") else -1 for d in tt.shape.dim]
        if not tt.HasField("shape") or any(d < 0 for d in dims):
            unknown += 1
            continue
        per = act_bytes if _is_float(tt.elem_type) else _elem_bytes(tt.elem_type)
        sizes[vi.name] = math.prod(dims) * per
    last_use: dict[str, int] = {}
    for i, node in enumerate(g.node):
        for name in node.input:
            if name in sizes:
                last_use[name] = i
    live = peak = 0
    alive: set[str] = set()
    for i, node in enumerate(g.node):
        for o in node.output:
            if o in sizes and o not in alive:
                live += sizes[o]
                alive.add(o)
        peak = max(peak, live)  # a node's inputs and outputs are live together
        for name in (*node.input, *node.output):
            if name in alive and last_use.get(name, -1) <= i:
                live -= sizes[name]
                alive.discard(name)
    return peak, max(sizes.values(), default=0), unknown


def estimate_onnx(
    path: Path,
    *,
    batch: int = 1,
    input_shapes: Mapping[str, Sequence[int]] | None = None,
    precision: str = "auto",
    plan: Any | None = None,
    spec: Any | None = None,
) -> Estimate:
    """Items for an ONNX model that has no engine yet (see module docstring for the method).

    ``plan`` is a :class:`vqz_edge.artifacts.plan.ResolvedPlan` (node name -> precision); ``spec`` a
    :class:`vqz_edge.spec.Spec` whose [[inputs]] must describe the model (checked first).
    """
    if precision not in PRECISIONS:
        raise InputError(f"precision {precision!r} not in {PRECISIONS}")
    if batch <= 0:
        raise InputError(f"batch must be positive, got {batch}")
    path = Path(path)
    model = load_model(path)
    if spec is not None:
        check_spec_inputs(spec.inputs, model, str(path), spec.path)
    qdq = any(n.op_type in _QDQ_OPS for n in model.graph.node)
    plan_prec: dict[str, str] | None = None
    if plan is not None:
        plan_prec = {layer.name: layer.precision for layer in plan.layers}
    if precision == "auto":
        if qdq or (plan_prec and "int8" in plan_prec.values()):
            resolved = "int8"
        else:
            resolved = "fp16"
    else:
        resolved = precision
    shapes = _concrete_inputs(model, batch, input_shapes)
    mb = next(iter(shapes.values()))[0] if shapes else batch
    weight_prec = _weight_precisions(model, resolved, plan_prec)
    w_bytes = 0
    params = 0
    by_prec: dict[str, int] = {}
    for init in model.graph.initializer:
        n = math.prod(init.dims) if init.dims else 1
        params += n
        if _is_float(init.data_type):
            p = weight_prec.get(init.name, resolved if resolved != "int8" else "fp16")
            b = n * _BYTES[p]
        else:
            p = onnx.TensorProto.DataType.Name(init.data_type).lower()
            b = n * _elem_bytes(init.data_type)
        by_prec[p] = by_prec.get(p, 0) + b
        w_bytes += b
    inferred = _with_shapes(model, shapes)
    act_bytes_per = _BYTES["int8"] if resolved == "int8" else _BYTES["fp32"] if resolved == "fp32" else _BYTES["fp16"]
    peak, _, unknown = _activation_peak(inferred, act_bytes_per)
    io_bytes = 0
    for vi in [*inferred.graph.input, *inferred.graph.output]:
        if vi.name in {i.name for i in inferred.graph.initializer}:
            continue
        dims = [d.dim_value if d.HasField("dim_value") else 1 for d in vi.type.tensor_type.shape.dim]
        io_bytes += math.prod(dims) * _elem_bytes(vi.type.tensor_type.elem_type)
    notes = []
    if unknown:
        notes.append(f"{unknown} intermediate tensor(s) without an inferred shape were left out of the activations")
    if any(n.op_type in ("If", "Loop", "Scan") for n in model.graph.node):
        notes.append("control-flow subgraphs (If/Loop/Scan) are not walked; activations may be under-estimated")
    split = ", ".join(f"{k} {v / MIB:.1f} MiB" for k, v in sorted(by_prec.items()))
    wnote = f"{params / 1e6:.2f}M params: {split}" + (" (Q/DQ model)" if qdq else " (plan)" if plan_prec else "")
    items = (
        MemoryItem("weights", w_bytes, wnote, "weights"),
        MemoryItem("activations (estimated)", peak, f"peak live tensors at batch {mb}, {resolved} activations", "activations"),
        MemoryItem("I/O buffers", io_bytes, f"inputs + outputs at batch {mb} (zero-copy on Jetson: counted once)", "io"),
    )
    return Estimate(
        subject=f"{path.name} (no engine yet: estimated, {resolved}, batch {mb})", kind="onnx", items=items,
        precision=resolved, max_batch=mb, notes=tuple(notes),
        details={"params": params, "weights_by_precision": by_prec, "input_shapes": {k: list(v) for k, v in shapes.items()},
                 "qdq": qdq},
    )


# ------------------------------------------------------------------------------------------ specs


def onnx_for_spec(spec: Any, *, search_roots: Sequence[Path] = ()) -> tuple[Path, Path | None]:
    """The ONNX a spec builds from, and its plan.json if one exists: the spec's own ``.onnx`` source, else
    ``calibration/<model>/model.qdq.onnx`` / ``model.onnx`` under the current directory or the spec's."""
    name = spec.model.name
    roots = [Path.cwd(), *(search_roots or ())]
    if spec.path is not None:
        roots.append(Path(spec.path).parent)
    plan: Path | None = None
    for root in roots:
        p = root / "calibration" / name / PLAN_FILE
        if p.is_file():
            plan = p
            break
    if spec.model.source.endswith(".onnx"):
        p = spec.resolve_path(spec.model.source)
        if p.is_file():
            return p, plan
    for root in roots:
        for fname in (QDQ_ONNX_FILE, ONNX_FILE):
            p = root / "calibration" / name / fname
            if p.is_file():
                return p, plan
    raise ModelLoadError(
        f"no ONNX found for spec model {name!r} (looked for its .onnx source and calibration/{name}/model[.qdq].onnx "
        f"under {', '.join(str(r) for r in roots)})",
        hint="export it first (vqz-edge export / vqz-edge demo), or point check-memory at the .onnx file",
    )


def estimate_spec(path: Path, *, precision: str = "auto", batch: int | None = None) -> Estimate:
    """Items for a spec.toml: its ONNX (see :func:`onnx_for_spec`) at the spec's max input shapes."""
    import json

    spec = load_spec(Path(path))
    onnx_path, plan_path = onnx_for_spec(spec)
    shapes = {i.name: list(i.max_shape or i.shape) for i in spec.inputs}
    if batch is not None:
        shapes = {k: [batch, *v[1:]] for k, v in shapes.items()}
    plan = None
    if plan_path is not None and precision == "auto":
        try:
            plan = ResolvedPlan.from_dict(json.loads(plan_path.read_text(encoding="utf-8")))
        except (ValueError, KeyError, TypeError) as exc:
            _log.warning("ignoring %s: %s", plan_path, exc)
    if precision == "auto" and plan is None and spec.precision.default in ("fp32", "fp16", "int8"):
        qdq = onnx_path.name.endswith(".qdq.onnx")
        precision = "auto" if qdq else spec.precision.default
    est = estimate_onnx(onnx_path, input_shapes=shapes, precision=precision, plan=plan, spec=spec)
    return Estimate(
        subject=f"spec {Path(path).name}: {est.subject}", kind=est.kind, items=est.items, precision=est.precision,
        max_batch=est.max_batch, notes=est.notes, details={**est.details, "onnx": str(onnx_path),
                                                           "plan": str(plan_path) if plan_path else None},
    )


def estimate_path(path: Path, *, batch: int | None = None, precision: str = "auto") -> Estimate:
    """Dispatch on what ``path`` is: engine dir / engine file / manifest.json, spec .toml, or .onnx."""
    path = Path(path)
    if not path.exists():
        raise InputError(f"{path} does not exist", hint="give an engine directory, a spec.toml or an .onnx file")
    if path.is_dir() or path.name == MANIFEST_NAME or path.suffix in ENGINE_SUFFIXES:
        if batch is not None or precision != "auto":
            _log.warning("--batch/--precision are ignored for a built engine: its manifest has the measured numbers")
        return estimate_engine_dir(path)
    if path.suffix == ".toml":
        return estimate_spec(path, precision=precision, batch=batch)
    if path.suffix == ".onnx":
        return estimate_onnx(path, batch=batch or 1, precision=precision)
    raise InputError(f"{path}: expected an engine directory, a .engine file, a spec .toml or an .onnx file")


def parse_size(text: str) -> int:
    """'350MiB', '1.5GiB', '512M', '2G', '1048576' -> bytes."""
    t = text.strip().replace(" ", "")
    units = {"": 1, "b": 1, "k": 1 << 10, "kb": 1 << 10, "kib": 1 << 10, "m": MIB, "mb": MIB, "mib": MIB,
             "g": 1 << 30, "gb": 1 << 30, "gib": 1 << 30}
    i = len(t)
    while i and not (t[i - 1].isdigit() or t[i - 1] == "."):
        i -= 1
    num, unit = t[:i], t[i:].lower()
    try:
        value = float(num)
    except ValueError as exc:
        raise InputError(f"cannot read size {text!r}; use e.g. 350MiB or 1.5GiB") from exc
    if unit not in units or not 0 <= value * units[unit] <= MAX_SIZE_BYTES:  # also refuses nan and 1e400 (inf)
        raise InputError(f"cannot read size {text!r}; a finite size up to 1 PiB with a unit: B, KiB, MiB, GiB",
                         hint="e.g. detector=350MiB")
    return int(value * units[unit])


MAX_SIZE_BYTES = float(1 << 50)


def resident_item(spec: str) -> MemoryItem:
    """``NAME=SIZE`` (e.g. ``detector=350MiB``) or a path (engine dir / .onnx / spec) estimated as a whole."""
    if "=" in spec and not Path(spec).exists():
        name, size = spec.split("=", 1)
        return MemoryItem(f"resident: {name.strip()}", parse_size(size), "given on the command line", "resident")
    est = estimate_path(Path(spec))
    return MemoryItem(f"resident: {Path(spec).name}", est.total_bytes, f"{est.kind} estimate ({est.precision})", "resident")
