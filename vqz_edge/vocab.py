"""The words several modules share, defined once: build modes, and the artifact file names every stage
uses. Pure constants; the CLI's ``choices`` come from here."""

from __future__ import annotations

from pathlib import Path

# How a TensorRT engine gets its INT8 placement (docs/build.md):
#   explicit -- from the Q/DQ model (model.qdq.onnx); implicit -- model.onnx + calibration.cache through
#   IInt8EntropyCalibrator2 (TensorRT <= 10); fp16 -- model.onnx without INT8.
BUILD_MODES = ("explicit", "implicit", "fp16")
CLI_BUILD_MODES = ("auto", *BUILD_MODES)

# Engine directory: engines/<model>/<target>/<trt-version>/
ENGINE_FILE = "model.engine"
ENGINE_MANIFEST_FILE = "manifest.json"
TIMING_CACHE_FILE = "timing.cache"
ENGINE_SUFFIXES = (".engine", ".plan", ".trt")

# Files shipped inside the package (the target catalog, ImageNet labels), read from beside the modules so that
# Python 3.8 (JetPack 5) needs no importlib.resources.files.
PACKAGE_DATA = Path(__file__).resolve().parent / "data"

# What runs a model: TensorRT (engines, on the device) or ONNX Runtime (.onnx on the CPU); auto picks by artifact.
# One set of names for `install`, `run`, `bench`, `vlm run/compare` and the Python API.
BACKENDS = ("auto", "tensorrt", "onnxruntime")
# `run`/`bench` and open_runner said ort/trt until 0.x; accepted for one release, with a deprecation message.
LEGACY_BACKENDS = {"ort": "onnxruntime", "trt": "tensorrt"}

# Calibration threshold methods (docs: README "Calibrate"); auto = MSE for non-negative tensors, else entropy.
CALIBRATION_METHODS = ("entropy", "max", "percentile", "mse", "auto")
# Precisions a spec may name; a resolved plan holds only LAYER_PRECISIONS (4-bit is for LLM weights).
PRECISIONS = ("fp32", "fp16", "int8", "int4", "nf4")
LAYER_PRECISIONS = ("int8", "fp16", "fp32")
# Precision presets (policy/presets.py says what each pins above INT8).
PRESETS = ("cnn", "vit", "vlm-vision", "none")


def canonical_backend(name: str) -> str:
    """A backend name in :data:`BACKENDS` for ``name`` (a legacy spelling is mapped); ValueError otherwise."""
    name = LEGACY_BACKENDS.get(name, name)
    if name not in BACKENDS:
        raise ValueError(f"backend {name!r} is not one of {', '.join(BACKENDS)}")
    return name

# Calibration directory: calibration/<model>/ (README "Calibrate"; written as one set by calib/outputs.py and read
# by the builder, bundles, memory estimates and sensitivity).
ONNX_FILE = "model.onnx"
QDQ_ONNX_FILE = "model.qdq.onnx"
CACHE_FILE = "calibration.cache"
PLAN_FILE = "plan.json"
SUMMARY_FILE = "summary.json"
HISTOGRAMS_FILE = "histograms.npz"
