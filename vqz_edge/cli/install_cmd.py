"""vqz-edge install [BUNDLE] --root DIR [--key PUB] [--allow-unsigned] [--backend ...] [--json]"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from ..bundle.install import InstallOptions, install_bundle, refresh
from ..device import DevicePaths
from ..errors import InputError
from ..progress import tqdm_factory
from . import COMMANDS, emit_json, options


def options_from_args(args: argparse.Namespace) -> Any:
    try:
        return InstallOptions(
            backend=args.backend,
            public_key=getattr(args, "key", None),
            allow_unsigned=getattr(args, "allow_unsigned", False),
            keep=getattr(args, "keep", 3),
            device=DevicePaths(args.nv_tegra_release, args.meminfo, args.device_tree, not args.no_jtop),
            device_target=args.device_target,
            force=getattr(args, "force", False),
            skip_memory_check=getattr(args, "skip_memory_check", False),
            targets_files=tuple(args.targets_file),
        )
    except ValueError as exc:
        raise InputError(str(exc)) from exc


def print_result(res: Any, verb: str) -> None:
    d = res.to_dict()
    if d["action"] == "noop":
        print(f"{verb}: nothing to do - {d['bundle_id']} is current for {d['device_key']}")
    else:
        print(f"{verb}: {d['action']} {d['bundle_id']} (bundle version {d['bundle_version']}) in {d['seconds']:.1f}s")
        print(f"  current -> {d['release']}  (backend {d['backend']}, device key {d['device_key']})")
        if d["previous"]:
            print(f"  previous: {d['previous']}")
    if d["signature"]:
        print(f"  signature: {d['signature']}" + (f" (key {d['key_id']})" if d["key_id"] else ""))
    if d["smoke"]:
        s = d["smoke"]
        top1 = f", top-1 agreement {s['top1_agreement']:.3f}" if s["top1_agreement"] is not None else ""
        print(f"  smoke test: {s['samples']} samples, min cosine {s['min_cosine']:.5f} >= {s['threshold']}{top1}: "
              + ("PASS" if s["passed"] else "FAIL"))
    dev = d["device"] or {}
    if dev:
        ram = dev.get("ram_total_bytes")
        print(f"  device: L4T {dev.get('l4t') or '-'} JetPack {dev.get('jetpack') or '-'} TensorRT "
              f"{dev.get('tensorrt') or '-'} SM {dev.get('compute_capability') or '-'} "
              f"RAM {ram / (1 << 30):.1f} GiB ({dev.get('ram_source')})" if ram else "")
    for note in d["notes"]:
        print(f"  note: {note}")


def register(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    p = sub.add_parser(
        "install",
        help=COMMANDS["install"].summary,
        description="Verify BUNDLE (signature, every hash, no downgrade, target, the device's JetPack/L4T/TensorRT "
        "range, memory budget), build the engine into ROOT/releases/<bundle-id>/, verify it (precisions, smoke test "
        "against the bundle's reference outputs) and only then switch ROOT/current. Without BUNDLE: rebuild the "
        "current release if the device's JetPack/TensorRT changed (run it at boot).",
    )
    p.add_argument("bundle", nargs="?", type=Path, metavar="BUNDLE", help="bundle .tar (omit to re-check the current release)")
    p.add_argument("--root", required=True, type=Path, metavar="DIR", help="install root (created if missing)")
    s = p.add_argument_group("trust")
    s.add_argument("--key", type=Path, metavar="PUB", help="the signer's Ed25519 public key (required for signed installs)")
    s.add_argument("--allow-unsigned", action="store_true",
                   help="install without verifying a signature (loudly reported; not for production)")
    r = p.add_argument_group("releases")
    r.add_argument("--keep", type=options.positive_int, default=3, metavar="N", help="releases kept for rollback (default 3)")
    r.add_argument("--force", action="store_true", help="rebuild even when the same bundle is current")
    r.add_argument("--skip-memory-check", action="store_true", help="do not check the memory budget")
    options.add_device_options(p)
    options.add_common(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    opts = options_from_args(args)
    if args.allow_unsigned:
        print("vqz-edge install: WARNING: --allow-unsigned: the bundle's signature is NOT verified; "
              "anyone who can write the bundle file controls what runs on this device", file=sys.stderr)
    progress = None if (args.quiet or args.json) else tqdm_factory
    if args.bundle is None:
        res = refresh(args.root, opts, progress=progress)
    else:
        res = install_bundle(args.bundle, args.root, opts, progress=progress)
    if args.json:
        emit_json(res.to_dict())
        return 0
    if res.signature in ("unsigned", "not-checked"):
        print(f"WARNING: INSTALLED A BUNDLE WHOSE SIGNATURE WAS NOT VERIFIED ({res.signature})", file=sys.stderr)
    print_result(res, "install")
    return 0
