"""Admission checks before anything is written: backend, downgrade, target, JetPack/L4T/TensorRT range, memory
budget. Each refuses with InstallRefusedError (or BudgetError) naming what does not match."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ..device import DeviceInfo, identify_targets
from ..errors import (
    DependencyError,
)
from ..log import get_logger
from ..memory import check_budget, require_fit
from ..memory.estimate import estimate_onnx
from ..targets import get_target, list_targets
from ..trt.compat import WHERE_TO_RUN, tensorrt_available
from .errors import InstallRefusedError
from .manifest import Manifest

_log = get_logger(__name__)


# ------------------------------------------------------------------------------------------ checks


def resolve_backend(backend: str) -> str:

    if backend == "onnxruntime":
        return backend
    available = tensorrt_available()
    if backend == "tensorrt" and not available:
        raise DependencyError(
            "--backend tensorrt: TensorRT is not importable on this host, so the engine cannot be built here",
            hint=f"{WHERE_TO_RUN}; or pass --backend onnxruntime to serve the ONNX model on the CPU",
        )
    return "tensorrt" if available else "onnxruntime"


def check_downgrade(manifest: Manifest, state: dict[str, Any]) -> None:
    highest = int(state.get("highest_bundle_version", 0))
    if manifest.bundle_version < highest:
        raise InstallRefusedError(
            f"bundle version {manifest.bundle_version} is lower than the highest version installed here "
            f"({highest}): downgrades are refused",
            hint="ship a new bundle with a higher --bundle-version; to go back, use vqz-edge rollback",
        )


def check_target(manifest: Manifest, device: DeviceInfo, backend: str, declared: str | None,
                 targets_files: tuple[Path, ...] = ()) -> list[str]:
    """Refuse a bundle made for another module. Returns notes about what could not be checked."""
    notes: list[str] = []
    bundle_target = manifest.target
    if declared is not None:
        get_target(declared, targets_files)  # unknown name -> InputError listing the known ones
        if declared != bundle_target:
            raise InstallRefusedError(
                f"bundle {manifest.bundle_id} is for target {bundle_target}, this device is {declared}",
                hint=f"bundle the model with --target {declared}",
            )
        return notes
    if not device.is_jetson:
        if backend == "tensorrt":
            raise InstallRefusedError(
                f"this host is not a Jetson (no L4T release file) and the bundle targets {bundle_target}",
                hint="install on the device; on a build host, --backend onnxruntime exercises the flow on the CPU",
            )
        notes.append(f"not a Jetson: target ({bundle_target}) and JetPack/L4T range not checked (onnxruntime backend)")
        return notes
    comp = manifest.compatibility.compute_capability
    if device.compute_capability and device.compute_capability != comp:
        raise InstallRefusedError(
            f"this device's GPU has compute capability {device.compute_capability} ({device.soc}); bundle "
            f"{manifest.bundle_id} targets {bundle_target} (compute capability {comp})",
        )
    names = identify_targets(device, list_targets(targets_files))
    if names and bundle_target not in names:
        ram = (device.ram_total_bytes or 0) / (1 << 30)
        raise InstallRefusedError(
            f"bundle {manifest.bundle_id} is for target {bundle_target}; this device looks like "
            f"{' / '.join(names)} ({device.model}, {ram:.1f} GiB RAM)",
            hint=f"bundle the model with --target {names[0]}, or pass --device-target if detection is wrong",
        )
    if not names:
        notes.append(f"could not identify the module from the device tree ({device.model!r}); target not checked")
    return notes


def check_range(manifest: Manifest, device: DeviceInfo, backend: str) -> None:
    comp = manifest.compatibility
    allowed = ", ".join(f"JetPack {j} (L4T {lt})" for j, lt in zip(comp.jetpack, comp.l4t))
    if device.l4t is not None and not comp.l4t_allowed(device.l4t):
        jp = f" (JetPack {device.jetpack})" if device.jetpack else ""
        raise InstallRefusedError(
            f"this device runs L4T {device.l4t}{jp}; bundle {manifest.bundle_id} allows {allowed}",
            hint="bundle again with --jetpack including this release, or upgrade/downgrade JetPack on the device",
        )
    if backend == "tensorrt":
        if device.tensorrt is None:
            raise InstallRefusedError("the TensorRT version of this device is unknown; cannot check the bundle's range")
        if not comp.tensorrt_allowed(device.tensorrt):
            raise InstallRefusedError(
                f"this device runs TensorRT {device.tensorrt}; bundle {manifest.bundle_id} allows TensorRT "
                f"{comp.tensorrt_min} .. {comp.tensorrt_max} ({allowed})",
            )


def check_memory(manifest: Manifest, bundle_dir: Path | None, device: DeviceInfo, backend: str,
                 targets_files: tuple[Path, ...] = ()) -> dict[str, Any]:
    """Memory budget of the model on the bundle's target (catalog numbers) and, on a Jetson, against the
    memory free right now. Raises BudgetError (exit 7) with the breakdown when it does not fit."""
    if bundle_dir is None:
        return {}
    target = get_target(manifest.target, targets_files)
    onnx_name = manifest.artifact("qdq_onnx") or manifest.artifacts["onnx"]
    max_batch = max([int(i["max_shape"][0]) for i in manifest.build.get("inputs", []) if i.get("max_shape")] or [1])
    est = estimate_onnx(bundle_dir / onnx_name, batch=max_batch)
    overhead: list[Any] | None = None if backend == "tensorrt" else []
    trt = device.tensorrt if backend == "tensorrt" else None
    static = require_fit(check_budget(target, est.items, trt_version=trt, overhead=overhead,
                                      subject=manifest.bundle_id), action=f"installing {manifest.bundle_id}")
    out: dict[str, Any] = {"static": static.to_dict()}
    if device.is_jetson and device.ram_available_bytes is not None:
        live = require_fit(
            check_budget(target, est.items, trt_version=trt, overhead=overhead, live_free_bytes=device.ram_available_bytes,
                         live_source=device.ram_source, subject=manifest.bundle_id),
            action=f"installing {manifest.bundle_id} (memory free now)",
        )
        out["live"] = live.to_dict()
    return out
