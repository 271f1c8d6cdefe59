"""ONNX-side BatchNorm removal on graphs in other exporters' styles, checked with ONNX Runtime."""

from __future__ import annotations

import numpy as np
import onnx
import pytest

from tests.onnx_graphs import constant_node_bn_model, image_model
from vqz_edge import ort as ortu
from vqz_edge.export import onnx_passes
from vqz_edge.export.onnx_passes import remove_batchnorm
from vqz_edge.onnx_io import count_ops


def _run(model: onnx.ModelProto, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
    return ortu.run(ortu.session(model, optimize=False), feeds)


def _max_rel(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.max(np.abs(a - b)) / np.max(np.abs(a)))


@pytest.mark.parametrize("opset", [11, 13, 17])
def test_folds_every_bn_kind(opset: int) -> None:
    model = image_model(opset=opset)
    assert count_ops(model, "BatchNormalization") == 8
    new, report = remove_batchnorm(model)
    onnx.checker.check_model(new)
    assert count_ops(new, "BatchNormalization") == 0
    assert report.folded == {"Conv": 2, "ConvTranspose": 2, "Gemm": 2, "MatMul": 1}, report.to_dict()
    assert report.affine == 1 and report.left == []
    # dynamic dims survive; H and W differ from anything seen at build time
    x = np.random.default_rng(5).standard_normal((3, 3, 20, 28)).astype(np.float32)
    ref, got = _run(model, {"input": x})[0], _run(new, {"input": x})[0]
    assert _max_rel(ref, got) < 1e-5, f"max rel err {_max_rel(ref, got)}"


def test_fold_is_checked_by_the_test(monkeypatch: pytest.MonkeyPatch) -> None:
    """A fold that forgets the running mean must be caught by the same comparison."""
    original = onnx_passes._bn_params

    def broken(bn):  # type: ignore[no-untyped-def]
        params = original(bn)
        return None if params is None else (params[0], params[1] * 0.0)

    monkeypatch.setattr(onnx_passes, "_bn_params", broken)
    model = image_model()
    new, _ = remove_batchnorm(model)
    x = np.random.default_rng(5).standard_normal((2, 3, 16, 16)).astype(np.float32)
    assert _max_rel(_run(model, {"input": x})[0], _run(new, {"input": x})[0]) > 1e-3


def test_constant_node_params_and_rank3() -> None:
    model = constant_node_bn_model()
    new, report = remove_batchnorm(model)
    assert count_ops(new, "BatchNormalization") == 0 and report.affine == 1
    x = np.random.default_rng(1).standard_normal((2, 4, 16)).astype(np.float32)
    np.testing.assert_allclose(_run(new, {"x": x})[0], _run(model, {"x": x})[0], rtol=1e-5, atol=1e-5)


def test_unnamed_nodes_get_stable_names() -> None:
    a, _ = remove_batchnorm(image_model(unnamed=True))
    b, _ = remove_batchnorm(image_model(unnamed=True))
    names = [n.name for n in a.graph.node]
    assert all(names) and len(set(names)) == len(names)
    assert names == [n.name for n in b.graph.node]
    assert a.SerializeToString() == b.SerializeToString(), "same input must give byte-identical output"


def test_output_tensor_names_are_kept() -> None:
    model = image_model()
    new, _ = remove_batchnorm(model)
    assert [o.name for o in new.graph.output] == ["logits"]
    assert [i.name for i in new.graph.input] == ["input"]


def test_training_mode_bn_is_reported_not_silently_dropped() -> None:
    model = constant_node_bn_model()
    model.opset_import[0].version = 14
    bn = next(n for n in model.graph.node if n.op_type == "BatchNormalization")
    bn.attribute.append(onnx.helper.make_attribute("training_mode", 1))
    new, report = remove_batchnorm(model, constant_folding=False)
    assert count_ops(new, "BatchNormalization") == 1
    assert report.left and "training_mode" in report.left[0]
