"""`vqz-edge export` end to end, as a user runs it, and its bad-input behaviour."""

from __future__ import annotations

import json
from pathlib import Path

import onnx
import pytest

from tests.conftest import run_cli
from tests.onnx_graphs import image_model
from vqz_edge.onnx_io import count_ops


@pytest.mark.slow
def test_mobilenet_v2_real_weights(tmp_path: Path, mobilenet_weights: Path) -> None:
    out = tmp_path / "x.onnx"
    r = run_cli("export", "mobilenet_v2", "--weights", str(mobilenet_weights), "-o", str(out), "--json")
    assert r.returncode == 0, r.stderr
    rep = json.loads(r.stdout)
    assert rep["batchnorm_before"] == 52 and rep["batchnorm_after"] == 0
    assert rep["max_abs_error"] <= 1e-4
    assert rep["opset"] == 17 and rep["inputs"][0]["shape"] == ["batch", 3, 224, 224]
    assert "real photo crops" in rep["verification_data"][0]
    model = onnx.load(str(out))
    assert count_ops(model, "BatchNormalization") == 0
    names = [n.name for n in model.graph.node]
    assert "/features/features.1/conv/conv.0/conv.0.0/Conv" in names, "module scopes must survive in node names"
    assert names[-1] == "/classifier/classifier.1/Gemm"


@pytest.mark.slow
def test_other_exporter_with_batchnorm(tmp_path: Path, mobilenet_weights: Path) -> None:
    """A torch export that kept its BatchNormalization nodes (as older exporters did)."""
    import torch
    import torchvision

    from vqz_edge.export.torch_side import load_weights

    m = torchvision.models.mobilenet_v2()
    load_weights(m, mobilenet_weights)
    src = tmp_path / "with_bn.onnx"
    torch.onnx.export(m.eval(), (torch.zeros(1, 3, 224, 224),), str(src), dynamo=False, opset_version=13,
                      do_constant_folding=False, input_names=["data"], dynamic_axes={"data": {0: "n"}})
    assert count_ops(onnx.load(str(src)), "BatchNormalization") == 52
    out = tmp_path / "folded.onnx"
    r = run_cli("export", str(src), "-o", str(out), "--json")
    assert r.returncode == 0, r.stderr
    rep = json.loads(r.stdout)
    assert rep["batchnorm_before"] == 52 and rep["batchnorm_after"] == 0
    assert rep["onnx_passes"]["folded_into"] == {"Conv": 52}
    assert rep["max_rel_error"] <= 1e-4


def test_hand_built_onnx_with_convtranspose_bn(tmp_path: Path) -> None:
    src = tmp_path / "paddle_style.onnx"
    onnx.save(image_model(opset=11), str(src))
    out = tmp_path / "out.onnx"
    r = run_cli("export", str(src), "-o", str(out), "--input-shape", "2x3x64x64", "--json")
    assert r.returncode == 0, r.stderr
    rep = json.loads(r.stdout)
    assert rep["batchnorm_before"] == 8 and rep["batchnorm_after"] == 0
    assert rep["onnx_passes"]["folded_into"]["ConvTranspose"] == 2
    assert rep["max_rel_error"] <= 1e-4
    assert "real photo crops" in rep["verification_data"][0]


def test_dynamic_spatial_dims_need_input_shape(tmp_path: Path) -> None:
    src = tmp_path / "dyn.onnx"
    onnx.save(image_model(), str(src))
    out = tmp_path / "out.onnx"
    r = run_cli("export", str(src), "-o", str(out))
    assert r.returncode == 2
    assert "dynamic dim 2" in r.stderr and "--input-shape" in r.stderr
    assert not out.exists()


# ---- bad input: clear error, non-zero exit, no file left -----------------------------------------


def _no_artifacts(directory: Path) -> None:
    assert sorted(p.name for p in directory.iterdir() if p.suffix in (".onnx", ".tmp")) == []


def test_missing_file(tmp_path: Path) -> None:
    r = run_cli("export", str(tmp_path / "nope.onnx"), "-o", str(tmp_path / "o.onnx"))
    assert r.returncode == 2 and "nope.onnx does not exist" in r.stderr
    _no_artifacts(tmp_path)


def test_truncated_onnx(tmp_path: Path) -> None:
    src = tmp_path / "src" / "trunc.onnx"
    src.parent.mkdir()
    data = image_model().SerializeToString()
    src.write_bytes(data[: len(data) // 2])
    r = run_cli("export", str(src), "-o", str(tmp_path / "o.onnx"))
    assert r.returncode == 2 and "trunc.onnx" in r.stderr and "not a readable ONNX model" in r.stderr
    _no_artifacts(tmp_path)


def test_shape_mismatch_onnx(tmp_path: Path) -> None:
    src = tmp_path / "src" / "m.onnx"
    src.parent.mkdir()
    onnx.save(image_model(), str(src))
    r = run_cli("export", str(src), "-o", str(tmp_path / "o.onnx"), "--input-shape", "1x4x32x32")
    assert r.returncode == 2 and "does not match model input 'input'" in r.stderr and "dim 1" in r.stderr
    _no_artifacts(tmp_path)


def test_shape_mismatch_torch(tmp_path: Path) -> None:
    r = run_cli("export", "tests.factories:conv_bn", "-o", str(tmp_path / "o.onnx"), "--input-shape", "1x5x32x32")
    assert r.returncode == 2 and "does not accept input shape 1x5x32x32" in r.stderr
    _no_artifacts(tmp_path)


def test_factory_that_raises(tmp_path: Path) -> None:
    r = run_cli("export", "tests.factories:raises", "-o", str(tmp_path / "o.onnx"))
    assert r.returncode == 2 and "tests.factories:raises" in r.stderr and "factory failed on purpose" in r.stderr
    _no_artifacts(tmp_path)


def test_factory_not_a_module_and_unknown_name(tmp_path: Path) -> None:
    r = run_cli("export", "tests.factories:not_a_module", "-o", str(tmp_path / "o.onnx"))
    assert r.returncode == 2 and "did not return a torch.nn.Module" in r.stderr
    r = run_cli("export", "mobilenet_v9", "-o", str(tmp_path / "o.onnx"))
    assert r.returncode == 2 and "unknown model 'mobilenet_v9'" in r.stderr
    _no_artifacts(tmp_path)


def test_output_directory_missing(tmp_path: Path) -> None:
    out = tmp_path / "missing" / "o.onnx"
    r = run_cli("export", "tests.factories:conv_bn", "-o", str(out), "--input-shape", "1x3x32x32")
    assert r.returncode == 2 and "does not exist" in r.stderr and "mkdir -p" in r.stderr
    assert not out.parent.exists()


def test_json_error_object(tmp_path: Path) -> None:
    r = run_cli("export", str(tmp_path / "nope.onnx"), "-o", str(tmp_path / "o.onnx"), "--json")
    assert r.returncode == 2
    err = json.loads(r.stdout)
    assert err["type"] == "ModelLoadError" and "does not exist" in err["error"]


def test_factory_model_with_all_bn_kinds(tmp_path: Path) -> None:
    out = tmp_path / "o.onnx"
    r = run_cli("export", "tests.factories:conv_bn", "-o", str(out), "--input-shape", "2x3x32x32", "--json")
    assert r.returncode == 0, r.stderr
    rep = json.loads(r.stdout)
    # 5 BN folded in torch, the grouped ConvTranspose's BN by the ONNX pass (or by torch.onnx's own peephole)
    assert rep["batchnorm_before"] == 6 and rep["batchnorm_after"] == 0
    assert rep["torch_folded_batchnorm"] == 5
    assert rep["max_abs_error"] <= 1e-4


def test_verification_failure_writes_nothing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A wrong fold must be refused (exit 5) and leave no output."""
    from vqz_edge.errors import VerificationError
    from vqz_edge.export import ExportOptions, export_model, onnx_passes

    original = onnx_passes._bn_params
    monkeypatch.setattr(onnx_passes, "_bn_params", lambda bn: (lambda p: None if p is None else (p[0] * 1.01, p[1]))(original(bn)))
    src = tmp_path / "src.onnx"
    onnx.save(image_model(), str(src))
    out = tmp_path / "o.onnx"
    with pytest.raises(VerificationError) as info:
        export_model(src, out, ExportOptions(input_shape=(1, 3, 32, 32)))
    assert "no output was written" in str(info.value)
    assert not out.exists()
    assert info.value.exit_code == 5
