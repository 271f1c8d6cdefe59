"""The LLM backbone as GGUF for llama.cpp (the Jetson-native 4-bit route), verified tensor by tensor.

``vlm export --llm-format gguf`` writes ``llm.<type>.gguf`` beside ``vision.onnx``: the language model of a LLaVA
(Llama / Mistral text model, llama.cpp architecture ``llama``) with

- the decoder's Linear weights (q, k, v, o, gate, up, down) in **Q4_0** (blocks of 32 weights along a row: one
  fp16 scale + 32 4-bit values, 4.5 bits per weight), quantized with the ``gguf`` package's reference quantizer;
  q and k are permuted to llama.cpp's rotary layout exactly as llama.cpp's ``convert_hf_to_gguf.py`` does;
- the token embeddings and the LM head in **F16** and the RMSNorm weights in **F32** -- as the recipe keeps
  embeddings and LM head out of 4 bit;
- the hyper-parameters (context, heads, KV heads, RoPE base, RMS eps) and the tokenizer (``tokenizer.json`` of
  MODEL_DIR: byte-level BPE as ``gpt2``, byte-fallback BPE (SentencePiece-derived, e.g. Llama) as ``llama``).

The vision tower and connector are *not* in the GGUF: they stay the FP16 ``vision.onnx`` -> TensorRT engine, and
their visual tokens are the input embeddings llama.cpp takes for the image positions.

:func:`verify_gguf` reads the file back, dequantizes every tensor with the ``gguf`` package and compares it with
the FP16 weights it came from (after the same permutation): F16/F32 tensors must be equal; every Q4_0 block must
be within half a quantization step (``|w - w'| <= amax/16``, Q4_0's scale being ``amax/8``).

Gated on what llama.cpp runs and the ``gguf`` package can write: Mllama's cross-attention text model and
LLaVA-NeXT are refused with the reason; Q4_K (a K-quant) is sized by ``vlm plan --llm q4_k`` but the ``gguf``
package has no Q4_K quantizer (dequantization only), so it is not written here.
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import DependencyError, InputError, VerificationError
from ..fsutil import atomic_path, sha256_file
from ..log import get_logger
from .configs import VlmConfig

_log = get_logger(__name__)

GGUF_TYPES = ("q4_0",)
GGUF_ARCH = "llama"
#: Q4_0 rounds to the nearest of the 16 levels -8d..7d with d = amax/8 (signed so that the largest-magnitude value is
#: -8d, exact): at most d/2 = amax/16 off, except values beyond 7.5d of the opposite sign, clipped to 7d (up to d off).
#: Plus fp16 rounding of the scale.
Q4_0_BOUND_OF_AMAX = 1.0 / 16 * (1 + 2e-3)
Q4_0_CLIPPED_BOUND_OF_AMAX = 1.0 / 8 * (1 + 2e-3)


def import_gguf() -> Any:
    try:
        import gguf
    except ImportError as exc:
        raise DependencyError("the gguf package is not installed", hint="pip install gguf (vqz-edge[dev] has it)") from exc
    return gguf


def gguf_file_name(qtype: str) -> str:
    return f"llm.{qtype}.gguf"


def require_gguf_model(cfg: VlmConfig, qtype: str) -> None:
    if qtype not in GGUF_TYPES:
        raise InputError(
            f"--gguf-type {qtype!r}: vqz-edge writes {', '.join(GGUF_TYPES)}",
            hint="the gguf package quantizes Q4_0 but has no Q4_K quantizer; for Q4_K_M run llama.cpp's llama-quantize "
            "on the GGUF (vlm plan --llm q4_k sizes it)")
    if cfg.family != "llava" or cfg.text.model_type not in ("llama", "mistral"):
        raise InputError(
            f"{cfg.name}: --llm-format gguf writes LLaVA's Llama/Mistral text model (llama.cpp architecture 'llama'); "
            f"{cfg.family} with a {cfg.text.model_type} text model is not written",
            hint="Mllama's cross-attention layers are not a llama.cpp architecture; keep the bitsandbytes NF4 route")
    block = 32
    bad = [("hidden_size", cfg.text.hidden_size), ("intermediate_size", cfg.text.intermediate_size)]
    bad = [(k, v) for k, v in bad if v % block]
    if bad:
        raise InputError(f"{cfg.name}: Q4_0 needs rows that are multiples of {block}: " +
                         ", ".join(f"text_config.{k} = {v}" for k, v in bad))


def permute_rope(w: np.ndarray, n_head: int) -> np.ndarray:
    """HF's rotate-half q/k rows -> llama.cpp's interleaved RoPE layout (convert_hf_to_gguf.py's ``permute``)."""
    out: np.ndarray = w.reshape(n_head, 2, w.shape[0] // n_head // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)
    return out


@dataclass(frozen=True)
class GgufTensor:
    name: str  # GGUF name
    source: str  # state-dict key it came from
    kind: str  # "q4_0" | "f16" | "f32"
    array: np.ndarray  # float32 values it encodes (the reference for verification)


def _language_state(model: Any) -> dict[str, Any]:
    """The language model's tensors by their Llama-relative key (``layers.0.self_attn.q_proj.weight``, ...)."""
    sd = model.state_dict()
    out: dict[str, Any] = {}
    for k, v in sd.items():
        for prefix in ("model.language_model.", "language_model.model.", "language_model."):
            if k.startswith(prefix):
                out[k[len(prefix):]] = v
                break
        else:
            if k == "lm_head.weight":
                out["lm_head.weight"] = v
    return out


LINEAR_NAMES = {"self_attn.q_proj": "attn_q", "self_attn.k_proj": "attn_k", "self_attn.v_proj": "attn_v",
                "self_attn.o_proj": "attn_output", "mlp.gate_proj": "ffn_gate", "mlp.up_proj": "ffn_up",
                "mlp.down_proj": "ffn_down"}


def gguf_tensors(model: Any, cfg: VlmConfig) -> Iterator[GgufTensor]:
    """The tensors of the GGUF, in llama.cpp's order and layout, each with the FP16 values it encodes."""
    t = cfg.text
    state = _language_state(model)

    def fp16(key: str) -> np.ndarray:
        if key not in state:
            raise InputError(f"{cfg.name}: the language model has no tensor {key!r} (transformers layout changed?)")
        a: np.ndarray = state[key].detach().float().cpu().numpy()
        if not np.isfinite(a).all():
            raise InputError(f"{cfg.name}: tensor {key} has non-finite values")
        out: np.ndarray = a.astype(np.float16).astype(np.float32)  # the FP16 weights the recipe starts from
        return out

    yield GgufTensor("token_embd.weight", "embed_tokens.weight", "f16", fp16("embed_tokens.weight"))
    for i in range(t.num_hidden_layers):
        yield GgufTensor(f"blk.{i}.attn_norm.weight", f"layers.{i}.input_layernorm.weight", "f32",
                         fp16(f"layers.{i}.input_layernorm.weight"))
        for hf, gg in LINEAR_NAMES.items():
            key = f"layers.{i}.{hf}.weight"
            w = fp16(key)
            if gg == "attn_q":
                w = permute_rope(w, t.num_attention_heads)
            elif gg == "attn_k":
                w = permute_rope(w, t.num_key_value_heads)
            yield GgufTensor(f"blk.{i}.{gg}.weight", key, "q4_0", w)
        yield GgufTensor(f"blk.{i}.ffn_norm.weight", f"layers.{i}.post_attention_layernorm.weight", "f32",
                         fp16(f"layers.{i}.post_attention_layernorm.weight"))
    yield GgufTensor("output_norm.weight", "norm.weight", "f32", fp16("norm.weight"))
    head = "lm_head.weight" if "lm_head.weight" in state else "embed_tokens.weight"
    yield GgufTensor("output.weight", head, "f16", fp16(head))


def _vocab(gg: Any, writer: Any, model_dir: Path, cfg: VlmConfig) -> str:
    """Tokenizer metadata from MODEL_DIR/tokenizer.json (BPE); returns the tokenizer model name written."""
    path = model_dir / "tokenizer.json"
    if not path.is_file():
        raise InputError(f"{model_dir} has no tokenizer.json", hint="--llm-format gguf embeds the tokenizer for llama.cpp")
    doc = json.loads(path.read_text(encoding="utf-8"))
    model = doc.get("model") or {}
    if model.get("type") != "BPE":
        raise InputError(f"{path}: tokenizer model {model.get('type')!r} is not BPE; not written to GGUF")
    vocab: dict[str, int] = dict(model.get("vocab") or {})
    added = {a["content"]: (int(a["id"]), bool(a.get("special"))) for a in doc.get("added_tokens") or []}
    for tok, (i, _) in added.items():
        vocab[tok] = i
    n = cfg.text.vocab_size
    tokens = [f"[PAD{i}]" for i in range(n)]
    types = [gg.TokenType.UNUSED] * n
    for tok, i in vocab.items():
        if 0 <= i < n:
            tokens[i] = tok
            special = added.get(tok, (0, False))[1]
            if special:
                types[i] = gg.TokenType.CONTROL
            elif tok.startswith("<0x") and tok.endswith(">") and len(tok) == 6:
                types[i] = gg.TokenType.BYTE
            else:
                types[i] = gg.TokenType.NORMAL
    byte_level = "ByteLevel" in json.dumps(doc.get("pre_tokenizer") or {})
    kind = "gpt2" if byte_level else "llama"
    writer.add_tokenizer_model(kind)
    if kind == "gpt2":
        writer.add_tokenizer_pre("default")
    writer.add_token_list(tokens)
    writer.add_token_types(types)
    if kind == "llama":
        writer.add_token_scores([-float(i) for i in range(n)])
    merges = model.get("merges") or []
    if kind == "gpt2":
        writer.add_token_merges([m if isinstance(m, str) else " ".join(m) for m in merges])
    for key, setter in (("bos_token_id", writer.add_bos_token_id), ("eos_token_id", writer.add_eos_token_id),
                        ("pad_token_id", writer.add_pad_token_id)):
        value = cfg.raw.get("text_config", {}).get(key)
        if isinstance(value, int):
            setter(value)
    return kind


@dataclass(frozen=True)
class TensorCheck:
    name: str
    kind: str
    shape: tuple[int, ...]
    max_abs_err: float
    max_err_of_bound: float  # max over blocks of err / allowed (<= 1 passes)
    rel_rms_err: float

    @property
    def ok(self) -> bool:
        return self.max_err_of_bound <= 1.0

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "kind": self.kind, "shape": list(self.shape), "max_abs_err": self.max_abs_err,
                "max_err_of_bound": self.max_err_of_bound, "rel_rms_err": self.rel_rms_err, "ok": self.ok}


@dataclass
class GgufResult:
    path: Path
    qtype: str
    tokenizer: str
    bytes: int
    sha256: str
    checks: list[TensorCheck] = field(default_factory=list)
    quantized_params: int = 0
    fp_params: int = 0

    @property
    def worst(self) -> TensorCheck:
        return max(self.checks, key=lambda c: c.max_err_of_bound)

    def to_dict(self) -> dict[str, Any]:
        q = [c for c in self.checks if c.kind == self.qtype]
        return {"path": str(self.path), "type": self.qtype, "tokenizer": self.tokenizer, "bytes": self.bytes,
                "sha256": self.sha256, "tensors": len(self.checks), "quantized_tensors": len(q),
                "quantized_params": self.quantized_params, "fp_params": self.fp_params,
                "max_err_of_bound": self.worst.max_err_of_bound if self.checks else None,
                "max_rel_rms_err_quantized": max((c.rel_rms_err for c in q), default=0.0),
                "checks": [c.to_dict() for c in self.checks]}


def write_llm_gguf(model: Any, cfg: VlmConfig, model_dir: Path, out: Path, qtype: str = "q4_0") -> GgufResult:
    """Write the LLM backbone of ``model`` (loaded unquantized) to ``out`` and verify it (atomically: a file that
    fails verification is never left at ``out``)."""
    gg = import_gguf()
    require_gguf_model(cfg, qtype)
    t = cfg.text
    tensors = list(gguf_tensors(model, cfg))
    rope_base = float(cfg.raw.get("text_config", {}).get("rope_theta", 10000.0) or 10000.0)
    rms_eps = float(cfg.raw.get("text_config", {}).get("rms_norm_eps", 1e-6) or 1e-6)
    with atomic_path(out) as tmp:
        writer = gg.GGUFWriter(str(tmp), GGUF_ARCH)
        writer.add_name(cfg.name)
        writer.add_context_length(t.max_position_embeddings)
        writer.add_embedding_length(t.hidden_size)
        writer.add_block_count(t.num_hidden_layers)
        writer.add_feed_forward_length(t.intermediate_size)
        writer.add_rope_dimension_count(t.head_dim)
        writer.add_head_count(t.num_attention_heads)
        writer.add_head_count_kv(t.num_key_value_heads)
        writer.add_layer_norm_rms_eps(rms_eps)
        writer.add_rope_freq_base(rope_base)
        writer.add_vocab_size(t.vocab_size)
        writer.add_file_type(gg.LlamaFileType.MOSTLY_Q4_0)
        writer.add_quantization_version(gg.GGML_QUANT_VERSION)
        kind = _vocab(gg, writer, Path(model_dir), cfg)
        for ten in tensors:
            if ten.kind == "q4_0":
                data = gg.quants.quantize(ten.array, gg.GGMLQuantizationType.Q4_0)
                writer.add_tensor(ten.name, data, raw_dtype=gg.GGMLQuantizationType.Q4_0)
            elif ten.kind == "f16":
                writer.add_tensor(ten.name, ten.array.astype(np.float16))
            else:
                writer.add_tensor(ten.name, ten.array.astype(np.float32))
        writer.write_header_to_file()
        writer.write_kv_data_to_file()
        writer.write_tensors_to_file()
        writer.close()
        checks = verify_gguf(tmp, {x.name: x for x in tensors})
        bad = [c for c in checks if not c.ok]
        if bad:
            raise VerificationError(
                f"GGUF {out.name}: {len(bad)} tensor(s) do not match their FP16 weights after dequantization: "
                + ", ".join(f"{c.name} ({c.max_err_of_bound:.2f} x bound)" for c in bad[:4]) + "; nothing was written",
                hint="this is a writer bug; report it")
    res = GgufResult(out, qtype, kind, out.stat().st_size, sha256_file(out), checks,
                     sum(x.array.size for x in tensors if x.kind == qtype),
                     sum(x.array.size for x in tensors if x.kind != qtype))
    _log.info("gguf %s: %d tensors, worst %.3f x bound", out, len(checks), res.worst.max_err_of_bound)
    return res


def verify_gguf(path: Path, reference: Mapping[str, GgufTensor]) -> list[TensorCheck]:
    """Read ``path`` back, dequantize every tensor and compare it with ``reference`` (see the module docstring)."""
    gg = import_gguf()
    reader = gg.GGUFReader(str(path))
    found = {t.name: t for t in reader.tensors}
    missing = sorted(set(reference) - set(found))
    extra = sorted(set(found) - set(reference))
    if missing or extra:
        raise VerificationError(f"GGUF {path}: tensors missing {missing[:4]}, unexpected {extra[:4]}")
    checks = []
    for name, ref in reference.items():
        rt = found[name]
        values = gg.quants.dequantize(rt.data, rt.tensor_type).astype(np.float64).reshape(ref.array.shape)
        want = ref.array.astype(np.float64)
        err = np.abs(values - want)
        if ref.kind == "q4_0":
            blocks = want.reshape(-1, 32)
            amax = np.abs(blocks).max(axis=1, keepdims=True)
            clipped = np.abs(blocks) > amax * (7.5 / 8)
            allowed = np.where(clipped, Q4_0_CLIPPED_BOUND_OF_AMAX, Q4_0_BOUND_OF_AMAX) * amax + 1e-8
            of_bound = float((err.reshape(-1, 32) / allowed).max())
        else:
            of_bound = 0.0 if err.max() == 0 else 2.0  # F16/F32 hold the FP16 values exactly, or fail
        rms = float(np.sqrt(np.mean(err**2)) / max(np.sqrt(np.mean(want**2)), 1e-30))
        checks.append(TensorCheck(name, ref.kind, tuple(ref.array.shape), float(err.max()), of_bound, rms))
    return checks
