"""One exception hierarchy. The CLI maps each class to a message and an exit code.

Every message says what went wrong (naming the file, tensor, key or value) and, through ``hint``,
what to do about it.
"""

from __future__ import annotations


class VqzError(Exception):
    """Base class of every error vqz-edge raises on purpose."""

    exit_code = 1

    def __init__(self, message: str, *, hint: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint

    def __str__(self) -> str:
        if self.hint:
            return f"{self.message}\n  hint: {self.hint}"
        return self.message


class InputError(VqzError):
    """The user gave something unusable: a missing file, a bad shape, a bad option."""

    exit_code = 2


class SpecError(InputError):
    """A build spec failed validation; the message names the key and the allowed values."""


class DataError(InputError):
    """Calibration/evaluation data that cannot be used (empty folder, unreadable image, wrong shape)."""


class ModelLoadError(InputError):
    """A model (torchvision name, factory path or ONNX file) could not be loaded."""


class DependencyError(VqzError):
    """An optional dependency (torch, onnxruntime, TensorRT, pycuda...) is missing on this host."""

    exit_code = 3


class ExportError(VqzError):
    """torch -> ONNX export or an ONNX graph pass failed."""

    exit_code = 4


class VerificationError(VqzError):
    """A produced artifact does not match its source within tolerance."""

    exit_code = 5


class CalibrationError(VqzError):
    """Calibration statistics could not be computed (e.g. NaN/Inf in an activation)."""

    exit_code = 6


class BudgetError(VqzError):
    """A model does not fit the memory budget of its target; raised before any context is created."""

    exit_code = 7

    def __init__(self, message: str, *, hint: str | None = None, report: object | None = None) -> None:
        super().__init__(message, hint=hint)
        self.report = report


class EngineBuildError(VqzError):
    """TensorRT could not parse or build the network, or the engine breaks the precision plan."""

    exit_code = 8


class DeviceRuntimeError(VqzError):
    """TensorRT or CUDA failed while loading or running an engine on the device."""

    exit_code = 9
