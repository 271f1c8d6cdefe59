"""``vqz-edge export``: torch or ONNX -> BatchNorm-free ONNX, verified against the source."""

from __future__ import annotations

import copy
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import onnx

from .. import ort as ortu
from ..errors import InputError, ModelLoadError, VerificationError
from ..fsutil import atomic_path, check_output_path
from ..log import get_logger
from ..onnx_io import (
    TensorInfo,
    count_ops,
    graph_inputs,
    graph_outputs,
    load_model,
    opset_of,
    require_finite_weights,
)
from .onnx_passes import PassReport, remove_batchnorm
from .torch_side import export_onnx, fold_batchnorm_torch, import_torch, load_torch_model
from .verify import OutputError, batches, compare, concrete_shape, real_inputs

_log = get_logger(__name__)

__all__ = ["ExportOptions", "ExportResult", "export_model", "remove_batchnorm"]


@dataclass(frozen=True)
class ExportOptions:
    input_shape: tuple[int, ...] | None = None  # torch: required shape (default 1x3x224x224); ONNX: override
    opset: int = 17
    weights: Path | None = None
    dynamic_batch: bool = True
    input_names: tuple[str, ...] = ("input",)
    output_names: tuple[str, ...] | None = None
    verify_samples: int = 8
    atol: float = 1e-4
    rtol: float = 1e-4

    def __post_init__(self) -> None:
        if not 11 <= self.opset <= 23:
            raise ValueError(f"opset must be within 11..23, got {self.opset}")
        if self.verify_samples <= 0:
            raise ValueError(f"verify_samples must be positive, got {self.verify_samples}")
        if self.atol < 0 or self.rtol < 0:
            raise ValueError("atol/rtol must be non-negative")


@dataclass
class ExportResult:
    output: Path
    source: str
    source_kind: str  # "torch" or "onnx"
    batchnorm_before: int
    batchnorm_after: int
    torch_folded: int
    passes: PassReport
    errors: list[OutputError]
    inputs: list[TensorInfo]
    outputs: list[TensorInfo]
    opset: int
    verification_data: list[str]
    nodes: int
    seconds: float
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def max_abs_error(self) -> float:
        return max((e.max_abs_error for e in self.errors), default=0.0)

    @property
    def max_rel_error(self) -> float:
        return max((e.max_rel_error for e in self.errors), default=0.0)

    def to_dict(self) -> dict[str, Any]:
        return {
            "output": str(self.output),
            "source": self.source,
            "source_kind": self.source_kind,
            "batchnorm_before": self.batchnorm_before,
            "batchnorm_after": self.batchnorm_after,
            "torch_folded_batchnorm": self.torch_folded,
            "onnx_passes": self.passes.to_dict(),
            "max_abs_error": self.max_abs_error,
            "max_rel_error": self.max_rel_error,
            "per_output": [e.to_dict() for e in self.errors],
            "inputs": [i.to_dict() for i in self.inputs],
            "outputs": [o.to_dict() for o in self.outputs],
            "opset": self.opset,
            "verification_data": self.verification_data,
            "nodes": self.nodes,
            "seconds": round(self.seconds, 3),
        }


def _check_tolerance(errors: Sequence[OutputError], opts: ExportOptions, what: str) -> None:
    # written so that a NaN error fails (every comparison with NaN is false)
    bad = [e for e in errors if not (e.max_abs_error <= opts.atol or e.max_rel_error <= opts.rtol)]
    if bad:
        detail = ", ".join(f"{e.name}: max abs {e.max_abs_error:.3g}, max rel {e.max_rel_error:.3g}" for e in bad)
        raise VerificationError(
            f"{what} does not match its source within atol={opts.atol:g} / rtol={opts.rtol:g}: {detail}; "
            "no output was written",
            hint="this is a bug in a graph pass or an op the exporter mistranslates; run with -vv and report it",
        )


def _run_onnx(model: onnx.ModelProto, feeds: dict[str, np.ndarray], batch: int) -> list[np.ndarray]:
    sess = ortu.session(model)
    parts = [ortu.run(sess, b) for b in batches(feeds, batch)]
    return [np.concatenate([p[i] for p in parts]) for i in range(len(parts[0]))]


def _finish(model: onnx.ModelProto, out: Path) -> None:
    onnx.checker.check_model(model)
    require_finite_weights(model, f"the exported model for {out}")
    with atomic_path(out) as tmp:
        onnx.save(model, str(tmp))


def _export_from_onnx(src: Path, out: Path, opts: ExportOptions) -> ExportResult:
    t0 = time.perf_counter()
    model = load_model(src)
    require_finite_weights(model, str(src))
    infos = graph_inputs(model)
    override = opts.input_shape if len(infos) == 1 else None
    shapes = [concrete_shape(i, override, 1) for i in infos]
    dynamic_batch = all(not isinstance(i.shape[0], int) for i in infos if i.shape)
    n = opts.verify_samples if dynamic_batch else shapes[0][0] * max(1, opts.verify_samples // shapes[0][0])
    feeds, notes = real_inputs(infos, shapes, n)
    batch = n if dynamic_batch else shapes[0][0]
    reference = _run_onnx(model, feeds, batch)
    new, report = remove_batchnorm(model)
    got = _run_onnx(new, feeds, batch)
    names = [o.name for o in graph_outputs(model)]
    errors = compare(names, reference, got)
    _check_tolerance(errors, opts, f"rewritten {src.name}")
    _finish(new, out)
    return ExportResult(
        out, str(src), "onnx", count_ops(model, "BatchNormalization"), count_ops(new, "BatchNormalization"), 0,
        report, errors, graph_inputs(new), graph_outputs(new), opset_of(new), notes, len(new.graph.node),
        time.perf_counter() - t0,
    )


def _torch_outputs(model: Any, x: np.ndarray | dict[str, np.ndarray], batch: int) -> list[np.ndarray]:
    """Run ``model`` on ``x`` (one array, or named arrays passed positionally in order) in batches."""
    import torch

    arrays = list(x.values()) if isinstance(x, dict) else [x]
    parts = []
    with torch.no_grad():
        for i in range(0, arrays[0].shape[0], batch):
            y = model(*[torch.from_numpy(np.ascontiguousarray(a[i : i + batch])) for a in arrays])
            if hasattr(y, "to_tuple"):  # a transformers ModelOutput
                y = y.to_tuple()
            ys = list(y) if isinstance(y, (tuple, list)) else [y]
            parts.append([t.detach().cpu().numpy() for t in ys])
    return [np.concatenate([p[i] for p in parts]) for i in range(len(parts[0]))]


def _model_inputs(model: Any, opts: ExportOptions) -> tuple[dict[str, np.ndarray], list[str], int]:
    """Verification/tracing feeds: the model's own ``export_inputs(n)`` when it defines one (text encoders:
    token ids, several inputs), else real photo crops for one image input. Returns (feeds, notes, batch)."""
    custom = getattr(model, "export_inputs", None)
    if callable(custom):
        feeds, notes = custom(opts.verify_samples)
        return dict(feeds), list(notes), 1
    shape = opts.input_shape or (1, 3, 224, 224)
    info = TensorInfo(opts.input_names[0], shape, "float32")
    feeds, notes = real_inputs([info], [shape], opts.verify_samples)
    return feeds, notes, shape[0]


def _export_from_torch(source: str, out: Path, opts: ExportOptions) -> ExportResult:
    torch = import_torch()
    t0 = time.perf_counter()
    model = load_torch_model(source, opts.weights)
    bad = [f"{name} ({int((~torch.isfinite(t)).sum())} of {t.numel()} values)"
           for name, t in model.state_dict().items() if t.is_floating_point() and not bool(torch.isfinite(t).all())]
    if bad:
        raise ModelLoadError(
            f"model {source!r}" + (f" with weights {opts.weights}" if opts.weights else "")
            + f" has non-finite parameters/buffers: {', '.join(bad[:5])}" + (f" and {len(bad) - 5} more" if len(bad) > 5 else ""),
            hint="the checkpoint is corrupt or training diverged; a model with NaN/Inf weights is never exported",
        )
    feeds, notes, batch = _model_inputs(model, opts)
    first = {k: v[:batch] for k, v in feeds.items()}
    n = next(iter(feeds.values())).shape[0]
    shape = next(iter(feeds.values())).shape
    try:
        reference = _torch_outputs(model, first, batch)
    except RuntimeError as exc:
        raise InputError(
            f"model {source!r} does not accept input shape {'x'.join(map(str, (batch, *shape[1:])))}: "
            f"{str(exc).splitlines()[0]}",
            hint="pass --input-shape with the shape the model expects, e.g. 1x3x224x224",
        ) from exc
    original = copy.deepcopy(model)
    tensors = tuple(torch.from_numpy(np.ascontiguousarray(v)) for v in first.values())
    example = tensors[0] if len(tensors) == 1 else tensors
    folded = fold_batchnorm_torch(model, example)
    input_names = tuple(feeds) if callable(getattr(model, "export_inputs", None)) else opts.input_names
    with tempfile.TemporaryDirectory(prefix="vqz-export-") as tmp:
        raw_path = Path(tmp) / "raw.onnx"
        export_onnx(model, example, raw_path, input_names=input_names, output_names=opts.output_names,
                    opset=opts.opset, dynamic_batch=opts.dynamic_batch)
        raw = onnx.load(str(raw_path))
    bn_raw = count_ops(raw, "BatchNormalization")
    new, report = remove_batchnorm(raw)
    onnx_feeds = dict(zip(input_names, feeds.values()))
    reference = _torch_outputs(original, feeds, batch if not opts.dynamic_batch else n)
    got = _run_onnx(new, onnx_feeds, batch if not opts.dynamic_batch else n)
    names = [o.name for o in graph_outputs(new)]
    errors = compare(names, reference, got)
    _check_tolerance(errors, opts, f"ONNX export of {source}")
    _finish(new, out)
    n_bn_modules = sum(1 for m in original.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm))
    result = ExportResult(
        out, source, "torch", n_bn_modules, count_ops(new, "BatchNormalization"), len(folded), report, errors,
        graph_inputs(new), graph_outputs(new), opset_of(new), notes, len(new.graph.node), time.perf_counter() - t0,
    )
    result.extra["batchnorm_in_raw_export"] = bn_raw
    return result


def export_model(source: str | Path, out: Path, opts: ExportOptions | None = None) -> ExportResult:
    """Export ``source`` (torchvision name, ``pkg.module:factory`` or .onnx) to a BatchNorm-free ONNX at ``out``.

    Verified against the source on real inputs; above tolerance nothing is written.
    """
    opts = opts or ExportOptions()
    out = check_output_path(Path(out))
    src = str(source)
    if src.lower().endswith(".onnx"):
        path = Path(src)
        if not path.is_file():
            raise ModelLoadError(f"ONNX file {path} does not exist")
        if path.resolve() == out.resolve():
            raise InputError(f"output {out} is the input file; choose another output path")
        result = _export_from_onnx(path, out, opts)
    else:
        result = _export_from_torch(src, out, opts)
    _log.info("exported %s -> %s (BN %d -> %d, max abs err %.3g)", src, out, result.batchnorm_before,
              result.batchnorm_after, result.max_abs_error)
    return result
