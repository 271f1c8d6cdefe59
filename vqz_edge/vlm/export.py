"""``vqz-edge vlm export``: the vision side of a VLM as one ONNX, verified against torch, plus the LLM's
4-bit config with a generated skip list.

Writes into OUTDIR (each file atomically):

- ``vision.onnx`` -- vision tower + connector (multi-modal projector): pixels in, the visual tokens the
  LLM consumes out. LLaVA: ``pixel_values [N,3,336,336] -> image_features [N,576,hidden]`` (N tiles; for
  LLaVA-NeXT the anyres tiles and the base image -- packing, unpadding and newline tokens stay on the host, as
  in every LLaVA-NeXT runtime). Mllama: ``pixel_values [1,1,T,3,560,560]``, ``aspect_ratio_ids [1,1]``,
  ``aspect_ratio_mask [1,1,T] -> cross_attention_states [T,1601,hidden]`` (transformers' layout). FP32 weights;
  the plan below builds it FP16 on TensorRT. BatchNormalization is folded by the same ONNX passes as any
  vision model (``vqz_edge.export.onnx_passes.remove_batchnorm``); LayerNormalization is left for TensorRT.
- ``plan.json`` -- the resolved precision plan: every layer FP16, rule ``vlm-vision-fp16``.
- ``quantization_config.json`` -- bitsandbytes NF4 for the LLM backbone, ``llm_int8_skip_modules`` generated
  from the loaded model's module tree (every Linear of the vision tower and connector, and the LM head).
- ``vlm_export.json`` -- manifest: source, shapes, verification (cosine of the visual tokens), hashes.

Verification: torch (transformers' own code path: ``get_image_features`` for LLaVA, the vision model +
projector exactly as ``MllamaModel.forward`` calls them) and ONNX Runtime on real photo crops (the demo
photos, CLIP normalisation); per visual token the cosine between the two; the minimum must reach
``min_cosine`` or nothing is written.
"""

from __future__ import annotations

import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import onnx

from .. import ort as ortu
from ..artifacts.plan import LayerDecision, ResolvedPlan
from ..data.images import Preprocessing, demo_crops
from ..errors import ExportError, InputError, VerificationError
from ..export.onnx_passes import remove_batchnorm
from ..export.torch_side import export_onnx
from ..fsutil import atomic_path, atomic_write_json, sha256_file
from ..log import get_logger
from ..onnx_io import count_ops, graph_inputs, graph_outputs
from ..progress import ProgressFactory, make_bar
from ..vocab import PLAN_FILE
from .audit import load_model
from .configs import VlmConfig, load_vlm_config
from .gguf_export import GgufResult, gguf_file_name, require_gguf_model, write_llm_gguf
from .params import VISION_SIDE, component_of
from .quantconfig import (
    QUANT_CONFIG_FILE,
    generated_skip_modules,
    nf4_quantization_config,
    write_quantization_config,
)

_log = get_logger(__name__)

EXPORT_VERSION = 1
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
ONNX_FILE = "vision.onnx"
MANIFEST_FILE = "vlm_export.json"
QUANTIZABLE_OPS = ("Conv", "ConvTranspose", "Gemm", "MatMul")
LLM_FORMATS = ("bnb", "gguf")
_LARGE = 1_800_000_000  # protobuf's 2 GB limit: above this the ONNX is saved with external data


@dataclass(frozen=True)
class VisionExportOptions:
    opset: int = 17
    samples: int = 4
    min_cosine: float = 0.9999
    compute_dtype: str = "float16"  # bnb_4bit_compute_dtype of the generated config
    llm_format: str = "bnb"  # bnb: the bitsandbytes NF4 config only; gguf: also the LLM backbone as a verified GGUF
    gguf_type: str = "q4_0"
    version: int = EXPORT_VERSION

    def __post_init__(self) -> None:
        if self.llm_format not in LLM_FORMATS:
            raise ValueError(f"--llm-format {self.llm_format!r} not in {LLM_FORMATS}")
        if not 14 <= self.opset <= 23:
            raise ValueError(f"opset must be within 14..23 for transformer exports, got {self.opset}")
        if self.samples < 1:
            raise ValueError(f"samples must be >= 1, got {self.samples}")
        if not 0.0 < self.min_cosine <= 1.0:
            raise ValueError(f"min_cosine must be in (0, 1], got {self.min_cosine}")


@dataclass
class VisionExportResult:
    output_dir: Path
    onnx_path: Path
    plan_path: Path
    quant_config_path: Path
    manifest_path: Path
    model: str
    family: str
    inputs: list[dict[str, Any]]
    outputs: list[dict[str, Any]]
    min_cosine: float
    mean_cosine: float
    max_abs_error: float
    tokens_compared: int
    samples: int
    batchnorm_before: int
    batchnorm_after: int
    layernorm_nodes: int
    nodes: int
    skip_modules: int
    seconds: float
    data_note: str
    extra: dict[str, Any] = field(default_factory=dict)
    gguf: GgufResult | None = None

    def to_dict(self) -> dict[str, Any]:
        return {
            "output_dir": str(self.output_dir), "onnx": str(self.onnx_path), "plan": str(self.plan_path),
            "quantization_config": str(self.quant_config_path), "manifest": str(self.manifest_path),
            "model": self.model, "family": self.family, "inputs": self.inputs, "outputs": self.outputs,
            "min_cosine": self.min_cosine, "mean_cosine": self.mean_cosine, "max_abs_error": self.max_abs_error,
            "tokens_compared": self.tokens_compared, "samples": self.samples,
            "batchnorm_before": self.batchnorm_before, "batchnorm_after": self.batchnorm_after,
            "layernorm_nodes": self.layernorm_nodes, "nodes": self.nodes, "skip_modules": self.skip_modules,
            "seconds": round(self.seconds, 3), "verification_data": self.data_note, **self.extra,
        }


# ------------------------------------------------------------------------------------------- wrappers


def _sub(model: Any, *paths: str) -> Any:
    for p in paths:
        try:
            return model.get_submodule(p)
        except AttributeError:
            continue
    raise ExportError(f"the model has none of the submodules {list(paths)} (transformers layout changed?)")


def _wrappers(model: Any, cfg: VlmConfig) -> tuple[Any, Any]:
    """(export module, reference function) for ``cfg``'s family. The reference runs transformers' own code."""
    import torch

    if cfg.family in ("llava", "llava_next"):
        tower = _sub(model, "model.vision_tower", "vision_tower")
        proj = _sub(model, "model.multi_modal_projector", "multi_modal_projector")
        inner = _sub(model, "model") if hasattr(model, "model") else model
        layers = list(cfg.vision_feature_layer)
        strategy = cfg.vision_feature_select_strategy

        class VisionConnector(torch.nn.Module):
            def __init__(self) -> None:
                super().__init__()
                self.vision_tower, self.multi_modal_projector = tower, proj

            def forward(self, pixel_values: Any) -> Any:
                out = self.vision_tower(pixel_values, output_hidden_states=True, return_dict=True)
                hs = [out.hidden_states[i] for i in layers]
                if strategy == "default":
                    hs = [h[:, 1:] for h in hs]
                return self.multi_modal_projector(torch.cat(hs, dim=-1))

        def reference(pixel_values: Any) -> Any:
            layer = layers[0] if len(layers) == 1 else layers
            if cfg.family == "llava":
                feats = inner.get_image_features(pixel_values=pixel_values, vision_feature_layer=layer,
                                                 vision_feature_select_strategy=strategy)
                return torch.stack(list(feats.pooler_output))
            # LLaVA-NeXT: all tiles of one image; capture the projected tiles before transformers packs them
            captured: list[Any] = []
            original = inner.pack_image_features

            def capture(image_features: Any, *args: Any, **kwargs: Any) -> Any:
                captured.extend(image_features)
                return original(image_features, *args, **kwargs)

            inner.pack_image_features = capture
            try:
                inner.get_image_features(pixel_values=pixel_values[None], image_sizes=torch.tensor([_grid_hw(cfg)]),
                                         vision_feature_layer=layer, vision_feature_select_strategy=strategy)
            finally:
                del inner.pack_image_features
            return torch.cat(captured)

        return VisionConnector().eval(), reference

    vision = _sub(model, "model.vision_model", "vision_model")
    proj = _sub(model, "model.multi_modal_projector", "multi_modal_projector")
    hidden = cfg.text.hidden_size

    class MllamaVisionConnector(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.vision_model, self.multi_modal_projector = vision, proj

        def forward(self, pixel_values: Any, aspect_ratio_ids: Any, aspect_ratio_mask: Any) -> Any:
            states = self.vision_model(pixel_values=pixel_values, aspect_ratio_ids=aspect_ratio_ids,
                                       aspect_ratio_mask=aspect_ratio_mask, return_dict=True).last_hidden_state
            return self.multi_modal_projector(states).reshape(-1, states.shape[-2], hidden)

    wrapper = MllamaVisionConnector().eval()

    def mllama_reference(pixel_values: Any, aspect_ratio_ids: Any, aspect_ratio_mask: Any) -> Any:
        # MllamaModel.forward: vision_model(...).last_hidden_state -> multi_modal_projector -> reshape
        states = vision(pixel_values=pixel_values, aspect_ratio_ids=aspect_ratio_ids,
                        aspect_ratio_mask=aspect_ratio_mask).last_hidden_state
        return proj(states).reshape(-1, states.shape[-2], hidden)

    return wrapper, mllama_reference


def _grid_hw(cfg: VlmConfig) -> tuple[int, int]:
    """The LLaVA-NeXT grid pinpoint with the most tiles (an image of exactly that size uses all of them)."""
    h, w = max(cfg.image_grid_pinpoints, key=lambda p: (p[0] * p[1], p))
    return int(h), int(w)


def _inputs(cfg: VlmConfig, samples: int) -> tuple[list[dict[str, np.ndarray]], list[str], list[str], str]:
    """Feeds (one dict per sample), input names, output names, and where the pixels came from."""
    v = cfg.vision
    pre = Preprocessing(resize=v.image_size, crop=v.image_size, mean=CLIP_MEAN, std=CLIP_STD)
    if cfg.family == "llava":
        crops = demo_crops("evaluation", samples, pre).astype(np.float32)
        note = f"{samples} real photo crops (scikit-image, evaluation split) at {v.image_size}px, CLIP normalisation"
        return [{"pixel_values": crops[i : i + 1]} for i in range(samples)], ["pixel_values"], ["image_features"], note
    if cfg.family == "llava_next":
        gh, gw = _grid_hw(cfg)
        n = (gh // v.image_size) * (gw // v.image_size) + 1
        crops = demo_crops("evaluation", samples * n, pre).astype(np.float32)
        note = (f"{samples} images of {n} tiles ({gh}x{gw} grid + base image), real photo crops (scikit-image, "
                f"evaluation split) at {v.image_size}px, CLIP normalisation")
        return ([{"pixel_values": crops[i * n : (i + 1) * n]} for i in range(samples)], ["pixel_values"],
                ["image_features"], note)
    tiles = v.max_num_tiles
    crops = demo_crops("evaluation", samples * tiles, pre).astype(np.float32)
    feeds: list[dict[str, np.ndarray]] = []
    for s in range(samples):
        used = 1 + s % tiles  # 1..T real tiles, the rest padded and masked as the processor does
        px = np.zeros((1, 1, tiles, 3, v.image_size, v.image_size), np.float32)
        px[0, 0, :used] = crops[s * tiles : s * tiles + used]
        ratio = next((i + 1 for i, (h, w) in enumerate(v.supported_aspect_ratios) if h * w == used), 1)
        mask = np.zeros((1, 1, tiles), np.int64)
        mask[0, 0, :used] = 1
        feeds.append({"pixel_values": px, "aspect_ratio_ids": np.array([[ratio]], np.int64), "aspect_ratio_mask": mask})
    note = (f"{samples} images of 1..{tiles} real photo tiles (scikit-image, evaluation split) at {v.image_size}px, "
            "CLIP normalisation, padded tiles masked")
    return feeds, ["pixel_values", "aspect_ratio_ids", "aspect_ratio_mask"], ["cross_attention_states"], note


def _vision_side_to_fp32(model: Any) -> None:
    """Vision tower and connector parameters/buffers in FP32 (the export and its torch reference run there)."""
    import torch

    for name, t in [*model.named_parameters(), *model.named_buffers()]:
        if component_of(name) in VISION_SIDE and t.is_floating_point() and t.dtype != torch.float32:
            t.data = t.data.float()


def token_cosines(ref: np.ndarray, got: np.ndarray) -> np.ndarray:
    """Cosine similarity per visual token (last axis = features)."""
    a = ref.reshape(-1, ref.shape[-1]).astype(np.float64)
    b = got.reshape(-1, got.shape[-1]).astype(np.float64)
    num = np.sum(a * b, axis=1)
    den = np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1)
    return np.where(den > 0, num / np.maximum(den, 1e-300), np.where(np.linalg.norm(a - b, axis=1) == 0, 1.0, 0.0))


def _fp16_plan(model: onnx.ModelProto, onnx_sha: str, name: str) -> dict[str, Any]:
    layers = tuple(
        LayerDecision(n.name, n.op_type, "fp16", "vlm-vision-fp16", n.op_type in QUANTIZABLE_OPS)
        for n in model.graph.node
    )
    return ResolvedPlan(model=name, onnx_sha256=onnx_sha, layers=layers).to_dict()


def _save_onnx(model: onnx.ModelProto, out: Path) -> None:
    onnx.checker.check_model(model) if model.ByteSize() < _LARGE else None
    with atomic_path(out) as tmp:
        if model.ByteSize() < _LARGE:
            onnx.save(model, str(tmp))
        else:  # weights beside the graph; the data file name is fixed so the rename keeps it valid
            onnx.save(model, str(tmp), save_as_external_data=True, all_tensors_to_one_file=True,
                      location=out.name + ".data")


def export_vision(
    model_dir: Path | str,
    out_dir: Path | str,
    opts: VisionExportOptions | None = None,
    *,
    model: Any = None,
    progress: ProgressFactory | None = None,
) -> VisionExportResult:
    """Export ``model_dir``'s vision tower + connector to ``out_dir/vision.onnx`` (verified), with its FP16
    plan and the LLM's NF4 quantization config. ``model``: an already loaded model (tests)."""
    import torch


    opts = opts or VisionExportOptions()
    t0 = time.perf_counter()
    cfg = load_vlm_config(Path(model_dir))
    if opts.llm_format == "gguf":
        require_gguf_model(cfg, opts.gguf_type)  # refuse before any work
    out_dir = Path(out_dir)
    if out_dir.exists() and not out_dir.is_dir():
        raise InputError(f"output {out_dir} exists and is not a directory")
    if not out_dir.parent.is_dir():
        raise InputError(f"parent directory of {out_dir} does not exist", hint=f"mkdir -p {out_dir.parent}")
    bar = make_bar(progress, "vlm export (steps)", 4)
    if model is None:  # the checkpoint's own dtype (a 7B FP16 model needs 14 GB, not 28); vision side -> FP32 below
        model = load_model(Path(model_dir))
    _vision_side_to_fp32(model)
    model.eval()
    wrapper, reference = _wrappers(model, cfg)
    feeds, in_names, out_names, note = _inputs(cfg, opts.samples)
    bar.update(1)
    with torch.no_grad():
        ref = [reference(*(torch.from_numpy(f[n]) for n in in_names)).numpy() for f in feeds]
        mine = wrapper(*(torch.from_numpy(feeds[0][n]) for n in in_names)).numpy()
    if mine.shape != ref[0].shape or not np.allclose(mine, ref[0], atol=1e-5, rtol=1e-4):
        raise ExportError(f"the export wrapper disagrees with transformers' own {cfg.family} code path "
                          f"(shapes {mine.shape} vs {ref[0].shape}); refusing to export")
    example = tuple(torch.from_numpy(feeds[0][n]) for n in in_names)
    dynamic = cfg.family != "mllama"  # Mllama's tiling reshapes bake the batch of one image
    with tempfile.TemporaryDirectory(prefix="vqz-vlm-export-") as tmp:
        raw_path = Path(tmp) / "raw.onnx"
        export_onnx(wrapper, example, raw_path, input_names=in_names, output_names=out_names, opset=opts.opset,
                    dynamic_batch=dynamic)
        raw = onnx.load(str(raw_path))
    bar.update(1)
    bn_before = count_ops(raw, "BatchNormalization")
    ortu.import_ort()  # sets ONNX Runtime's default log severity before graphsurgeon's constant folding uses it
    if raw.ByteSize() < _LARGE:
        new, _report = remove_batchnorm(raw)
    else:  # pragma: no cover - needs a >2 GB tower; ViT towers have no BatchNormalization to fold
        _log.warning("vision ONNX is over 2 GB: BatchNormalization pass skipped (%d BN nodes)", bn_before)
        new = raw
    sess_src: Any = new if new.ByteSize() < _LARGE else None
    if sess_src is None:  # pragma: no cover
        big = Path(tempfile.mkdtemp(prefix="vqz-vlm-big-")) / "v.onnx"
        onnx.save(new, str(big), save_as_external_data=True, all_tensors_to_one_file=True, location="v.onnx.data")
        sess_src = big
    sess = ortu.session(sess_src, optimize=False)  # the graph as written, no ORT fusions
    cos_all, max_abs = [], 0.0
    for f, r in zip(feeds, ref):
        got = ortu.run(sess, {n: f[n] for n in in_names})[0]
        if got.shape != r.shape:
            raise VerificationError(f"ONNX output shape {got.shape} != torch {r.shape}; nothing was written")
        cos_all.append(token_cosines(r, got))
        max_abs = max(max_abs, float(np.max(np.abs(r.astype(np.float64) - got))))
    cos = np.concatenate(cos_all)
    bar.update(1)
    if float(cos.min()) < opts.min_cosine:
        worst = int(np.argmin(cos))
        raise VerificationError(
            f"vision ONNX of {cfg.name} does not match torch: min visual-token cosine {cos.min():.6f} "
            f"(token {worst}) < {opts.min_cosine}; nothing was written",
            hint="this is an exporter problem (an op mistranslated); run with -vv and report it",
        )
    skip = generated_skip_modules(model)
    qc = nf4_quantization_config(skip, compute_dtype=opts.compute_dtype)
    out_dir.mkdir(exist_ok=True)
    gguf = None
    if opts.llm_format == "gguf":  # verified tensor by tensor against the FP16 weights before it is in place
        gguf = write_llm_gguf(model, cfg, Path(model_dir), out_dir / gguf_file_name(opts.gguf_type), opts.gguf_type)
    onnx_path, plan_path = out_dir / ONNX_FILE, out_dir / PLAN_FILE
    qc_path, manifest_path = out_dir / QUANT_CONFIG_FILE, out_dir / MANIFEST_FILE
    _save_onnx(new, onnx_path)
    onnx_sha = sha256_file(onnx_path)
    atomic_write_json(plan_path, _fp16_plan(new, onnx_sha, cfg.name))
    write_quantization_config(qc_path, qc)
    result = VisionExportResult(
        out_dir, onnx_path, plan_path, qc_path, manifest_path, cfg.name, cfg.family,
        [i.to_dict() for i in graph_inputs(new)], [o.to_dict() for o in graph_outputs(new)],
        float(cos.min()), float(cos.mean()), max_abs, int(cos.size), len(feeds), bn_before,
        count_ops(new, "BatchNormalization"), count_ops(new, "LayerNormalization"), len(new.graph.node), len(skip),
        time.perf_counter() - t0, note,
    )
    if gguf is not None:
        result.extra["gguf"] = gguf.to_dict()
        result.gguf = gguf
    manifest = {
        "version": EXPORT_VERSION,
        "source": {"model_dir": str(model_dir), "config_sha256": _config_sha(Path(model_dir)), "model": cfg.name,
                   "architecture": cfg.architecture},
        "vision_onnx": {"file": ONNX_FILE, "sha256": onnx_sha, "inputs": result.inputs, "outputs": result.outputs,
                        "opset": opts.opset, "precision_plan": PLAN_FILE,
                        "host_side": _host_side(cfg)},
        "verification": {"min_cosine": result.min_cosine, "mean_cosine": result.mean_cosine,
                         "max_abs_error": result.max_abs_error, "tokens": result.tokens_compared,
                         "threshold": opts.min_cosine, "data": note},
        "llm": {"quantization_config": QUANT_CONFIG_FILE, "sha256": sha256_file(qc_path), "format": "bitsandbytes nf4",
                "skip_modules": len(skip)},
    }
    if gguf is not None:
        manifest["llm_gguf"] = {"file": gguf.path.name, "sha256": gguf.sha256, "type": gguf.qtype,
                                "tokenizer": gguf.tokenizer, "tensors": len(gguf.checks),
                                "max_err_of_bound": gguf.worst.max_err_of_bound,
                                "vision": f"not in the GGUF: {ONNX_FILE} (FP16 TensorRT engine) gives the image embeddings"}
    atomic_write_json(manifest_path, manifest)
    bar.update(1)
    bar.close()
    _log.info("vlm export %s -> %s: min token cosine %.6f", cfg.name, onnx_path, result.min_cosine)
    return result


def _config_sha(model_dir: Path) -> str | None:
    p = model_dir / "config.json" if model_dir.is_dir() else model_dir
    return sha256_file(p) if p.is_file() else None


def _host_side(cfg: VlmConfig) -> str:
    if cfg.family == "llava_next":
        return ("anyres: split the image into grid tiles + a base image (image_grid_pinpoints), run the ONNX on all of "
                "them, then unpad, add image_newline per row and concatenate on the host (as transformers does)")
    if cfg.family == "mllama":
        return "tiling, aspect_ratio_ids / aspect_ratio_mask from the Mllama image processor; output feeds cross-attention"
    return "the output replaces the image placeholder tokens of the prompt"
