"""Logging setup. Library modules use ``get_logger(__name__)``; only the CLI calls ``configure``."""

from __future__ import annotations

import logging
import sys

_ROOT = "vqz_edge"


def get_logger(name: str) -> logging.Logger:
    return logging.getLogger(name if name.startswith(_ROOT) else f"{_ROOT}.{name}")


def configure(verbosity: int = 0, *, quiet: bool = False) -> None:
    """Send vqz_edge logs to stderr: WARNING by default, INFO with -v, DEBUG with -vv."""
    level = logging.ERROR if quiet else (logging.WARNING, logging.INFO, logging.DEBUG)[min(verbosity, 2)]
    root = logging.getLogger(_ROOT)
    root.setLevel(level)
    ours = [h for h in root.handlers if getattr(h, "_vqz", False)]
    if ours:  # configured before (main() called again in one process): write to today's stderr, not a closed one
        for h in ours:
            if isinstance(h, logging.StreamHandler) and h.stream is not sys.stderr:
                h.stream = sys.stderr  # not setStream(): it flushes the old stream, which may be closed
    else:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter("[%(levelname)s] %(message)s"))
        handler._vqz = True  # type: ignore[attr-defined]
        root.addHandler(handler)
    root.propagate = False
