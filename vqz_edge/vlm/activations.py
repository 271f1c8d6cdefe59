"""Transient memory of a VLM: KV cache, the vision encoder's and the LLM prefill's activation peaks, dequant
buffers.

KV cache: ``2 x layers x kv_heads x head_dim x tokens x batch x 2 bytes`` (FP16; GQA aware: kv_heads, not
heads). For Mllama the self-attention layers cache the text tokens and the cross-attention layers cache K/V
of the vision tokens (``images x max_num_tiles x 1601`` for Llama 3.2 Vision), whatever the context.

Activation peaks are estimates of the largest transient of one layer (layers run one after another), see
:func:`vision_activation_bytes` and :func:`llm_prefill_bytes`; vision encoder and LLM prefill do not run at
the same time, so the larger of the two is budgeted.
"""

from __future__ import annotations

from collections.abc import Mapping

from .configs import VlmConfig
from .params import ParamCount
from .tokens import VisualTokens, visual_tokens

# ------------------------------------------------------------------------------------------ activations


def kv_cache_bytes(cfg: VlmConfig, tokens: int, batch: int, *, images: int = 1, kv_bytes: int = 2) -> tuple[int, int]:
    """(self-attention KV, cross-attention KV) in bytes."""
    t = cfg.text
    per_token_layer = 2 * t.num_key_value_heads * t.head_dim * kv_bytes
    self_kv = t.self_attention_layers * per_token_layer * tokens * batch
    cross = 0
    if t.cross_attention_layers:
        cross = len(t.cross_attention_layers) * per_token_layer * visual_tokens(cfg).cross_tokens_per_image * images * batch
    return self_kv, cross


def vision_activation_bytes(cfg: VlmConfig, images: int, batch: int, attention: str, vt: VisualTokens) -> int:
    """Largest transient of one encoder layer plus what the encoder must keep, in FP16.

    Per layer: the residual stream and the layer input (2 x N x S x D), plus the larger of the attention
    block (q, k, v, output: 4 x N x S x D; with ``eager`` attention also the scores N x heads x S^2 in FP16 and
    their FP32 softmax) and the MLP (N x S x I). Mllama keeps the 5 intermediate hidden states it
    concatenates, and its output before and after the projector (N x tiles x 1601 x 7680, x hidden).
    """
    v = cfg.vision
    n = batch * images * vt.encoder_batch_per_image
    s, d, i, h = vt.encoder_seq, v.hidden_size, v.intermediate_size, v.num_attention_heads
    attn = 4 * n * s * d * 2
    if attention == "eager":
        attn += n * h * s * s * (2 + 4)
    peak = 2 * n * s * d * 2 + max(attn, n * s * i * 2)
    if cfg.family == "mllama":
        kept = len(v.intermediate_layers_indices) * n * s * d * 2
        out = n * vt.cross_tokens_per_image * (v.vision_output_dim + cfg.text.hidden_size) * 2
        peak += kept + out
    else:
        n_out = batch * images * vt.llm_tokens_per_image
        peak += n_out * cfg.text.hidden_size * 2  # projected visual tokens handed to the LLM
    return peak


def llm_prefill_bytes(cfg: VlmConfig, tokens: int, batch: int, attention: str, logits: str, images: int) -> int:
    """Largest transient of the LLM's prefill over ``tokens`` positions, in FP16 (FP32 where upcast).

    Residual stream + layer input (2 x B x T x H) plus the larger of: self-attention (q, output: B x T x
    heads x head_dim, and with ``eager`` the scores B x heads x T^2 in FP16 plus their FP32 softmax);
    Mllama's cross-attention (same, over T x vision tokens); the MLP (gate, up, act(gate)*up: 3 x B x T x I);
    the largest quantized Linear dequantized to FP16 is counted separately. Then the logits: the last
    position only (``last``: what ``generate`` computes since transformers 4.45) or every position
    (``all``: a plain forward call), in FP32.
    """
    t = cfg.text
    b, h, i = batch, t.hidden_size, t.intermediate_size
    qdim = t.num_attention_heads * t.head_dim
    base = 2 * b * tokens * h * 2
    attn = 2 * b * tokens * qdim * 2
    cross = 0
    if attention == "eager":
        attn += b * t.num_attention_heads * tokens * tokens * (2 + 4)
        if t.cross_attention_layers:
            nv = visual_tokens(cfg).cross_tokens_per_image * images
            cross = 2 * b * tokens * qdim * 2 + b * t.num_attention_heads * tokens * nv * (2 + 4)
    mlp = 3 * b * tokens * i * 2
    layer_peak = base + max(attn, cross, mlp)
    n_logits = tokens if logits == "all" else 1
    head_peak = b * tokens * h * 2 + b * n_logits * t.vocab_size * (4 + (2 if logits == "all" else 0))
    return max(layer_peak, head_peak)


def dequant_buffer_bytes(pc: ParamCount, precisions: Mapping[str, str]) -> int:
    """bitsandbytes dequantizes a 4-bit (or int8) weight to FP16 for a multi-token matmul: the largest one."""
    sizes = [g.in_features * g.out_features * 2 for g in pc.linears if precisions.get(g.component, "fp16") != "fp16"]
    return max(sizes, default=0)


