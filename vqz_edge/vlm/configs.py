"""Vision-language model configs: the shipped published configs and a strict parser for config.json files.

A VLM config is read into :class:`VlmConfig` (frozen, validated) from a shipped name
(``llava-1.5-7b``...), a ``config.json`` file, or a model directory containing one. Only the keys the
planner needs are read; every error names the key (``text_config.hidden_size``) and says what is allowed.

Hub configs often leave sizes at their transformers class defaults (``llava-hf/llava-1.5-7b-hf`` does not
state ``hidden_size``); a key that is absent takes the default of the sub-config's class exactly as
transformers would when it builds the model, and is listed in :attr:`VlmConfig.defaulted` so the plan
says so. :data:`TEXT_DEFAULTS` / :data:`VISION_DEFAULTS` are the defaults of transformers 5.24; a test
compares them with the installed transformers so a drift is caught.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .errors import VlmConfigError

CONFIG_DIR = Path(__file__).resolve().parent / "configs"

#: Shipped published configs (``vqz_edge/vlm/configs/<name>.json``), in table order.
SHIPPED = (
    "llava-1.5-7b",
    "llava-1.5-13b",
    "llava-next-mistral-7b",
    "llama-3.2-11b-vision",
    "llama-3.2-90b-vision",
)

#: Top-level ``model_type`` -> family. The family decides the module tree and the token arithmetic.
FAMILIES = {"llava": "llava", "llava_next": "llava_next", "mllama": "mllama"}
ARCHITECTURES = {
    "LlavaForConditionalGeneration": "llava",
    "LlavaNextForConditionalGeneration": "llava_next",
    "MllamaForConditionalGeneration": "mllama",
}
#: Which sub-config model types each family accepts.
TEXT_TYPES = {"llava": ("llama", "mistral"), "llava_next": ("llama", "mistral"), "mllama": ("mllama_text_model",)}
VISION_TYPES = {"llava": ("clip_vision_model",), "llava_next": ("clip_vision_model",), "mllama": ("mllama_vision_model",)}

# Defaults of the transformers 5.24 config classes for the keys read here (None: derived, see below).
TEXT_DEFAULTS: dict[str, dict[str, Any]] = {
    "llama": {
        "vocab_size": 32000, "hidden_size": 4096, "intermediate_size": 11008, "num_hidden_layers": 32,
        "num_attention_heads": 32, "num_key_value_heads": None, "head_dim": None,
        "max_position_embeddings": 2048, "tie_word_embeddings": False, "attention_bias": False, "mlp_bias": False,
    },
    "mistral": {
        "vocab_size": 32000, "hidden_size": 4096, "intermediate_size": 14336, "num_hidden_layers": 32,
        "num_attention_heads": 32, "num_key_value_heads": 8, "head_dim": None,
        "max_position_embeddings": 131072, "tie_word_embeddings": False,
    },
    "mllama_text_model": {
        "vocab_size": 128256, "hidden_size": 4096, "intermediate_size": 14336, "num_hidden_layers": 40,
        "num_attention_heads": 32, "num_key_value_heads": 8, "max_position_embeddings": 131072,
        "tie_word_embeddings": False, "cross_attention_layers": [3, 8, 13, 18, 23, 28, 33, 38],
    },
}
VISION_DEFAULTS: dict[str, dict[str, Any]] = {
    "clip_vision_model": {
        "hidden_size": 768, "intermediate_size": 3072, "num_hidden_layers": 12, "num_attention_heads": 12,
        "image_size": 224, "patch_size": 32, "num_channels": 3,
    },
    "mllama_vision_model": {
        "hidden_size": 1280, "intermediate_size": 5120, "num_hidden_layers": 32, "num_global_layers": 8,
        "attention_heads": 16, "image_size": 448, "patch_size": 14, "num_channels": 3, "max_num_tiles": 4,
        "vision_output_dim": 7680, "intermediate_layers_indices": [3, 7, 15, 23, 30],
        "supported_aspect_ratios": [[1, 1], [1, 2], [1, 3], [1, 4], [2, 1], [2, 2], [3, 1], [4, 1]],
    },
}
TOP_DEFAULTS: dict[str, Any] = {
    "projector_hidden_act": "gelu",
    "multimodal_projector_bias": True,
    "vision_feature_layer": -2,
    "vision_feature_select_strategy": "default",
    "image_grid_pinpoints": [[336, 672], [672, 336], [672, 672], [1008, 336], [336, 1008]],
}


@dataclass(frozen=True)
class TextDims:
    """The LLM backbone's shapes."""

    model_type: str
    vocab_size: int
    hidden_size: int
    intermediate_size: int
    num_hidden_layers: int
    num_attention_heads: int
    num_key_value_heads: int
    head_dim: int
    max_position_embeddings: int
    tie_word_embeddings: bool = False
    attention_bias: bool = False
    mlp_bias: bool = False
    cross_attention_layers: tuple[int, ...] = ()
    extra_embedding_rows: int = 0  # Mllama's embed_tokens has vocab_size + 8 rows

    @property
    def self_attention_layers(self) -> int:
        return self.num_hidden_layers - len(self.cross_attention_layers)

    @property
    def embedding_rows(self) -> int:
        return self.vocab_size + self.extra_embedding_rows


@dataclass(frozen=True)
class VisionDims:
    """The vision tower's shapes (CLIP for LLaVA / LLaVA-NeXT, the Mllama tiled ViT for Llama 3.2 Vision)."""

    model_type: str
    hidden_size: int
    intermediate_size: int
    num_hidden_layers: int
    num_attention_heads: int
    image_size: int
    patch_size: int
    num_channels: int = 3
    num_global_layers: int = 0
    max_num_tiles: int = 1
    vision_output_dim: int = 0
    intermediate_layers_indices: tuple[int, ...] = ()
    supported_aspect_ratios: tuple[tuple[int, int], ...] = ()

    @property
    def patches_per_tile(self) -> int:
        return (self.image_size // self.patch_size) ** 2

    @property
    def tokens_per_tile(self) -> int:
        """Sequence length of one tile through the encoder: the patches plus the CLS token."""
        return self.patches_per_tile + 1


@dataclass(frozen=True)
class VlmConfig:
    """A validated vision-language model config (only what the planner, exporter and audit need)."""

    name: str
    family: str  # llava | llava_next | mllama
    architecture: str
    text: TextDims
    vision: VisionDims
    origin: str  # "shipped:<name>" or the file path
    projector_bias: bool = True
    projector_hidden_act: str = "gelu"
    vision_feature_layer: tuple[int, ...] = (-2,)
    vision_feature_select_strategy: str = "default"
    image_grid_pinpoints: tuple[tuple[int, int], ...] = ()
    defaulted: tuple[str, ...] = ()  # keys absent from the file that took their transformers default
    source: Mapping[str, Any] | None = None  # citation block of a shipped config
    raw: Mapping[str, Any] = field(default_factory=dict, repr=False, compare=False)  # the config.json content

    def hf_dict(self) -> dict[str, Any]:
        """The config.json content without vqz-edge's own keys (for transformers' config classes)."""
        return {k: v for k, v in self.raw.items() if not k.startswith("_vqz")}

    def summary(self) -> dict[str, Any]:
        t, v = self.text, self.vision
        return {
            "name": self.name,
            "family": self.family,
            "architecture": self.architecture,
            "origin": self.origin,
            "text": {
                "model_type": t.model_type, "hidden_size": t.hidden_size, "intermediate_size": t.intermediate_size,
                "layers": t.num_hidden_layers, "cross_attention_layers": list(t.cross_attention_layers),
                "heads": t.num_attention_heads, "kv_heads": t.num_key_value_heads, "head_dim": t.head_dim,
                "vocab_size": t.vocab_size, "max_position_embeddings": t.max_position_embeddings,
            },
            "vision": {
                "model_type": v.model_type, "hidden_size": v.hidden_size, "intermediate_size": v.intermediate_size,
                "layers": v.num_hidden_layers, "global_layers": v.num_global_layers, "heads": v.num_attention_heads,
                "image_size": v.image_size, "patch_size": v.patch_size, "max_num_tiles": v.max_num_tiles,
            },
            "defaulted": list(self.defaulted),
            "source": dict(self.source) if self.source else None,
        }


# --------------------------------------------------------------------------------------------- parsing


class _Reader:
    """Reads typed values out of one (sub)config, naming ``prefix.key`` in every error."""

    def __init__(self, doc: Mapping[str, Any], prefix: str, origin: str, defaults: Mapping[str, Any]) -> None:
        self.doc, self.prefix, self.origin, self.defaults = doc, prefix, origin, defaults
        self.defaulted: list[str] = []

    def key(self, name: str) -> str:
        return f"{self.prefix}{name}"

    def fail(self, name: str, message: str, hint: str | None = None) -> VlmConfigError:
        return VlmConfigError(f"{self.origin}: {self.key(name)} {message}", hint=hint)

    def raw(self, name: str, *aliases: str) -> Any:
        for n in (name, *aliases):
            if n in self.doc and self.doc[n] is not None:
                return self.doc[n]
        if name in self.defaults and self.defaults[name] is not None:
            self.defaulted.append(self.key(name))
            return self.defaults[name]
        raise self.fail(name, "is missing", hint=f"add {self.key(name)!r} to the config (no default is known for it)")

    def get_int(self, name: str, *aliases: str, minimum: int = 1) -> int:
        value = self.raw(name, *aliases)
        if isinstance(value, bool) or not isinstance(value, int):
            raise self.fail(name, f"must be an integer, got {value!r}")
        if value < minimum:
            raise self.fail(name, f"must be >= {minimum}, got {value}")
        return value

    def opt_int(self, name: str, fallback: int, *aliases: str) -> int:
        if any(n in self.doc and self.doc[n] is not None for n in (name, *aliases)) or (
            self.defaults.get(name) is not None
        ):
            return self.get_int(name, *aliases)
        return fallback

    def get_bool(self, name: str, fallback: bool = False) -> bool:
        value = self.doc.get(name, self.defaults.get(name, fallback))
        if value is None:
            return fallback
        if not isinstance(value, bool):
            raise self.fail(name, f"must be true or false, got {value!r}")
        return value

    def int_list(self, name: str) -> tuple[int, ...]:
        value = self.raw(name)
        if not isinstance(value, list) or not all(isinstance(x, int) and not isinstance(x, bool) for x in value):
            raise self.fail(name, f"must be a list of integers, got {value!r}")
        return tuple(value)

    def pairs(self, name: str) -> tuple[tuple[int, int], ...]:
        value = self.raw(name)
        ok = isinstance(value, list) and all(
            isinstance(p, list) and len(p) == 2 and all(isinstance(x, int) and not isinstance(x, bool) and x > 0 for x in p)
            for p in value
        )
        if not ok or not value:
            raise self.fail(name, f"must be a non-empty list of [a, b] positive integer pairs, got {value!r}")
        return tuple((int(a), int(b)) for a, b in value)


def _sub(doc: Mapping[str, Any], key: str, origin: str, allowed: Sequence[str]) -> tuple[Mapping[str, Any], str]:
    sub = doc.get(key)
    if sub is None:
        raise VlmConfigError(
            f"{origin}: {key} is missing",
            hint=f"a {doc.get('model_type')} config needs a {key!r} object with a model_type in {list(allowed)}",
        )
    if not isinstance(sub, Mapping):
        raise VlmConfigError(f"{origin}: {key} must be an object, got {type(sub).__name__}")
    mt = sub.get("model_type")
    if mt is None:
        raise VlmConfigError(f"{origin}: {key}.model_type is missing", hint=f"allowed: {', '.join(allowed)}")
    if mt not in allowed:
        raise VlmConfigError(
            f"{origin}: {key}.model_type {mt!r} is not supported for a {doc.get('model_type')} model",
            hint=f"allowed: {', '.join(allowed)}",
        )
    return sub, str(mt)


def _family(doc: Mapping[str, Any], origin: str) -> tuple[str, str]:
    mt = doc.get("model_type")
    archs = doc.get("architectures") or []
    arch = str(archs[0]) if isinstance(archs, list) and archs else ""
    if mt is None:
        if arch in ARCHITECTURES:
            return ARCHITECTURES[arch], arch
        raise VlmConfigError(
            f"{origin}: model_type is missing" + (f" (architectures {archs})" if archs else ""),
            hint=f"a vision-language config.json has a model_type in {sorted(FAMILIES)}",
        )
    if mt in FAMILIES:
        family = FAMILIES[str(mt)]
        return family, arch or next(a for a, f in ARCHITECTURES.items() if f == family)
    if "vision_config" not in doc:
        raise VlmConfigError(
            f"{origin}: model_type {mt!r} is not a vision-language model: the config has no vision_config"
            + (f" (architectures {archs})" if archs else ""),
            hint=f"vlm commands take a LLaVA / LLaVA-NeXT / Mllama config (model_type in {sorted(FAMILIES)}); "
            "plain vision models go through `vqz-edge export`",
        )
    raise VlmConfigError(
        f"{origin}: model_type {mt!r} is an architecture vqz-edge's VLM planner does not know",
        hint=f"supported model_type values: {', '.join(sorted(FAMILIES))}",
    )


def _text(doc: Mapping[str, Any], family: str, origin: str) -> tuple[TextDims, list[str]]:
    sub, mt = _sub(doc, "text_config", origin, TEXT_TYPES[family])
    r = _Reader(sub, "text_config.", origin, TEXT_DEFAULTS[mt])
    hidden = r.get_int("hidden_size")
    heads = r.get_int("num_attention_heads")
    kv = r.opt_int("num_key_value_heads", heads)
    if heads % kv:
        raise r.fail("num_key_value_heads", f"({kv}) must divide num_attention_heads ({heads})")
    if "head_dim" in sub and sub["head_dim"] is not None:
        head_dim = r.get_int("head_dim")
    else:
        if hidden % heads:
            raise r.fail("hidden_size", f"({hidden}) is not a multiple of num_attention_heads ({heads}) and no head_dim is given")
        head_dim = hidden // heads
    layers = r.get_int("num_hidden_layers")
    cross: tuple[int, ...] = ()
    if mt == "mllama_text_model":
        cross = r.int_list("cross_attention_layers")
        bad = [i for i in cross if not 0 <= i < layers]
        if bad or len(set(cross)) != len(cross):
            raise r.fail("cross_attention_layers", f"must be distinct layer indices in 0..{layers - 1}, got {list(cross)}")
    dims = TextDims(
        model_type=mt,
        vocab_size=r.get_int("vocab_size"),
        hidden_size=hidden,
        intermediate_size=r.get_int("intermediate_size"),
        num_hidden_layers=layers,
        num_attention_heads=heads,
        num_key_value_heads=kv,
        head_dim=head_dim,
        max_position_embeddings=r.get_int("max_position_embeddings"),
        tie_word_embeddings=bool(r.get_bool("tie_word_embeddings") or doc.get("tie_word_embeddings") is True),
        attention_bias=r.get_bool("attention_bias"),
        mlp_bias=r.get_bool("mlp_bias"),
        cross_attention_layers=tuple(sorted(cross)),
        extra_embedding_rows=8 if mt == "mllama_text_model" else 0,
    )
    return dims, r.defaulted


def _vision(doc: Mapping[str, Any], family: str, origin: str) -> tuple[VisionDims, list[str]]:
    sub, mt = _sub(doc, "vision_config", origin, VISION_TYPES[family])
    r = _Reader(sub, "vision_config.", origin, VISION_DEFAULTS[mt])
    image, patch = r.get_int("image_size"), r.get_int("patch_size")
    if image % patch:
        raise r.fail("image_size", f"({image}) is not a multiple of patch_size ({patch})")
    hidden = r.get_int("hidden_size")
    if mt == "mllama_vision_model":
        layers = r.get_int("num_hidden_layers")
        indices = r.int_list("intermediate_layers_indices")
        if any(not 0 <= i <= layers for i in indices):
            raise r.fail("intermediate_layers_indices", f"must be hidden-state indices in 0..{layers}, got {list(indices)}")
        out_dim = r.get_int("vision_output_dim")
        if out_dim != hidden * (len(indices) + 1):
            raise r.fail(
                "vision_output_dim",
                f"({out_dim}) must equal hidden_size x (len(intermediate_layers_indices) + 1) = "
                f"{hidden} x {len(indices) + 1} = {hidden * (len(indices) + 1)}",
            )
        dims = VisionDims(
            model_type=mt, hidden_size=hidden, intermediate_size=r.get_int("intermediate_size"), num_hidden_layers=layers,
            num_attention_heads=r.get_int("attention_heads", "num_attention_heads"), image_size=image, patch_size=patch,
            num_channels=r.get_int("num_channels"), num_global_layers=r.get_int("num_global_layers", minimum=0),
            max_num_tiles=r.get_int("max_num_tiles"), vision_output_dim=out_dim, intermediate_layers_indices=indices,
            supported_aspect_ratios=r.pairs("supported_aspect_ratios"),
        )
    else:
        heads = r.get_int("num_attention_heads")
        if hidden % heads:
            raise r.fail("hidden_size", f"({hidden}) is not a multiple of num_attention_heads ({heads})")
        dims = VisionDims(
            model_type=mt, hidden_size=hidden, intermediate_size=r.get_int("intermediate_size"),
            num_hidden_layers=r.get_int("num_hidden_layers"), num_attention_heads=heads, image_size=image,
            patch_size=patch, num_channels=r.get_int("num_channels"),
        )
    return dims, r.defaulted


def parse_vlm_config(doc: Mapping[str, Any], origin: str = "<config>", name: str | None = None) -> VlmConfig:
    """Validate a config.json-like mapping into a :class:`VlmConfig`; errors name the offending key."""
    if not isinstance(doc, Mapping):
        raise VlmConfigError(f"{origin}: a model config must be a JSON object, got {type(doc).__name__}")
    family, arch = _family(doc, origin)
    text, d_text = _text(doc, family, origin)
    vision, d_vision = _vision(doc, family, origin)
    top = _Reader(doc, "", origin, TOP_DEFAULTS)
    defaulted = d_text + d_vision
    layer_raw = doc.get("vision_feature_layer", TOP_DEFAULTS["vision_feature_layer"])
    feature_layers: tuple[int, ...] = ()
    pinpoints: tuple[tuple[int, int], ...] = ()
    strategy = "default"
    if family in ("llava", "llava_next"):
        if isinstance(layer_raw, int) and not isinstance(layer_raw, bool):
            feature_layers = (layer_raw,)
        elif isinstance(layer_raw, list) and layer_raw and all(isinstance(x, int) for x in layer_raw):
            feature_layers = tuple(layer_raw)
        else:
            raise top.fail("vision_feature_layer", f"must be an integer or a list of integers, got {layer_raw!r}")
        n = vision.num_hidden_layers
        if any(not -(n + 1) <= i <= n for i in feature_layers):
            raise top.fail("vision_feature_layer", f"{layer_raw!r} is outside the {n + 1} hidden states of the vision tower")
        strategy = str(doc.get("vision_feature_select_strategy", "default"))
        if strategy not in ("default", "full"):
            raise top.fail("vision_feature_select_strategy", f"must be 'default' or 'full', got {strategy!r}")
        if "vision_feature_layer" not in doc:
            defaulted.append("vision_feature_layer")
        if family == "llava_next":
            if "image_grid_pinpoints" not in doc:
                defaulted.append("image_grid_pinpoints")
            pinpoints = top.pairs("image_grid_pinpoints")
            bad = [p for p in pinpoints if p[0] % vision.image_size or p[1] % vision.image_size]
            if bad:
                raise top.fail("image_grid_pinpoints", f"entries {bad} are not multiples of the tile size {vision.image_size}")
    source = doc.get("_vqz_source") if isinstance(doc.get("_vqz_source"), Mapping) else None
    cfg_name = name or (str(source["name"]) if source and "name" in source else Path(origin).parent.name or "model")
    return VlmConfig(
        name=cfg_name,
        family=family,
        architecture=arch,
        text=text,
        vision=vision,
        origin=origin,
        projector_bias=top.get_bool("multimodal_projector_bias", True),
        projector_hidden_act=str(doc.get("projector_hidden_act", "gelu")),
        vision_feature_layer=feature_layers,
        vision_feature_select_strategy=strategy,
        image_grid_pinpoints=pinpoints,
        defaulted=tuple(defaulted),
        source=source,
        raw=dict(doc),
    )


# --------------------------------------------------------------------------------------------- loading


def shipped_path(name: str) -> Path:
    if name not in SHIPPED:
        raise VlmConfigError(f"{name!r} is not a shipped config", hint=f"shipped: {', '.join(SHIPPED)}")
    return CONFIG_DIR / f"{name}.json"


def _read_json(path: Path) -> Any:
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise VlmConfigError(f"cannot read model config {path}: {exc.strerror or exc}") from exc
    except UnicodeDecodeError as exc:
        raise VlmConfigError(f"model config {path} is not JSON text (not UTF-8: {exc.reason} at byte {exc.start})") from exc
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise VlmConfigError(f"{path} is not valid JSON (line {exc.lineno}, column {exc.colno}: {exc.msg})") from exc


def load_shipped(name: str) -> VlmConfig:
    return parse_vlm_config(_read_json(shipped_path(name)), origin=f"shipped:{name}", name=name)


def load_vlm_config(ref: str | Path) -> VlmConfig:
    """A shipped name, a ``config.json`` file, or a model directory containing ``config.json``."""
    text = str(ref)
    if text in SHIPPED:
        return load_shipped(text)
    path = Path(text)
    if path.is_dir():
        cfg = path / "config.json"
        if not cfg.is_file():
            raise VlmConfigError(
                f"model directory {path} has no config.json",
                hint="give a transformers model directory (save_pretrained output), a CONFIG.json, or a shipped name",
            )
        return parse_vlm_config(_read_json(cfg), origin=str(cfg), name=path.resolve().name)
    if path.is_file():
        return parse_vlm_config(_read_json(path), origin=str(path))
    raise VlmConfigError(
        f"{text!r} is neither a shipped config, a config file nor a model directory",
        hint=f"shipped configs: {', '.join(SHIPPED)}",
    )
