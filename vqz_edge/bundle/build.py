"""Build a verified release from a kept bundle and verify it: the served artifact (TensorRT engine on the device,
the ONNX model on ONNX Runtime), the plan header, the smoke test against the bundle's reference outputs; the
file checks of a release."""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

from ..device import DeviceInfo
from ..errors import (
    InputError,
    VerificationError,
)
from ..fsutil import sha256_bytes, sha256_file
from ..log import get_logger
from ..progress import ProgressFactory, make_bar
from ..runtime import open_runner
from ..spec import load_spec
from ..targets import get_target
from ..trt.builder import BuildRequest, run_build
from ..vocab import ONNX_FILE
from .errors import BundleIntegrityError
from .journal import now_iso
from .manifest import MANIFEST_NAME, Manifest, parse_manifest
from .plan_header import check_plan_version
from .smoke import SmokeResult, run_smoke
from .store import COPY_CHUNK, RELEASE_FILE, InstallRoot, crash_point, fsync_dir, rmtree, write_json

_log = get_logger(__name__)


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
                    crash_point("mid_build")
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


def check_extracted(folder: Path, manifest: Manifest) -> None:
    """Every file the verified ``manifest`` lists, as written into ``folder``, hashes to the manifest's sha256."""
    for name, entry in sorted(manifest.files.items()):
        problem = _file_problem(folder / name, entry.size, entry.sha256)
        if problem:
            raise BundleIntegrityError(f"extracted {problem}; not installing it",
                                       hint="the staging folder was changed while installing; install again")


def verify_kept_bundle(bundle_dir: Path) -> Manifest:
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
        manifest = verify_kept_bundle(bundle_dir)
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


def smoke_test(served: Path, backend: str, manifest: Manifest, bundle_dir: Path) -> SmokeResult:
    """Run the bundle's reference inputs through ``served`` and compare with its reference outputs."""
    run, close = _runner_fn(served, backend, manifest.target)
    try:
        return run_smoke(run, bundle_dir, manifest.smoke, int(manifest.build.get("smoke_batch", 1)))
    finally:
        close()


def _build_onnxruntime(bundle_dir: Path, manifest: Manifest, out: Path, progress: ProgressFactory | None) -> dict[str, Any]:
    served = manifest.artifact("qdq_onnx") or manifest.artifacts["onnx"]
    _copy_with_progress(bundle_dir / served, out / ONNX_FILE, progress)
    return {"served": ONNX_FILE, "source": served, "mode": "explicit" if served.endswith(".qdq.onnx") else "fp32"}


def _build_tensorrt(bundle_dir: Path, manifest: Manifest, out: Path, device: DeviceInfo,
                    targets_files: tuple[Path, ...], progress: ProgressFactory | None) -> dict[str, Any]:
    """Build the engine on this device from the kept bundle with the TensorRT builder (imported lazily):
    the bundle folder has the calibration-folder layout the builder reads (model.onnx, model.qdq.onnx,
    calibration.cache, plan.json). The builder checks the inspector precisions against the plan and
    writes nothing when a layer the plan keeps FP16/FP32 runs INT8."""
    spec = load_spec(bundle_dir / manifest.artifacts["spec"])
    target = get_target(manifest.target, targets_files)
    crash_point("mid_build")
    outcome = run_build(BuildRequest(spec=spec, target=target, mode="auto", force=True, out_root=out / ".engine",
                                     calibration_dir=bundle_dir), progress)
    for f in sorted(outcome.directory.iterdir()):
        os.replace(f, out / f.name)
    rmtree(out / ".engine")
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


def build_and_verify(root: InstallRoot, bundle_dir: Path, manifest: Manifest, key: str, backend: str,
                      device: DeviceInfo, op: str, kind: str, progress: ProgressFactory | None,
                      targets_files: tuple[Path, ...] = ()) -> tuple[Path, SmokeResult]:
    """Build into a temporary folder under builds/, verify it, rename it into place. Returns the build dir."""
    final = root.build_dir(manifest.bundle_id, key)
    tmp = final.parent / f".tmp-{key}-{op}"
    rmtree(tmp)
    tmp.mkdir(parents=True)
    root.journal.append(op, kind, "building", bundle_id=manifest.bundle_id, device_key=key, backend=backend)
    t0 = time.monotonic()
    if backend == "tensorrt":
        built = _build_tensorrt(bundle_dir, manifest, tmp, device, targets_files, progress)
    else:
        built = _build_onnxruntime(bundle_dir, manifest, tmp, progress)
    root.journal.append(op, kind, "built", bundle_id=manifest.bundle_id, device_key=key, seconds=round(time.monotonic() - t0, 3))
    smoke = smoke_test(tmp / built["served"] if backend == "onnxruntime" else tmp, backend, manifest, bundle_dir)
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
    write_json(tmp / RELEASE_FILE, release)
    fsync_dir(tmp)
    old = root.staging / f"{op}-replaced-build"
    if final.exists():  # a rebuild or a repair: move the old build aside (one rename), never delete it in place
        root.staging.mkdir(parents=True, exist_ok=True)
        rmtree(old)
        os.replace(final, old)
    os.replace(tmp, final)
    fsync_dir(final.parent)
    rmtree(old)
    return final, smoke
