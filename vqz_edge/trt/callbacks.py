"""What TensorRT and Polygraphy call back into: Polygraphy's log (which carries TensorRT's own log) routed
into vqz-edge's logging with the errors kept for the message of a failed step, and the build's progress
monitor (TensorRT >= 10). Python subclasses of TensorRT interfaces are called from C++: they never raise.
"""

from __future__ import annotations

import contextlib
import logging
import threading
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

from ..log import get_logger
from ..progress import ProgressBar, ProgressFactory, make_bar

if TYPE_CHECKING:
    import tensorrt as trt

_log = get_logger(__name__)
_pg_log = get_logger("vqz_edge.trt.polygraphy")
_setup_lock = threading.Lock()
_configured = False


class _Forward(logging.Handler):
    """Polygraphy's python logger -> vqz_edge.trt.polygraphy (so --json stdout stays clean). Polygraphy's own
    levels between the standard ones (START 22, FINISH 28, verbose ones below 20) map to the level below."""

    def emit(self, record: logging.LogRecord) -> None:
        level = max(lv for lv in (logging.DEBUG, logging.INFO, logging.WARNING, logging.ERROR)
                    if lv <= max(record.levelno, logging.DEBUG))
        if _pg_log.isEnabledFor(level):
            _pg_log.log(level, "%s", record.getMessage())


class _Collect(logging.Handler):
    def __init__(self) -> None:
        super().__init__(level=logging.ERROR)
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(record.getMessage().strip())


def polygraphy() -> Any:
    """Polygraphy's TensorRT backend, with its logger sending to Python logging (once per process)."""
    global _configured
    from polygraphy.backend import trt as pg_trt
    from polygraphy.logger import G_LOGGER

    with _setup_lock:
        if not _configured:
            G_LOGGER.use_python_logging_system = True
            G_LOGGER.colors = False  # plain text in our log (and no "colored is not installed" warning)
            G_LOGGER.letter = False
            pg = logging.getLogger("Polygraphy")
            pg.propagate = False
            pg.setLevel(logging.DEBUG)
            pg.addHandler(_Forward())
            _configured = True
    return pg_trt


@contextlib.contextmanager
def collect_errors() -> Iterator[list[str]]:
    """The ERROR messages Polygraphy and TensorRT log while the block runs (for the exception's message)."""
    handler = _Collect()
    pg = logging.getLogger("Polygraphy")
    pg.addHandler(handler)
    try:
        yield handler.messages
    finally:
        pg.removeHandler(handler)


def make_progress_monitor(progress: ProgressFactory | None) -> trt.IProgressMonitor:
    """TensorRT >= 10: one progress bar per top-level optimiser phase; nested phases are logged."""
    import tensorrt as trt

    lock = threading.Lock()  # TensorRT may call from several threads
    bars: dict[str, ProgressBar] = {}

    # type-ignore "misc": where mypy cannot read the tensorrt stubs, trt.* is Any (see docs/build.md); with
    # readable stubs the ignore is unused and the class is checked against them.
    class Monitor(trt.IProgressMonitor):  # type: ignore[misc,unused-ignore]
        def __init__(self) -> None:
            trt.IProgressMonitor.__init__(self)

        def phase_start(self, phase_name: str, parent_phase: str | None, num_steps: int) -> None:
            with lock:
                if parent_phase is None:
                    _log.info("TensorRT phase: %s (%d steps)", phase_name, num_steps)
                    bars[phase_name] = make_bar(progress, f"{phase_name} (steps)", num_steps)
                else:
                    _log.debug("TensorRT phase: %s / %s (%d steps)", parent_phase, phase_name, num_steps)

        def step_complete(self, phase_name: str, step: int) -> bool:
            with lock:
                bar = bars.get(phase_name)
                if bar is not None:
                    bar.update(1)
            return True  # False would cancel the build

        def phase_finish(self, phase_name: str) -> None:
            with lock:
                bar = bars.pop(phase_name, None)
                if bar is not None:
                    bar.close()

    return Monitor()
