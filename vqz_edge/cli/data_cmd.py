"""vqz-edge data: turn photos into preprocessed arrays (calibration / evaluation split by source photo)."""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

from ..data import demo_sources, folder_sources, make_crops, split_by_source
from ..data.source import resolve_image_preprocessing
from ..errors import InputError
from ..fsutil import canonical_json, check_output_path, write_set
from ..onnx_io import TensorInfo
from ..spec import load_spec
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
    p.add_argument("--spec", type=Path, help="build spec: its [preprocessing] (and [[inputs]] for the size)")
    p.add_argument("--seed", type=options.nonnegative_int, default=0, help="seed of the random crops (default 0)")
    options.add_preprocessing_args(p, record_check=False)
    options.add_common(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    check_output_path(args.output)
    spec = load_spec(args.spec) if args.spec else None
    declared, notes = options.declared_preprocessing(args, spec.preprocessing if spec else None)
    # the size comes from the declaration, else the spec's first input, else 224x224
    shape: tuple[int | str, ...] = tuple(spec.inputs[0].shape) if spec and spec.inputs else ("N", 3, "H", "W")
    if (declared is None or declared.size is None) and not (spec and spec.inputs):
        shape = ("N", 3, 224, 224) if declared is None or declared.layout != "NHWC" else ("N", 224, 224, 3)
    if args.images == "demo":
        sources = demo_sources(args.split)
    else:
        calib, evaluation = split_by_source(folder_sources(Path(args.images)))
        sources = calib if args.split == "calibration" else evaluation
    pre, origin = resolve_image_preprocessing(TensorInfo("input", shape, "float32"), declared,
                                              demo=args.images == "demo")
    arr = make_crops(sources, args.count, pre, seed=args.seed)
    info = {
        "output": str(args.output),
        "shape": list(arr.shape),
        "split": args.split,
        "sources": [s.name for s in sources],
        "preprocessing": {**pre.to_dict(), "origin": origin},
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
        emit_json({**info, "preprocessing_notes": notes})
    else:
        print(f"wrote {args.output}: {arr.shape[0]} crops {list(arr.shape[1:])} from {len(sources)} source photos "
              f"({args.split}): {', '.join(info['sources'])}")
        print(f"  preprocessing {pre.describe()} ({origin}); recorded in {sidecar}")
        for note in notes:
            print(f"  note: {note}")
    return 0
