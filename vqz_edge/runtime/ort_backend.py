"""The ONNX Runtime backend (CPU): the same runner API for ``.onnx`` files, FP32 and Q/DQ alike.

This is what ``vqz-edge run`` / ``bench`` use on a host without a GPU, and how CI tests the runtime end to end.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from .. import ort as _ort
from ..onnx_io import graph_inputs, graph_outputs, load_model
from .base import EngineRunner, IOInfo, shape_from_onnx


class OrtRunner(EngineRunner):
    backend = "onnxruntime"

    def __init__(self, path: Path, *, threads: int = 0, optimize: bool = True) -> None:
        super().__init__(path)
        model = load_model(self.path)  # clear errors for missing / corrupt files
        self._inputs = [IOInfo(t.name, t.dtype, shape_from_onnx(t.shape)) for t in graph_inputs(model)]
        self._outputs = [IOInfo(t.name, t.dtype, shape_from_onnx(t.shape)) for t in graph_outputs(model)]
        self.qdq = any(n.op_type in ("QuantizeLinear", "DequantizeLinear") for n in model.graph.node)
        del model
        # Looked up on the module at call time so tests can observe (and count) session creation.
        self._sess: Any = _ort.session(self.path, optimize=optimize, threads=threads)
        self.providers = list(self._sess.get_providers())

    @property
    def inputs(self) -> list[IOInfo]:
        return list(self._inputs)

    @property
    def outputs(self) -> list[IOInfo]:
        return list(self._outputs)

    def _run(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        names = [o.name for o in self._outputs]
        return dict(zip(names, _ort.run(self._sess, feeds, names)))

    def _release(self) -> None:
        self._sess = None

    def describe(self) -> dict[str, Any]:
        return {**super().describe(), "providers": self.providers, "qdq": self.qdq}
