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
from collections.abc import Callable

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


__all__ = [
    "MAX_COUNT",
    "dims",
    "finite_float",
    "float_range",
    "image_size",
    "int_at_least",
    "mib",
    "nonnegative_float",
    "nonnegative_int",
    "positive_float",
    "positive_int",
    "shape",
    "unit_fraction",
]
