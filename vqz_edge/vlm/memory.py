"""The VLM memory planner: bytes per component and precision, KV cache, visual tokens, activation peaks,
and a verdict through the project's one memory budget model (:func:`vqz_edge.memory.check_budget`).

Byte model per precision (weights of Linear layers; everything that is not a Linear weight -- biases,
norms, embeddings, convolutions, positional tables -- stays FP16, as it does with bitsandbytes):

========  ====================================================================================================
fp16      2 bytes per weight
int8      bitsandbytes LLM.int8 (``Linear8bitLt``): 1 byte per weight + one fp32 scale per output row (SCB)
nf4       bitsandbytes NF4 (``Linear4bit``): 4 bits per weight (two per byte) + one absmax per 64-weight
          block. Without double quantization the absmax is fp32 (4 bytes / 64 weights = 0.5 bit per weight,
          4.5 bits in all). With double quantization (``bnb_4bit_use_double_quant``, what vqz-edge's config
          sets) the absmax values are themselves quantized to 8 bit in blocks of 256 with one fp32 scale per
          256 blocks, plus one fp32 offset per tensor: 8/64 + 32/(64*256) = 0.127 bit per weight (4.127 bits)
int4      W4A16 with group size 128 (AWQ / GPTQ / TensorRT-LLM INT4-AWQ layout): 4 bits per weight + per group
          of 128 input channels one fp16 scale and one 4-bit zero point per output channel (4.156 bits)
q4_0      GGUF Q4_0 (llama.cpp): blocks of 32 weights along a row, one fp16 scale + 16 bytes of 4-bit values
          = 18 bytes per 32 weights (4.5 bits)
q4_k      GGUF Q4_K (llama.cpp K-quant): super-blocks of 256 weights, fp16 scale and min + 12 bytes of 6-bit
          sub-block scales/mins + 128 bytes of 4-bit values = 144 bytes per 256 weights (4.5 bits)
========  ====================================================================================================

KV cache: ``2 x layers x kv_heads x head_dim x tokens x batch x 2 bytes`` (FP16; GQA aware: kv_heads, not
heads). For Mllama the self-attention layers cache the text tokens and the cross-attention layers cache K/V
of the vision tokens (``images x max_num_tiles x 1601`` for Llama 3.2 Vision), whatever the context.

Activation peaks are estimates of the largest transient of one layer (layers run one after another), see
:func:`vision_activation_bytes` and :func:`llm_prefill_bytes`; vision encoder and LLM prefill do not run at
the same time, so the larger of the two is budgeted.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from ..errors import InputError
from ..fsutil import sha256_file
from ..log import get_logger
from ..memory import MIB, BudgetReport, MemoryItem, check_budget, runtime_overhead
from ..targets import Target
from .configs import VlmConfig
from .errors import PrecisionRefused
from .params import COMPONENTS, LinearGroup, ParamCount, count_params

_log = get_logger(__name__)

PLAN_VERSION = 1
PRECISIONS = ("fp16", "int8", "nf4", "int4", "q4_0", "q4_k")
#: LLM weight formats that llama.cpp runs from a GGUF file (``vlm export --llm-format gguf``).
GGUF_PRECISIONS = ("q4_0", "q4_k")
#: Block size (weights along a row) and bytes per block of the GGUF formats.
GGUF_BLOCKS = {"q4_0": (32, 18), "q4_k": (256, 144)}
VISION_PRECISIONS = ("fp16", "int8")
#: Formats below INT8 that are refused for the vision side (with the reason), whatever the runtime.
BELOW_INT8 = ("nf4", "fp4", "int4", "int3", "int2", "w4a16", "awq", "gptq", "q4_0", "q4_k_m", "q4f16")
ATTENTION = ("sdpa", "eager")
LOGITS = ("last", "all")
NF4_BLOCK = 64
NF4_DQ_BLOCK = 256
INT4_GROUP = 128
#: PyTorch's CUDA kernels beyond the shared CUDA context, cuBLAS/cuBLASLt workspaces, bitsandbytes' kernels
#: and caching-allocator slack of the process that runs the LLM. Engineering allowance, not a measurement:
#: measure on the device (tegrastats / ``vqz-edge bench``) and pass ``--llm-runtime-mib``.
LLM_RUNTIME_BYTES = 512 * MIB
REFUSE_VISION_REASON = (
    "the vision encoder and connector of a VLM are never quantized below INT8: the LLM keeps writing fluent "
    "text from corrupted visual tokens, so the reports stay fluent and become wrong -- the failure this recipe "
    "exists to prevent. Only the LLM backbone goes to 4 bit (--llm nf4|int4)"
)


# ---------------------------------------------------------------------------------------------- bytes


def bits_per_weight(precision: str, *, double_quant: bool = True) -> float:
    """Average storage bits per weight of a large Linear layer (see the module docstring)."""
    if precision == "fp16":
        return 16.0
    if precision == "int8":
        return 8.0
    if precision == "nf4":
        return 4.0 + (8 / NF4_BLOCK + 32 / (NF4_BLOCK * NF4_DQ_BLOCK) if double_quant else 32 / NF4_BLOCK)
    if precision == "int4":
        return 4.0 + (16 + 4) / INT4_GROUP
    if precision in GGUF_BLOCKS:
        block, nbytes = GGUF_BLOCKS[precision]
        return 8.0 * nbytes / block
    raise ValueError(f"precision {precision!r} not in {PRECISIONS}")


def linear_weight_bytes(in_features: int, out_features: int, precision: str, *, double_quant: bool = True) -> int:
    """Exact storage of one Linear layer's weight (bias excluded: it stays FP16)."""
    n = in_features * out_features
    if precision == "fp16":
        return 2 * n
    if precision == "int8":
        return n + 4 * out_features  # int8 weight + fp32 row scale (SCB)
    if precision == "nf4":
        blocks = math.ceil(n / NF4_BLOCK)
        packed = math.ceil(n / 2)
        if double_quant:
            return packed + blocks + 4 * math.ceil(blocks / NF4_DQ_BLOCK) + 4  # uint8 absmax, fp32 absmax2, offset
        return packed + 4 * blocks
    if precision == "int4":
        groups = math.ceil(in_features / INT4_GROUP)
        return math.ceil(n / 2) + groups * out_features * 2 + math.ceil(groups * out_features / 2)
    if precision in GGUF_BLOCKS:  # blocks run along each row (in_features); a partial block is padded
        block, nbytes = GGUF_BLOCKS[precision]
        return math.ceil(in_features / block) * nbytes * out_features
    raise ValueError(f"precision {precision!r} not in {PRECISIONS}")


def group_bytes(g: LinearGroup, precision: str, *, double_quant: bool = True) -> int:
    return g.count * linear_weight_bytes(g.in_features, g.out_features, precision, double_quant=double_quant)


@dataclass(frozen=True)
class ComponentBytes:
    name: str
    precision: str  # precision of its Linear weights
    params: int
    linear_bytes: int
    other_bytes: int  # biases, norms, embeddings, ... in FP16

    @property
    def bytes(self) -> int:
        return self.linear_bytes + self.other_bytes

    def to_dict(self) -> dict[str, Any]:
        return {"precision": self.precision, "params": self.params, "bytes": self.bytes,
                "linear_bytes": self.linear_bytes, "other_bytes": self.other_bytes}


def component_precisions(llm: str, vision: str) -> dict[str, str]:
    """The recipe: vision tower + connector at ``vision``, LLM backbone at ``llm``; embeddings and LM head FP16."""
    return {"vision_tower": vision, "connector": vision, "llm_backbone": llm, "embeddings": "fp16", "lm_head": "fp16"}


def weight_bytes(
    pc: ParamCount, precisions: Mapping[str, str], *, double_quant: bool = True
) -> dict[str, ComponentBytes]:
    """Bytes per component for the given per-component precisions (no policy check: see :func:`plan_vlm`)."""
    out = {}
    for comp in pc.components:
        prec = precisions.get(comp.name, "fp16")
        lin = sum(group_bytes(g, prec, double_quant=double_quant) for g in pc.linear_groups(comp.name))
        out[comp.name] = ComponentBytes(comp.name, prec, comp.total, lin, 2 * comp.other)
    return out


# ---------------------------------------------------------------------------------------- visual tokens


@dataclass(frozen=True)
class VisualTokens:
    llm_tokens_per_image: int  # positions an image takes in the LLM's sequence (KV cache)
    cross_tokens_per_image: int  # Mllama: K/V length of the cross-attention over the image
    tiles_per_image: int  # encoder passes per image (LLaVA-NeXT: grid tiles + base image; Mllama: max tiles)
    encoder_seq: int  # sequence length of one encoder attention (Mllama attends over all tiles at once)
    encoder_batch_per_image: int  # encoder batch entries per image
    detail: str

    def to_dict(self) -> dict[str, Any]:
        return {"llm_tokens_per_image": self.llm_tokens_per_image, "cross_tokens_per_image": self.cross_tokens_per_image,
                "tiles_per_image": self.tiles_per_image, "encoder_seq": self.encoder_seq,
                "encoder_batch_per_image": self.encoder_batch_per_image, "detail": self.detail}


def select_best_resolution(original: tuple[int, int], pinpoints: Sequence[tuple[int, int]]) -> tuple[int, int]:
    """LLaVA-NeXT's choice of grid (transformers ``image_processing_utils.select_best_resolution``), (h, w)."""
    oh, ow = original
    best, best_eff, best_waste = pinpoints[0], 0, math.inf
    for h, w in pinpoints:
        scale = min(w / ow, h / oh)
        eff = min(int(ow * scale) * int(oh * scale), ow * oh)
        waste = w * h - eff
        if eff > best_eff or (eff == best_eff and waste < best_waste):
            best, best_eff, best_waste = (h, w), eff, waste
    return best


def llava_next_tokens(cfg: VlmConfig, image_hw: tuple[int, int]) -> tuple[int, int]:
    """(LLM tokens, encoder tiles) of one image of ``image_hw`` (h, w): base image + unpadded grid features +
    one newline token per feature row (transformers ``LlavaNextProcessor._get_number_of_features``)."""
    v = cfg.vision
    oh, ow = image_hw
    bh, bw = select_best_resolution(image_hw, cfg.image_grid_pinpoints)
    ph = pw = v.image_size // v.patch_size
    sh, sw = bh // v.image_size, bw // v.image_size
    cur_h, cur_w = ph * sh, pw * sw
    if ow / oh > cur_w / cur_h:
        new_h = int(round(oh * (cur_w / ow), 7))
        cur_h -= ((cur_h - new_h) // 2) * 2
    else:
        new_w = int(round(ow * (cur_h / oh), 7))
        cur_w -= ((cur_w - new_w) // 2) * 2
    base = ph * pw + (1 if cfg.vision_feature_select_strategy == "full" else 0)
    return cur_h * cur_w + cur_h + base, sh * sw + 1


def visual_tokens(cfg: VlmConfig, image_hw: tuple[int, int] | None = None) -> VisualTokens:
    v = cfg.vision
    if cfg.family == "llava":
        n = v.patches_per_tile + (1 if cfg.vision_feature_select_strategy == "full" else 0)
        return VisualTokens(n, 0, 1, v.tokens_per_tile, 1,
                            f"({v.image_size}/{v.patch_size})^2 = {v.patches_per_tile} patches"
                            + (" + CLS" if cfg.vision_feature_select_strategy == "full" else " (CLS dropped)"))
    if cfg.family == "llava_next":
        if image_hw is None:
            cands = [(llava_next_tokens(cfg, p), p) for p in cfg.image_grid_pinpoints]
            (tokens, tiles), where = max(cands)
            detail = f"worst case over the grid pinpoints: a {where[0]}x{where[1]} image"
        else:
            tokens, tiles = llava_next_tokens(cfg, image_hw)
            detail = f"a {image_hw[0]}x{image_hw[1]} image"
        return VisualTokens(tokens, 0, tiles, v.tokens_per_tile, tiles,
                            f"{detail}: {tiles - 1} tiles + base image of {v.image_size}px, unpadded features + "
                            "one newline per row")
    # mllama: one <|image|> token in the text; the tiles go to the cross-attention K/V
    padded = v.tokens_per_tile + (-v.tokens_per_tile) % 8
    return VisualTokens(1, v.max_num_tiles * v.tokens_per_tile, v.max_num_tiles, v.max_num_tiles * padded, 1,
                        f"{v.max_num_tiles} tiles x ((560/14)^2 + 1 = {v.tokens_per_tile}) cross-attention tokens"
                        .replace("560", str(v.image_size)).replace("/14", f"/{v.patch_size}"))


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


# ------------------------------------------------------------------------------------------------ plan


@dataclass(frozen=True)
class PlanOptions:
    """What to plan for. Refuses a vision precision below INT8 at construction, with the reason."""

    llm: str = "nf4"
    vision: str = "fp16"
    context: int = 2048
    images: int = 1
    batch: int = 1
    attention: str = "sdpa"
    logits: str = "last"
    image_hw: tuple[int, int] | None = None
    double_quant: bool = True
    kv_bytes: int = 2
    llm_runtime_bytes: int = LLM_RUNTIME_BYTES
    version: int = PLAN_VERSION

    def __post_init__(self) -> None:
        if self.vision not in VISION_PRECISIONS:
            if self.vision.lower() in BELOW_INT8:
                raise PrecisionRefused(f"refusing --vision {self.vision}: {REFUSE_VISION_REASON}",
                                       hint="keep --vision fp16 (default); --vision int8 needs a measured fidelity report")
            raise PrecisionRefused(f"--vision {self.vision!r} is not a precision; allowed: {', '.join(VISION_PRECISIONS)}")
        if self.llm not in PRECISIONS:
            raise ValueError(f"--llm {self.llm!r} not in {PRECISIONS}")
        if self.attention not in ATTENTION:
            raise ValueError(f"--attention {self.attention!r} not in {ATTENTION}")
        if self.logits not in LOGITS:
            raise ValueError(f"--logits {self.logits!r} not in {LOGITS}")
        for key in ("context", "batch", "kv_bytes"):
            if getattr(self, key) < 1:
                raise ValueError(f"{key} must be >= 1, got {getattr(self, key)}")
        if self.images < 0:
            raise ValueError(f"images must be >= 0, got {self.images}")
        if self.llm_runtime_bytes < 0:
            raise ValueError("llm_runtime_bytes must be >= 0")
        if self.image_hw is not None and min(self.image_hw) < 1:
            raise ValueError(f"image size must be positive, got {self.image_hw}")

    def to_dict(self) -> dict[str, Any]:
        return {"llm": self.llm, "vision": self.vision, "context": self.context, "images": self.images,
                "batch": self.batch, "attention": self.attention, "logits": self.logits,
                "image_size": list(self.image_hw) if self.image_hw else None, "double_quant": self.double_quant,
                "kv_bytes": self.kv_bytes, "llm_runtime_bytes": self.llm_runtime_bytes, "version": self.version}


@dataclass(frozen=True)
class FidelityEvidence:
    path: str
    sha256: str
    cosine: float
    key: str

    def to_dict(self) -> dict[str, Any]:
        return {"path": self.path, "sha256": self.sha256, "cosine": self.cosine, "key": self.key}


def _find_cosines(doc: Any, prefix: str = "") -> list[tuple[str, float]]:
    found: list[tuple[str, float]] = []
    if isinstance(doc, Mapping):
        for k, v in doc.items():
            key = f"{prefix}.{k}" if prefix else str(k)
            if "cosine" in str(k).lower() and isinstance(v, (int, float)) and not isinstance(v, bool):
                found.append((key, float(v)))
            else:
                found.extend(_find_cosines(v, key))
    elif isinstance(doc, list):
        for idx, v in enumerate(doc):
            found.extend(_find_cosines(v, f"{prefix}[{idx}]"))
    return found


def read_fidelity_report(path: Path | None, *, min_cosine: float = 0.99, saving: int | None = None) -> FidelityEvidence:
    """The measured fidelity an INT8 vision encoder needs: the JSON of ``vqz-edge evaluate --json`` (any
    object with a ``*cosine*`` metric). The worst cosine found must reach ``min_cosine``."""
    save = f" (INT8 would save {saving / MIB:.0f} MiB)" if saving else ""
    if path is None:
        raise PrecisionRefused(
            f"--vision int8 requires a measured fidelity report from `vqz-edge evaluate` and none was given{save}",
            hint="evaluate the INT8 vision encoder against FP16 on held-out images "
            "(vqz-edge evaluate REF.onnx INT8.onnx --data DIR --json > fidelity.json) and pass --fidelity-report fidelity.json",
        )
    path = Path(path)
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise PrecisionRefused(f"cannot read fidelity report {path}: {exc.strerror or exc}") from exc
    except json.JSONDecodeError as exc:
        raise PrecisionRefused(f"fidelity report {path} is not JSON (line {exc.lineno}: {exc.msg})") from exc
    except UnicodeDecodeError as exc:
        raise PrecisionRefused(f"fidelity report {path} is not JSON text (not UTF-8: {exc.reason} at byte {exc.start})") from exc
    found = _find_cosines(doc)
    if not found:
        raise PrecisionRefused(
            f"fidelity report {path} has no cosine metric",
            hint="pass the JSON written by `vqz-edge evaluate --json` (it reports the mean logit cosine)",
        )
    key, worst = min(found, key=lambda kv: kv[1])
    if worst < min_cosine:
        raise PrecisionRefused(
            f"fidelity report {path}: {key} = {worst:.4f} is below the {min_cosine} an INT8 vision encoder must reach",
            hint="keep --vision fp16",
        )
    return FidelityEvidence(str(path), sha256_file(path), worst, key)


@dataclass(frozen=True)
class VlmPlan:
    config: VlmConfig
    target: Target
    options: PlanOptions
    params: ParamCount
    weights: dict[str, ComponentBytes]
    tokens: VisualTokens
    kv_self_bytes: int
    kv_cross_bytes: int
    vision_peak_bytes: int
    llm_peak_bytes: int
    dequant_bytes: int
    items: tuple[MemoryItem, ...]
    report: BudgetReport
    max_context: int | None
    min_context: int
    fidelity: FidelityEvidence | None = None
    notes: tuple[str, ...] = field(default=())
    cause: str | None = None  # why it does not fit, when one term is the cause (the eager attention peak)
    llm_formats: Mapping[str, int] = field(default_factory=dict)  # LLM backbone bytes per 4-bit format

    @property
    def fits(self) -> bool:
        return self.report.fits

    @property
    def weights_total(self) -> int:
        return sum(c.bytes for c in self.weights.values())

    def to_dict(self) -> dict[str, Any]:
        return {
            "version": PLAN_VERSION,
            "model": self.config.summary(),
            "target": self.target.name,
            "options": self.options.to_dict(),
            "params": self.params.to_dict(),
            "weights": {k: v.to_dict() for k, v in self.weights.items()},
            "weights_bytes": self.weights_total,
            "visual_tokens": self.tokens.to_dict(),
            "kv_cache": {"self_bytes": self.kv_self_bytes, "cross_bytes": self.kv_cross_bytes},
            "activations": {"vision_peak_bytes": self.vision_peak_bytes, "llm_prefill_peak_bytes": self.llm_peak_bytes,
                            "dequant_buffer_bytes": self.dequant_bytes},
            "budget": self.report.to_dict(),
            "fits": self.fits,
            "headroom_bytes": self.report.headroom_bytes,
            "max_context": self.max_context,
            "min_context": self.min_context,
            "fidelity_report": self.fidelity.to_dict() if self.fidelity else None,
            "notes": list(self.notes),
            "cause": self.cause,
            "llm_backbone_formats_bytes": dict(self.llm_formats),
        }

    def table(self) -> str:
        cfg, o = self.config, self.options
        lines = [
            f"{cfg.name} ({cfg.architecture}) -> {self.target.name}: LLM {o.llm}, vision+connector {o.vision}, "
            f"context {o.context}, images {o.images}, batch {o.batch}, attention {o.attention}"
            f"{' (default)' if o.attention == 'sdpa' else ''}, logits {o.logits}",
            f"  {'component':14} {'params':>14} {'precision':>9} {'MiB':>10}",
        ]
        for name in COMPONENTS:
            c = self.weights[name]
            lines.append(f"  {name:14} {c.params:>14,} {c.precision:>9} {c.bytes / MIB:>10.1f}")
        lines.append(f"  {'total':14} {self.params.total:>14,} {'':>9} {self.weights_total / MIB:>10.1f}")
        vt = self.tokens
        lines.append(f"  visual tokens per image: {vt.llm_tokens_per_image} in the LLM sequence"
                     + (f", {vt.cross_tokens_per_image} cross-attention tokens" if vt.cross_tokens_per_image else "")
                     + f" ({vt.detail})")
        if self.llm_formats:
            lines.append("  LLM backbone by 4-bit format: " + ", ".join(
                f"{_FORMAT_LABELS[k]} {v / MIB:,.1f} MiB" for k, v in self.llm_formats.items()))
        report = self.report.table().splitlines()
        if self.cause:
            at = next(i for i, line in enumerate(report) if line.startswith("verdict:"))
            report.insert(at + 1, f"  cause: {self.cause}")
        lines.extend(report)
        if self.max_context is None:
            lines.append(f"largest context that fits: none (not even {self.min_context} tokens)")
        else:
            lines.append(f"largest context that fits: {self.max_context} tokens "
                         f"(model max {cfg.text.max_position_embeddings})")
        if self.fidelity:
            lines.append(f"INT8 vision evidence: {self.fidelity.path}: {self.fidelity.key} = {self.fidelity.cosine:.4f}")
        lines.extend(f"note: {n}" for n in self.notes)
        return "\n".join(lines)


_FORMAT_LABELS = {"nf4": "bitsandbytes NF4", "q4_0": "GGUF Q4_0", "q4_k": "GGUF Q4_K"}


def _bits_note(precision: str, opts: PlanOptions) -> str:
    # "16-bit" rather than "fp16": the budget's generic advice would otherwise suggest INT8 for the vision side
    if precision == "fp16":
        return "16-bit"
    return f"{precision} ({bits_per_weight(precision, double_quant=opts.double_quant):.3f} bit/weight)"


def _gib(n: int) -> str:
    return f"{n / (1 << 30):.2f} GiB"


def plan_items(
    cfg: VlmConfig, opts: PlanOptions, pc: ParamCount | None = None
) -> tuple[list[MemoryItem], dict[str, Any]]:
    """The memory items of a plan (no budget check) and the intermediate numbers."""
    pc = pc or count_params(cfg)
    precs = component_precisions(opts.llm, opts.vision)
    w = weight_bytes(pc, precs, double_quant=opts.double_quant)
    vt = visual_tokens(cfg, opts.image_hw)
    kv_self, kv_cross = kv_cache_bytes(cfg, opts.context, opts.batch, images=opts.images, kv_bytes=opts.kv_bytes)
    v_peak = vision_activation_bytes(cfg, opts.images, opts.batch, opts.attention, vt) if opts.images else 0
    l_peak = llm_prefill_bytes(cfg, opts.context, opts.batch, opts.attention, opts.logits, opts.images)
    deq = dequant_buffer_bytes(pc, precs)
    labels = {"vision_tower": "vision tower", "connector": "connector (projector)", "llm_backbone": "LLM backbone",
              "embeddings": "token embeddings", "lm_head": "LM head"}
    items = [
        MemoryItem(f"weights: {labels[name]}", c.bytes, f"{c.params / 1e6:,.1f}M params, {_bits_note(c.precision, opts)}",
                   "weights")
        for name, c in w.items() if c.bytes
    ]
    t = cfg.text
    items.append(MemoryItem(
        "KV cache: self-attention", kv_self,
        f"2 x {t.self_attention_layers} layers x {t.num_key_value_heads} kv heads x {t.head_dim} x {opts.context} tok"
        f" x batch {opts.batch} x {opts.kv_bytes} B", "kv_cache"))
    if kv_cross:
        items.append(MemoryItem(
            "KV cache: cross-attention", kv_cross,
            f"2 x {len(t.cross_attention_layers)} layers x {t.num_key_value_heads} x {t.head_dim} x "
            f"{vt.cross_tokens_per_image} vision tok x {opts.images} img x batch {opts.batch}", "kv_cache"))
    act = max(v_peak, l_peak)
    which = "vision encoder" if v_peak >= l_peak else "LLM prefill"
    items.append(MemoryItem(
        "activations: peak", act,
        f"{which} ({_gib(v_peak)} vision, {_gib(l_peak)} prefill; not concurrent; {opts.attention} attention)",
        "activations"))
    if deq:
        items.append(MemoryItem("dequantization buffer", deq, "largest quantized Linear in FP16 during prefill", "other"))
    info = {"params": pc, "weights": w, "tokens": vt, "kv_self": kv_self, "kv_cross": kv_cross, "vision_peak": v_peak,
            "llm_peak": l_peak, "dequant": deq}
    return items, info


def _budget(cfg: VlmConfig, target: Target, opts: PlanOptions, items: Sequence[MemoryItem], *,
            os_reserve_bytes: int | None, trt_version: str | None, suggest: bool) -> BudgetReport:
    runtime = "LLM runtime (llama.cpp)" if opts.llm in GGUF_PRECISIONS else "LLM runtime (PyTorch + bitsandbytes)"
    overhead = [*runtime_overhead(target, trt_version),
                MemoryItem(runtime, opts.llm_runtime_bytes,
                           "allowance, not measured: --llm-runtime-mib", "other")]
    return check_budget(
        target, items, os_reserve_bytes=os_reserve_bytes, trt_version=trt_version, overhead=overhead,
        subject=f"{cfg.name}: LLM {opts.llm}, vision {opts.vision}, context {opts.context}",
        suggest_targets=suggest,
    )


def min_context(cfg: VlmConfig, opts: PlanOptions) -> int:
    """The smallest sensible sequence: every image's tokens plus one text token."""
    return opts.images * visual_tokens(cfg, opts.image_hw).llm_tokens_per_image + 1


def largest_context(cfg: VlmConfig, target: Target, opts: PlanOptions, *, os_reserve_bytes: int | None = None,
                    trt_version: str | None = None, pc: ParamCount | None = None) -> int | None:
    """Largest context (tokens) that still fits, by bisection up to the model's max position embeddings."""
    pc = pc or count_params(cfg)

    def fits(n: int) -> bool:
        items, _ = plan_items(cfg, replace(opts, context=n), pc)
        return _budget(cfg, target, opts, items, os_reserve_bytes=os_reserve_bytes, trt_version=trt_version,
                       suggest=False).fits

    lo, hi = min_context(cfg, opts), cfg.text.max_position_embeddings
    if lo > hi or not fits(lo):
        return None
    if fits(hi):
        return hi
    while hi - lo > 1:  # invariant: fits(lo), not fits(hi)
        mid = (lo + hi) // 2
        lo, hi = (mid, hi) if fits(mid) else (lo, mid)
    return lo


ATTENTION_NOTES = {
    "sdpa": "attention sdpa is the planner's default -- transformers' default attn_implementation for LLaVA and "
            "Mllama, and TensorRT's fused MHA in the vision engine: no attention-score tensors are budgeted. If your "
            "runtime uses attn_implementation='eager' (or PyTorch's SDPA falls back to its math kernel, which "
            "materialises the scores), plan with --attention eager",
    "eager": "attention eager: the scores are materialised (heads x S^2 in FP16 plus their FP32 softmax per layer); "
             "the planner's default is sdpa (fused kernels)",
}


def llm_format_bytes(pc: ParamCount, opts: PlanOptions) -> dict[str, int]:
    """Bytes of the LLM backbone in each 4-bit format a Jetson runs: bitsandbytes NF4 (PyTorch) and the GGUF
    formats llama.cpp runs (``vlm export --llm-format gguf``); embeddings, LM head and the vision side as planned."""
    out = {}
    for fmt in ("nf4", *GGUF_PRECISIONS):
        w = weight_bytes(pc, component_precisions(fmt, opts.vision), double_quant=opts.double_quant)
        out[fmt] = w["llm_backbone"].bytes
    return out


def _eager_scores(cfg: VlmConfig, opts: PlanOptions, info: Mapping[str, Any]) -> tuple[str, int, str]:
    """(where, score bytes, how) of the largest materialised attention-score tensor under eager attention."""
    v, t, vt = cfg.vision, cfg.text, info["tokens"]
    n = opts.batch * opts.images * vt.encoder_batch_per_image
    s = vt.encoder_seq
    vision = n * v.num_attention_heads * s * s * (2 + 4)
    span = (f"{v.max_num_tiles} tiles attended at once, {v.max_num_tiles} x {s // v.max_num_tiles:,} tokens"
            if cfg.family == "mllama" else f"{s:,} tokens per tile")
    if info["vision_peak"] >= info["llm_peak"]:
        how = (f"{v.num_attention_heads} heads x {s:,}^2 attention scores in FP16 plus their FP32 softmax = "
               f"{_gib(vision)} in one vision-encoder layer ({span}); {_gib(info['vision_peak'])} with the layer's "
               "other buffers")
        return "the eager vision-attention peak", vision, how
    how = (f"{t.num_attention_heads} heads x {opts.context:,}^2 prefill scores (FP16 + FP32 softmax) in one LLM layer; "
           f"{_gib(info['llm_peak'])} with the layer's other buffers")
    return "the eager attention peak of the LLM prefill", opts.batch * t.num_attention_heads * opts.context ** 2 * 6, how


def _oom_cause(
    cfg: VlmConfig, target: Target, opts: PlanOptions, info: Mapping[str, Any], pc: ParamCount, *,
    os_reserve_bytes: int | None, trt_version: str | None,
) -> tuple[str, str] | None:
    """(cause, hint) when eager attention alone makes the plan not fit: the same plan with fused attention fits."""
    if opts.attention != "eager":
        return None
    fused = replace(opts, attention="sdpa")
    items, _ = plan_items(cfg, fused, pc)
    report = _budget(cfg, target, fused, items, os_reserve_bytes=os_reserve_bytes, trt_version=trt_version,
                     suggest=False)
    if not report.fits:
        return None
    where, _, how = _eager_scores(cfg, opts, info)
    ctx = largest_context(cfg, target, fused, os_reserve_bytes=os_reserve_bytes, trt_version=trt_version, pc=pc)
    cause = f"{where}: {how}"
    hint = (f"use fused attention -- --attention sdpa (attn_implementation='sdpa' in transformers; TensorRT's fused MHA "
            f"for the vision engine) never materialises those scores: the same model then fits with "
            f"{_gib(report.headroom_bytes)} headroom, up to {ctx} tokens")
    if info["vision_peak"] >= info["llm_peak"]:
        hint += "; a shorter context or batch only makes room around the vision peak, it does not remove it"
    return cause, hint


def plan_vlm(
    cfg: VlmConfig,
    target: Target,
    opts: PlanOptions | None = None,
    *,
    fidelity_report: Path | None = None,
    min_vision_cosine: float = 0.99,
    os_reserve_bytes: int | None = None,
    trt_version: str | None = None,
) -> VlmPlan:
    """Plan ``cfg`` on ``target``: bytes per component, KV cache, activations, verdict and largest context.

    A context above the model's ``max_position_embeddings`` is clamped to it (with a note)."""
    opts = opts or PlanOptions()
    pc = count_params(cfg)
    fidelity = None
    if opts.vision == "int8":
        fp16 = weight_bytes(pc, component_precisions(opts.llm, "fp16"))
        int8 = weight_bytes(pc, component_precisions(opts.llm, "int8"))
        saving = sum(fp16[c].bytes - int8[c].bytes for c in ("vision_tower", "connector"))
        fidelity = read_fidelity_report(fidelity_report, min_cosine=min_vision_cosine, saving=saving)
    notes = []
    max_pos = cfg.text.max_position_embeddings
    if opts.context > max_pos:
        notes.append(f"context {opts.context} clamped to the model's max_position_embeddings ({max_pos})")
        opts = replace(opts, context=max_pos)
    mn = min_context(cfg, opts)
    if opts.context < mn:
        per_image = visual_tokens(cfg, opts.image_hw).llm_tokens_per_image
        if mn > max_pos:
            raise InputError(
                f"{cfg.name}: {opts.images} image(s) of {per_image} visual tokens plus text need {mn} positions, more "
                f"than the model's max_position_embeddings ({max_pos})",
                hint="plan fewer images per request (--images)",
            )
        raise InputError(
            f"--context {opts.context} cannot hold {opts.images} image(s) of {per_image} visual tokens plus text",
            hint=f"use --context >= {mn} (visual tokens count against the LLM's context for {cfg.family})",
        )
    items, info = plan_items(cfg, opts, pc)
    report = _budget(cfg, target, opts, items, os_reserve_bytes=os_reserve_bytes, trt_version=trt_version, suggest=True)
    cause = None
    if not report.fits:
        found = _oom_cause(cfg, target, opts, info, pc, os_reserve_bytes=os_reserve_bytes, trt_version=trt_version)
        if found is not None:
            cause = found[0]
            advice = [a for a in report.advice if not a.startswith("lower the maximum batch")]
            report = replace(report, advice=(found[1], *advice))
    max_ctx = largest_context(cfg, target, opts, os_reserve_bytes=os_reserve_bytes, trt_version=trt_version, pc=pc)
    notes.append(ATTENTION_NOTES[opts.attention])
    if cfg.defaulted:
        notes.append("keys absent from the config took their transformers defaults: " + ", ".join(cfg.defaulted))
    if opts.llm in ("nf4", "int4"):
        notes.append("embeddings and the LM head stay FP16 (bitsandbytes never quantizes nn.Embedding; the generated "
                     "skip list keeps lm_head)")
    if opts.llm in GGUF_PRECISIONS:
        notes.append("embeddings and the LM head stay FP16 in the GGUF vqz-edge writes (vlm export --llm-format gguf)")
    plan = VlmPlan(cfg, target, opts, pc, info["weights"], info["tokens"], info["kv_self"], info["kv_cross"],
                   info["vision_peak"], info["llm_peak"], info["dequant"], tuple(items), report, max_ctx, mn, fidelity,
                   tuple(notes), cause, llm_format_bytes(pc, opts))
    _log.info("vlm plan %s on %s: %s", cfg.name, target.name, report.verdict())
    return plan
