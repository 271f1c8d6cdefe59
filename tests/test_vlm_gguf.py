"""vlm export --llm-format gguf: the LLM backbone as GGUF Q4_0 (embeddings, LM head F16; norms F32), every tensor
dequantized with the gguf package and checked against the FP16 weights; tampering and unsupported models refused.
llama.cpp itself (llama-cpp-python, built from source) is not needed here; where it is importable, the GGUF's
logits are compared with transformers running the same dequantized weights."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from vqz_edge.errors import InputError, VerificationError
from vqz_edge.vlm.audit import load_model
from vqz_edge.vlm.configs import load_vlm_config
from vqz_edge.vlm.export import VisionExportOptions, export_vision
from vqz_edge.vlm.gguf_export import (
    LINEAR_NAMES,
    gguf_tensors,
    permute_rope,
    verify_gguf,
    write_llm_gguf,
)
from vqz_edge.vlm.tiny import save_tiny_model

gguf = pytest.importorskip("gguf", reason="the gguf package writes and reads GGUF")


@pytest.fixture(scope="module")
def tiny_llava(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return save_tiny_model(tmp_path_factory.mktemp("gguf") / "llava", "llava")


def test_export_writes_a_verified_q4_0_gguf(tiny_llava: Path, tmp_path: Path) -> None:
    res = export_vision(tiny_llava, tmp_path / "out", VisionExportOptions(samples=1, llm_format="gguf"))
    g = res.gguf
    assert g is not None and g.path == tmp_path / "out" / "llm.q4_0.gguf" and g.path.is_file()
    kinds = {c.name: c.kind for c in g.checks}
    assert sum(k == "q4_0" for k in kinds.values()) == 2 * 7  # 2 layers x q k v o gate up down
    assert kinds["token_embd.weight"] == kinds["output.weight"] == "f16"  # kept out of 4 bit, as the recipe does
    assert kinds["blk.0.attn_norm.weight"] == "f32"
    assert all(c.ok for c in g.checks)
    q = [c for c in g.checks if c.kind == "q4_0"]
    assert 0.5 < max(c.max_err_of_bound for c in q) <= 1.0  # the bound is tight, not loose
    assert all(0.0 < c.rel_rms_err < 0.15 for c in q)
    assert all(c.max_abs_err == 0.0 for c in g.checks if c.kind != "q4_0")
    manifest = json.loads((tmp_path / "out" / "vlm_export.json").read_text())
    assert manifest["llm_gguf"]["sha256"] == g.sha256 and manifest["llm_gguf"]["type"] == "q4_0"
    assert (tmp_path / "out" / "vision.onnx").is_file()  # the vision side stays the FP16 ONNX / TensorRT route
    # the metadata llama.cpp reads
    reader = gguf.GGUFReader(str(g.path))
    fields = {f.name: f for f in reader.fields.values()}
    assert bytes(fields["general.architecture"].parts[-1]).decode() == "llama"
    assert int(fields["llama.block_count"].parts[-1][0]) == 2
    assert int(fields["llama.attention.head_count_kv"].parts[-1][0]) == 2
    assert bytes(fields["tokenizer.ggml.model"].parts[-1]).decode() == "gpt2"
    # Q4_0 bytes are what the planner counts: 18 bytes per 32 weights
    for t in reader.tensors:
        if t.tensor_type == gguf.GGMLQuantizationType.Q4_0:
            assert t.n_bytes == t.n_elements // 32 * 18


def test_verification_catches_a_tampered_tensor(tiny_llava: Path, tmp_path: Path) -> None:
    model, cfg = load_model(tiny_llava), load_vlm_config(tiny_llava)
    res = write_llm_gguf(model, cfg, tiny_llava, tmp_path / "llm.gguf")
    ref = {t.name: t for t in gguf_tensors(model, cfg)}
    assert all(c.ok for c in verify_gguf(res.path, ref))
    reader = gguf.GGUFReader(str(res.path))
    t = next(t for t in reader.tensors if t.name == "blk.1.ffn_down.weight")
    data = bytearray(res.path.read_bytes())
    off = int(t.data_offset) + 2  # the first block's 4-bit values (after its fp16 scale)
    data[off : off + 4] = bytes(b ^ 0xFF for b in data[off : off + 4])
    bad = tmp_path / "tampered.gguf"
    bad.write_bytes(bytes(data))
    checks = {c.name: c for c in verify_gguf(bad, ref)}
    assert not checks["blk.1.ffn_down.weight"].ok
    assert all(c.ok for n, c in checks.items() if n != "blk.1.ffn_down.weight")


def test_a_failed_verification_leaves_no_file(tiny_llava: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import vqz_edge.vlm.gguf_export as ge

    real = gguf.quants.quantize
    monkeypatch.setattr(ge.import_gguf().quants, "quantize", lambda a, t: real(a * 1.3, t))
    out = tmp_path / "llm.gguf"
    with pytest.raises(VerificationError, match="do not match their FP16 weights"):
        write_llm_gguf(load_model(tiny_llava), load_vlm_config(tiny_llava), tiny_llava, out)
    assert not out.exists() and not list(tmp_path.glob(".llm.gguf*"))


def test_rope_permutation_is_llama_cpps() -> None:
    """Rows of one head [a0 a1 a2 a3 | b0 b1 b2 b3] (rotate-half pairs a_i, b_i) become interleaved pairs."""
    w = np.arange(8, dtype=np.float32)[:, None]
    assert permute_rope(w, 1)[:, 0].tolist() == [0, 4, 1, 5, 2, 6, 3, 7]
    assert set(LINEAR_NAMES.values()) == {"attn_q", "attn_k", "attn_v", "attn_output", "ffn_gate", "ffn_up", "ffn_down"}


def test_unsupported_models_and_types_are_refused(tmp_path: Path, tiny_llava: Path) -> None:
    ml = save_tiny_model(tmp_path / "mllama", "mllama")
    with pytest.raises(InputError, match="not a llama.cpp architecture"):
        export_vision(ml, tmp_path / "o", VisionExportOptions(llm_format="gguf"))
    assert not (tmp_path / "o").exists()  # refused before any work
    with pytest.raises(InputError, match="no Q4_K quantizer"):
        export_vision(tiny_llava, tmp_path / "o2", VisionExportOptions(llm_format="gguf", gguf_type="q4_k"))


def test_llama_cpp_runs_the_gguf_like_transformers(tiny_llava: Path, tmp_path: Path) -> None:
    """Where llama-cpp-python is installed (it builds from source, not in CI): the same dequantized weights in
    transformers and the GGUF in llama.cpp give the same next tokens."""
    llama_cpp = pytest.importorskip("llama_cpp", reason="llama-cpp-python is not installed (pip builds it from source)")
    import torch

    model, cfg = load_model(tiny_llava, dtype="float32"), load_vlm_config(tiny_llava)
    res = write_llm_gguf(model, cfg, tiny_llava, tmp_path / "llm.gguf")
    reader = gguf.GGUFReader(str(res.path))
    found = {t.name: t for t in reader.tensors}
    lm = model.model.language_model
    with torch.no_grad():
        for i, layer in enumerate(lm.layers):
            for hf, gg in LINEAR_NAMES.items():
                t = found[f"blk.{i}.{gg}.weight"]
                mod = layer.get_submodule(hf)
                w = gguf.quants.dequantize(t.data, t.tensor_type).reshape(mod.weight.shape)
                n = {"attn_q": cfg.text.num_attention_heads, "attn_k": cfg.text.num_key_value_heads}.get(gg)
                if n:  # undo the RoPE permutation
                    w = w.reshape(n, w.shape[0] // n // 2, 2, -1).swapaxes(1, 2).reshape(mod.weight.shape)
                mod.weight.copy_(torch.from_numpy(np.ascontiguousarray(w)))
        for p in model.parameters():
            p.data = p.data.half().float()
        ids = [257, *range(60, 71)]
        ref = model(input_ids=torch.tensor([ids])).logits[0].numpy()
    llm = llama_cpp.Llama(str(res.path), n_ctx=64, logits_all=True, verbose=False, n_threads=1)
    llm.eval(ids)
    got = np.array(llm.scores[: len(ids)])
    assert got.argmax(-1).tolist() == ref.argmax(-1).tolist()
    cos = (got * ref).sum(-1) / np.linalg.norm(got, axis=-1) / np.linalg.norm(ref, axis=-1)
    assert cos.min() > 0.999


def test_vlm_run_gguf_on_llama_cpp_equals_transformers_on_the_same_weights(tiny_llava: Path, tmp_path: Path) -> None:
    """The Jetson-native route end to end: vision.onnx's visual tokens injected as embeddings into the Q4_0 GGUF on
    llama.cpp give the same greedy tokens as transformers running the same dequantized weights and visual tokens."""
    pytest.importorskip("llama_cpp", reason="llama-cpp-python is not installed (pip builds it from source)")
    pytest.importorskip("skimage")
    import skimage
    import torch

    from vqz_edge.data.images import load_image
    from vqz_edge.vlm.generate import greedy_generate, load_processor, prepare_prompt
    from vqz_edge.vlm.run import RunOptions, run_vlm

    out = tmp_path / "export"
    export_vision(tiny_llava, out, VisionExportOptions(samples=1, llm_format="gguf"))
    image = Path(skimage.__file__).parent / "data" / "chelsea.png"
    res = run_vlm(tiny_llava, image, "What animal is in the photo?", vision=out,
                  opts=RunOptions(max_new_tokens=6, llm_format="gguf"))
    assert res.audit is None and res.llm_format == "gguf q4_0 on llama.cpp" and len(res.generation.tokens) >= 1
    # transformers with the GGUF's dequantized weights and the same visual tokens
    model, cfg = load_model(tiny_llava, dtype="float32"), load_vlm_config(tiny_llava)
    found = {t.name: t for t in gguf.GGUFReader(str(out / "llm.q4_0.gguf")).tensors}
    with torch.no_grad():
        for i, layer in enumerate(model.model.language_model.layers):
            for hf, gg in LINEAR_NAMES.items():
                t, mod = found[f"blk.{i}.{gg}.weight"], layer.get_submodule(hf)
                w = gguf.quants.dequantize(t.data, t.tensor_type).reshape(mod.weight.shape)
                n = {"attn_q": cfg.text.num_attention_heads, "attn_k": cfg.text.num_key_value_heads}.get(gg)
                if n:
                    w = w.reshape(n, w.shape[0] // n // 2, 2, -1).swapaxes(1, 2).reshape(mod.weight.shape)
                mod.weight.copy_(torch.from_numpy(np.ascontiguousarray(w)))
        for p in model.parameters():
            p.data = p.data.half().float()
    prompt = prepare_prompt(load_processor(tiny_llava), cfg, load_image(image), "What animal is in the photo?")
    from vqz_edge.runtime import open_runner
    from vqz_edge.vlm.generate import VisionStage

    with open_runner(out / "vision.onnx") as runner:
        visual = VisionStage(runner, cfg)(prompt)
    ref = greedy_generate(model, cfg, prompt, visual, max_new_tokens=len(res.generation.tokens))
    assert list(res.generation.tokens) == list(ref.tokens)
