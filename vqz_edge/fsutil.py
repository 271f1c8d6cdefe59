"""Filesystem helpers: atomic writes (temp file, fsync, rename), sets of files switched together, and hashing.

A failed step never leaves a half-written artifact and never replaces a good one; an OSError while writing
(disk full, read-only filesystem, permission denied) becomes the matching error of vqz_edge/errors.py, with the
path. Temporary files carry the writer's pid, so the next writer removes those a killed process left behind.

Files get the modes a plain ``open()``/``mkdir()`` would give them (0o666 / 0o777 minus the process umask), so a
container's user can read what the host wrote and the other way round; pass ``mode`` for secrets (private keys:
0o600). Staging folders (tempfile.mkdtemp, 0o700) are never renamed into place: only the files inside them are.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import secrets
import shutil
import tempfile
from collections.abc import Callable, Iterable, Iterator, Mapping
from pathlib import Path
from typing import Any

from .errors import InputError, VqzError, describe_path, require_dir, storage_error


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


def check_output_dir(path: Path) -> Path:
    """Fail early when the directory ``path`` cannot be created or written; creates nothing (a failed run must
    not leave an empty folder behind)."""
    path = Path(path)
    probe = path
    while not probe.exists() and not probe.is_symlink() and probe != probe.parent:
        probe = probe.parent
    if probe == path:
        require_dir(path, "output directory", hint="choose another output directory")
    elif not probe.is_dir():
        raise InputError(f"cannot create output directory {path}: {probe} is {describe_path(probe)}, not a directory",
                         hint="choose another output directory")
    if not os.access(probe, os.W_OK):
        raise InputError(f"output directory {probe} is not writable (for {path})", hint="choose another output directory")
    return path


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # exists, owned by someone else
        return True
    return True


def remove_stale(directory: Path, prefix: str, suffix: str) -> list[Path]:
    """Remove entries ``directory/<prefix><pid>.<random><suffix>`` whose writer process is gone (killed mid-write);
    those of live writers are left alone. Returns what was removed."""
    removed = []
    for p in sorted(Path(directory).glob(f"{glob_escape(prefix)}*{glob_escape(suffix)}")):
        pid_text = p.name[len(prefix):].split(".", 1)[0]
        if not pid_text.isdigit() or int(pid_text) == os.getpid() or _pid_alive(int(pid_text)):
            continue
        with contextlib.suppress(OSError):
            if p.is_dir() and not p.is_symlink():
                shutil.rmtree(p)
            else:
                p.unlink()
            removed.append(p)
    return removed


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
    others, not even empty. On any exception the temporary file is removed and ``path`` is left untouched; an
    OSError (disk full, read-only, ...) is raised as the matching VqzError naming ``path``.
    """
    path = Path(path)
    check_output_path(path)
    directory = path.parent if str(path.parent) else Path(".")
    remove_stale(directory, f".{path.name}.", ".tmp")
    tmp: Path | None = None
    try:
        tmp = _create_temp(directory, f".{path.name}.{os.getpid()}.", ".tmp", mode)
        yield tmp
        with open(tmp, "rb+") as fh:
            os.fsync(fh.fileno())
        os.replace(tmp, path)
        _fsync_dir(directory)
    except VqzError:
        raise
    except OSError as exc:
        raise storage_error(exc, path) from exc
    finally:
        if tmp is not None and tmp.exists():
            tmp.unlink()


def glob_escape(name: str) -> str:
    """``name`` with glob metacharacters escaped."""
    return "".join(f"[{c}]" if c in "*?[" else c for c in name)


def write_set(directory: Path, payloads: Mapping[str, bytes | Callable[[Path], None]], *, last: str,
              tag: str = "set", drop: Iterable[str] = (), modes: Mapping[str, int] | None = None) -> dict[str, Path]:
    """Write ``payloads`` into ``directory`` as one set: file name -> its bytes, or a function that writes the file
    at the path it is given (for artifacts too large to hold twice). Every file is written and fsynced in
    a private staging folder first, then renamed into place, ``last`` last (the file that vouches for the others,
    e.g. a summary holding their hashes), then the staging folder is removed.

    A failure while writing (disk full, read-only, an exception) leaves the previous set untouched and no staging
    folder; a process killed during the renames leaves a set whose ``last`` file does not vouch for the new files,
    which readers detect. Staging folders of killed writers are removed by the next writer. ``drop``: files of
    the same family that this set does not have (an earlier run's optional output); removed before ``last``.
    ``modes``: file name -> creation mode for files that must not honour the umask alone (secrets: 0o600).
    """
    directory = Path(directory)
    names = sorted(n for n in payloads if n != last) + [last]
    if last not in payloads:
        raise ValueError(f"write_set: {last!r} is not among the payloads")
    check_output_dir(directory)
    stage: Path | None = None
    try:
        directory.mkdir(parents=True, exist_ok=True)
        remove_stale(directory, f".{tag}.", ".staging")
        stage = Path(tempfile.mkdtemp(prefix=f".{tag}.{os.getpid()}.", suffix=".staging", dir=directory))
        for name in names:
            try:
                payload = payloads[name]
                with atomic_path(stage / name, mode=(modes or {}).get(name, FILE_MODE)) as tmp:
                    if isinstance(payload, bytes):
                        tmp.write_bytes(payload)
                    else:
                        payload(tmp)
            except VqzError as exc:  # name the artifact, not its staged copy, when the OSError names no file
                cause = exc.__cause__
                if isinstance(cause, OSError) and cause.filename is None:
                    raise storage_error(cause, directory / name) from cause
                raise
        for name in names[:-1]:
            os.replace(stage / name, directory / name)
        for name in sorted(set(drop) - set(names)):
            if (directory / name).is_file():
                (directory / name).unlink()
        os.replace(stage / last, directory / last)
        _fsync_dir(directory)
    except VqzError:
        raise
    except OSError as exc:
        raise storage_error(exc, directory) from exc
    finally:
        if stage is not None:
            shutil.rmtree(stage, ignore_errors=True)
    return {name: directory / name for name in names}


def atomic_write_bytes(path: Path, data: bytes) -> None:
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)


def atomic_write_text(path: Path, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


def read_json(path: Path, what: str, error: type[InputError] = InputError) -> Any:
    """The JSON document in ``path``; ``error`` naming ``what`` and the file when it cannot be read, is not JSON or
    not UTF-8 text."""
    try:
        return json.loads(Path(path).read_text(encoding="utf-8"))
    except OSError as exc:
        raise error(f"cannot read {what} {path}: {exc.strerror or exc}") from exc
    except json.JSONDecodeError as exc:
        raise error(f"{what} {path} is not JSON (line {exc.lineno}: {exc.msg})") from exc
    except UnicodeDecodeError as exc:
        raise error(f"{what} {path} is not JSON text (not UTF-8: {exc.reason} at byte {exc.start})") from exc


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
