"""Fidelity of a candidate model (INT8 Q/DQ, FP16...) against a reference on held-out data, on the CPU."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import onnx

from .. import ort as ortu
from ..errors import InputError
from ..onnx_io import graph_inputs, graph_outputs
from ..progress import ProgressFactory, make_bar


@dataclass
class _OutputAccumulator:
    """Running sums for one output; classifier metrics only for (N, C) outputs with C > 1."""

    name: str
    signal: float = 0.0
    noise: float = 0.0
    cosine_sum: float = 0.0
    samples: int = 0
    top1: int = 0
    top5: int = 0
    kl_sum: float = 0.0
    classifier: bool = False

    def update(self, ref: np.ndarray, got: np.ndarray) -> None:
        if ref.shape != got.shape:
            raise InputError(f"output {self.name!r}: reference shape {ref.shape} != candidate shape {got.shape}")
        r = ref.astype(np.float64).reshape(ref.shape[0], -1)
        g = got.astype(np.float64).reshape(got.shape[0], -1)
        self.signal += float(np.sum(r * r))
        self.noise += float(np.sum((r - g) ** 2))
        denom = np.linalg.norm(r, axis=1) * np.linalg.norm(g, axis=1)
        cos = np.where(denom > 0, np.sum(r * g, axis=1) / np.where(denom > 0, denom, 1), 1.0)
        self.cosine_sum += float(np.sum(cos))
        self.samples += r.shape[0]
        if ref.ndim == 2 and ref.shape[1] > 1:
            self.classifier = True
            ref_top = np.argmax(r, axis=1)
            self.top1 += int(np.sum(ref_top == np.argmax(g, axis=1)))
            k = min(5, r.shape[1])
            top_k = np.argpartition(-g, k - 1, axis=1)[:, :k]
            self.top5 += int(np.sum(np.any(top_k == ref_top[:, None], axis=1)))
            p = _softmax(r)
            q = _softmax(g)
            self.kl_sum += float(np.sum(p * (np.log(np.maximum(p, 1e-300)) - np.log(np.maximum(q, 1e-300)))))

    def result(self) -> dict[str, Any]:
        sqnr = float("inf") if self.noise == 0 else 10.0 * np.log10(max(self.signal, 1e-300) / self.noise)
        out: dict[str, Any] = {
            "name": self.name,
            "samples": self.samples,
            "mean_cosine": self.cosine_sum / max(self.samples, 1),
            "sqnr_db": round(sqnr, 4) if np.isfinite(sqnr) else None,
        }
        if self.classifier:
            out.update(
                top1_agreement=self.top1 / self.samples,
                top5_contains_reference_top1=self.top5 / self.samples,
                mean_kl=self.kl_sum / self.samples,
            )
        return out


def _softmax(x: np.ndarray) -> np.ndarray:
    z = x - x.max(axis=1, keepdims=True)
    e = np.exp(z)
    out: np.ndarray = e / e.sum(axis=1, keepdims=True)
    return out


@dataclass
class FidelityReport:
    reference: str
    candidate: str
    data: str
    samples: int
    outputs: list[dict[str, Any]] = field(default_factory=list)

    @property
    def primary(self) -> dict[str, Any]:
        return self.outputs[0]

    def to_dict(self) -> dict[str, Any]:
        return {
            "reference": self.reference,
            "candidate": self.candidate,
            "data": self.data,
            "samples": self.samples,
            "outputs": self.outputs,
        }


def evaluate(
    reference: onnx.ModelProto | Path,
    candidate: onnx.ModelProto | Path,
    batches: Iterable[np.ndarray],
    *,
    total_batches: int,
    data_description: str,
    reference_outputs_cache: list[dict[str, np.ndarray]] | None = None,
    progress: ProgressFactory | None = None,
) -> FidelityReport:
    """Run both models over ``batches`` and accumulate metrics per output.

    ``reference_outputs_cache``: pass an empty list to have FP32 outputs stored, or a filled one to reuse
    them (the sensitivity sweep evaluates many candidates against one reference).
    """
    ref_model = onnx.load(str(reference)) if isinstance(reference, Path) else reference
    cand_model = onnx.load(str(candidate)) if isinstance(candidate, Path) else candidate
    ref_in = graph_inputs(ref_model)
    cand_in = graph_inputs(cand_model)
    if [i.name for i in ref_in] != [i.name for i in cand_in]:
        raise InputError(f"models take different inputs: {[i.name for i in ref_in]} vs {[i.name for i in cand_in]}")
    names = [o.name for o in graph_outputs(ref_model)]
    if names != [o.name for o in graph_outputs(cand_model)]:
        raise InputError(f"models have different outputs: {names} vs {[o.name for o in graph_outputs(cand_model)]}")
    input_name = ref_in[0].name
    reuse = reference_outputs_cache is not None and len(reference_outputs_cache) > 0
    ref_sess = None if reuse else ortu.session(ref_model)
    cand_sess = ortu.session(cand_model)
    acc = [_OutputAccumulator(n) for n in names]
    bar = make_bar(progress, "evaluating", total_batches)
    samples = 0
    try:
        for b, x in enumerate(batches):
            if reuse:
                assert reference_outputs_cache is not None
                ref = [reference_outputs_cache[b][n] for n in names]
            else:
                assert ref_sess is not None
                ref = ortu.run(ref_sess, {input_name: x})
                if reference_outputs_cache is not None:
                    reference_outputs_cache.append(dict(zip(names, ref)))
            got = ortu.run(cand_sess, {input_name: x})
            for a, r, g in zip(acc, ref, got):
                a.update(r, g)
            samples += x.shape[0]
            bar.update(1)
    finally:
        bar.close()
    if samples == 0:
        raise InputError("evaluation data yielded no samples")
    return FidelityReport(str(reference if isinstance(reference, Path) else "<model>"),
                          str(candidate if isinstance(candidate, Path) else "<model>"),
                          data_description, samples, [a.result() for a in acc])
