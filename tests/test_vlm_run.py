"""vlm run / vlm compare on tiny random LLaVA and Mllama (pipeline correctness, not quality): a real scikit-image
photo, the exported vision ONNX on ONNX Runtime, the LLM backbone in bitsandbytes NF4 on the CPU.

The decisive check: the tokens ``vlm run`` generates (visual tokens from the ONNX runner injected into the 4-bit
backbone, our own greedy loop) equal transformers' own ``generate`` on the same 4-bit model fed the pixels."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from tests.conftest import run_cli
from vqz_edge.cli import main
from vqz_edge.data.images import load_image
from vqz_edge.errors import InputError
from vqz_edge.vlm.audit import load_model
from vqz_edge.vlm.compare import compare_vlm
from vqz_edge.vlm.configs import load_vlm_config
from vqz_edge.vlm.errors import AuditFailed, VlmConfigError
from vqz_edge.vlm.export import export_vision, token_cosines
from vqz_edge.vlm.generate import load_processor, prepare_prompt, score_tokens, torch_vision_outputs
from vqz_edge.vlm.quantconfig import NAIVE_SKIP_MODULES, nf4_quantization_config, write_quantization_config
from vqz_edge.vlm.run import RunOptions, for_device, resolve_quant_config, run_vlm
from vqz_edge.vlm.tiny import save_tiny_model

pytest.importorskip("bitsandbytes", reason="bitsandbytes (and accelerate) are needed to load NF4 models on the CPU")
pytest.importorskip("accelerate", reason="transformers' bitsandbytes integration requires accelerate")
skimage = pytest.importorskip("skimage", reason="the real photos ship inside scikit-image")

PROMPT = "What animal is in the photo?"
N_TOKENS = 6


def photo(name: str = "chelsea") -> Path:
    return Path(skimage.__file__).parent / "data" / f"{name}.png"


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> dict[str, tuple[Path, Path]]:
    """family -> (model dir with processor, its vlm export directory)."""
    root = tmp_path_factory.mktemp("tiny-run")
    out = {}
    for fam in ("llava", "mllama"):
        d = save_tiny_model(root / fam, fam)
        export_vision(d, root / f"{fam}-export")
        out[fam] = (d, root / f"{fam}-export")
    return out


def _reference_generate(model_dir: Path, text_prompt: str, qc: dict[str, Any]) -> tuple[list[int], Any]:
    """transformers' own generate on the same NF4 model (its torch vision tower fed the pixels)."""
    cfg = load_vlm_config(model_dir)
    processor = load_processor(model_dir)
    p = prepare_prompt(processor, cfg, load_image(photo()), text_prompt)
    model = load_model(model_dir, qc, dtype="float32")
    out = model.generate(**p.torch_inputs, max_new_tokens=N_TOKENS, do_sample=False, min_new_tokens=N_TOKENS)
    return out[0, p.length:].tolist(), (model, cfg, p)


@pytest.mark.parametrize("family", ["llava", "mllama"])
def test_run_equals_transformers_generate_on_the_same_4bit_model(tiny: dict[str, tuple[Path, Path]], family: str) -> None:
    model_dir, export_dir = tiny[family]
    res = run_vlm(model_dir, photo(), PROMPT, vision=export_dir, opts=RunOptions(max_new_tokens=N_TOKENS))
    cfg = load_vlm_config(model_dir)
    qc, _, _ = for_device(resolve_quant_config(cfg, None, export_dir).config, "cpu")
    ref, (model, cfg, p) = _reference_generate(model_dir, PROMPT, qc)
    if res.generation.stopped == "eos":  # generate was told to go on: compare up to our EOS
        ref = ref[: len(res.generation.tokens)]
    assert list(res.generation.tokens) == ref
    # what ran: the ONNX runner for the vision side, NF4 for the LLM, the vision side and LM head not quantized
    assert res.vision_backend == "onnxruntime" and "config hash checked" in res.vision
    assert res.llm_4bit_layers == (14 if family == "llava" else 28) and res.audit.ok
    assert res.device == "cpu" and res.compute_dtype == "float32"
    assert res.generation.tokens_per_second > 0 and res.peak_rss_bytes > 100 * 2**20
    assert res.vision_modules_dropped_bytes == res.llm_weight_bytes["vision_tower"] + res.llm_weight_bytes["connector"]
    # the runner's visual tokens are transformers' own (cosine per token)
    _, torch_tokens = torch_vision_outputs(model, cfg, p)
    assert list(torch_tokens.shape) == res.visual_tokens
    assert res.prompt_tokens == p.length and res.image_positions == (16 if family == "llava" else 1)


def test_run_refuses_the_naive_skip_list(tiny: dict[str, tuple[Path, Path]], tmp_path: Path) -> None:
    model_dir, export_dir = tiny["llava"]
    naive = write_quantization_config(tmp_path / "naive.json", nf4_quantization_config(list(NAIVE_SKIP_MODULES)))
    with pytest.raises(AuditFailed, match="12 of 12 vision_tower Linear layers"):
        run_vlm(model_dir, photo(), PROMPT, vision=export_dir, quantization_config=naive,
                opts=RunOptions(max_new_tokens=2))


def test_run_refuses_a_vision_export_of_another_model(tiny: dict[str, tuple[Path, Path]], tmp_path: Path) -> None:
    other = save_tiny_model(tmp_path / "other", "llava", seed=1)
    (other / "config.json").write_text((other / "config.json").read_text().replace("\n", " \n", 1))
    with pytest.raises(InputError, match="was exported from another model"):
        run_vlm(other, photo(), PROMPT, vision=tiny["llava"][1], opts=RunOptions(max_new_tokens=2))


def test_run_refuses_llava_next_with_the_reason(tmp_path: Path) -> None:
    d = save_tiny_model(tmp_path / "next", "llava_next")
    with pytest.raises(VlmConfigError, match="anyres"):
        run_vlm(d, photo(), PROMPT, opts=RunOptions(max_new_tokens=2))


def test_cli_run_json_and_text(tiny: dict[str, tuple[Path, Path]], capsys: pytest.CaptureFixture[str]) -> None:
    """The CI case of the issue: a tiny LLaVA answers a prompt about a real photo through the exported vision ONNX
    and a 4-bit backbone. Mllama without --vision: exported first, said so."""
    model_dir, export_dir = tiny["llava"]
    r = run_cli("vlm", "run", str(model_dir), "--vision", str(export_dir), "--image", str(photo()), "--prompt", PROMPT,
                "--max-new-tokens", "4", "--json")
    assert r.returncode == 0, r.stderr
    doc = json.loads(r.stdout)
    assert doc["generation"]["generated"] >= 1 and doc["tokens_per_second"] >= 0
    assert doc["memory"]["peak_rss_bytes"] > 0 and doc["llm"]["format"] == "bitsandbytes nf4"
    assert doc["llm"]["audit"]["verdict"] == "PASS" and doc["vision"]["backend"] == "onnxruntime"
    # the text output, in-process (a fresh interpreter per CLI call costs ~10 s of imports on 2 shared cores)
    rc = main(["vlm", "run", str(tiny["mllama"][0]), "--image", str(photo("coffee")), "--prompt", PROMPT,
               "--max-new-tokens", "3", "-q"])
    out = capsys.readouterr().out
    assert rc == 0
    assert "tokens/s decoding" in out and "process peak RSS" in out and "answer: " in out
    assert "no --vision given: the vision tower + connector were exported and verified first" in out


def test_run_bad_image_is_refused_before_any_work(tiny: dict[str, tuple[Path, Path]]) -> None:
    model_dir, _ = tiny["llava"]
    with pytest.raises(InputError, match="cannot read image"):
        run_vlm(model_dir, model_dir / "config.json", PROMPT)
    with pytest.raises(InputError, match="--prompt is empty"):
        run_vlm(model_dir, photo(), "  ")


def test_score_tokens_is_the_generation_argmax(tiny: dict[str, tuple[Path, Path]]) -> None:
    """Teacher forcing over the greedy sequence picks the same tokens (the KL/top-1 of compare rest on this)."""
    model_dir, _ = tiny["mllama"]
    cfg = load_vlm_config(model_dir)
    p = prepare_prompt(load_processor(model_dir), cfg, load_image(photo()), PROMPT)
    model = load_model(model_dir, dtype="float32")
    _, visual = torch_vision_outputs(model, cfg, p)
    out = model.generate(**p.torch_inputs, max_new_tokens=5, min_new_tokens=5, do_sample=False)
    tokens = out[0, p.length:].tolist()
    logp = score_tokens(model, cfg, p, visual, tokens)
    assert logp.shape == (5, cfg.text.vocab_size)
    assert np.argmax(logp, axis=-1).tolist() == tokens
    assert np.allclose(np.exp(logp).sum(-1), 1.0)


@pytest.mark.parametrize("family", ["llava", "mllama"])
def test_compare_three_way(tiny: dict[str, tuple[Path, Path]], family: str) -> None:
    model_dir, export_dir = tiny[family]
    rep = compare_vlm(model_dir, [photo("chelsea"), photo("coffee")], [PROMPT], vision=export_dir,
                      opts=RunOptions(max_new_tokens=N_TOKENS))
    fp16, asym, all4 = (rep.variants[k].metrics() for k in ("fp16", "asymmetric", "all_4bit"))
    # the reference against itself: exact
    assert fp16["kl_mean"] == 0 and fp16["top1_agreement"] == 1 and fp16["text_exact"] == 2
    assert fp16["connector_cosine_min"] > 0.999999
    # the recipe: vision side unquantized (ONNX runner vs torch), LLM in NF4
    assert asym["vision_tower_cosine_min"] > 0.999999 and asym["connector_cosine_min"] > 0.9999
    assert asym["kl_mean"] > 0  # the NF4 backbone changes the distributions a little
    # all-4-bit: the vision side is quantized and its visual tokens move; the recipe's do not
    assert all4["connector_cosine_min"] < asym["connector_cosine_min"]
    assert all4["vision_tower_cosine_mean"] < asym["vision_tower_cosine_mean"]
    v = rep.variants
    assert v["asymmetric"].linear_4bit["vision_tower"] == 0 and v["asymmetric"].linear_4bit["llm_backbone"] > 0
    assert v["all_4bit"].linear_4bit["vision_tower"] > 0 and v["all_4bit"].linear_4bit["connector"] > 0
    assert v["all_4bit"].linear_4bit["lm_head"] == 0
    assert v["fp16"].total_weight_bytes > v["asymmetric"].total_weight_bytes > v["all_4bit"].total_weight_bytes
    assert v["asymmetric"].vision_runtime == "onnxruntime"
    text = rep.table()
    for name in ("fp16", "asymmetric", "all_4bit"):
        assert f"\n  {name} " in text
    assert len(rep.reference_texts) == 2


def test_cli_compare_json(tiny: dict[str, tuple[Path, Path]], capsys: pytest.CaptureFixture[str]) -> None:
    model_dir, export_dir = tiny["llava"]
    rc = main(["vlm", "compare", str(model_dir), "--vision", str(export_dir), "--image", str(photo()),
               "--prompt", PROMPT, "Describe it.", "--max-new-tokens", "3", "--json"])
    assert rc == 0
    doc = json.loads(capsys.readouterr().out)
    assert set(doc["variants"]) == {"fp16", "asymmetric", "all_4bit"}
    assert len(doc["variants"]["asymmetric"]["pairs"]) == 2
    pair = doc["variants"]["all_4bit"]["pairs"][0]
    assert 0 <= pair["top1_agreement"] <= 1 and pair["kl_mean"] >= 0


def test_visual_token_cosine_helper() -> None:
    a = np.random.default_rng(0).normal(size=(1, 4, 8))
    assert np.allclose(token_cosines(a, a), 1.0)
    assert np.allclose(token_cosines(a, -a), -1.0)
