"""Errors of the bundle/install flow, as subclasses of the project hierarchy (``vqz_edge.errors``)."""

from __future__ import annotations

from ..errors import InputError, VerificationError


class BundleIntegrityError(VerificationError):
    """A bundle failed verification: bad signature, hash mismatch, altered container, truncated file.

    Exit code 5. Nothing is installed from a bundle that raised this.
    """


class UnsafeBundleError(BundleIntegrityError):
    """A bundle entry could escape the extraction folder or is not a regular file (path traversal,
    absolute path, symlink, hard link, device file, FIFO)."""


class InstallRefusedError(InputError):
    """The bundle is genuine but must not be installed here: downgrade, wrong target, device outside the
    bundle's JetPack/L4T/TensorRT range, unsigned without --allow-unsigned, memory budget exceeded."""
