"""Free memory right now: jetson-stats (jtop) on a Jetson, /proc/meminfo on any Linux host.

On Jetson the GPU allocates from the same RAM, so "free for a new engine" is the kernel's
``MemAvailable`` (free + reclaimable page cache), not ``MemFree``: CUDA's ``cudaMemGetInfo`` on an
integrated GPU reports something close to MemFree and under-states what can be allocated once the
page cache is dropped.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from ..errors import DataError, DependencyError
from ..log import get_logger

_log = get_logger(__name__)

MEMINFO = Path("/proc/meminfo")
_LINE = re.compile(r"^(?P<key>[^:\s]+):\s+(?P<value>\d+)(?:\s+(?P<unit>[kKmMgG]?B))?\s*$")
_UNIT = {"B": 1, "kB": 1024, "KB": 1024, "mB": 1 << 20, "MB": 1 << 20, "gB": 1 << 30, "GB": 1 << 30}


@dataclass(frozen=True)
class MemInfo:
    """Parsed /proc/meminfo, all in bytes (HugePages_* counts are kept as plain numbers)."""

    total_bytes: int
    free_bytes: int
    available_bytes: int
    available_estimated: bool
    swap_total_bytes: int
    swap_free_bytes: int
    nvmap_used_bytes: int | None
    fields: Mapping[str, int]
    source: str = ""


def parse_meminfo(text: str, *, source: str = "/proc/meminfo") -> MemInfo:
    """Parse the text of /proc/meminfo. Kernels before 3.14 have no MemAvailable: it is then estimated
    as MemFree + Buffers + Cached (``available_estimated=True``)."""
    values: dict[str, int] = {}
    for n, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        m = _LINE.match(line.strip())
        if not m:
            _log.debug("%s:%d: skipping unparsable line %r", source, n, line)
            continue
        unit = m.group("unit")
        values[m.group("key")] = int(m.group("value")) * (_UNIT.get(unit, 1) if unit else 1)
    if "MemTotal" not in values or "MemFree" not in values:
        raise DataError(f"{source} has no MemTotal/MemFree lines; is it a /proc/meminfo file?")
    estimated = "MemAvailable" not in values
    available = (
        values["MemFree"] + values.get("Buffers", 0) + values.get("Cached", 0) if estimated else values["MemAvailable"]
    )
    return MemInfo(
        total_bytes=values["MemTotal"],
        free_bytes=values["MemFree"],
        available_bytes=min(available, values["MemTotal"]),
        available_estimated=estimated,
        swap_total_bytes=values.get("SwapTotal", 0),
        swap_free_bytes=values.get("SwapFree", 0),
        nvmap_used_bytes=values.get("NvMapMemUsed"),
        fields=values,
        source=source,
    )


def read_meminfo(path: Path = MEMINFO) -> MemInfo:
    path = Path(path)
    try:
        text = path.read_text(encoding="ascii", errors="replace")
    except OSError as exc:
        raise DependencyError(
            f"cannot read {path} ({exc}); live memory needs Linux (or jetson-stats on a Jetson)",
            hint="drop --live to check against the catalog numbers",
        ) from exc
    return parse_meminfo(text, source=str(path))


@dataclass(frozen=True)
class LiveMemory:
    total_bytes: int
    available_bytes: int
    source: str


def read_jtop() -> LiveMemory | None:
    """RAM from jetson-stats' jtop service, or None when jtop is not installed or not running."""
    try:
        from jtop import jtop  # jetson-stats, optional: only on a Jetson
    except ImportError:
        return None
    try:
        with jtop() as jetson:
            if not jetson.ok():
                return None
            ram = jetson.memory["RAM"]  # kB: tot, used (= tot - free - buffers - cached), free, ...
            total = int(ram["tot"]) * 1024
            used = int(ram["used"]) * 1024
    except Exception as exc:  # noqa: BLE001 -- jtop raises JtopException / socket errors when its service is down
        _log.info("jtop is installed but not usable (%s); falling back to /proc/meminfo", exc)
        return None
    return LiveMemory(total, max(0, total - used), "jtop (jetson-stats)")


def read_live_memory(*, use_jtop: bool = True, meminfo_path: Path = MEMINFO) -> LiveMemory:
    """Free memory now: jtop when available (Jetson), else /proc/meminfo MemAvailable."""
    if use_jtop:
        j = read_jtop()
        if j is not None:
            return j
    info = read_meminfo(meminfo_path)
    how = "MemFree+Buffers+Cached" if info.available_estimated else "MemAvailable"
    return LiveMemory(info.total_bytes, info.available_bytes, f"{info.source} {how}")


def process_peak_rss_bytes() -> int:
    """This process's peak resident set (VmHWM), falling back to getrusage's ru_maxrss."""
    status = Path(f"/proc/{os.getpid()}/status")
    try:
        for line in status.read_text(encoding="ascii", errors="replace").splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    import resource
    import sys

    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return int(rss) if sys.platform == "darwin" else int(rss) * 1024
