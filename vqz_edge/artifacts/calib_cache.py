"""TensorRT calibration cache: the text format ``IInt8EntropyCalibrator2.read_calibration_cache`` returns.

    TRT-100300-EntropyCalibration2
    input: 3c0f8f5c
    /features/features.0/features.0.2/Clip_output_0: 3d2ab8c1

Line 1 is ``TRT-<NV_TENSORRT_VERSION>-<algorithm>``; TensorRT ignores a cache whose version differs from
its own (8.6.1 -> 8601, 10.3.0 -> 100300). Each further line is ``<tensor name>: <hex>`` where hex is the
big-endian IEEE-754 bits of the float32 scale = amax / 127. Tensor names are ONNX value names, which is
how TensorRT's ONNX parser names the network's tensors. Lines are sorted by tensor name (determinism).
"""

from __future__ import annotations

import re
import struct
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

from ..errors import InputError, require_file
from ..fsutil import atomic_write_bytes

ALGORITHM = "EntropyCalibration2"
_HEADER = re.compile(r"^TRT-(\d+)-([A-Za-z0-9]+)$")


@dataclass(frozen=True)
class CalibrationCache:
    version_code: int
    algorithm: str = ALGORITHM
    scales: Mapping[str, float] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.version_code <= 0:
            raise ValueError(f"cache version code must be positive, got {self.version_code}")
        for name, s in self.scales.items():
            if not name or "\n" in name:
                raise ValueError(f"invalid tensor name {name!r} in calibration cache")
            if not s > 0 or s != s or s == float("inf"):
                raise ValueError(f"tensor {name!r}: scale must be finite and positive, got {s}")

    @classmethod
    def from_amax(cls, amax: Mapping[str, float], version_code: int, algorithm: str = ALGORITHM) -> CalibrationCache:
        # A tensor that was always zero gets the smallest positive scale TensorRT accepts meaningfully.
        return cls(version_code, algorithm, {k: max(float(v), 1e-12) / 127.0 for k, v in amax.items()})

    def amax(self) -> dict[str, float]:
        return {k: v * 127.0 for k, v in self.scales.items()}


def _f32_hex(value: float) -> str:
    return struct.pack(">f", value).hex()


def _hex_f32(text: str) -> float:
    return float(struct.unpack(">f", bytes.fromhex(text))[0])


def cache_bytes(cache: CalibrationCache) -> bytes:
    lines = [f"TRT-{cache.version_code}-{cache.algorithm}"]
    lines += [f"{name}: {_f32_hex(cache.scales[name])}" for name in sorted(cache.scales)]
    return ("\n".join(lines) + "\n").encode("utf-8")


def parse_cache(data: bytes, source: str = "<bytes>") -> CalibrationCache:
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise InputError(f"calibration cache {source} is not text: {exc}") from exc
    lines = [ln for ln in text.splitlines() if ln.strip()]
    if not lines:
        raise InputError(f"calibration cache {source} is empty")
    m = _HEADER.match(lines[0].strip())
    if not m:
        raise InputError(
            f"calibration cache {source}: first line {lines[0][:60]!r} is not a TensorRT header "
            "'TRT-<version>-<algorithm>'"
        )
    scales: dict[str, float] = {}
    for n, line in enumerate(lines[1:], start=2):
        name, sep, hexval = line.rpartition(": ")
        hexval = hexval.strip()
        if not sep or not re.fullmatch(r"[0-9a-fA-F]{8}", hexval):
            raise InputError(f"calibration cache {source}, line {n}: expected '<tensor>: <8 hex digits>', got {line[:80]!r}")
        if name in scales:
            raise InputError(f"calibration cache {source}, line {n}: tensor {name!r} appears twice")
        scales[name] = _hex_f32(hexval)
    try:
        return CalibrationCache(int(m.group(1)), m.group(2), scales)
    except ValueError as exc:
        raise InputError(f"calibration cache {source}: {exc}") from exc


def write_cache(path: Path, cache: CalibrationCache) -> None:
    atomic_write_bytes(Path(path), cache_bytes(cache))


def read_cache(path: Path) -> CalibrationCache:
    path = Path(path)
    require_file(path, "calibration cache")
    return parse_cache(path.read_bytes(), str(path))


@dataclass(frozen=True)
class CacheCheck:
    missing: tuple[str, ...]  # tensors the network has but the cache lacks
    extra: tuple[str, ...]  # tensors in the cache the network does not have
    version_ok: bool

    @property
    def ok(self) -> bool:
        return self.version_ok and not self.extra and not self.missing

    def describe(self) -> str:
        parts = []
        if not self.version_ok:
            parts.append("header version differs from the target TensorRT")
        if self.missing:
            parts.append(f"{len(self.missing)} network tensor(s) missing from the cache, e.g. {list(self.missing[:3])}")
        if self.extra:
            parts.append(f"{len(self.extra)} cache tensor(s) not in the network, e.g. {list(self.extra[:3])}")
        return "; ".join(parts) or "cache matches"


def check_cache(cache: CalibrationCache, tensor_names: Iterable[str], version_code: int | None = None) -> CacheCheck:
    """Compare a cache with a network's calibrated tensors (e.g. a cache made for another model)."""
    names = set(tensor_names)
    have = set(cache.scales)
    return CacheCheck(
        missing=tuple(sorted(names - have)),
        extra=tuple(sorted(have - names)),
        version_ok=version_code is None or cache.version_code == version_code,
    )
