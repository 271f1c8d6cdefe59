"""``vqz-edge vlm compare``: FP16 vs the asymmetric recipe vs all-4-bit, on the same images and prompts.

Three variants of one model:

- ``fp16``        -- nothing quantized: the reference (FP16 on a GPU; on a CPU everything computes in float32, so
  the only difference between the variants is the 4-bit quantization);
- ``asymmetric``  -- the recipe: vision tower + connector unquantized, run through vqz-edge's runner (the exported
  ``vision.onnx`` on ONNX Runtime, or its FP16 TensorRT engine), the LLM backbone in bitsandbytes NF4 with the
  skip list generated from the module tree (embeddings and LM head kept);
- ``all_4bit``    -- what a whole-model 4-bit load does: every Linear in NF4 -- vision tower, connector and LLM
  backbone -- except the LM head (kept, so that the difference to ``asymmetric`` is the vision side alone).

Measured per image x prompt and aggregated:

- visual-token cosine per component against ``fp16``: the vision tower's output features and the connector's
  output (the visual tokens the LLM reads), min and mean over tokens;
- next-token agreement over the generated sequence: ``fp16`` generates greedily; every variant scores that same
  sequence (teacher forcing); per position the KL divergence KL(fp16 || variant) of the next-token distributions
  and whether the variant's top-1 token equals ``fp16``'s;
- text agreement: each variant generates greedily on its own; exact match with ``fp16``'s tokens, the fraction of
  positions that agree, the first position where they diverge;
- memory: the bytes of the weights each variant holds (measured on the loaded tensors, per component).

This is the seed's ``benchmark_vlm_image_quality`` made measurable. With a tiny random-initialised model the
numbers prove the pipeline, not quality.
"""

from __future__ import annotations

import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ..data.images import load_image
from ..errors import DependencyError, InputError
from ..log import get_logger
from ..memory import MIB
from ..progress import ProgressFactory, make_bar
from ..runtime import open_runner
from .audit import audit_model, load_model
from .configs import load_vlm_config
from .export import VisionExportOptions, export_vision, token_cosines
from .generate import (
    VisionStage,
    greedy_generate,
    load_processor,
    prepare_prompt,
    require_run_family,
    score_tokens,
    torch_vision_outputs,
)
from .params import iter_linear_modules
from .run import (
    RunOptions,
    VisionSource,
    eos_ids,
    for_device,
    pick_device,
    resolve_quant_config,
    resolve_vision,
)

_log = get_logger(__name__)

COMPARE_VERSION = 1
VARIANTS = ("fp16", "asymmetric", "all_4bit")
VARIANT_LABELS = {"fp16": "FP16 (nothing quantized)", "asymmetric": "vision FP16, LLM NF4 (the recipe)",
                  "all_4bit": "vision + connector + LLM NF4"}
#: What ``all_4bit`` keeps unquantized: only the LM head, so that it differs from the recipe by the vision side.
ALL_4BIT_SKIP = ("lm_head",)


@dataclass(frozen=True)
class PairResult:
    """One variant on one image x prompt."""

    image: str
    prompt: str
    tower_cosine_min: float
    tower_cosine_mean: float
    tokens_cosine_min: float
    tokens_cosine_mean: float
    kl_mean: float  # KL(fp16 || variant) per position, mean over the fp16 sequence
    kl_max: float
    top1_agreement: float  # fraction of positions whose top-1 token equals fp16's
    tokens: tuple[int, ...]  # the variant's own greedy tokens
    text: str
    exact: bool  # own tokens == fp16's tokens
    token_agreement: float  # positions of fp16's sequence where the variant's own token is the same
    first_divergence: int | None

    def to_dict(self) -> dict[str, Any]:
        return {k: (list(v) if isinstance(v, tuple) else v) for k, v in self.__dict__.items()}


@dataclass(frozen=True)
class VariantSummary:
    name: str
    label: str
    vision_precision: str
    llm_precision: str
    vision_runtime: str
    weight_bytes: dict[str, int]
    linear_4bit: dict[str, int]  # per component: Linear layers stored in 4 bit (from the audit of the loaded model)
    pairs: tuple[PairResult, ...]

    def _mean(self, key: str) -> float:
        return float(np.mean([getattr(p, key) for p in self.pairs]))

    def _min(self, key: str) -> float:
        return float(np.min([getattr(p, key) for p in self.pairs]))

    @property
    def total_weight_bytes(self) -> int:
        return sum(self.weight_bytes.values())

    def metrics(self) -> dict[str, Any]:
        return {
            "vision_tower_cosine_min": self._min("tower_cosine_min"),
            "vision_tower_cosine_mean": self._mean("tower_cosine_mean"),
            "connector_cosine_min": self._min("tokens_cosine_min"),
            "connector_cosine_mean": self._mean("tokens_cosine_mean"),
            "kl_mean": self._mean("kl_mean"),
            "kl_max": max(p.kl_max for p in self.pairs),
            "top1_agreement": self._mean("top1_agreement"),
            "text_exact": sum(p.exact for p in self.pairs),
            "token_agreement": self._mean("token_agreement"),
        }

    def to_dict(self) -> dict[str, Any]:
        return {"label": self.label, "vision_precision": self.vision_precision, "llm_precision": self.llm_precision,
                "vision_runtime": self.vision_runtime, "weight_bytes": self.weight_bytes,
                "total_weight_bytes": self.total_weight_bytes, "linear_4bit": self.linear_4bit,
                "metrics": self.metrics(), "pairs": [p.to_dict() for p in self.pairs]}


@dataclass
class CompareReport:
    model: str
    family: str
    images: list[str]
    prompts: list[str]
    max_new_tokens: int
    device: str
    compute_dtype: str
    vision: str
    variants: dict[str, VariantSummary]
    reference_texts: list[str]
    seconds: float
    notes: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {"version": COMPARE_VERSION, "model": self.model, "family": self.family, "images": self.images,
                "prompts": self.prompts, "max_new_tokens": self.max_new_tokens, "device": self.device,
                "compute_dtype": self.compute_dtype, "vision": self.vision,
                "variants": {k: v.to_dict() for k, v in self.variants.items()},
                "reference_texts": self.reference_texts, "seconds": round(self.seconds, 2), "notes": self.notes}

    def table(self) -> str:
        n = len(self.images) * len(self.prompts)
        lines = [
            f"vqz-edge vlm compare: {self.model} ({self.family}), {len(self.images)} image(s) x {len(self.prompts)} "
            f"prompt(s), greedy, {self.max_new_tokens} new tokens; {self.device}, compute {self.compute_dtype}",
            "  visual-token cosine vs FP16 (min / mean over tokens); next-token KL(FP16 || variant) and top-1 "
            "agreement over FP16's generated sequence; each variant's own text vs FP16's",
            f"  {'variant':11} {'vision':>6} {'LLM':>5}  {'vision tower':>15}  {'connector':>15}  {'KL mean':>9} "
            f"{'KL max':>9}  {'top-1':>6}  {'text':>5}  {'tokens':>6}  {'weights MiB':>11}",
        ]
        for v in self.variants.values():
            m = v.metrics()
            lines.append(
                f"  {v.name:11} {v.vision_precision:>6} {v.llm_precision:>5}  "
                f"{m['vision_tower_cosine_min']:>8.4f}/{m['vision_tower_cosine_mean']:.4f}  "
                f"{m['connector_cosine_min']:>8.4f}/{m['connector_cosine_mean']:.4f}  {m['kl_mean']:>9.2e} "
                f"{m['kl_max']:>9.2e}  {m['top1_agreement']:>6.1%}  {m['text_exact']:>2}/{n:<2}  "
                f"{m['token_agreement']:>6.1%}  {v.total_weight_bytes / MIB:>11.3f}")
        lines.append("  runtimes: " + "; ".join(f"{v.name}: vision on {v.vision_runtime}" for v in self.variants.values()))
        lines.append("  4-bit Linear layers per component: " + "; ".join(
            f"{v.name}: " + ", ".join(f"{c} {k}" for c, k in v.linear_4bit.items() if k) if any(v.linear_4bit.values())
            else f"{v.name}: none" for v in self.variants.values()))
        lines.extend(f"  FP16 answer {i + 1}: {t!r}" for i, t in enumerate(self.reference_texts))
        lines.extend(f"note: {x}" for x in self.notes)
        return "\n".join(lines)


def _kl(ref: np.ndarray, var: np.ndarray) -> np.ndarray:
    """KL(ref || var) per row of log-probabilities."""
    p = np.exp(ref)
    out: np.ndarray = np.sum(p * (ref - var), axis=-1)
    return out


def _agreement(ref: Sequence[int], own: Sequence[int]) -> tuple[bool, float, int | None]:
    n = max(len(ref), len(own))
    same = [i < len(ref) and i < len(own) and ref[i] == own[i] for i in range(n)]
    first = next((i for i, s in enumerate(same) if not s), None)
    return tuple(ref) == tuple(own), float(np.mean(same)) if n else 1.0, first


#: bitsandbytes' CPU backend packs 4-bit weights in blocks of 64 along a row and fails on narrower layers.
CPU_MIN_4BIT_IN_FEATURES = 64


def _load_variant(model_dir: Path, name: str, qc: dict[str, Any] | None, dtype: str, device: str) -> Any:
    t0 = time.perf_counter()
    model = load_model(model_dir, qc, dtype=dtype, device=device)
    if device == "cpu":
        narrow = [n for n, m in iter_linear_modules(model)
                  if type(m).__name__ == "Linear4bit" and int(m.in_features) < CPU_MIN_4BIT_IN_FEATURES]
        if narrow:
            raise DependencyError(
                f"{name}: bitsandbytes' CPU backend cannot run a 4-bit Linear with fewer than "
                f"{CPU_MIN_4BIT_IN_FEATURES} input features: {', '.join(narrow[:4])}", hint="run on a GPU (--device cuda)")
    _log.info("compare: loaded %s in %.1fs", name, time.perf_counter() - t0)
    return model


def compare_vlm(
    model_dir: Path | str,
    images: Sequence[Path | str],
    prompts: Sequence[str],
    *,
    vision: Path | None = None,
    quantization_config: Path | None = None,
    opts: RunOptions | None = None,
    progress: ProgressFactory | None = None,
) -> CompareReport:
    """Run the three variants on every image x prompt (see the module docstring)."""
    opts = opts or RunOptions(max_new_tokens=16)
    t_start = time.perf_counter()
    model_dir = Path(model_dir)
    cfg = load_vlm_config(model_dir)
    require_run_family(cfg)
    if not images or not prompts:
        raise InputError("vlm compare needs at least one --image and one --prompt")
    notes: list[str] = []
    processor = load_processor(model_dir)
    photos = [load_image(Path(p)) for p in images]
    pairs = [(str(i), photo, q) for i, photo in zip(images, photos) for q in prompts]
    device = pick_device(opts.device)
    source = resolve_vision(model_dir, cfg, vision)
    bar = make_bar(progress, "vlm compare (variant x pair)", 3 * len(pairs) + 1)
    with tempfile.TemporaryDirectory(prefix="vqz-vlm-compare-") as tmp:
        if source is None:
            res = export_vision(model_dir, Path(tmp) / "vision", VisionExportOptions())
            source = VisionSource(res.onnx_path, res.output_dir, "exported now into a temporary directory")
            notes.append("no --vision given: the vision tower + connector were exported and verified first")
        quant = resolve_quant_config(cfg, quantization_config, source.export_dir)
        asym_qc, dtype, note = for_device(quant.config, device)
        if note:
            notes.append(note)
        all_qc = dict(asym_qc, llm_int8_skip_modules=list(ALL_4BIT_SKIP))
        prompts_in = [prepare_prompt(processor, cfg, photo, q) for _, photo, q in pairs]
        with open_runner(source.artifact, backend=opts.backend, target=opts.target, threads=opts.threads,
                         check_memory=opts.check_memory) as runner:
            stage = VisionStage(runner, cfg)
            runner_tokens = [stage(p) for p in prompts_in]
            runtime = str(runner.describe().get("backend", runner.backend))
        bar.update(1)
    eos: list[int] = []
    ref_tokens: list[tuple[int, ...]] = []
    ref_logp: list[np.ndarray] = []
    ref_feats: list[tuple[np.ndarray, np.ndarray]] = []
    summaries: dict[str, VariantSummary] = {}
    for name, qc in (("fp16", None), ("asymmetric", asym_qc), ("all_4bit", all_qc)):
        model = _load_variant(model_dir, name, qc, dtype, device)
        audit = audit_model(model, None, name=cfg.name)
        eos = eos or eos_ids(processor, model)
        results = []
        for k, ((img, _, q), p) in enumerate(zip(pairs, prompts_in)):
            feats, tokens = torch_vision_outputs(model, cfg, p)
            visual = runner_tokens[k] if name == "asymmetric" else tokens
            if name == "fp16":
                gen = greedy_generate(model, cfg, p, visual, max_new_tokens=opts.max_new_tokens, eos_ids=eos)
                ref_tokens.append(gen.tokens)
                ref_feats.append((feats, tokens))
                ref_logp.append(score_tokens(model, cfg, p, visual, gen.tokens))
            own = greedy_generate(model, cfg, p, visual, max_new_tokens=opts.max_new_tokens, eos_ids=eos).tokens
            logp = score_tokens(model, cfg, p, visual, ref_tokens[k])
            kl = _kl(ref_logp[k], logp)
            top1 = float(np.mean(np.argmax(logp, axis=-1) == np.argmax(ref_logp[k], axis=-1)))
            tower_cos = token_cosines(ref_feats[k][0], feats)
            tok_cos = token_cosines(ref_feats[k][1], visual)
            exact, agree, first = _agreement(ref_tokens[k], own)
            if not (np.isfinite(kl).all() and np.isfinite(tok_cos).all()):
                raise InputError(f"{name} on {img}: non-finite logits or visual tokens")
            results.append(PairResult(img, q, float(tower_cos.min()), float(tower_cos.mean()), float(tok_cos.min()),
                                      float(tok_cos.mean()), float(kl.mean()), float(kl.max()), top1, tuple(own),
                                      processor.tokenizer.decode(list(own), skip_special_tokens=True), exact, agree,
                                      first))
            bar.update(1)
        linear4 = {c.name: len(c.below_fp16) for c in audit.components}
        vision_prec = "nf4" if linear4.get("vision_tower") else "fp16"
        llm_prec = "nf4" if linear4.get("llm_backbone") else "fp16"
        summaries[name] = VariantSummary(
            name, VARIANT_LABELS[name], vision_prec, llm_prec, runtime if name == "asymmetric" else "torch",
            {c.name: c.param_bytes for c in audit.components}, linear4, tuple(results))
        del model
    bar.close()
    ref_texts = [processor.tokenizer.decode(list(t), skip_special_tokens=True) for t in ref_tokens]
    if device == "cpu":
        notes.append("on this CPU every variant computes in float32: FP16 here means 'not quantized'; the variants "
                     "differ only by what is stored in NF4")
    notes.append("all_4bit keeps only the LM head unquantized, so that it differs from the recipe by the vision side")
    return CompareReport(cfg.name, cfg.family, [str(i) for i in images], list(prompts), opts.max_new_tokens, device,
                         dtype, source.note, summaries, ref_texts, time.perf_counter() - t_start, notes)
