"""TensorRT versions: parsing, the codes TensorRT writes into cache headers and plan files, what each
version supports, and the range vqz-edge runs on. Pure Python (no tensorrt import): manifests, bundles,
calibration caches and the builder all read versions through here.

Supported: TensorRT 8.5 (JetPack 5.1.x) to 11.x. 8.0-8.4 (JetPack 5.0.x) lack the name-based tensor API
(``set_input_shape`` / ``set_tensor_address`` / ``execute_async_v3``) the runtime uses and are refused.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from .errors import InputError

OLDEST_SUPPORTED = (8, 5)  # JetPack 5.1.x
NEWEST_MAJOR = 11
SUPPORTED_RANGE = "8.5 (JetPack 5.1) to 11.x"


@dataclass(frozen=True, order=True)
class TrtVersion:
    major: int
    minor: int
    patch: int = 0

    def __str__(self) -> str:
        return f"{self.major}.{self.minor}.{self.patch}"

    @property
    def code(self) -> int:
        """NV_TENSORRT_VERSION as TensorRT itself computes it (and writes into cache headers).

        TensorRT 8.x: major*1000 + minor*100 + patch (8.6.1 -> 8601).
        TensorRT 10+: major*10000 + minor*100 + patch (10.3.0 -> 100300).
        """
        if self.major >= 10:
            return self.major * 10000 + self.minor * 100 + self.patch
        return self.major * 1000 + self.minor * 100 + self.patch

    @property
    def supported(self) -> bool:
        return OLDEST_SUPPORTED <= (self.major, self.minor) and self.major <= NEWEST_MAJOR

    @property
    def supports_implicit_int8(self) -> bool:
        """IInt8EntropyCalibrator2 exists up to TensorRT 10 (deprecated since 10.1, removed in 11)."""
        return self.major <= 10

    @property
    def implicit_int8_deprecated(self) -> bool:
        return self >= TrtVersion(10, 1, 0)

    @property
    def supports_strongly_typed(self) -> bool:
        """NetworkDefinitionCreationFlag.STRONGLY_TYPED appeared in TensorRT 9/10."""
        return self.major >= 10

    @property
    def supports_weak_typing(self) -> bool:
        """BuilderFlag.FP16/INT8, ILayer.precision and set_output_type (weakly typed networks): gone in
        TensorRT 11 (its bindings have neither the flags nor the layer precision API)."""
        return self.major <= 10

    @property
    def supports_progress_monitor(self) -> bool:
        """IBuilderConfig.progress_monitor / trt.IProgressMonitor exist from TensorRT 10.0."""
        return self.major >= 10

    @property
    def parser_registers_plugins(self) -> bool:
        """TensorRT 8.x's ONNX parser calls initLibNvInferPlugins itself (onnx-tensorrt ModelImporter.cpp,
        8.5-GA / 8.6-GA); from 10.0 it does not, and a plugin-backed node fails to parse unless the
        caller registered the plugins. vqz-edge registers them before parsing and deserialising anyway."""
        return self.major < 10


_VERSION_RE = re.compile(r"^\s*(\d+)\.(\d+)(?:\.(\d+))?(?:\.\d+)*\s*$")


def parse_trt_version(text: str) -> TrtVersion:
    """'8.6.1', '10.3.0', '10.3.0.26' -> TrtVersion (any 8.x - 11.x; see :func:`require_supported`)."""
    m = _VERSION_RE.match(str(text))
    if not m:
        raise InputError(f"TensorRT version {text!r} is not of the form MAJOR.MINOR[.PATCH] (e.g. 10.3.0)")
    v = TrtVersion(int(m.group(1)), int(m.group(2)), int(m.group(3) or 0))
    if v.major < 8 or v.major > NEWEST_MAJOR:
        raise InputError(f"TensorRT {v} is not supported; vqz-edge supports TensorRT {SUPPORTED_RANGE}")
    return v


def require_supported(text: str) -> TrtVersion:
    """The version of a TensorRT that is about to be used, or InputError with the supported range."""
    v = parse_trt_version(text)
    if not v.supported:
        raise InputError(
            f"TensorRT {v} is not supported; vqz-edge supports TensorRT {SUPPORTED_RANGE} (8.0-8.4, as in "
            "JetPack 5.0.x, lack the tensor-name execution API the runtime uses)",
            hint="upgrade to JetPack 5.1 or newer (TensorRT 8.5.2+)",
        )
    return v
