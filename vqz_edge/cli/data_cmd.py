"""vqz-edge data: turn photos into preprocessed arrays (calibration / evaluation split by source photo)."""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

from ..data import Preprocessing, demo_sources, folder_sources, make_crops, split_by_source
from ..errors import InputError
from ..fsutil import canonical_json, check_output_path, write_set
from . import COMMANDS, emit_json, options


def register(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    p = sub.add_parser(
        "data",
        help=COMMANDS["data"].summary,
        description="Crop and preprocess photos into a float32 .npy array (N,C,H,W). Calibration and evaluation "
        "sets are split by source photo, never by crop. --images demo uses the real photos in scikit-image.",
    )
    p.add_argument("--images", default="demo", help="folder of images, or 'demo' (default)")
    p.add_argument("--split", choices=["calibration", "evaluation"], required=True)
    p.add_argument("--count", type=options.positive_int, required=True, help="number of crops")
    p.add_argument("-o", "--output", type=Path, required=True, help="output .npy (a .json sidecar names the sources)")
    g = p.add_argument_group("preprocessing")
    g.add_argument("--size", type=options.positive_int, default=224, help="crop size (default 224)")
    g.add_argument("--resize", type=options.positive_int, default=None, help="short side before the crop (default size*256/224)")
    g.add_argument("--seed", type=options.nonnegative_int, default=0)
    options.add_common(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    check_output_path(args.output)
    resize = args.resize or round(args.size * 256 / 224)
    pre = Preprocessing(resize=resize, crop=args.size)
    if args.images == "demo":
        sources = demo_sources(args.split)
    else:
        calib, evaluation = split_by_source(folder_sources(Path(args.images)))
        sources = calib if args.split == "calibration" else evaluation
    arr = make_crops(sources, args.count, pre, seed=args.seed)
    info = {
        "output": str(args.output),
        "shape": list(arr.shape),
        "split": args.split,
        "sources": [s.name for s in sources],
        "preprocessing": pre.to_dict(),
        "seed": args.seed,
    }
    sidecar = args.output.with_suffix(".json")
    if sidecar == args.output:
        raise InputError(f"-o {args.output}: give the array a .npy name (its .json sidecar goes beside it)")

    def save(tmp: Path) -> None:
        with open(tmp, "wb") as fh:
            np.save(fh, arr)

    # the array and its sidecar as one set: a failure leaves neither half of a new pair beside an old one
    write_set(args.output.parent, {args.output.name: save, sidecar.name: canonical_json(info).encode()},
              last=sidecar.name, tag="data")
    if args.json:
        emit_json(info)
    else:
        print(f"wrote {args.output}: {arr.shape[0]} crops {list(arr.shape[1:])} from {len(sources)} source photos "
              f"({args.split}): {', '.join(info['sources'])}")
    return 0
