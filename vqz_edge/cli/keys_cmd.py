"""vqz-edge keys generate -o NAME  |  vqz-edge keys id KEYFILE"""

from __future__ import annotations

import argparse
from pathlib import Path

from ..bundle.signing import (
    generate_keypair,
    load_private_key,
    load_public_key,
    private_key_id,
    public_key_id,
)
from . import COMMANDS, emit_json, options


def register(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    p = sub.add_parser(
        "keys",
        help=COMMANDS["keys"].summary,
        description="Create the Ed25519 key pair that signs bundles on the build host (NAME.key, keep it secret) "
        "and verifies them on the devices (NAME.pub), or print a key's id.",
    )
    ks = p.add_subparsers(dest="keys_command", metavar="ACTION")
    ks.required = True
    g = ks.add_parser("generate", help="write NAME.key (private, mode 0600) and NAME.pub (public)",
                      description="Write a new Ed25519 key pair: NAME.key (PKCS#8 PEM, mode 0600) and NAME.pub "
                      "(SubjectPublicKeyInfo PEM). Existing files are never overwritten without --force.")
    g.add_argument("-o", "--output", required=True, type=Path, metavar="NAME", help="path prefix of the two files")
    g.add_argument("--force", action="store_true", help="overwrite existing key files")
    options.add_common(g)
    g.set_defaults(func=run_generate)
    i = ks.add_parser("id", help="print the key id of a .key or .pub file")
    i.add_argument("key", type=Path, metavar="KEYFILE")
    options.add_common(i)
    i.set_defaults(func=run_id)


def run_generate(args: argparse.Namespace) -> int:
    pair = generate_keypair(args.output, force=args.force)
    if args.json:
        emit_json({"private_key": str(pair.private_path), "public_key": str(pair.public_path), "key_id": pair.key_id})
        return 0
    print(f"key id {pair.key_id}")
    print(f"  private: {pair.private_path} (mode 0600; sign with: vqz-edge bundle ... --sign-key {pair.private_path})")
    print(f"  public:  {pair.public_path} (copy to devices; verify with --key {pair.public_path})")
    return 0


def run_id(args: argparse.Namespace) -> int:
    text = args.key.read_bytes() if args.key.is_file() else b""
    if b"PRIVATE KEY" in text:
        kid, kind = private_key_id(load_private_key(args.key)), "private"
    else:
        kid, kind = public_key_id(load_public_key(args.key)), "public"
    if args.json:
        emit_json({"key": str(args.key), "kind": kind, "key_id": kid})
    else:
        print(f"{args.key}: {kind} key, id {kid}")
    return 0


def run(args: argparse.Namespace) -> int:
    return run_id(args) if args.keys_command == "id" else run_generate(args)
