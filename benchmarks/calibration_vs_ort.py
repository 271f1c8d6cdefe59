#!/usr/bin/env python3
"""vqz-edge calibration vs ONNX Runtime's quantize_static, side by side, same data, one run.

    python benchmarks/calibration_vs_ort.py [--calib 256] [--eval 1000] [--json]

Model: the demo MobileNetV2 (ImageNet weights, BN folded). Data: the same N calibration crops and M held-out
crops (demo photos, split by source photo), saved once as .npy and read by every job. Every job runs in a fresh
process and reports its own wall time and peak RSS (VmHWM). Jobs:
  fp32-forward     plain FP32 ONNX Runtime inference over the calibration crops (the baseline for wall time)
  vqz-entropy      vqz-edge calibrate --method entropy (TensorRT EntropyCalibration2 semantics)
  vqz-auto         vqz-edge calibrate --method auto (MSE for non-negative tensors, entropy for signed)
  vqz-entropy-4x   vqz-edge entropy on 4x the crops (peak RSS must not grow with the number of images)
  ort-entropy      onnxruntime.quantization.quantize_static, CalibrationMethod.Entropy (QDQ, per-channel, symmetric)
  ort-minmax       the same with CalibrationMethod.MinMax
Fidelity (not timed): each INT8 model vs FP32 on the held-out crops: logit cosine, top-1 agreement.
Targets (issue 3) are checked and printed at the end.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
BATCH = 8


def peak_rss_mib() -> float:
    """VmHWM of this process. (ru_maxrss would carry the parent's high-water mark across fork+exec.)"""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024.0
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def worker(job: str, model: Path, calib: Path, out: Path) -> dict[str, object]:
    import onnxruntime as ort

    t0 = time.perf_counter()
    if job == "fp32-forward":
        x = np.load(calib)
        sess = ort.InferenceSession(str(model), providers=["CPUExecutionProvider"])
        sess.run(None, {"input": x[:BATCH]})  # warm-up, not timed
        t0 = time.perf_counter()
        for i in range(0, len(x), BATCH):
            sess.run(None, {"input": x[i : i + BATCH]})
    elif job.startswith("vqz-"):
        from vqz_edge.calib import CalibrationOptions, calibrate

        method = "auto" if job == "vqz-auto" else "entropy"
        n = int(np.load(calib, mmap_mode="r").shape[0])
        calibrate(model, calib, out, CalibrationOptions(method=method, num_images=n, batch_size=BATCH), preset="none")
    else:
        from onnxruntime.quantization import (
            CalibrationDataReader,
            CalibrationMethod,
            QuantFormat,
            QuantType,
            quantize_static,
        )

        x = np.load(calib)

        class Reader(CalibrationDataReader):
            def __init__(self) -> None:
                self.i = 0

            def get_next(self) -> dict[str, np.ndarray] | None:
                if self.i >= len(x):
                    return None
                batch = x[self.i : self.i + BATCH]
                self.i += BATCH
                return {"input": batch}

        method = CalibrationMethod.Entropy if job == "ort-entropy" else CalibrationMethod.MinMax
        out.mkdir(parents=True, exist_ok=True)
        quantize_static(
            str(model), str(out / "model.qdq.onnx"), Reader(), quant_format=QuantFormat.QDQ, per_channel=True,
            activation_type=QuantType.QInt8, weight_type=QuantType.QInt8, calibrate_method=method,
            extra_options={"ActivationSymmetric": True, "WeightSymmetric": True},
        )
    return {"job": job, "seconds": time.perf_counter() - t0, "peak_rss_mib": peak_rss_mib()}


def run_job(job: str, model: Path, calib: Path, out: Path) -> dict[str, object]:
    cmd = [sys.executable, __file__, "--worker", job, "--model", str(model), "--calib-file", str(calib), "--out", str(out)]
    r = subprocess.run(cmd, capture_output=True, text=True, env=dict(os.environ, PYTHONPATH=str(ROOT)))
    if r.returncode != 0:
        raise SystemExit(f"job {job} failed:\n{r.stderr[-3000:]}")
    return json.loads(r.stdout.strip().splitlines()[-1])


def fidelity(model: Path, qdq: Path, eval_file: Path) -> dict[str, float]:
    from vqz_edge.calib.evaluate import evaluate
    from vqz_edge.data.source import open_data
    from vqz_edge.onnx_io import graph_inputs, load_model

    ref = load_model(model)
    src = open_data(str(eval_file), graph_inputs(ref)[0], count=None)
    rep = evaluate(ref, load_model(qdq), src.batches(50), total_batches=(src.count + 49) // 50, data_description="")
    o = rep.outputs[0]
    return {"cosine": o["mean_cosine"], "top1": o["top1_agreement"], "top5": o["top5_contains_reference_top1"]}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--calib", type=int, default=256, help="calibration crops (default 256)")
    ap.add_argument("--eval", type=int, default=1000, help="held-out crops (default 1000)")
    ap.add_argument("--skip-ort", action="store_true", help="skip quantize_static (needs ~16 GB RAM at 256 crops)")
    ap.add_argument("--json", action="store_true")
    ap.add_argument("--worker", help=argparse.SUPPRESS)
    ap.add_argument("--model", type=Path, help=argparse.SUPPRESS)
    ap.add_argument("--calib-file", type=Path, help=argparse.SUPPRESS)
    ap.add_argument("--out", type=Path, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker:
        print(json.dumps(worker(args.worker, args.model, args.calib_file, args.out)))
        return 0

    from vqz_edge.data import demo_crops
    from vqz_edge.demo import mobilenet_weights
    from vqz_edge.export import ExportOptions, export_model

    tmp = Path(tempfile.mkdtemp(prefix="vqz-bench-"))
    model = tmp / "model.onnx"
    export_model("mobilenet_v2", model, ExportOptions(weights=mobilenet_weights()))
    files = {}
    for name, split, n in [("calib", "calibration", args.calib), ("calib4x", "calibration", 4 * args.calib),
                           ("eval", "evaluation", args.eval)]:
        files[name] = tmp / f"{name}.npy"
        np.save(files[name], demo_crops(split, n))
        print(f"[data] {name}: {n} crops ({split} split)", file=sys.stderr)

    jobs = ["fp32-forward", "vqz-entropy", "vqz-auto", "vqz-entropy-4x"]
    if not args.skip_ort:
        jobs += ["ort-entropy", "ort-minmax"]
    results = {}
    for job in jobs:
        calib = files["calib4x"] if job == "vqz-entropy-4x" else files["calib"]
        print(f"[run] {job} ...", file=sys.stderr)
        results[job] = run_job(job, model, calib, tmp / job)
        if job != "fp32-forward":
            results[job].update(fidelity(model, tmp / job / "model.qdq.onnx", files["eval"]))
        print(f"[run] {job}: {results[job]}", file=sys.stderr)

    base = results["fp32-forward"]["seconds"]
    vqz = results["vqz-entropy"]
    checks = [
        ("calibration wall <= 2x FP32 forward", vqz["seconds"] <= 2 * base, f"{vqz['seconds']:.2f}s vs 2 x {base:.2f}s"),
        ("peak RSS at 4x crops <= 1.2x", results["vqz-entropy-4x"]["peak_rss_mib"] <= 1.2 * vqz["peak_rss_mib"],
         f"{results['vqz-entropy-4x']['peak_rss_mib']:.0f} vs {vqz['peak_rss_mib']:.0f} MiB"),
        ("logit cosine >= 0.98 (all Conv/Gemm INT8, entropy)", vqz["cosine"] >= 0.98, f"{vqz['cosine']:.4f}"),
        ("logit cosine >= 0.98 (all Conv/Gemm INT8, auto)", results["vqz-auto"]["cosine"] >= 0.98,
         f"{results['vqz-auto']['cosine']:.4f}"),
    ]
    if "ort-entropy" in results:
        ort_e = results["ort-entropy"]
        checks[:0] = [
            (">= 10x faster than ORT Entropy", ort_e["seconds"] >= 10 * vqz["seconds"],
             f"{ort_e['seconds'] / vqz['seconds']:.1f}x"),
            ("<= 1/16 the peak RSS of ORT Entropy", vqz["peak_rss_mib"] * 16 <= ort_e["peak_rss_mib"],
             f"1/{ort_e['peak_rss_mib'] / vqz['peak_rss_mib']:.1f}"),
        ]
    if args.json:
        print(json.dumps({"results": results, "checks": [{"target": c, "met": ok, "measured": m} for c, ok, m in checks]},
                         indent=2))
        return 0
    print(f"\nMobileNetV2, {args.calib} calibration crops, {args.eval} held-out crops, batch {BATCH}, {os.cpu_count()} CPUs")
    print(f"{'job':16s} {'wall s':>8s} {'peak RSS MiB':>13s} {'cosine':>8s} {'top-1':>7s} {'top-5':>7s}")
    for job, r in results.items():
        cos = f"{r['cosine']:.4f}" if "cosine" in r else "-"
        t1 = f"{r['top1'] * 100:.1f}%" if "top1" in r else "-"
        t5 = f"{r['top5'] * 100:.1f}%" if "top5" in r else "-"
        print(f"{job:16s} {r['seconds']:8.2f} {r['peak_rss_mib']:13.0f} {cos:>8s} {t1:>7s} {t5:>7s}")
    print("\ntargets:")
    for target, ok, measured in checks:
        print(f"  [{'met' if ok else 'MISSED'}] {target}: {measured}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
