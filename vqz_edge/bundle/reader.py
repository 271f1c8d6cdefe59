"""Verify a bundle (and optionally extract it) in one sequential pass.

Order of checks, cheapest first: the tar entries ``MANIFEST.json`` and ``SIGNATURE.json`` sort first, so
the signature is verified before any large file is read; each further entry must be listed in the
manifest with its size, and its sha256 is computed while it streams; at the end, every listed file must
have been seen and the whole file must be the canonical tar of those entries (``tarball.scan_tar``).
A single flipped byte anywhere in a signed bundle is therefore rejected.
"""

from __future__ import annotations

import hashlib
import io
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

from ..errors import require_file
from ..log import get_logger
from .errors import BundleIntegrityError, InstallRefusedError
from .manifest import MANIFEST_NAME, SIGNATURE_NAME, Manifest, parse_manifest
from .signing import parse_signature, verify_manifest_signature
from .tarball import ScanResult, scan_tar, write_member

_log = get_logger(__name__)

MAX_MANIFEST = 4 << 20
MAX_SIGNATURE = 4 << 10

SIGNATURE_VERIFIED = "verified"
SIGNATURE_ABSENT = "unsigned"
SIGNATURE_NOT_CHECKED = "not-checked"


@dataclass(frozen=True)
class VerifiedBundle:
    manifest: Manifest
    manifest_bytes: bytes
    signature: str  # verified | unsigned | not-checked
    key_id: str | None
    size: int
    sha256: str

    @property
    def bundle_id(self) -> str:
        return self.manifest.bundle_id

    def to_dict(self) -> dict[str, Any]:
        m = self.manifest
        return {
            "bundle_id": m.bundle_id,
            "bundle_version": m.bundle_version,
            "model": m.model,
            "target": m.target,
            "vqz_edge_version": m.vqz_edge_version,
            "signature": self.signature,
            "key_id": self.key_id,
            "bundle_sha256": self.sha256,
            "bundle_bytes": self.size,
            "files": {k: v.to_dict() for k, v in sorted(m.files.items())},
            "compatibility": m.compatibility.to_dict(),
            "build": dict(m.build),
        }


def _read_all(chunks: Iterator[bytes], limit: int, name: str) -> bytes:
    buf = bytearray()
    for block in chunks:
        buf += block
        if len(buf) > limit:
            raise BundleIntegrityError(f"{name} is larger than {limit} bytes")
    return bytes(buf)


def _changed(what: str) -> BundleIntegrityError:
    return BundleIntegrityError(
        f"the bundle file changed while it was being installed ({what} differs from the pass that was verified)",
        hint="another process is writing or replacing the bundle file; copy it somewhere private and install again",
    )


class _Verifier:
    def __init__(self, public_key: Any | None, allow_unsigned: bool, dest: Path | None,
                 expected: VerifiedBundle | None = None) -> None:
        self.public_key = public_key
        self.allow_unsigned = allow_unsigned
        self.dest = dest
        self.expected = expected
        self.manifest_bytes: bytes | None = None
        self.signature_bytes: bytes | None = None
        self.manifest: Manifest | None = None
        self.signature = SIGNATURE_NOT_CHECKED
        self.key_id: str | None = None
        self.seen: set[str] = set()

    def _authenticate(self) -> Manifest:
        """Parse the manifest and check the signature; runs once, before the first data file."""
        if self.manifest is not None:
            return self.manifest
        if self.manifest_bytes is None:
            raise BundleIntegrityError(
                f"bundle has no {MANIFEST_NAME} (it must be the first entry)",
                hint="this is not a vqz-edge bundle, or it was repacked; use the file 'vqz-edge bundle' wrote",
            )
        if self.signature_bytes is not None:
            info = parse_signature(self.signature_bytes)
            if self.public_key is not None:
                self.key_id = verify_manifest_signature(self.manifest_bytes, self.signature_bytes, self.public_key)
                self.signature = SIGNATURE_VERIFIED
            elif self.allow_unsigned:
                self.key_id = info.key_id
                self.signature = SIGNATURE_NOT_CHECKED
                _log.warning("bundle is signed by key %s but no public key was given: signature NOT checked", info.key_id)
            else:
                raise InstallRefusedError(
                    f"bundle is signed by key {info.key_id} but no public key was given to verify it",
                    hint="pass --key SIGNER.pub (or --allow-unsigned to skip the check, not recommended)",
                )
        else:
            if not self.allow_unsigned:
                raise InstallRefusedError(
                    "bundle is NOT signed; unsigned bundles are refused",
                    hint="sign it on the build host (vqz-edge bundle ... --sign-key KEY) or pass --allow-unsigned",
                )
            self.signature = SIGNATURE_ABSENT
            _log.warning("bundle is NOT signed; installing anyway because --allow-unsigned was given")
        # Parse after authentication: a forged manifest is reported as a bad signature, not a parse error.
        self.manifest = parse_manifest(self.manifest_bytes)
        return self.manifest

    def __call__(self, name: str, size: int, chunks: Iterator[bytes]) -> None:
        if name == MANIFEST_NAME:
            self.manifest_bytes = _read_all(chunks, MAX_MANIFEST, name)
            if self.expected is not None and self.manifest_bytes != self.expected.manifest_bytes:
                raise _changed(MANIFEST_NAME)
            return
        if name == SIGNATURE_NAME:
            if self.manifest_bytes is None:
                raise BundleIntegrityError(f"bundle has no {MANIFEST_NAME} before {SIGNATURE_NAME}")
            self.signature_bytes = _read_all(chunks, MAX_SIGNATURE, name)
            return
        manifest = self._authenticate()
        entry = manifest.files.get(name)
        if entry is None:
            raise BundleIntegrityError(f"bundle entry {name!r} is not listed in the manifest")
        if size != entry.size:
            raise BundleIntegrityError(f"{name}: {size} bytes in the bundle, the manifest says {entry.size}")
        sha = hashlib.sha256()

        def hashed() -> Iterator[bytes]:
            for block in chunks:
                sha.update(block)
                yield block

        if self.dest is not None:
            write_member(self.dest, name, hashed())
        else:
            for _ in hashed():
                pass
        if sha.hexdigest() != entry.sha256:
            raise BundleIntegrityError(
                f"{name}: sha256 {sha.hexdigest()[:16]}... does not match the manifest ({entry.sha256[:16]}...)",
                hint="the bundle was altered or corrupted in transit; do not install it",
            )
        self.seen.add(name)

    def finish(self, scan: ScanResult) -> VerifiedBundle:
        manifest = self._authenticate()
        missing = sorted(set(manifest.files) - self.seen)
        if missing:
            raise BundleIntegrityError(f"bundle is missing file(s) listed in its manifest: {missing}")
        assert self.manifest_bytes is not None  # set by _authenticate
        if self.expected is not None and (scan.sha256, scan.size) != (self.expected.sha256, self.expected.size):
            raise _changed("the file's sha256")
        return VerifiedBundle(manifest, self.manifest_bytes, self.signature, self.key_id, scan.size, scan.sha256)


def verify_bundle(
    source: Path | bytes | BinaryIO,
    public_key: Any | None = None,
    *,
    allow_unsigned: bool = False,
    dest: Path | None = None,
    expected: VerifiedBundle | None = None,
) -> VerifiedBundle:
    """Verify ``source`` (a path, the bundle bytes or a binary file object); extract into ``dest`` if given.

    ``expected``: the result of an earlier pass over the same source (e.g. the same open file, rewound): this
    pass must then see exactly those manifest bytes and that whole-file sha256, so every file it extracts is
    checked against the manifest that was verified, never against one that appeared in between.

    ``public_key``: an Ed25519 public key (``signing.load_public_key``). Without it, only
    ``allow_unsigned=True`` accepts the bundle (its signature, if any, is then *not* checked).
    Raises BundleIntegrityError (tampering, corruption, unsafe entries) or InstallRefusedError (unsigned).
    With ``dest``, files are written there while they are verified; on error the caller removes ``dest``.
    """
    verifier = _Verifier(public_key, allow_unsigned, dest, expected)
    if isinstance(source, bytes):
        scan = scan_tar(io.BytesIO(source), verifier)
    elif isinstance(source, (str, Path)):
        path = Path(source)
        require_file(path, "bundle")
        with open(path, "rb") as fh:
            scan = scan_tar(fh, verifier)
    else:
        scan = scan_tar(source, verifier)
    return verifier.finish(scan)
