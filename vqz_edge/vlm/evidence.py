"""Fidelity evidence: the measured report an INT8 vision encoder must come with (its worst cosine, hashed)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..fsutil import read_json, sha256_file
from ..memory import MIB
from .errors import PrecisionRefused


@dataclass(frozen=True)
class FidelityEvidence:
    path: str
    sha256: str
    cosine: float
    key: str

    def to_dict(self) -> dict[str, Any]:
        return {"path": self.path, "sha256": self.sha256, "cosine": self.cosine, "key": self.key}


def _find_cosines(doc: Any, prefix: str = "") -> list[tuple[str, float]]:
    found: list[tuple[str, float]] = []
    if isinstance(doc, Mapping):
        for k, v in doc.items():
            key = f"{prefix}.{k}" if prefix else str(k)
            if "cosine" in str(k).lower() and isinstance(v, (int, float)) and not isinstance(v, bool):
                found.append((key, float(v)))
            else:
                found.extend(_find_cosines(v, key))
    elif isinstance(doc, list):
        for idx, v in enumerate(doc):
            found.extend(_find_cosines(v, f"{prefix}[{idx}]"))
    return found


def read_fidelity_report(path: Path | None, *, min_cosine: float = 0.99, saving: int | None = None) -> FidelityEvidence:
    """The measured fidelity an INT8 vision encoder needs: the JSON of ``vqz-edge evaluate --json`` (any
    object with a ``*cosine*`` metric). The worst cosine found must reach ``min_cosine``."""
    save = f" (INT8 would save {saving / MIB:.0f} MiB)" if saving else ""
    if path is None:
        raise PrecisionRefused(
            f"--vision int8 requires a measured fidelity report from `vqz-edge evaluate` and none was given{save}",
            hint="evaluate the INT8 vision encoder against FP16 on held-out images "
            "(vqz-edge evaluate REF.onnx INT8.onnx --data DIR --json > fidelity.json) and pass --fidelity-report fidelity.json",
        )
    path = Path(path)
    doc = read_json(path, "fidelity report", PrecisionRefused)
    found = _find_cosines(doc)
    if not found:
        raise PrecisionRefused(
            f"fidelity report {path} has no cosine metric",
            hint="pass the JSON written by `vqz-edge evaluate --json` (it reports the mean logit cosine)",
        )
    key, worst = min(found, key=lambda kv: kv[1])
    if worst < min_cosine:
        raise PrecisionRefused(
            f"fidelity report {path}: {key} = {worst:.4f} is below the {min_cosine} an INT8 vision encoder must reach",
            hint="keep --vision fp16",
        )
    return FidelityEvidence(str(path), sha256_file(path), worst, key)


