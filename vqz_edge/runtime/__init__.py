"""Run models: TensorRT engines on the device, ONNX files through ONNX Runtime anywhere -- one API.

    from vqz_edge.runtime import open_runner
    with open_runner("engines/mobilenet_v2/orin-nx-16gb/10.3.0") as r:     # or "model.onnx"
        out = r.run({"input": x})

Nothing here imports tensorrt, pycuda or onnxruntime at import time.
"""

from .base import EngineRunner, IOInfo
from .loader import BACKENDS, artifact_kind, onnx_budget, open_runner
from .manifest import (
    MANIFEST_NAME,
    EngineManifest,
    EngineMismatchError,
    IOTensor,
    ManifestError,
    load_manifest,
    parse_manifest,
    verify_engine_file,
    verify_manifest,
)

__all__ = [
    "BACKENDS",
    "MANIFEST_NAME",
    "EngineManifest",
    "EngineMismatchError",
    "EngineRunner",
    "IOInfo",
    "IOTensor",
    "ManifestError",
    "artifact_kind",
    "load_manifest",
    "onnx_budget",
    "open_runner",
    "parse_manifest",
    "verify_engine_file",
    "verify_manifest",
]
