"""Facts about the device (or host) vqz-edge runs on, read in one place. Pure Python; every path injectable.

* **L4T / JetPack**: ``/etc/nv_tegra_release`` (``# R36 (release), REVISION: 4.3, ...`` is L4T 36.4.3 =
  JetPack 6.2), JetPack from the ``nvidia-jetpack`` package, else the target catalog's table.
* **SoC / compute capability without CUDA**: ``/proc/device-tree/compatible`` (``nvidia,tegra234`` = Orin =
  8.7, the mapping of dusty-nv/jetson-containers ``l4t_version.py``, cited in ``vqz_edge/data/targets.toml``);
  module name from ``/proc/device-tree/model``.
* **RAM**: jetson-stats (jtop) when its service runs, else ``/proc/meminfo``. On a Jetson the GPU allocates
  from the same RAM, so "free for a new engine" is the kernel's ``MemAvailable`` (free + reclaimable page
  cache), not ``MemFree``; ``cudaMemGetInfo`` on an integrated GPU reports close to MemFree and under-states it.
* **The CUDA GPU** (name, compute capability, integrated, can map host memory, total memory): through pycuda,
  the CUDA binding the runtime uses (the ``jetson`` extra). Nothing is read at import time.
* **TensorRT**: the version of the ``tensorrt`` this process imports (:mod:`vqz_edge.trt.compat` does the import).
"""

from __future__ import annotations

import importlib
import os
import platform
import re
import shutil
import socket
import subprocess
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .errors import DataError, DependencyError
from .log import get_logger
from .targets import jetpack_for_l4t

_log = get_logger(__name__)

NV_TEGRA_RELEASE = Path("/etc/nv_tegra_release")
MEMINFO = Path("/proc/meminfo")
DEVICE_TREE = Path("/proc/device-tree")
# SoC compatible string -> CUDA compute capability (Jetson integrated GPUs).
SOC_COMPUTE_CAPABILITY = {"tegra234": "8.7", "tegra194": "7.2", "tegra186": "6.2", "tegra210": "5.3"}
# Words of /proc/device-tree/model -> target family (prefix of the catalog names).
_FAMILIES = (("agx orin", "agx-orin"), ("orin nx", "orin-nx"), ("orin nano", "orin-nano"))


# ----------------------------------------------------------------------------------------------- L4T


_RELEASE_RE = re.compile(r"#\s*R(\d+)\s*\(release\),\s*REVISION:\s*(\d+)(?:\.(\d+))?", re.IGNORECASE)


def parse_l4t(text: str) -> str | None:
    """'# R36 (release), REVISION: 4.3, ...' -> '36.4.3'; None when the text is not an L4T release line."""
    m = _RELEASE_RE.search(text or "")
    if not m:
        return None
    return f"{int(m.group(1))}.{int(m.group(2))}.{int(m.group(3) or 0)}"


def read_l4t(path: str | Path = NV_TEGRA_RELEASE) -> str | None:
    """The L4T release of this Jetson, or None on any other host (or an unreadable file)."""
    try:
        return parse_l4t(Path(path).read_text(encoding="utf-8", errors="replace"))
    except OSError:
        return None


def parse_jetpack_package_version(version: str) -> str | None:
    """dpkg version of the nvidia-jetpack package ('6.2+b77', '5.1.2-b104') -> '6.2' / '5.1.2'."""
    m = re.match(r"^\s*(\d+(?:\.\d+){1,2})", version or "")
    return m.group(1) if m else None


def read_jetpack(l4t: str | None) -> str | None:
    """JetPack release: the installed nvidia-jetpack package, else the target catalog's JetPack row for
    this L4T release (containers usually lack the nvidia-jetpack package)."""
    if l4t is None:
        return None
    dpkg = shutil.which("dpkg-query")
    if dpkg:
        try:
            out = subprocess.run([dpkg, "-W", "-f=${Version}", "nvidia-jetpack"], capture_output=True, text=True,
                                 timeout=10, check=False)
            found = parse_jetpack_package_version(out.stdout) if out.returncode == 0 else None
            if found:
                return found
        except (OSError, subprocess.SubprocessError):
            pass
    row = jetpack_for_l4t(l4t)
    return row.version if row is not None else None


def host_name() -> str:
    return socket.gethostname()


# ----------------------------------------------------------------------------------------------- RAM


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
        jtop = importlib.import_module("jtop").jtop  # jetson-stats, optional: only on a Jetson
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


# ----------------------------------------------------------------------------------------------- the GPU


@dataclass(frozen=True)
class GpuInfo:
    name: str
    compute_capability: str  # "8.7"
    integrated: bool  # shares system RAM (Jetson)
    can_map_host_memory: bool  # zero-copy: page-locked host memory mapped into the GPU's address space
    total_bytes: int

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "compute_capability": self.compute_capability, "integrated": self.integrated}


PYCUDA_HINT = "on the Jetson: pip install 'vqz-edge[jetson]' (pycuda, built against JetPack's CUDA)"


def import_pycuda() -> Any:
    """``pycuda.driver`` (the ``jetson`` extra), or DependencyError. pycuda has no type stubs: Any."""
    try:
        return importlib.import_module("pycuda.driver")
    except ImportError as exc:
        raise DependencyError(f"pycuda is not installed ({exc}); vqz-edge reaches the GPU through it",
                              hint=PYCUDA_HINT) from exc


def gpu_from_device(cuda: Any, dev: Any) -> GpuInfo:
    """GpuInfo of a pycuda ``Device``."""
    major, minor = dev.compute_capability()
    attr = cuda.device_attribute
    return GpuInfo(
        name=str(dev.name()),
        compute_capability=f"{int(major)}.{int(minor)}",
        integrated=bool(dev.get_attribute(attr.INTEGRATED)),
        can_map_host_memory=bool(dev.get_attribute(attr.CAN_MAP_HOST_MEMORY)),
        total_bytes=int(dev.total_memory()),
    )


def read_gpu(index: int = 0) -> GpuInfo | None:
    """CUDA device ``index``, or None when there is no usable GPU. DependencyError without pycuda."""
    cuda = import_pycuda()
    try:
        cuda.init()
        if index >= cuda.Device.count():
            return None
        return gpu_from_device(cuda, cuda.Device(index))
    except cuda.Error as exc:  # no driver / no device: a plain "no GPU" for the caller to explain
        _log.info("no usable CUDA device %d: %s", index, exc)
        return None


# ----------------------------------------------------------------------------------------------- the device


@dataclass(frozen=True)
class DevicePaths:
    nv_tegra_release: Path = NV_TEGRA_RELEASE
    meminfo: Path = MEMINFO
    device_tree: Path = DEVICE_TREE
    use_jtop: bool = True


@dataclass(frozen=True)
class DeviceInfo:
    l4t: str | None
    jetpack: str | None
    tensorrt: str | None
    compute_capability: str | None
    soc: str | None
    model: str | None
    ram_total_bytes: int | None
    ram_available_bytes: int | None
    ram_source: str
    machine: str = field(default_factory=platform.machine)

    @property
    def is_jetson(self) -> bool:
        return self.l4t is not None

    def key(self, backend: str) -> str:
        """The build key: a new key means the served artifact must be rebuilt (JetPack/TensorRT upgrade)."""
        parts = [backend]
        parts.append(f"l4t{self.l4t}" if self.l4t else self.machine or "host")
        if backend == "tensorrt":
            parts.append(f"trt{self.tensorrt}")
            if self.compute_capability:
                parts.append("sm" + self.compute_capability.replace(".", ""))
        return "-".join(parts)

    def to_dict(self) -> dict[str, Any]:
        return {
            "l4t": self.l4t, "jetpack": self.jetpack, "tensorrt": self.tensorrt,
            "compute_capability": self.compute_capability, "soc": self.soc, "model": self.model,
            "ram_total_bytes": self.ram_total_bytes, "ram_available_bytes": self.ram_available_bytes,
            "ram_source": self.ram_source, "machine": self.machine, "is_jetson": self.is_jetson,
        }


def _read_dt(path: Path) -> str | None:
    try:
        return path.read_bytes().replace(b"\0", b"\n").decode("utf-8", "replace").strip() or None
    except OSError:
        return None


def detect_device(paths: DevicePaths = DevicePaths(), *, tensorrt: str | None = None) -> DeviceInfo:
    """What the installer needs to know about this device, from files. ``tensorrt``: the version of the
    TensorRT this process imports, when the caller needs it (``vqz_edge.trt.compat.tensorrt_version``)."""
    l4t = read_l4t(paths.nv_tegra_release)
    jp = jetpack_for_l4t(l4t) if l4t else None
    compat = _read_dt(paths.device_tree / "compatible") or ""
    soc = next((s for s in SOC_COMPUTE_CAPABILITY if s in compat), None)
    model = _read_dt(paths.device_tree / "model")
    total = avail = None
    source = "unavailable"
    try:
        live = read_live_memory(use_jtop=paths.use_jtop and l4t is not None, meminfo_path=paths.meminfo)
        total, avail, source = live.total_bytes, live.available_bytes, live.source
    except (DependencyError, DataError) as exc:  # RAM is informative here; the budget check reports what it lacks
        _log.warning("cannot read free memory (%s)", exc)
    return DeviceInfo(
        l4t=l4t,
        jetpack=jp.version if jp else None,
        tensorrt=tensorrt,
        compute_capability=SOC_COMPUTE_CAPABILITY.get(soc) if soc else None,
        soc=soc,
        model=model,
        ram_total_bytes=total,
        ram_available_bytes=avail,
        ram_source=source,
    )


def identify_targets(device: DeviceInfo, targets: list[Any]) -> list[str]:
    """The catalog targets this device may be: family from the device-tree model name, size from MemTotal
    (the smallest modules whose nominal RAM holds what the kernel reports; several when they tie, e.g. a
    module and its "Super" power mode). Empty when unsure."""
    if not device.model or device.ram_total_bytes is None:
        return []
    text = device.model.lower()
    family = next((prefix for words, prefix in _FAMILIES if words in text), None)
    if family is None:
        return []
    total = device.ram_total_bytes
    cands = [t for t in targets if t.name.startswith(family) and t.ram_bytes >= total]
    if not cands:
        return []
    smallest = min(t.ram_bytes for t in cands)
    return sorted(t.name for t in cands if t.ram_bytes == smallest)
