"""The install root on disk: ``current``, ``releases/``, ``state.json``, the journal and the lock, with
recovery after a crash and pruning of old releases (layout: :mod:`vqz_edge.bundle.install`)."""

from __future__ import annotations

import contextlib
import fcntl
import os
import shutil
import signal
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from ..errors import (
    InputError,
    require_dir,
    storage_error,
)
from ..fsutil import FILE_MODE, atomic_path, canonical_json
from ..log import get_logger
from .journal import Journal, now_iso

_log = get_logger(__name__)


CRASH_ENV = "VQZ_TEST_CRASH_AT"
CRASH_POINTS = ("after_extract", "mid_build", "before_switch", "after_switch")
STATE_VERSION = 1
RELEASE_FILE = "release.json"
COPY_CHUNK = 1 << 20


def crash_point(name: str) -> None:
    """Test hook: ``VQZ_TEST_CRASH_AT=<name>`` makes the installer SIGKILL itself here (no cleanup runs)."""
    if os.environ.get(CRASH_ENV) == name:
        _log.warning("%s=%s: killing the installer with SIGKILL (test hook)", CRASH_ENV, name)
        os.kill(os.getpid(), signal.SIGKILL)


def fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_json(path: Path, obj: Any) -> None:
    """Atomic JSON write (mode 0o666 minus the umask, like every output: readable by the service under 022)."""
    with atomic_path(path) as tmp:
        tmp.write_text(canonical_json(obj), encoding="utf-8")


def rmtree(path: Path) -> None:
    if path.is_symlink() or path.is_file():
        path.unlink()
    elif path.exists():
        shutil.rmtree(path)


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
        write_json(self.state_path, state)

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
        fsync_dir(self.root)

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
            entry = history_entry(info)
            top = hist[-1] if hist else None
            if top is None or not same_release(top, entry):
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
            rmtree(p)
            removed.append(self.rel(p))
        for p in sorted(self.releases.glob("*/builds/.tmp-*")):
            rmtree(p)
            removed.append(self.rel(p))
        for p in sorted(self.root.glob(".current.*.tmp")):  # a switch killed between symlink() and rename()
            rmtree(p)
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
                fsync_dir(target.parent)
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
                rmtree(d)
                removed.append(self.rel(d))
                continue
            for b in sorted((d / "builds").glob("*")) if (d / "builds").is_dir() else []:
                if (d.name, b.name) not in live_builds:
                    rmtree(b)
                    removed.append(self.rel(b))
        return removed


def history_entry(info: dict[str, Any]) -> dict[str, Any]:
    return {
        "bundle_id": info["bundle_id"],
        "bundle_version": info["bundle_version"],
        "device_key": info["device_key"],
        "backend": info["backend"],
        "release": info["release"],
        "installed_at": now_iso(),
    }


def same_release(a: dict[str, Any], b: dict[str, Any]) -> bool:
    return bool(a["bundle_id"] == b["bundle_id"] and a["device_key"] == b["device_key"])
