"""ONNX Runtime helpers (CPU). Imported lazily so the package imports without onnxruntime."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import onnx

from .errors import DependencyError, InputError

ONNX_TO_NUMPY = {
    onnx.TensorProto.FLOAT: np.float32,
    onnx.TensorProto.FLOAT16: np.float16,
    onnx.TensorProto.DOUBLE: np.float64,
    onnx.TensorProto.INT64: np.int64,
    onnx.TensorProto.INT32: np.int32,
    onnx.TensorProto.INT8: np.int8,
    onnx.TensorProto.UINT8: np.uint8,
    onnx.TensorProto.BOOL: np.bool_,
}


def import_ort() -> Any:
    try:
        import onnxruntime as ort
    except ImportError as exc:
        raise DependencyError(
            "onnxruntime is not installed; it runs verification, calibration and evaluation on the CPU",
            hint="pip install 'vqz-edge[calibrate]'",
        ) from exc
    ort.set_default_logger_severity(3)
    return ort


def session(model: onnx.ModelProto | Path | str | bytes, *, optimize: bool = True, threads: int = 0,
            arena: bool = True, spin: bool = True) -> Any:
    """A CPU InferenceSession. ``optimize=False`` keeps every tensor name (needed to read intermediates);
    ``arena=False`` allocates exactly what each run needs (no power-of-two arena growth: for memory budgets);
    ``spin=False`` lets idle ORT threads sleep instead of spinning (when other threads share the cores)."""
    ort = import_ort()
    opts = ort.SessionOptions()
    opts.graph_optimization_level = (
        ort.GraphOptimizationLevel.ORT_ENABLE_ALL if optimize else ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    )
    opts.log_severity_level = 3
    if threads:
        opts.intra_op_num_threads = threads
    opts.enable_cpu_mem_arena = arena
    if not spin:
        opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
    if isinstance(model, onnx.ModelProto):
        model = model.SerializeToString()
    elif isinstance(model, Path):
        model = str(model)
    try:
        return ort.InferenceSession(model, sess_options=opts, providers=["CPUExecutionProvider"])
    except Exception as exc:  # onnxruntime raises its own untyped exception classes
        raise InputError(f"ONNX Runtime cannot load the model: {exc}") from exc


def run(sess: Any, feeds: dict[str, np.ndarray], outputs: list[str] | None = None) -> list[np.ndarray]:
    try:
        return list(sess.run(outputs, feeds))
    except Exception as exc:  # onnxruntime's exceptions are untyped pybind classes
        shapes = {k: list(v.shape) for k, v in feeds.items()}
        raise InputError(f"ONNX Runtime failed to run the model on inputs {shapes}: {exc}") from exc
