"""Collect per-tensor |x| histograms by running ONNX Runtime on the CPU, batch by batch.

The tensors of interest become extra graph outputs; ORT writes them straight into preallocated buffers
(IOBinding), which are histogrammed in place and reused for the next batch. Only one batch of
activations exists at any time, so peak memory does not grow with the number of images.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field

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


def collect(
    model: onnx.ModelProto,
    batches: Iterable[np.ndarray],
    *,
    total_batches: int,
    tensors: list[str] | None = None,
    progress: ProgressFactory | None = None,
) -> Statistics:
    """Stream ``batches`` (float32, N x ...) through ``model`` and histogram every calibration tensor."""
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
    sess = ortu.session(with_outputs(model, names))
    binding = sess.io_binding()
    buffers: dict[str, np.ndarray] = {}
    bound_batch = -1
    bar = make_bar(progress, "calibrating", total_batches)
    try:
        for b, x in enumerate(batches):
            x = np.ascontiguousarray(x, dtype=np.float32)
            if b == 0 or x.shape[0] != bound_batch:
                # Learn output shapes for this batch size, then let ORT write into our own buffers.
                # The outputs of this plain run become the bound buffers of the following runs.
                current = dict(zip(names, ortu.run(sess, {input_name: x}, names)))
                buffers = current
                binding = sess.io_binding()
                for n, buf in buffers.items():
                    binding.bind_output(n, "cpu", 0, buf.dtype, list(buf.shape), buf.ctypes.data)
                bound_batch = x.shape[0]
            else:
                binding.bind_cpu_input(input_name, x)
                try:
                    sess.run_with_iobinding(binding)
                except Exception as exc:  # noqa: BLE001 -- ORT raises untyped errors; name the batch
                    raise DataError(f"ONNX Runtime failed on calibration batch {b}: {exc}") from exc
                current = buffers
            current = {**current, input_name: x}
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
