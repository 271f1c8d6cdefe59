"""The VLM memory planner: bytes per component and precision, KV cache, visual tokens, activation peaks,
and a verdict through the project's one memory budget model (:func:`vqz_edge.memory.check_budget`).

The byte model: :mod:`.weights`; visual tokens: :mod:`.tokens`; KV cache and activation peaks:
:mod:`.activations`; INT8 vision evidence: :mod:`.evidence`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from ..errors import InputError
from ..log import get_logger
from ..memory import MIB, BudgetReport, MemoryItem, check_budget, runtime_overhead
from ..targets import Target
from .activations import dequant_buffer_bytes, kv_cache_bytes, llm_prefill_bytes, vision_activation_bytes
from .configs import VlmConfig
from .errors import PrecisionRefused
from .evidence import FidelityEvidence, read_fidelity_report
from .params import COMPONENTS, ParamCount, count_params
from .tokens import VisualTokens, visual_tokens
from .weights import (
    BELOW_INT8,
    GGUF_PRECISIONS,
    PRECISIONS,
    VISION_PRECISIONS,
    ComponentBytes,
    bits_per_weight,
    component_precisions,
    weight_bytes,
)

_log = get_logger(__name__)

PLAN_VERSION = 1
ATTENTION = ("sdpa", "eager")
LOGITS = ("last", "all")
#: PyTorch's CUDA kernels beyond the shared CUDA context, cuBLAS/cuBLASLt workspaces, bitsandbytes' kernels
#: and caching-allocator slack of the process that runs the LLM. Engineering allowance, not a measurement:
#: measure on the device (tegrastats / ``vqz-edge bench``) and pass ``--llm-runtime-mib``.
LLM_RUNTIME_BYTES = 512 * MIB
REFUSE_VISION_REASON = (
    "the vision encoder and connector of a VLM are never quantized below INT8: the LLM keeps writing fluent "
    "text from corrupted visual tokens, so the reports stay fluent and become wrong -- the failure this recipe "
    "exists to prevent. Only the LLM backbone goes to 4 bit (--llm nf4|int4)"
)


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
