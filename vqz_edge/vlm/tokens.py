"""Visual tokens per image: how many tokens the vision tower hands the LLM (LLaVA, LLaVA-NeXT anyres, Mllama
tiles).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from .configs import VlmConfig

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


