"""Run models: TensorRT engines on the device, ONNX files through ONNX Runtime anywhere -- one API.

    from vqz_edge.runtime import open_runner
    with open_runner("engines/mobilenet_v2/orin-nx-16gb/10.3.0") as r:     # or "model.onnx"
        out = r.run({"input": x})

Nothing here imports tensorrt, pycuda or onnxruntime at import time. The engine manifest it verifies is
:mod:`vqz_edge.artifacts.engine_manifest`.
"""

from ..vocab import BACKENDS
from .base import EngineRunner, IOInfo
from .loader import artifact_kind, onnx_budget, open_runner

__all__ = ["BACKENDS", "EngineRunner", "IOInfo", "artifact_kind", "onnx_budget", "open_runner"]
