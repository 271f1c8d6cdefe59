"""``vqz-edge install`` / ``rollback`` / ``status``: verified install with an atomic switch on the device.

Layout of an install root::

    ROOT/
      current -> releases/<bundle-id>/builds/<device-key>     (relative symlink, switched atomically)
      releases/<bundle-id>/bundle/                            verified bundle contents (the kept bundle)
      releases/<bundle-id>/builds/<device-key>/               served artifact + release.json
            model.engine + manifest.json   (tensorrt backend: built on this device)
            model.onnx                     (onnxruntime backend: the Q/DQ, else FP32, ONNX)
      state.json        history of releases (a stack; rollback pops), highest bundle version installed
      journal.jsonl     one fsynced JSON line per step of every operation (see journal.py)
      staging/          work in progress; removed by the next run after a crash
      .lock             flock: one installer at a time

``<device-key>`` names what the artifact was built for (backend, L4T, TensorRT, SM): when the device's
JetPack/TensorRT changes, the key changes, and the next ``install`` rebuilds from the kept bundle and
switches only once the new build passes verification.

Order of an install (each step journalled): verify the bundle (signature, every hash, canonical form)
without writing anything; refuse downgrades, wrong targets, devices outside the bundle's range and
models over the memory budget; extract into staging with every check again; move it under releases/;
build into a temporary folder; verify (plan header and inspector precisions on TensorRT, the smoke test
against the bundle's reference outputs); rename into place; switch ``current`` (new symlink + os.replace
+ fsync of ROOT); update state.json; prune old releases. A crash at any point leaves ``current`` on a
verified release.

The bundle signature is checked when a bundle enters the device (``install BUNDLE``). ROOT is trusted
local storage: rebuilds after an upgrade and rollbacks re-check the kept files against the kept manifest
(sha256) but need no key.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import shutil
import signal
import stat
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO

from ..device import DeviceInfo, DevicePaths, detect_device, identify_targets
from ..errors import (
    DependencyError,
    InputError,
    StorageError,
    VerificationError,
    VqzError,
    require_dir,
    require_file,
    storage_error,
)
from ..fsutil import FILE_MODE, atomic_path, canonical_json, sha256_bytes, sha256_file
from ..log import get_logger
from ..memory import check_budget, require_fit
from ..memory.estimate import estimate_onnx
from ..progress import ProgressFactory, make_bar
from ..runtime import open_runner
from ..spec import load_spec
from ..targets import get_target, list_targets
from ..trt.builder import BuildRequest, run_build
from ..trt.compat import WHERE_TO_RUN, tensorrt_available, tensorrt_version
from ..vocab import BACKENDS
from .errors import BundleIntegrityError, InstallRefusedError
from .journal import Journal, now_iso
from .manifest import MANIFEST_NAME, Manifest, parse_manifest
from .reader import VerifiedBundle, verify_bundle
from .smoke import SmokeResult, run_smoke

_log = get_logger(__name__)

CRASH_ENV = "VQZ_TEST_CRASH_AT"
CRASH_POINTS = ("after_extract", "mid_build", "before_switch", "after_switch")
STATE_VERSION = 1
RELEASE_FILE = "release.json"
COPY_CHUNK = 1 << 20


def _crash_point(name: str) -> None:
    """Test hook: ``VQZ_TEST_CRASH_AT=<name>`` makes the installer SIGKILL itself here (no cleanup runs)."""
    if os.environ.get(CRASH_ENV) == name:
        _log.warning("%s=%s: killing the installer with SIGKILL (test hook)", CRASH_ENV, name)
        os.kill(os.getpid(), signal.SIGKILL)


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _write_json(path: Path, obj: Any) -> None:
    """Atomic JSON write (mode 0o666 minus the umask, like every output: readable by the service under 022)."""
    with atomic_path(path) as tmp:
        tmp.write_text(canonical_json(obj), encoding="utf-8")


def _rmtree(path: Path) -> None:
    if path.is_symlink() or path.is_file():
        path.unlink()
    elif path.exists():
        shutil.rmtree(path)


@dataclass(frozen=True)
class InstallOptions:
    backend: str = "auto"
    public_key: Path | None = None
    allow_unsigned: bool = False
    keep: int = 3
    device: DevicePaths = field(default_factory=DevicePaths)
    device_target: str | None = None  # this device's catalog target; default: identified from device tree + RAM
    force: bool = False
    skip_memory_check: bool = False
    targets_files: tuple[Path, ...] = ()
    version: int = 1

    def __post_init__(self) -> None:
        if self.backend not in BACKENDS:
            raise ValueError(f"backend {self.backend!r} not in {BACKENDS}")
        if self.keep < 1:
            raise ValueError(f"keep must be >= 1 release, got {self.keep}")


@dataclass(frozen=True)
class InstallResult:
    action: str  # installed | noop | switched | rebuilt | rolled_back
    bundle_id: str
    bundle_version: int
    device_key: str
    backend: str
    release: str  # path relative to ROOT
    previous: str | None
    signature: str | None = None
    key_id: str | None = None
    smoke: SmokeResult | None = None
    device: DeviceInfo | None = None
    notes: tuple[str, ...] = ()
    seconds: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        return {
            "action": self.action,
            "bundle_id": self.bundle_id,
            "bundle_version": self.bundle_version,
            "device_key": self.device_key,
            "backend": self.backend,
            "release": self.release,
            "previous": self.previous,
            "signature": self.signature,
            "key_id": self.key_id,
            "smoke": self.smoke.to_dict() if self.smoke else None,
            "device": self.device.to_dict() if self.device else None,
            "notes": list(self.notes),
            "seconds": round(self.seconds, 3),
        }


class InstallRoot:
    """One install root (one deployment slot on the device)."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root)
        self.releases = self.root / "releases"
        self.staging = self.root / "staging"
        self.current_link = self.root / "current"
        self.state_path = self.root / "state.json"
        self.journal = Journal(self.root / "journal.jsonl")

    # -- layout -------------------------------------------------------------------------------------
    def bundle_dir(self, bundle_id: str) -> Path:
        return self.releases / bundle_id / "bundle"

    def build_dir(self, bundle_id: str, key: str) -> Path:
        return self.releases / bundle_id / "builds" / key

    def rel(self, path: Path) -> str:
        return os.path.relpath(path, self.root)

    def ensure(self) -> None:
        if self.root.exists() or self.root.is_symlink():
            require_dir(self.root, "install root", hint="give a directory (it is created when missing)")
        for d in (self.root, self.releases, self.staging):
            d.mkdir(parents=True, exist_ok=True)

    @contextlib.contextmanager
    def locked(self) -> Iterator[None]:
        try:
            self.ensure()
            fd = os.open(self.root / ".lock", os.O_RDWR | os.O_CREAT, FILE_MODE)
        except OSError as exc:  # a read-only root, no space for the folders, no permission
            raise storage_error(exc, self.root, "preparing the install root at") from exc
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError as exc:
                raise InputError(
                    f"another vqz-edge install/rollback is running on {self.root}",
                    hint="wait for it to finish (vqz-edge status --root shows its progress)",
                ) from exc
            yield
        finally:
            os.close(fd)  # closing releases the flock (also when the process is killed)

    # -- state --------------------------------------------------------------------------------------
    def read_state(self) -> dict[str, Any]:
        import json

        try:
            doc = json.loads(self.state_path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            return {"version": STATE_VERSION, "history": [], "highest_bundle_version": 0}
        except (ValueError, UnicodeDecodeError) as exc:
            raise InputError(f"{self.state_path} is unreadable ({exc})",
                             hint="restore it from the journal or remove the root and install again") from exc
        doc.setdefault("history", [])
        doc.setdefault("highest_bundle_version", 0)
        return dict(doc)

    def write_state(self, state: dict[str, Any]) -> None:
        state["version"] = STATE_VERSION
        _write_json(self.state_path, state)

    def current_release(self) -> Path | None:
        """The folder ``current`` points to (None when absent or dangling)."""
        if not self.current_link.is_symlink():
            return None
        target = self.root / os.readlink(self.current_link)
        return target if (target / RELEASE_FILE).is_file() else None

    def release_info(self, build: Path) -> dict[str, Any] | None:
        import json

        try:
            doc = json.loads((build / RELEASE_FILE).read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return None
        return dict(doc) if isinstance(doc, dict) else None

    def current_info(self) -> dict[str, Any] | None:
        cur = self.current_release()
        return self.release_info(cur) if cur is not None else None

    def switch(self, build: Path) -> None:
        """Point ``current`` at ``build``: a new relative symlink renamed over the old one, then fsync ROOT."""
        tmp = self.root / f".current.{os.getpid()}.tmp"
        if tmp.is_symlink() or tmp.exists():
            tmp.unlink()
        os.symlink(self.rel(build), tmp)
        os.replace(tmp, self.current_link)
        _fsync_dir(self.root)

    # -- crash recovery -----------------------------------------------------------------------------
    def recover(self) -> list[dict[str, Any]]:
        """Make state.json agree with ``current``, clean staging and unfinished builds, and journal a
        ``recovered`` record for every interrupted operation. Runs under the lock."""
        recovered = []
        restored = self._restore_replaced_build()
        state = self.read_state()
        info = self.current_info()
        hist = state["history"]
        fixed = None
        interrupted = self.journal.interrupted()
        if info is not None:
            entry = _history_entry(info)
            top = hist[-1] if hist else None
            if top is None or not _same_release(top, entry):
                kind = interrupted[-1].kind if interrupted else "install"
                earlier = [i for i, e in enumerate(hist[:-1]) if e["bundle_id"] == entry["bundle_id"]]
                if kind == "rollback" and earlier:
                    del hist[earlier[-1]:]  # a rollback switched but did not record it
                    hist.append(entry)
                    fixed = "rollback bookkeeping completed (the switch had happened)"
                elif top is not None and top["bundle_id"] == entry["bundle_id"]:
                    hist[-1] = entry  # a refresh (rebuild for a new JetPack/TensorRT) switched but did not record it
                    fixed = "refresh bookkeeping completed (the switch had happened)"
                else:
                    hist.append(entry)  # an install switched but did not record it
                    state["highest_bundle_version"] = max(int(state["highest_bundle_version"]), int(info["bundle_version"]))
                    fixed = "install bookkeeping completed (the switch had happened)"
                self.write_state(state)
        removed = []
        for p in sorted(self.staging.glob("*")):
            _rmtree(p)
            removed.append(self.rel(p))
        for p in sorted(self.releases.glob("*/builds/.tmp-*")):
            _rmtree(p)
            removed.append(self.rel(p))
        for p in sorted(self.root.glob(".current.*.tmp")):  # a switch killed between symlink() and rename()
            _rmtree(p)
            removed.append(self.rel(p))
        cur_path = self.current_release()
        for op in interrupted:
            rec = {"interrupted_at": op.last_stage, "current": self.rel(cur_path) if cur_path is not None else None,
                   "removed": removed, "state": fixed, "restored": restored}
            self.journal.append(op.op_id, op.kind, "recovered", **rec)
            recovered.append({"op_id": op.op_id, **rec})
        return recovered

    def _restore_replaced_build(self) -> str | None:
        """A rebuild moves the old build aside, then renames the new one into place; a crash between the two
        renames leaves ``current`` dangling: put the old build back."""
        if not self.current_link.is_symlink() or self.current_release() is not None:
            return None
        target = self.root / os.readlink(self.current_link)
        for old in sorted(self.staging.glob("*-replaced-build")):
            info = self.release_info(old)
            if info is not None and info.get("release") == self.rel(target) and not target.exists():
                os.replace(old, target)
                _fsync_dir(target.parent)
                return self.rel(target)
        return None

    def prune(self, keep: int) -> list[str]:
        """Keep the bundles of the last ``keep`` distinct history entries (and current); drop the rest."""
        state = self.read_state()
        keep_ids: list[str] = []
        for e in reversed(state["history"]):
            if e["bundle_id"] not in keep_ids:
                keep_ids.append(e["bundle_id"])
        keep_ids = keep_ids[:keep]
        cur = self.current_info()
        if cur is not None and cur["bundle_id"] not in keep_ids:
            keep_ids.append(cur["bundle_id"])
        state["history"] = [e for e in state["history"] if e["bundle_id"] in keep_ids]
        self.write_state(state)
        live_builds = {(e["bundle_id"], e["device_key"]) for e in state["history"]}
        if cur is not None:
            live_builds.add((cur["bundle_id"], cur["device_key"]))
        removed = []
        for d in sorted(self.releases.iterdir()):
            if d.name not in keep_ids:
                _rmtree(d)
                removed.append(self.rel(d))
                continue
            for b in sorted((d / "builds").glob("*")) if (d / "builds").is_dir() else []:
                if (d.name, b.name) not in live_builds:
                    _rmtree(b)
                    removed.append(self.rel(b))
        return removed


def _history_entry(info: dict[str, Any]) -> dict[str, Any]:
    return {
        "bundle_id": info["bundle_id"],
        "bundle_version": info["bundle_version"],
        "device_key": info["device_key"],
        "backend": info["backend"],
        "release": info["release"],
        "installed_at": now_iso(),
    }


def _same_release(a: dict[str, Any], b: dict[str, Any]) -> bool:
    return bool(a["bundle_id"] == b["bundle_id"] and a["device_key"] == b["device_key"])


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


# ------------------------------------------------------------------------------------------ build


def _copy_with_progress(src: Path, dst: Path, progress: ProgressFactory | None) -> None:
    size = src.stat().st_size
    chunks = max(1, -(-size // COPY_CHUNK))
    bar = make_bar(progress, f"install {src.name} (chunks)", chunks)
    done = 0
    try:
        with open(src, "rb") as fin, open(dst, "xb") as fout:
            while block := fin.read(COPY_CHUNK):
                fout.write(block)
                done += 1
                bar.update(1)
                if done == max(1, chunks // 2):
                    fout.flush()
                    _crash_point("mid_build")
            fout.flush()
            os.fsync(fout.fileno())
    finally:
        bar.close()


def _file_problem(path: Path, size: int | None, sha256: str, against: str = "its manifest") -> str | None:
    """Why ``path`` is not the file with this size and sha256 (None when it is); ``against``: where they come from."""
    if not path.is_file() or path.is_symlink():
        return f"{path} is missing" if not path.exists() and not path.is_symlink() else f"{path} is not a regular file"
    if size is not None and path.stat().st_size != size:
        return f"{path} has {path.stat().st_size} bytes, {against} says {size} (changed or damaged on disk)"
    if sha256_file(path) != sha256:
        return f"{path} does not match {against} (changed or damaged on disk)"
    return None


def _check_extracted(folder: Path, manifest: Manifest) -> None:
    """Every file the verified ``manifest`` lists, as written into ``folder``, hashes to the manifest's sha256."""
    for name, entry in sorted(manifest.files.items()):
        problem = _file_problem(folder / name, entry.size, entry.sha256)
        if problem:
            raise BundleIntegrityError(f"extracted {problem}; not installing it",
                                       hint="the staging folder was changed while installing; install again")


def _verify_kept_bundle(bundle_dir: Path) -> Manifest:
    """Re-check the kept (extracted) bundle against its manifest: every file's sha256."""
    try:
        data = (bundle_dir / MANIFEST_NAME).read_bytes()
    except OSError as exc:
        raise BundleIntegrityError(f"kept bundle {bundle_dir} has no readable {MANIFEST_NAME} ({exc.strerror})",
                                   hint="install the bundle again from its .tar") from exc
    manifest = parse_manifest(data)
    for name, entry in sorted(manifest.files.items()):
        problem = _file_problem(bundle_dir / name, entry.size, entry.sha256)
        if problem:
            raise BundleIntegrityError(f"kept bundle file {problem}", hint="install the bundle again from its .tar")
    return manifest


def _build_hashes(folder: Path) -> dict[str, str]:
    """sha256 of every file of a build folder (relative paths), except release.json, which records them."""
    return {p.relative_to(folder).as_posix(): sha256_file(p) for p in sorted(folder.rglob("*"))
            if p.is_file() and p.name != RELEASE_FILE and not p.relative_to(folder).as_posix().startswith(".")}


def release_problems(root: InstallRoot, info: dict[str, Any]) -> tuple[list[str], int, list[str]]:
    """Check an installed release from its bytes: the kept bundle against its manifest (and the manifest against
    the one the release was built from), and every file of the build against the hashes recorded when it was
    built. Returns (problems, files checked, notes on what could not be checked)."""
    problems: list[str] = []
    notes: list[str] = []
    checked = 0
    bundle_dir = root.root / str(info.get("bundle", ""))
    build = root.root / str(info.get("release", ""))
    manifest: Manifest | None = None
    try:
        manifest = _verify_kept_bundle(bundle_dir)
        checked += len(manifest.files)
        if info.get("manifest_sha256") and sha256_bytes(manifest.to_bytes()) != info["manifest_sha256"]:
            problems.append(f"{bundle_dir / MANIFEST_NAME} is not the manifest this release was built from")
    except (BundleIntegrityError, InputError) as exc:
        problems.append(exc.message)
    recorded = info.get("files")
    if isinstance(recorded, dict):
        for name, digest in sorted(recorded.items()):
            problem = _file_problem(build / name, None, str(digest), "the sha256 recorded when it was built")
            checked += 1
            if problem:
                problems.append(f"served {problem}")
    else:
        served = str(info.get("served", ""))
        source = (info.get("build") or {}).get("source")
        entry = manifest.files.get(source) if manifest is not None and source else None
        if entry is not None:
            checked += 1
            problem = _file_problem(build / served, entry.size, entry.sha256)
            if problem:
                problems.append(f"served {problem}")
        else:
            notes.append(f"{build / served} not hash-checked: this release predates recorded build hashes")
    return problems, checked, notes


def _runner_fn(path: Path, backend: str, target: str) -> tuple[Any, Any]:
    """(run function, closer) for the served artifact, through the runtime's ``open_runner``. The memory
    budget was checked before the build, so the runner's own check is skipped here."""
    runner = open_runner(path, backend=backend, target=target, check_memory=False)
    return runner.run, runner.close


def _smoke_test(served: Path, backend: str, manifest: Manifest, bundle_dir: Path) -> SmokeResult:
    """Run the bundle's reference inputs through ``served`` and compare with its reference outputs."""
    run, close = _runner_fn(served, backend, manifest.target)
    try:
        return run_smoke(run, bundle_dir, manifest.smoke, int(manifest.build.get("smoke_batch", 1)))
    finally:
        close()


def _build_onnxruntime(bundle_dir: Path, manifest: Manifest, out: Path, progress: ProgressFactory | None) -> dict[str, Any]:
    served = manifest.artifact("qdq_onnx") or manifest.artifacts["onnx"]
    _copy_with_progress(bundle_dir / served, out / "model.onnx", progress)
    return {"served": "model.onnx", "source": served, "mode": "explicit" if served.endswith(".qdq.onnx") else "fp32"}


def _build_tensorrt(bundle_dir: Path, manifest: Manifest, out: Path, device: DeviceInfo,
                    targets_files: tuple[Path, ...], progress: ProgressFactory | None) -> dict[str, Any]:
    """Build the engine on this device from the kept bundle with the TensorRT builder (imported lazily):
    the bundle folder has the calibration-folder layout the builder reads (model.onnx, model.qdq.onnx,
    calibration.cache, plan.json). The builder checks the inspector precisions against the plan and
    writes nothing when a layer the plan keeps FP16/FP32 runs INT8."""
    from .plan_header import check_plan_version

    spec = load_spec(bundle_dir / manifest.artifacts["spec"])
    target = get_target(manifest.target, targets_files)
    _crash_point("mid_build")
    outcome = run_build(BuildRequest(spec=spec, target=target, mode="auto", force=True, out_root=out / ".engine",
                                     calibration_dir=bundle_dir), progress)
    for f in sorted(outcome.directory.iterdir()):
        os.replace(f, out / f.name)
    _rmtree(out / ".engine")
    engine = out / "model.engine"
    header = check_plan_version(engine, device.tensorrt or outcome.tensorrt_version, outcome.tensorrt_version)
    return {
        "served": "model.engine",
        "mode": outcome.mode,
        "tensorrt_version": outcome.tensorrt_version,
        "plan_header_version": header.version_text,
        "precisions": outcome.report.summary() if outcome.report is not None else None,
        "notes": list(outcome.notes),
    }


def _build_and_verify(root: InstallRoot, bundle_dir: Path, manifest: Manifest, key: str, backend: str,
                      device: DeviceInfo, op: str, kind: str, progress: ProgressFactory | None,
                      targets_files: tuple[Path, ...] = ()) -> tuple[Path, SmokeResult]:
    """Build into a temporary folder under builds/, verify it, rename it into place. Returns the build dir."""
    final = root.build_dir(manifest.bundle_id, key)
    tmp = final.parent / f".tmp-{key}-{op}"
    _rmtree(tmp)
    tmp.mkdir(parents=True)
    root.journal.append(op, kind, "building", bundle_id=manifest.bundle_id, device_key=key, backend=backend)
    t0 = time.monotonic()
    if backend == "tensorrt":
        built = _build_tensorrt(bundle_dir, manifest, tmp, device, targets_files, progress)
    else:
        built = _build_onnxruntime(bundle_dir, manifest, tmp, progress)
    root.journal.append(op, kind, "built", bundle_id=manifest.bundle_id, device_key=key, seconds=round(time.monotonic() - t0, 3))
    smoke = _smoke_test(tmp / built["served"] if backend == "onnxruntime" else tmp, backend, manifest, bundle_dir)
    if not smoke.passed:
        raise VerificationError(
            f"smoke test failed on the new build of {manifest.bundle_id}: min cosine {smoke.min_cosine:.5f} < "
            f"{smoke.threshold} against the bundle's reference outputs ({smoke.samples} samples)",
            hint="current was not switched; check the build log, the device's TensorRT and the bundle's fidelity report",
        )
    release = {
        "bundle_id": manifest.bundle_id,
        "bundle_version": manifest.bundle_version,
        "model": manifest.model,
        "target": manifest.target,
        "device_key": key,
        "backend": backend,
        "release": root.rel(final),
        "bundle": root.rel(bundle_dir),
        "manifest_sha256": sha256_bytes(manifest.to_bytes()),
        "served": built["served"],
        "files": _build_hashes(tmp),
        "build": {k: v for k, v in built.items() if k != "served"},
        "smoke": smoke.to_dict(),
        "device": device.to_dict(),
        "built_at": now_iso(),
        "build_seconds": round(time.monotonic() - t0, 3),
    }
    _write_json(tmp / RELEASE_FILE, release)
    _fsync_dir(tmp)
    old = root.staging / f"{op}-replaced-build"
    if final.exists():  # a rebuild or a repair: move the old build aside (one rename), never delete it in place
        root.staging.mkdir(parents=True, exist_ok=True)
        _rmtree(old)
        os.replace(final, old)
    os.replace(tmp, final)
    _fsync_dir(final.parent)
    _rmtree(old)
    return final, smoke


# ------------------------------------------------------------------------------------------ operations


def _existing_root(root_dir: Path) -> InstallRoot:
    root = InstallRoot(root_dir)
    require_dir(root.root, "install root", hint="vqz-edge install BUNDLE --root DIR --key PUB")
    return root


def _recover(root: InstallRoot) -> list[str]:
    """Finish or undo an operation a crash interrupted; one note per recovered operation."""
    try:
        recovered = root.recover()
    except OSError as exc:
        raise storage_error(exc, root.root, "recovering an interrupted operation in") from exc
    return [f"recovered interrupted operation {r['op_id']} (it stopped after '{r['interrupted_at']}')"
            for r in recovered]


def _new_op() -> str:
    return f"{time.time_ns()}-{os.getpid()}"


def _record_failure(root: InstallRoot, op: str, kind: str, reason: str, error: str) -> None:
    try:
        root.journal.append(op, kind, "failed", reason=reason, error=error)
    except OSError as exc:  # a full or read-only disk also refuses the journal line: the next run recovers
        _log.warning("could not journal the failure of %s %s: %s", kind, op, exc)


def _clean_after_failure(root: InstallRoot, op: str, created: list[Path] | None = None) -> None:
    """Remove this operation's staging and unfinished build folders (they would fill the disk until the next run)
    and the release folders it ``created`` that ``current`` does not point into."""
    cur = root.current_release()
    fresh = [p for p in created or [] if p.exists() and (cur is None or p not in (cur, *cur.parents))]
    for p in [*root.staging.glob(f"{op}*"), *root.releases.glob(f"*/builds/.tmp-*-{op}"), *fresh]:
        try:
            _rmtree(p)
        except OSError as exc:
            _log.warning("could not remove %s: %s (the next install removes it)", p, exc)


@contextlib.contextmanager
def _journalled(root: InstallRoot, op: str, kind: str, created: list[Path] | None = None) -> Iterator[None]:
    """Journal a failure and clean up after it; ``created``: folders the operation adds (removed on failure)."""
    try:
        yield
    except VqzError as exc:
        _record_failure(root, op, kind, exc.message, type(exc).__name__)
        _clean_after_failure(root, op, created)
        raise
    except OSError as exc:  # disk full, read-only, permissions: an error of the tree, naming the path
        err = storage_error(exc, root.root)
        _record_failure(root, op, kind, err.message, type(err).__name__)
        _clean_after_failure(root, op, created)
        raise err from exc
    except BaseException as exc:  # noqa: BLE001 -- record any failure (incl. KeyboardInterrupt), then re-raise
        _record_failure(root, op, kind, f"{type(exc).__name__}: {exc}", type(exc).__name__)
        raise


def _device_and_backend(options: InstallOptions) -> tuple[DeviceInfo, str]:
    backend = resolve_backend(options.backend)
    device = detect_device(options.device, tensorrt=tensorrt_version() if backend == "tensorrt" else None)
    return device, backend


def _install_verified(root: InstallRoot, vb_manifest: Manifest, bundle_dir: Path, device: DeviceInfo, backend: str,
                      key: str, op: str, kind: str, state: dict[str, Any], progress: ProgressFactory | None,
                      targets_files: tuple[Path, ...] = ()) -> tuple[Path, SmokeResult]:
    build, smoke = _build_and_verify(root, bundle_dir, vb_manifest, key, backend, device, op, kind, progress, targets_files)
    root.journal.append(op, kind, "release_verified", bundle_id=vb_manifest.bundle_id, device_key=key,
                        release=root.rel(build), min_cosine=round(smoke.min_cosine, 6))
    _crash_point("before_switch")
    root.switch(build)
    _crash_point("after_switch")
    with _after_switch(root, build):
        root.journal.append(op, kind, "switched", bundle_id=vb_manifest.bundle_id, device_key=key, release=root.rel(build))
        info = root.release_info(build)
        assert info is not None  # written by _build_and_verify
        hist = state["history"]
        if hist and hist[-1]["bundle_id"] == vb_manifest.bundle_id:
            hist[-1] = _history_entry(info)  # same release rebuilt for this device (upgrade): replaces its old build
        else:
            hist.append(_history_entry(info))
        state["highest_bundle_version"] = max(int(state["highest_bundle_version"]), vb_manifest.bundle_version)
        root.write_state(state)
    return build, smoke


@contextlib.contextmanager
def _after_switch(root: InstallRoot, build: Path) -> Iterator[None]:
    """Bookkeeping after ``current`` was switched: a write that fails here (disk full) is reported as such, saying
    that the new, verified release is already current and the next run completes state.json."""
    try:
        yield
    except (OSError, StorageError) as exc:
        err = exc if isinstance(exc, StorageError) else storage_error(exc, root.state_path)
        raise type(err)(
            f"{err.message}; {root.rel(build)} (verified) is already current, only the bookkeeping is behind",
            hint="free space; the next install/rollback completes state.json (vqz-edge status shows where current is)",
        ) from exc


def install_bundle(bundle: Path, root_dir: Path, options: InstallOptions = InstallOptions(), *,
                   progress: ProgressFactory | None = None) -> InstallResult:
    """Install ``bundle`` into ``root_dir`` (see the module docstring for the order of steps)."""
    from .signing import load_public_key

    bundle = Path(bundle)
    require_file(bundle, "bundle", hint="give the bundle .tar that 'vqz-edge bundle' wrote")
    public_key = load_public_key(options.public_key) if options.public_key else None
    if public_key is None and not options.allow_unsigned:
        raise InstallRefusedError(
            "no --key given: the bundle's signature cannot be verified, and unsigned installs are refused",
            hint="pass --key SIGNER.pub (or --allow-unsigned, not recommended)",
        )
    with _open_bundle(bundle) as fh:  # every pass reads this one open file: renaming another over the path changes nothing
        return _install_open_bundle(bundle, fh, root_dir, options, public_key, progress)


def _open_bundle(bundle: Path) -> BinaryIO:
    fd = os.open(bundle, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0))  # a FIFO swapped in must not block
    if not stat.S_ISREG(os.fstat(fd).st_mode):
        os.close(fd)
        raise InputError(f"bundle {bundle} is not a regular file")
    os.set_blocking(fd, True)
    return os.fdopen(fd, "rb")


def _install_open_bundle(bundle: Path, fh: BinaryIO, root_dir: Path, options: InstallOptions, public_key: Any,
                         progress: ProgressFactory | None) -> InstallResult:
    t0 = time.monotonic()
    root = InstallRoot(root_dir)
    with root.locked():
        notes = _recover(root)
        op, kind = _new_op(), "install"
        root.journal.append(op, kind, "start", bundle=str(bundle))
        created: list[Path] = []
        with _journalled(root, op, kind, created):
            # 1. verify everything before writing anything
            vb: VerifiedBundle = verify_bundle(fh, public_key, allow_unsigned=options.allow_unsigned)
            m = vb.manifest
            if vb.signature != "verified":
                notes.append(f"WARNING: bundle signature {vb.signature.upper()} (--allow-unsigned)")
            root.journal.append(op, kind, "verified", bundle_id=m.bundle_id, bundle_version=m.bundle_version,
                                signature=vb.signature, key_id=vb.key_id)
            # 2. refuse what must not be installed here
            state = root.read_state()
            check_downgrade(m, state)
            device, backend = _device_and_backend(options)
            key = device.key(backend)
            notes += check_target(m, device, backend, options.device_target, options.targets_files)
            check_range(m, device, backend)
            cur = root.current_info()
            previous = cur["release"] if cur else None
            damaged: list[str] = []
            if cur and cur["bundle_id"] == m.bundle_id and cur["device_key"] == key and not options.force:
                damaged = release_problems(root, cur)[0]
                if damaged:
                    notes.append(f"the current release is damaged: {'; '.join(damaged)}; repairing it")
            if cur and cur["bundle_id"] == m.bundle_id and cur["device_key"] == key and not options.force and not damaged:
                root.journal.append(op, kind, "noop", bundle_id=m.bundle_id, device_key=key)
                return InstallResult("noop", m.bundle_id, m.bundle_version, key, backend, cur["release"], previous,
                                     vb.signature, vb.key_id, None, device,
                                     (*notes, "already installed and current for this device: nothing to do"),
                                     time.monotonic() - t0)
            # 3. extract (verifying again while writing) and move under releases/
            bundle_dir = root.bundle_dir(m.bundle_id)
            if not bundle_dir.parent.exists():
                created.append(bundle_dir.parent)  # a failed install removes the release folder it added
            reuse = False
            if (bundle_dir / MANIFEST_NAME).is_file() and (bundle_dir / MANIFEST_NAME).read_bytes() == vb.manifest_bytes:
                try:
                    _verify_kept_bundle(bundle_dir)
                    reuse = True
                    notes.append("bundle already kept on this device; re-checked its files")
                except BundleIntegrityError as exc:
                    notes.append(f"kept copy of the bundle is damaged ({exc.message}); extracting it again")
            if not reuse:
                stage = root.staging / op
                (stage / "bundle").mkdir(parents=True)
                fh.seek(0)
                verify_bundle(fh, public_key, allow_unsigned=options.allow_unsigned, dest=stage / "bundle", expected=vb)
                (stage / "bundle" / MANIFEST_NAME).write_bytes(vb.manifest_bytes)
                _check_extracted(stage / "bundle", m)
                _fsync_dir(stage / "bundle")
                bundle_dir.parent.mkdir(parents=True, exist_ok=True)
                if bundle_dir.exists():
                    os.replace(bundle_dir, stage / "damaged-bundle")
                os.replace(stage / "bundle", bundle_dir)
                _fsync_dir(bundle_dir.parent)
                _rmtree(stage)
            root.journal.append(op, kind, "extracted", bundle_id=m.bundle_id, device_key=key)
            _crash_point("after_extract")
            if not options.skip_memory_check:
                mem = check_memory(m, bundle_dir, device, backend, options.targets_files)
                notes += [f"memory: {r['verdict']}" + (" (free now)" if r["live"] else " (catalog)") for r in mem.values()]
            # 4. build (or reuse a verified build), verify, switch
            _build, smoke = _install_verified(root, m, bundle_dir, device, backend, key, op, kind, state, progress,
                                             options.targets_files)
            with _after_switch(root, _build):
                removed = root.prune(options.keep)
                if removed:
                    notes.append(f"pruned {len(removed)} old release folder(s): {removed}")
                root.journal.append(op, kind, "done", bundle_id=m.bundle_id, device_key=key)
            return InstallResult("installed", m.bundle_id, m.bundle_version, key, backend, root.rel(_build), previous,
                                 vb.signature, vb.key_id, smoke, device, tuple(notes), time.monotonic() - t0)


def refresh(root_dir: Path, options: InstallOptions = InstallOptions(), *,
            progress: ProgressFactory | None = None) -> InstallResult:
    """``vqz-edge install --root DIR`` with no bundle (e.g. at boot): if the device's JetPack/TensorRT changed
    since the current release was built, rebuild it from the kept bundle, verify, then switch."""
    t0 = time.monotonic()
    root = _existing_root(root_dir)
    with root.locked():
        notes = _recover(root)
        cur = root.current_info()
        if cur is None:
            raise InputError(f"nothing is installed in {root.root}", hint="vqz-edge install BUNDLE --root DIR --key PUB")
        device, backend = _device_and_backend(options)
        key = device.key(backend)
        op, kind = _new_op(), "refresh"
        root.journal.append(op, kind, "start", bundle_id=cur["bundle_id"], device_key=key)
        with _journalled(root, op, kind):
            bundle_dir = root.root / cur["bundle"]
            m = _verify_kept_bundle(bundle_dir)
            engine_ok = True
            if backend == "tensorrt" and cur["backend"] == "tensorrt" and device.tensorrt:
                from .plan_header import read_plan_header

                header = read_plan_header(root.root / cur["release"] / "model.engine")
                engine_ok = header.matches(device.tensorrt)
                if not engine_ok:
                    notes.append(f"engine was built by TensorRT {header.version_text}, device runs {device.tensorrt}")
            damaged = release_problems(root, cur)[0] if cur["device_key"] == key else []
            if cur["device_key"] == key and engine_ok and not options.force and not damaged:
                root.journal.append(op, kind, "noop", bundle_id=m.bundle_id, device_key=key)
                return InstallResult("noop", m.bundle_id, m.bundle_version, key, backend, cur["release"], cur["release"],
                                     None, None, None, device, (*notes, "current release matches this device"),
                                     time.monotonic() - t0)
            if damaged:
                notes.append(f"the current build is damaged ({'; '.join(damaged)}): rebuilding it from the kept bundle")
            elif cur["device_key"] != key:
                notes.append(f"device changed since the current release was built: {cur['device_key']} -> {key}")
            notes += check_target(m, device, backend, options.device_target, options.targets_files)
            check_range(m, device, backend)
            root.journal.append(op, kind, "verified", bundle_id=m.bundle_id, bundle_version=m.bundle_version)
            root.journal.append(op, kind, "extracted", bundle_id=m.bundle_id, device_key=key)
            if not options.skip_memory_check:
                mem = check_memory(m, bundle_dir, device, backend, options.targets_files)
                notes += [f"memory: {r['verdict']}" + (" (free now)" if r["live"] else " (catalog)") for r in mem.values()]
            state = root.read_state()
            build, smoke = _install_verified(root, m, bundle_dir, device, backend, key, op, kind, state, progress,
                                             options.targets_files)
            removed = root.prune(options.keep)
            if removed:
                notes.append(f"pruned {len(removed)} old release folder(s): {removed}")
            root.journal.append(op, kind, "done", bundle_id=m.bundle_id, device_key=key)
            return InstallResult("rebuilt", m.bundle_id, m.bundle_version, key, backend, root.rel(build), cur["release"],
                                 None, None, smoke, device, tuple(notes), time.monotonic() - t0)


def rollback(root_dir: Path, options: InstallOptions = InstallOptions(), *,
             progress: ProgressFactory | None = None) -> InstallResult:
    """Switch ``current`` back to the previous release in the history (rebuilding it for this device if
    it was built for another JetPack/TensorRT), after verifying it."""
    t0 = time.monotonic()
    root = _existing_root(root_dir)
    with root.locked():
        notes = _recover(root)
        state = root.read_state()
        hist = state["history"]
        if len(hist) < 2:
            raise InputError(
                f"nothing to roll back to in {root.root}: the history holds {len(hist)} release(s)",
                hint="vqz-edge status --root DIR shows the history",
            )
        cur = hist[-1]
        older = [i for i, e in enumerate(hist[:-1]) if e["bundle_id"] != cur["bundle_id"]]
        if not older:
            raise InputError(
                f"nothing to roll back to in {root.root}: every release in the history is {cur['bundle_id']}",
                hint="vqz-edge status --root DIR shows the history",
            )
        prev_index = older[-1]
        prev = hist[prev_index]
        op, kind = _new_op(), "rollback"
        root.journal.append(op, kind, "start", bundle_id=prev["bundle_id"], previous=cur["release"])
        with _journalled(root, op, kind):
            bundle_dir = root.bundle_dir(prev["bundle_id"])
            if not bundle_dir.is_dir():
                raise InputError(f"release {prev['bundle_id']} is no longer kept on this device (pruned)",
                                 hint="install its bundle again")
            m = _verify_kept_bundle(bundle_dir)
            device, backend = _device_and_backend(options)
            key = device.key(backend)
            build = root.build_dir(m.bundle_id, key)
            root.journal.append(op, kind, "verified", bundle_id=m.bundle_id, bundle_version=m.bundle_version, device_key=key)
            kept_info = root.release_info(build) if (build / RELEASE_FILE).is_file() else None
            damaged = release_problems(root, kept_info)[0] if kept_info is not None else []
            if damaged:
                notes.append(f"the previous build is damaged ({'; '.join(damaged)}): rebuilding it")
            if kept_info is not None and not damaged:
                info = kept_info
                served = build / info.get("served", "model.onnx") if backend == "onnxruntime" else build
                smoke = _smoke_test(served, backend, m, bundle_dir)
                if not smoke.passed:
                    raise VerificationError(
                        f"the previous release {root.rel(build)} no longer passes its smoke test "
                        f"(min cosine {smoke.min_cosine:.5f}); not switching",
                    )
                root.journal.append(op, kind, "release_verified", bundle_id=m.bundle_id, device_key=key, release=root.rel(build))
            else:
                if not damaged:
                    notes.append(f"previous release was built for {prev['device_key']}; rebuilding it for {key}")
                check_range(m, device, backend)
                build, smoke = _build_and_verify(root, bundle_dir, m, key, backend, device, op, kind, progress,
                                                 options.targets_files)
                root.journal.append(op, kind, "release_verified", bundle_id=m.bundle_id, device_key=key, release=root.rel(build))
            _crash_point("before_switch")
            root.switch(build)
            _crash_point("after_switch")
            root.journal.append(op, kind, "switched", bundle_id=m.bundle_id, device_key=key, release=root.rel(build))
            del hist[prev_index + 1:]
            if hist[-1]["device_key"] != key:
                new_info = root.release_info(build)
                if new_info is not None:
                    hist[-1] = _history_entry(new_info)
            root.write_state(state)
            root.journal.append(op, kind, "done", bundle_id=m.bundle_id, device_key=key)
            return InstallResult("rolled_back", m.bundle_id, m.bundle_version, key, backend, root.rel(build), cur["release"],
                                 None, None, smoke, device, tuple(notes), time.monotonic() - t0)


def status(root_dir: Path, *, verify: bool = True) -> dict[str, Any]:
    """What is installed, what happened last, and whether an operation was interrupted. Read-only.

    With ``verify`` (the default) the current release is checked from its bytes (``release_problems``): the kept
    bundle against its manifest and every served file against the hashes recorded at build time; ``healthy`` is
    false when anything differs. Without it, ``integrity.checked`` is false and says so."""
    root = _existing_root(root_dir)
    cur_path = root.current_release()
    cur = root.release_info(cur_path) if cur_path else None
    dangling = root.current_link.is_symlink() and cur_path is None
    state = root.read_state()
    ops = root.journal.operations()
    cur_rel = cur["release"] if cur else None
    last = ops[-1].summary(cur_rel) if ops else None
    interrupted = [op for op in ops if op.terminal is None]
    last_interrupted = interrupted[-1].summary(cur_rel) if interrupted else None
    releases = []
    if root.releases.is_dir():
        for d in sorted(root.releases.iterdir()):
            if d.name.startswith("."):
                continue
            builds = sorted(b.name for b in (d / "builds").glob("*") if not b.name.startswith(".")) if (d / "builds").is_dir() else []
            releases.append({"bundle_id": d.name, "builds": builds})
    healthy = bool(cur is not None and (root.root / cur["release"] / cur["served"]).exists())
    integrity: dict[str, Any] = {"checked": False, "files": 0, "problems": [], "notes": []}
    if cur is not None and verify:
        problems, checked, notes = release_problems(root, cur)
        integrity = {"checked": True, "files": checked, "problems": problems, "notes": notes}
        healthy = healthy and not problems
    elif cur is not None:
        integrity["notes"] = ["not verified (--no-verify): the files were not hashed"]
    return {
        "root": str(root.root),
        "current": None if cur is None else {
            "bundle_id": cur["bundle_id"], "bundle_version": cur["bundle_version"], "model": cur["model"],
            "target": cur["target"], "device_key": cur["device_key"], "backend": cur["backend"],
            "release": cur["release"], "served": str(root.current_link / cur["served"]),
            "smoke": cur.get("smoke"), "built_at": cur.get("built_at"),
        },
        "healthy": healthy,
        "integrity": integrity,
        "current_link_dangling": dangling,
        "history": state["history"],
        "highest_bundle_version": state["highest_bundle_version"],
        "releases": releases,
        "last_operation": last,
        "last_interrupted": last_interrupted,
        "state_consistent": (not state["history"] and cur is None) or (
            cur is not None and bool(state["history"]) and _same_release(state["history"][-1], cur)),
    }


__all__ = [
    "BACKENDS",
    "CRASH_ENV",
    "CRASH_POINTS",
    "InstallOptions",
    "InstallResult",
    "InstallRoot",
    "check_downgrade",
    "check_memory",
    "check_range",
    "check_target",
    "install_bundle",
    "refresh",
    "release_problems",
    "resolve_backend",
    "rollback",
    "status",
]
