"""Benchmark models through `vqz-edge bench` (one fresh process per model and batch, so the peak RSS of
one does not leak into the next) and print a Markdown table.

    python benchmarks/runtime_bench.py mnv2.onnx mnv2.qdq.onnx --batches 1,8 --iterations 100
    python benchmarks/runtime_bench.py engines/mobilenet_v2/orin-nx-16gb/10.3.0 --batches 1,4   # on the device
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path


def bench(model: Path, batch: int, iterations: int, warmup: int) -> dict[str, object]:
    cmd = [sys.executable, "-m", "vqz_edge", "bench", str(model), "--batch", str(batch), "--iterations",
           str(iterations), "--warmup", str(warmup), "--json", "-q"]
    r = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if r.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} failed ({r.returncode}):\n{r.stderr}")
    doc: dict[str, object] = json.loads(r.stdout)
    return doc


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("models", nargs="+", type=Path)
    p.add_argument("--batches", default="1,8", help="comma-separated batch sizes (default 1,8)")
    p.add_argument("--iterations", type=int, default=100)
    p.add_argument("--warmup", type=int, default=10)
    args = p.parse_args(argv)
    batches = [int(b) for b in args.batches.split(",") if b.strip()]
    print("| model | backend | batch | p50 ms | p90 ms | p99 ms | samples/s | peak RSS MiB |")
    print("|---|---|---:|---:|---:|---:|---:|---:|")
    for model in args.models:
        for b in batches:
            d = bench(model, b, args.iterations, args.warmup)
            lat = d["latency_ms"]
            mem = d["peak_memory"]
            assert isinstance(lat, dict) and isinstance(mem, dict)
            print(f"| {model.name} | {d['backend']} | {b} | {lat['p50']:.2f} | {lat['p90']:.2f} | {lat['p99']:.2f} "
                  f"| {d['throughput_per_s']:.1f} | {mem['process_peak_rss_mib']:.0f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
