"""Pre-load check of a serialized TensorRT engine ("plan") without TensorRT.

TensorRT refuses (or crashes on) a plan built by another TensorRT version, so the installer and the
runtime read the plan header first and compare it with what the device runs and what the manifest says.

The layout is the one ``trtexec --getPlanVersionOnly --loadEngine=F`` reads, in ``printPlanVersion`` of
NVIDIA/TensorRT ``samples/common/sampleEngines.cpp`` (TensorRT OSS, read at commit 147005ff): it reads the
first 28 bytes, checks the first little-endian uint32 against the plan tag ``kPLAN_FILE_TAG = 0x74727466``
(the bytes ``f t r t``), switches on the second uint32 (the serialization version; only 0 is
understood there) and prints bytes 24, 25, 26 and 27 as "Plan was created with TensorRT version
A.B.C.D". This module does exactly that and nothing more.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from pathlib import Path

from ..errors import InputError, require_file
from .errors import BundleIntegrityError

PLAN_FILE_TAG = 0x74727466
HEADER_SIZE = 28
VERSION_OFFSET = 24


@dataclass(frozen=True)
class PlanHeader:
    tag: int
    serialization_version: int
    trt_version: tuple[int, int, int, int]

    @property
    def version_text(self) -> str:
        return ".".join(str(x) for x in self.trt_version)

    def matches(self, trt: str) -> bool:
        """Same TensorRT major.minor.patch as ``trt`` ('10.3.0' or '10.3.0.30')."""
        want = tuple(int(x) for x in trt.split(".")[:3])
        return self.trt_version[: len(want)] == want


def parse_plan_header(data: bytes, *, source: str = "plan") -> PlanHeader:
    if len(data) < HEADER_SIZE:
        raise BundleIntegrityError(f"{source} is {len(data)} bytes, shorter than a TensorRT plan header ({HEADER_SIZE})")
    tag, serialization = struct.unpack_from("<II", data, 0)
    if tag != PLAN_FILE_TAG:
        raise BundleIntegrityError(
            f"{source} is not a TensorRT plan (tag 0x{tag:08x}, expected 0x{PLAN_FILE_TAG:08x} 'ftrt')",
            hint="the engine file is corrupt or not an engine; rebuild it",
        )
    if serialization != 0:
        raise BundleIntegrityError(
            f"{source} has plan serialization version {serialization}; only version 0 has a known header layout "
            "(as in trtexec --getPlanVersionOnly)",
        )
    a, b, c, d = data[VERSION_OFFSET : VERSION_OFFSET + 4]
    return PlanHeader(tag, serialization, (a, b, c, d))


def read_plan_header(path: Path) -> PlanHeader:
    path = Path(path)
    require_file(path, "engine file")
    with open(path, "rb") as fh:
        return parse_plan_header(fh.read(HEADER_SIZE), source=str(path))


def check_plan_version(path: Path, device_trt: str, manifest_trt: str | None = None) -> PlanHeader:
    """Raise unless the plan at ``path`` was built by ``device_trt`` (and by ``manifest_trt`` when given)."""
    header = read_plan_header(path)
    if not header.matches(device_trt):
        raise InputError(
            f"{path} was built with TensorRT {header.version_text}, this device runs TensorRT {device_trt}",
            hint="rebuild the engine on this device (vqz-edge install --root DIR rebuilds from the kept bundle)",
        )
    if manifest_trt is not None and not header.matches(manifest_trt):
        raise BundleIntegrityError(
            f"{path}: plan header says TensorRT {header.version_text}, its manifest says {manifest_trt}",
        )
    return header


def synthetic_plan_header(version: tuple[int, int, int, int], *, serialization: int = 0, tag: int = PLAN_FILE_TAG) -> bytes:
    """A 28-byte header with the given fields (for tests and examples; not a loadable engine)."""
    head = bytearray(struct.pack("<II", tag, serialization) + b"\0" * (HEADER_SIZE - 8))
    head[VERSION_OFFSET : VERSION_OFFSET + 4] = bytes(version)
    return bytes(head)
