"""Cross-compile flow: deterministic signed bundles on the x86 host, verified install on the device.

Build host::

    from vqz_edge.bundle import BundleOptions, create_bundle, generate_keypair
    keys = generate_keypair(Path("fleet"))                       # fleet.key, fleet.pub
    create_bundle(Path("spec.toml"), Path("b.tar"), BundleOptions("orin-nx-16gb", bundle_version=3,
                                                                   sign_key=keys.private_path))

Device::

    from vqz_edge.bundle import InstallOptions, install_bundle, rollback, status, verify_bundle
    install_bundle(Path("b.tar"), Path("/opt/vqz"), InstallOptions(public_key=Path("fleet.pub")))

Modules: ``tarball`` (deterministic tar, strict reading, safe extraction), ``manifest``, ``signing``
(Ed25519), ``reader`` (verification), ``create`` (bundling), ``smoke`` (reference test), ``device``
(detection), ``journal`` (state journal), ``install`` (install/refresh/rollback/status), ``plan_header``
(TensorRT plan header check without TensorRT).

Heavy dependencies (onnxruntime, onnx, cryptography, TensorRT) are imported inside functions.
"""

from .create import BundleOptions, BundleResult, create_bundle
from .errors import BundleIntegrityError, InstallRefusedError, UnsafeBundleError
from .install import InstallOptions, InstallResult, install_bundle, refresh, rollback, status
from .manifest import MANIFEST_NAME, SIGNATURE_NAME, Compatibility, Manifest, parse_manifest
from .plan_header import PlanHeader, check_plan_version, parse_plan_header, read_plan_header
from .reader import VerifiedBundle, verify_bundle
from .signing import KeyPair, generate_keypair, load_private_key, load_public_key
from .store import CRASH_ENV, CRASH_POINTS, InstallRoot
from .tarball import safe_extract, scan_tar, tar_bytes, write_tar

__all__ = [
    "CRASH_ENV",
    "CRASH_POINTS",
    "MANIFEST_NAME",
    "SIGNATURE_NAME",
    "BundleIntegrityError",
    "BundleOptions",
    "BundleResult",
    "Compatibility",
    "InstallOptions",
    "InstallRefusedError",
    "InstallResult",
    "InstallRoot",
    "KeyPair",
    "Manifest",
    "PlanHeader",
    "UnsafeBundleError",
    "VerifiedBundle",
    "check_plan_version",
    "create_bundle",
    "generate_keypair",
    "install_bundle",
    "load_private_key",
    "load_public_key",
    "parse_manifest",
    "parse_plan_header",
    "read_plan_header",
    "refresh",
    "rollback",
    "safe_extract",
    "scan_tar",
    "status",
    "tar_bytes",
    "verify_bundle",
    "write_tar",
]
