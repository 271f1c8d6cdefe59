"""The one validation layer for numeric command-line options, shared by every command.

Each function here is an argparse ``type=``: it turns the option's text into a value or raises
``argparse.ArgumentTypeError`` with a sentence saying what is allowed, so a bad value ends as argparse's
usage error (exit 2, "argument --num-images: must be a positive integer, got '0'") and never reaches the
library as a silent default, an infinity or a traceback. Every ``int``/``float`` option of every command
uses one of these (tests/test_hostile_inputs.py checks that, so a new command is covered by default).

Device-side module: Python 3.8 compatible.
"""

from __future__ import annotations

import argparse
import math
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ..calib.finetune import FinetuneOptions
from ..calib.memory import parse_memory
from ..vocab import BACKENDS, LEGACY_BACKENDS

# Counts never exceed this (a sample count, a batch, iterations): larger is a typo, not a request.
MAX_COUNT = 1 << 31
# Sizes in MiB never exceed this (1 PiB): "1e400" is an infinity, not a size.
MAX_MIB = float(1 << 30)


def _int(text: str, what: str) -> int:
    try:
        value = int(str(text).strip(), 10)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be {what}, got {text!r}") from None
    if abs(value) > MAX_COUNT:
        raise argparse.ArgumentTypeError(f"must be {what} below {MAX_COUNT}, got {text!r}")
    return value


def _float(text: str, what: str) -> float:
    try:
        value = float(str(text).strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be {what}, got {text!r}") from None
    if not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"must be {what} (a finite number), got {text!r}")
    return value


def positive_int(text: str) -> int:
    """A count of at least 1 (samples, batch size, iterations, releases kept, ...)."""
    value = _int(text, "a positive integer")
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be a positive integer (1 or more), got {text!r}")
    return value


def nonnegative_int(text: str) -> int:
    """0 or more (warm-up iterations, seeds, a DLA core, thread counts where 0 = the runtime's choice)."""
    value = _int(text, "a non-negative integer")
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be a non-negative integer (0 or more), got {text!r}")
    return value


def int_at_least(low: int) -> Callable[[str], int]:
    """An integer of at least ``low`` (e.g. 2 crops per source photo: a query needs a positive)."""

    def parse(text: str) -> int:
        value = _int(text, f"an integer >= {low}")
        if value < low:
            raise argparse.ArgumentTypeError(f"must be an integer >= {low}, got {text!r}")
        return value

    parse.__name__ = f"int_at_least_{low}"
    return parse


def finite_float(text: str) -> float:
    """Any finite number (no nan, inf or 1e400)."""
    return _float(text, "a number")


def positive_float(text: str) -> float:
    """A finite number above 0 (a learning rate, a size)."""
    value = _float(text, "a positive number")
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be a positive number, got {text!r}")
    return value


def nonnegative_float(text: str) -> float:
    """A finite number of at least 0 (a tolerance, a reserve in MiB)."""
    value = _float(text, "a non-negative number")
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be a non-negative number, got {text!r}")
    return value


def mib(text: str) -> float:
    """A size in MiB: finite, at least 0, at most 1 PiB."""
    value = nonnegative_float(text)
    if value > MAX_MIB:
        raise argparse.ArgumentTypeError(f"must be a size in MiB up to {MAX_MIB:.0f}, got {text!r}")
    return value


def float_range(low: float, high: float, *, low_open: bool = False, high_open: bool = False) -> Callable[[str], float]:
    """A finite number in [low, high] ('(' / ')' ends with ``low_open`` / ``high_open``)."""
    interval = f"{'(' if low_open else '['}{low:g}, {high:g}{')' if high_open else ']'}"

    def parse(text: str) -> float:
        value = _float(text, f"a number in {interval}")
        below = value <= low if low_open else value < low
        above = value >= high if high_open else value > high
        if below or above:
            raise argparse.ArgumentTypeError(f"must be a number in {interval}, got {text!r}")
        return value

    parse.__name__ = f"float_in_{interval}"
    return parse


# A cosine similarity or an agreement rate that a result must reach: (0, 1].
unit_fraction = float_range(0.0, 1.0, low_open=True)


def dims(text: str, what: str = "shape", example: str = "1x3x224x224") -> tuple[int, ...]:
    """'1x3x224x224' (or '1,3,224,224') -> (1, 3, 224, 224); every dimension a positive integer."""
    parts = str(text).lower().replace(",", "x").split("x")
    try:
        values = tuple(int(p.strip(), 10) for p in parts)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{what} {text!r} is not of the form {example}") from None
    if not values or any(d <= 0 for d in values):
        raise argparse.ArgumentTypeError(f"{what} {text!r} must have positive dimensions, e.g. {example}")
    if any(d > MAX_COUNT for d in values):
        raise argparse.ArgumentTypeError(f"{what} {text!r} has a dimension above {MAX_COUNT}")
    return values


def shape(text: str) -> tuple[int, ...]:
    """An input shape NxCxHxW (any rank), every dimension positive."""
    return dims(text, "input shape", "1x3x224x224")


def image_size(text: str) -> tuple[int, int]:
    """HxW, both positive."""
    values = dims(text, "image size", "672x672")
    if len(values) != 2:
        raise argparse.ArgumentTypeError(f"image size {text!r} is not of the form HxW, e.g. 672x672")
    return values[0], values[1]


def deprecated(old: str, new: str) -> None:
    """Say on stderr that ``old`` is an old spelling of ``new`` (kept for one release)."""
    print(f"vqz-edge: warning: {old} is deprecated, use {new} (the old spelling goes in the next release)",
          file=sys.stderr)


def backend(text: str) -> str:
    """A backend name (:data:`vqz_edge.vocab.BACKENDS`); the old ``ort``/``trt`` still work, with a warning."""
    if text in LEGACY_BACKENDS:
        deprecated(f"--backend {text}", f"--backend {LEGACY_BACKENDS[text]}")
        return LEGACY_BACKENDS[text]
    return text


class DeprecatedSpelling(argparse.Action):
    """An option's old spelling, kept for one release: stores into the new option's ``dest`` and says so.

    ``p.add_argument("--target", dest="goal", action=DeprecatedSpelling, new="--goal", type=..., help=SUPPRESS)``
    """

    def __init__(self, option_strings: list[str], dest: str, new: str = "", **kwargs: Any) -> None:
        super().__init__(option_strings, dest, **kwargs)
        self.new = new

    def __call__(self, parser: argparse.ArgumentParser, namespace: argparse.Namespace, values: Any,
                 option_string: str | None = None) -> None:
        deprecated(option_string or self.option_strings[0], self.new)
        setattr(namespace, self.dest, values)


# ------------------------------------------------------------------------------------------ option groups
# The option groups several commands share, defined once here; their ``choices`` come from vqz_edge/vocab.py.


def add_targets_file(p: argparse.ArgumentParser | argparse._ArgumentGroup) -> None:
    p.add_argument(
        "--targets-file", type=Path, action="append", default=[], metavar="TOML",
        help="extra [[target]] definitions (repeatable; also read from $VQZ_EDGE_TARGETS)",
    )


def add_common(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("output")
    g.add_argument("--json", action="store_true", help="print one JSON object on stdout instead of text")
    g.add_argument("-v", "--verbose", action="count", default=0, help="more log output on stderr (-vv for debug)")
    g.add_argument("-q", "--quiet", action="store_true", help="only errors on stderr, no progress bars")


def add_finetune_args(p: argparse.ArgumentParser, title: str, when: str) -> argparse._ArgumentGroup:
    """The --finetune options shared by calibrate and sensitivity (``when``: what is fine-tuned); the group."""
    f = p.add_argument_group(title)
    f.add_argument("--finetune", action="store_true",
                   help=f"{when}, train the INT8 weights and activation ranges to reproduce the FP32 outputs on fresh "
                   "calibration crops (distillation, no labels; torch on the CPU, ~3.5 min per 4096 MobileNetV2 "
                   "samples on 2 cores); also writes model.finetuned.onnx and calibration.finetuned.cache")
    f.add_argument("--finetune-samples", type=positive_int, default=4096, help="calibration samples, one pass (default 4096)")
    f.add_argument("--finetune-lr", type=positive_float, default=1e-5, help="Adam step for weights (default 1e-5)")
    return f


def finetune_options(args: argparse.Namespace) -> Any:
    """FinetuneOptions from add_finetune_args' options, or None without --finetune (ValueError if invalid)."""
    if not args.finetune:
        return None
    return FinetuneOptions(samples=args.finetune_samples, lr=args.finetune_lr, max_memory=memory_budget(args))


def add_memory_arg(g: argparse._ArgumentGroup) -> None:
    """--max-memory, shared by the commands that calibrate, sweep or fine-tune."""
    g.add_argument("--max-memory", metavar="SIZE",
                   help="memory budget, e.g. 8G, 1500M (default: half of this host's RAM): calibration picks its "
                   "batch per run and, when one image of every tensor does not fit, several passes over the data; "
                   "sensitivity and fine-tuning shrink their batches to it")


def memory_budget(args: argparse.Namespace) -> int | None:
    """--max-memory in bytes, or None for the default (InputError for a bad size)."""
    text = getattr(args, "max_memory", None)
    return None if text is None else parse_memory(text)


def add_device_options(p: argparse.ArgumentParser) -> None:
    d = p.add_argument_group("device detection (defaults read this host)")
    d.add_argument("--backend", type=backend, choices=BACKENDS, default="auto",
                   help="tensorrt: build the engine here; onnxruntime: serve the ONNX / Q/DQ model on the CPU "
                   "(hosts without TensorRT); auto: tensorrt when importable (default)")
    d.add_argument("--device-target", metavar="NAME",
                   help="this device's target (default: identified from /proc/device-tree/model and RAM)")
    d.add_argument("--nv-tegra-release", type=Path, default=Path("/etc/nv_tegra_release"), metavar="PATH",
                   help="L4T release file (default /etc/nv_tegra_release; e.g. the host's file mounted in a container)")
    d.add_argument("--device-tree", type=Path, default=Path("/proc/device-tree"), metavar="DIR",
                   help="device tree with 'model' and 'compatible' (default /proc/device-tree)")
    d.add_argument("--meminfo", type=Path, default=Path("/proc/meminfo"), metavar="PATH",
                   help="meminfo file when jtop is unavailable (default /proc/meminfo)")
    d.add_argument("--no-jtop", action="store_true", help="read RAM from meminfo even when jetson-stats is installed")
    add_targets_file(d)


def add_runtime_options(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("runtime")
    g.add_argument("--backend", type=backend, choices=BACKENDS, default="auto",
                   help="auto: TensorRT for engines, ONNX Runtime (CPU) for .onnx (default)")
    g.add_argument("--target", metavar="NAME",
                   help="check the memory budget against this target before loading (default: the engine's target; "
                   "for .onnx on ONNX Runtime: this host's free memory)")
    add_targets_file(g)
    g.add_argument("--no-memory-check", action="store_true", help="skip the budget check before loading")
    g.add_argument("--threads", type=nonnegative_int, default=0, help="ONNX Runtime intra-op threads (default: ONNX Runtime's choice)")


__all__ = [
    "MAX_COUNT",
    "DeprecatedSpelling",
    "add_common",
    "add_device_options",
    "add_finetune_args",
    "add_memory_arg",
    "add_runtime_options",
    "add_targets_file",
    "backend",
    "deprecated",
    "dims",
    "finetune_options",
    "finite_float",
    "float_range",
    "image_size",
    "int_at_least",
    "memory_budget",
    "mib",
    "nonnegative_float",
    "nonnegative_int",
    "positive_float",
    "positive_int",
    "shape",
    "unit_fraction",
]
