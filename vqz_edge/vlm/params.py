"""Parameter counts per component, from the config alone.

Components (the recipe treats each one differently):

- ``vision_tower``  -- the image encoder (CLIP ViT for LLaVA / LLaVA-NeXT; Mllama's tiled ViT)
- ``connector``     -- the multi-modal projector (plus LLaVA-NeXT's ``image_newline`` vector)
- ``llm_backbone``  -- the decoder layers and final norm of the language model (Mllama's cross-attention
  layers included)
- ``embeddings``    -- the token embedding table (``embed_tokens``)
- ``lm_head``       -- the output projection (0 when tied to the embeddings)

:func:`count_params` is pure arithmetic over :class:`~vqz_edge.vlm.configs.VlmConfig` and mirrors the
transformers 5 module classes (``LlavaForConditionalGeneration``, ``LlavaNextForConditionalGeneration``,
``MllamaForConditionalGeneration``). :func:`count_params_meta` builds the real transformers classes on
``torch.device("meta")`` (no weights, no memory, no network) and counts the same way, so the arithmetic is
checked against the library that will actually load the model.

Each component separates the weights of its Linear layers (what a weight-only quantizer converts) from
everything else (biases, norms, embeddings, convolutions, positional tables, gates), which stays FP16.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any

from ..errors import DependencyError
from .configs import VlmConfig

COMPONENTS = ("vision_tower", "connector", "llm_backbone", "embeddings", "lm_head")
VISION_SIDE = ("vision_tower", "connector")  # never below FP16 in the recipe (INT8 only with evidence)


@dataclass(frozen=True)
class LinearGroup:
    """``count`` identical Linear layers of one component (e.g. every ``self_attn.q_proj`` of the LLM)."""

    component: str
    name: str
    in_features: int
    out_features: int
    bias: bool
    count: int

    @property
    def weight_params(self) -> int:
        return self.in_features * self.out_features * self.count

    @property
    def bias_params(self) -> int:
        return self.out_features * self.count if self.bias else 0


@dataclass(frozen=True)
class ComponentParams:
    name: str
    linear_weight: int  # weights of Linear layers (quantizable)
    linear_layers: int  # number of Linear modules
    other: int  # everything else: biases, norms, embeddings, conv, positional tables, gates

    @property
    def total(self) -> int:
        return self.linear_weight + self.other

    def to_dict(self) -> dict[str, int]:
        return {"total": self.total, "linear_weight": self.linear_weight, "linear_layers": self.linear_layers,
                "other": self.other}


@dataclass(frozen=True)
class ParamCount:
    components: tuple[ComponentParams, ...]
    linears: tuple[LinearGroup, ...]

    def __getitem__(self, name: str) -> ComponentParams:
        for c in self.components:
            if c.name == name:
                return c
        raise KeyError(name)

    @property
    def total(self) -> int:
        return sum(c.total for c in self.components)

    def linear_groups(self, component: str) -> list[LinearGroup]:
        return [g for g in self.linears if g.component == component]

    def to_dict(self) -> dict[str, Any]:
        return {"total": self.total, "components": {c.name: c.to_dict() for c in self.components}}


# ------------------------------------------------------------------------------------------ arithmetic


def _vision_clip(cfg: VlmConfig) -> tuple[list[LinearGroup], int]:
    """transformers CLIPVisionModel (the LLaVA vision tower): all layers are built even when a middle
    layer's hidden state is the one used (``vision_feature_layer=-2``)."""
    v = cfg.vision
    d, i, n = v.hidden_size, v.intermediate_size, v.num_hidden_layers
    lin = [
        LinearGroup("vision_tower", "encoder.layers.*.self_attn.{q,k,v,out}_proj", d, d, True, 4 * n),
        LinearGroup("vision_tower", "encoder.layers.*.mlp.fc1", d, i, True, n),
        LinearGroup("vision_tower", "encoder.layers.*.mlp.fc2", i, d, True, n),
    ]
    other = (
        v.num_channels * v.patch_size**2 * d  # patch embedding conv (no bias)
        + d  # class embedding
        + v.tokens_per_tile * d  # position embedding
        + 2 * d  # pre_layrnorm
        + n * 2 * 2 * d  # layer_norm1/2
        + 2 * d  # post_layernorm
    )
    return lin, other


def _vision_mllama(cfg: VlmConfig) -> tuple[list[LinearGroup], int]:
    """transformers MllamaVisionModel: 32 local + 8 gated global layers, tiled positional tables."""
    v = cfg.vision
    d, i = v.hidden_size, v.intermediate_size
    n = v.num_hidden_layers + v.num_global_layers
    tiles, tokens = v.max_num_tiles, v.tokens_per_tile
    ar_ids = len(v.supported_aspect_ratios) + 1  # max_aspect_ratio_id + 1 rows
    lin = [
        LinearGroup("vision_tower", "{transformer,global_transformer}.layers.*.self_attn.{q,k,v,o}_proj", d, d, False, 4 * n),
        LinearGroup("vision_tower", "{transformer,global_transformer}.layers.*.mlp.fc1", d, i, True, n),
        LinearGroup("vision_tower", "{transformer,global_transformer}.layers.*.mlp.fc2", i, d, True, n),
    ]
    other = (
        v.num_channels * v.patch_size**2 * d  # patch embedding conv (no bias)
        + d  # class embedding
        + 1 + tokens * d + ar_ids * tiles * tokens * d  # gated positional embedding + tile position table
        + 2 * (ar_ids * tiles * d + 1)  # pre/post tile positional embeddings (gated)
        + 2 * 2 * d  # layernorm_pre / layernorm_post
        + n * 2 * 2 * d  # two LayerNorms per layer
        + 2 * v.num_global_layers  # gate_attn / gate_ffn of the global layers
    )
    return lin, other


def _connector(cfg: VlmConfig) -> tuple[list[LinearGroup], int]:
    h = cfg.text.hidden_size
    if cfg.family == "mllama":
        return [LinearGroup("connector", "multi_modal_projector", cfg.vision.vision_output_dim, h, True, 1)], 0
    d_in = cfg.vision.hidden_size * len(cfg.vision_feature_layer)
    b = cfg.projector_bias
    lin = [
        LinearGroup("connector", "multi_modal_projector.linear_1", d_in, h, b, 1),
        LinearGroup("connector", "multi_modal_projector.linear_2", h, h, b, 1),
    ]
    return lin, (h if cfg.family == "llava_next" else 0)  # image_newline


def _llm(cfg: VlmConfig) -> tuple[list[LinearGroup], int]:
    t = cfg.text
    h, i, hd = t.hidden_size, t.intermediate_size, t.head_dim
    q_out, kv_out = t.num_attention_heads * hd, t.num_key_value_heads * hd
    n_self, n_cross = t.self_attention_layers, len(t.cross_attention_layers)
    n_all = t.num_hidden_layers
    ab, mb = t.attention_bias, t.mlp_bias
    lin = [
        LinearGroup("llm_backbone", "layers.*.self_attn.q_proj", h, q_out, ab, n_self),
        LinearGroup("llm_backbone", "layers.*.self_attn.{k,v}_proj", h, kv_out, ab, 2 * n_self),
        LinearGroup("llm_backbone", "layers.*.self_attn.o_proj", q_out, h, ab, n_self),
        LinearGroup("llm_backbone", "layers.*.mlp.{gate,up}_proj", h, i, mb, 2 * n_all),
        LinearGroup("llm_backbone", "layers.*.mlp.down_proj", i, h, mb, n_all),
    ]
    if n_cross:
        lin[3:3] = [
            LinearGroup("llm_backbone", "layers.*.cross_attn.q_proj", h, q_out, False, n_cross),
            LinearGroup("llm_backbone", "layers.*.cross_attn.{k,v}_proj", h, kv_out, False, 2 * n_cross),
            LinearGroup("llm_backbone", "layers.*.cross_attn.o_proj", q_out, h, False, n_cross),
        ]
    other = (
        n_all * 2 * h  # input_layernorm + post_attention_layernorm (RMSNorm: weight only)
        + h  # final norm
        + n_cross * (2 * hd + 2)  # cross_attn q_norm/k_norm + attn/mlp gates
    )
    return [g for g in lin if g.count], other


def count_params(cfg: VlmConfig) -> ParamCount:
    """Parameters per component by arithmetic over the config (no torch, no weights)."""
    if cfg.family == "mllama":
        v_lin, v_other = _vision_mllama(cfg)
    else:
        v_lin, v_other = _vision_clip(cfg)
    c_lin, c_other = _connector(cfg)
    l_lin, l_other = _llm(cfg)
    t = cfg.text
    emb = t.embedding_rows * t.hidden_size
    head_lin = [] if t.tie_word_embeddings else [LinearGroup("lm_head", "lm_head", t.hidden_size, t.vocab_size, False, 1)]
    linears = [*v_lin, *c_lin, *l_lin, *head_lin]
    others = {"vision_tower": v_other, "connector": c_other, "llm_backbone": l_other, "embeddings": emb, "lm_head": 0}
    comps = []
    for name in COMPONENTS:
        groups = [g for g in linears if g.component == name]
        comps.append(
            ComponentParams(
                name,
                linear_weight=sum(g.weight_params for g in groups),
                linear_layers=sum(g.count for g in groups),
                other=others[name] + sum(g.bias_params for g in groups),
            )
        )
    return ParamCount(tuple(comps), tuple(linears))


# ------------------------------------------------------------------------------------------ module tree


def component_of(name: str) -> str:
    """The component of a module or parameter path, for transformers 4.x and 5.x layouts alike
    (``model.vision_tower.encoder...`` / ``vision_tower.encoder...``, ``model.language_model.layers...`` /
    ``language_model.model.layers...``)."""
    parts = name.split(".")
    if "vision_tower" in parts or "vision_model" in parts:
        return "vision_tower"
    if "multi_modal_projector" in parts or "image_newline" in parts:
        return "connector"
    if "embed_tokens" in parts:
        return "embeddings"
    if "lm_head" in parts:
        return "lm_head"
    return "llm_backbone"


def is_linear_like(module: Any) -> bool:
    """nn.Linear and its quantized replacements (bitsandbytes Linear4bit / Linear8bitLt subclass it) and
    other weight-only quantized linears (AWQ ``WQLinear_*``, GPTQ ``QuantLinear``), by class name."""
    import torch

    if isinstance(module, torch.nn.Linear):
        return True
    cls = type(module).__name__
    return "Linear" in cls and not isinstance(module, (torch.nn.ModuleList, torch.nn.ModuleDict, torch.nn.Sequential))


def iter_linear_modules(model: Any) -> Iterator[tuple[str, Any]]:
    for name, module in model.named_modules():
        if name and is_linear_like(module):
            yield name, module


def hf_config_object(cfg: VlmConfig) -> Any:
    """The transformers config object for ``cfg`` (built from the config dict, no hub access)."""
    try:
        import transformers
    except ImportError as exc:
        raise DependencyError(
            "transformers is not installed; it is needed to build the model tree",
            hint="pip install 'vqz-edge[export]'",
        ) from exc
    doc = cfg.hf_dict()
    model_type = doc.get("model_type") or {"llava": "llava", "llava_next": "llava_next", "mllama": "mllama"}[cfg.family]
    doc = {k: v for k, v in doc.items() if k != "model_type"}
    return transformers.CONFIG_MAPPING[model_type](**doc)


def build_meta_model(cfg: VlmConfig) -> Any:
    """The real transformers model class for ``cfg`` on ``torch.device("meta")``: the full module tree,
    no weights, no memory. Used to cross-check the arithmetic and to generate full module paths."""
    import torch
    from transformers import AutoModelForImageTextToText

    hf_cfg = hf_config_object(cfg)
    auto: Any = AutoModelForImageTextToText
    with torch.device("meta"):
        return auto.from_config(hf_cfg)


def count_module_params(model: Any) -> dict[str, dict[str, int]]:
    """Per component: total parameters, Linear weight parameters and Linear module count of a model."""
    out = {c: {"total": 0, "linear_weight": 0, "linear_layers": 0} for c in COMPONENTS}
    for name, p in model.named_parameters():
        out[component_of(name)]["total"] += int(p.numel())
    for name, module in iter_linear_modules(model):
        comp = out[component_of(name)]
        comp["linear_layers"] += 1
        w = getattr(module, "weight", None)
        if w is not None:
            comp["linear_weight"] += int(module.in_features * module.out_features) if hasattr(module, "in_features") else int(w.numel())
    return out


def count_params_meta(cfg: VlmConfig) -> dict[str, dict[str, int]]:
    """:func:`count_module_params` of the meta-device model built from ``cfg``."""
    return count_module_params(build_meta_model(cfg))


def compare_counts(arith: ParamCount, measured: Mapping[str, Mapping[str, int]]) -> list[str]:
    """Differences between the arithmetic and a measured count, one line each (empty: they agree)."""
    diffs = []
    for c in arith.components:
        m = measured[c.name]
        for key, mine in (("total", c.total), ("linear_weight", c.linear_weight), ("linear_layers", c.linear_layers)):
            if int(m[key]) != mine:
                diffs.append(f"{c.name}.{key}: arithmetic {mine:,} != model {int(m[key]):,}")
    return diffs
