"""The calibration memory budget: how many images per ONNX Runtime run, and which tensors in which pass.

Calibration makes every tracked activation an extra output of an ONNX Runtime session and keeps two sets of
output buffers (one filled by ORT while the other is histogrammed). Its peak memory is therefore

    process before calibration  +  the model inside ORT (~ weights x ORT_MODEL_FACTOR)  +  RUNTIME_OVERHEAD
    + execution batch x (2 x bytes of one pass's tensors per image + ORT's own intermediates per image)

The plan picks the execution batch (a divisor of the calibration batch, so the first-batch range -- which sets
every histogram's bin width -- is the same whatever the plan) and, when even one image of every tensor does not
fit, splits the tensors into groups calibrated in separate passes over the data (each pass a session whose extra
outputs are one group): forward passes traded for memory. It never uses more than it needs: beyond
``SLOT_TARGET`` bytes of activations per buffer set a larger batch is slower, not faster -- ORT then writes the
extra outputs to memory and the kernel reads them back from memory instead of the last-level cache (measured on
the demo MobileNetV2, 27 MiB per image, 1 ORT thread: 43 ms per image with outputs at batch 1, 64 ms at batch 8).
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import onnx

from ..errors import CalibrationError, InputError

MiB = 1 << 20
GiB = 1 << 30
DEFAULT_FRACTION = 0.5  # of the host's physical memory: --max-memory's default
SLOT_TARGET = 32 * MiB  # activations per buffer set: about a last-level cache (ORT writes, the kernel reads it warm)
ORT_MODEL_FACTOR = 2.0  # ORT's copy of the weights plus the CPU provider's pre-packed MatMul/Conv weights
INTERMEDIATE_FACTOR = 4  # ORT's own live intermediates per image, in units of the largest activation
HEADROOM = 0.85  # plan to 85% of the budget: allocator slack, Python objects, the data pipeline
# ORT's runtime once a session exists and runs (thread pools, kernel registry, the serialised model), thresholds and
# the Q/DQ writer: measured in benchmarks/calibration_scaling.py, the demo MobileNetV2 peaked at 520 MiB against an
# estimate of 349 MiB without this term (the ViT-S: 1437 against 1354)
RUNTIME_OVERHEAD = 160 * MiB


def host_memory_bytes() -> int:
    """Physical memory of this host (MemTotal)."""
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return int(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES"))


def default_budget() -> int:
    return int(host_memory_bytes() * DEFAULT_FRACTION)


def current_rss() -> int:
    """Resident memory of this process now (VmRSS), 0 where /proc is absent."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


def peak_rss() -> int:
    """High-water mark of this process's resident memory (VmHWM), 0 where /proc is absent."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


_UNITS = {"": 1, "b": 1, "k": 1 << 10, "kb": 1000, "kib": 1 << 10, "m": MiB, "mb": 10**6, "mib": MiB,
          "g": GiB, "gb": 10**9, "gib": GiB, "t": 1 << 40, "tb": 10**12, "tib": 1 << 40}


def parse_memory(text: str) -> int:
    """'8G', '8GiB', '1500M', '2.5GB', '8589934592' -> bytes (K/M/G/T without B are binary units)."""
    s = str(text).strip().lower().replace(" ", "")
    num = s.rstrip("abcdefghijklmnopqrstuvwxyz")
    unit = s[len(num):]
    try:
        value = float(num)
    except ValueError:
        raise InputError(f"memory size {text!r} is not a number with an optional unit (e.g. 8G, 1500MiB)") from None
    if unit not in _UNITS:
        raise InputError(f"memory size {text!r}: unknown unit {unit!r}; use K, M, G, T (binary) or KB, MB, GB (decimal)")
    nbytes = value * _UNITS[unit]
    if not math.isfinite(nbytes) or nbytes <= 0:
        raise InputError(f"memory size {text!r} must be positive and finite")
    return int(nbytes)


def fmt_bytes(n: float) -> str:
    return f"{n / GiB:.2f} GiB" if n >= GiB else f"{n / MiB:.0f} MiB"


def weight_bytes(model: onnx.ModelProto) -> int:
    total = 0
    for t in model.graph.initializer:
        n = int(np.prod(t.dims)) if len(t.dims) else 1
        total += n * onnx.helper.tensor_dtype_to_np_dtype(t.data_type).itemsize
    return total


_DTYPE_BYTES: dict[int, int] = {onnx.TensorProto.FLOAT: 4, onnx.TensorProto.FLOAT16: 2, onnx.TensorProto.DOUBLE: 8,
                onnx.TensorProto.BFLOAT16: 2}


def static_tensor_bytes(model: onnx.ModelProto, tensors: Sequence[str]) -> dict[str, int | None]:
    """Bytes of each tensor for one image, from shape inference with the batch fixed to 1 (None where unknown)."""
    m = _graph_only(model)
    inits = {i.name for i in m.graph.initializer}
    for vi in m.graph.input:
        if vi.name in inits:
            continue
        dims = vi.type.tensor_type.shape.dim
        if dims and not dims[0].HasField("dim_value"):
            dims[0].dim_value = 1
    try:
        inferred = onnx.shape_inference.infer_shapes(m, data_prop=True)
    except Exception:  # noqa: BLE001 -- onnx raises several unrelated types; fall back to probing
        inferred = m
    shapes: dict[str, tuple[int, list[int | None]]] = {}  # elem type, dims
    for vi in [*inferred.graph.input, *inferred.graph.value_info, *inferred.graph.output]:
        tt = vi.type.tensor_type
        shapes[vi.name] = (tt.elem_type, [d.dim_value if d.HasField("dim_value") else None for d in tt.shape.dim])
    out: dict[str, int | None] = {}
    for name in tensors:
        elem, dims = shapes.get(name, (0, [None]))
        if elem not in _DTYPE_BYTES or any(d is None for d in dims):
            out[name] = None
        else:
            out[name] = math.prod(int(d or 0) for d in dims) * _DTYPE_BYTES[elem]
    return out


def _graph_only(model: onnx.ModelProto) -> onnx.ModelProto:
    """The model with its large initializers emptied (shape inference needs their shapes, not their values)."""
    m = onnx.ModelProto()
    m.ir_version, m.producer_name = model.ir_version, model.producer_name
    m.opset_import.extend(model.opset_import)
    g = m.graph
    g.name = model.graph.name
    g.node.extend(model.graph.node)
    g.input.extend(model.graph.input)
    g.output.extend(model.graph.output)
    g.value_info.extend(model.graph.value_info)
    for t in model.graph.initializer:
        if int(np.prod(t.dims)) <= 64:  # small constants (shapes, axes) feed data propagation
            g.initializer.append(t)
        else:
            g.input.append(onnx.helper.make_tensor_value_info(t.name, t.data_type, list(t.dims)))
    return m


@dataclass(frozen=True)
class MemoryPlan:
    """How calibration fits its budget. ``groups`` are the tensors of each pass, in graph order."""

    budget: int
    batch_size: int  # the calibration batch: its first batch sets every histogram's bin width
    execution_batch: int  # images per ONNX Runtime run
    groups: tuple[tuple[str, ...], ...]
    bytes_per_image: int  # all tracked tensors, one image
    group_bytes_per_image: tuple[int, ...]
    model_bytes: int
    base_bytes: int
    estimated_peak: int
    probed: tuple[str, ...] = field(default=())  # tensors whose size shape inference could not tell

    @property
    def passes(self) -> int:
        return len(self.groups)

    @property
    def first_batch_rerun(self) -> bool:
        """True when the first calibration batch is run once more per pass to fix the bin widths first."""
        return self.execution_batch < self.batch_size

    def describe(self) -> str:
        per = "all tensors in one pass" if self.passes == 1 else f"{self.passes} passes over the data, one group of tensors each"
        return (f"memory budget {fmt_bytes(self.budget)}: batch {self.execution_batch} of {self.batch_size} per run, "
                f"{per}; activations {fmt_bytes(self.bytes_per_image)} per image, model {fmt_bytes(self.model_bytes)}, "
                f"estimated peak {fmt_bytes(self.estimated_peak)}")

    def to_dict(self) -> dict[str, Any]:
        return {
            "budget_bytes": self.budget, "batch_size": self.batch_size, "execution_batch": self.execution_batch,
            "passes": self.passes, "tensors_per_pass": [len(g) for g in self.groups],
            "bytes_per_image": self.bytes_per_image, "group_bytes_per_image": list(self.group_bytes_per_image),
            "model_bytes": self.model_bytes, "base_bytes": self.base_bytes, "estimated_peak_bytes": self.estimated_peak,
            "first_batch_rerun": self.first_batch_rerun, "probed_tensors": len(self.probed),
        }


def _divisors_desc(n: int) -> list[int]:
    return [d for d in range(n, 0, -1) if n % d == 0]


def plan_memory(
    tensor_bytes: dict[str, int],
    order: Sequence[str],
    *,
    batch_size: int,
    budget: int,
    model_bytes: int,
    base_bytes: int,
    probed: Sequence[str] = (),
) -> MemoryPlan:
    """Choose the execution batch and the tensor groups for ``budget`` (see the module docstring)."""
    if batch_size <= 0:
        raise InputError(f"batch size must be positive, got {batch_size}")
    if budget <= 0:
        raise InputError(f"memory budget must be positive, got {budget}")
    per_image = sum(tensor_bytes[n] for n in order)
    largest = max([tensor_bytes[n] for n in order] or [0])
    fixed = base_bytes + int(model_bytes * ORT_MODEL_FACTOR) + RUNTIME_OVERHEAD
    usable = int(budget * HEADROOM) - fixed
    if usable <= 0:
        raise CalibrationError(
            f"memory budget {fmt_bytes(budget)} is below what the process and the model alone take "
            f"({fmt_bytes(base_bytes)} + {ORT_MODEL_FACTOR:g} x {fmt_bytes(model_bytes)} of weights)",
            hint=f"raise --max-memory to at least {fmt_bytes((fixed + 2 * largest + INTERMEDIATE_FACTOR * largest) / HEADROOM)}",
        )

    def cost(batch: int, group_bytes: int) -> int:
        return batch * (2 * group_bytes + INTERMEDIATE_FACTOR * largest)

    for batch in _divisors_desc(batch_size):
        if batch > 1 and batch * per_image > SLOT_TARGET:
            continue  # no faster than a smaller batch, only bigger
        if cost(batch, per_image) <= usable:
            return MemoryPlan(budget, batch_size, batch, (tuple(order),), per_image, (per_image,), model_bytes,
                              base_bytes, fixed + cost(batch, per_image), tuple(probed))
    # one image of every tensor does not fit: groups in graph order, each as large as fits
    limit = (usable - INTERMEDIATE_FACTOR * largest) // 2
    if limit < largest:
        raise CalibrationError(
            f"memory budget {fmt_bytes(budget)} cannot hold one image of the largest activation "
            f"({fmt_bytes(largest)}) with the model ({fmt_bytes(fixed)} with the process)",
            hint=f"raise --max-memory to at least {fmt_bytes((fixed + cost(1, largest)) / HEADROOM)}",
        )
    groups: list[tuple[str, ...]] = []
    sizes: list[int] = []
    cur: list[str] = []
    cur_bytes = 0
    for n in order:
        if cur and cur_bytes + tensor_bytes[n] > limit:
            groups.append(tuple(cur))
            sizes.append(cur_bytes)
            cur, cur_bytes = [], 0
        cur.append(n)
        cur_bytes += tensor_bytes[n]
    if cur:
        groups.append(tuple(cur))
        sizes.append(cur_bytes)
    return MemoryPlan(budget, batch_size, 1, tuple(groups), per_image, tuple(sizes), model_bytes, base_bytes,
                      fixed + cost(1, max(sizes)), tuple(probed))


FINETUNE_FACTOR = 4  # torch keeps each activation for the backward pass, its gradient and the fake-quant copies
FINETUNE_WEIGHT_FACTOR = 4  # weights, their gradients and Adam's two moments


def fit_batch(requested: int, per_sample: int, fixed: int, budget: int, what: str) -> int:
    """The largest batch <= ``requested`` with ``fixed + RUNTIME_OVERHEAD + batch * per_sample`` within the budget
    (its HEADROOM)."""
    fixed += RUNTIME_OVERHEAD
    usable = int(budget * HEADROOM) - fixed
    batch = min(requested, usable // max(1, per_sample)) if usable > 0 else 0
    if batch < 1:
        raise CalibrationError(
            f"memory budget {fmt_bytes(budget)} cannot hold {what} ({fmt_bytes(fixed)} fixed + "
            f"{fmt_bytes(per_sample)} per sample)",
            hint=f"raise --max-memory to at least {fmt_bytes((fixed + per_sample) / HEADROOM)}",
        )
    return batch

