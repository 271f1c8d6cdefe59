"""Ed25519 signatures over the canonical manifest bytes (library: ``cryptography``).

Keys are PEM files: the private key PKCS#8 (written with mode 0600), the public key SubjectPublicKeyInfo.
A key id is the first 16 hex digits of sha256 over the raw 32-byte public key; it names the signer in
``SIGNATURE.json`` so that "signed by another key" is a clear message, not just "bad signature".

``SIGNATURE.json`` (canonical JSON)::

    {"algorithm": "ed25519", "key_id": "3f2a...", "signature": "<base64 of 64 bytes>"}
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..errors import DependencyError, InputError, require_file
from ..fsutil import canonical_json, write_set
from .errors import BundleIntegrityError

ALGORITHM = "ed25519"


def _crypto() -> Any:
    try:
        from cryptography.hazmat.primitives import serialization
        from cryptography.hazmat.primitives.asymmetric import ed25519
    except ImportError as exc:
        raise DependencyError(
            "the 'cryptography' package is needed to sign and verify bundles",
            hint="pip install 'cryptography>=42'",
        ) from exc
    return ed25519, serialization


def key_id_of(public_raw: bytes) -> str:
    return hashlib.sha256(public_raw).hexdigest()[:16]


@dataclass(frozen=True)
class KeyPair:
    private_path: Path
    public_path: Path
    key_id: str


def generate_keypair(prefix: Path, *, force: bool = False) -> KeyPair:
    """Write ``PREFIX.key`` (private, 0600) and ``PREFIX.pub`` (public); refuse to overwrite unless ``force``."""
    ed25519, serialization = _crypto()
    prefix = Path(prefix)
    priv_path = prefix.with_name(prefix.name + ".key")
    pub_path = prefix.with_name(prefix.name + ".pub")
    for p in (priv_path, pub_path):
        if p.exists() and not force:
            raise InputError(f"{p} already exists; refusing to overwrite a key", hint="choose another -o or pass --force")
    key = ed25519.Ed25519PrivateKey.generate()
    priv_pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    pub = key.public_key()
    pub_pem = pub.public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    raw = pub.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    # both files or neither: a private key without its public half is a key nobody can verify against.
    # The private key is created 0o600 (never readable by others, not even empty); the public key honours the umask.
    write_set(priv_path.parent, {priv_path.name: priv_pem, pub_path.name: pub_pem}, last=pub_path.name,
              tag="keys", modes={priv_path.name: 0o600})
    return KeyPair(priv_path, pub_path, key_id_of(raw))


def _read_key_file(path: Path, what: str) -> bytes:
    path = Path(path)
    require_file(path, what)
    return path.read_bytes()


def load_private_key(path: Path) -> Any:
    ed25519, serialization = _crypto()
    data = _read_key_file(path, "signing key")
    try:
        key = serialization.load_pem_private_key(data, password=None)
    except (ValueError, TypeError) as exc:
        raise InputError(
            f"{path} is not an unencrypted PEM private key ({exc})",
            hint="create one with: vqz-edge keys generate -o NAME (use NAME.key to sign)",
        ) from exc
    if not isinstance(key, ed25519.Ed25519PrivateKey):
        raise InputError(f"{path} holds a {type(key).__name__}, not an Ed25519 private key")
    return key


def load_public_key(path: Path) -> Any:
    ed25519, serialization = _crypto()
    data = _read_key_file(path, "public key")
    try:
        key = serialization.load_pem_public_key(data)
    except (ValueError, TypeError) as exc:
        hint = "pass the .pub file, not the private .key" if b"PRIVATE KEY" in data else None
        raise InputError(f"{path} is not a PEM public key ({exc})", hint=hint) from exc
    if not isinstance(key, ed25519.Ed25519PublicKey):
        raise InputError(f"{path} holds a {type(key).__name__}, not an Ed25519 public key")
    return key


def public_key_id(public_key: Any) -> str:
    _, serialization = _crypto()
    return key_id_of(public_key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw))


def private_key_id(private_key: Any) -> str:
    return public_key_id(private_key.public_key())


def sign_manifest(manifest_bytes: bytes, private_key: Any) -> bytes:
    """The canonical ``SIGNATURE.json`` bytes for ``manifest_bytes``."""
    sig = private_key.sign(manifest_bytes)
    doc = {"algorithm": ALGORITHM, "key_id": private_key_id(private_key), "signature": base64.b64encode(sig).decode()}
    return canonical_json(doc).encode("utf-8")


@dataclass(frozen=True)
class SignatureInfo:
    algorithm: str
    key_id: str
    signature: bytes


def parse_signature(data: bytes) -> SignatureInfo:
    """Parse ``SIGNATURE.json``; it must be exactly in canonical form."""
    try:
        doc = json.loads(data.decode("utf-8"))
    except (UnicodeDecodeError, ValueError) as exc:
        raise BundleIntegrityError(f"SIGNATURE.json is not valid JSON ({exc})") from exc
    if not isinstance(doc, dict) or set(doc) != {"algorithm", "key_id", "signature"}:
        raise BundleIntegrityError("SIGNATURE.json must hold exactly 'algorithm', 'key_id' and 'signature'")
    if canonical_json(doc).encode("utf-8") != data:
        raise BundleIntegrityError("SIGNATURE.json is not in canonical form (it was edited)")
    if doc["algorithm"] != ALGORITHM:
        raise BundleIntegrityError(f"SIGNATURE.json algorithm {doc['algorithm']!r} is not supported (only {ALGORITHM})")
    try:
        sig = base64.b64decode(str(doc["signature"]), validate=True)
    except (binascii.Error, ValueError) as exc:
        raise BundleIntegrityError(f"SIGNATURE.json signature is not base64 ({exc})") from exc
    if len(sig) != 64 or base64.b64encode(sig).decode() != doc["signature"]:
        raise BundleIntegrityError("SIGNATURE.json signature is not a canonical 64-byte Ed25519 signature")
    return SignatureInfo(str(doc["algorithm"]), str(doc["key_id"]), sig)


def verify_manifest_signature(manifest_bytes: bytes, signature_bytes: bytes, public_key: Any) -> str:
    """Raise BundleIntegrityError unless ``signature_bytes`` signs ``manifest_bytes`` with ``public_key``.

    Returns the signer's key id.
    """
    from cryptography.exceptions import InvalidSignature

    info = parse_signature(signature_bytes)
    expected = public_key_id(public_key)
    if info.key_id != expected:
        raise BundleIntegrityError(
            f"bundle was signed by key {info.key_id}, not by the trusted key {expected}",
            hint="pass the public key of the signer that your fleet trusts (--key)",
        )
    try:
        public_key.verify(info.signature, manifest_bytes)
    except InvalidSignature as exc:
        raise BundleIntegrityError(
            f"the manifest signature does not verify with key {expected}: the manifest or the signature was altered",
            hint="do not install this bundle; fetch it again from the build host",
        ) from exc
    return info.key_id
