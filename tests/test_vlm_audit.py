"""The skip-path trap, for real: tiny random LLaVA / Mllama saved to disk and loaded with transformers 5 +
bitsandbytes NF4 on the CPU. The widely copied skip list quantizes the vision tower, the projector and the LM
head; the audit catches it. The list generated from the module tree keeps them in full precision and passes,
and the audited bytes equal the planner's arithmetic."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import run_cli
from vqz_edge.vlm.audit import audit_directory, audit_model, load_model, require_pass
from vqz_edge.vlm.configs import load_vlm_config
from vqz_edge.vlm.errors import AuditFailed
from vqz_edge.vlm.params import count_params
from vqz_edge.vlm.quantconfig import (
    NAIVE_SKIP_MODULES,
    generated_skip_modules,
    match_skip_entries,
    nf4_quantization_config,
    read_quantization_config,
    skip_modules_for_config,
    write_quantization_config,
)
from vqz_edge.vlm.tiny import build_tiny_model, save_tiny_model
from vqz_edge.vlm.weights import component_precisions, weight_bytes

pytest.importorskip("bitsandbytes", reason="bitsandbytes (and accelerate) are needed to load NF4 models on the CPU")
pytest.importorskip("accelerate", reason="transformers' bitsandbytes integration requires accelerate")


@pytest.fixture(scope="module")
def tiny_dirs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("tiny-vlm")
    return {fam: save_tiny_model(root / fam, fam) for fam in ("llava", "mllama")}


def _classes(report: Any, component: str) -> set[str]:
    return {r.cls for r in report.component(component).layers}


def test_naive_skip_list_quantizes_the_vision_side_and_the_audit_catches_it(tiny_dirs: dict[str, Path]) -> None:
    naive = list(NAIVE_SKIP_MODULES)
    model = load_model(tiny_dirs["llava"], nf4_quantization_config(naive))
    report = audit_model(model, naive, name="tiny-llava")
    # what really happened in transformers 5: every Linear of the vision tower and projector is Linear4bit
    assert _classes(report, "vision_tower") == {"Linear4bit"} and len(report.component("vision_tower").layers) == 12
    assert _classes(report, "connector") == {"Linear4bit"}
    assert _classes(report, "lm_head") == {"Linear4bit"}  # a user list replaces transformers' default lm_head skip
    assert not report.ok
    text = "\n".join(report.failures)
    assert "12 of 12 vision_tower Linear layers are stored below FP16" in text
    assert "model.multi_modal_projector.linear_1" in text
    assert "the LM head was quantized: lm_head" in text
    assert "'vision_tower' matches only model.vision_tower and no Linear layer" in text
    with pytest.raises(AuditFailed, match="vision_tower"):
        require_pass(report)


def test_generated_skip_list_passes(tiny_dirs: dict[str, Path]) -> None:
    cfg = load_vlm_config(tiny_dirs["llava"])
    generated = skip_modules_for_config(cfg)  # from the config alone, on the meta device
    assert generated == generated_skip_modules(build_tiny_model("llava"))  # same as from a real module tree
    assert generated[0] == "model.vision_tower.encoder.layers.0.self_attn.k_proj" and generated[-1] == "lm_head"
    assert len(generated) == 12 + 2 + 1
    model = load_model(tiny_dirs["llava"], nf4_quantization_config(generated))
    report = audit_model(model, generated, name="tiny-llava")
    assert report.ok, report.failures
    assert _classes(report, "vision_tower") == {"Linear"} and _classes(report, "connector") == {"Linear"}
    assert _classes(report, "lm_head") == {"Linear"}
    assert _classes(report, "llm_backbone") == {"Linear4bit"} and len(report.component("llm_backbone").layers) == 14
    assert all(m.problem is None for m in report.skip_entries or ())


def test_audited_bytes_equal_the_planner_arithmetic(tiny_dirs: dict[str, Path]) -> None:
    """Loaded in float16 with the generated config: the bytes bitsandbytes actually holds per component (packed
    4-bit weights + uint8 absmax + fp32 second-level absmax and offset) equal memory.weight_bytes exactly."""
    for fam, d in tiny_dirs.items():
        cfg = load_vlm_config(d)
        model = load_model(d, nf4_quantization_config(skip_modules_for_config(cfg)), dtype="float16")
        report = audit_model(model, None, name=fam)
        planned = weight_bytes(count_params(cfg), component_precisions("nf4", "fp16"))
        for comp in report.components:
            assert comp.param_bytes == planned[comp.name].bytes, (fam, comp.name)
            assert comp.params == planned[comp.name].params, (fam, comp.name)


def test_mllama_trap_and_fix(tiny_dirs: dict[str, Path]) -> None:
    naive = list(NAIVE_SKIP_MODULES)
    report = audit_model(load_model(tiny_dirs["mllama"], nf4_quantization_config(naive)), naive, name="tiny-mllama")
    assert not report.ok
    assert _classes(report, "vision_tower") == {"Linear4bit"}  # Mllama's tower is model.vision_model
    assert any("'vision_tower' matches no module" in f for f in report.failures)
    generated = skip_modules_for_config(load_vlm_config(tiny_dirs["mllama"]))
    assert "model.multi_modal_projector" in generated and "lm_head" in generated
    fixed = audit_model(load_model(tiny_dirs["mllama"], nf4_quantization_config(generated)), generated)
    assert fixed.ok, fixed.failures
    assert _classes(fixed, "llm_backbone") == {"Linear4bit"}  # cross-attention layers included
    assert any(".cross_attn." in r.name for r in fixed.component("llm_backbone").layers)


def test_skip_matching_uses_transformers_rule() -> None:
    model = build_tiny_model("llava")
    m = {x.entry: x for x in match_skip_entries(model, ["vision_tower", "model.vision_tower", "lm_head", "nothing"])}
    assert m["vision_tower"].modules == ("model.vision_tower",) and m["vision_tower"].linears == ()
    assert len(m["model.vision_tower"].linears) == 12  # a full path prefix reaches every Linear below it
    assert m["lm_head"].linears == ("lm_head",)
    assert m["nothing"].problem == "skip entry 'nothing' matches no module"


def test_quantization_config_file_round_trip(tmp_path: Path) -> None:
    from transformers import BitsAndBytesConfig

    qc = nf4_quantization_config(["model.vision_tower.encoder.layers.0.mlp.fc1", "lm_head"])
    path = write_quantization_config(tmp_path / "q.json", qc)
    again = read_quantization_config(path)
    bnb = BitsAndBytesConfig.from_dict(again)
    assert bnb.load_in_4bit and bnb.bnb_4bit_quant_type == "nf4" and bnb.bnb_4bit_use_double_quant
    assert bnb.llm_int8_skip_modules == qc["llm_int8_skip_modules"]
    (tmp_path / "bad.json").write_text(json.dumps({"load_in_4bit": True, "llm_int8_skip_modules": "lm_head"}))
    with pytest.raises(Exception, match="must be a list of strings"):
        read_quantization_config(tmp_path / "bad.json")


def test_cli_audit_fails_on_the_naive_list_and_names_the_modules(tiny_dirs: dict[str, Path], tmp_path: Path) -> None:
    naive = write_quantization_config(tmp_path / "naive.json", nf4_quantization_config(list(NAIVE_SKIP_MODULES)))
    r = run_cli("vlm", "audit", str(tiny_dirs["llava"]), "--quantization-config", str(naive), "--json")
    assert r.returncode == 5, r.stderr
    doc = json.loads(r.stdout)
    assert doc["verdict"] == "FAIL" and doc["components"]["vision_tower"]["quantized"] == 12
    assert any("model.vision_tower.encoder.layers.0" in f for f in doc["failures"])
    # the same directory audited unquantized passes (nothing below FP16, no skip list to check)
    assert audit_directory(tiny_dirs["llava"]).ok
