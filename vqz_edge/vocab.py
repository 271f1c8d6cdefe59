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
