"""The seed's VLM memory table beside ours, and the fit matrix of every shipped config on every target.

The seed (the project's design notes) gives weight sizes in GB (10^9 bytes):

======================  ==========  =============  ============  ======================
model                   FP16        INT8 LLM only  NF4 LLM only  NF4 LLM + vision
======================  ==========  =============  ============  ======================
LLaVA-1.5 7B            14.2        8.1            4.8           --
Llama 3.2 Vision 11B    22.0        --             6.8           5.5
Llama 3.2 Vision 90B    180         --             48            --
======================  ==========  =============  ============  ======================

Ours comes from the parameter count of the published config (exact, cross-checked against the real
transformers classes on the meta device) and the byte model of :mod:`vqz_edge.vlm.weights`. Where they
differ, :func:`explain` splits the difference exactly into named causes, relative to the simplest reading
of the seed (``nominal parameters x 0.5 byte -- x 1 byte for INT8 -- the vision tower at 2 bytes``), and
:func:`closest_formula`
says which accounting convention reproduces the seed's number.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Any

from ..memory import GIB
from ..targets import Target, list_targets
from .configs import SHIPPED, VlmConfig, load_shipped
from .params import ParamCount, count_params
from .planner import PlanOptions, min_context, plan_vlm
from .weights import bits_per_weight, component_precisions, weight_bytes

GB = 1_000_000_000
#: A named accounting convention "matches" a seed number within this relative error.
CLOSE = 0.04

#: The seed's numbers (GB) and the nominal size its model names imply.
SEED_TABLE: dict[str, dict[str, float | None]] = {
    "llava-1.5-7b": {"nominal_b": 7.0, "fp16": 14.2, "int8_llm": 8.1, "nf4_llm": 4.8, "nf4_both": None},
    "llama-3.2-11b-vision": {"nominal_b": 11.0, "fp16": 22.0, "int8_llm": None, "nf4_llm": 6.8, "nf4_both": 5.5},
    "llama-3.2-90b-vision": {"nominal_b": 90.0, "fp16": 180.0, "int8_llm": None, "nf4_llm": 48.0, "nf4_both": None},
}
COLUMNS = ("fp16", "int8_llm", "nf4_llm", "nf4_both")
COLUMN_TITLES = {"fp16": "FP16", "int8_llm": "INT8 LLM (bitsandbytes LLM.int8), vision FP16",
                 "nf4_llm": "NF4 LLM, vision FP16 (the recipe)",
                 "nf4_both": "NF4 LLM + vision (refused by the recipe)"}
#: Bytes per weight the simplest reading of the seed assumes for each quantized column.
_NAIVE_BYTES = {"int8_llm": 1.0, "nf4_llm": 0.5, "nf4_both": 0.5}


def _precisions(column: str) -> dict[str, str]:
    if column == "fp16":
        return component_precisions("fp16", "fp16")
    if column == "int8_llm":
        return component_precisions("int8", "fp16")
    if column == "nf4_llm":
        return component_precisions("nf4", "fp16")
    # what a naive whole-model bitsandbytes load does: every Linear but the LM head in NF4
    return {"vision_tower": "nf4", "connector": "nf4", "llm_backbone": "nf4", "embeddings": "fp16", "lm_head": "fp16"}


def ours_bytes(pc: ParamCount, column: str, *, double_quant: bool = True) -> int:
    return sum(c.bytes for c in weight_bytes(pc, _precisions(column), double_quant=double_quant).values())


@dataclass(frozen=True)
class Explanation:
    """ours - seed = sum(terms) + residual, exactly (bytes)."""

    terms: tuple[tuple[str, int], ...]
    residual: int  # the seed's own rounding / assumptions beyond the named terms
    seed_bytes: int = 0
    convention: str | None = None  # the named accounting convention that reproduces the seed within CLOSE, if any

    @property
    def residual_label(self) -> str:
        """Rounding when small; above ``CLOSE`` of the seed's number it is the seed's own convention when one
        reproduces it, else named as unexplained -- never called rounding."""
        if self.seed_bytes and abs(self.residual) > CLOSE * self.seed_bytes:
            if self.convention:
                return f"the seed's accounting ({self.convention})"
            return "not explained by any named cause (an assumption the seed does not state)"
        return "seed rounding/other"

    def text(self) -> str:
        parts = [f"{v / GB:+.2f} {k}" for k, v in self.terms if abs(v) >= 0.005 * GB]
        if abs(self.residual) >= 0.005 * GB:
            parts.append(f"{self.residual / GB:+.2f} {self.residual_label}")
        return "; ".join(parts) if parts else "agrees"

    def to_dict(self) -> dict[str, Any]:
        return {"terms": {k: v for k, v in self.terms}, "residual": self.residual,
                "residual_label": self.residual_label, "text": self.text()}


def explain(pc: ParamCount, column: str, seed_gb: float, nominal_b: float, *, double_quant: bool = True) -> Explanation:
    """Split ``ours - seed`` into: parameters counted vs the nominal size, FP16 parts a low-bit estimate counts
    at the low-bit size, the per-weight overhead of the format (NF4 absmax / double quant; LLM.int8 row scales),
    and what is left (the seed's rounding)."""
    ours = ours_bytes(pc, column, double_quant=double_quant)
    seed = int(round(seed_gb * GB))
    nominal = int(round(nominal_b * 1e9))
    actual = pc.total
    if column == "fp16":
        terms = [(f"{actual / 1e9:.2f}B parameters counted, not {nominal_b:g}B nominal", 2 * (actual - nominal))]
    else:
        precs = _precisions(column)
        low = next(p for c, p in precs.items() if c == "llm_backbone")
        naive = _NAIVE_BYTES[column]
        q = sum(g.weight_params for g in pc.linears if precs[g.component] == low)
        vision = pc["vision_tower"].total if precs["vision_tower"] == "fp16" else 0
        fp16_rest = actual - q - vision  # embeddings, LM head, norms, biases, connector, conv, tables
        quantized = weight_bytes(pc, precs, double_quant=double_quant)
        q_bytes = sum(c.linear_bytes for c in quantized.values() if c.precision == low)
        if low == "nf4":
            overhead_name = (f"NF4 absmax{' + double quant' if double_quant else ' (fp32)'}: "
                             f"{bits_per_weight('nf4', double_quant=double_quant):.3f} bits/weight, not 4")
        else:
            overhead_name = f"LLM.int8 row scales: one fp32 per output row, {8 * q_bytes / q:.3f} bits/weight, not 8"
        # seed-like baseline: nominal x naive B + vision x (2 - naive) B  ->  ours - baseline = the three terms below
        terms = [
            (f"{actual / 1e9:.2f}B parameters counted, not {nominal_b:g}B nominal", int(round(naive * (actual - nominal)))),
            (f"embeddings + LM head + norms/biases stay FP16 (2 B, not {naive:g} B)", int(round((2 - naive) * fp16_rest))),
            (overhead_name, int(round(q_bytes - naive * q))),
        ]
    return Explanation(tuple(terms), ours - seed - sum(v for _, v in terms), seed)


def closest_formula(pc: ParamCount, column: str, seed_gb: float, nominal_b: float) -> tuple[str, float, float]:
    """(formula, its GB, relative error to the seed) of the accounting convention closest to the seed."""
    actual, nominal = pc.total, nominal_b * 1e9
    vision = pc["vision_tower"].total
    if column == "fp16":
        cands = {"nominal x 2 B": nominal * 2, "counted x 2 B": actual * 2.0}
    elif column == "int8_llm":
        cands = {
            "nominal x 1 B, vision FP16": nominal * 1.0 + vision * 1.0,
            "counted x 1 B, vision FP16": actual * 1.0 + vision * 1.0,
            "bitsandbytes LLM.int8 (row scales; embeddings, LM head, vision FP16)": float(ours_bytes(pc, column)),
        }
    elif column == "nf4_llm":
        cands = {
            "nominal x 0.5 B, vision FP16": nominal * 0.5 + vision * 1.5,
            "counted x 0.5 B, vision FP16": actual * 0.5 + vision * 1.5,
            "bitsandbytes NF4 without double quant": float(ours_bytes(pc, column, double_quant=False)),
            "bitsandbytes NF4 with double quant": float(ours_bytes(pc, column)),
        }
    else:
        cands = {
            "nominal x 0.5 B": nominal * 0.5,
            "counted x 0.5 B": actual * 0.5,
            "bitsandbytes NF4 without double quant": float(ours_bytes(pc, column, double_quant=False)),
            "bitsandbytes NF4 with double quant": float(ours_bytes(pc, column)),
        }
    seed = seed_gb * GB
    name, val = min(cands.items(), key=lambda kv: abs(kv[1] - seed))
    return name, val / GB, (val - seed) / seed


@dataclass(frozen=True)
class SeedRow:
    name: str
    params: int
    ours: dict[str, int]  # column -> bytes (double quant)
    ours_no_dq: dict[str, int]
    seed: dict[str, float | None]
    explanations: dict[str, Explanation]
    closest: dict[str, tuple[str, float, float]]

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name, "params": self.params,
            "ours_gb": {k: round(v / GB, 3) for k, v in self.ours.items()},
            "ours_no_double_quant_gb": {k: round(v / GB, 3) for k, v in self.ours_no_dq.items() if "nf4" in k},
            "seed_gb": {k: v for k, v in self.seed.items() if k in COLUMNS},
            "why": {k: e.to_dict() for k, e in self.explanations.items()},
            "closest_formula": {k: {"formula": c[0], "gb": round(c[1], 3), "rel_error": round(c[2], 4)}
                                for k, c in self.closest.items()},
        }


def seed_rows(names: Sequence[str] = SHIPPED) -> list[SeedRow]:
    rows = []
    for name in names:
        pc = count_params(load_shipped(name))
        seed = SEED_TABLE.get(name, {"nominal_b": None, **dict.fromkeys(COLUMNS)})
        ours = {c: ours_bytes(pc, c) for c in COLUMNS}
        nodq = {c: ours_bytes(pc, c, double_quant=False) for c in COLUMNS}
        expl, close = {}, {}
        for c in COLUMNS:
            s = seed.get(c)
            if s is not None and seed["nominal_b"] is not None:
                close[c] = closest_formula(pc, c, float(s), float(seed["nominal_b"]))
                e = explain(pc, c, float(s), float(seed["nominal_b"]))
                formula, _, rel = close[c]
                expl[c] = replace(e, convention=formula) if abs(rel) < CLOSE else e
        rows.append(SeedRow(name, pc.total, ours, nodq, dict(seed), expl, close))
    return rows


_WIDTH = {"fp16": 16, "int8_llm": 19, "nf4_llm": 22, "nf4_both": 22}


def seed_table_text(rows: Sequence[SeedRow]) -> str:
    lines = ["weights in GB (10^9 bytes): the seed's table beside ours (INT8 = bitsandbytes LLM.int8; NF4 with double "
             "quant, in brackets without)"]
    titles = ("FP16 seed|ours", "INT8-LLM seed|ours", "NF4-LLM seed|ours", "NF4-both seed|ours")
    head = f"  {'model':22} {'params':>8} " + " ".join(f"{t:>{_WIDTH[c]}}" for c, t in zip(COLUMNS, titles))
    lines.append(head)
    for r in rows:
        cells = []
        for c in COLUMNS:
            s = r.seed.get(c)
            seed_s = f"{s:g}" if s is not None else "--"
            ours_s = f"{r.ours[c] / GB:.2f}" + (f" [{r.ours_no_dq[c] / GB:.2f}]" if "nf4" in c else "")
            cells.append(f"{seed_s + ' | ' + ours_s:>{_WIDTH[c]}}")
        lines.append(f"  {r.name:22} {r.params / 1e9:>7.2f}B " + " ".join(cells))
    lines.append("why ours differs (ours - seed, GB):")
    for r in rows:
        for c in COLUMNS:
            if c in r.explanations:
                formula, val, rel = r.closest[c]
                lines.append(f"  {r.name} {c}: {r.explanations[c].text()}")
                verb = "matches" if abs(rel) < CLOSE else "is closest to (no named convention within 4%)"
                lines.append(f"    the seed's number {verb} '{formula}' ({val:.2f} GB, {rel:+.1%})")
    return "\n".join(lines)


@dataclass(frozen=True)
class MatrixCell:
    model: str
    target: str
    recipe: str
    fits: bool
    headroom_bytes: int
    max_context: int | None
    context: int

    def text(self) -> str:
        if not self.fits:
            return f"no {self.headroom_bytes / GIB:+.2f}G" + (f" ctx<={self.max_context}" if self.max_context else "")
        return f"ok {self.headroom_bytes / GIB:+.2f}G ctx {self.max_context}"

    def to_dict(self) -> dict[str, Any]:
        return {"model": self.model, "target": self.target, "recipe": self.recipe, "fits": self.fits,
                "headroom_bytes": self.headroom_bytes, "max_context": self.max_context, "context": self.context}


RECIPES = {"fp16": PlanOptions(llm="fp16"), "nf4-llm": PlanOptions(llm="nf4")}


def fit_matrix(
    names: Sequence[str] = SHIPPED, targets: Sequence[Target] | None = None, *, context: int = 2048,
    images: int = 1, attention: str = "sdpa",
) -> list[MatrixCell]:
    targets = list(targets) if targets is not None else list_targets()
    cells = []
    for name in names:
        cfg: VlmConfig = load_shipped(name)
        for recipe, base in RECIPES.items():
            opts = PlanOptions(llm=base.llm, context=min(context, cfg.text.max_position_embeddings), images=images,
                               attention=attention)
            opts = replace(opts, context=max(opts.context, min_context(cfg, opts)))
            for t in targets:
                p = plan_vlm(cfg, t, opts)
                cells.append(MatrixCell(name, t.name, recipe, p.fits, p.report.headroom_bytes, p.max_context,
                                        opts.context))
    return cells


def matrix_text(cells: Sequence[MatrixCell], context: int, attention: str = "sdpa") -> str:
    targets = list(dict.fromkeys(c.target for c in cells))
    models = list(dict.fromkeys(c.model for c in cells))
    w = max(16, *(len(t) + 1 for t in targets))
    lines = [f"fit on every catalog target at context {context} (clamped to the model's max_position_embeddings; the "
             f"image tokens + 1 when more), 1 image, attention {attention}"
             f"{' (the planner default: fused kernels)' if attention == 'sdpa' else ''} "
             "(ok/no, headroom in GiB, largest context that fits)"]
    for recipe in RECIPES:
        lines.append(f"  recipe {recipe}:")
        lines.append(f"    {'model':22} " + " ".join(f"{t:>{w}}" for t in targets))
        for m in models:
            row = {c.target: c for c in cells if c.model == m and c.recipe == recipe}
            lines.append(f"    {m:22} " + " ".join(f"{row[t].text():>{w}}" for t in targets))
    return "\n".join(lines)
