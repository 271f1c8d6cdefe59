"""Reports people look at: PNG plots, one self-contained HTML file, and a compact console table.

``write_report(result, histograms, outdir)`` writes (deterministic names, each atomically):
``sensitivity.png``, ``sensitivity_by_layer.png``, ``histograms.png``, ``precision_map.png`` and ``report.html`` (which embeds them).
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

from ..calib.histogram import AbsHistogram
from ..errors import InputError
from ..fsutil import atomic_write_bytes
from ..sensitivity.sweep import SensitivityResult
from .console import format_auto_plan, format_diagnostics, format_ranking
from .html import render
from .plots import plot_all

REPORT_FILES = ("sensitivity.png", "sensitivity_by_layer.png", "histograms.png", "precision_map.png", "report.html")

__all__ = ["REPORT_FILES", "format_auto_plan", "format_diagnostics", "format_ranking", "render_report", "write_report"]


def render_report(result: SensitivityResult, histograms: Mapping[str, AbsHistogram]) -> dict[str, bytes]:
    images = plot_all(result, histograms)
    return {**images, "report.html": render(result, images).encode("utf-8")}


def write_report(result: SensitivityResult, histograms: Mapping[str, AbsHistogram], outdir: Path) -> dict[str, Path]:
    outdir = Path(outdir)
    try:
        outdir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise InputError(f"cannot create report directory {outdir}: {exc.strerror}") from exc
    payloads = render_report(result, histograms)  # everything rendered before anything is written
    files = {}
    for name in REPORT_FILES:
        atomic_write_bytes(outdir / name, payloads[name])
        files[name] = outdir / name
    return files
