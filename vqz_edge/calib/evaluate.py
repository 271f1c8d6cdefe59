"""Fidelity of a candidate model (INT8 Q/DQ, FP16...) against a reference on held-out data, on the CPU."""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import onnx

from .. import ort as ortu
from ..data.images import demo_sources, folder_sources
from ..data.source import open_data
from ..errors import DataError, InputError, VerificationError, require_file
from ..export.hf import HARD_NEGATIVES, SENTENCE_PAIRS, minilm_path, tokenize
from ..onnx_io import graph_inputs, graph_outputs
from ..progress import ProgressFactory, make_bar
from .collect import with_outputs
from .tasks import TaskSpec


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
        r, g, signal, noise = compare_rows(ref, got, f"output {self.name!r}", self.samples)
        self.signal += float(signal.sum())
        self.noise += float(noise.sum())
        self.cosine_sum += float(np.sum(row_cosine(r, g)))
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
        sqnr = sqnr_db(self.signal, self.noise)
        out: dict[str, Any] = {
            "name": self.name,
            "samples": self.samples,
            "mean_cosine": self.cosine_sum / max(self.samples, 1),
            "sqnr_db": None if sqnr is None else round(sqnr, 4),
        }
        if self.classifier:
            out.update(
                top1_agreement=self.top1 / self.samples,
                top5_contains_reference_top1=self.top5 / self.samples,
                mean_kl=self.kl_sum / self.samples,
            )
        return out


def compare_rows(ref: np.ndarray, got: np.ndarray, what: str, first: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Reference and candidate batches as float64 (N, D) rows, with each row's signal and noise energy.
    ``what`` names the output in the errors; ``first``: the index of the batch's first sample in the stream.
    A NaN/Inf in either output is refused (VerificationError naming the model, output and sample): a model that
    produces NaN is never "identical" to another one."""
    if ref.shape != got.shape:
        raise InputError(f"{what}: reference shape {ref.shape} != candidate shape {got.shape}")
    for role, arr in (("reference", ref), ("candidate", got)):
        bad = ~np.isfinite(arr)
        if bad.any():
            row = int(np.argwhere(bad)[0][0]) if arr.ndim else 0
            raise VerificationError(
                f"{what}: the {role} model produced {arr.reshape(-1)[int(np.argmax(bad.reshape(-1)))]} (non-finite) "
                f"on sample {first + row}; its fidelity cannot be measured",
                hint=f"the {role} model is broken (NaN/Inf weights or an overflow): export or calibrate it again",
            )
    r = ref.astype(np.float64).reshape(ref.shape[0], -1)
    g = got.astype(np.float64).reshape(got.shape[0], -1)
    return r, g, np.sum(r * r, axis=1), np.sum((r - g) ** 2, axis=1)


def sqnr_db(signal: float, noise: float) -> float | None:
    """Signal-to-quantization-noise ratio in dB; None for identical outputs (infinite, or beyond float range)."""
    ratio = max(signal, 1e-300) / noise if noise > 0 else math.inf
    return 10.0 * math.log10(ratio) if math.isfinite(ratio) else None


def row_cosine(r: np.ndarray, g: np.ndarray) -> np.ndarray:
    """Cosine similarity of each row of two (N, D) arrays; 1.0 where either row is all zeros."""
    denom = np.linalg.norm(r, axis=1) * np.linalg.norm(g, axis=1)
    out: np.ndarray = np.where(denom > 0, np.sum(r * g, axis=1) / np.where(denom > 0, denom, 1), 1.0)
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
    task: dict[str, Any] | None = None  # task metrics (dense / detection) and the outputs that drive them

    @property
    def primary(self) -> dict[str, Any]:
        return self.outputs[0]

    def to_dict(self) -> dict[str, Any]:
        d = {
            "reference": self.reference,
            "candidate": self.candidate,
            "data": self.data,
            "samples": self.samples,
            "outputs": self.outputs,
        }
        if self.task is not None:
            d["task"] = self.task
        return d


def evaluate(
    reference: onnx.ModelProto | Path,
    candidate: onnx.ModelProto | Path,
    batches: Iterable[np.ndarray],
    *,
    total_batches: int,
    data_description: str,
    reference_outputs_cache: list[dict[str, np.ndarray]] | None = None,
    progress: ProgressFactory | None = None,
    task: TaskSpec | None = None,
) -> FidelityReport:
    """Run both models over ``batches`` and accumulate metrics per output (every output of a multi-output model),
    and with ``task`` the task metrics (calib.tasks) on the outputs that drive them.

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
    extra: list[str] = []
    task_acc = None
    if task is not None:
        task_acc = task.accumulator(ref_model)
        extra = [t for t in task_acc.tensors if t not in names]
        ref_model, cand_model = with_outputs(ref_model, extra), with_outputs(cand_model, extra)
    fetched = [*names, *extra]
    reuse = reference_outputs_cache is not None and len(reference_outputs_cache) > 0
    ref_sess = None if reuse else ortu.session(ref_model)
    cand_sess = ortu.session(cand_model)
    acc = [_OutputAccumulator(n) for n in names]
    bar = make_bar(progress, "evaluating (batches)", total_batches)
    samples = 0
    try:
        for b, x in enumerate(batches):
            if reuse:
                assert reference_outputs_cache is not None
                ref = [reference_outputs_cache[b][n] for n in fetched]
            else:
                assert ref_sess is not None
                ref = ortu.run(ref_sess, {input_name: x}, fetched)
                if reference_outputs_cache is not None:
                    reference_outputs_cache.append(dict(zip(fetched, ref)))
            got = ortu.run(cand_sess, {input_name: x}, fetched)
            for a, r, g in zip(acc, ref, got):
                a.update(r, g)
            if task_acc is not None:
                by_r, by_g = dict(zip(fetched, ref)), dict(zip(fetched, got))
                task_acc.update([by_r[t] for t in task_acc.tensors], [by_g[t] for t in task_acc.tensors])
            samples += x.shape[0]
            bar.update(1)
    finally:
        bar.close()
    if samples == 0:
        raise InputError("evaluation data yielded no samples")
    return FidelityReport(str(reference if isinstance(reference, Path) else "<model>"),
                          str(candidate if isinstance(candidate, Path) else "<model>"),
                          data_description, samples, [a.result() for a in acc],
                          None if task_acc is None else task_acc.result())


# ---- retrieval: image and text embeddings ---------------------------------------------------------------------
#
# Leave-one-out retrieval over a labelled set: every item with at least one other item of its label is a query
# once, the gallery (the "index") is every other item, and a hit is a gallery item with the query's label (image
# data: the same source photo; text: the paraphrase of the query; items without a positive, such as hard-negative
# sentences, only act as distractors). Recall@K = share of queries with a hit among their K nearest gallery items
# (cosine similarity of L2-normalised embeddings). Three cases: reference queries against a reference index,
# candidate against candidate, and the cross case -- candidate (e.g. INT8) queries against a reference
# (FP32/FP16) index, which is how a quantized query encoder meets an index embedded once at full precision.
# Neighbour agreement says how often the candidate's ranking keeps the reference's nearest neighbour.

RETRIEVAL_KS = (1, 5)


def _normalise(e: np.ndarray) -> np.ndarray:
    e = e.reshape(e.shape[0], -1).astype(np.float64)
    n = np.linalg.norm(e, axis=1, keepdims=True)
    out: np.ndarray = e / np.where(n > 0, n, 1.0)
    return out


def _ranking(queries: np.ndarray, gallery: np.ndarray) -> np.ndarray:
    """Gallery indices by decreasing similarity for each query, the query's own index excluded (leave-one-out;
    queries and gallery index the same items)."""
    sim = _normalise(queries) @ _normalise(gallery).T
    np.fill_diagonal(sim, -np.inf)
    order: np.ndarray = np.argsort(-sim, axis=1, kind="stable")[:, :-1]
    return order


def recall_at_k(queries: np.ndarray, gallery: np.ndarray, labels: np.ndarray,
                ks: tuple[int, ...] = RETRIEVAL_KS) -> dict[str, float]:
    """Leave-one-out Recall@K: share of queries (items with another item of their label) with an item of their
    label among the K nearest others."""
    labels = np.asarray(labels)
    if queries.shape[0] != gallery.shape[0] or queries.shape[0] != labels.shape[0]:
        raise InputError(f"retrieval needs as many queries as gallery items and labels, got {queries.shape[0]}, "
                         f"{gallery.shape[0]}, {labels.shape[0]}")
    order = _ranking(queries, gallery)
    hits = labels[order] == labels[:, None]
    has_positive = hits.any(axis=1)
    if not has_positive.any():
        raise InputError("no retrieval query has a positive (another item with its label)")
    return {f"R@{k}": float(np.mean(np.any(hits[has_positive, :k], axis=1))) for k in ks}


@dataclass
class RetrievalReport:
    reference: str
    candidate: str
    data: str
    items: int
    labels: int
    queries: int  # items with a positive
    recall: dict[str, dict[str, float]]  # 'reference' / 'candidate' / 'cross' -> {'R@1': .., 'R@5': ..}
    neighbour_top1: float  # candidate's nearest neighbour == the reference's (same index, own embeddings)
    neighbour_overlap5: float  # mean |top-5 cand & top-5 ref| / 5
    embedding_cosine: float  # mean cosine between reference and candidate embeddings of the same item

    def to_dict(self) -> dict[str, Any]:
        return {
            "task": "retrieval",
            "reference": self.reference,
            "candidate": self.candidate,
            "data": self.data,
            "items": self.items,
            "labels": self.labels,
            "queries": self.queries,
            "recall": self.recall,
            "neighbour_top1_agreement": self.neighbour_top1,
            "neighbour_overlap_at_5": self.neighbour_overlap5,
            "mean_embedding_cosine": self.embedding_cosine,
            "definition": "leave-one-out: every item that has a positive queries all other items; a hit shares "
                          "its label. cross = candidate queries against the reference index.",
        }


def embed(model: onnx.ModelProto, feeds: Iterable[Mapping[str, np.ndarray]], output: str | None = None) -> np.ndarray:
    """The model's first output (or ``output``) for every batch of named feeds, concatenated."""
    sess = ortu.session(model)
    names = [o.name for o in graph_outputs(model)]
    out = output or names[0]
    if out not in names:
        raise InputError(f"output {out!r} is not a graph output; outputs are {names}")
    parts = [ortu.run(sess, dict(f), [out])[0] for f in feeds]
    if not parts:
        raise InputError("retrieval data yielded no samples")
    return np.concatenate(parts)


def retrieval_evaluate(
    reference: onnx.ModelProto,
    candidate: onnx.ModelProto,
    feeds: Sequence[Mapping[str, np.ndarray]],
    labels: Sequence[str] | np.ndarray,
    *,
    data_description: str,
    reference_name: str = "<reference>",
    candidate_name: str = "<candidate>",
) -> RetrievalReport:
    ref_in = [i.name for i in graph_inputs(reference)]
    if ref_in != [i.name for i in graph_inputs(candidate)]:
        raise InputError(f"models take different inputs: {ref_in} vs {[i.name for i in graph_inputs(candidate)]}")
    labels = np.asarray(labels)
    r = embed(reference, feeds)
    c = embed(candidate, feeds)
    if r.shape != c.shape:
        raise InputError(f"embedding shapes differ: reference {r.shape}, candidate {c.shape}")
    compare_rows(r, c, "embeddings")  # refuses NaN/Inf from either model, naming the sample
    if r.shape[0] != labels.shape[0]:
        raise InputError(f"{r.shape[0]} embeddings but {labels.shape[0]} labels")
    counts = {x: int(np.sum(labels == x)) for x in set(labels.tolist())}
    if len(counts) < 2 or max(counts.values()) < 2:
        raise InputError("retrieval data needs at least two labels and an item with a positive (same label)")
    queries = int(sum(v for v in counts.values() if v >= 2))
    rank_r, rank_c = _ranking(r, r), _ranking(c, c)
    overlap = np.mean([len(set(a[:5]) & set(b[:5])) / 5 for a, b in zip(rank_r, rank_c)])
    cos = np.sum(_normalise(r) * _normalise(c), axis=1)
    return RetrievalReport(
        reference_name, candidate_name, data_description, int(r.shape[0]), len(counts), queries,
        {"reference": recall_at_k(r, r, labels), "candidate": recall_at_k(c, c, labels),
         "cross": recall_at_k(c, r, labels)},
        float(np.mean(rank_r[:, 0] == rank_c[:, 0])), float(overlap), float(np.mean(cos)),
    )


def image_retrieval_data(spec: str | Path, model_input: Any, per_source: int = 10, batch: int = 32,
                         preprocessing: Any = None) -> tuple[list[dict[str, np.ndarray]], list[str], str]:
    """Crops of held-out photos labelled by source photo: ``per_source`` crops of every image file (the first
    is the whole photo, the others random regions and flips). 'demo' = the demo's evaluation split."""
    text = str(spec)
    sources = demo_sources("evaluation") if text == "demo" else folder_sources(Path(text))
    files = [s.name for s in sources for _ in s.paths]
    count = len(files) * per_source
    src = open_data(spec, model_input, count=count, split="evaluation", preprocessing=preprocessing)
    feeds = [{model_input.name: x} for x in src.batches(batch)]
    labels = [files[i % len(files)] for i in range(count)]
    desc = (f"{per_source} crops of each of {len(files)} held-out photos ({len(sources)} source scenes, "
            f"{'demo evaluation split' if text == 'demo' else text}); label = source photo")
    return feeds, labels, desc


def text_retrieval_data(spec: str | Path, tokenizer: Path | None, input_names: Sequence[str], length: int,
                        batch: int = 16) -> tuple[list[dict[str, np.ndarray]], list[str], str]:
    """Paraphrase pairs labelled by pair: 'sentences' = the built-in set (vqz_edge.export.hf.SENTENCE_PAIRS, plus
    one hard negative per pair as a distractor), or a UTF-8 file with one tab-separated pair per line. Tokenized with ``tokenizer`` (a transformers tokenizer
    directory; default the packaged MiniLM's)."""
    negatives: list[str] = []
    if str(spec) in ("sentences", "demo"):
        pairs = list(SENTENCE_PAIRS)
        negatives = list(HARD_NEGATIVES)
        where = f"built-in set of {len(pairs)} paraphrase pairs + {len(negatives)} hard-negative distractors"
    else:
        path = Path(spec)
        require_file(path, "text data", error=DataError, hint="one tab-separated paraphrase pair per line")
        pairs = []
        for i, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
            if not line.strip():
                continue
            parts = line.split("\t")
            if len(parts) != 2 or not all(p.strip() for p in parts):
                raise DataError(f"{path}:{i}: expected two tab-separated sentences, got {len(parts)} field(s)")
            pairs.append((parts[0].strip(), parts[1].strip()))
        if len(pairs) < 2:
            raise DataError(f"{path} holds {len(pairs)} pair(s); retrieval needs at least 2")
        where = f"{path} ({len(pairs)} paraphrase pairs)"
    texts = [s for p in pairs for s in p] + negatives
    labels = [f"pair{i // 2:04d}" for i in range(2 * len(pairs))] + [f"neg{i:04d}" for i in range(len(negatives))]
    tok_dir = tokenizer or minilm_path()
    enc = tokenize(texts, tok_dir, length)
    missing = [n for n in input_names if n not in enc]
    if missing:
        raise InputError(f"the text model takes inputs {list(input_names)}; the tokenizer gives {sorted(enc)}")
    feeds = [{n: enc[n][i : i + batch] for n in input_names} for i in range(0, len(texts), batch)]
    desc = f"{where}, tokenized by {Path(tok_dir).name} to length {length}; label = paraphrase pair"
    return feeds, labels, desc
