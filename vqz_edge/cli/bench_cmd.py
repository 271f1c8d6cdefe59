"""vqz-edge bench ENGINE_OR_ONNX [--batch B] [--iterations N] [--warmup W]"""

from __future__ import annotations

import argparse
from pathlib import Path

from ..errors import InputError
from ..progress import tqdm_factory
from ..runtime import open_runner
from ..runtime.bench import JtopSampler, benchmark
from . import COMMANDS, emit_json, options


def register(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    p = sub.add_parser(
        "bench",
        help=COMMANDS["bench"].summary,
        description="Time repeated inference on seeded random inputs: latency percentiles, throughput "
        "(samples/s) and peak memory (process peak RSS everywhere; system RAM through jtop on a Jetson). "
        "Engines run on TensorRT (device), .onnx on ONNX Runtime (CPU).",
    )
    p.add_argument("model", metavar="ENGINE_OR_ONNX", type=Path, help="engine directory, .engine file, or .onnx")
    g = p.add_argument_group("benchmark")
    g.add_argument("--batch", "-b", type=options.positive_int, default=1, help="batch size (default 1)")
    g.add_argument("--iterations", "-n", type=options.positive_int, default=100, help="timed iterations (default 100)")
    g.add_argument("--warmup", "-w", type=options.nonnegative_int, default=10, help="untimed warm-up iterations (default 10)")
    g.add_argument("--seed", type=options.nonnegative_int, default=0, help="seed of the random inputs (default 0)")
    options.add_runtime_options(p)
    options.add_common(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    if args.batch <= 0 or args.iterations <= 0 or args.warmup < 0:
        raise InputError("--batch and --iterations must be positive and --warmup >= 0")
    with JtopSampler() as sampler, open_runner(  # sampler first: its baseline is before the model loads
        args.model, target=args.target, backend=args.backend, max_batch=args.batch,
        check_memory=not args.no_memory_check, targets_files=args.targets_file, threads=args.threads,
    ) as runner:
        progress = None if (args.quiet or args.json) else tqdm_factory
        res = benchmark(runner, batch=args.batch, iterations=args.iterations, warmup=args.warmup, seed=args.seed,
                        progress=progress, sampler=sampler)
        desc = runner.describe()
    d = res.to_dict()
    d["runner"] = desc
    if args.json:
        emit_json(d)
        return 0
    lat = d["latency_ms"]
    mem = d["peak_memory"]
    print(f"bench {args.model} ({res.backend}, batch {res.batch}, {res.iterations} iterations after {res.warmup} warm-up)")
    print(f"  latency ms : p50 {lat['p50']:.3g}  p90 {lat['p90']:.3g}  p99 {lat['p99']:.3g}  "
          f"(mean {lat['mean']:.3g}, min {lat['min']:.3g}, max {lat['max']:.3g})")
    print(f"  throughput : {res.throughput:.1f} samples/s")
    line = f"  peak memory: {mem['process_peak_rss_mib']:.1f} MiB process RSS (VmHWM)"
    if mem["system_ram_used_peak_bytes"] is not None:
        peak = mem["system_ram_used_peak_bytes"] / (1 << 20)
        base = (mem["system_ram_used_baseline_bytes"] or 0) / (1 << 20)
        line += f"; system RAM used peak {peak:.0f} MiB (jtop; {peak - base:+.0f} MiB over before loading)"
    print(line)
    print(f"  host       : {res.host}")
    return 0
