"""Tiny random-initialised VLMs built from configs in code (no hub): LLaVA, LLaVA-NeXT and Mllama with
the real transformers classes, a few hundred thousand parameters each. Tests and the README use them to
exercise export, quantization config, audit, ``vlm run`` and ``vlm compare`` on this CPU-only machine in
seconds. Their text is meaningless (random weights): they prove the pipeline, never quality.

:func:`save_tiny_model` also writes a processor (transformers' own ``LlavaProcessor`` / ``MllamaProcessor``)
with a byte-level BPE tokenizer built in code: ids 0-255 are the 256 bytes, 256-260 ``<pad> <s> </s> <unk>
<|python_tag|>``, 261 the one merge (" t"), 300 the image token, the rest unused specials -- 320 ids, the tiny
models' vocabulary.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from .configs import parse_vlm_config
from .params import hf_config_object

PAD_ID, BOS_ID, EOS_ID, UNK_ID, PYTHON_TAG_ID, MERGED_ID, IMAGE_ID = 256, 257, 258, 259, 260, 261, 300
TINY_VOCAB = 320
TINY_TEXT_LLAMA: dict[str, Any] = {
    "model_type": "llama", "hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2,
    "num_attention_heads": 4, "num_key_value_heads": 2, "vocab_size": TINY_VOCAB, "max_position_embeddings": 512,
    "tie_word_embeddings": False, "pad_token_id": PAD_ID, "bos_token_id": BOS_ID, "eos_token_id": EOS_ID,
}
#: Every Linear has in_features >= 64: bitsandbytes' CPU backend cannot run a 4-bit Linear narrower than its
#: 64-weight quantization block (``vlm compare``'s all-4-bit variant runs the vision tower in NF4).
TINY_CLIP: dict[str, Any] = {
    "model_type": "clip_vision_model", "hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2,
    "num_attention_heads": 4, "image_size": 56, "patch_size": 14, "projection_dim": 64,
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
                "pad_token_id": PAD_ID, "bos_token_id": BOS_ID, "eos_token_id": EOS_ID,
            },
            "vision_config": {
                "model_type": "mllama_vision_model", "hidden_size": 64, "intermediate_size": 128,
                "num_hidden_layers": 3, "num_global_layers": 1, "attention_heads": 4, "image_size": 28,
                "patch_size": 14, "max_num_tiles": 2, "vision_output_dim": 128, "intermediate_layers_indices": [1],
                "supported_aspect_ratios": [[1, 1], [1, 2], [2, 1]], "num_channels": 3,
            },
        }
    raise ValueError(f"family {family!r} not in ('llava', 'llava_next', 'mllama')")


def build_tiny_model(family: str = "llava", seed: int = 0) -> Any:
    """The real transformers model of a tiny ``family`` config, randomly initialised with ``seed``."""
    import torch

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


def tiny_tokenizer(family: str = "llava") -> Any:
    """A byte-level ``PreTrainedTokenizerFast`` over the tiny models' 320 ids (see the module docstring)."""
    from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    byte_chars = sorted(pre_tokenizers.ByteLevel.alphabet(), key=ord)  # GPT-2's printable stand-ins for 0..255
    vocab = {c: i for i, c in enumerate(byte_chars)}
    specials = {i: f"<extra_{i}>" for i in range(len(vocab), TINY_VOCAB)}
    specials.update({PAD_ID: "<pad>", BOS_ID: "<s>", EOS_ID: "</s>", UNK_ID: "<unk>", PYTHON_TAG_ID: "<|python_tag|>",
                     IMAGE_ID: "<|image|>" if family == "mllama" else "<image>"})
    vocab.update({name: i for i, name in specials.items()})
    # one merge (" t" -> one token): a BPE model with merges, which llama.cpp requires of a "gpt2" GGUF vocabulary
    merged = ("\u0120", "t")  # byte-level BPE writes the space as U+0120 ("Ġ")
    del specials[MERGED_ID]
    vocab = {k: v for k, v in vocab.items() if v != MERGED_ID}
    vocab["".join(merged)] = MERGED_ID
    tok = Tokenizer(models.BPE(vocab=vocab, merges=[merged], unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.add_special_tokens([AddedToken(name, special=True) for _, name in sorted(specials.items())])
    fast: Any = PreTrainedTokenizerFast
    extra = {} if family == "mllama" else {"extra_special_tokens": {"image_token": "<image>"}}
    return fast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>", pad_token="<pad>", unk_token="<unk>", **extra)


def tiny_processor(family: str = "llava") -> Any:
    """transformers' own processor of ``family`` for the tiny config: image processor + :func:`tiny_tokenizer`."""
    cfg = tiny_config_dict(family)
    vision = cfg["vision_config"]
    size = int(vision["image_size"])
    tokenizer = tiny_tokenizer(family)
    if family == "llava":
        from transformers import CLIPImageProcessor, LlavaProcessor

        images = CLIPImageProcessor(size={"shortest_edge": size}, crop_size={"height": size, "width": size})
        llava: Any = LlavaProcessor
        return llava(image_processor=images, tokenizer=tokenizer, patch_size=int(vision["patch_size"]),
                     vision_feature_select_strategy=cfg["vision_feature_select_strategy"],
                     num_additional_image_tokens=1)
    if family == "mllama":
        from transformers import MllamaImageProcessor, MllamaProcessor

        tiles: Any = MllamaImageProcessor
        mllama: Any = MllamaProcessor
        return mllama(image_processor=tiles(size={"height": size, "width": size},
                                            max_image_tiles=int(vision["max_num_tiles"])), tokenizer=tokenizer)
    raise ValueError(f"no tiny processor for family {family!r} (llava, mllama)")


def save_tiny_model(directory: Path, family: str = "llava", seed: int = 0) -> Path:
    """Build a tiny ``family`` model and ``save_pretrained`` it into ``directory`` (config.json + safetensors),
    with its processor (tokenizer + image processor) for LLaVA and Mllama."""
    model = build_tiny_model(family, seed)
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(directory)
    if family in ("llava", "mllama"):
        tiny_processor(family).save_pretrained(directory)
    return directory
