"""Collect per-tensor |x| histograms by running ONNX Runtime on the CPU, batch by batch, within a memory budget.

The tensors of interest become extra graph outputs; ORT writes them straight into preallocated buffers
(IOBinding), two sets used in turn: ORT fills one in a worker thread while the other is histogrammed in
place by a pool of threads running the compiled kernel (several tensors at once; neither ORT nor the kernel
holds the GIL). At most two batches of activations exist at any time, so peak memory does not grow with the
number of images; the memory plan (calib/memory.py) sizes those batches, and splits the tensors into several
passes over the data when one image of all of them does not fit.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import onnx

from .. import ort as ortu
from ..errors import CalibrationError, DataError
from ..log import get_logger
from ..onnx_io import graph_inputs
from ..progress import ProgressFactory, make_bar
from .histogram import AbsHistogram
from .memory import MemoryPlan, current_rss, default_budget, plan_memory, static_tensor_bytes, weight_bytes

_log = get_logger(__name__)

# Pointwise activations TensorRT fuses into a preceding Conv/Gemm/MatMul: the pre-activation tensor is
# never materialised, so it needs no scale.
FUSED_ACTIVATIONS = {"Relu", "Clip", "LeakyRelu", "Sigmoid", "Tanh", "HardSigmoid", "HardSwish", "Elu", "Selu", "Softplus"}
LINEAR_OPS = {"Conv", "ConvTranspose", "Gemm", "MatMul"}
FLOAT_TYPES = {onnx.TensorProto.FLOAT, onnx.TensorProto.FLOAT16, onnx.TensorProto.DOUBLE, onnx.TensorProto.BFLOAT16}


def _float_tensors(model: onnx.ModelProto) -> set[str]:
    inferred = onnx.shape_inference.infer_shapes(model)
    out = set()
    for vi in [*inferred.graph.input, *inferred.graph.value_info, *inferred.graph.output]:
        if vi.type.tensor_type.elem_type in FLOAT_TYPES:
            out.add(vi.name)
    return out


def calibration_tensors(model: onnx.ModelProto) -> list[str]:
    """The activation tensors that get a scale: every float graph input and node output, except
    pre-activation outputs TensorRT fuses away. Sorted, so caches and summaries are deterministic."""
    inits = {i.name for i in model.graph.initializer}
    floats = _float_tensors(model)
    consumers: dict[str, list[onnx.NodeProto]] = {}
    for node in model.graph.node:
        for name in node.input:
            consumers.setdefault(name, []).append(node)
    names = {i.name for i in model.graph.input if i.name not in inits and i.name in floats}
    for node in model.graph.node:
        if node.op_type in ("Constant", "Shape", "Size"):
            continue
        for out in node.output:
            if not out or out not in floats:
                continue
            users = consumers.get(out, [])
            graph_out = any(o.name == out for o in model.graph.output)
            if node.op_type in LINEAR_OPS and users and not graph_out and all(u.op_type in FUSED_ACTIVATIONS for u in users):
                continue
            names.add(out)
    return sorted(names - inits)


def with_outputs(model: onnx.ModelProto, names: Iterable[str]) -> onnx.ModelProto:
    m = onnx.ModelProto()
    m.CopyFrom(model)
    have = {o.name for o in m.graph.output}
    for name in names:
        if name not in have:
            m.graph.output.append(onnx.ValueInfoProto(name=name))
    return m


@dataclass
class Statistics:
    histograms: dict[str, AbsHistogram] = field(default_factory=dict)
    images: int = 0
    batches: int = 0
    plan: MemoryPlan | None = None
    seconds: dict[str, float] = field(default_factory=dict)  # forward, histogram, waiting, sessions, first batch


class _Slot:
    """One set of output buffers bound to ORT (IOBinding). Two slots alternate so that ORT can fill one
    while the caller histograms the other."""

    def __init__(self, sess: Any, input_name: str, names: list[str]) -> None:
        self.sess, self.input_name, self.names = sess, input_name, names
        self.binding: Any = None
        self.buffers: dict[str, np.ndarray] = {}
        self.batch = -1
        self.seconds = 0.0

    def run(self, b: int, x: np.ndarray) -> dict[str, np.ndarray]:
        t0 = time.perf_counter()
        try:
            if x.shape[0] != self.batch:
                # Learn the output shapes for this batch size; these outputs become the slot's bound buffers.
                self.buffers = {}
                self.binding = None
                self.buffers = dict(zip(self.names, ortu.run(self.sess, {self.input_name: x}, self.names)))
                self.binding = self.sess.io_binding()
                for n, buf in self.buffers.items():
                    self.binding.bind_output(n, "cpu", 0, buf.dtype, list(buf.shape), buf.ctypes.data)
                self.batch = x.shape[0]
                return self.buffers
            self.binding.bind_cpu_input(self.input_name, x)
            try:
                self.sess.run_with_iobinding(self.binding)
            except Exception as exc:  # noqa: BLE001 -- ORT raises untyped errors; name the batch
                raise DataError(f"ONNX Runtime failed on calibration batch {b}: {exc}") from exc
            return self.buffers
        finally:
            self.seconds += time.perf_counter() - t0


def _pipelined(sess: Any, input_name: str, names: list[str], batches: Iterable[np.ndarray], slots: list[_Slot]
               ) -> Iterator[tuple[int, np.ndarray, dict[str, np.ndarray]]]:
    """Yield (index, batch, outputs) while ORT already runs the next batch in a worker thread.

    ORT releases the GIL, so the forward of batch b+1 overlaps the histogramming of batch b. A slot is
    reused only after the caller has finished with it.
    """
    it = iter(batches)
    with ThreadPoolExecutor(max_workers=1) as pool:
        first = next(it, None)
        if first is None:
            return
        x = np.ascontiguousarray(first, dtype=np.float32)
        pending: tuple[np.ndarray, Future[dict[str, np.ndarray]]] | None = (x, pool.submit(slots[0].run, 0, x))
        b = 0
        while pending is not None:
            x, fut = pending
            outputs = fut.result()
            nxt = next(it, None)
            if nxt is not None:
                x_next = np.ascontiguousarray(nxt, dtype=np.float32)
                pending = (x_next, pool.submit(slots[(b + 1) % 2].run, b + 1, x_next))
            else:
                pending = None
            yield b, x, outputs
            b += 1


def session_with_outputs(model: onnx.ModelProto, names: Sequence[str], *, threads: int = 1) -> Any:
    """An ORT session of ``model`` with ``names`` as extra outputs, without a second copy of the weights in
    Python (the outputs are added to ``model`` for the serialisation and removed again)."""
    have = {o.name for o in model.graph.output}
    n0 = len(model.graph.output)
    model.graph.output.extend(onnx.ValueInfoProto(name=n) for n in dict.fromkeys(names) if n not in have)
    try:
        data = model.SerializeToString()
    finally:
        del model.graph.output[n0:]
    return ortu.session(data, threads=threads, arena=False, spin=False)


def _flat32(arr: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(arr, dtype=np.float32).reshape(-1)


def _observe_and_bin(name: str, h: AbsHistogram, arr: np.ndarray) -> tuple[float, float] | None:
    """Min/max of one tensor's batch and its bins (a pool task: one task per tensor, so no histogram is shared)."""
    flat = _flat32(arr)
    if flat.size == 0:
        return None
    lo, hi = float(flat.min()), float(flat.max())
    if not (np.isfinite(lo) and np.isfinite(hi)):
        return lo, hi  # reported by _check_finite, in graph order
    try:
        if h.observe(flat.size, lo, hi):
            h.add_counts(flat)
    except ValueError as exc:
        raise CalibrationError(
            f"tensor {name!r}: {exc}",
            hint="the first calibration batch sets every histogram's bin width: use a --batch-size whose first "
                 "batch represents the data, and check the data for absurd values",
        ) from exc
    return lo, hi


def _min_max(arr: np.ndarray) -> tuple[float, float] | None:
    flat = _flat32(arr)
    return None if flat.size == 0 else (float(flat.min()), float(flat.max()))


def _check_finite(ranges: dict[str, tuple[float, float] | None], order: list[str], batch_size: int,
                  first_image: int, n: int) -> None:
    for name in order:  # graph order: a NaN is reported where it first appears
        r = ranges.get(name)
        if r is not None and not (np.isfinite(r[0]) and np.isfinite(r[1])):
            raise CalibrationError(
                f"tensor {name!r} has NaN/Inf values in calibration batch {first_image // batch_size} "
                f"(images {first_image}..{first_image + n - 1})",
                hint="check the preprocessing and that the FP32 model itself produces finite outputs on this data",
            )


def tensor_bytes_per_image(model: onnx.ModelProto, input_name: str, names: Sequence[str],
                           sample: Callable[[], np.ndarray]) -> tuple[dict[str, int], list[str]]:
    """Bytes of each tensor for one image: shape inference, and one probe run on one real image for the tensors
    whose shape inference cannot tell. Returns (bytes, probed names)."""
    static = static_tensor_bytes(model, names)
    unknown = [n for n, v in static.items() if v is None and n != input_name]
    out = {n: int(v) for n, v in static.items() if v is not None}
    if input_name in names and input_name not in out:
        out[input_name] = int(np.ascontiguousarray(sample()[:1], np.float32).nbytes)
    if unknown:
        sess = session_with_outputs(model, unknown)
        x = np.ascontiguousarray(sample()[:1], dtype=np.float32)
        for n, arr in zip(unknown, ortu.run(sess, {input_name: x}, unknown)):
            out[n] = int(np.asarray(arr).nbytes)
        del sess
    return out, unknown


def plan_for(model: onnx.ModelProto, names: Sequence[str], sample: Callable[[], np.ndarray], *, batch_size: int,
             budget: int | None) -> MemoryPlan:
    """The memory plan for calibrating ``names`` of ``model`` in batches of ``batch_size`` (see calib/memory.py)."""
    input_name = graph_inputs(model)[0].name
    position = {o: i for i, n in enumerate(model.graph.node) for o in n.output}
    order = sorted(names, key=lambda n: (position.get(n, -1), n))
    sizes, probed = tensor_bytes_per_image(model, input_name, order, sample)
    AbsHistogram().update(np.ones(8, np.float32))  # load the compiled kernel before measuring the process
    return plan_memory(sizes, order, batch_size=batch_size, budget=budget if budget is not None else default_budget(),
                       model_bytes=weight_bytes(model), base_bytes=current_rss(), probed=probed)


def model_memory(model: onnx.ModelProto) -> tuple[int, int, int]:
    """(weight bytes, bytes of all tracked activations of one image, bytes of the largest one) from shape
    inference (unknown shapes count as the mean of the known ones): what sensitivity and fine-tuning size
    their batches by."""
    sizes = static_tensor_bytes(model, calibration_tensors(model))
    known = [v for v in sizes.values() if v is not None]
    mean = sum(known) // max(1, len(known))
    per_image = sum(v if v is not None else mean for v in sizes.values())
    return weight_bytes(model), per_image, max(known or [0])


ORT_THREADS = 0  # 0: as many as histogram threads (every core): both pools take turns, neither holds the GIL


def histogram_threads() -> int:
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not Linux
        return max(1, os.cpu_count() or 1)


def collect(
    model: onnx.ModelProto,
    batches: Callable[[int], Iterable[np.ndarray]],
    *,
    count: int,
    batch_size: int = 8,
    tensors: list[str] | None = None,
    budget: int | None = None,
    plan: MemoryPlan | None = None,
    progress: ProgressFactory | None = None,
) -> Statistics:
    """Stream the data (``batches(n)`` yields float32 batches of n samples, the same data on every call) through
    ``model`` and histogram every calibration tensor, within ``budget`` bytes (default: calib/memory.py).

    ``batch_size`` is the calibration batch: its first batch sets every histogram's bin width, so the result is
    the same whatever execution batch and passes the memory plan chooses.
    """
    infos = graph_inputs(model)
    if len(infos) != 1:
        raise DataError(f"calibration feeds single-input models; this model has inputs {[i.name for i in infos]}")
    input_name = infos[0].name
    names = tensors if tensors is not None else calibration_tensors(model)

    def first_sample() -> np.ndarray:
        for x in batches(1):
            return np.asarray(x)
        raise DataError("calibration data yielded no samples")

    t_start = time.perf_counter()
    if plan is None:
        plan = plan_for(model, names, first_sample, batch_size=batch_size, budget=budget)
    _log.info("%s", plan.describe())
    stats = Statistics({n: AbsHistogram() for n in names}, plan=plan)
    seconds = {"plan": time.perf_counter() - t_start, "sessions": 0.0, "forward": 0.0, "histogram": 0.0,
               "first_batch": 0.0}
    bar = make_bar(progress, "calibrating (images)", count * plan.passes)
    workers = histogram_threads()
    try:
        with ThreadPoolExecutor(max_workers=workers) as pool:
            for p, group in enumerate(plan.groups):
                images, nbatches = _run_pass(model, input_name, list(group), batches, count, plan, stats, pool,
                                             seconds, bar, p)
                if p == 0:
                    stats.images, stats.batches = images, nbatches
    finally:
        bar.close()
    if stats.images == 0:
        raise DataError("calibration data yielded no samples")
    stats.seconds = seconds
    _log.info("collected statistics for %d tensors over %d images in %d pass(es)", len(names), stats.images,
              plan.passes)
    return stats


def _run_pass(model: onnx.ModelProto, input_name: str, group: list[str], batches: Callable[[int], Iterable[np.ndarray]],
              count: int, plan: MemoryPlan, stats: Statistics, pool: ThreadPoolExecutor, seconds: dict[str, float],
              bar: Any, p: int) -> tuple[int, int]:
    run_names = [n for n in group if n != input_name]  # the input is histogrammed straight from the feed
    t0 = time.perf_counter()
    sess = session_with_outputs(model, run_names, threads=ORT_THREADS or histogram_threads())
    seconds["sessions"] += time.perf_counter() - t0
    hists = stats.histograms
    eb = plan.execution_batch
    if plan.first_batch_rerun:
        # The first calibration batch sets the bin widths: find its per-tensor max before binning anything.
        t1 = time.perf_counter()
        slots = [_Slot(sess, input_name, run_names), _Slot(sess, input_name, run_names)]
        peak: dict[str, float] = dict.fromkeys(group, 0.0)
        seen = 0
        for _b, x, outputs in _pipelined(sess, input_name, run_names, _take(batches(eb), plan.batch_size), slots):
            current = {**outputs, input_name: x} if input_name in peak else outputs
            ranges = dict(zip(group, pool.map(_min_max, [current[n] for n in group])))
            _check_finite(ranges, group, plan.batch_size, seen, x.shape[0])
            for n, r in ranges.items():
                if r is not None:
                    peak[n] = max(peak[n], abs(r[0]), abs(r[1]))
            seen += x.shape[0]
        for n, m in peak.items():
            if m > 0:
                hists[n].set_width(m)
        del slots
        seconds["first_batch"] += time.perf_counter() - t1
    slots = [_Slot(sess, input_name, run_names), _Slot(sess, input_name, run_names)]
    images = nbatches = 0
    t2 = time.perf_counter()
    for _b, x, outputs in _pipelined(sess, input_name, run_names, _take(batches(eb), count), slots):
        th = time.perf_counter()
        current = {**outputs, input_name: x} if input_name in hists and input_name in group else outputs
        ranges = dict(zip(group, pool.map(_observe_and_bin, group, [hists[n] for n in group],
                                          [current[n] for n in group])))
        _check_finite(ranges, group, plan.batch_size, images, x.shape[0])
        seconds["histogram"] += time.perf_counter() - th
        images += x.shape[0]
        nbatches += 1
        bar.update(x.shape[0])
    seconds["forward"] += sum(s.seconds for s in slots)
    seconds[f"pass{p}"] = time.perf_counter() - t2
    del slots, sess
    return images, nbatches


def _take(batches: Iterable[np.ndarray], count: int) -> Iterator[np.ndarray]:
    """The first ``count`` samples of ``batches``."""
    left = count
    for x in batches:
        if left <= 0:
            return
        if x.shape[0] > left:
            x = x[:left]
        left -= x.shape[0]
        yield x
