"""Progress reporting without printing from the library.

Long-running library functions take ``progress: ProgressFactory | None``. The CLI passes a factory
that draws a tqdm bar on stderr; tests pass nothing (progress is then logged at DEBUG).
"""

from __future__ import annotations

import typing
from typing import Protocol

from .log import get_logger

_log = get_logger(__name__)


class ProgressBar(Protocol):
    def update(self, n: int = 1) -> object: ...
    def close(self) -> object: ...


ProgressFactory = typing.Callable[[str, int], ProgressBar]  # typing: Python 3.8


class _LogProgress:
    def __init__(self, desc: str, total: int) -> None:
        self.desc, self.total, self.done = desc, total, 0

    def update(self, n: int = 1) -> None:
        self.done += n
        _log.debug("%s: %d/%d", self.desc, self.done, self.total)

    def close(self) -> None:
        pass


def make_bar(factory: ProgressFactory | None, desc: str, total: int) -> ProgressBar:
    return factory(desc, total) if factory is not None else _LogProgress(desc, total)


def tqdm_factory(desc: str, total: int) -> ProgressBar:
    """The CLI's progress bar: tqdm on stderr (prints ETA). ``desc`` may name what it counts in parentheses,
    "fine-tuning (samples)" -> a bar "fine-tuning" counting samples/s; otherwise it counts "it"."""
    from tqdm import tqdm

    name, unit = desc, "it"
    if desc.endswith(")") and " (" in desc:
        name, _, unit = desc[:-1].rpartition(" (")
    bar: ProgressBar = tqdm(total=total, desc=name, unit=unit, leave=False, dynamic_ncols=True)
    return bar
