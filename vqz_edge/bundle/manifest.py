"""The bundle manifest: what is inside, for which target and device range, and which bundle version.

``MANIFEST.json`` is canonical JSON (sorted keys, no timestamps) and is the exact byte string that the
Ed25519 signature covers. Every other file of the bundle is listed with its sha256 and size; the tar
reader refuses files that are not listed, listed files that are missing, and any hash mismatch.

Names are upper-case so that, in the sorted tar, the manifest and signature come first and are
verified before any large file is read.
"""

from __future__ import annotations

import functools
import json
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from ..fsutil import canonical_json, sha256_bytes
from ..vocab import BUILD_MODES
from .errors import BundleIntegrityError

MANIFEST_NAME = "MANIFEST.json"
SIGNATURE_NAME = "SIGNATURE.json"
FORMAT = "vqz-edge-bundle"
MANIFEST_VERSION = 1
ROLES = ("onnx", "qdq_onnx", "calibration_cache", "plan", "spec", "fidelity")
_SHA_RE = re.compile(r"^[0-9a-f]{64}$")
_VERSION_RE = re.compile(r"^\d+(\.\d+){0,3}$")


def _bad(msg: str) -> BundleIntegrityError:
    return BundleIntegrityError(f"MANIFEST.json: {msg}", hint="the bundle was made by an incompatible vqz-edge or edited")


def version_tuple(text: str) -> tuple[int, ...]:
    if not _VERSION_RE.match(text):
        raise ValueError(f"{text!r} is not a dotted version number")
    return tuple(int(x) for x in text.split("."))


def version_matches(actual: str, allowed: str) -> bool:
    """``allowed`` '36.4' matches 36.4, 36.4.0, 36.4.3; '36.4.3' matches only 36.4.3 (and 36.4.3.x)."""
    a, w = version_tuple(actual), version_tuple(allowed)
    a = a + (0,) * max(0, len(w) - len(a))
    return a[: len(w)] == w


@dataclass(frozen=True)
class FileEntry:
    sha256: str
    size: int

    def __post_init__(self) -> None:
        if not _SHA_RE.match(self.sha256):
            raise ValueError(f"sha256 {self.sha256!r} is not 64 lower-case hex digits")
        if self.size < 0:
            raise ValueError(f"size {self.size} is negative")

    def to_dict(self) -> dict[str, Any]:
        return {"sha256": self.sha256, "size": self.size}


@dataclass(frozen=True)
class Compatibility:
    """The device range a bundle may be installed on."""

    jetpack: tuple[str, ...]
    l4t: tuple[str, ...]
    tensorrt_min: str
    tensorrt_max: str
    compute_capability: str

    def __post_init__(self) -> None:
        if not self.jetpack or len(self.jetpack) != len(self.l4t):
            raise ValueError("compatibility needs one L4T release per allowed JetPack release")
        for v in (*self.jetpack, *self.l4t, self.tensorrt_min, self.tensorrt_max, self.compute_capability):
            version_tuple(v)
        if version_tuple(self.tensorrt_min) > version_tuple(self.tensorrt_max):
            raise ValueError(f"TensorRT range {self.tensorrt_min}..{self.tensorrt_max} is empty")

    def l4t_allowed(self, l4t: str) -> bool:
        return any(version_matches(l4t, allowed) for allowed in self.l4t)

    def tensorrt_allowed(self, trt: str) -> bool:
        v = version_tuple(trt)[:3]
        return version_tuple(self.tensorrt_min)[:3] <= v <= version_tuple(self.tensorrt_max)[:3]

    def to_dict(self) -> dict[str, Any]:
        return {
            "jetpack": list(self.jetpack),
            "l4t": list(self.l4t),
            "tensorrt": {"min": self.tensorrt_min, "max": self.tensorrt_max},
            "compute_capability": self.compute_capability,
        }

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> Compatibility:
        return cls(
            jetpack=tuple(str(x) for x in d["jetpack"]),
            l4t=tuple(str(x) for x in d["l4t"]),
            tensorrt_min=str(d["tensorrt"]["min"]),
            tensorrt_max=str(d["tensorrt"]["max"]),
            compute_capability=str(d["compute_capability"]),
        )


@dataclass(frozen=True)
class TensorRef:
    """One reference tensor of the smoke test, stored as ``.npy`` in the bundle."""

    name: str
    file: str
    shape: tuple[int, ...]
    dtype: str

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "file": self.file, "shape": list(self.shape), "dtype": self.dtype}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> TensorRef:
        return cls(str(d["name"]), str(d["file"]), tuple(int(x) for x in d["shape"]), str(d["dtype"]))


@dataclass(frozen=True)
class SmokeTest:
    """Reference inputs/outputs (outputs of the FP32 ONNX on ONNX Runtime) and the tolerance the served
    artifact must meet on the device: per-sample cosine similarity of every output >= ``min_cosine``."""

    inputs: tuple[TensorRef, ...]
    outputs: tuple[TensorRef, ...]
    min_cosine: float
    measured: Mapping[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not self.inputs or not self.outputs:
            raise ValueError("the smoke test needs at least one input and one output")
        if not 0.0 < self.min_cosine <= 1.0:
            raise ValueError(f"smoke min_cosine must be in (0, 1], got {self.min_cosine}")

    def to_dict(self) -> dict[str, Any]:
        return {
            "inputs": [t.to_dict() for t in self.inputs],
            "outputs": [t.to_dict() for t in self.outputs],
            "min_cosine": self.min_cosine,
            "measured": dict(self.measured),
        }

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> SmokeTest:
        return cls(
            inputs=tuple(TensorRef.from_dict(x) for x in d["inputs"]),
            outputs=tuple(TensorRef.from_dict(x) for x in d["outputs"]),
            min_cosine=float(d["min_cosine"]),
            measured=dict(d.get("measured", {})),
        )


@dataclass(frozen=True)
class Manifest:
    bundle_version: int
    model: str
    target: str
    vqz_edge_version: str
    compatibility: Compatibility
    artifacts: Mapping[str, str]  # role -> file name
    files: Mapping[str, FileEntry]  # file name -> hash, size (every file except MANIFEST/SIGNATURE)
    build: Mapping[str, Any]
    smoke: SmokeTest
    manifest_version: int = MANIFEST_VERSION

    def __post_init__(self) -> None:
        if isinstance(self.bundle_version, bool) or not isinstance(self.bundle_version, int) or self.bundle_version < 1:
            raise ValueError(f"bundle version must be a positive integer, got {self.bundle_version!r}")
        if self.manifest_version != MANIFEST_VERSION:
            raise ValueError(f"manifest version {self.manifest_version} is not supported (this vqz-edge reads {MANIFEST_VERSION})")
        if not re.match(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$", self.model) or not re.match(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$", self.target):
            raise ValueError(f"model {self.model!r} / target {self.target!r} must be plain names")
        unknown = sorted(set(self.artifacts) - set(ROLES))
        if unknown:
            raise ValueError(f"unknown artifact role(s) {unknown}; known: {list(ROLES)}")
        if "onnx" not in self.artifacts:
            raise ValueError("a bundle must contain the ONNX model (role 'onnx')")
        for role, name in self.artifacts.items():
            if name not in self.files:
                raise ValueError(f"artifact {role} = {name!r} is not listed in files")
        for ref in (*self.smoke.inputs, *self.smoke.outputs):
            if ref.file not in self.files:
                raise ValueError(f"smoke reference {ref.file!r} is not listed in files")
        if MANIFEST_NAME in self.files or SIGNATURE_NAME in self.files:
            raise ValueError("files must not list the manifest or the signature")
        modes = self.build.get("modes", [])
        if not modes or any(m not in BUILD_MODES for m in modes):
            raise ValueError(f"build.modes {modes!r} must be a non-empty subset of {list(BUILD_MODES)}")

    # -- identity -----------------------------------------------------------------------------------
    def body(self) -> dict[str, Any]:
        return {
            "format": FORMAT,
            "manifest_version": self.manifest_version,
            "bundle_version": self.bundle_version,
            "model": self.model,
            "target": self.target,
            "vqz_edge_version": self.vqz_edge_version,
            "compatibility": self.compatibility.to_dict(),
            "artifacts": dict(sorted(self.artifacts.items())),
            "files": {k: v.to_dict() for k, v in sorted(self.files.items())},
            "build": dict(self.build),
            "smoke": self.smoke.to_dict(),
        }

    @property
    def bundle_id(self) -> str:
        """``<model>-<target>-v<version>-<12 hex of the content digest>``: same content, same id."""
        return self._id(self.body())

    def _id(self, body: Mapping[str, Any]) -> str:
        digest = sha256_bytes(canonical_json(body).encode("utf-8"))[:12]
        return f"{self.model}-{self.target}-v{self.bundle_version}-{digest}"

    def to_dict(self) -> dict[str, Any]:
        body = self.body()
        return {**body, "bundle_id": self._id(body)}

    def to_bytes(self) -> bytes:
        return canonical_json(self.to_dict()).encode("utf-8")

    def artifact(self, role: str) -> str | None:
        return self.artifacts.get(role)

    @classmethod
    def from_dict(cls, doc: Mapping[str, Any]) -> Manifest:
        if doc.get("format") != FORMAT:
            raise _bad(f"format is {doc.get('format')!r}, expected {FORMAT!r}")
        mv = doc.get("manifest_version")
        if mv != MANIFEST_VERSION:
            raise BundleIntegrityError(
                f"MANIFEST.json: manifest version {mv!r} is not supported (this vqz-edge reads {MANIFEST_VERSION})",
                hint="install a vqz-edge that matches the build host's",
            )
        try:
            m = cls(
                bundle_version=doc["bundle_version"],
                model=str(doc["model"]),
                target=str(doc["target"]),
                vqz_edge_version=str(doc["vqz_edge_version"]),
                compatibility=Compatibility.from_dict(doc["compatibility"]),
                artifacts={str(k): str(v) for k, v in doc["artifacts"].items()},
                files={str(k): FileEntry(str(v["sha256"]), int(v["size"])) for k, v in doc["files"].items()},
                build=dict(doc["build"]),
                smoke=SmokeTest.from_dict(doc["smoke"]),
                manifest_version=int(mv),
            )
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            raise _bad(f"{type(exc).__name__}: {exc}") from exc
        return m


@functools.lru_cache(maxsize=16)
def parse_manifest(data: bytes) -> Manifest:
    """Parse ``MANIFEST.json`` bytes; they must be exactly the canonical serialisation (which also pins
    the ``bundle_id`` to the content). Cached: installs verify the same manifest several times."""
    try:
        doc = json.loads(data.decode("utf-8"))
    except (UnicodeDecodeError, ValueError) as exc:
        raise _bad(f"not valid JSON ({exc})") from exc
    if not isinstance(doc, dict):
        raise _bad("not a JSON object")
    m = Manifest.from_dict(doc)
    expected = m.to_bytes()
    if expected != data:
        if doc.get("bundle_id") != m.bundle_id:
            raise _bad(f"bundle_id {doc.get('bundle_id')!r} does not match its content ({m.bundle_id})")
        raise _bad("not in canonical form (the file was edited)")
    return m
