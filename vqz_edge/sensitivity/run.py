"""``vqz-edge sensitivity`` as a library call: load the calibration, stream held-out data, sweep, diagnose,
optionally find and verify the automatic plan, and write the artifacts."""

from __future__ import annotations

import itertools
import json
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import onnx

from ..artifacts.calib_cache import CalibrationCache, cache_bytes
from ..artifacts.calib_dir import check_calibration_set
from ..artifacts.plan import ResolvedPlan
from ..calib import load_histograms
from ..calib.collect import model_memory
from ..calib.finetune import FinetuneOptions, finetune_on_data
from ..calib.histogram import AbsHistogram
from ..calib.memory import (
    INTERMEDIATE_FACTOR,
    ORT_MODEL_FACTOR,
    current_rss,
    default_budget,
    fit_batch,
    fmt_bytes,
)
from ..calib.qdq import insert_qdq
from ..calib.tasks import TaskSpec
from ..calib.thresholds import compute_amax
from ..data.images import demo_sources, folder_sources
from ..data.source import DataSource, Declared, open_data
from ..errors import InputError
from ..fsutil import canonical_json, check_output_dir, sha256_file, write_set
from ..log import get_logger
from ..onnx_io import graph_inputs, load_model
from ..policy.resolve import resolve_plan
from ..progress import ProgressFactory
from ..spec import PrecisionRule
from .costs import layer_costs
from .diagnostics import diagnose
from .evaluator import Evaluator, Metrics, Variant, evaluate_stream
from .refine import refine_thresholds
from .sweep import (
    AutoPlan,
    SensitivityResult,
    SweepOptions,
    TargetOptions,
    auto_plan,
    metric_in,
    plan_with,
    sweep,
    timed,
)
from .units import build_units

_log = get_logger(__name__)

OUTPUT_FILES = {
    "result": "sensitivity.json",
    "finetuned": "model.finetuned.onnx",
    "finetuned_cache": "calibration.finetuned.cache",
    "plan": "plan.json",
    "rules": "precision_rules.toml",
    "qdq": "model.qdq.onnx",
    "cache": "calibration.cache",
}


@dataclass
class Calibration:
    outdir: Path
    amax: dict[str, float]
    histograms: dict[str, AbsHistogram]
    summary: dict[str, Any]


def load_calibration(outdir: Path, model_sha256: str | None = None) -> Calibration:
    """Read summary.json and histograms.npz of a ``vqz-edge calibrate`` output directory."""
    outdir = Path(outdir)
    summary_path, hist_path = outdir / "summary.json", outdir / "histograms.npz"
    for p in (summary_path, hist_path):
        if not p.is_file():
            raise InputError(f"calibration directory {outdir} has no {p.name}",
                             hint="run 'vqz-edge calibrate MODEL.onnx --data ... -o DIR' and pass --calibration DIR")
    try:
        summary = json.loads(summary_path.read_text(encoding="utf-8"))
        amax = {str(k): float(v["amax"]) for k, v in summary["tensors"].items()}
    except (ValueError, KeyError, TypeError) as exc:
        raise InputError(f"{summary_path} is not a vqz-edge calibration summary: {exc}") from exc
    made_for = summary.get("model", {}).get("sha256")
    if model_sha256 and made_for and made_for != model_sha256:
        raise InputError(
            f"the calibration in {outdir} was made for a different model (sha256 {made_for[:12]}..., this model "
            f"{model_sha256[:12]}...)", hint="calibrate this exact ONNX file first")
    check_calibration_set(outdir, used=(hist_path.name,))  # summary's amax and these histograms: the same run
    try:
        hists = load_histograms(hist_path)
    except (ValueError, KeyError, OSError) as exc:
        raise InputError(f"cannot read {hist_path}: {exc}") from exc
    return Calibration(outdir, amax, hists, summary)


def evaluation_batch(model: onnx.ModelProto, requested: int, max_memory: int | None) -> int:
    """The evaluation batch within the memory budget: an FP32 and a quantized session hold the weights, and each
    sample costs ORT's live intermediates (calib.memory's estimate) plus its cached input and FP32 output."""
    weights, _, largest = model_memory(model)
    budget = max_memory if max_memory is not None else default_budget()
    batch = fit_batch(requested, INTERMEDIATE_FACTOR * largest + 2 * largest,
                      current_rss() + int(2 * ORT_MODEL_FACTOR * weights), budget, "the sensitivity sweep")
    if batch < requested:
        _log.warning("evaluating in batches of %d instead of %d to stay within the memory budget of %s", batch,
                     requested, fmt_bytes(budget))
    return batch


def crop_sources(src: DataSource) -> list[str] | None:
    """Source photo of every crop, in stream order (crops go round-robin over the files), or None (npy)."""
    if src.kind == "npy":
        return None
    sources = demo_sources(src.split) if src.kind == "demo" else folder_sources(src.path)  # type: ignore[arg-type]
    files = [s.name for s in sources for _ in s.paths]
    return [files[i % len(files)] for i in range(src.count)]


def _split_stream(batches: Iterator[np.ndarray], first: int) -> tuple[list[np.ndarray], Iterator[np.ndarray]]:
    """The first ``first`` samples as a list of batches, and an iterator over the rest."""
    head: list[np.ndarray] = []
    have = 0
    carry: list[np.ndarray] = []
    for x in batches:
        if have + x.shape[0] <= first:
            head.append(x)
            have += x.shape[0]
        else:
            cut = first - have
            if cut > 0:
                head.append(x[:cut])
            carry.append(x[cut:])
            have = first
        if have >= first:
            break
    return head, itertools.chain(carry, batches)


def analyze(
    model_path: Path,
    calibration: Path,
    data: str | Path,
    options: SweepOptions | None = None,
    *,
    target: TargetOptions | None = None,
    num_images: int = 256,
    verify_images: int = 1000,
    batch_size: int = 32,
    preset: str = "none",
    rules: Sequence[PrecisionRule] = (),
    method: str | None = None,
    percentile: float = 99.99,
    output: str | None = None,
    refine: bool = False,
    refine_data: str | Path | None = None,
    refine_images: int = 64,
    finetune: FinetuneOptions | None = None,
    finetune_data: str | Path | None = None,
    max_memory: int | None = None,
    progress: ProgressFactory | None = None,
    preprocessing: Declared = None,
    task: TaskSpec | None = None,
) -> tuple[SensitivityResult, Calibration]:
    """Sweep ``model_path`` with the ranges of ``calibration`` on held-out ``data`` (evaluation split).

    ``num_images`` samples drive the sweep and the plan search; with a ``target`` the plan is verified on the
    next ``verify_images`` samples (disjoint from the sweep samples). ``method`` recomputes every threshold
    from the stored histograms instead of using the calibrated amax. ``refine`` then picks each quantized
    tensor's threshold by output loss on ``refine_images`` samples of the *calibration* split of
    ``refine_data`` (default: the calibration's own data when it was 'demo'). ``finetune`` (with a target)
    trains the automatic plan's INT8 weights and ranges on ``finetune.samples`` calibration-split samples of
    ``finetune_data`` (default: as for refinement) and verifies the fine-tuned model. ``max_memory`` (bytes,
    default calib.memory.default_budget()) bounds the evaluation batch, as it bounds calibration. ``task`` (dense
    or detection, calib.tasks) makes its metrics available as ``options.metric`` (map_correlation, miou, map50, ...)
    and reports them beside cosine for every plan.
    """
    opts = options or SweepOptions()
    if num_images <= 0 or batch_size <= 0 or verify_images < 0:
        raise InputError("num_images and batch_size must be positive, verify_images non-negative")
    if finetune is not None and target is None:
        raise InputError("fine-tuning trains the automatic plan: it needs a target", hint="add --goal")
    seconds: dict[str, float] = {}
    done = timed(seconds, "load")
    model_path = Path(model_path)
    model = load_model(model_path)
    sha = sha256_file(model_path)
    cal = load_calibration(calibration, sha)
    amax = cal.amax
    if method is not None:
        amax = {n: compute_amax(h, method, percentile) for n, h in sorted(cal.histograms.items())}
    name = model_path.parent.name if model_path.stem == "model" else model_path.stem
    base = resolve_plan(model, model_name=name, onnx_sha256=sha, rules=rules, preset=preset).plan
    infos = graph_inputs(model)
    if len(infos) != 1:
        raise InputError(f"{model_path}: the sensitivity command feeds single-input image models; inputs are "
                         f"{[i.name for i in infos]}",
                         hint="for multi-input models use the Python API (vqz_edge.sensitivity) with your own feeds")
    batch_size = evaluation_batch(model, batch_size, max_memory)
    extra = verify_images if target is not None else 0
    # photos get ``preprocessing`` (the CLI passes the calibration's recorded recipe unless told otherwise)
    src = open_data(data, infos[0], count=num_images + extra, split="evaluation", preprocessing=preprocessing)
    sources = crop_sources(src)
    head, rest = _split_stream(iter(src.batches(batch_size)), min(num_images, src.count))
    thresholds = "calibrated" if method is None else f"method {method}"
    refined: list[dict[str, Any]] = []
    if refine:
        done()
        done = timed(seconds, "refine")
        spec = refine_data or _calibration_data(cal, "threshold refinement", "--refine-data")
        cal_src = open_data(spec, infos[0], count=refine_images, split="calibration", preprocessing=preprocessing)
        cal_eval = Evaluator(model, amax, list(cal_src.batches(batch_size)), output=output)
        amax, changes = refine_thresholds(model, amax, cal.histograms, base, build_units(model, base), cal_eval,
                                          metric=opts.metric, progress=progress)
        refined = [c.to_dict() for c in changes]
        thresholds = f"refined on {cal_src.description}"
    evaluator = Evaluator(model, amax, head, sources=sources[: num_images] if sources else None, output=output,
                          task=task)
    evaluator.reference()
    done()

    done = timed(seconds, "sweep")
    ranked, all_int8 = sweep(model, evaluator, base, opts, progress=progress)
    done()
    flags = diagnose(model, cal.histograms, amax)
    by_tensor: dict[str, list[str]] = {}
    for f in flags:
        by_tensor.setdefault(f.tensor, []).append(f.kind)
    for r in ranked:
        r.flags = tuple(sorted({k for t in (*r.unit.activations, *r.unit.weights) for k in by_tensor.get(t, [])}))

    desc = f"{src.description.split('(')[0].strip()} (evaluation split): {evaluator.samples} samples for the sweep"
    result = SensitivityResult(
        name, opts, desc, evaluator.samples, base, preset, ranked, all_int8, flags, layer_costs(model), amax,
        calibration=str(calibration),
    )
    if target is not None:
        done = timed(seconds, "auto_plan")
        plan = auto_plan(model, evaluator, base, ranked, all_int8, opts.metric, target, preset=preset,
                         spec_rules=rules, onnx_sha256=sha, progress=progress, block_depth=opts.block_depth)
        result.auto = plan
        done()
        variant: Variant | None = None
        if finetune is not None:
            done = timed(seconds, "finetune")
            variant = _finetune(model, amax, plan, evaluator, finetune, finetune_data or refine_data, cal, infos[0],
                                progress, preprocessing)
            result.finetuned = variant
            done()
        done = timed(seconds, "verification")
        n_verify = src.count - evaluator.samples if extra else 0
        if n_verify > 0:
            candidates = {x for r in ranked for x in r.unit.nodes}
            baseline_plan = plan_with(base, candidates, candidates, "sensitivity: all INT8")
            vsources = sources[evaluator.samples:] if sources else None
            plans: list[ResolvedPlan | tuple[ResolvedPlan, Variant]] = [baseline_plan, plan.plan]
            if variant is not None:
                plans.append((plan.plan, variant))
            measured = evaluate_stream(model, amax, plans, rest, sources=vsources, output=output, task=task)
            base_m, plan_m = measured[0], measured[1]
            final = measured[-1]
            n_verify = plan_m.samples
            plan.verification = {
                "samples": n_verify,
                "data": f"held-out samples {num_images}..{num_images + n_verify - 1} of the evaluation split "
                        "(disjoint from the sweep samples)",
                "baseline_all_int8": base_m.to_dict(),
                "plan": plan_m.to_dict(),
                "plan_finetuned": final.to_dict() if variant is not None else None,
                "met": plan.meets(final),
            }
        elif verify_images > 0:
            _log.warning("no samples left for verification (data holds %d); the plan is unverified", src.count)
        done()
    result.seconds = seconds
    result.evaluations = evaluator.evaluations
    result.thresholds = thresholds
    result.refined = refined
    return result, cal


def _finetune(model: onnx.ModelProto, amax: dict[str, float], plan: AutoPlan, evaluator: Evaluator,
              options: FinetuneOptions, data: str | Path | None, cal: Calibration, info: Any,
              progress: ProgressFactory | None, preprocessing: Declared = None) -> Variant:
    ft, src = finetune_on_data(model, amax, plan.plan, data or _calibration_data(cal, "fine-tuning", "--finetune-data"), info,
                               options, output=evaluator.output, progress=progress, preprocessing=preprocessing)
    variant = Variant(ft.model, ft.amax, ft.weight_scales)
    plan.finetuned = evaluator.evaluate(plan.plan, variant)
    plan.finetune = {"options": options.to_dict(), "data": src.description,
                     "history": [{k: round(v, 6) for k, v in h.items()} for h in ft.history],
                     "implicit_scale_changes": ft.implicit_scale_changes,
                     "domain_gap": domain_gap(ft.final_loss, plan.finetuned)}
    return variant


# held-out loss this many times the calibration loss: the calibration photos likely do not look like the held-out
# ones (a heuristic); below DOMAIN_GAP_FLOOR the plan is near-lossless and a ratio means nothing
DOMAIN_GAP_WARN = 1.3
DOMAIN_GAP_FLOOR = 1e-4


def domain_gap(calibration_loss: float, held_out: Metrics) -> dict[str, Any] | None:
    """The fine-tuned model's distillation loss on the calibration data (the last eighth of training, each step on
    samples it had not trained on yet) against the same loss on the held-out sweep samples (``--data``). A large
    ratio says the held-out data is unlike the calibration data: more fine-tuning samples are unlikely to help,
    calibration data like the held-out data will."""
    if held_out.nmse is None or calibration_loss <= 0:
        return None
    ratio = held_out.nmse / calibration_loss
    large = ratio > DOMAIN_GAP_WARN and held_out.nmse >= DOMAIN_GAP_FLOOR
    gap = {"calibration_loss": round(calibration_loss, 8), "held_out_loss": round(held_out.nmse, 8),
           "ratio": round(ratio, 4), "warn_above": DOMAIN_GAP_WARN, "large": large}
    if large:
        _log.warning("after fine-tuning, the distillation loss on the held-out samples (--data) is %.1fx the loss on "
                     "the calibration data (%.5f vs %.5f): the held-out data looks unlike the calibration data. If "
                     "--data is what the model will see when deployed, calibrate (calibrate --data) and fine-tune "
                     "(--finetune-data) on data like it; more fine-tuning samples are unlikely to close this",
                     ratio, held_out.nmse, calibration_loss)
    return gap


def cache_version(cal: Calibration) -> int:
    """The TensorRT version code of the calibration's cache header (TRT-<code>-EntropyCalibration2)."""
    header = str(cal.summary.get("cache_header", ""))
    parts = header.split("-")
    if len(parts) == 3 and parts[1].isdigit():
        return int(parts[1])
    return 100300


def _calibration_data(cal: Calibration, purpose: str, option: str) -> str:
    kind = cal.summary.get("data", {}).get("kind")
    if kind == "demo":
        return "demo"
    raise InputError(f"the calibration in {cal.outdir} used {kind or 'unknown'} data; give the calibration data "
                     f"for {purpose}",
                     hint=f"pass {option} DIR|FILE.npy")


def write_outputs(result: SensitivityResult, outdir: Path, model_path: Path | None = None,
                  version_code: int = 100300) -> dict[str, Path]:
    """sensitivity.json; with an automatic plan also plan.json, precision_rules.toml and its model.qdq.onnx;
    with re-chosen thresholds (``method``/``refine``) a calibration.cache holding them (header ``version_code``)."""
    outdir = check_output_dir(Path(outdir))
    payloads: dict[str, bytes] = {"result": canonical_json(result.to_dict()).encode()}
    ft = result.finetuned
    if result.thresholds != "calibrated":  # thresholds differ from the calibration's cache: write the new one
        payloads["cache"] = cache_bytes(CalibrationCache.from_amax(result.amax, version_code))
    if ft is not None:  # the fine-tuned FP32 weights and their trained ranges: the implicit path's pair
        payloads["finetuned"] = ft.model.SerializeToString()
        payloads["finetuned_cache"] = cache_bytes(CalibrationCache.from_amax(dict(ft.amax), version_code))
    if result.auto is not None:
        a = result.auto
        payloads["plan"] = canonical_json(a.plan.to_dict()).encode()
        header = [
            "generated by vqz-edge sensitivity --target; paste as the [precision] table of the build spec",
            f"target: {a.metric} >= {a.options.target}"
            + (f" and top-1 agreement >= {a.options.min_agreement}" if a.options.min_agreement is not None else ""),
            f"sweep data: {result.data}; reached {a.metric} {a.final.value(a.metric):.4f}"
            + (" after fine-tuning" if a.finetuned is not None else "")
            + f" (all-INT8 {a.baseline.value(a.metric):.4f}), met: {a.meets(a.final)}",
        ]
        if a.verification:
            v = a.verification
            final = v.get("plan_finetuned") or v["plan"]
            header.append(f"verified on {v['samples']} further held-out samples: {a.metric} "
                          f"{metric_in(final, a.metric)}" + (" fine-tuned" if v.get("plan_finetuned") else "")
                          + f" (all-INT8 {metric_in(v['baseline_all_int8'], a.metric)}), met: {v['met']}")
        if ft is not None and a.finetune is not None:
            header.append(f"fine-tuned on {a.finetune['options']['samples']} samples of {a.finetune['data']} -- build "
                          "from model.qdq.onnx, or model.finetuned.onnx with calibration.finetuned.cache (implicit)")
        elif result.thresholds != "calibrated":
            header.append(f"thresholds: {result.thresholds} -- build with the calibration.cache written beside this file")
        payloads["rules"] = a.rules_toml(header).encode()
        if ft is not None:
            payloads["qdq"] = ft.qdq(a.plan).SerializeToString()
        elif model_path is not None:
            qdq, _ = insert_qdq(onnx.load(str(model_path)), result.amax, a.plan)
            payloads["qdq"] = qdq.SerializeToString()
    # one set, sensitivity.json last; files an earlier run wrote here that this one does not are removed
    write_set(outdir, {OUTPUT_FILES[k]: v for k, v in payloads.items()}, last=OUTPUT_FILES["result"],
              tag="sensitivity", drop=OUTPUT_FILES.values())
    return {key: outdir / OUTPUT_FILES[key] for key in payloads}



__all__ = ["Calibration", "analyze", "cache_version", "crop_sources", "load_calibration", "write_outputs"]
