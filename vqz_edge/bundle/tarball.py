"""Deterministic tar writing and strict, safe tar reading.

Writing: entries sorted by name (byte order), plain USTAR headers with fixed mtime/uid/gid/mode and empty
owner names, regular files only (no directory entries), relative names from a restricted alphabet, content
padded to 512-byte blocks and two zero blocks at the end (no record padding). Same inputs -> same bytes.

Reading (``scan_tar``): one sequential pass with a small strict USTAR parser that accepts exactly what
``write_tar`` writes. Every entry must be a regular file with a safe relative name (no absolute path, no
``..``, no links, no device files, no FIFOs, no extended headers, no duplicates, sorted), every header
must equal the canonical header for its name and size, padding must be zero, and the file must end
right after the two zero blocks. Anything outside the file contents that differs from the canonical
form (a header field, padding, the trailer, appended bytes) is rejected, so a signature over the
contents (via the manifest's hashes) covers every byte of the file.
"""

from __future__ import annotations

import functools
import hashlib
import io
import os
import re
import tarfile
import typing
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from ..errors import InputError
from ..fsutil import FILE_MODE
from .errors import BundleIntegrityError, UnsafeBundleError

BLOCK = 512
CHUNK = 1 << 20
FIXED_MTIME = 0
FIXED_MODE = 0o644
MAX_NAME = 100  # the USTAR name field; we never use the prefix field
MAX_USTAR_SIZE = 8**11 - 1  # the largest size a canonical (plain USTAR, 11 octal digits) header holds
_COMPONENT = r"[A-Za-z0-9_][A-Za-z0-9._-]*"
NAME_RE = re.compile(rf"^{_COMPONENT}(?:/{_COMPONENT})*$")
_TYPE_NAMES = {
    tarfile.SYMTYPE: "a symbolic link",
    tarfile.LNKTYPE: "a hard link",
    tarfile.CHRTYPE: "a character device",
    tarfile.BLKTYPE: "a block device",
    tarfile.FIFOTYPE: "a FIFO",
    tarfile.DIRTYPE: "a directory entry",
    tarfile.CONTTYPE: "a contiguous file",
}

Source = typing.Union[Path, bytes]  # typing: Python 3.8


def check_entry_name(name: str) -> str:
    """Raise UnsafeBundleError unless ``name`` is a safe relative entry name."""
    if not name:
        raise UnsafeBundleError("bundle entry with an empty name")
    if name.startswith("/") or re.match(r"^[A-Za-z]:", name):
        raise UnsafeBundleError(f"bundle entry {name!r} is an absolute path", hint="bundles hold relative paths only")
    parts = name.replace("\\", "/").split("/")
    if ".." in parts:
        raise UnsafeBundleError(f"bundle entry {name!r} contains '..' (path traversal)")
    if len(name.encode("utf-8")) > MAX_NAME or not NAME_RE.match(name):
        raise UnsafeBundleError(
            f"bundle entry {name!r} is not an allowed name (relative, at most {MAX_NAME} bytes of "
            "[A-Za-z0-9._-] components separated by '/', none starting with '.' or '-')"
        )
    return name


def _header(name: str, size: int) -> bytes:
    info = tarfile.TarInfo(name)
    info.size = size
    info.mtime = FIXED_MTIME
    info.mode = FIXED_MODE
    info.uid = info.gid = 0
    info.uname = info.gname = ""
    info.type = tarfile.REGTYPE
    return info.tobuf(format=tarfile.USTAR_FORMAT, encoding="utf-8", errors="strict")


def _padding(size: int) -> bytes:
    return b"\0" * (-size % BLOCK)


TRAILER = b"\0" * (2 * BLOCK)


def _chunks(source: Source) -> Iterator[bytes]:
    if isinstance(source, bytes):
        yield source
        return
    with open(source, "rb") as fh:
        while block := fh.read(CHUNK):
            yield block


def _size(source: Source) -> int:
    return len(source) if isinstance(source, bytes) else Path(source).stat().st_size


def write_tar(dest: BinaryIO, entries: Mapping[str, Source]) -> int:
    """Write the deterministic tar of ``entries`` (name -> bytes or file path) to ``dest``; return its size."""
    total = 0
    for name in sorted(entries, key=lambda n: n.encode("utf-8")):
        check_entry_name(name)
        source = entries[name]
        size = _size(source)
        head = _header(name, size)
        dest.write(head)
        written = 0
        for block in _chunks(source):
            dest.write(block)
            written += len(block)
        if written != size:
            raise BundleIntegrityError(f"{name}: file changed size while being written to the bundle")
        dest.write(_padding(size))
        total += len(head) + size + len(_padding(size))
    dest.write(TRAILER)
    return total + len(TRAILER)


def tar_bytes(entries: Mapping[str, Source]) -> bytes:
    buf = io.BytesIO()
    write_tar(buf, entries)
    return buf.getvalue()


class _Reader:
    """Sequential reads that count and hash every byte of the input."""

    def __init__(self, raw: BinaryIO) -> None:
        self.raw = raw
        self.sha = hashlib.sha256()
        self.count = 0

    def read(self, n: int) -> bytes:
        buf = bytearray()
        while len(buf) < n:
            block = self.raw.read(n - len(buf))
            if not block:
                break
            buf += block
        data = bytes(buf)
        self.sha.update(data)
        self.count += len(data)
        return data


@dataclass(frozen=True)
class ScanResult:
    names: tuple[str, ...]
    size: int
    sha256: str


MemberHandler = typing.Callable[[str, int, typing.Iterator[bytes]], None]  # typing: Python 3.8
ZERO_BLOCK = b"\0" * BLOCK


def _field_text(raw: bytes) -> str:
    return raw.split(b"\0", 1)[0].decode("utf-8", "replace")


def _octal(raw: bytes, what: str, where: str) -> int:
    text = raw.split(b"\0", 1)[0].strip(b" ").decode("ascii", "replace")
    if not text or not re.fullmatch(r"[0-7]+", text):
        raise BundleIntegrityError(f"{where}: tar header field {what} is not an octal number ({raw!r})")
    return int(text, 8)


@functools.lru_cache(maxsize=256)
def _canonical_header(name: str, size: int) -> bytes:
    return _header(name, size)


def _parse_header(head: bytes, offset: int) -> tuple[str, int]:
    """Name and size of a tar header block, refusing anything but a canonical regular-file entry."""
    where = f"tar header at byte {offset}"
    stored = _octal(head[148:156], "chksum", where)
    computed = sum(head[:148]) + 8 * 32 + sum(head[156:])
    if stored != computed:
        raise BundleIntegrityError(f"{where} is corrupted (checksum {stored} != {computed})",
                                   hint="the bundle was altered or damaged in transit; copy it again")
    name = _field_text(head[0:100])
    prefix = _field_text(head[345:500]) if head[257:263] == b"ustar\0" else ""
    if prefix:
        name = f"{prefix}/{name}"
    typeflag = head[156:157]
    name_for_check = name.rstrip("/") if typeflag == tarfile.DIRTYPE else name
    check_entry_name(name_for_check)
    if typeflag not in (tarfile.REGTYPE, tarfile.AREGTYPE):
        kind = _TYPE_NAMES.get(typeflag, f"a tar entry of type {typeflag!r}")
        link = _field_text(head[157:257])
        raise UnsafeBundleError(
            f"bundle entry {name!r} is {kind}" + (f" (-> {link!r})" if link else "") + "; bundles hold regular files only",
            hint="links, devices, FIFOs and extended headers are refused",
        )
    size = _octal(head[124:136], "size", f"entry {name!r}")
    return name, size


def scan_tar(fileobj: BinaryIO, handle: MemberHandler, *, max_member_size: int = 64 << 30) -> ScanResult:
    """Read a tar sequentially, handing each entry's name, size and content chunks to ``handle``.

    Accepts exactly what :func:`write_tar` writes: every header must be the canonical header of its name
    and size, padding zero, entries sorted and unique, then two zero blocks and the end of the file.
    Raises UnsafeBundleError for unsafe entries (absolute paths, ``..``, links, devices, FIFOs) and
    BundleIntegrityError for anything else that is not canonical (truncation, altered headers or padding,
    appended bytes). ``handle`` may raise to stop early; whatever it does not consume is read here.
    """
    r = _Reader(fileobj)
    names: list[str] = []
    while True:
        offset = r.count
        head = r.read(BLOCK)
        if len(head) < BLOCK:
            raise BundleIntegrityError(
                f"bundle is truncated at byte {r.count} (no end-of-archive marker)", hint="copy the bundle again")
        if head == ZERO_BLOCK:
            if r.read(BLOCK) != ZERO_BLOCK:
                raise BundleIntegrityError(f"bundle has a damaged end-of-archive marker at byte {offset}")
            if r.read(1):
                raise BundleIntegrityError(f"bundle has extra bytes after the end-of-archive marker (byte {offset + 2 * BLOCK})",
                                           hint="the file was modified after it was written")
            break
        name, size = _parse_header(head, offset)
        if names and name.encode("utf-8") <= names[-1].encode("utf-8"):
            what = "appears twice" if name in names else f"is out of order (after {names[-1]!r})"
            raise BundleIntegrityError(f"bundle entry {name!r} {what}; bundle entries are sorted and unique")
        if size > min(max_member_size, MAX_USTAR_SIZE):  # write_tar never writes more (11 octal digits)
            raise BundleIntegrityError(f"bundle entry {name!r} has an implausible size {size}")
        if head != _canonical_header(name, size):
            raise BundleIntegrityError(
                f"tar header of entry {name!r} differs from the canonical form (mode, owner, time or format fields "
                "were altered)",
                hint="the bundle was modified after it was written; do not install it",
            )
        names.append(name)
        got = 0

        def chunks(remaining: int = size) -> Iterator[bytes]:
            nonlocal got
            while remaining > 0:
                block = r.read(min(CHUNK, remaining))
                if not block:
                    return
                got += len(block)
                remaining -= len(block)
                yield block

        it = chunks()
        handle(name, size, it)
        for _ in it:  # consume what the handler left
            pass
        if got != size:
            raise BundleIntegrityError(f"bundle is truncated inside entry {name!r} ({got} of {size} bytes)",
                                       hint="copy the bundle again")
        pad = -size % BLOCK
        if pad and r.read(pad) != b"\0" * pad:
            raise BundleIntegrityError(f"padding after entry {name!r} is not zero (altered or truncated)")
    return ScanResult(tuple(names), r.count, r.sha.hexdigest())


def _safe_target(dest: Path, name: str) -> Path:
    target = dest.joinpath(*name.split("/"))
    root = dest.resolve()
    if os.path.commonpath([root, target.parent.resolve()]) != str(root):
        raise UnsafeBundleError(f"bundle entry {name!r} would be written outside {dest}")
    return target


def write_member(dest: Path, name: str, chunks: Iterable[bytes]) -> Path:
    """Create ``dest/name`` (new file, never following a link) from ``chunks``; return its path."""
    check_entry_name(name)
    target = _safe_target(dest, name)
    target.parent.mkdir(parents=True, exist_ok=True)
    target = _safe_target(dest, name)  # re-check after creating parents
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0)
    fd = os.open(target, flags, FILE_MODE)  # minus the umask
    with os.fdopen(fd, "wb") as fh:
        for block in chunks:
            fh.write(block)
        fh.flush()
        os.fsync(fh.fileno())
    return target


def safe_extract(tar_path: Path, dest: Path) -> ScanResult:
    """Extract a canonical tar into the empty (or new) folder ``dest`` with every safety check.

    On any error the caller owns ``dest`` (a staging folder) and removes it.
    """
    dest = Path(dest)
    dest.mkdir(parents=True, exist_ok=True)
    if any(dest.iterdir()):
        raise InputError(f"extraction folder {dest} is not empty")

    def handle(name: str, size: int, chunks: Iterator[bytes]) -> None:
        write_member(dest, name, chunks)

    with open(tar_path, "rb") as fh:
        return scan_tar(fh, handle)
