"""vlm export: the vision tower + connector of tiny LLaVA / LLaVA-NeXT / Mllama models as one ONNX, verified
against transformers' own code path on real photos; the FP16 plan; the generated NF4 config; failures write
nothing."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from tests.conftest import run_cli
from vqz_edge import ort as ortu
from vqz_edge.artifacts.plan import ResolvedPlan
from vqz_edge.data.images import Preprocessing, demo_crops
from vqz_edge.errors import VerificationError
from vqz_edge.fsutil import sha256_file
from vqz_edge.vlm.errors import VlmConfigError
from vqz_edge.vlm.export import CLIP_MEAN, CLIP_STD, VisionExportOptions, export_vision, token_cosines
from vqz_edge.vlm.quantconfig import read_quantization_config
from vqz_edge.vlm.tiny import build_tiny_model, save_tiny_model


@pytest.fixture(scope="module")
def tiny_dirs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("tiny-vlm-export")
    return {fam: save_tiny_model(root / fam, fam) for fam in ("llava", "llava_next", "mllama")}


def test_llava_vision_export_matches_transformers(tiny_dirs: dict[str, Path], tmp_path: Path) -> None:
    out = tmp_path / "out"
    res = export_vision(tiny_dirs["llava"], out, VisionExportOptions(samples=3))
    assert res.min_cosine >= 0.9999 and res.tokens_compared == 3 * 16
    assert {p.name for p in out.iterdir()} == {"vision.onnx", "plan.json", "quantization_config.json", "vlm_export.json"}
    # independent check on other photos: ONNX Runtime vs transformers' get_image_features, batch of 2 (dynamic)
    pre = Preprocessing(resize=56, crop=56, mean=CLIP_MEAN, std=CLIP_STD)
    x = demo_crops("calibration", 2, pre).astype(np.float32)
    model = build_tiny_model("llava")
    with torch.no_grad():
        feats = model.model.get_image_features(pixel_values=torch.from_numpy(x), vision_feature_layer=-2,
                                               vision_feature_select_strategy="default").pooler_output
    ref = torch.stack(list(feats)).numpy()
    got = ortu.run(ortu.session(out / "vision.onnx"), {"pixel_values": x})[0]
    assert got.shape == (2, 16, 64)  # 16 patches (CLS dropped) x text hidden 64
    assert token_cosines(ref, got).min() > 0.9999
    # every layer FP16 in the plan; the manifest's hash is the file's
    plan = ResolvedPlan.from_dict(json.loads((out / "plan.json").read_text()))
    assert plan.layers and {layer.precision for layer in plan.layers} == {"fp16"}
    assert any(layer.op_type == "MatMul" and layer.quantizable for layer in plan.layers)
    manifest = json.loads((out / "vlm_export.json").read_text())
    assert manifest["vision_onnx"]["sha256"] == sha256_file(out / "vision.onnx") == plan.onnx_sha256
    qc = read_quantization_config(out / "quantization_config.json")
    assert qc["bnb_4bit_quant_type"] == "nf4" and len(qc["llm_int8_skip_modules"]) == 15
    assert "model.multi_modal_projector.linear_2" in qc["llm_int8_skip_modules"]


def test_llava_next_tiles_and_mllama_export(tiny_dirs: dict[str, Path], tmp_path: Path) -> None:
    nxt = export_vision(tiny_dirs["llava_next"], tmp_path / "next", VisionExportOptions(samples=2))
    assert nxt.min_cosine >= 0.9999 and nxt.tokens_compared == 2 * 5 * 16  # 2x2 grid + base image, per tile
    ml = export_vision(tiny_dirs["mllama"], tmp_path / "mllama", VisionExportOptions(samples=2))
    assert ml.min_cosine >= 0.9999
    assert [i["name"] for i in ml.inputs] == ["pixel_values", "aspect_ratio_ids", "aspect_ratio_mask"]
    assert ml.outputs[0]["shape"] == [2, 5, 64]  # tiles x ((28/14)^2 + 1) x text hidden: cross_attention_states
    assert ml.batchnorm_after == 0 and ml.layernorm_nodes > 0
    qc = read_quantization_config(tmp_path / "mllama" / "quantization_config.json")
    assert qc["llm_int8_skip_modules"][-2:] == ["model.multi_modal_projector", "lm_head"]


def test_failed_verification_writes_nothing(tiny_dirs: dict[str, Path], tmp_path: Path,
                                            monkeypatch: pytest.MonkeyPatch) -> None:
    import vqz_edge.vlm.export as ex

    real_run = ex.ortu.run

    def corrupted(sess, feeds, outputs=None):  # type: ignore[no-untyped-def]
        y = real_run(sess, feeds, outputs)
        y[0][..., 0, :] = -y[0][..., 0, :]  # flip one visual token: cosine -1
        return y

    monkeypatch.setattr(ex.ortu, "run", corrupted)
    out = tmp_path / "out"
    with pytest.raises(VerificationError, match="min visual-token cosine"):
        export_vision(tiny_dirs["llava"], out, VisionExportOptions(samples=1))
    assert not out.exists() or not any(out.iterdir())


def test_export_refuses_a_model_that_is_not_a_vlm(tmp_path: Path) -> None:
    (tmp_path / "config.json").write_text(json.dumps({"architectures": ["LlamaForCausalLM"], "model_type": "llama"}))
    with pytest.raises(VlmConfigError, match="not a vision-language model"):
        export_vision(tmp_path, tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_cli_export_json(tiny_dirs: dict[str, Path], tmp_path: Path) -> None:
    r = run_cli("vlm", "export", str(tiny_dirs["llava"]), "-o", str(tmp_path / "o"), "--samples", "2", "--json")
    assert r.returncode == 0, r.stderr
    doc = json.loads(r.stdout)
    assert doc["min_cosine"] >= 0.9999 and doc["skip_modules"] == 15 and Path(doc["onnx"]).is_file()
    r = run_cli("vlm", "export", str(tmp_path), "-o", str(tmp_path / "x"))
    assert r.returncode == 2 and "no config.json" in r.stderr
