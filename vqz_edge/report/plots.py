"""PNG plots for sensitivity reports (matplotlib's Agg renderer through ``Figure``, never pyplot: headless, no
display, no global backend or style changes).

Every function returns PNG bytes; the same inputs give the same bytes (no timestamps or software tag in
the PNG metadata, fixed sizes and DPI).
"""

from __future__ import annotations

import io
from collections.abc import Mapping
from typing import Any

import numpy as np

from ..artifacts.plan import ResolvedPlan
from ..calib.histogram import AbsHistogram
from ..calib.thresholds import percentile_amax
from ..sensitivity.sweep import LOSS_LABEL, SensitivityResult
from ..sensitivity.units import block_of

COLORS = {"int8": "#3b75af", "fp16": "#ef8636", "fp32": "#c53a32", "other": "#d0d0d0"}
DPI = 90


_STYLE: dict[str, Any] = {"font.size": 8, "axes.titlesize": 9}


def _figure(figsize: tuple[float, float]) -> Any:
    """A matplotlib Figure drawn by the Agg renderer without pyplot: no global backend switch, no display."""
    from matplotlib.figure import Figure

    return Figure(figsize=figsize)


def _png(fig: Any) -> bytes:
    import matplotlib

    buf = io.BytesIO()
    with matplotlib.rc_context(_STYLE):  # type: ignore[arg-type]
        fig.savefig(buf, format="png", dpi=DPI, metadata={"Software": None})
    return buf.getvalue()


def _styled(fn: Any) -> Any:
    """Run a plotting function under the report style (font sizes), leaving the caller's rcParams alone."""
    import functools

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        import matplotlib

        with matplotlib.rc_context(_STYLE):  # type: ignore[arg-type]
            return fn(*args, **kwargs)

    return wrapper


def short(name: str, width: int = 48) -> str:
    """A node/tensor name shortened from the left (the end says the most: scope and op)."""
    return name if len(name) <= width else "..." + name[-(width - 3):]


@_styled
def sensitivity_chart(result: SensitivityResult, top: int = 25) -> bytes:
    """Horizontal bars of the top-``top`` units' sensitivity (log scale); kept units of the automatic plan in
    orange; with an automatic plan a second panel shows the metric along the greedy search."""
    units = result.units[:top]
    kept = set(result.auto.kept) if result.auto else set()
    auto = result.auto
    fig = _figure((10.0 if auto else 7.5, 0.22 * len(units) + 1.5))
    ax = fig.add_axes((0.25, 0.11, 0.45 if auto else 0.7, 0.76))
    scores = np.array([max(u.score, 1e-9) for u in units])
    y = np.arange(len(units))[::-1]
    colors = [COLORS["fp16"] if u.unit.name in kept else COLORS["int8"] for u in units]
    ax.barh(y, scores, color=colors, height=0.7)
    ax.set_yticks(y)
    ax.set_yticklabels([short(u.unit.name, 40) + (" *" if u.flags else "") for u in units], fontsize=7)
    ax.set_xscale("log")
    what = "all INT8 except this unit: gain in" if result.options.reverse else "only this unit INT8:"
    ax.set_xlabel(f"{what} {LOSS_LABEL[result.options.metric]}")
    base = 1.0 - result.all_int8.value(result.options.metric) if result.options.metric != "sqnr" else None
    if base is not None and base > 0 and not result.options.reverse:
        ax.axvline(base, color="#555555", ls="--", lw=0.8)
        ax.text(base, -0.9, "all INT8 ", fontsize=7, color="#555555", ha="right", va="center")
    fig.suptitle(f"{result.model}: {result.options.granularity} sensitivity on {result.samples} held-out samples"
                 " (* diagnostic flag" + ("; orange: kept FP16 by the automatic plan)" if auto else ")"),
                 x=0.01, ha="left", fontsize=9)
    ax.grid(axis="x", which="both", alpha=0.25)
    if auto is not None:
        ax2 = fig.add_axes((0.79, 0.11, 0.19, 0.76))
        pts = sorted({(s["kept"], s[auto.metric]) for s in auto.steps if s["phase"] in ("baseline", "grow", "bisect")})
        ax2.plot([p[0] for p in pts], [p[1] for p in pts], "o-", color=COLORS["int8"], ms=3, lw=1)
        ax2.axhline(auto.options.target, color=COLORS["fp32"], ls="--", lw=0.8)
        ax2.plot([len(auto.kept)], [auto.achieved.value(auto.metric)], "s", color=COLORS["fp16"], ms=6)
        if auto.finetuned is not None:  # the same plan after quantization-aware fine-tuning
            ax2.plot([len(auto.kept)], [auto.finetuned.value(auto.metric)], "*", color=COLORS["fp16"], ms=10)
            ax2.annotate("fine-tuned", (len(auto.kept), auto.finetuned.value(auto.metric)), fontsize=7,
                         textcoords="offset points", xytext=(-8, 6), ha="right")
        ax2.set_xlabel("units kept FP16, most sensitive first")
        ax2.set_ylabel(auto.metric)
        ax2.set_title(f"plan search (target {auto.options.target})", loc="left", fontsize=8)
        ax2.grid(alpha=0.25)
    return _png(fig)


_OP_MARKERS = {"Conv": "o", "ConvTranspose": "o", "Gemm": "s", "MatMul": "s", "Add": "^"}


@_styled
def layer_index_chart(result: SensitivityResult) -> bytes:
    """Every unit's sensitivity against its position in the graph (the seed's "accuracy vs layer index" picture):
    where along the network the damage sits. Marker by op (o Conv, square Gemm/MatMul, triangle Add, diamond
    block); orange: kept above INT8 by the automatic plan."""
    order = {layer.name: i for i, layer in enumerate(result.base_plan.layers)}
    units = sorted(result.units, key=lambda u: min(order.get(n, 0) for n in u.unit.nodes))
    kept = set(result.auto.kept) if result.auto else set()
    fig = _figure((9.0, 3.4))
    ax = fig.add_axes((0.08, 0.16, 0.9, 0.7))
    x = np.arange(len(units))
    scores = np.array([max(u.score, 1e-9) for u in units])
    ax.plot(x, scores, "-", color="#999999", lw=0.6)
    for i, u in enumerate(units):
        marker = "D" if u.unit.kind == "block" else _OP_MARKERS.get(u.unit.op_types[0], "x")
        color = COLORS["fp16"] if u.unit.name in kept else COLORS["int8"]
        ax.plot([i], [scores[i]], marker, color=color, ms=4)
    ax.set_yscale("log")
    ax.set_xlabel(f"{result.options.granularity} index in graph order (0 = nearest the input)")
    what = "all INT8 except this unit: gain in" if result.options.reverse else "only this unit INT8:"
    ax.set_ylabel(f"{what}\n{LOSS_LABEL[result.options.metric]}", fontsize=7)
    step = max(1, len(units) // 12)
    ax.set_xticks(x[::step])
    ax.set_xticklabels([short(u.unit.name, 18) for u in units[::step]], rotation=30, ha="right", fontsize=6)
    ax.grid(alpha=0.25)
    fig.suptitle(f"{result.model}: sensitivity vs {result.options.granularity} index ({len(units)} units, "
                 f"{result.samples} samples)" + ("; orange: kept above INT8" if kept else ""), x=0.01, ha="left",
                 fontsize=9)
    return _png(fig)


def _tensor_panels(result: SensitivityResult, count: int) -> list[tuple[str, str]]:
    """(tensor, unit name) for the activations of the most sensitive units, first appearance only."""
    seen: dict[str, str] = {}
    for u in result.units:
        for t in u.unit.activations:
            if t not in seen:
                seen[t] = u.unit.name
        if len(seen) >= count:
            break
    return list(seen.items())[:count]


@_styled
def histogram_grid(result: SensitivityResult, histograms: Mapping[str, AbsHistogram], count: int = 6) -> bytes:
    """|x| histograms (log counts) of the activations feeding the most sensitive units, with the chosen
    threshold (amax), the 99.9th percentile and the observed max."""
    panels = [(t, u) for t, u in _tensor_panels(result, count) if t in histograms]
    cols = 3 if len(panels) > 2 else max(1, len(panels))
    rows = max(1, -(-len(panels) // cols))
    fig = _figure((3.6 * cols, 2.5 * rows))
    axes = fig.subplots(rows, cols, squeeze=False)
    flags = result.flags_by_tensor()
    for ax, (tensor, unit) in zip(axes.flat, panels):
        h = histograms[tensor]
        nz = np.flatnonzero(h.counts)
        used = int(nz[-1]) + 1 if nz.size else 1
        width = h.range / h.nbins if h.range else 1.0
        step = -(-used // 256)  # at most 256 bars: merge neighbouring bins
        padded = np.zeros(-(-used // step) * step, np.float64)
        padded[:used] = h.counts[:used]
        counts = padded.reshape(-1, step).sum(axis=1)
        edges = np.arange(counts.size + 1) * width * step
        ax.stairs(np.maximum(counts, 0.8), edges, fill=True, color=COLORS["int8"], alpha=0.75, baseline=0.8)
        ax.set_yscale("log")
        amax = result.amax.get(tensor)
        if amax is not None:
            ax.axvline(amax, color=COLORS["fp32"], lw=1.2, label=f"amax {amax:.3g}")
        ax.axvline(percentile_amax(h, 99.9), color="#444444", lw=0.8, ls=":", label="p99.9")
        ax.axvline(h.amax, color="#444444", lw=0.8, ls="--", label=f"max {h.amax:.3g}")
        kinds = ", ".join(sorted({f.kind for f in flags.get(tensor, [])}))
        ax.set_title(short(tensor, 46) + (f"\n[{kinds}]" if kinds else ""), fontsize=7, loc="left")
        ax.set_xlabel(f"|x|  (feeds {short(unit, 30)})", fontsize=7)
        ax.legend(fontsize=6, loc="upper right")
    for ax in list(axes.flat)[len(panels):]:
        ax.axis("off")
    fig.suptitle("Activation histograms of the most sensitive layers (log counts) with the chosen INT8 thresholds",
                 fontsize=9, x=0.01, ha="left")
    fig.tight_layout(rect=(0, 0, 1, 0.95))
    return _png(fig)


@_styled
def precision_map(plan: ResolvedPlan, title: str = "", block_depth: int | None = None,
                  scores: Mapping[str, float] | None = None) -> bytes:
    """The network as rows of blocks (graph order) and cells of layers, coloured by precision. Shown: every
    quantizable layer and every layer pinned to FP32 (Softmax, LayerNorm, the head)."""
    from matplotlib.patches import Rectangle

    layers = [x for x in plan.layers if x.quantizable or x.precision == "fp32"]
    rows: dict[str, list[Any]] = {}
    for x in layers:
        rows.setdefault(block_of(x.name, block_depth), []).append(x)
    names = list(rows)
    width = max((len(v) for v in rows.values()), default=1)
    fig_w = max(5.6, 2.4 + 0.3 * width)
    fig_h = 0.2 * len(names) + 1.2
    fig = _figure((fig_w, fig_h))
    left = 2.1 / fig_w
    ax = fig.add_axes((left, 0.35 / fig_h, min(0.97 - left, 0.3 * width / fig_w), 1 - 1.0 / fig_h))
    abbrev = {"Conv": "C", "ConvTranspose": "T", "Gemm": "G", "MatMul": "M", "Add": "+", "Softmax": "S",
              "LayerNormalization": "L"}
    for r, block in enumerate(names):
        yy = len(names) - 1 - r
        for c, x in enumerate(rows[block]):
            color = COLORS.get(x.precision, COLORS["other"]) if x.quantizable or x.precision == "fp32" else COLORS["other"]
            ax.add_patch(Rectangle((c, yy), 0.92, 0.86, color=color, lw=0))
            ax.text(c + 0.46, yy + 0.43, abbrev.get(x.op_type, x.op_type[:1]), ha="center", va="center", fontsize=6,
                    color="white")
    ax.set_xlim(0, width)
    ax.set_ylim(0, len(names))
    ax.set_yticks(np.arange(len(names)) + 0.43)
    ax.set_yticklabels([short(n, 34) for n in names[::-1]], fontsize=7)
    ax.set_xticks([])
    for s in ax.spines.values():
        s.set_visible(False)
    counts = {p: sum(1 for x in layers if x.precision == p and (x.quantizable or p == "fp32")) for p in ("int8", "fp16", "fp32")}
    handles = [Rectangle((0, 0), 1, 1, color=COLORS[p]) for p in ("int8", "fp16", "fp32")]
    fig.legend(handles, [f"{p.upper()} ({counts[p]})" for p in ("int8", "fp16", "fp32")], fontsize=7, ncol=3,
               loc="upper left", bbox_to_anchor=(0.0, 1 - 0.3 / fig_h), frameon=False)
    fig.suptitle(title, x=0.01, y=1 - 0.08 / fig_h, ha="left", va="top", fontsize=9)
    fig.text(0.01, 0.005, "C Conv  T ConvTranspose  G Gemm  M MatMul  + residual Add  S Softmax  L LayerNorm",
             fontsize=6, color="#555555")
    return _png(fig)


def plot_all(result: SensitivityResult, histograms: Mapping[str, AbsHistogram], top: int = 25,
             histogram_count: int = 6) -> dict[str, bytes]:
    """Deterministic file name -> PNG bytes."""
    plan = result.auto.plan if result.auto else result.base_plan
    title = f"{result.model}: " + ("automatic plan" if result.auto else "base plan (sweep candidates INT8)")
    return {
        "sensitivity.png": sensitivity_chart(result, top),
        "sensitivity_by_layer.png": layer_index_chart(result),
        "histograms.png": histogram_grid(result, histograms, histogram_count),
        "precision_map.png": precision_map(plan, title, result.options.block_depth),
    }
