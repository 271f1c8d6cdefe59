"""Precision policy: rule resolution and conflicts, unmatched rules, the VLM-encoder 4-bit refusal, presets on a
real exported (tiny, random-initialised) transformers ViT."""

from __future__ import annotations

from pathlib import Path

import onnx
import pytest

from tests.conftest import run_cli
from vqz_edge.errors import SpecError
from vqz_edge.policy import resolve, resolve_plan, resolve_spec
from vqz_edge.policy.resolve import scope_of
from vqz_edge.spec import PrecisionRule, load_spec


def _res(model: onnx.ModelProto, rules: list[PrecisionRule], preset: str = "none"):  # type: ignore[no-untyped-def]
    return resolve_plan(model, model_name="m", onnx_sha256="x", rules=rules, preset=preset)


@pytest.fixture(scope="module")
def residual() -> onnx.ModelProto:
    from tests.test_calibrate import residual_model

    return residual_model()


def test_later_rules_override_and_record_their_label(residual: onnx.ModelProto) -> None:
    rules = [
        PrecisionRule(precision="fp16", op_type="Conv", reason="all convs high"),
        PrecisionRule(precision="int8", node="/c2/Conv", reason="but c2 is robust"),
        PrecisionRule(precision="fp32", regex=r"^/c\d/", reason="finally: c1 and c2 FP32"),
        PrecisionRule(precision="int8", match="c1*"),  # glob on the scope 'c1': the last word on c1
    ]
    plan = _res(residual, rules).plan
    by = {layer.name: layer for layer in plan.layers}
    assert by["/c1/Conv"].precision == "int8" and by["/c1/Conv"].rule == "rules[3] match='c1*'"
    assert by["/c2/Conv"].precision == "fp32"
    assert by["/c2/Conv"].rule == r"rules[2] regex='^/c\\d/' (finally: c1 and c2 FP32)"
    # op_type rule reached no other Conv-named layer; ConvTranspose is not 'Conv'
    assert by["/up/ConvTranspose"].precision == "int8" and by["/up/ConvTranspose"].rule == "default"
    assert by["/fc/Gemm"].rule == "default"


def test_int8_rule_cannot_quantize_a_layer_without_int8_kernel(residual: onnx.ModelProto) -> None:
    plan = _res(residual, [PrecisionRule(precision="int8", op_type="Relu")]).plan
    relu = next(layer for layer in plan.layers if layer.op_type == "Relu")
    assert relu.precision == "fp16" and not relu.quantizable, "an INT8 rule on Relu must not make it INT8"


def test_unmatched_rules_are_reported(residual: onnx.ModelProto) -> None:
    rules = [
        PrecisionRule(precision="fp16", match="features.1.*"),  # a MobileNet scope: not in this model
        PrecisionRule(precision="fp16", node="/c1/Conv"),
        PrecisionRule(precision="fp32", op_type="LayerNormalization"),
    ]
    res = _res(residual, rules)
    assert res.unmatched_rules == ["rules[0] match='features.1.*'", "rules[2] op_type='LayerNormalization'"]


def test_bad_regex_names_the_rule(residual: onnx.ModelProto) -> None:
    with pytest.raises(SpecError, match=r"precision.rules\[1\].regex '\(' is not a valid regular expression"):
        _res(residual, [PrecisionRule(precision="fp16", op_type="Conv"), PrecisionRule(precision="fp16", regex="(")])


def test_scope_glob_covers_the_module_and_below(mobilenet_onnx: Path) -> None:
    model = onnx.load(str(mobilenet_onnx))
    assert scope_of("/features/features.1/conv/conv.0/conv.0.0/Conv") == "features.1.conv.0.0"
    plan = _res(model, [PrecisionRule(precision="fp16", match="features.1.*")]).plan
    high = sorted(layer.name for layer in plan.layers if layer.quantizable and layer.precision == "fp16")
    assert high == ["/features/features.1/conv/conv.0/conv.0.0/Conv", "/features/features.1/conv/conv.1/Conv"]
    # the cnn preset pins the classifier FP32; a later user rule can still move it
    res = _res(model, [PrecisionRule(precision="int8", match="classifier*")], preset="cnn")
    head = next(layer for layer in res.plan.layers if layer.op_type == "Gemm")
    assert head.precision == "int8" and head.rule == "rules[0] match='classifier*'"
    assert not any(layer.op_type == "BatchNormalization" for layer in res.plan.layers), "BN is folded at export"


@pytest.mark.parametrize("precision", ["int4", "nf4"])
def test_vlm_vision_encoder_refuses_4bit(residual: onnx.ModelProto, precision: str) -> None:
    with pytest.raises(SpecError) as info:
        _res(residual, [PrecisionRule(precision=precision, match="c2*")], preset="vlm-vision")
    msg = str(info.value)
    assert f"asks for {precision} on node '/c2/Conv'" in msg and "4-bit is for LLM weights only" in msg
    assert "no lower than INT8" in msg


def test_vlm_vision_preset_is_fp16_and_rules_can_still_lift(residual: onnx.ModelProto) -> None:
    plan = _res(residual, [PrecisionRule(precision="int8", node="/c1/Conv", reason="fidelity report X")],
                preset="vlm-vision").plan
    q = {layer.name: layer for layer in plan.layers if layer.quantizable}
    assert q["/c1/Conv"].precision == "int8"
    assert q["/c2/Conv"].precision == "fp16" and "vlm-vision" in q["/c2/Conv"].rule
    assert q["/fc/Gemm"].precision == "fp32" and "final head" in q["/fc/Gemm"].rule


def test_plan_cli_refuses_4bit_with_exit_2(tmp_path: Path, residual: onnx.ModelProto) -> None:
    onnx.save(residual, str(tmp_path / "m.onnx"))
    spec = tmp_path / "spec.toml"
    spec.write_text(
        'version = 1\n[model]\nname = "enc"\nsource = "m.onnx"\n[[inputs]]\nname = "input"\nshape = [1, 3, 16, 16]\n'
        '[precision]\npreset = "vlm-vision"\n[[precision.rules]]\nmatch = "c1*"\nprecision = "int4"\n'
    )
    load_spec(spec)  # the spec itself is valid: the refusal comes from resolving it against the vision graph
    r = run_cli("plan", str(spec), "-o", str(tmp_path / "plan.json"))
    assert r.returncode == 2, r.stderr
    assert "4-bit is for LLM weights only" in r.stderr
    assert not (tmp_path / "plan.json").exists()


# ---- presets on a real exported transformers ViT ---------------------------------------------------------------


@pytest.fixture(scope="module")
def tiny_vit_onnx(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from vqz_edge.export import ExportOptions, export_model

    out = tmp_path_factory.mktemp("vit") / "vit.onnx"
    export_model("vqz_edge.export.hf:tiny_vit", out, ExportOptions(verify_samples=2))
    return out


def test_vit_preset_on_exported_vit(tiny_vit_onnx: Path) -> None:
    model = onnx.load(str(tiny_vit_onnx))
    res = _res(model, [], preset="vit")
    by = {layer.name: layer for layer in res.plan.layers}
    for layer in range(2):
        p = f"/vit/layers.{layer}"
        assert by[f"{p}/attention/Softmax"].precision == "fp32"
        assert by[f"{p}/layernorm_before/LayerNormalization"].precision == "fp32"
        assert by[f"{p}/attention/q_proj/MatMul"].precision == "fp16"
        assert "Q/K projection" in by[f"{p}/attention/q_proj/MatMul"].rule
        assert by[f"{p}/attention/k_proj/MatMul"].precision == "fp16"
        assert by[f"{p}/attention/MatMul"].precision == "fp16", "Q.K^T feeds the softmax"
        assert by[f"{p}/attention/MatMul_1"].precision == "fp16", "attn.V consumes the softmax output"
        assert by[f"{p}/mlp/fc2/MatMul"].precision == "fp16", "fc2 consumes the GELU output"
        # pre-LN ViT: both residual Adds carry the residual stream into the next LayerNorm; the placement rules
        # already keep it out of INT8 (no Conv branch), so the preset has nothing to pin there
        for name in ("Add", "Add_1"):
            layer = by[f"{p}/{name}"]
            assert layer.precision == "fp16" and not layer.quantizable and "placement float_add" in layer.rule
        # the rest of the block is INT8: V projection, output projection, FFN up-projection
        for name in ("attention/v_proj/MatMul", "attention/o_proj/MatMul", "mlp/fc1/MatMul"):
            assert by[f"{p}/{name}"].precision == "int8", name
    assert by["/classifier/Gemm"].precision == "fp32" and "final head" in by["/classifier/Gemm"].rule
    assert by["/vit/embeddings/patch_embeddings/projection/Conv"].precision == "int8"
    # a user rule after the preset wins
    res2 = _res(model, [PrecisionRule(precision="int8", match="vit.layers.1.attention.q_proj*")], preset="vit")
    q = next(x for x in res2.plan.layers if x.name == "/vit/layers.1/attention/q_proj/MatMul")
    assert q.precision == "int8" and q.rule.startswith("rules[0]")


def test_resolve_without_preset_keeps_everything_int8(tiny_vit_onnx: Path) -> None:
    model = onnx.load(str(tiny_vit_onnx))
    plan = resolve_plan(model, model_name="v", onnx_sha256="x").plan
    assert {layer.precision for layer in plan.layers if layer.quantizable} == {"int8"}
    softmax = [layer for layer in plan.layers if layer.op_type == "Softmax"]
    assert len(softmax) == 2 and all(not s.quantizable for s in softmax)


def test_the_old_names_warn_and_give_the_same_plan(residual: onnx.ModelProto) -> None:
    rules = [PrecisionRule(precision="fp16", op_type="Add")]
    with pytest.warns(DeprecationWarning, match="use resolve_plan"):
        old = resolve_spec(residual, model_name="m", onnx_sha256="x", rules=rules)  # its default preset: cnn
    assert old == resolve_plan(residual, rules, model_name="m", onnx_sha256="x", preset="cnn")
    with pytest.warns(DeprecationWarning, match="use resolve_plan"):
        old = resolve(residual, rules, model_name="m", onnx_sha256="x")
    assert old == resolve_plan(residual, rules, model_name="m", onnx_sha256="x")
    assert old != resolve_plan(residual, rules, model_name="m", onnx_sha256="x", preset="cnn")  # the head: FP32
