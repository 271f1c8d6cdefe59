"""Reports: PNG plots, the self-contained HTML report and the console table, from a real sweep (tiny ViT
exported through the pipeline, calibrated on the demo photos)."""

from __future__ import annotations

import re
from pathlib import Path

import onnx
import pytest

from vqz_edge.calib import CalibrationOptions, calibrate
from vqz_edge.calib.histogram import AbsHistogram
from vqz_edge.report import (
    REPORT_FILES,
    format_auto_plan,
    format_diagnostics,
    format_ranking,
    render_report,
    write_report,
)
from vqz_edge.sensitivity import SensitivityResult, SweepOptions, TargetOptions, analyze

PNG = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def vit_result(tmp_path_factory: pytest.TempPathFactory) -> tuple[SensitivityResult, dict[str, AbsHistogram]]:
    """(sweep result with an automatic plan, calibration histograms); the model is result.calibration/../vit.onnx."""
    from vqz_edge.export import ExportOptions, export_model

    root = tmp_path_factory.mktemp("vit_report")
    model = root / "vit.onnx"
    export_model("vqz_edge.export.hf:tiny_vit", model, ExportOptions(verify_samples=2))
    calibrate(model, "demo", root / "cal", CalibrationOptions(num_images=16, batch_size=8), preset="none")
    result, cal = analyze(model, root / "cal", "demo", SweepOptions(), target=TargetOptions(0.9995),
                          num_images=8, verify_images=8, batch_size=8)
    return result, cal.histograms


def test_report_is_deterministic_and_self_contained(vit_result: tuple[SensitivityResult, dict[str, AbsHistogram]]) -> None:
    result, hists = vit_result
    a = render_report(result, hists)
    b = render_report(result, hists)
    assert sorted(a) == sorted(REPORT_FILES)
    for name in REPORT_FILES:
        assert a[name] == b[name], f"{name} is not byte-identical across renders"
    for name in ("sensitivity.png", "histograms.png", "precision_map.png"):
        assert a[name].startswith(PNG) and 5_000 < len(a[name]) < 200_000, (name, len(a[name]))
    html = a["report.html"].decode()
    assert html.count("data:image/png;base64,") == 4  # ranking, by layer index, histograms, precision map
    assert not re.search(r"""(src|href)=["'](?!data:)""", html), "the report must not reference external files"
    for r in result.units:  # every unit in the ranking table, names escaped
        assert r.unit.name in html
    assert "Automatic plan" in html and "Diagnostics" in html and "verification samples" in html


def test_write_report_files(tmp_path: Path, vit_result: tuple[SensitivityResult, dict[str, AbsHistogram]]) -> None:
    result, hists = vit_result
    files = write_report(result, hists, tmp_path / "rep")
    assert sorted(p.name for p in files.values()) == sorted(REPORT_FILES)
    assert sorted(p.name for p in (tmp_path / "rep").iterdir()) == sorted(REPORT_FILES), "no temp files left"


def test_console_tables(vit_result: tuple[SensitivityResult, dict[str, AbsHistogram]]) -> None:
    result, _ = vit_result
    table = format_ranking(result, top=5).splitlines()
    assert table[0].split()[:2] == ["#", "unit"] and len(table) == 1 + 5 + 1
    first = result.units[0]
    assert table[1].split()[0] == "1" and f"{first.metrics.cosine:.5f}" in table[1]
    assert "automatic plan (cosine >= 0.9995)" in format_auto_plan(result)
    assert "verification (8 other held-out samples)" in format_auto_plan(result)
    diag = format_diagnostics(result)
    assert diag.startswith("diagnostics:")


def test_transformer_precision_map_shows_pinned_layers(vit_result: tuple[SensitivityResult, dict[str, AbsHistogram]]) -> None:
    from vqz_edge.policy import resolve_plan
    from vqz_edge.report.plots import precision_map

    result, _ = vit_result
    model = onnx.load(str(Path(result.calibration).parent / "vit.onnx"))
    plan = resolve_plan(model, model_name="vit", onnx_sha256="x", preset="vit").plan
    png = precision_map(plan, "tiny ViT, vit preset")
    assert png.startswith(PNG) and png == precision_map(plan, "tiny ViT, vit preset")
