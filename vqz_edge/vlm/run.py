"""``vqz-edge vlm run``: the asymmetric recipe end to end on one photo and one prompt.

vision tower + connector (``vision.onnx`` from ``vlm export`` on ONNX Runtime, or its FP16 TensorRT engine on a
Jetson, through :func:`vqz_edge.runtime.open_runner`) -> visual tokens -> the LLM backbone loaded with the 4-bit
config (bitsandbytes NF4; the loaded model is audited: a quantized vision side or LM head is refused) -> greedy
generation. Reports the text, tokens/s (decoding, prefill separately), and memory: the process's peak RSS, the
bytes of the weights held, and on CUDA the allocator's peak.

Where the pieces come from:

- ``vision``: a ``vlm export`` output directory (its ``vision.onnx``; the manifest's config hash must match
  MODEL_DIR's config.json), a ``.onnx`` file, or a TensorRT engine directory / ``.engine``. Not given: the vision
  side is exported into a temporary directory first (verified as ``vlm export`` does) and the output says so.
- ``quantization_config``: the given file, else the export directory's ``quantization_config.json``, else
  generated from the config (:func:`~vqz_edge.vlm.quantconfig.skip_modules_for_config`, no weights needed).
"""

from __future__ import annotations

import json
import resource
import sys
import tempfile
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..data.images import load_image
from ..errors import DependencyError, InputError, VerificationError
from ..fsutil import sha256_file
from ..log import get_logger
from ..progress import ProgressFactory, make_bar
from ..runtime import open_runner
from ..vocab import BACKENDS
from .audit import AuditReport, audit_model, load_model, require_pass
from .configs import VlmConfig, load_vlm_config
from .export import MANIFEST_FILE, ONNX_FILE, VisionExportOptions, export_vision
from .generate import (
    Generation,
    VisionStage,
    drop_vision_modules,
    greedy_generate,
    load_processor,
    prepare_prompt,
    require_run_family,
)
from .llamacpp import GgufBackbone, gguf_token_embeddings, prompt_embeddings
from .quantconfig import (
    QUANT_CONFIG_FILE,
    nf4_quantization_config,
    read_quantization_config,
    skip_modules_for_config,
)

_log = get_logger(__name__)

RUN_VERSION = 1
DEVICES = ("auto", "cpu", "cuda")
LLM_FORMATS = ("bnb", "gguf")


@dataclass(frozen=True)
class RunOptions:
    max_new_tokens: int = 32
    device: str = "auto"  # where the LLM runs: auto = cuda when torch sees a GPU, else cpu
    backend: str = "auto"  # the vision runner's backend (open_runner)
    target: str | None = None  # memory budget target for the vision runner (default: this host / the engine's)
    threads: int = 0
    check_memory: bool = True
    llm_format: str = "bnb"  # bnb: transformers + bitsandbytes NF4; gguf: the export's GGUF on llama.cpp

    def __post_init__(self) -> None:
        if self.llm_format not in LLM_FORMATS:
            raise ValueError(f"--llm-format {self.llm_format!r} not in {LLM_FORMATS}")
        if self.max_new_tokens < 1:
            raise ValueError(f"--max-new-tokens must be >= 1, got {self.max_new_tokens}")
        if self.device not in DEVICES:
            raise ValueError(f"--device {self.device!r} not in {DEVICES}")
        if self.backend not in BACKENDS:
            raise ValueError(f"--backend {self.backend!r} not in {BACKENDS}")
        if self.threads < 0:
            raise ValueError(f"--threads must be >= 0, got {self.threads}")


@dataclass(frozen=True)
class VisionSource:
    artifact: Path  # what open_runner opens
    export_dir: Path | None  # a vlm export directory it came from
    note: str


@dataclass(frozen=True)
class QuantSource:
    config: Mapping[str, Any]
    note: str


def resolve_vision(model_dir: Path, cfg: VlmConfig, vision: Path | None) -> VisionSource | None:
    """Where the vision side comes from (None: export it first). A ``vlm export`` directory is checked against
    MODEL_DIR's config.json (hash in its manifest)."""
    if vision is None:
        return None
    vision = Path(vision)
    if vision.is_dir() and (vision / MANIFEST_FILE).is_file():
        manifest = json.loads((vision / MANIFEST_FILE).read_text(encoding="utf-8"))
        want = (manifest.get("source") or {}).get("config_sha256")
        have = sha256_file(model_dir / "config.json")
        if want and want != have:
            raise InputError(f"{vision} was exported from another model: its manifest names config sha256 {want[:12]}..., "
                             f"{model_dir}/config.json is {have[:12]}...", hint=f"vqz-edge vlm export {model_dir} -o DIR")
        onnx = vision / ONNX_FILE
        if not onnx.is_file():
            raise InputError(f"{vision} has {MANIFEST_FILE} but no {ONNX_FILE}")
        return VisionSource(onnx, vision, f"{onnx} (vlm export of {cfg.name}, config hash checked)")
    if not vision.exists():
        raise InputError(f"--vision {vision} does not exist",
                         hint="give a vlm export directory, its vision.onnx, or a TensorRT engine built from it")
    return VisionSource(vision, None, str(vision))


def resolve_quant_config(cfg: VlmConfig, given: Path | None, export_dir: Path | None) -> QuantSource:
    if given is not None:
        return QuantSource(read_quantization_config(given), str(given))
    if export_dir is not None and (export_dir / QUANT_CONFIG_FILE).is_file():
        path = export_dir / QUANT_CONFIG_FILE
        return QuantSource(read_quantization_config(path), str(path))
    skip = skip_modules_for_config(cfg)
    return QuantSource(nf4_quantization_config(skip),
                       f"generated from the config ({len(skip)} skip entries from the module tree)")


def pick_device(device: str) -> str:
    import torch

    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cuda" and not torch.cuda.is_available():
        raise DependencyError("--device cuda: torch sees no CUDA GPU on this machine", hint="use --device cpu")
    return device


def for_device(qc: Mapping[str, Any], device: str) -> tuple[dict[str, Any], str, str | None]:
    """(config, dtype of the unquantized parts, note): on a CPU the 4-bit matmuls compute in float32 (the
    config's float16 compute dtype is what a GPU uses)."""
    out = dict(qc)
    if device == "cpu":
        note = None
        if out.get("bnb_4bit_compute_dtype") not in (None, "float32"):
            note = (f"CPU: bnb_4bit_compute_dtype {out['bnb_4bit_compute_dtype']} -> float32 and unquantized weights in "
                    "float32 (the config's compute dtype is for the GPU)")
        out["bnb_4bit_compute_dtype"] = "float32"
        return out, "float32", note
    return out, str(out.get("bnb_4bit_compute_dtype") or "float16"), None


def peak_rss_bytes() -> int:
    """The process's peak resident set size (Linux ru_maxrss is KiB; macOS bytes)."""
    rss = int(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)
    return rss if sys.platform == "darwin" else rss * 1024


@dataclass
class VlmRunResult:
    model: str
    family: str
    image: str
    prompt: str
    prompt_format: str
    prompt_tokens: int
    image_positions: int
    vision: str
    vision_backend: str
    visual_tokens: list[int]
    vision_seconds: float
    quantization_config: str
    device: str
    compute_dtype: str
    audit: AuditReport | None
    generation: Generation
    text: str
    load_seconds: float
    peak_rss_bytes: int
    cuda_peak_bytes: int | None
    llm_weight_bytes: dict[str, int]
    vision_modules_dropped_bytes: int
    notes: list[str] = field(default_factory=list)
    llm_format: str = "bitsandbytes nf4"

    @property
    def llm_4bit_layers(self) -> int:
        if self.audit is None:
            return 0
        return sum(len(c.below_fp16) for c in self.audit.components if c.name == "llm_backbone")

    def to_dict(self) -> dict[str, Any]:
        return {
            "version": RUN_VERSION, "model": self.model, "family": self.family, "image": self.image,
            "prompt": self.prompt, "prompt_format": self.prompt_format, "prompt_tokens": self.prompt_tokens,
            "image_positions": self.image_positions,
            "vision": {"artifact": self.vision, "backend": self.vision_backend, "visual_tokens": self.visual_tokens,
                       "seconds": round(self.vision_seconds, 4)},
            "llm": {"format": self.llm_format, "quantization_config": self.quantization_config,
                    "device": self.device, "compute_dtype": self.compute_dtype,
                    "linear_4bit_layers": self.llm_4bit_layers,
                    "audit": self.audit.to_dict() if self.audit is not None else None,
                    "weight_bytes": self.llm_weight_bytes,
                    "vision_modules_dropped_bytes": self.vision_modules_dropped_bytes,
                    "load_seconds": round(self.load_seconds, 3)},
            "generation": self.generation.to_dict(), "text": self.text,
            "memory": {"peak_rss_bytes": self.peak_rss_bytes, "cuda_peak_allocated_bytes": self.cuda_peak_bytes},
            "tokens_per_second": round(self.generation.tokens_per_second, 3),
            "notes": list(self.notes),
        }


def run_vlm(
    model_dir: Path | str,
    image: Path | str,
    prompt: str,
    *,
    vision: Path | None = None,
    quantization_config: Path | None = None,
    opts: RunOptions | None = None,
    progress: ProgressFactory | None = None,
) -> VlmRunResult:
    """Answer ``prompt`` about ``image`` with the asymmetric recipe (see the module docstring)."""
    opts = opts or RunOptions()
    model_dir = Path(model_dir)
    cfg = load_vlm_config(model_dir)
    require_run_family(cfg)
    if not model_dir.is_dir():
        raise InputError(f"vlm run needs a model directory with weights, got {model_dir}")
    notes: list[str] = []
    bar = make_bar(progress, "vlm run (steps)", 4)
    processor = load_processor(model_dir)
    p = prepare_prompt(processor, cfg, load_image(Path(image)), prompt)  # bad input fails before any work
    source = resolve_vision(model_dir, cfg, vision)
    with tempfile.TemporaryDirectory(prefix="vqz-vlm-run-") as tmp:
        if source is None:
            res = export_vision(model_dir, Path(tmp) / "vision", VisionExportOptions())
            source = VisionSource(res.onnx_path, res.output_dir, f"exported now into a temporary directory "
                                  f"(min visual-token cosine {res.min_cosine:.6f} vs torch)")
            notes.append("no --vision given: the vision tower + connector were exported and verified first; pass a "
                         "vlm export directory (or its TensorRT engine) to skip that")
        quant = resolve_quant_config(cfg, quantization_config, source.export_dir)
        device = pick_device(opts.device)
        qc, dtype, note = for_device(quant.config, device)
        if note and opts.llm_format == "bnb":
            notes.append(note)
        bar.update(1)
        runner = open_runner(source.artifact, backend=opts.backend, target=opts.target, threads=opts.threads,
                             check_memory=opts.check_memory)
        with runner:
            stage = VisionStage(runner, cfg)
            visual = stage(p)
            backend = str(runner.describe().get("backend", runner.backend))
        bar.update(1)
    if opts.llm_format == "gguf":
        return _run_gguf(cfg, source, p, visual, stage.seconds, backend, image, prompt, processor, opts, notes, bar)
    t0 = time.perf_counter()
    model = load_model(model_dir, qc, dtype=dtype, device=device)
    load_s = time.perf_counter() - t0
    skip = qc.get("llm_int8_skip_modules") or []
    report = require_pass(audit_model(model, skip, name=cfg.name, quantization_config=qc))
    if not any(c.below_fp16 for c in report.components if c.name == "llm_backbone"):
        raise VerificationError(f"{cfg.name}: no LLM backbone layer was loaded in 4 bit with {quant.note}",
                                hint="the quantization config must set load_in_4bit")
    weights = {c.name: c.param_bytes for c in report.components}
    dropped = drop_vision_modules(model, cfg)
    bar.update(1)
    cuda_peak = None
    if device == "cuda":
        import torch

        torch.cuda.reset_peak_memory_stats()
    eos = eos_ids(processor, model)
    gen = greedy_generate(model, cfg, p, visual, max_new_tokens=opts.max_new_tokens, eos_ids=eos)
    if device == "cuda":
        import torch

        cuda_peak = int(torch.cuda.max_memory_allocated())
    text = processor.tokenizer.decode(list(gen.tokens), skip_special_tokens=True)
    bar.update(1)
    bar.close()
    result = VlmRunResult(
        cfg.name, cfg.family, str(image), prompt, p.prompt_format, p.length, p.image_positions, source.note, backend,
        list(visual.shape), stage.seconds, quant.note, device, dtype, report, gen, text, load_s, peak_rss_bytes(),
        cuda_peak, weights, dropped, notes,
    )
    _log.info("vlm run %s: %d tokens, %.1f tokens/s", cfg.name, len(gen.tokens), gen.tokens_per_second)
    return result


def _run_gguf(cfg: VlmConfig, source: VisionSource, p: Any, visual: Any, vision_s: float, backend: str,
              image: Path | str, prompt: str, processor: Any, opts: RunOptions, notes: list[str], bar: Any) -> VlmRunResult:
    """The Jetson-native route: the export's GGUF backbone on llama.cpp, fed the runner's visual tokens."""
    if source.export_dir is None or not any(source.export_dir.glob("llm.*.gguf")):
        raise InputError("--llm-format gguf needs a vlm export directory with the LLM GGUF (--vision DIR)",
                         hint="vqz-edge vlm export MODEL_DIR -o DIR --llm-format gguf")
    path = sorted(source.export_dir.glob("llm.*.gguf"))[0]
    manifest = json.loads((source.export_dir / MANIFEST_FILE).read_text(encoding="utf-8"))
    want = (manifest.get("llm_gguf") or {}).get("sha256")
    if want != sha256_file(path):
        raise VerificationError(f"{path} does not match the sha256 in {source.export_dir / MANIFEST_FILE}",
                                hint="re-export it (vlm export --llm-format gguf)")
    t0 = time.perf_counter()
    backbone = GgufBackbone(path, n_ctx=min(cfg.text.max_position_embeddings, p.length + opts.max_new_tokens + 1),
                            threads=opts.threads)
    try:
        load_s = time.perf_counter() - t0
        emb = prompt_embeddings(gguf_token_embeddings(path), p, visual)
        bar.update(1)
        gen = backbone.generate(emb, max_new_tokens=opts.max_new_tokens, eos_ids=eos_ids(processor, None))
    finally:
        backbone.close()
    bar.update(1)
    bar.close()
    text = processor.tokenizer.decode(list(gen.tokens), skip_special_tokens=True)
    return VlmRunResult(
        cfg.name, cfg.family, str(image), prompt, p.prompt_format, p.length, p.image_positions, source.note, backend,
        list(visual.shape), vision_s, f"{path.name} ({manifest['llm_gguf'].get('type', '?').upper()}, sha256 checked)",
        "cpu", "llama.cpp", None, gen, text, load_s, peak_rss_bytes(), None, {"gguf_file": path.stat().st_size}, 0,
        notes, llm_format=f"gguf {manifest['llm_gguf'].get('type', '?')} on llama.cpp",
    )


def eos_ids(processor: Any, model: Any) -> list[int]:
    ids: list[int] = []
    tok = getattr(processor.tokenizer, "eos_token_id", None)
    if tok is not None:
        ids.append(int(tok))
    gen = getattr(getattr(model, "generation_config", None), "eos_token_id", None)
    if isinstance(gen, int):
        ids.append(gen)
    elif isinstance(gen, (list, tuple)):
        ids.extend(int(x) for x in gen)
    return sorted(set(ids))
