"""Filesystem helpers: atomic writes (temp file, fsync, rename) and hashing.

A failed step never leaves a half-written artifact and never replaces a good one. Files and folders get the
modes a plain ``open()``/``mkdir()`` would give them (0o666 / 0o777 minus the process umask), so a container's
user can read what the host wrote and the other way round; pass ``mode`` for secrets (private keys: 0o600).
Folders are made with ``Path.mkdir`` (never ``tempfile.mkdtemp``, whose 0o700 a rename would keep).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import secrets
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from .errors import InputError


def check_output_path(path: Path) -> Path:
    """Fail early (before any expensive work) when ``path`` cannot be written."""
    path = Path(path)
    parent = path.parent if str(path.parent) else Path(".")
    if not parent.is_dir():
        raise InputError(
            f"output directory {parent} does not exist (for {path})",
            hint=f"create it first (mkdir -p {parent}) or choose another output path",
        )
    if not os.access(parent, os.W_OK):
        raise InputError(f"output directory {parent} is not writable (for {path})")
    if path.is_dir():
        raise InputError(f"output path {path} is a directory; give a file name")
    return path


def _fsync_dir(directory: Path) -> None:
    with contextlib.suppress(OSError):  # not every filesystem allows opening a directory
        fd = os.open(directory, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


FILE_MODE = 0o666  # what open(..., "w") asks for; the kernel takes the umask off


def _create_temp(directory: Path, prefix: str, suffix: str, mode: int) -> Path:
    """Create a new empty file ``directory/<prefix><random><suffix>`` with ``mode`` minus the umask.

    ``tempfile.mkstemp`` would always give 0o600 (and a rename keeps that mode), so the file is created here
    with O_EXCL (never an existing file, never through a link) and the requested mode.
    """
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_CLOEXEC", 0)
    for _ in range(100):
        candidate = directory / f"{prefix}{secrets.token_hex(6)}{suffix}"
        try:
            fd = os.open(candidate, flags, mode)
        except FileExistsError:
            continue
        os.close(fd)
        return candidate
    raise InputError(f"could not create a temporary file in {directory}: 100 random names were all taken")


@contextlib.contextmanager
def atomic_path(path: Path, mode: int = FILE_MODE) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; on success fsync it and rename it over ``path``.

    The temporary file exists (empty) when yielded, created with ``mode`` minus the umask: 0o644 under the usual
    umask 022, as a plain ``open()`` would give. Pass ``mode=0o600`` for secrets: the file is never readable by
    others, not even empty. On any exception the temporary file is removed and ``path`` is left untouched.
    """
    path = Path(path)
    check_output_path(path)
    tmp = _create_temp(path.parent if str(path.parent) else Path("."), f".{path.name}.", ".tmp", mode)
    try:
        yield tmp
        with open(tmp, "rb+") as fh:
            os.fsync(fh.fileno())
        os.replace(tmp, path)
        _fsync_dir(path.parent)
    finally:
        if tmp.exists():
            tmp.unlink()


def atomic_write_bytes(path: Path, data: bytes) -> None:
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)


def atomic_write_text(path: Path, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


def canonical_json(obj: Any) -> str:
    """JSON with sorted keys and a trailing newline: byte-identical for equal content."""
    return json.dumps(obj, indent=2, sort_keys=True, ensure_ascii=False, allow_nan=False) + "\n"


def atomic_write_json(path: Path, obj: Any) -> None:
    atomic_write_text(path, canonical_json(obj))


def sha256_file(path: Path, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(chunk):
            h.update(block)
    return h.hexdigest()


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


@contextlib.contextmanager
def file_lock(path: Path) -> Iterator[None]:
    """Exclusive fcntl lock on ``<path>.lock`` (other processes on this host wait)."""
    import fcntl

    lock = Path(path).with_name(Path(path).name + ".lock")
    lock.parent.mkdir(parents=True, exist_ok=True)
    with open(lock, "a+b") as fh:
        fcntl.flock(fh.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh.fileno(), fcntl.LOCK_UN)
