"""Quantization-aware fine-tuning of the Q/DQ graph, distilled from the FP32 model on the calibration data.

Post-training calibration picks one range per activation tensor and rounds every weight to nearest; on a
depthwise-separable CNN that leaves most of the error (the demo MobileNetV2: logit cosine 0.94 all INT8).
Here the ONNX graph itself is run in torch with fake quantization exactly where the plan puts Q/DQ
(per-channel symmetric weights, per-tensor activations, the same [-128, 127] saturation as
QuantizeLinear), and the Conv/Gemm weights and biases plus every activation range (LSQ-style, through a
straight-through estimator) are trained to reproduce the FP32 model's outputs on the calibration samples.
No labels: the teacher is the FP32 model. Weight scales stay at the FP32 weights' absmax/127, so the
result is one ONNX model with updated weights (written with those scales as Q/DQ) and updated thresholds.

Only the ops a vision backbone needs are interpreted; any other op is an error naming it (no silent
fallback). Deterministic: fixed seed, fixed order, fixed thread count -> the same bytes.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import onnx
from onnx import helper, numpy_helper

from .. import ort as ortu
from ..artifacts.plan import ResolvedPlan
from ..data.source import DataSource, Declared, open_data
from ..errors import CalibrationError, DependencyError, InputError
from ..log import get_logger
from ..onnx_io import TensorInfo, graph_inputs
from ..policy.placement import Placement, place
from ..progress import ProgressFactory, make_bar
from .collect import model_memory
from .memory import FINETUNE_FACTOR, FINETUNE_WEIGHT_FACTOR, current_rss, default_budget, fit_batch, fmt_bytes
from .qdq import per_channel_scale

_log = get_logger(__name__)

SUPPORTED_OPS = frozenset({
    "Conv", "Gemm", "MatMul", "Add", "Sub", "Mul", "Div", "Relu", "Clip", "Sigmoid", "HardSigmoid", "HardSwish",
    "GlobalAveragePool", "AveragePool", "MaxPool", "Flatten", "Reshape", "Identity", "Concat", "Softmax",
})
_COMPUTE = ("Conv", "Gemm", "MatMul")


@dataclass(frozen=True)
class FinetuneOptions:
    """One pass over ``samples`` calibration samples in batches of ``batch_size`` (more samples, not more
    passes: fresh crops generalise, repeated ones overfit). ``lr``: Adam's step for weights and biases;
    ``lr_range``: for the log activation ranges. Both decay towards zero on a cosine schedule."""

    samples: int = 4096
    batch_size: int = 16
    lr: float = 1e-5
    lr_range: float = 1e-2
    seed: int = 0
    threads: int = 2
    version: int = 1
    max_memory: int | None = None  # bytes; None: calib.memory.default_budget(); the batch shrinks to fit it

    def __post_init__(self) -> None:
        if self.max_memory is not None and self.max_memory <= 0:
            raise ValueError(f"max_memory must be positive, got {self.max_memory}")
        if self.samples <= 0 or self.batch_size <= 0 or self.threads <= 0:
            raise ValueError(f"samples, batch_size and threads must be positive, got {self.samples}, "
                             f"{self.batch_size}, {self.threads}")
        if not (0 < self.lr < 1 and 0 <= self.lr_range < 1):
            raise ValueError(f"learning rates must be in (0, 1) (lr_range may be 0), got lr={self.lr}, "
                             f"lr_range={self.lr_range}")

    def to_dict(self) -> dict[str, Any]:
        return dict(vars(self))


@dataclass
class FinetuneResult:
    model: onnx.ModelProto  # FP32 model with the fine-tuned weights (weights on their INT8 grid)
    amax: dict[str, float]  # every calibrated tensor; the INT8-fed ones with their trained range
    weight_scales: dict[str, np.ndarray]  # per-channel scales of the weights the plan quantizes
    history: list[dict[str, float]] = field(default_factory=list)  # distillation loss along the way
    # weight channels whose largest level fell below 127: TensorRT's implicit path would derive another scale
    implicit_scale_changes: int = 0
    # mean loss of the last eighth of training: each step on samples not trained on yet, so an estimate of the
    # trained model's loss on the calibration data's distribution
    final_loss: float = 0.0


def _torch() -> Any:
    try:
        import torch
    except ImportError as exc:  # pragma: no cover - torch is a dependency of the export extra
        raise DependencyError("quantization-aware fine-tuning needs torch", hint="pip install 'vqz-edge[export]'") from exc
    return torch


def _attrs(node: onnx.NodeProto) -> dict[str, Any]:
    return {a.name: helper.get_attribute_value(a) for a in node.attribute}


@dataclass(frozen=True)
class QuantPoints:
    """Where the Q/DQ writer puts fake quantization: per (node name, input index) of the INT8 layers, the
    activation tensor or the weight with its channel axis. Consumers outside the plan's INT8 layers read the
    float tensor, exactly as in :func:`vqz_edge.calib.qdq.insert_qdq`."""

    activations: dict[tuple[str, int], str]
    weights: dict[tuple[str, int], tuple[str, int]]

    @property
    def tensors(self) -> set[str]:
        return set(self.activations.values())

    @property
    def weight_axes(self) -> dict[str, int]:
        return {name: axis for name, axis in self.weights.values()}


def quant_points(model: onnx.ModelProto, plan: ResolvedPlan, placement: Placement | None = None) -> QuantPoints:
    placement = placement or place(model)
    decided = {layer.name: layer for layer in plan.layers}
    acts: dict[tuple[str, int], str] = {}
    weights: dict[tuple[str, int], tuple[str, int]] = {}
    for node in model.graph.node:
        layer = decided.get(node.name)
        if layer is None or not layer.quantizable or layer.precision != "int8":
            continue
        site = placement.site(node.name)
        if site is None:
            raise CalibrationError(f"the plan puts {node.name!r} in INT8 but the placement rules give it no Q/DQ",
                                   hint="resolve the plan against this model with the same placement options")
        for k in site.activations:
            acts[(node.name, k)] = node.input[k]
        for k, axis in site.weights:
            weights[(node.name, k)] = (node.input[k], axis)
    return QuantPoints(acts, weights)


def _check_ops(model: onnx.ModelProto) -> None:
    bad = sorted({n.op_type for n in model.graph.node if n.op_type not in SUPPORTED_OPS})
    if bad:
        raise CalibrationError(
            f"fine-tuning cannot run op(s) {bad} of model {model.graph.name!r} (it interprets {sorted(SUPPORTED_OPS)})",
            hint="calibrate without --finetune (the op runs whatever its precision), or fold/remove it before export",
        )


class _Interpreter:
    """Runs the ONNX graph in torch. Trainable: Conv/Gemm/MatMul float weights and biases; activation log-ranges."""

    def __init__(self, model: onnx.ModelProto, amax: Mapping[str, float], points: QuantPoints):
        torch = _torch()
        self.torch = torch
        self.model = model
        self.nodes = list(model.graph.node)
        inits = {i.name: i for i in model.graph.initializer}
        self.input = next(i.name for i in model.graph.input if i.name not in inits)
        self.outputs = [o.name for o in model.graph.output]
        self.opset = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 13)
        trainable: set[str] = set()
        for n in self.nodes:
            if n.op_type in _COMPUTE:
                trainable.update(x for x in n.input if x in inits)
        self.consts: dict[str, Any] = {}
        self.params: dict[str, Any] = {}
        for init in model.graph.initializer:
            arr = numpy_helper.to_array(init)
            t = torch.from_numpy(np.array(arr, copy=True))
            if init.name in trainable and arr.dtype == np.float32:
                self.params[init.name] = torch.nn.Parameter(t)
            else:
                self.consts[init.name] = t
        self.points = points
        self.weight_scale = {key: torch.from_numpy(per_channel_scale(numpy_helper.to_array(inits[key[0]]), key[1]))
                             for key in sorted(set(points.weights.values()))}
        self.log_range = {t: torch.nn.Parameter(torch.tensor(math.log(max(float(amax[t]), 1e-8)), dtype=torch.float32))
                          for t in sorted(points.tensors)}
        self.quantize = True

    # fake quantization with straight-through rounding; gradients reach the scale (LSQ) and the input
    def _fq(self, x: Any, scale: Any, lo: int, hi: int) -> Any:
        torch = self.torch
        v = x / scale
        r = v + (torch.round(v) - v).detach()
        return torch.clamp(r, lo, hi) * scale

    def _weight(self, name: str, axis: int) -> Any:
        w = self.params[name] if name in self.params else self.consts[name]
        shape = [1] * w.dim()
        shape[axis] = -1
        return self._fq(w, self.weight_scale[(name, axis)].reshape(shape), -127, 127)

    def _input(self, node: onnx.NodeProto, k: int, env: dict[str, Any], fq: dict[Any, Any]) -> Any:
        name = node.input[k]
        if name == "":
            return None
        key = (node.name, k)
        if self.quantize and key in self.points.activations:
            if name not in fq:  # one shared Q/DQ pair per tensor
                fq[name] = self._fq(env[name], self.torch.exp(self.log_range[name]) / 127.0, -128, 127)
            return fq[name]
        if self.quantize and key in self.points.weights:
            wkey = self.points.weights[key]
            if wkey not in fq:
                fq[wkey] = self._weight(*wkey)
            return fq[wkey]
        if name in env:
            return env[name]
        if name in self.params:
            return self.params[name]
        if name in self.consts:
            return self.consts[name]
        raise CalibrationError(f"fine-tuning: tensor {name!r} has no producer in {self.model.graph.name!r}")

    def __call__(self, x: Any) -> dict[str, Any]:
        env: dict[str, Any] = {self.input: x}
        fq: dict[Any, Any] = {}
        for node in self.nodes:
            ins = [self._input(node, k, env, fq) for k in range(len(node.input))]
            env[node.output[0]] = _run(self.torch, node, ins, self.opset)
        return {o: env[o] for o in self.outputs}

    def trainable(self) -> tuple[list[Any], list[Any]]:
        return list(self.params.values()), list(self.log_range.values())


def _pads(attrs: Mapping[str, Any], spatial: int) -> tuple[list[int], list[int]]:
    pads = list(attrs.get("pads", [0] * 2 * spatial))
    if attrs.get("auto_pad", b"NOTSET") not in (b"NOTSET", "NOTSET"):
        raise CalibrationError("fine-tuning: auto_pad is not supported; re-export with explicit pads")
    return pads[:spatial], pads[spatial:]


def _run(torch: Any, node: onnx.NodeProto, ins: list[Any], opset: int = 13) -> Any:
    f = torch.nn.functional
    op, a = node.op_type, _attrs(node)
    if op == "Conv":
        spatial = ins[0].dim() - 2
        begin, end = _pads(a, spatial)
        x = ins[0]
        if begin != end:
            x = f.pad(x, [p for pair in zip(reversed(begin), reversed(end)) for p in pair])
            begin = [0] * spatial
        conv = (f.conv1d, f.conv2d, f.conv3d)[spatial - 1]
        return conv(x, ins[1], ins[2] if len(ins) > 2 else None, stride=a.get("strides", 1), padding=begin,
                    dilation=a.get("dilations", 1), groups=a.get("group", 1))
    if op == "Gemm":
        x, w = ins[0], ins[1]
        if a.get("transA", 0):
            x = x.t()
        if a.get("transB", 0):
            w = w.t()
        y = a.get("alpha", 1.0) * (x @ w)
        if len(ins) > 2 and ins[2] is not None:
            y = y + a.get("beta", 1.0) * ins[2]
        return y
    if op == "MatMul":
        return ins[0] @ ins[1]
    if op in ("Add", "Sub", "Mul", "Div"):
        return {"Add": torch.add, "Sub": torch.sub, "Mul": torch.mul, "Div": torch.div}[op](ins[0], ins[1])
    if op == "Relu":
        return f.relu(ins[0])
    if op == "Clip":
        lo = ins[1] if len(ins) > 1 and ins[1] is not None else a.get("min")
        hi = ins[2] if len(ins) > 2 and ins[2] is not None else a.get("max")
        return torch.clamp(ins[0], None if lo is None else float(lo), None if hi is None else float(hi))
    if op == "Sigmoid":
        return torch.sigmoid(ins[0])
    if op == "HardSigmoid":
        return torch.clamp(a.get("alpha", 0.2) * ins[0] + a.get("beta", 0.5), 0, 1)
    if op == "HardSwish":
        return f.hardswish(ins[0])
    if op == "GlobalAveragePool":
        return ins[0].mean(dim=tuple(range(2, ins[0].dim())), keepdim=True)
    if op in ("AveragePool", "MaxPool"):
        begin, end = _pads(a, ins[0].dim() - 2)
        if begin != end or ins[0].dim() != 4:
            raise CalibrationError(f"fine-tuning: {op} {node.name!r} with asymmetric pads / non-2D input is not "
                                   "interpreted", hint="calibrate without --finetune")
        if op == "MaxPool":
            return f.max_pool2d(ins[0], a["kernel_shape"], a.get("strides", 1), begin, a.get("dilations", 1),
                                ceil_mode=bool(a.get("ceil_mode", 0)))
        return f.avg_pool2d(ins[0], a["kernel_shape"], a.get("strides", 1), begin, ceil_mode=bool(a.get("ceil_mode", 0)),
                            count_include_pad=bool(a.get("count_include_pad", 0)))
    if op == "Flatten":
        axis = a.get("axis", 1)
        return ins[0].reshape(int(np.prod(ins[0].shape[:axis])), -1)
    if op == "Reshape":
        shape = [int(s) for s in ins[1].tolist()]
        shape = [ins[0].shape[i] if s == 0 else s for i, s in enumerate(shape)]
        return ins[0].reshape(shape)
    if op == "Identity":
        return ins[0]
    if op == "Concat":
        return torch.cat(ins, dim=a["axis"])
    if op == "Softmax":
        if opset >= 13:
            return torch.softmax(ins[0], dim=a.get("axis", -1))
        axis = a.get("axis", 1) % ins[0].dim()  # opset < 13: softmax over the dims from axis on, flattened
        flat = ins[0].reshape(*ins[0].shape[:axis], -1)
        return torch.softmax(flat, dim=-1).reshape(ins[0].shape)
    raise CalibrationError(f"fine-tuning: op {op} ({node.name!r}) is not interpreted")


def _loss(torch: Any, out: Any, ref: Any) -> Any:
    # normalised MSE per sample (its output flattened): every sample weighs the same whatever its scale; the
    # evaluator's Metrics.nmse is the same quantity
    out, ref = out.reshape(out.shape[0], -1), ref.reshape(ref.shape[0], -1)
    return ((out - ref) ** 2).sum(dim=-1).div(ref.pow(2).sum(dim=-1).clamp_min(1e-12)).mean()


def _mean_loss(steps: list[tuple[float, int]]) -> float:
    """Sample-weighted mean of (loss, samples) steps."""
    return sum(v * n for v, n in steps) / sum(n for _, n in steps)


def _rebatch(batches: Iterable[np.ndarray], size: int, count: int) -> Iterator[np.ndarray]:
    """Exactly ``count`` samples from ``batches`` in batches of ``size``."""
    buf: list[np.ndarray] = []
    have = sent = 0
    for b in batches:
        buf.append(np.asarray(b, dtype=np.float32))
        have += len(b)
        while have >= size and sent < count:
            cat = np.concatenate(buf)
            take = min(size, count - sent)
            yield cat[:take]
            sent += take
            buf, have = [cat[take:]], len(cat) - take
        if sent >= count:
            return
    if have and sent < count:
        yield np.concatenate(buf)[: count - sent]


def finetune(
    model: onnx.ModelProto,
    amax: Mapping[str, float],
    plan: ResolvedPlan,
    batches: Iterable[np.ndarray],
    options: FinetuneOptions | None = None,
    *,
    output: str | None = None,
    progress: ProgressFactory | None = None,
) -> FinetuneResult:
    """Fine-tune ``model``'s INT8 weights and activation ranges on ``options.samples`` calibration samples
    from ``batches`` (any batch size; the FP32 teacher runs on each batch as it comes, nothing is stored),
    distilling graph output ``output`` (default: the first)."""
    options = options or FinetuneOptions()
    torch = _torch()
    _check_ops(model)
    feeds = graph_inputs(model)
    if len(feeds) != 1:
        raise CalibrationError(f"fine-tuning takes single-input models; {model.graph.name!r} has inputs "
                               f"{[f.name for f in feeds]}", hint="calibrate without --finetune")
    outputs = [o.name for o in model.graph.output]
    target = output or outputs[0]
    if target not in outputs:
        raise CalibrationError(f"fine-tuning: {target!r} is not an output of the model (outputs: {outputs})")
    points = quant_points(model, plan)
    missing = sorted(t for t in points.tensors if t not in amax)
    if missing:
        raise CalibrationError(f"activation(s) {missing[:3]} feed INT8 layers but have no calibrated range",
                               hint="re-run calibration on this exact model")
    if not points.weights and not points.activations:
        raise CalibrationError("the plan quantizes nothing: there is nothing to fine-tune",
                               hint="fine-tune a plan that keeps some layers INT8")
    threads = torch.get_num_threads()
    torch.set_num_threads(options.threads)
    torch.manual_seed(options.seed)
    try:
        net = _Interpreter(model, amax, points)
        teacher = ortu.session(model, threads=options.threads)  # the untouched FP32 model, not the weights in training
        params, ranges = net.trainable()
        groups = [{"params": params, "lr": options.lr}]
        if options.lr_range > 0:
            groups.append({"params": ranges, "lr": options.lr_range})
        opt = torch.optim.Adam(groups)
        total_steps = math.ceil(options.samples / options.batch_size)
        # cosine decay: large steps while the loss is high, small ones to settle on the grid
        sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda k: 0.5 * (1 + math.cos(math.pi * k / total_steps)))
        history: list[dict[str, float]] = []
        step_losses: list[tuple[float, int]] = []  # (loss, samples) per step
        seen = 0
        reported = 0  # steps already summarised in history
        report_every = max(1, total_steps // 8)
        bar = make_bar(progress, "fine-tuning (samples)", options.samples)
        try:
            for step, xb in enumerate(_rebatch(batches, options.batch_size, options.samples), start=1):
                x = torch.from_numpy(np.ascontiguousarray(xb))
                ref = torch.from_numpy(teacher.run([target], {net.input: x.numpy()})[0])
                loss = _loss(torch, net(x)[target], ref)
                if not torch.isfinite(loss):
                    raise CalibrationError(f"fine-tuning diverged at step {step} (loss {float(loss)})",
                                           hint="lower --finetune-lr (weights) or lr_range (FinetuneOptions)")
                opt.zero_grad()
                loss.backward()
                opt.step()
                sched.step()
                seen += len(xb)
                step_losses.append((float(loss.detach()), len(xb)))
                bar.update(len(xb))
                if step % report_every == 0 or seen >= options.samples:
                    window = _mean_loss(step_losses[reported:])
                    reported = len(step_losses)
                    history.append({"samples": seen, "loss": window})
                    _log.info("fine-tuning: %d/%d samples, distillation loss %.5f", seen, options.samples,
                              window)
        finally:
            bar.close()
        if seen < options.samples:
            raise CalibrationError(f"fine-tuning wanted {options.samples} samples but the data gave {seen}",
                                   hint="use image data (random crops are unlimited) or lower --finetune-samples")
        result = _export(model, net, amax, history)
        result.final_loss = _mean_loss(step_losses[-max(1, len(step_losses) // 8):])
        return result
    finally:
        torch.set_num_threads(threads)


def finetune_on_data(
    model: onnx.ModelProto,
    amax: Mapping[str, float],
    plan: ResolvedPlan,
    data: str | Path,
    model_input: TensorInfo,
    options: FinetuneOptions,
    *,
    output: str | None = None,
    progress: ProgressFactory | None = None,
    preprocessing: Declared = None,
) -> tuple[FinetuneResult, DataSource]:
    """:func:`finetune` on ``options.samples`` samples of the calibration split of ``data`` ('demo', a folder of
    images or FILE.npy, preprocessed as ``preprocessing`` declares); refused before any training when the data
    holds fewer."""
    src = open_data(data, model_input, count=options.samples, split="calibration", preprocessing=preprocessing)
    if src.count < options.samples:
        raise InputError(f"--finetune-samples {options.samples}: the data {src.description} holds fewer",
                         hint="lower --finetune-samples, or give a folder of images (crops are unlimited)")
    options = fit_finetune_batch(model, options)
    return finetune(model, amax, plan, src.batches(options.batch_size), options, output=output,
                    progress=progress), src


def fit_finetune_batch(model: onnx.ModelProto, options: FinetuneOptions) -> FinetuneOptions:
    """``options`` with the batch shrunk to the memory budget where it does not fit (logged)."""
    weights, per_image, _ = model_memory(model)
    budget = options.max_memory if options.max_memory is not None else default_budget()
    batch = fit_batch(options.batch_size, FINETUNE_FACTOR * per_image,
                      current_rss() + FINETUNE_WEIGHT_FACTOR * weights, budget, "fine-tuning")
    if batch < options.batch_size:
        _log.warning("fine-tuning in batches of %d instead of %d to stay within the memory budget of %s",
                     batch, options.batch_size, fmt_bytes(budget))
        options = replace(options, batch_size=batch)
    return options


def _export(model: onnx.ModelProto, net: _Interpreter, amax: Mapping[str, float],
            history: list[dict[str, float]]) -> FinetuneResult:
    torch = net.torch
    out = onnx.ModelProto()
    out.CopyFrom(model)
    axes = net.points.weight_axes
    scales: dict[str, np.ndarray] = {}
    with torch.no_grad():
        values: dict[str, np.ndarray] = {}
        short = 0
        for name, p in net.params.items():
            w = p.detach()
            if name in axes:  # store the weight on its INT8 grid: the Q/DQ model and the FP32 file agree
                axis = axes[name]
                shape = [1] * w.dim()
                shape[axis] = -1
                s = net.weight_scale[(name, axis)].reshape(shape)
                q = torch.clamp(torch.round(w / s), -127, 127)
                w = q * s
                scales[name] = net.weight_scale[(name, axis)].numpy().astype(np.float32)
                # TensorRT's implicit path derives each channel's scale from max|w| of model.finetuned.onnx: the
                # same scale only while the channel still reaches level 127
                reduce = tuple(i for i in range(q.dim()) if i != axis)
                short += int((q.abs().amax(dim=reduce) < 127).sum()) if reduce else 0
            values[name] = w.numpy().astype(np.float32)
        tuned = {**amax, **{t: float(torch.exp(v).item()) for t, v in net.log_range.items()}}
    for init in out.graph.initializer:
        if init.name in values:
            init.CopyFrom(numpy_helper.from_array(values[init.name], init.name))
    if short:
        _log.warning("%d weight channels no longer reach INT8 level 127 after fine-tuning: TensorRT's implicit path "
                     "(model.finetuned.onnx + calibration.finetuned.cache) would rescale them; build from "
                     "model.qdq.onnx", short)
    return FinetuneResult(out, tuned, scales, history, short)
