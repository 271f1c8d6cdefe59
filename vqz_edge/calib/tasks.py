"""Task metrics: how a candidate model's *task output* compares with the reference model's, beyond cosine.

Detection (the FP32 model's detections are the ground truth; the candidate is scored as a detector against them):
  * detections come from ``boxes``/``scores`` outputs (``(N, A, 4)`` xyxy and ``(N, A)`` or ``(N, A, C)``), or from a
    raw YOLO head decoded here: ``yolov5`` ``(N, A, 5 + C)`` = cx, cy, w, h, objectness, class scores (score =
    objectness x class score) and ``yolov8`` ``(N, 4 + C, A)`` = cx, cy, w, h, class scores; then per-class NMS;
  * reference detections with score >= ``conf`` are the ground truth; every candidate detection (score >= ``min_score``)
    is ranked by score and matched greedily to an unmatched ground-truth box of its class at IoU >= t;
    AP = COCO's 101-point interpolated area under precision/recall, per class, averaged over classes with ground
    truth; **mAP@0.5** and **mAP@0.5:0.95** (t = 0.50, 0.55, ..., 0.95);
  * **recall at the FP32 operating point**: the share of ground-truth boxes matched (IoU >= 0.5, same class) by a
    candidate detection that passes the same ``conf`` threshold, and the precision of those candidate detections.
Dense maps (segmentation, saliency, depth):
  * **map correlation**: Pearson correlation of each sample's *pre-activation* map (the input of a final Sigmoid /
    Softmax, found by :func:`pre_activation`), averaged over samples -- sigmoid saturation cannot inflate it;
  * **mIoU** of the label maps: argmax over channels (C > 1) or the map thresholded at 0.5 (one channel, post-sigmoid),
    intersection/union per class accumulated over all samples, averaged over the classes present in either map.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import onnx

from ..errors import InputError, VerificationError

DETECTION_FORMATS = ("boxes-scores", "yolov5", "yolov8")
IOU_THRESHOLDS = tuple(round(0.5 + 0.05 * i, 2) for i in range(10))
FINAL_ACTIVATIONS = ("Sigmoid", "Softmax")
_SHAPE_ONLY = ("Identity", "Reshape", "Transpose", "Squeeze", "Unsqueeze", "Flatten")


# ---- dense maps ---------------------------------------------------------------------------------------------------

def pre_activation(model: onnx.ModelProto, output: str) -> tuple[str, str] | None:
    """(tensor, activation) when graph output ``output`` is a final Sigmoid/Softmax (through shape-only ops) of
    ``tensor``; None when it is not."""
    producer = {o: n for n in model.graph.node for o in n.output}
    node = producer.get(output)
    while node is not None and node.op_type in _SHAPE_ONLY:
        node = producer.get(node.input[0])
    if node is None or node.op_type not in FINAL_ACTIVATIONS:
        return None
    return node.input[0], node.op_type


def _pearson(r: np.ndarray, g: np.ndarray) -> np.ndarray:
    r = r - r.mean(axis=1, keepdims=True)
    g = g - g.mean(axis=1, keepdims=True)
    denom = np.linalg.norm(r, axis=1) * np.linalg.norm(g, axis=1)
    same = np.all(r == g, axis=1)
    out: np.ndarray = np.where(denom > 0, np.sum(r * g, axis=1) / np.where(denom > 0, denom, 1.0),
                               np.where(same, 1.0, 0.0))
    return out


def label_map(y: np.ndarray, activation: str | None) -> np.ndarray:
    """Per-pixel labels of a dense output ``(N, C, ...)``: argmax over C, or (C == 1) the map above 0.5 after the
    final sigmoid (above 0 before it)."""
    if y.ndim < 3:
        raise InputError(f"a dense output needs (N, C, H, W)-like dims, got shape {y.shape}")
    if y.shape[1] > 1:
        out: np.ndarray = np.argmax(y, axis=1)
        return out
    threshold = 0.0 if activation == "logits" else 0.5
    return (y[:, 0] > threshold).astype(np.int64)


@dataclass
class DenseAccumulator:
    """Running dense-map metrics of one output."""

    name: str
    activation: str | None = None  # the final activation the map comes out of ('Sigmoid', 'Softmax', None)
    correlations: list[np.ndarray] = field(default_factory=list)
    intersection: dict[int, int] = field(default_factory=dict)
    union: dict[int, int] = field(default_factory=dict)

    def update(self, ref: np.ndarray, got: np.ndarray, ref_pre: np.ndarray | None = None,
               got_pre: np.ndarray | None = None) -> None:
        if ref.shape != got.shape:
            raise InputError(f"output {self.name!r}: reference shape {ref.shape} != candidate shape {got.shape}")
        pre_r, pre_g = (ref, got) if ref_pre is None or got_pre is None else (ref_pre, got_pre)
        for what, arr in (("reference", pre_r), ("candidate", pre_g)):
            if not np.isfinite(arr).all():
                raise VerificationError(f"output {self.name!r}: the {what} model's map holds NaN/Inf; its fidelity "
                                        "cannot be measured", hint=f"the {what} model is broken: export or calibrate "
                                        "it again")
        n = pre_r.shape[0]
        self.correlations.append(_pearson(pre_r.reshape(n, -1).astype(np.float64),
                                          pre_g.reshape(n, -1).astype(np.float64)))
        lr, lg = label_map(ref, self.activation), label_map(got, self.activation)
        for c in np.union1d(np.unique(lr), np.unique(lg)).tolist():
            a, b = lr == c, lg == c
            self.intersection[c] = self.intersection.get(c, 0) + int(np.sum(a & b))
            self.union[c] = self.union.get(c, 0) + int(np.sum(a | b))

    def result(self) -> dict[str, Any]:
        corr = np.concatenate(self.correlations) if self.correlations else np.zeros(0)
        ious = {c: self.intersection[c] / self.union[c] for c in sorted(self.union) if self.union[c] > 0}
        return {
            "name": self.name,
            "samples": int(corr.size),
            "map_correlation": float(corr.mean()) if corr.size else None,
            "map_correlation_min": float(corr.min()) if corr.size else None,
            "correlation_of": "pre-activation (input of the final "
                              f"{self.activation})" if self.activation else "output",
            "miou": float(np.mean(list(ious.values()))) if ious else None,
            "classes": len(ious),
        }


# ---- detection ----------------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Detections:
    """One image's detections: boxes (K, 4) x1 y1 x2 y2, scores (K,), classes (K,)."""

    boxes: np.ndarray
    scores: np.ndarray
    classes: np.ndarray


def box_iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """IoU of every box of ``a`` (K, 4) against every box of ``b`` (M, 4), xyxy."""
    lt = np.maximum(a[:, None, :2], b[None, :, :2])
    rb = np.minimum(a[:, None, 2:], b[None, :, 2:])
    inter = np.prod(np.clip(rb - lt, 0, None), axis=2)
    area_a = np.prod(np.clip(a[:, 2:] - a[:, :2], 0, None), axis=1)
    area_b = np.prod(np.clip(b[:, 2:] - b[:, :2], 0, None), axis=1)
    union = area_a[:, None] + area_b[None, :] - inter
    out: np.ndarray = np.where(union > 0, inter / np.where(union > 0, union, 1.0), 0.0)
    return out


def nms(boxes: np.ndarray, scores: np.ndarray, iou: float) -> np.ndarray:
    """Indices kept by greedy non-maximum suppression, by decreasing score (ties: lower index first)."""
    order = np.argsort(-scores, kind="stable")
    keep: list[int] = []
    while order.size:
        i = int(order[0])
        keep.append(i)
        if order.size == 1:
            break
        rest = order[1:]
        order = rest[box_iou(boxes[i : i + 1], boxes[rest])[0] < iou]
    return np.asarray(keep, dtype=np.int64)


def _select(boxes: np.ndarray, scores: np.ndarray, min_score: float, iou: float, max_det: int) -> Detections:
    """Per-class NMS over one image: boxes (A, 4) xyxy, scores (A, C); boxes without area (x2 <= x1 or y2 <= y1) are
    not detections."""
    cls = np.argmax(scores, axis=1)
    best = scores[np.arange(scores.shape[0]), cls]
    keep = (best >= min_score) & (boxes[:, 2] > boxes[:, 0]) & (boxes[:, 3] > boxes[:, 1])
    boxes, best, cls = boxes[keep], best[keep], cls[keep]
    out_b, out_s, out_c = [], [], []
    for c in np.unique(cls).tolist():
        m = cls == c
        k = nms(boxes[m], best[m], iou)
        out_b.append(boxes[m][k])
        out_s.append(best[m][k])
        out_c.append(np.full(k.size, c, np.int64))
    if not out_b:
        return Detections(np.zeros((0, 4)), np.zeros(0), np.zeros(0, np.int64))
    b, s, c = np.concatenate(out_b), np.concatenate(out_s), np.concatenate(out_c)
    order = np.argsort(-s, kind="stable")[:max_det]
    return Detections(b[order].astype(np.float64), s[order].astype(np.float64), c[order])


def _xywh_to_xyxy(b: np.ndarray) -> np.ndarray:
    return np.concatenate([b[..., :2] - b[..., 2:4] / 2, b[..., :2] + b[..., 2:4] / 2], axis=-1)


@dataclass(frozen=True)
class DetectionConfig:
    """How to read detections from a model's outputs, and the operating point."""

    format: str = "boxes-scores"
    boxes: str | None = None  # output names (boxes-scores); None: the first and second graph outputs
    scores: str | None = None
    conf: float = 0.25  # the FP32 operating point: reference detections at or above it are the ground truth
    min_score: float = 0.001  # candidate detections kept for the AP ranking
    nms_iou: float = 0.5
    max_det: int = 300

    def __post_init__(self) -> None:
        if self.format not in DETECTION_FORMATS:
            raise ValueError(f"detection format {self.format!r} is not one of {list(DETECTION_FORMATS)}")
        if not 0.0 < self.conf < 1.0 or not 0.0 <= self.min_score <= self.conf:
            raise ValueError(f"need 0 <= min_score <= conf < 1, got min_score {self.min_score}, conf {self.conf}")
        if not 0.0 < self.nms_iou <= 1.0 or self.max_det < 1:
            raise ValueError(f"nms_iou must be in (0, 1] and max_det >= 1, got {self.nms_iou}, {self.max_det}")

    def outputs(self, names: Sequence[str]) -> list[str]:
        """The graph outputs this format reads."""
        if self.format != "boxes-scores":
            return [names[0]]
        if len(names) < 2 and (self.boxes is None or self.scores is None):
            raise InputError(f"boxes-scores detection needs a boxes and a scores output; the model has {list(names)}",
                             hint="name them with --boxes and --scores, or pick --detection-format yolov5|yolov8")
        wanted = [self.boxes or names[0], self.scores or names[1]]
        for w in wanted:
            if w not in names:
                raise InputError(f"output {w!r} is not a graph output; outputs are {list(names)}")
        return wanted

    def decode(self, arrays: Sequence[np.ndarray]) -> list[Detections]:
        """Detections per image from the arrays of :meth:`outputs`."""
        if self.format == "boxes-scores":
            boxes, scores = arrays
            if boxes.ndim != 3 or boxes.shape[-1] != 4:
                raise InputError(f"boxes output must be (N, A, 4) xyxy, got {boxes.shape}")
            if scores.ndim == 2:
                scores = scores[..., None]
            if scores.shape[:2] != boxes.shape[:2]:
                raise InputError(f"scores {scores.shape} do not match boxes {boxes.shape}")
            per = [(boxes[i], scores[i]) for i in range(boxes.shape[0])]
        elif self.format == "yolov5":
            raw = arrays[0]
            if raw.ndim != 3 or raw.shape[-1] < 6:
                raise InputError(f"a yolov5 head is (N, A, 5 + classes), got {raw.shape}")
            per = [(_xywh_to_xyxy(raw[i, :, :4]), raw[i, :, 4:5] * raw[i, :, 5:]) for i in range(raw.shape[0])]
        else:
            raw = arrays[0]
            if raw.ndim != 3 or raw.shape[1] < 5:
                raise InputError(f"a yolov8 head is (N, 4 + classes, A), got {raw.shape}")
            per = [(_xywh_to_xyxy(raw[i, :4].T), raw[i, 4:].T) for i in range(raw.shape[0])]
        out = []
        for b, s in per:
            if not (np.isfinite(b).all() and np.isfinite(s).all()):
                raise VerificationError("a model's detection outputs hold NaN/Inf; its detections cannot be scored",
                                        hint="the model is broken: export or calibrate it again")
            out.append(_select(b.astype(np.float64), s.astype(np.float64), self.min_score, self.nms_iou, self.max_det))
        return out


def _ap(tp: np.ndarray, scores: np.ndarray, n_gt: int) -> float:
    """COCO 101-point interpolated AP of detections (``tp`` flags, ``scores``) against ``n_gt`` ground-truth boxes."""
    if n_gt == 0:
        return float("nan")
    if tp.size == 0:
        return 0.0
    order = np.argsort(-scores, kind="stable")
    tp = tp[order].astype(np.float64)
    ctp = np.cumsum(tp)
    recall = ctp / n_gt
    precision = ctp / np.arange(1, tp.size + 1)
    precision = np.maximum.accumulate(precision[::-1])[::-1]  # the precision envelope
    points = np.linspace(0, 1, 101)
    idx = np.searchsorted(recall, points, side="left")
    return float(np.mean(np.where(idx < precision.size, precision[np.minimum(idx, precision.size - 1)], 0.0)))


def _match(gt: Detections, det: Detections, t: float) -> np.ndarray:
    """Greedy matching by decreasing score: True for each detection that takes an unmatched ground-truth box of its
    class at IoU >= t."""
    tp = np.zeros(det.scores.size, bool)
    if det.scores.size == 0 or gt.scores.size == 0:
        return tp
    iou = box_iou(det.boxes, gt.boxes)
    iou[det.classes[:, None] != gt.classes[None, :]] = -1.0
    used = np.zeros(gt.scores.size, bool)
    for i in np.argsort(-det.scores, kind="stable"):
        cand = np.where(~used, iou[i], -1.0)
        j = int(np.argmax(cand))
        if cand[j] >= t:
            used[j] = True
            tp[i] = True
    return tp


@dataclass
class DetectionAccumulator:
    """Candidate detections scored against the reference model's detections (score >= conf) as ground truth."""

    config: DetectionConfig
    images: int = 0
    per_threshold: dict[float, list[tuple[np.ndarray, np.ndarray, np.ndarray]]] = field(default_factory=dict)
    gt_counts: dict[int, int] = field(default_factory=dict)
    op_matched: int = 0
    op_detections: int = 0

    def update(self, ref: Sequence[Detections], got: Sequence[Detections]) -> None:
        for r, g in zip(ref, got):
            keep = r.scores >= self.config.conf
            gt = Detections(r.boxes[keep], r.scores[keep], r.classes[keep])
            for c in gt.classes.tolist():
                self.gt_counts[c] = self.gt_counts.get(c, 0) + 1
            for t in IOU_THRESHOLDS:
                self.per_threshold.setdefault(t, []).append((_match(gt, g, t), g.scores, g.classes))
            op = g.scores >= self.config.conf
            at_op = Detections(g.boxes[op], g.scores[op], g.classes[op])
            self.op_matched += int(_match(gt, at_op, 0.5).sum())
            self.op_detections += int(op.sum())
            self.images += 1

    def result(self) -> dict[str, Any]:
        n_gt = sum(self.gt_counts.values())
        maps: dict[float, float] = {}
        for t, rows in self.per_threshold.items():
            tp = np.concatenate([r[0] for r in rows]) if rows else np.zeros(0, bool)
            sc = np.concatenate([r[1] for r in rows]) if rows else np.zeros(0)
            cl = np.concatenate([r[2] for r in rows]) if rows else np.zeros(0, np.int64)
            aps = [_ap(tp[cl == c], sc[cl == c], n) for c, n in sorted(self.gt_counts.items())]
            maps[t] = float(np.mean(aps)) if aps else float("nan")
        return {
            "images": self.images,
            "reference_detections": n_gt,
            "classes": len(self.gt_counts),
            "conf": self.config.conf,
            "map50": maps.get(0.5) if n_gt else None,
            "map50_95": float(np.mean([maps[t] for t in IOU_THRESHOLDS])) if n_gt else None,
            "recall_at_op": self.op_matched / n_gt if n_gt else None,
            "precision_at_op": self.op_matched / self.op_detections if self.op_detections else None,
            "candidate_detections_at_op": self.op_detections,
            "definition": "ground truth = reference detections with score >= conf; candidate ranked by score, greedy "
                          "IoU matching per class; COCO 101-point AP; recall/precision at the same conf, IoU 0.5",
        }


# ---- a task: which outputs to read and how to score them ------------------------------------------------------------

TASKS = ("dense", "detection")
TASK_METRICS: dict[str, tuple[str, ...]] = {
    "dense": ("map_correlation", "miou"),
    "detection": ("map50", "map50_95", "recall_at_op"),
}


@dataclass(frozen=True)
class TaskSpec:
    """A task-aware comparison: ``dense`` (output ``output``, default the first output with >= 3 dims) or
    ``detection`` (read as ``detection`` says)."""

    kind: str
    output: str | None = None
    detection: DetectionConfig = field(default_factory=DetectionConfig)

    def __post_init__(self) -> None:
        if self.kind not in TASKS:
            raise ValueError(f"task {self.kind!r} is not one of {list(TASKS)}")

    @property
    def metrics(self) -> tuple[str, ...]:
        return TASK_METRICS[self.kind]

    def driving(self, model: onnx.ModelProto) -> list[str]:
        """The graph outputs the task metric is computed from (the ones that drive a plan)."""
        names = [o.name for o in model.graph.output]
        if self.kind == "detection":
            return self.detection.outputs(names)
        if self.output is not None:
            if self.output not in names:
                raise InputError(f"output {self.output!r} is not a graph output; outputs are {names}")
            return [self.output]
        for o in model.graph.output:
            dims = o.type.tensor_type.shape.dim
            if len(dims) >= 3:
                return [o.name]
        raise InputError(f"no dense output (N, C, H, W) among {names}", hint="name the map with --output")

    def tensors(self, model: onnx.ModelProto) -> list[str]:
        """Every tensor the task reads: the driving outputs, and (dense) the pre-activation map."""
        out = self.driving(model)
        if self.kind == "dense":
            pre = pre_activation(model, out[0])
            if pre is not None:
                out.append(pre[0])
        return out

    def accumulator(self, model: onnx.ModelProto) -> TaskAccumulator:
        return TaskAccumulator(self, model)

    def to_dict(self) -> dict[str, Any]:
        d: dict[str, Any] = {"kind": self.kind, "output": self.output}
        if self.kind == "detection":
            d["detection"] = dict(vars(self.detection))
        return d


class TaskAccumulator:
    """Task metrics over batches: feed the reference's and the candidate's arrays of ``spec.tensors(model)``."""

    def __init__(self, spec: TaskSpec, model: onnx.ModelProto) -> None:
        self.spec = spec
        self.driving = spec.driving(model)
        self.tensors = spec.tensors(model)
        self.dense: DenseAccumulator | None = None
        self.det: DetectionAccumulator | None = None
        if spec.kind == "dense":
            pre = pre_activation(model, self.driving[0])
            self.dense = DenseAccumulator(self.driving[0], None if pre is None else pre[1])
        else:
            self.det = DetectionAccumulator(spec.detection)

    def update(self, ref: Sequence[np.ndarray], got: Sequence[np.ndarray]) -> None:
        """``ref`` / ``got``: arrays in the order of ``tensors``."""
        if self.dense is not None:
            has_pre = len(self.tensors) > 1
            self.dense.update(ref[0], got[0], ref[1] if has_pre else None, got[1] if has_pre else None)
        elif self.det is not None:
            cfg = self.spec.detection
            self.det.update(cfg.decode(ref), cfg.decode(got))

    def result(self) -> dict[str, Any]:
        body = self.dense.result() if self.dense is not None else self.det.result() if self.det is not None else {}
        return {"task": self.spec.kind, "driving_outputs": self.driving, **body}


def task_value(result: dict[str, Any], metric: str) -> float:
    """A task metric (higher is better) out of :meth:`TaskAccumulator.result`."""
    v = result.get(metric)
    if v is None:
        raise InputError(f"task metric {metric!r} has no value here ({result.get('task')} task: "
                         f"{'no reference detections at the operating point' if result.get('task') == 'detection' else 'no samples'})",
                         hint="lower --conf, or use more samples")
    return float(v)
