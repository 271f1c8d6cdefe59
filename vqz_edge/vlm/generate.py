"""The pieces of the asymmetric recipe at run time, each a small callable:

- :func:`prepare_prompt` -- the model's own processor (``AutoProcessor`` from MODEL_DIR) turns a photo and a
  prompt into token ids with the image placeholder(s) expanded, and the pixel inputs of the vision side;
- :class:`VisionStage` -- vision tower + connector through vqz-edge's runner
  (:func:`vqz_edge.runtime.open_runner`: ONNX Runtime on a CPU, the FP16 TensorRT engine on a Jetson): pixels
  in, the visual tokens the LLM consumes out;
- :func:`load_backbone` -- the transformers model loaded with a 4-bit config (bitsandbytes NF4), its vision
  modules dropped after loading (the runner does that work);
- :func:`greedy_generate` -- prefill with the visual tokens injected (LLaVA: into the image placeholder
  embeddings; Mllama: as the cross-attention states), then greedy decoding with the KV cache;
- :func:`score_tokens` -- teacher-forced log-probabilities of a given continuation (for ``vlm compare``).

``greedy_generate`` is checked in the tests against transformers' own ``generate`` on the same model.
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import DependencyError, InputError, ModelLoadError
from ..log import get_logger
from ..runtime import EngineRunner
from .configs import VlmConfig
from .errors import VlmConfigError

_log = get_logger(__name__)

#: Families ``vlm run`` / ``vlm compare`` generate with (LLaVA-NeXT's anyres packing is not implemented on the host).
RUN_FAMILIES = ("llava", "mllama")
VISION_MODULES = {"llava": ("vision_tower", "multi_modal_projector"), "mllama": ("vision_model", "multi_modal_projector")}


def require_run_family(cfg: VlmConfig) -> None:
    if cfg.family not in RUN_FAMILIES:
        raise VlmConfigError(
            f"{cfg.name}: vlm run/compare do not support {cfg.family} yet (its anyres tiles are packed, unpadded and "
            "given newline tokens on the host, which is not implemented)",
            hint=f"supported families: {', '.join(RUN_FAMILIES)}; vlm plan/export/audit support {cfg.family}",
        )


# --------------------------------------------------------------------------------------------- prompt


@dataclass(frozen=True)
class Prompt:
    """A processed prompt: token ids (image placeholders expanded), the vision side's feeds, and for Mllama the
    cross-attention mask. Tensors are torch tensors on the CPU; ``vision_feeds`` are numpy arrays."""

    text: str  # the prompt as given to the processor
    prompt_format: str  # how the prompt was formatted (chat template / verbatim / image token prepended)
    input_ids: Any
    attention_mask: Any
    vision_feeds: Mapping[str, np.ndarray]
    image_token_id: int
    cross_attention_mask: Any = None
    torch_inputs: Mapping[str, Any] = field(default_factory=dict, repr=False)  # everything the processor returned

    @property
    def length(self) -> int:
        return int(self.input_ids.shape[1])

    @property
    def image_positions(self) -> int:
        return int((self.input_ids == self.image_token_id).sum())


def load_processor(model_dir: Path) -> Any:
    try:
        from transformers import AutoProcessor
    except ImportError as exc:
        raise DependencyError("transformers is not installed", hint="pip install 'vqz-edge[export]'") from exc
    auto: Any = AutoProcessor
    try:
        return auto.from_pretrained(str(model_dir))
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise ModelLoadError(
            f"cannot load the processor (tokenizer + image processor) from {model_dir}: {str(exc).splitlines()[0]}",
            hint="a model directory for vlm run holds the processor files save_pretrained writes "
            "(tokenizer.json, processor_config.json / preprocessor_config.json)",
        ) from exc


def _image_token(processor: Any, cfg: VlmConfig) -> tuple[str, int]:
    token = getattr(processor, "image_token", None) or ("<|image|>" if cfg.family == "mllama" else "<image>")
    tid = int(processor.tokenizer.convert_tokens_to_ids(token))
    expected = cfg.raw.get("image_token_index", cfg.raw.get("image_token_id"))
    if expected is not None and tid != int(expected):
        raise ModelLoadError(f"the processor's image token {token!r} has id {tid} but the model's config says "
                             f"image_token_index {expected}", hint="the tokenizer does not belong to this model")
    return token, tid


def prepare_prompt(processor: Any, cfg: VlmConfig, image: np.ndarray, prompt: str) -> Prompt:
    """Format ``prompt`` (verbatim if it contains the image token; else the model's chat template; else the image
    token prepended) and run the processor on ``image`` (uint8 HxWx3)."""
    if not prompt.strip():
        raise InputError("--prompt is empty")
    token, tid = _image_token(processor, cfg)
    template = getattr(processor, "chat_template", None)
    if token in prompt:
        text, how = prompt, "verbatim (the prompt holds the image token)"
    elif template:
        conv = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": prompt}]}]
        text, how = processor.apply_chat_template(conv, add_generation_prompt=True), "the model's chat template"
    else:
        sep = "" if cfg.family == "mllama" else "\n"
        text, how = f"{token}{sep}{prompt}", "image token prepended (the model directory has no chat template)"
    enc = processor(images=np.array(image), text=text, return_tensors="pt")  # a writable copy for torch
    if cfg.family == "llava":
        feeds = {"pixel_values": enc["pixel_values"].numpy().astype(np.float32)}
        cross = None
    else:
        feeds = {"pixel_values": enc["pixel_values"].numpy().astype(np.float32),
                 "aspect_ratio_ids": enc["aspect_ratio_ids"].numpy().astype(np.int64),
                 "aspect_ratio_mask": enc["aspect_ratio_mask"].numpy().astype(np.int64)}
        cross = enc["cross_attention_mask"]
    p = Prompt(text, how, enc["input_ids"], enc["attention_mask"], feeds, tid, cross, dict(enc))
    n = p.image_positions
    if n == 0 or (cfg.family == "mllama" and n != 1):
        raise InputError(f"the processed prompt has {n} image tokens for one image", hint="put one image token in the prompt")
    return p


# --------------------------------------------------------------------------------------------- vision


@dataclass
class VisionStage:
    """Vision tower + connector on an :class:`~vqz_edge.runtime.EngineRunner` (the exported ``vision.onnx`` or
    its TensorRT engine). Call with a :class:`Prompt`: returns the visual tokens as float32 numpy."""

    runner: EngineRunner
    cfg: VlmConfig
    seconds: float = 0.0

    def __call__(self, prompt: Prompt) -> np.ndarray:
        names = [i.name for i in self.runner.inputs]
        missing = [n for n in names if n not in prompt.vision_feeds]
        if missing:
            raise InputError(f"{self.runner.path}: the vision model takes {names}, the processor gave "
                             f"{sorted(prompt.vision_feeds)}", hint="was it exported from this model (vlm export)?")
        t0 = time.perf_counter()
        outs = self.runner.run({n: prompt.vision_feeds[n] for n in names})
        self.seconds = time.perf_counter() - t0
        if len(outs) != 1:
            raise InputError(f"{self.runner.path}: expected one output (the visual tokens), got {sorted(outs)}")
        tokens = np.asarray(next(iter(outs.values())), dtype=np.float32)
        if tokens.ndim != 3 or tokens.shape[-1] != self.cfg.text.hidden_size:
            raise InputError(f"{self.runner.path}: visual tokens of shape {list(tokens.shape)} do not match the LLM's "
                             f"hidden size {self.cfg.text.hidden_size}", hint="the vision model belongs to another model")
        if not np.isfinite(tokens).all():
            raise InputError(f"{self.runner.path}: the visual tokens contain non-finite values")
        if self.cfg.family == "llava" and tokens.shape[0] * tokens.shape[1] != prompt.image_positions:
            raise InputError(f"the vision model gave {tokens.shape[0] * tokens.shape[1]} visual tokens for "
                             f"{prompt.image_positions} image positions in the prompt",
                             hint="the processor and the exported vision model disagree on the image size")
        return tokens


# ------------------------------------------------------------------------------------------- backbone


def drop_vision_modules(model: Any, cfg: VlmConfig) -> int:
    """Remove the vision tower and connector from a loaded model (the runner runs them); returns their bytes.

    What the text path still reads of them stays, as a parameter-free stand-in (Mllama's forward reads
    ``vision_model.num_patches`` to shape the cross-attention mask)."""
    import torch

    inner = model.model if hasattr(model, "model") else model
    freed = 0
    for name in VISION_MODULES[cfg.family]:
        mod = getattr(inner, name, None)
        if mod is None:
            continue
        freed += sum(int(p.numel() * p.element_size()) for p in mod.parameters())
        stand_in = None
        if hasattr(mod, "num_patches"):
            stand_in = torch.nn.Module()
            stand_in.num_patches = mod.num_patches
        setattr(inner, name, stand_in)
    return freed


def _embed_visual(model: Any, prompt: Prompt, visual: Any, input_ids: Any) -> Any:
    """LLaVA: token embeddings with the image placeholder positions replaced by the visual tokens."""
    emb = model.get_input_embeddings()(input_ids)
    mask = (input_ids == prompt.image_token_id)[..., None].expand_as(emb)
    return emb.masked_scatter(mask, visual.reshape(-1, visual.shape[-1]).to(emb.dtype))


def _forward_inputs(cfg: VlmConfig, model: Any, prompt: Prompt, visual: Any, input_ids: Any, attention: Any) -> dict[str, Any]:
    if cfg.family == "llava":
        return {"inputs_embeds": _embed_visual(model, prompt, visual, input_ids), "attention_mask": attention}
    cross = prompt.cross_attention_mask
    extra = input_ids.shape[1] - cross.shape[1]
    if extra > 0:  # as transformers' generate does: later tokens see the image like the last prompt token
        import torch

        cross = torch.cat([cross, cross[:, -1:].expand(-1, extra, -1, -1)], dim=1)
    return {"input_ids": input_ids, "attention_mask": attention, "cross_attention_states": visual,
            "cross_attention_mask": cross}


@dataclass(frozen=True)
class Generation:
    tokens: tuple[int, ...]
    prompt_tokens: int
    prefill_seconds: float
    decode_seconds: float
    stopped: str  # "eos" | "max_new_tokens"

    @property
    def tokens_per_second(self) -> float:
        """Decoding speed: tokens after the first over the time spent producing them (prefill excluded)."""
        n = len(self.tokens) - 1
        return n / self.decode_seconds if n > 0 and self.decode_seconds > 0 else 0.0

    def to_dict(self) -> dict[str, Any]:
        return {"tokens": list(self.tokens), "generated": len(self.tokens), "prompt_tokens": self.prompt_tokens,
                "prefill_seconds": round(self.prefill_seconds, 4), "decode_seconds": round(self.decode_seconds, 4),
                "tokens_per_second": round(self.tokens_per_second, 3), "stopped": self.stopped}


def _device_of(model: Any) -> Any:
    return next(p.device for p in model.parameters())


def greedy_generate(model: Any, cfg: VlmConfig, prompt: Prompt, visual: np.ndarray | Any, *, max_new_tokens: int,
                    eos_ids: Sequence[int] = ()) -> Generation:
    """Prefill with the visual tokens injected, then greedy decoding with the KV cache, until an EOS id or
    ``max_new_tokens``."""
    import torch

    if max_new_tokens < 1:
        raise InputError(f"max_new_tokens must be >= 1, got {max_new_tokens}")
    dev = _device_of(model)
    dtype = model.get_input_embeddings().weight.dtype
    vis = torch.as_tensor(np.asarray(visual) if not isinstance(visual, torch.Tensor) else visual).to(dev, dtype)
    ids = prompt.input_ids.to(dev)
    attention = prompt.attention_mask.to(dev)
    eos = set(int(e) for e in eos_ids)
    tokens: list[int] = []
    with torch.no_grad():
        t0 = time.perf_counter()
        out = model(**_forward_inputs(cfg, model, prompt, vis, ids, attention), use_cache=True)
        nxt = int(out.logits[0, -1].argmax())
        t1 = time.perf_counter()
        cache = out.cache if hasattr(out, "cache") else out.past_key_values
        stopped = "max_new_tokens"
        cross_last = prompt.cross_attention_mask[:, -1:].to(dev) if prompt.cross_attention_mask is not None else None
        while True:
            tokens.append(nxt)
            if nxt in eos:
                stopped = "eos"
                break
            if len(tokens) >= max_new_tokens:
                break
            attention = torch.cat([attention, attention.new_ones((1, 1))], dim=1)
            step: dict[str, Any] = {"input_ids": torch.tensor([[nxt]], device=dev), "attention_mask": attention,
                                    "cache": cache, "use_cache": True}
            if cross_last is not None:
                step["cross_attention_mask"] = cross_last
            out = model(**step)
            cache = out.cache if hasattr(out, "cache") else out.past_key_values
            nxt = int(out.logits[0, -1].argmax())
        t2 = time.perf_counter()
    return Generation(tuple(tokens), prompt.length, t1 - t0, t2 - t1, stopped)


def score_tokens(model: Any, cfg: VlmConfig, prompt: Prompt, visual: np.ndarray | Any, tokens: Sequence[int]) -> np.ndarray:
    """Teacher forcing: log-probabilities (float64, ``[len(tokens), vocab]``) the model assigns at each position of
    ``tokens`` following the prompt -- one forward pass over prompt + tokens[:-1]."""
    import torch

    if not tokens:
        raise InputError("no tokens to score")
    dev = _device_of(model)
    dtype = model.get_input_embeddings().weight.dtype
    vis = torch.as_tensor(np.asarray(visual) if not isinstance(visual, torch.Tensor) else visual).to(dev, dtype)
    ids = torch.cat([prompt.input_ids, torch.tensor([list(tokens[:-1])], dtype=prompt.input_ids.dtype)], dim=1).to(dev)
    attention = torch.ones_like(ids)
    with torch.no_grad():
        out = model(**_forward_inputs(cfg, model, prompt, vis, ids, attention), use_cache=False)
    logits = out.logits[0, prompt.length - 1 : prompt.length - 1 + len(tokens)].double()
    return torch.log_softmax(logits, dim=-1).cpu().numpy()


def torch_vision_outputs(model: Any, cfg: VlmConfig, prompt: Prompt) -> tuple[np.ndarray, np.ndarray]:
    """(vision-tower features, visual tokens) of ``prompt``'s image through the model's own torch modules -- the
    same code path as transformers (LLaVA: the selected hidden layer, CLS dropped for the "default" strategy, then
    the projector; Mllama: the vision model's last hidden state, then the projector), float32 numpy."""
    import torch

    inner = model.model if hasattr(model, "model") else model
    dev = _device_of(model)
    with torch.no_grad():
        if cfg.family == "llava":
            tower, proj = inner.vision_tower, inner.multi_modal_projector
            px = torch.from_numpy(prompt.vision_feeds["pixel_values"]).to(dev, tower.embeddings.patch_embedding.weight.dtype)
            hidden = tower(px, output_hidden_states=True, return_dict=True).hidden_states
            feats = torch.cat([hidden[i] for i in cfg.vision_feature_layer], dim=-1)
            if cfg.vision_feature_select_strategy == "default":
                feats = feats[:, 1:]
            tokens = proj(feats)
        else:
            vision, proj = inner.vision_model, inner.multi_modal_projector
            dtype = vision.patch_embedding.weight.dtype
            f = prompt.vision_feeds
            feats = vision(pixel_values=torch.from_numpy(f["pixel_values"]).to(dev, dtype),
                           aspect_ratio_ids=torch.from_numpy(f["aspect_ratio_ids"]).to(dev),
                           aspect_ratio_mask=torch.from_numpy(f["aspect_ratio_mask"]).to(dev)).last_hidden_state
            tokens = proj(feats).reshape(-1, feats.shape[-2], cfg.text.hidden_size)
    return feats.float().cpu().numpy(), tokens.float().cpu().numpy()
