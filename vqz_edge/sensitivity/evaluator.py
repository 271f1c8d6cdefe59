"""Evaluate many precision plans of one model against its FP32 reference on the same held-out data.

The evaluation crops are preprocessed once and kept (a few hundred: ~150 MB at 224x224), the FP32 outputs
are computed once; each plan then costs one Q/DQ model build and one ONNX Runtime pass. Metrics are those of
``vqz-edge evaluate`` (same definitions, checked by a test), on the model's primary output, plus per-sample
values so they can be broken down by source photo.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import onnx

from .. import ort as ortu
from ..artifacts.plan import ResolvedPlan
from ..calib.collect import with_outputs
from ..calib.evaluate import compare_rows, row_cosine, sqnr_db
from ..calib.qdq import insert_qdq
from ..calib.tasks import TASK_METRICS, TaskAccumulator, TaskSpec, task_value
from ..errors import InputError
from ..onnx_io import graph_inputs, graph_outputs
from ..policy.placement import Placement, place

__all__ = ["METRICS", "TASK_METRICS", "Evaluator", "Metrics", "Variant", "evaluate_stream"]

METRICS = ("cosine", "agreement", "sqnr", *TASK_METRICS["dense"], *TASK_METRICS["detection"])
CONFIDENT = 0.5  # FP32 softmax top-1 probability above which a sample counts as confident


@dataclass(frozen=True)
class Metrics:
    samples: int
    cosine: float
    agreement: float | None  # top-1 agreement; None when the output is not (N, classes)
    sqnr_db: float | None  # None: identical outputs (infinite SQNR)
    per_source: dict[str, dict[str, float]] = field(default_factory=dict)
    # classifiers: agreement restricted to samples the FP32 model is confident about (softmax top-1 >= 0.5),
    # and their share: top-1 flips concentrate on near-ties, which this separates (no sample is dropped above)
    agreement_confident: float | None = None
    confident_share: float | None = None
    # mean per-sample ||ref - got||^2 / ||ref||^2 (each sample's output flattened): fine-tuning's distillation loss
    nmse: float | None = None
    task: dict[str, Any] | None = None  # task metrics (calib.tasks) when the evaluator has a task

    def value(self, metric: str) -> float:
        """The metric, higher is better."""
        if metric in TASK_METRICS["dense"] or metric in TASK_METRICS["detection"]:
            if self.task is None or metric not in TASK_METRICS[self.task["task"]]:
                raise InputError(f"metric {metric!r} needs a {'dense' if metric in TASK_METRICS['dense'] else 'detection'}"
                                 " task", hint="add --task dense or --task detection")
            return task_value(self.task, metric)
        if metric == "cosine":
            return self.cosine
        if metric == "agreement":
            if self.agreement is None:
                raise InputError("metric 'agreement' needs a classifier output (N, classes)",
                                 hint="use --metric cosine or sqnr for this model")
            return self.agreement
        if metric == "sqnr":
            return math.inf if self.sqnr_db is None else self.sqnr_db
        raise ValueError(f"unknown metric {metric!r}; choose one of {list(METRICS)}")

    def to_dict(self) -> dict[str, Any]:
        return {
            "samples": self.samples,
            "cosine": round(self.cosine, 6),
            "agreement": None if self.agreement is None else round(self.agreement, 6),
            "sqnr_db": None if self.sqnr_db is None else round(self.sqnr_db, 3),
            "per_source": {k: {kk: round(vv, 6) for kk, vv in v.items()} for k, v in sorted(self.per_source.items())},
            "agreement_confident": None if self.agreement_confident is None else round(self.agreement_confident, 6),
            "confident_share": None if self.confident_share is None else round(self.confident_share, 6),
            "nmse": None if self.nmse is None else round(self.nmse, 8),
            **({"task": _rounded(self.task)} if self.task is not None else {}),
        }


def _rounded(d: dict[str, Any]) -> dict[str, Any]:
    return {k: round(v, 6) if isinstance(v, float) else v for k, v in d.items()}


class _Accumulator:
    def __init__(self, output: str = "output") -> None:
        self.output = output
        self.cos: list[np.ndarray] = []
        self.nmse: list[np.ndarray] = []
        self.top1: list[np.ndarray] = []
        self.confident: list[np.ndarray] = []
        self.signal = 0.0
        self.noise = 0.0
        self.classifier = True

    def update(self, ref: np.ndarray, got: np.ndarray) -> None:
        r, g, signal, noise = compare_rows(ref, got, f"output {self.output!r}")
        self.signal += float(signal.sum())
        self.noise += float(noise.sum())
        self.cos.append(row_cosine(r, g))
        self.nmse.append(noise / np.maximum(signal, 1e-12))
        if ref.ndim == 2 and ref.shape[1] > 1:
            self.top1.append(np.argmax(r, axis=1) == np.argmax(g, axis=1))
            z = np.exp(r - r.max(axis=1, keepdims=True))
            self.confident.append(z.max(axis=1) / z.sum(axis=1) >= CONFIDENT)
        else:
            self.classifier = False

    def result(self, sources: Sequence[str] | None) -> Metrics:
        cos = np.concatenate(self.cos) if self.cos else np.zeros(0)
        n = int(cos.size)
        if n == 0:
            raise InputError("evaluation data yielded no samples")
        top1 = np.concatenate(self.top1) if self.classifier and self.top1 else None
        sqnr = sqnr_db(self.signal, self.noise)
        per: dict[str, dict[str, float]] = {}
        if sources is not None:
            names = np.asarray(list(sources)[:n])
            for s in sorted(set(names.tolist())):
                mask = names == s
                row = {"samples": float(mask.sum()), "cosine": float(cos[mask].mean())}
                if top1 is not None:
                    row["agreement"] = float(top1[mask].mean())
                per[s] = row
        conf_agr = conf_share = None
        if top1 is not None:
            conf = np.concatenate(self.confident)
            conf_share = float(conf.mean())
            conf_agr = float(top1[conf].mean()) if conf.any() else None
        return Metrics(n, float(cos.mean()), None if top1 is None else float(top1.mean()), sqnr, per, conf_agr,
                       conf_share, float(np.concatenate(self.nmse).mean()))


def _primary_index(model: onnx.ModelProto, output: str | None) -> tuple[int, str]:
    names = [o.name for o in graph_outputs(model)]
    if output is None:
        return 0, names[0]
    if output not in names:
        raise InputError(f"output {output!r} is not a graph output; outputs are {names}")
    return names.index(output), output


Batch = np.ndarray | Mapping[str, np.ndarray]


def _feeds(model: onnx.ModelProto, batch: Batch) -> dict[str, np.ndarray]:
    """A batch as named feeds: an array feeds the single graph input; a mapping is passed as is."""
    if isinstance(batch, np.ndarray):
        infos = graph_inputs(model)
        if len(infos) != 1:
            raise InputError(f"the model takes inputs {[i.name for i in infos]}; give batches as {{name: array}}")
        return {infos[0].name: batch}
    return dict(batch)


def _batch_size(feeds: Mapping[str, np.ndarray]) -> int:
    return int(next(iter(feeds.values())).shape[0])


class Evaluator:
    """Holds the evaluation batches and the FP32 outputs; evaluates plans (as Q/DQ models) against them.

    ``batches``: arrays (single-input models) or ``{input name: array}`` mappings (e.g. token ids and masks).
    """

    def __init__(
        self,
        model: onnx.ModelProto,
        amax: Mapping[str, float],
        batches: Sequence[Batch],
        *,
        sources: Sequence[str] | None = None,
        output: str | None = None,
        placement: Placement | None = None,
        task: TaskSpec | None = None,
    ) -> None:
        self.placement = placement or place(model)
        self.task = task
        _, self.output = _primary_index(model, output)
        self.task_tensors: list[str] = [] if task is None else task.tensors(model)
        names = [o.name for o in graph_outputs(model)]
        self.model = model
        self._extra = [t for t in self.task_tensors if t not in names]  # e.g. a pre-sigmoid map, read as an output
        self.fetch = list(dict.fromkeys([self.output, *self.task_tensors]))
        self.amax = dict(amax)
        self.batches = [_feeds(model, b) for b in batches]
        self.sources = list(sources) if sources is not None else None
        self._reference: list[list[np.ndarray]] | None = None
        self.evaluations = 0

    @property
    def samples(self) -> int:
        return sum(_batch_size(b) for b in self.batches)

    def reference(self) -> list[list[np.ndarray]]:
        """The reference's arrays of ``fetch`` (the primary output first), per batch."""
        if self._reference is None:
            sess = ortu.session(with_outputs(self.model, self._extra))
            self._reference = [ortu.run(sess, x, self.fetch) for x in self.batches]
        return self._reference

    def _task_accumulator(self) -> TaskAccumulator | None:
        return None if self.task is None else self.task.accumulator(self.model)

    def qdq_model(self, plan: ResolvedPlan, variant: Variant | None = None) -> onnx.ModelProto:
        return _qdq(self.model, self.amax, plan, variant, self.placement)

    def _accumulate(self, plan: ResolvedPlan, variant: Variant | None, *, with_task: bool
                    ) -> tuple[_Accumulator, TaskAccumulator | None]:
        """One pass of ``plan`` (or ``variant``) over the batches against the FP32 reference (one evaluation)."""
        ref = self.reference()
        sess = ortu.session(with_outputs(self.qdq_model(plan, variant), self._extra))
        acc = _Accumulator(self.output)
        task = self._task_accumulator() if with_task else None
        for x, r in zip(self.batches, ref):
            got = ortu.run(sess, x, self.fetch)
            acc.update(r[0], got[0])
            if task is not None:
                _task_update(task, self.fetch, r, got)
        self.evaluations += 1
        return acc, task

    def evaluate(self, plan: ResolvedPlan, variant: Variant | None = None) -> Metrics:
        """``plan`` as Q/DQ of this model and ranges, or of ``variant`` (e.g. fine-tuned weights), against the FP32
        reference of this model."""
        acc, task = self._accumulate(plan, variant, with_task=True)
        return _with_task(acc.result(self.sources), task)

    def per_sample_cosine(self, plan: ResolvedPlan) -> np.ndarray:
        """Each sample's output cosine (primary output, flattened) between ``plan`` and the FP32 reference, in
        sample order: low values are the samples where the two models disagree most."""
        acc, _ = self._accumulate(plan, None, with_task=False)
        return np.concatenate(acc.cos) if acc.cos else np.zeros(0)

    def subset(self, indices: Sequence[int]) -> Evaluator:
        """An evaluator over the samples ``indices`` only (same model, ranges, placement, task; the FP32 reference
        sliced, not recomputed), as one batch per ``len(first batch)`` samples."""
        idx = np.asarray(sorted(int(i) for i in indices), dtype=np.int64)
        if idx.size == 0 or idx[0] < 0 or idx[-1] >= self.samples:
            raise InputError(f"subset indices must be within 0..{self.samples - 1} and not empty")
        feeds = {k: np.concatenate([b[k] for b in self.batches])[idx] for k in self.batches[0]}
        ref = [np.concatenate([r[j] for r in self.reference()])[idx] for j in range(len(self.fetch))]
        step = max(1, _batch_size(self.batches[0]))
        sub = copy.copy(self)  # everything shared but the samples
        sub.batches = [{k: v[i:i + step] for k, v in feeds.items()} for i in range(0, idx.size, step)]
        sub.sources = None if self.sources is None else [self.sources[i] for i in idx.tolist()]
        sub._reference = [[a[i:i + step] for a in ref] for i in range(0, idx.size, step)]
        sub.evaluations = 0
        return sub


@dataclass(frozen=True)
class Variant:
    """Weights and ranges other than the reference model's: a fine-tuned model with its trained ranges and
    the per-channel scales its on-grid weights were trained with."""

    model: onnx.ModelProto
    amax: Mapping[str, float]
    weight_scales: Mapping[str, np.ndarray] = field(default_factory=dict)

    def qdq(self, plan: ResolvedPlan, placement: Placement | None = None) -> onnx.ModelProto:
        # the trained per-channel scales, as calibrate writes them: absmax/127 of on-grid weights only equals
        # them up to rounding
        return insert_qdq(self.model, self.amax, plan, self.weight_scales, placement)[0]


def _qdq(model: onnx.ModelProto, amax: Mapping[str, float], plan: ResolvedPlan,
         variant: Variant | None = None, placement: Placement | None = None) -> onnx.ModelProto:
    """``plan`` as a Q/DQ model of ``model`` with ``amax``, or of ``variant`` when given (same graph, so the same
    placement)."""
    if variant is not None:
        return variant.qdq(plan, placement)
    return insert_qdq(model, amax, plan, placement=placement)[0]


def _task_update(task: TaskAccumulator, fetch: Sequence[str], ref: Sequence[np.ndarray],
                 got: Sequence[np.ndarray]) -> None:
    by_r, by_g = dict(zip(fetch, ref)), dict(zip(fetch, got))
    task.update([by_r[t] for t in task.tensors], [by_g[t] for t in task.tensors])


def _with_task(m: Metrics, task: TaskAccumulator | None) -> Metrics:
    if task is None:
        return m
    return Metrics(m.samples, m.cosine, m.agreement, m.sqnr_db, m.per_source, m.agreement_confident,
                   m.confident_share, m.nmse, task.result())


def evaluate_stream(
    model: onnx.ModelProto,
    amax: Mapping[str, float],
    plans: Sequence[ResolvedPlan | tuple[ResolvedPlan, Variant]],
    batches: Iterable[Batch],
    *,
    sources: Sequence[str] | None = None,
    output: str | None = None,
    task: TaskSpec | None = None,
) -> list[Metrics]:
    """Several plans in one pass over streamed data (nothing but one batch kept): for verification runs."""
    _, out_name = _primary_index(model, output)
    placement = place(model)
    tensors = [] if task is None else task.tensors(model)
    names = [o.name for o in graph_outputs(model)]
    extra = [t for t in tensors if t not in names]
    fetch = list(dict.fromkeys([out_name, *tensors]))
    ref_sess = ortu.session(with_outputs(model, extra))
    sessions = [ortu.session(with_outputs(_qdq(model, amax, p[0], p[1], placement) if isinstance(p, tuple)
                                          else _qdq(model, amax, p, None, placement), extra)) for p in plans]
    accs = [_Accumulator(out_name) for _ in plans]
    tasks = [None if task is None else task.accumulator(model) for _ in plans]
    for b in batches:
        x = _feeds(model, b)
        ref = ortu.run(ref_sess, x, fetch)
        for sess, acc, t in zip(sessions, accs, tasks):
            got = ortu.run(sess, x, fetch)
            acc.update(ref[0], got[0])
            if t is not None:
                _task_update(t, fetch, ref, got)
    return [_with_task(a.result(sources), t) for a, t in zip(accs, tasks)]
