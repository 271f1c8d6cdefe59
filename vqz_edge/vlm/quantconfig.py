"""The LLM backbone's 4-bit config for transformers + bitsandbytes, with a skip list generated from the
module tree instead of typed by hand.

The trap this exists for: the widely copied ``llm_int8_skip_modules=["vision_tower",
"multi_modal_projector"]`` protects nothing in transformers 5. There the modules live under
``model.vision_tower`` / ``model.multi_modal_projector``; transformers replaces every ``nn.Linear`` by its
full path (``replace_with_bnb_linear`` walks ``named_modules()``) and skips a Linear only when a skip entry
matches *that Linear's* path (``quantizers_utils.should_convert_module``: a prefix up to a module boundary,
a regex with the same boundary, or a suffix). ``"vision_tower"`` is a suffix of the container
``model.vision_tower`` only, so the container is skipped and all of its Linear children are quantized;
and because a user list replaces transformers' default skip of the output embedding, the LM head is
quantized too. The generated list names every Linear under the vision tower and the connector, and the LM
head, by full path -- it works with the prefix/suffix rules of transformers 5 and with the substring rule
of transformers 4.x alike -- and ``vqz-edge vlm audit`` checks the loaded model afterwards.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..errors import InputError
from ..fsutil import atomic_write_json, read_json
from .configs import VlmConfig
from .params import VISION_SIDE, build_meta_model, component_of, iter_linear_modules

QUANT_CONFIG_FILE = "quantization_config.json"
#: What people copy from blog posts and model cards; kept here for the regression test and the docs.
NAIVE_SKIP_MODULES = ("vision_tower", "multi_modal_projector")


def generated_skip_modules(model: Any) -> list[str]:
    """Full paths of every Linear under the vision tower and the connector, plus the LM head, in module order."""
    return [name for name, _ in iter_linear_modules(model) if component_of(name) in (*VISION_SIDE, "lm_head")]


def skip_modules_for_config(cfg: VlmConfig) -> list[str]:
    """:func:`generated_skip_modules` of the model built from ``cfg`` on the meta device (no weights needed)."""
    return generated_skip_modules(build_meta_model(cfg))


def nf4_quantization_config(
    skip_modules: Sequence[str], *, compute_dtype: str = "float16", double_quant: bool = True
) -> dict[str, Any]:
    """A ``transformers.BitsAndBytesConfig``-compatible dict (``BitsAndBytesConfig.from_dict(...)``) for NF4."""
    if compute_dtype not in ("float16", "bfloat16", "float32"):
        raise ValueError(f"compute_dtype {compute_dtype!r} not in ('float16', 'bfloat16', 'float32')")
    return {
        "quant_method": "bitsandbytes",
        "load_in_4bit": True,
        "load_in_8bit": False,
        "bnb_4bit_quant_type": "nf4",
        "bnb_4bit_use_double_quant": bool(double_quant),
        "bnb_4bit_compute_dtype": compute_dtype,
        "bnb_4bit_quant_storage": "uint8",
        "llm_int8_skip_modules": list(skip_modules),
        "llm_int8_threshold": 6.0,
        "llm_int8_has_fp16_weight": False,
        "llm_int8_enable_fp32_cpu_offload": False,
    }


def write_quantization_config(path: Path, config: Mapping[str, Any]) -> Path:
    atomic_write_json(Path(path), dict(config))
    return Path(path)


def read_quantization_config(path: Path) -> dict[str, Any]:
    """A bitsandbytes quantization config (ours, or any ``BitsAndBytesConfig.to_dict()`` JSON)."""
    path = Path(path)
    doc = read_json(path, "quantization config", InputError)
    if isinstance(doc, Mapping) and isinstance(doc.get("quantization_config"), Mapping):
        doc = doc["quantization_config"]  # a whole config.json was given
    if not isinstance(doc, Mapping):
        raise InputError(f"quantization config {path} must be a JSON object")
    skip = doc.get("llm_int8_skip_modules")
    if skip is not None and (not isinstance(skip, list) or not all(isinstance(s, str) for s in skip)):
        raise InputError(f"{path}: llm_int8_skip_modules must be a list of strings or null, got {skip!r}")
    if not (doc.get("load_in_4bit") or doc.get("load_in_8bit")):
        raise InputError(f"{path}: neither load_in_4bit nor load_in_8bit is true; this is not a bitsandbytes config")
    return dict(doc)


# --------------------------------------------------------------------------------------- skip matching


def _transformers4_matches(module_name: str, entry: str) -> bool:
    # transformers 4.x _replace_with_bnb_linear: skip when `entry + "."` occurs in the module path or equals it
    return (entry + ".") in module_name or entry == module_name


def skip_matcher() -> tuple[Callable[[str, str], bool], str]:
    """``(matches(module_name, entry), description)`` with the installed transformers' own rule.

    transformers >= 5 decides with ``quantizers.quantizers_utils.should_convert_module``; 4.x used a
    substring test inside ``_replace_with_bnb_linear`` (reproduced above). Without transformers, the 5.x rule
    is unavailable and the 4.x rule is used.
    """
    try:
        import transformers
        from transformers.quantizers.quantizers_utils import should_convert_module
    except ImportError:
        return _transformers4_matches, "transformers 4.x substring rule (transformers 5 not importable)"

    def matches(module_name: str, entry: str) -> bool:
        return not should_convert_module(module_name, [entry])

    return matches, f"transformers {transformers.__version__} quantizers_utils.should_convert_module"


@dataclass(frozen=True)
class SkipEntryMatch:
    entry: str
    modules: tuple[str, ...]  # every module path the entry matches
    linears: tuple[str, ...]  # the Linear layers among them: what the entry actually keeps unquantized

    @property
    def problem(self) -> str | None:
        if not self.modules:
            return f"skip entry {self.entry!r} matches no module"
        if not self.linears:
            return (f"skip entry {self.entry!r} matches only {', '.join(self.modules[:3])}"
                    f"{' ...' if len(self.modules) > 3 else ''} and no Linear layer: it keeps nothing in full precision "
                    "(each Linear is converted by its own full path)")
        return None

    def to_dict(self) -> dict[str, Any]:
        return {"entry": self.entry, "modules": len(self.modules), "linears": len(self.linears),
                "first_modules": list(self.modules[:5]), "problem": self.problem}


def match_skip_entries(model: Any, entries: Sequence[str]) -> list[SkipEntryMatch]:
    """What each skip entry matches in ``model``'s module tree, with the installed transformers' rule."""
    matches, _ = skip_matcher()
    names = [n for n, _ in model.named_modules() if n]
    linear_names = {n for n, _ in iter_linear_modules(model)}
    out = []
    for entry in entries:
        hit = tuple(n for n in names if matches(n, entry))
        out.append(SkipEntryMatch(entry, hit, tuple(n for n in hit if n in linear_names)))
    return out
