"""What the installer needs to know about the device it runs on, read from files (paths injectable):

* L4T release: ``/etc/nv_tegra_release`` (``vqz_edge.device_info.read_l4t``), JetPack from the catalog's table;
* SoC / compute capability: ``/proc/device-tree/compatible`` (``nvidia,tegra234`` = Orin = 8.7, the
  mapping in dusty-nv/jetson-containers ``l4t_version.py``, cited in ``vqz_edge/data/targets.toml``);
* module name: ``/proc/device-tree/model``;
* RAM: jetson-stats (jtop) when available, ``/proc/meminfo`` otherwise (``vqz_edge.memory.read_live_memory``);
* TensorRT version: the imported ``tensorrt`` module, only on the TensorRT backend path.

Nothing here imports TensorRT or CUDA unless asked for the TensorRT version.
"""

from __future__ import annotations

import platform
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..log import get_logger

_log = get_logger(__name__)

NV_TEGRA_RELEASE = Path("/etc/nv_tegra_release")
MEMINFO = Path("/proc/meminfo")
DEVICE_TREE = Path("/proc/device-tree")
# SoC compatible string -> CUDA compute capability (Jetson integrated GPUs).
SOC_COMPUTE_CAPABILITY = {"tegra234": "8.7", "tegra194": "7.2", "tegra186": "6.2", "tegra210": "5.3"}
# Words of /proc/device-tree/model -> target family (prefix of the catalog names).
_FAMILIES = (("agx orin", "agx-orin"), ("orin nx", "orin-nx"), ("orin nano", "orin-nano"))


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


def tensorrt_version() -> str | None:
    """The version of the TensorRT this process can import, or None."""
    from ..trt.compat import import_tensorrt, runtime_version, tensorrt_available

    if not tensorrt_available():
        return None
    return str(runtime_version(import_tensorrt()))


def detect_device(paths: DevicePaths = DevicePaths(), *, want_tensorrt: bool = False) -> DeviceInfo:
    from ..device_info import read_l4t
    from ..memory import read_live_memory
    from ..targets import jetpack_for_l4t

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
    except Exception as exc:  # noqa: BLE001 -- RAM is informative here; the budget check reports what it lacks
        _log.warning("cannot read free memory (%s)", exc)
    return DeviceInfo(
        l4t=l4t,
        jetpack=jp.version if jp else None,
        tensorrt=tensorrt_version() if want_tensorrt else None,
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
