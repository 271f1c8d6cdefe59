"""Memory budget model for Jetson's shared CPU/GPU RAM.

Public API (other stages call these; live free memory is a device fact: :mod:`vqz_edge.device`)::

    from vqz_edge.memory import MemoryItem, check_budget
    report = check_budget(get_target("orin-nano-8gb"), [MemoryItem("weights", 1 << 30, "fp16", "weights")])
    report.fits, report.headroom_bytes, report.rows, report.to_dict(), report.table()

Estimating items from artifacts lives in :mod:`vqz_edge.memory.estimate` (engine directories, ONNX
files, specs); it is imported on demand because it needs onnx.

``BudgetError`` (exit code 7) lives in ``vqz_edge.errors`` and is re-exported here.
"""

from ..errors import BudgetError
from .budget import (
    DEFAULT_MARGIN_FRACTION,
    GIB,
    MIB,
    BudgetReport,
    BudgetRow,
    MemoryItem,
    check_budget,
    require_fit,
    runtime_overhead,
)

__all__ = [
    "DEFAULT_MARGIN_FRACTION",
    "GIB",
    "MIB",
    "BudgetError",
    "BudgetReport",
    "BudgetRow",
    "MemoryItem",
    "check_budget",
    "require_fit",
    "runtime_overhead",
]
