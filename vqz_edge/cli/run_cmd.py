"""vqz-edge run ENGINE_OR_ONNX --input IMAGE... [--top-k 5]"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from ..data import Preprocessing, load_array_file, load_image, preprocess
from ..demo import imagenet_labels
from ..errors import DataError, InputError, VerificationError
from ..runtime import open_runner
from . import COMMANDS, emit_json, options


def register(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    p = sub.add_parser(
        "run",
        help=COMMANDS["run"].summary,
        description="Preprocess images (resize, center crop, ImageNet normalisation, sized from the model's input) "
        "and run them through a TensorRT engine (on the device) or an .onnx model (ONNX Runtime, any host). "
        "Classifiers with 1000 outputs print ImageNet labels; other models print output shapes and statistics.",
    )
    p.add_argument("model", metavar="ENGINE_OR_ONNX", type=Path, help="engine directory, .engine file, or .onnx")
    p.add_argument("--input", "-i", nargs="+", required=True, type=Path, metavar="IMAGE",
                   help="image files (or .npy arrays already preprocessed to the model's input shape)")
    p.add_argument("--top-k", type=options.positive_int, default=5, help="labels to print per image for classifiers (default 5)")
    options.add_runtime_options(p)
    options.add_common(p)
    p.set_defaults(func=run)


def _layout(shape: tuple[int, ...]) -> str:
    if len(shape) == 4 and shape[1] not in (1, 3) and shape[3] in (1, 3):
        return "NHWC"
    return "NCHW"


def load_inputs(paths: list[Path], shape: tuple[int, ...]) -> tuple[Any, list[str]]:
    """Images -> float32 batch for an input of ``shape`` (batch dim ignored); .npy files are stacked as is.
    Returns the batch and a name per sample ('photo.jpg', or 'x.npy[3]' for the rows of an array)."""
    import numpy as np

    if any(p.suffix == ".npy" for p in paths):
        arrays = [np.asarray(load_array_file(p), dtype=np.float32) for p in paths]
        arrays = [a if a.ndim == len(shape) else a[None] for a in arrays]
        names = [f"{p}[{i}]" if len(a) > 1 else str(p) for p, a in zip(paths, arrays) for i in range(len(a))]
        batch = np.concatenate(arrays)
        bad = ~np.isfinite(batch)
        if bad.any():
            row = int(np.argwhere(bad)[0][0])
            raise DataError(f"input {names[row]} holds NaN/Inf values; inputs must be finite",
                            hint="fix the preprocessing that wrote the array")
        return batch, names
    concrete = tuple(d if d > 0 else 1 for d in shape)
    if len(concrete) != 4 or any(d <= 0 for d in shape[1:]):
        raise DataError(f"cannot preprocess images for input shape {list(shape)}: need a 4-D image input with "
                        "concrete C, H, W", hint="pass preprocessed .npy arrays instead")
    layout = _layout(concrete)
    pre = Preprocessing.for_input_shape(concrete, layout=layout)
    return np.stack([preprocess(load_image(p, pre.channels), pre) for p in paths]), [str(p) for p in paths]


def classify(logits: Any, k: int, labels: list[str]) -> list[list[dict[str, Any]]]:
    import numpy as np

    x = np.asarray(logits, dtype=np.float64)
    rows_sum = x.sum(axis=1)
    probs = x if (np.all(x >= 0) and np.allclose(rows_sum, 1.0, atol=1e-3)) else None
    if probs is None:
        e = np.exp(x - x.max(axis=1, keepdims=True))
        probs = e / e.sum(axis=1, keepdims=True)
    out = []
    for row in probs:
        idx = np.argsort(-row)[:k]
        out.append([{"index": int(i), "label": labels[i] if i < len(labels) else str(i), "prob": float(row[i])} for i in idx])
    return out


def run(args: argparse.Namespace) -> int:
    import numpy as np

    if args.top_k <= 0:
        raise InputError(f"--top-k must be positive, got {args.top_k}")
    runner = open_runner(
        args.model, target=args.target, backend=args.backend, max_batch=len(args.input),
        check_memory=not args.no_memory_check, targets_files=args.targets_file, threads=args.threads,
    )
    with runner:
        if len(runner.inputs) != 1:
            raise InputError(f"{args.model} has {len(runner.inputs)} inputs; 'vqz-edge run' feeds single-input models",
                             hint="use vqz_edge.runtime.open_runner(...).run({...}) from Python")
        info = runner.inputs[0]
        batch, names = load_inputs(args.input, info.shape)
        step = runner.max_batch or len(batch)
        outs: dict[str, list[Any]] = {}
        for s in range(0, len(batch), step):
            for name, arr in runner.run({info.name: batch[s:s + step]}).items():
                outs.setdefault(name, []).append(arr)
        results = {k: np.concatenate(v) for k, v in outs.items()}
        desc = runner.describe()
    for name, arr in results.items():
        bad = ~np.isfinite(arr)
        if bad.any():
            row = int(np.argwhere(bad)[0][0]) if arr.ndim else 0
            raise VerificationError(
                f"{args.model}: output {name!r} holds NaN/Inf for input {names[min(row, len(names) - 1)]}; "
                "the model's result is not a number",
                hint="the model (or its engine) is broken: check it with vqz-edge evaluate against the FP32 model",
            )
    first = next(iter(results.values()))
    doc: dict[str, Any] = {"model": str(args.model), "backend": desc["backend"], "inputs": [str(p) for p in args.input],
                           "outputs": {k: {"shape": list(v.shape), "dtype": str(v.dtype), "min": float(v.min()),
                                           "max": float(v.max()), "mean": float(v.mean()), "std": float(v.std())}
                                       for k, v in results.items()}}
    if first.ndim == 2 and first.shape[1] == 1000:
        top = classify(first, args.top_k, imagenet_labels())
        doc["top_k"] = [{"input": n, "predictions": t} for n, t in zip(names, top)]
    if args.json:
        emit_json(doc)
        return 0
    print(f"{args.model} ({desc['backend']}), {len(args.input)} input(s), {len(names)} sample(s)")
    if "top_k" in doc:
        for entry in doc["top_k"]:
            print(f"  {entry['input']}")
            for p in entry["predictions"]:
                print(f"    {p['prob']:6.1%}  {p['label']} ({p['index']})")
    else:
        for name, st in doc["outputs"].items():
            print(f"  {name}: shape {st['shape']} {st['dtype']}  min {st['min']:.4g}  max {st['max']:.4g}  "
                  f"mean {st['mean']:.4g}  std {st['std']:.4g}")
    return 0
