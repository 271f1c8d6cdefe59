"""Errors of the VLM recipe, as subclasses of the project's one hierarchy (``vqz_edge.errors``)."""

from __future__ import annotations

from ..errors import InputError, VerificationError


class VlmConfigError(InputError):
    """A model config that is not a supported vision-language model; the message names the key."""


class PrecisionRefused(InputError):
    """A precision the asymmetric recipe refuses (a vision encoder below INT8, INT8 without evidence)."""


class AuditFailed(VerificationError):
    """A loaded model quantized something the recipe keeps in FP16 (vision, connector, LM head)."""
