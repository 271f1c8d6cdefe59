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
    if not any(getattr(h, "_vqz", False) for h in root.handlers):
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter("[%(levelname)s] %(message)s"))
        handler._vqz = True  # type: ignore[attr-defined]
        root.addHandler(handler)
    root.propagate = False
