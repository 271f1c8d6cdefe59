"""Bytes of a VLM's weights per component and precision.

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
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from .params import LinearGroup, ParamCount

PRECISIONS = ("fp16", "int8", "nf4", "int4", "q4_0", "q4_k")
#: LLM weight formats that llama.cpp runs from a GGUF file (``vlm export --llm-format gguf``).
GGUF_PRECISIONS = ("q4_0", "q4_k")
#: Block size (weights along a row) and bytes per block of the GGUF formats.
GGUF_BLOCKS = {"q4_0": (32, 18), "q4_k": (256, 144)}
VISION_PRECISIONS = ("fp16", "int8")
#: Formats below INT8 that are refused for the vision side (with the reason), whatever the runtime.
BELOW_INT8 = ("nf4", "fp4", "int4", "int3", "int2", "w4a16", "awq", "gptq", "q4_0", "q4_k_m", "q4f16")
NF4_BLOCK = 64
NF4_DQ_BLOCK = 256
INT4_GROUP = 128


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


