"""vqz-edge targets: the Jetson target catalog and the JetPack -> L4T -> TensorRT -> CUDA table."""

from __future__ import annotations

import argparse

from ..targets import ENV_VAR, jetpack_table, load_catalog
from . import COMMANDS, emit_json, options


def register(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    p = sub.add_parser(
        "targets",
        help=COMMANDS["targets"].summary,
        description="List the Jetson Orin modules vqz-edge knows (RAM, GPU SMs, compute capability, DLA cores, "
        "default OS reserve, JetPack support) and the JetPack -> L4T -> TensorRT -> CUDA -> cuDNN table. "
        "Add or override targets in TOML with --targets-file or $VQZ_EDGE_TARGETS.",
    )
    g = p.add_argument_group("catalog")
    options.add_targets_file(g)
    g.add_argument("--sources", action="store_true", help="also print where every number comes from")
    options.add_common(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    cat = load_catalog(args.targets_file)
    jps = jetpack_table(args.targets_file)
    if args.json:
        emit_json({
            "targets": [t.to_dict() for t in cat.targets],
            "jetpack": [j.to_dict() for j in jps],
            "sources": dict(cat.sources),
        })
        return 0
    print(f"{'target':16} {'module':42} {'RAM':>6} {'SMs':>4} {'cores':>6} {'DLA':>4} {'CC':>4} "
          f"{'OS reserve':>11}  {'JetPack min/default':>19}  TensorRT")
    for t in cat.targets:
        ram = f"{t.ram_bytes / (1 << 30):.0f}G"
        jp = f"{t.min_jetpack or '?'} / {t.default_jetpack}"
        origin = "" if t.origin == "builtin" else f"  [{t.origin}]"
        print(f"{t.name:16} {t.display_name:42} {ram:>6} {t.gpu_sm_count:>4} {t.cuda_cores or '?':>6} {t.dla_cores:>4} "
              f"{t.compute_capability:>4} {t.os_reserve_mib:>7.0f} MiB  {jp:>19}  {t.default_trt_version}{origin}")
    print()
    print(f"{'JetPack':8} {'L4T':8} {'TensorRT':9} {'CUDA':5} cuDNN")
    for j in jps:
        print(f"{j.version:8} {j.l4t:8} {j.tensorrt:9} {j.cuda:5} {j.cudnn}")
    print()
    print("OS reserve = this project's default estimate of carve-outs + a headless OS + JetPack services; measure "
          "yours with 'vqz-edge check-memory ... --live' and override it in a targets file.")
    print(f"Add targets: --targets-file FILE or ${ENV_VAR}=FILE (format: vqz_edge/data/targets.toml, "
          "'extends = \"orin-nx-16gb\"' to inherit).")
    if args.sources:
        print()
        for key, text in cat.sources.items():
            print(f"[{key}] {text}")
    return 0
