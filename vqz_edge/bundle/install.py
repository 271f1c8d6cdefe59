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
import os
import stat
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO

from ..device import DeviceInfo, DevicePaths, detect_device
from ..errors import (
    InputError,
    StorageError,
    VerificationError,
    VqzError,
    require_dir,
    require_file,
    storage_error,
)
from ..log import get_logger
from ..progress import ProgressFactory
from ..trt.compat import tensorrt_version
from ..vocab import BACKENDS, ONNX_FILE
from .admission import check_downgrade, check_memory, check_range, check_target, resolve_backend
from .build import build_and_verify, check_extracted, release_problems, smoke_test, verify_kept_bundle
from .errors import BundleIntegrityError, InstallRefusedError
from .manifest import MANIFEST_NAME, Manifest
from .plan_header import read_plan_header
from .reader import VerifiedBundle, verify_bundle
from .signing import load_public_key
from .smoke import SmokeResult
from .store import RELEASE_FILE, InstallRoot, crash_point, fsync_dir, history_entry, rmtree, same_release

_log = get_logger(__name__)


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
            rmtree(p)
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
    build, smoke = build_and_verify(root, bundle_dir, vb_manifest, key, backend, device, op, kind, progress, targets_files)
    root.journal.append(op, kind, "release_verified", bundle_id=vb_manifest.bundle_id, device_key=key,
                        release=root.rel(build), min_cosine=round(smoke.min_cosine, 6))
    crash_point("before_switch")
    root.switch(build)
    crash_point("after_switch")
    with _after_switch(root, build):
        root.journal.append(op, kind, "switched", bundle_id=vb_manifest.bundle_id, device_key=key, release=root.rel(build))
        info = root.release_info(build)
        assert info is not None  # written by build_and_verify
        hist = state["history"]
        if hist and hist[-1]["bundle_id"] == vb_manifest.bundle_id:
            hist[-1] = history_entry(info)  # same release rebuilt for this device (upgrade): replaces its old build
        else:
            hist.append(history_entry(info))
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



def _memory_notes(mem: dict[str, Any]) -> list[str]:
    """One note per target of a memory check: its verdict, and whether it used live free memory or the catalog."""
    return [f"memory: {r['verdict']}" + (" (free now)" if r["live"] else " (catalog)") for r in mem.values()]


def _prune_and_record_done(root: InstallRoot, keep: int, op: str, kind: str, bundle_id: str, key: str,
                           notes: list[str]) -> None:
    """After a switch: prune old release folders (noted) and journal the operation as done."""
    removed = root.prune(keep)
    if removed:
        notes.append(f"pruned {len(removed)} old release folder(s): {removed}")
    root.journal.append(op, kind, "done", bundle_id=bundle_id, device_key=key)

def install_bundle(bundle: Path, root_dir: Path, options: InstallOptions = InstallOptions(), *,
                   progress: ProgressFactory | None = None) -> InstallResult:
    """Install ``bundle`` into ``root_dir`` (see the module docstring for the order of steps)."""
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
                return InstallResult(action="noop", bundle_id=m.bundle_id, bundle_version=m.bundle_version,
                                     device_key=key, backend=backend, release=cur["release"],
                                     previous=previous, signature=vb.signature, key_id=vb.key_id,
                                     device=device,
                                     notes=(*notes, "already installed and current for this device: nothing to do"),
                                     seconds=time.monotonic() - t0)
            # 3. extract (verifying again while writing) and move under releases/
            bundle_dir = root.bundle_dir(m.bundle_id)
            if not bundle_dir.parent.exists():
                created.append(bundle_dir.parent)  # a failed install removes the release folder it added
            reuse = False
            if (bundle_dir / MANIFEST_NAME).is_file() and (bundle_dir / MANIFEST_NAME).read_bytes() == vb.manifest_bytes:
                try:
                    verify_kept_bundle(bundle_dir)
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
                check_extracted(stage / "bundle", m)
                fsync_dir(stage / "bundle")
                bundle_dir.parent.mkdir(parents=True, exist_ok=True)
                if bundle_dir.exists():
                    os.replace(bundle_dir, stage / "damaged-bundle")
                os.replace(stage / "bundle", bundle_dir)
                fsync_dir(bundle_dir.parent)
                rmtree(stage)
            root.journal.append(op, kind, "extracted", bundle_id=m.bundle_id, device_key=key)
            crash_point("after_extract")
            if not options.skip_memory_check:
                mem = check_memory(m, bundle_dir, device, backend, options.targets_files)
                notes += _memory_notes(mem)
            # 4. build (or reuse a verified build), verify, switch
            _build, smoke = _install_verified(root, m, bundle_dir, device, backend, key, op, kind, state, progress,
                                             options.targets_files)
            with _after_switch(root, _build):
                _prune_and_record_done(root, options.keep, op, kind, m.bundle_id, key, notes)
            return InstallResult(action="installed", bundle_id=m.bundle_id, bundle_version=m.bundle_version,
                                 device_key=key, backend=backend, release=root.rel(_build),
                                 previous=previous, signature=vb.signature, key_id=vb.key_id, smoke=smoke,
                                 device=device, notes=tuple(notes), seconds=time.monotonic() - t0)


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
            m = verify_kept_bundle(bundle_dir)
            engine_ok = True
            if backend == "tensorrt" and cur["backend"] == "tensorrt" and device.tensorrt:
                header = read_plan_header(root.root / cur["release"] / "model.engine")
                engine_ok = header.matches(device.tensorrt)
                if not engine_ok:
                    notes.append(f"engine was built by TensorRT {header.version_text}, device runs {device.tensorrt}")
            damaged = release_problems(root, cur)[0] if cur["device_key"] == key else []
            if cur["device_key"] == key and engine_ok and not options.force and not damaged:
                root.journal.append(op, kind, "noop", bundle_id=m.bundle_id, device_key=key)
                return InstallResult(action="noop", bundle_id=m.bundle_id, bundle_version=m.bundle_version,
                                     device_key=key, backend=backend, release=cur["release"],
                                     previous=cur["release"], device=device,
                                     notes=(*notes, "current release matches this device"),
                                     seconds=time.monotonic() - t0)
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
                notes += _memory_notes(mem)
            state = root.read_state()
            build, smoke = _install_verified(root, m, bundle_dir, device, backend, key, op, kind, state, progress,
                                             options.targets_files)
            _prune_and_record_done(root, options.keep, op, kind, m.bundle_id, key, notes)
            return InstallResult(action="rebuilt", bundle_id=m.bundle_id, bundle_version=m.bundle_version,
                                 device_key=key, backend=backend, release=root.rel(build),
                                 previous=cur["release"], smoke=smoke, device=device, notes=tuple(notes),
                                 seconds=time.monotonic() - t0)


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
            m = verify_kept_bundle(bundle_dir)
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
                served = build / info.get("served", ONNX_FILE) if backend == "onnxruntime" else build
                smoke = smoke_test(served, backend, m, bundle_dir)
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
                build, smoke = build_and_verify(root, bundle_dir, m, key, backend, device, op, kind, progress,
                                                 options.targets_files)
                root.journal.append(op, kind, "release_verified", bundle_id=m.bundle_id, device_key=key, release=root.rel(build))
            crash_point("before_switch")
            root.switch(build)
            crash_point("after_switch")
            root.journal.append(op, kind, "switched", bundle_id=m.bundle_id, device_key=key, release=root.rel(build))
            del hist[prev_index + 1:]
            if hist[-1]["device_key"] != key:
                new_info = root.release_info(build)
                if new_info is not None:
                    hist[-1] = history_entry(new_info)
            root.write_state(state)
            root.journal.append(op, kind, "done", bundle_id=m.bundle_id, device_key=key)
            return InstallResult(action="rolled_back", bundle_id=m.bundle_id,
                                 bundle_version=m.bundle_version, device_key=key, backend=backend,
                                 release=root.rel(build), previous=cur["release"], smoke=smoke,
                                 device=device, notes=tuple(notes), seconds=time.monotonic() - t0)


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
            cur is not None and bool(state["history"]) and same_release(state["history"][-1], cur)),
    }


__all__ = [
    "InstallOptions",
    "InstallResult",
    "install_bundle",
    "refresh",
    "rollback",
    "status",
]
