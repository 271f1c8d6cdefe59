"""Tiny random-initialised VLMs built from configs in code (no hub): LLaVA, LLaVA-NeXT and Mllama with
the real transformers classes, a few hundred thousand parameters each. Tests and the README use them to
exercise export, quantization config and audit on this CPU-only machine in seconds.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

TINY_TEXT_LLAMA: dict[str, Any] = {
    "model_type": "llama", "hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2,
    "num_attention_heads": 4, "num_key_value_heads": 2, "vocab_size": 320, "max_position_embeddings": 512,
    "tie_word_embeddings": False,
}
TINY_CLIP: dict[str, Any] = {
    "model_type": "clip_vision_model", "hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2,
    "num_attention_heads": 4, "image_size": 56, "patch_size": 14, "projection_dim": 32,
}


def tiny_config_dict(family: str = "llava") -> dict[str, Any]:
    """A config.json-like dict of a tiny model of ``family`` (llava | llava_next | mllama)."""
    if family == "llava":
        return {"architectures": ["LlavaForConditionalGeneration"], "model_type": "llava", "image_token_index": 300,
                "vision_feature_layer": -2, "vision_feature_select_strategy": "default",
                "projector_hidden_act": "gelu", "tie_word_embeddings": False,
                "text_config": dict(TINY_TEXT_LLAMA), "vision_config": dict(TINY_CLIP)}
    if family == "llava_next":
        return {"architectures": ["LlavaNextForConditionalGeneration"], "model_type": "llava_next",
                "image_token_index": 300, "vision_feature_layer": -2, "vision_feature_select_strategy": "default",
                "image_grid_pinpoints": [[56, 112], [112, 56], [112, 112]], "projector_hidden_act": "gelu",
                "tie_word_embeddings": False, "use_image_newline_parameter": True,
                "text_config": dict(TINY_TEXT_LLAMA, model_type="mistral", sliding_window=None),
                "vision_config": dict(TINY_CLIP)}
    if family == "mllama":
        return {
            "architectures": ["MllamaForConditionalGeneration"], "model_type": "mllama", "image_token_index": 300,
            "text_config": {
                "model_type": "mllama_text_model", "hidden_size": 64, "intermediate_size": 128,
                "num_hidden_layers": 4, "num_attention_heads": 4, "num_key_value_heads": 2, "vocab_size": 320,
                "cross_attention_layers": [1], "max_position_embeddings": 512, "tie_word_embeddings": False,
                "pad_token_id": 0, "bos_token_id": 1, "eos_token_id": 2,
            },
            "vision_config": {
                "model_type": "mllama_vision_model", "hidden_size": 32, "intermediate_size": 64,
                "num_hidden_layers": 3, "num_global_layers": 1, "attention_heads": 4, "image_size": 28,
                "patch_size": 14, "max_num_tiles": 2, "vision_output_dim": 64, "intermediate_layers_indices": [1],
                "supported_aspect_ratios": [[1, 1], [1, 2], [2, 1]], "num_channels": 3,
            },
        }
    raise ValueError(f"family {family!r} not in ('llava', 'llava_next', 'mllama')")


def build_tiny_model(family: str = "llava", seed: int = 0) -> Any:
    """The real transformers model of a tiny ``family`` config, randomly initialised with ``seed``."""
    import torch

    from .configs import parse_vlm_config
    from .params import hf_config_object

    cfg = parse_vlm_config(tiny_config_dict(family), origin=f"tiny-{family}", name=f"tiny-{family}")
    from transformers import AutoModelForImageTextToText

    torch.manual_seed(seed)
    auto: Any = AutoModelForImageTextToText
    model = auto.from_config(hf_config_object(cfg))
    # Mllama's gates start at 0 (tanh(0) = 0 switches the tile embeddings and cross-attention off); open them
    # so that every parameter influences the outputs that the tests compare.
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("gate") or name.endswith("_gate"):
                p.fill_(0.5)
    return model.eval()


def save_tiny_model(directory: Path, family: str = "llava", seed: int = 0) -> Path:
    """Build a tiny ``family`` model and ``save_pretrained`` it into ``directory`` (config.json + safetensors)."""
    model = build_tiny_model(family, seed)
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(directory)
    return directory
