"""vqz-edge bundle SPEC --target T -o BUNDLE.tar  |  vqz-edge bundle verify BUNDLE --key PUB"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from ..bundle.create import BundleOptions, create_bundle
from ..bundle.reader import verify_bundle
from ..bundle.signing import load_public_key
from ..errors import InputError
from ..progress import tqdm_factory
from . import COMMANDS, emit_json, options


def register(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    p = sub.add_parser(
        "bundle",
        help=COMMANDS["bundle"].summary,
        usage="vqz-edge bundle SPEC --target T -o BUNDLE.tar [--sign-key KEY] [options]\n"
        "       vqz-edge bundle verify BUNDLE --key PUB [--json]",
        description="Make a bundle: everything the device needs to build and verify its TensorRT engine (the ONNX, "
        "the Q/DQ ONNX, the calibration cache stamped with the target's TensorRT version, the precision plan, the "
        "spec, the fidelity report, reference inputs/outputs for a smoke test) with a manifest of sha256 hashes, the "
        "allowed JetPack/L4T/TensorRT range and a bundle version, signed with Ed25519. Same inputs give the same "
        "bytes. 'bundle verify BUNDLE --key PUB' checks a bundle on any host.",
    )
    p.add_argument("items", nargs="+", metavar="SPEC | verify BUNDLE", help="the build spec, or 'verify' and a bundle")
    b = p.add_argument_group("bundle")
    b.add_argument("--target", metavar="T", help="target module, e.g. orin-nx-16gb (see vqz-edge targets)")
    b.add_argument("-o", "--output", type=Path, metavar="BUNDLE.tar", help="bundle file to write (atomically)")
    b.add_argument("--bundle-version", type=options.positive_int, default=1, metavar="N",
                   help="monotonically increasing release number; devices refuse versions lower than installed (default 1)")
    b.add_argument("--calibration-dir", type=Path, metavar="DIR",
                   help="where model.onnx, model.qdq.onnx, calibration.cache, plan.json, fidelity.json are "
                   "(default calibration/<model>)")
    b.add_argument("--jetpack", metavar="V[,V...]", default="",
                   help="JetPack releases the device may run (default: those shipping the target's TensorRT line)")
    options.add_targets_file(b)
    s = p.add_argument_group("smoke test")
    s.add_argument("--smoke-samples", type=options.positive_int, default=4, help="reference samples shipped (default 4)")
    s.add_argument("--smoke-min-cosine", type=options.unit_fraction, default=None, metavar="C",
                   help="per-sample cosine similarity to the FP32 reference outputs the device build must reach "
                   "(default: what the served model reaches on this host minus 0.02)")
    k = p.add_argument_group("signing")
    k.add_argument("--sign-key", type=Path, metavar="KEY", help="Ed25519 private key (vqz-edge keys generate)")
    k.add_argument("--key", type=Path, metavar="PUB", help="(verify) the signer's public key")
    k.add_argument("--allow-unsigned", action="store_true", help="(verify) accept a bundle without a signature")
    options.add_common(p)
    p.set_defaults(func=run)


def _human(n: int) -> str:
    return f"{n / (1 << 20):.1f} MiB" if n >= 1 << 20 else f"{n / 1024:.1f} KiB"


def run(args: argparse.Namespace) -> int:
    items = list(args.items)
    if items[0] == "verify" and not (len(items) == 1 and Path("verify").is_file()):
        if len(items) != 2:
            raise InputError("usage: vqz-edge bundle verify BUNDLE --key PUB")
        return _verify(args, Path(items[1]))
    if len(items) != 1:
        raise InputError(f"expected one spec file, got {items}", hint="vqz-edge bundle SPEC --target T -o BUNDLE.tar")
    if not args.target or not args.output:
        raise InputError("bundle needs --target and -o/--output", hint="vqz-edge bundle SPEC --target T -o BUNDLE.tar")
    return _create(args, Path(items[0]))


def _create(args: argparse.Namespace, spec: Path) -> int:
    try:
        opts = BundleOptions(
            target=args.target, bundle_version=args.bundle_version, calibration_dir=args.calibration_dir,
            jetpack=tuple(v.strip() for v in args.jetpack.split(",") if v.strip()), smoke_samples=args.smoke_samples,
            min_cosine=args.smoke_min_cosine, sign_key=args.sign_key, targets_files=tuple(args.targets_file),
        )
    except ValueError as exc:
        raise InputError(str(exc)) from exc
    res = create_bundle(spec, args.output, opts, progress=None if (args.quiet or args.json) else tqdm_factory)
    if args.json:
        emit_json(res.to_dict())
        return 0
    m = res.manifest
    print(f"bundle {m.bundle_id} -> {res.output} ({_human(res.size)}, sha256 {res.sha256[:16]}...)")
    print(f"  target {m.target}; JetPack {', '.join(m.compatibility.jetpack)} (L4T {', '.join(m.compatibility.l4t)}), "
          f"TensorRT {m.compatibility.tensorrt_min}..{m.compatibility.tensorrt_max}, SM {m.compatibility.compute_capability}")
    print(f"  build modes on the device: {', '.join(m.build['modes'])}"
          + (f"; cache header {m.build['calibration_cache']['header']}" if m.build.get("calibration_cache") else ""))
    for name, e in sorted(m.files.items()):
        print(f"  {name:28s} {_human(e.size):>10s}  {e.sha256[:16]}")
    sm = m.smoke.measured
    print(f"  smoke test: {len(m.smoke.inputs)} input(s) x {m.smoke.inputs[0].shape[0]} samples; {sm.get('host_model')} on "
          f"this host: min cosine {sm.get('min_cosine')} (device must reach {m.smoke.min_cosine})")
    print(f"  signed: key {res.key_id}" if res.signed else "  signed: NO")
    for note in res.notes:
        print(f"  note: {note}")
    return 0


def _verify(args: argparse.Namespace, bundle: Path) -> int:
    if args.key is None and not args.allow_unsigned:
        raise InputError("bundle verify needs --key PUB (the signer's public key)",
                         hint="or --allow-unsigned to check only the hashes of an unsigned bundle")
    key = load_public_key(args.key) if args.key else None
    vb = verify_bundle(bundle, key, allow_unsigned=args.allow_unsigned)
    out: dict[str, Any] = {"bundle": str(bundle), "ok": True, **vb.to_dict()}
    if args.json:
        emit_json(out)
        return 0
    m = vb.manifest
    sig = {"verified": f"signature OK (key {vb.key_id})", "unsigned": "NOT SIGNED",
           "not-checked": f"signature NOT CHECKED (signed by {vb.key_id}; no --key)"}[vb.signature]
    print(f"{bundle}: OK - {m.bundle_id}, {sig}, {len(m.files)} files match the manifest, canonical tar")
    print(f"  model {m.model}, target {m.target}, bundle version {m.bundle_version}, vqz-edge {m.vqz_edge_version}")
    print(f"  allowed: JetPack {', '.join(m.compatibility.jetpack)}; TensorRT {m.compatibility.tensorrt_min}.."
          f"{m.compatibility.tensorrt_max}")
    return 0
