"""CLI options of the task metrics (vqz_edge.calib.tasks), shared by ``evaluate`` and ``sensitivity``."""

from __future__ import annotations

import argparse

from ..calib.tasks import DETECTION_FORMATS, TASK_METRICS, DetectionConfig, TaskSpec
from ..errors import InputError
from . import options

__all__ = ["DETECTION_FORMATS", "METRICS", "TASK_METRICS", "add_task_options", "task_from_args"]

# the metric names of vqz_edge.sensitivity.evaluator (tests/test_tasks.py checks they agree)
METRICS = ("cosine", "agreement", "sqnr", *TASK_METRICS["dense"], *TASK_METRICS["detection"])


def add_task_options(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("task metrics (dense maps, detection)")
    g.add_argument("--output-map", metavar="NAME", dest="task_output",
                   help="dense task: the map output (default: the first output with >= 3 dims)")
    g.add_argument("--detection-format", choices=list(DETECTION_FORMATS), default="boxes-scores",
                   help="detection task: boxes-scores = (N,A,4) xyxy + (N,A[,C]) scores outputs; yolov5 = (N,A,5+C); "
                   "yolov8 = (N,4+C,A) (default boxes-scores)")
    g.add_argument("--boxes", metavar="NAME", help="detection, boxes-scores: the boxes output (default: the first)")
    g.add_argument("--scores", metavar="NAME", help="detection, boxes-scores: the scores output (default: the second)")
    g.add_argument("--conf", type=options.finite_float, default=0.25,
                   help="detection: the reference's operating point; its detections at or above it are the ground "
                   "truth (default 0.25)")
    g.add_argument("--nms-iou", type=options.finite_float, default=0.5, help="detection: NMS IoU (default 0.5)")


def task_from_args(kind: str | None, args: argparse.Namespace) -> TaskSpec | None:
    if kind is None or kind not in ("dense", "detection"):
        return None
    try:
        det = DetectionConfig(format=args.detection_format, boxes=args.boxes, scores=args.scores, conf=args.conf,
                              min_score=min(0.001, args.conf), nms_iou=args.nms_iou)
        return TaskSpec(kind, args.task_output, det)
    except ValueError as exc:
        raise InputError(str(exc)) from exc
