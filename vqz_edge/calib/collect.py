"""Collect per-tensor |x| histograms by running ONNX Runtime on the CPU, batch by batch.

The tensors of interest become extra graph outputs; ORT writes them straight into preallocated buffers
(IOBinding), two sets used in turn: ORT fills one in a worker thread while the other is histogrammed in
place. At most two batches of activations exist at any time, so peak memory does not grow with the
number of images.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
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


class _Slot:
    """One set of output buffers bound to ORT (IOBinding). Two slots alternate so that ORT can fill one
    while the caller histograms the other."""

    def __init__(self, sess: Any, input_name: str, names: list[str]) -> None:
        self.sess, self.input_name, self.names = sess, input_name, names
        self.binding: Any = None
        self.buffers: dict[str, np.ndarray] = {}
        self.batch = -1

    def run(self, b: int, x: np.ndarray) -> dict[str, np.ndarray]:
        if x.shape[0] != self.batch:
            # Learn the output shapes for this batch size; these outputs become the slot's bound buffers.
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


def _pipelined(sess: Any, input_name: str, names: list[str], batches: Iterable[np.ndarray]
               ) -> Iterator[tuple[int, np.ndarray, dict[str, np.ndarray]]]:
    """Yield (index, batch, outputs) while ORT already runs the next batch in a worker thread.

    ORT releases the GIL, so on a 2-core host the forward of batch b+1 overlaps the (GIL-bound) numpy
    histogramming of batch b. A slot is reused only after the caller has finished with it.
    """
    slots = [_Slot(sess, input_name, names), _Slot(sess, input_name, names)]
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


def collect(
    model: onnx.ModelProto,
    batches: Iterable[np.ndarray],
    *,
    total_batches: int,
    tensors: list[str] | None = None,
    progress: ProgressFactory | None = None,
) -> Statistics:
    """Stream ``batches`` (float32, N x ...) through ``model`` and histogram every calibration tensor.

    At most two batches of activations exist at a time (one being histogrammed, one being computed), so
    peak memory does not grow with the number of images.
    """
    infos = graph_inputs(model)
    if len(infos) != 1:
        raise DataError(f"calibration feeds single-input models; this model has inputs {[i.name for i in infos]}")
    input_name = infos[0].name
    names = tensors if tensors is not None else calibration_tensors(model)
    # check tensors in graph order, so a NaN is reported where it first appears
    position = {o: i for i, n in enumerate(model.graph.node) for o in n.output}
    check_order = sorted(names, key=lambda n: (position.get(n, -1), n))
    stats = Statistics({n: AbsHistogram() for n in names})
    # the graph input is histogrammed straight from the feed (ORT does not copy an input into a bound output)
    names = [n for n in names if n != input_name]
    # one ORT thread: the other core histograms the previous batch meanwhile (ORT's spinning pool would steal it)
    sess = ortu.session(with_outputs(model, names), threads=1)
    bar = make_bar(progress, "calibrating (batches)", total_batches)
    try:
        for b, x, outputs in _pipelined(sess, input_name, names, batches):
            current = {**outputs, input_name: x}
            for name in check_order:
                arr = current[name]
                if arr.size == 0:
                    continue
                lo, hi = float(arr.min()), float(arr.max())
                if not (np.isfinite(lo) and np.isfinite(hi)):
                    raise CalibrationError(
                        f"tensor {name!r} has NaN/Inf values in calibration batch {b} "
                        f"(images {stats.images}..{stats.images + x.shape[0] - 1})",
                        hint="check the preprocessing and that the FP32 model itself produces finite outputs on this data",
                    )
                stats.histograms[name].update(arr, lo, hi)
            stats.images += x.shape[0]
            stats.batches += 1
            bar.update(1)
    finally:
        bar.close()
    if stats.images == 0:
        raise DataError("calibration data yielded no samples")
    _log.info("collected statistics for %d tensors over %d images", len(names), stats.images)
    return stats
