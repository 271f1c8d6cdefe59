"""One exception hierarchy. The CLI maps each class to a message and an exit code.

Every message says what went wrong (naming the file, tensor, key or value) and, through ``hint``,
what to do about it.
"""

from __future__ import annotations

import errno
import os


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


class StorageError(VqzError):
    """The filesystem refused an operation on a path (I/O error and the like); the message names the path."""

    exit_code = 10


class DiskFullError(StorageError):
    """No space left on the device (ENOSPC) or over the disk quota (EDQUOT)."""


class ReadOnlyError(StorageError):
    """The path is on a read-only filesystem (EROFS) or this user may not write it (EACCES, EPERM)."""


_DISK_FULL = {errno.ENOSPC, getattr(errno, "EDQUOT", errno.ENOSPC)}
_READ_ONLY = {errno.EROFS, errno.EACCES, errno.EPERM}


def describe_path(path: os.PathLike[str] | str) -> str:
    """What is at ``path`` in words: 'a directory', 'a regular file', 'a symbolic link to ...', 'nothing'."""
    p = os.fspath(path)
    if os.path.islink(p) and not os.path.exists(p):
        return f"a dangling symbolic link (to {os.readlink(p)})"
    if os.path.isdir(p):
        return "a directory"
    if os.path.isfile(p):
        return "a regular file"
    if os.path.exists(p):
        return "a special file (not a regular file or directory)"
    return "nothing (it does not exist)"


def _kind_error(path: os.PathLike[str] | str, what: str, wanted: str) -> str:
    kind = describe_path(path)
    verb = "does not exist" if kind.startswith("nothing") else f"is {kind}, not a {wanted}"
    return f"{what} {os.fspath(path)} {verb}"


def require_file(path: os.PathLike[str] | str, what: str, *, hint: str | None = None,
                 error: type[InputError] = InputError) -> None:
    """Raise ``error`` unless ``path`` is a regular file (or a link to one); the message says what is there
    instead ("does not exist", "is a directory, not a file")."""
    if not os.path.isfile(os.fspath(path)):
        raise error(_kind_error(path, what, "file"), hint=hint)


def require_dir(path: os.PathLike[str] | str, what: str, *, hint: str | None = None,
                error: type[InputError] = InputError) -> None:
    """Raise ``error`` unless ``path`` is a directory; the message says what is there instead."""
    if not os.path.isdir(os.fspath(path)):
        raise error(_kind_error(path, what, "directory"), hint=hint)


def storage_error(exc: OSError, path: os.PathLike[str] | str | None = None, action: str = "writing") -> VqzError:
    """The error-tree counterpart of an OSError: disk full and read-only are named as such, the path is given.

    ``path`` is the artifact being written (used when the OSError carries no file name, as a failed
    ``write()`` does); ``action`` says what was being done ('writing', 'reading', 'creating').
    """
    if isinstance(exc, VqzError):  # pragma: no cover - defensive
        return exc
    where = exc.filename if exc.filename is not None else path
    name = os.fspath(where) if where is not None else "a file"
    reason = exc.strerror or str(exc)
    code = exc.errno
    if code in _DISK_FULL:
        folder = os.path.dirname(os.path.abspath(name)) if where is not None else "."
        return DiskFullError(
            f"disk full: no space left on the device while {action} {name} ({reason})",
            hint=f"free space on the filesystem of {folder} (df -h {folder}) and run again; the previous "
            "artifacts were left as they were",
        )
    if code == errno.EROFS:
        return ReadOnlyError(
            f"read-only filesystem: cannot write {name} ({reason})",
            hint="remount it read-write or choose a writable location",
        )
    if code in _READ_ONLY:
        return ReadOnlyError(
            f"permission denied: {name} is read-only for this user ({reason})",
            hint="choose a location this user may write, or fix its permissions",
        )
    if code == errno.ENOENT:
        return InputError(f"{name} does not exist ({reason})")
    if code == errno.ENOTDIR:
        return InputError(f"a component of {name} is a file where a directory is needed ({reason})")
    if code == errno.EISDIR:
        return InputError(f"{name} is a directory where a file is needed ({reason})")
    if code == errno.EEXIST:
        return InputError(f"{name} already exists and is {describe_path(name)} ({reason})")
    return StorageError(f"{action} {name} failed: {reason} (errno {code})")
