"""The memory budget: does a model (or a set of models) fit in a Jetson module's shared RAM?

On Jetson the CPU and the GPU share one LPDDR5 pool, so everything below comes out of the same RAM::

    module RAM (catalog)                       or, with --live, what the device has free right now
    - OS + services reserve                    per-module default (targets.toml), configurable
    - CUDA context                             256 MiB with CUDA >= 12.2, 640 MiB with CUDA 11.4 (see below)
    - TensorRT runtime (+ cuDNN/cuBLAS)        192 MiB for TensorRT 10, 384 MiB for TensorRT 8.x
    - the caller's items                       engine/weights, activations, I/O buffers, other resident models...
    - safety margin                            5% of the capacity by default
    = headroom                                 >= 0: fits

Runtime overhead numbers (engineering estimates, not datasheet values; no device was available while
they were chosen -- measure yours with ``vqz-edge bench`` on the device and override them):

* CUDA context. PyTorch measured a CUDA context at 667 MB with eager module loading and 287 MB with
  ``CUDA_MODULE_LOADING=LAZY`` (github.com/pytorch/pytorch pull 86509). Lazy loading needs CUDA >= 11.7 and
  is the default on Linux since CUDA 12.2 (NVIDIA developer forum, "How to enable the CUDA's lazy module
  loading"); JetPack 6 ships CUDA 12.2/12.6, JetPack 5 ships 11.4 (eager). A TensorRT-only process loads
  fewer kernels than PyTorch, so 256 / 640 MiB is rounded from those figures.
* TensorRT runtime. TensorRT 8.x engines may use cuDNN/cuBLAS(Lt) tactics, whose libraries then load
  their kernels into the same memory; TensorRT 10 builds without those tactic sources by default. 384 /
  192 MiB is this project's allowance for libnvinfer's own kernels, the execution context and, for 8.x,
  the cuDNN/cuBLAS kernels.
* Safety margin: fragmentation, page cache the kernel will not give back, allocator slack. 5% of the
  capacity (205 MiB on a 4 GB module, 3.2 GiB on a 64 GB one).

``check_budget`` is generic: the CNN path passes engine/activation/I/O items, the VLM planner passes
weights per component, KV cache and vision activations. Rows, verdict and advice come back in a
``BudgetReport`` (``.table()`` for people, ``.to_dict()`` for JSON).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from ..errors import BudgetError
from ..targets import Target, jetpack_table, list_targets

MIB = 1 << 20
GIB = 1 << 30
DEFAULT_MARGIN_FRACTION = 0.05
TIGHT_FRACTION = 0.10
CUDA_CONTEXT_LAZY_BYTES = 256 * MIB
CUDA_CONTEXT_EAGER_BYTES = 640 * MIB
TRT_RUNTIME_BYTES = {8: 384 * MIB, 10: 192 * MIB}
ITEM_KINDS = ("engine", "weights", "activations", "io", "kv_cache", "resident", "other")


@dataclass(frozen=True)
class MemoryItem:
    """One thing that must be resident: ``bytes`` of it. ``kind`` feeds the advice (see ITEM_KINDS)."""

    name: str
    bytes: int
    note: str = ""
    kind: str = "other"

    def __post_init__(self) -> None:
        if not self.name:
            raise ValueError("memory item needs a name")
        if self.bytes < 0:
            raise ValueError(f"memory item {self.name!r} has negative size {self.bytes}")
        if self.kind not in ITEM_KINDS:
            raise ValueError(f"memory item {self.name!r}: kind {self.kind!r} not in {ITEM_KINDS}")

    @property
    def mib(self) -> float:
        return self.bytes / MIB


@dataclass(frozen=True)
class BudgetRow:
    """One line of the breakdown. ``kind``: capacity, reserve, overhead, item, margin."""

    name: str
    bytes: int
    kind: str
    note: str = ""

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "bytes": self.bytes, "mib": round(self.bytes / MIB, 2), "kind": self.kind,
                "note": self.note}


@dataclass(frozen=True)
class BudgetReport:
    target: Target
    capacity_bytes: int
    capacity_label: str
    rows: tuple[BudgetRow, ...]
    margin_fraction: float
    live: bool
    trt_version: str
    fits_on: tuple[str, ...] = ()
    advice: tuple[str, ...] = field(default=())
    subject: str = ""

    @property
    def required_bytes(self) -> int:
        return sum(r.bytes for r in self.rows if r.kind != "capacity")

    @property
    def headroom_bytes(self) -> int:
        return self.capacity_bytes - self.required_bytes

    @property
    def fits(self) -> bool:
        return self.headroom_bytes >= 0

    @property
    def tight(self) -> bool:
        return self.fits and self.headroom_bytes < TIGHT_FRACTION * self.capacity_bytes

    def verdict(self) -> str:
        h = self.headroom_bytes
        if not self.fits:
            return f"DOES NOT FIT on {self.target.name}: short by {_human(-h)}"
        pct = 100.0 * h / self.capacity_bytes
        word = "FITS (tight)" if self.tight else "FITS"
        return f"{word} on {self.target.name} with {_human(h)} headroom ({pct:.0f}% of {self.capacity_label})"

    def to_dict(self) -> dict[str, Any]:
        return {
            "target": self.target.name,
            "display_name": self.target.display_name,
            "subject": self.subject,
            "fits": self.fits,
            "tight": self.tight,
            "verdict": self.verdict(),
            "capacity_bytes": self.capacity_bytes,
            "capacity": self.capacity_label,
            "required_bytes": self.required_bytes,
            "headroom_bytes": self.headroom_bytes,
            "headroom_mib": round(self.headroom_bytes / MIB, 2),
            "margin_fraction": self.margin_fraction,
            "live": self.live,
            "tensorrt_version": self.trt_version,
            "rows": [r.to_dict() for r in self.rows],
            "fits_on": list(self.fits_on),
            "advice": list(self.advice),
        }

    def table(self) -> str:
        t = self.target
        head = f"memory budget: {t.display_name} ({t.name})"
        if t.default_jetpack != "0":
            head += f", JetPack {t.default_jetpack}"
        if self.trt_version != "0":
            head += f", TensorRT {self.trt_version}"
        if self.subject:
            head += f"\n  for {self.subject}"
        width = max(34, *(len(r.name) + 4 for r in self.rows))
        lines = [head, f"  {'':{width}} {'MiB':>10}"]
        for r in self.rows:
            sign = "" if r.kind == "capacity" else "- "
            label = f"{sign}{r.name}"
            note = f"  {r.note}" if r.note else ""
            lines.append(f"  {label:{width}} {r.bytes / MIB:>10.1f}{note}")
        lines.append(f"  {'= headroom':{width}} {self.headroom_bytes / MIB:>10.1f}")
        lines.append(f"verdict: {self.verdict()}")
        lines.extend(f"  -> {a}" for a in self.advice)
        return "\n".join(lines)


def _human(n: int) -> str:
    return f"{n / GIB:.2f} GiB" if abs(n) >= GIB else f"{n / MIB:.1f} MiB"


def _cuda_for(target: Target, trt_version: str) -> str:
    if trt_version == target.default_trt_version and target.default_cuda:
        return target.default_cuda
    for jp in reversed(jetpack_table()):
        if jp.tensorrt.split(".")[:2] == trt_version.split(".")[:2]:
            return jp.cuda
    return "12.6" if int(trt_version.split(".")[0]) >= 10 else "11.4"


def runtime_overhead(target: Target, trt_version: str | None = None) -> list[MemoryItem]:
    """CUDA context + TensorRT runtime for ``target`` running TensorRT ``trt_version`` (default: its JetPack's)."""
    trt = trt_version or target.default_trt_version
    cuda = _cuda_for(target, trt)
    major, minor = (int(x) for x in cuda.split(".")[:2])
    lazy = (major, minor) >= (12, 2)
    ctx = CUDA_CONTEXT_LAZY_BYTES if lazy else CUDA_CONTEXT_EAGER_BYTES
    trt_major = int(trt.split(".")[0])
    trt_bytes = TRT_RUNTIME_BYTES[10] if trt_major >= 10 else TRT_RUNTIME_BYTES[8]
    return [
        MemoryItem("CUDA context", ctx, f"CUDA {cuda}, {'lazy' if lazy else 'eager'} module loading", "other"),
        MemoryItem(
            "TensorRT runtime", trt_bytes,
            f"TensorRT {trt}" + ("" if trt_major >= 10 else " incl. cuDNN/cuBLAS tactic libraries"), "other",
        ),
    ]


def _advice(report: BudgetReport, items: Sequence[MemoryItem]) -> list[str]:
    out: list[str] = []
    cap = report.capacity_label
    if report.fits:
        if report.tight:
            out.append(
                f"headroom is under {TIGHT_FRACTION:.0%} of {cap}: measure on the device "
                "(vqz-edge check-memory --live, vqz-edge bench) before shipping"
            )
        return out
    by_kind: dict[str, int] = {}
    for it in items:
        by_kind[it.kind] = by_kind.get(it.kind, 0) + it.bytes
    scaled = by_kind.get("activations", 0) + by_kind.get("io", 0) + by_kind.get("kv_cache", 0)
    if scaled:
        out.append(
            f"lower the maximum batch / profile max shape (or context length): activations, I/O and KV cache "
            f"({scaled / MIB:.1f} MiB) scale with it"
        )
    short = -report.headroom_bytes
    precise = sum(it.bytes for it in items
                  if it.kind in ("engine", "weights") and ("fp16" in it.note.lower() or "fp32" in it.note.lower()))
    if precise and precise / 2 >= 0.1 * short:  # only when INT8 would recover a useful part of the shortfall
        out.append(f"quantize: INT8 weights take half the memory of FP16 (saves ~{precise / 2 / MIB:.0f} MiB here; "
                   "vqz-edge calibrate, plan, build)")
    if by_kind.get("resident"):
        out.append(f"unload or share the other resident models ({by_kind['resident'] / MIB:.1f} MiB)")
    if not report.live:
        out.append(
            "the OS reserve assumes a headless image; if yours is leaner, measure it with --live or set "
            "--os-reserve-mib"
        )
    if report.fits_on:
        more = f" (+{len(report.fits_on) - 3} larger)" if len(report.fits_on) > 3 else ""
        out.append("fits on: " + ", ".join(report.fits_on[:3]) + more)
    elif not report.live:
        out.append("does not fit on any catalog target: shrink the model (smaller batch, INT8, smaller model)")
    return out


def _rows(
    target: Target, items: Sequence[MemoryItem], *, capacity: int, capacity_label: str, capacity_note: str,
    reserve: int | None, overhead: Sequence[MemoryItem], margin_fraction: float,
) -> list[BudgetRow]:
    rows = [BudgetRow(capacity_label, capacity, "capacity", capacity_note)]
    if reserve is not None:
        src = "override" if reserve != target.os_reserve_bytes else f"default for {target.name}"
        rows.append(BudgetRow("OS + services reserve", reserve, "reserve", src))
    rows += [BudgetRow(o.name, o.bytes, "overhead", o.note) for o in overhead]
    rows += [BudgetRow(it.name, it.bytes, "item", it.note) for it in items]
    rows.append(BudgetRow(f"safety margin ({margin_fraction:.0%})", int(capacity * margin_fraction), "margin",
                          f"of {capacity_label}"))
    return rows


def check_budget(
    target: Target,
    items: Sequence[MemoryItem],
    *,
    os_reserve_bytes: int | None = None,
    margin_fraction: float = DEFAULT_MARGIN_FRACTION,
    live_free_bytes: int | None = None,
    live_source: str = "live",
    trt_version: str | None = None,
    overhead: Sequence[MemoryItem] | None = None,
    subject: str = "",
    suggest_targets: bool = True,
) -> BudgetReport:
    """Check ``items`` against ``target``'s memory.

    Static (default): capacity = the module's RAM, minus the OS reserve (``os_reserve_bytes`` or the
    target's default). Live (``live_free_bytes`` given, e.g. MemAvailable read on the device): capacity =
    that free memory, no OS reserve (it is already in use). Both subtract the CUDA/TensorRT runtime
    overhead (``overhead``; default :func:`runtime_overhead` for ``trt_version``) and a margin of
    ``margin_fraction`` of the capacity.
    """
    if not 0.0 <= margin_fraction < 0.5:
        raise ValueError(f"margin_fraction must be in [0, 0.5), got {margin_fraction}")
    if os_reserve_bytes is not None and not 0 <= os_reserve_bytes < target.ram_bytes:
        raise ValueError(
            f"OS reserve {os_reserve_bytes / MIB:.0f} MiB must be >= 0 and below {target.name}'s RAM "
            f"({target.ram_mib:.0f} MiB)"
        )
    trt = trt_version or target.default_trt_version
    ovh = list(overhead) if overhead is not None else runtime_overhead(target, trt)
    live = live_free_bytes is not None
    reserve: int | None
    if live_free_bytes is not None:
        capacity, label, note, reserve = live_free_bytes, "free memory now", live_source, None
    else:
        capacity, label, note = target.ram_bytes, "module RAM", "catalog (CPU and GPU share it)"
        reserve = target.os_reserve_bytes if os_reserve_bytes is None else os_reserve_bytes
    rows = _rows(target, items, capacity=capacity, capacity_label=label, capacity_note=note, reserve=reserve,
                 overhead=ovh, margin_fraction=margin_fraction)
    report = BudgetReport(target, capacity, label, tuple(rows), margin_fraction, live, trt, subject=subject)
    fits_on: tuple[str, ...] = ()
    if not report.fits and suggest_targets and not live:
        others = [
            check_budget(t, items, margin_fraction=margin_fraction, overhead=overhead, suggest_targets=False)
            for t in list_targets() if t.name != target.name and t.ram_bytes >= target.ram_bytes
        ]
        fits_on = tuple(f"{r.target.name} ({_human(r.headroom_bytes)} headroom)" for r in others if r.fits)
    report = BudgetReport(target, capacity, label, tuple(rows), margin_fraction, live, trt, fits_on, subject=subject)
    return BudgetReport(
        target, capacity, label, tuple(rows), margin_fraction, live, trt, fits_on,
        tuple(_advice(report, items)), subject,
    )


def require_fit(report: BudgetReport, *, action: str = "creating the execution context") -> BudgetReport:
    """Raise BudgetError (with the numbers) unless ``report.fits``."""
    if report.fits:
        return report
    raise BudgetError(
        f"refusing {action}: {report.verdict()}\n{report.table()}",
        hint=report.advice[0] if report.advice else "choose a larger target or a smaller model",
        report=report,
    )
