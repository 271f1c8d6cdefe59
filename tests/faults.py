"""Fault injection for tests: a disk that fills up at the N-th write, and folders that are read-only.

Both work in-process by wrapping the calls every writer in this code base goes through (``open``/``io.open`` in
a writing mode, ``os.write``; and for read-only folders also ``os.open`` with write flags, ``mkdir``,
``rename``/``replace``, ``symlink``, ``unlink``, ``rmdir``, ``chmod``). The errors are raised as the kernel
raises them: ``OSError(ENOSPC)`` without a file name from ``write()``, ``OSError(EROFS, ..., path)`` from path
calls (and EEXIST / ENOENT first where the kernel checks those first). Running as root (CI containers) makes
real read-only permissions useless, and mounting a small filesystem needs privileges CI does not have.
"""

from __future__ import annotations

import builtins
import contextlib
import errno
import io
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

_WRITE_MODES = ("w", "a", "x", "+")


class _Counter:
    def __init__(self, fail_at: int | None) -> None:
        self.fail_at = fail_at
        self.writes = 0
        self.failed = False

    def tick(self) -> None:
        self.writes += 1
        if self.fail_at is not None and self.writes == self.fail_at:
            self.failed = True
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))


class _File:
    """A writable file whose writes count towards the fault."""

    def __init__(self, inner: Any, counter: _Counter) -> None:
        self._inner = inner
        self._counter = counter

    def write(self, data: Any) -> Any:
        self._counter.tick()
        return self._inner.write(data)

    def writelines(self, lines: Any) -> None:
        for line in lines:
            self.write(line)

    def __enter__(self) -> _File:
        return self

    def __exit__(self, *exc: object) -> None:
        self._inner.close()

    def __iter__(self) -> Iterator[Any]:
        return iter(self._inner)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)


@contextlib.contextmanager
def disk_full_at(monkeypatch: pytest.MonkeyPatch, fail_at: int | None) -> Iterator[_Counter]:
    """Count every data write of the process; the ``fail_at``-th raises ENOSPC (None: only count)."""
    counter = _Counter(fail_at)
    real_open, real_write = builtins.open, os.write

    def fake_open(file: Any, mode: str = "r", *args: Any, **kwargs: Any) -> Any:
        f = real_open(file, mode, *args, **kwargs)
        return _File(f, counter) if any(m in mode for m in _WRITE_MODES) else f

    def fake_write(fd: int, data: Any) -> int:
        counter.tick()
        return real_write(fd, data)

    with monkeypatch.context() as m:
        m.setattr(builtins, "open", fake_open)
        m.setattr(io, "open", fake_open)
        m.setattr(os, "write", fake_write)
        yield counter


def _full(path: Any, dir_fd: int | None = None) -> str | None:
    """The absolute path a call acts on (None for a file descriptor)."""
    try:
        name = os.fsdecode(path)
    except TypeError:
        return None
    if dir_fd is not None:  # shutil.rmtree and friends work relative to an open directory
        name = os.path.join(os.readlink(f"/proc/self/fd/{dir_fd}"), name)
    return os.path.abspath(name)


def _under(path: Any, roots: tuple[Path, ...], dir_fd: int | None = None) -> bool:
    full = _full(path, dir_fd)
    if full is None:
        return False
    p = Path(full)
    return any(p == r or r in p.parents for r in roots)


def _erofs(path: Any) -> OSError:
    return OSError(errno.EROFS, os.strerror(errno.EROFS), os.fsdecode(path))


@contextlib.contextmanager
def read_only(monkeypatch: pytest.MonkeyPatch, *folders: Path) -> Iterator[None]:
    """Make ``folders`` (and everything under them) behave like a read-only mount: reads work, writes raise EROFS."""
    roots = tuple(Path(f).absolute() for f in folders)
    real_open, real_os_open = builtins.open, os.open
    write_flags = os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_TRUNC | os.O_APPEND

    def fake_open(file: Any, mode: str = "r", *args: Any, **kwargs: Any) -> Any:
        if any(m in mode for m in _WRITE_MODES) and _under(file, roots):
            raise _erofs(file)
        return real_open(file, mode, *args, **kwargs)

    def fake_os_open(path: Any, flags: int, *args: Any, **kwargs: Any) -> int:
        if flags & write_flags and _under(path, roots, kwargs.get("dir_fd")):
            if flags & os.O_CREAT and flags & os.O_EXCL and os.path.lexists(path):
                raise OSError(errno.EEXIST, os.strerror(errno.EEXIST), os.fsdecode(path))
            raise _erofs(path)
        return real_os_open(path, flags, *args, **kwargs)

    def guard(real: Any, *, must_exist: bool, exists_error: bool = False) -> Any:
        def fake(path: Any, *args: Any, **kwargs: Any) -> Any:
            if _under(path, roots, kwargs.get("dir_fd")):
                full = str(_full(path, kwargs.get("dir_fd")))
                if exists_error and os.path.lexists(full):
                    raise OSError(errno.EEXIST, os.strerror(errno.EEXIST), full)
                if must_exist and not os.path.lexists(full):
                    raise OSError(errno.ENOENT, os.strerror(errno.ENOENT), full)
                raise _erofs(full)
            return real(path, *args, **kwargs)
        return fake

    def two_paths(real: Any) -> Any:
        def fake(src: Any, dst: Any, *args: Any, **kwargs: Any) -> Any:
            if _under(src, roots) or _under(dst, roots):
                raise _erofs(dst if _under(dst, roots) else src)
            return real(src, dst, *args, **kwargs)
        return fake

    def fake_symlink(target: Any, link: Any, *args: Any, **kwargs: Any) -> Any:
        if _under(link, roots):
            raise _erofs(link)
        return real_symlink(target, link, *args, **kwargs)

    real_symlink = os.symlink
    with monkeypatch.context() as m:
        m.setattr(builtins, "open", fake_open)
        m.setattr(io, "open", fake_open)
        m.setattr(os, "open", fake_os_open)
        m.setattr(os, "mkdir", guard(os.mkdir, must_exist=False, exists_error=True))
        for name in ("unlink", "remove", "rmdir", "chmod"):
            m.setattr(os, name, guard(getattr(os, name), must_exist=True))
        m.setattr(os, "rename", two_paths(os.rename))
        m.setattr(os, "replace", two_paths(os.replace))
        m.setattr(os, "symlink", fake_symlink)
        yield


def snapshot(folder: Path) -> dict[str, bytes | str]:
    """Every entry under ``folder``: file bytes, link targets, '<dir>' for folders (to compare before/after)."""
    out: dict[str, bytes | str] = {}
    if not folder.exists():
        return out
    for p in sorted(folder.rglob("*")):
        rel = p.relative_to(folder).as_posix()
        if p.is_symlink():
            out[rel] = "-> " + os.readlink(p)
        elif p.is_dir():
            out[rel] = "<dir>"
        else:
            out[rel] = p.read_bytes()
    return out


def leftovers(folder: Path) -> list[str]:
    """Temporary files and staging folders a failed write must not leave behind."""
    if not folder.exists():
        return []
    return sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*")
                  if p.name.endswith((".tmp", ".staging")) or ".tmp-" in p.name)
