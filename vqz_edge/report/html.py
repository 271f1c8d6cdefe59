"""One self-contained HTML report (plots embedded as base64 PNG, no external assets) plus the tables."""

from __future__ import annotations

import base64
import html
from collections.abc import Mapping
from typing import Any

from ..sensitivity.sweep import LOSS_LABEL, SensitivityResult

_CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:24px;color:#222;max-width:1200px}
h1{font-size:20px}h2{font-size:16px;margin-top:28px;border-bottom:1px solid #ddd}
table{border-collapse:collapse;font-size:12px;margin:8px 0}td,th{border:1px solid #ddd;padding:3px 6px;text-align:left}
th{background:#f3f3f3}td.num{text-align:right;font-variant-numeric:tabular-nums}
.int8{color:#3b75af}.fp16{color:#ef8636;font-weight:600}.fp32{color:#c53a32;font-weight:600}
.ok{color:#2e7d32;font-weight:600}.bad{color:#c62828;font-weight:600}code{font-size:11px}
img{max-width:100%;border:1px solid #eee;margin:6px 0}.small{color:#666;font-size:12px}
"""


def _e(x: object) -> str:
    return html.escape(str(x))


def _img(name: str, data: bytes) -> str:
    return f'<img alt="{_e(name)}" src="data:image/png;base64,{base64.b64encode(data).decode()}">'


def _table(head: list[str], rows: list[list[str]], numeric: set[int] | None = None) -> str:
    numeric = numeric or set()
    out = ["<table><tr>" + "".join(f"<th>{_e(h)}</th>" for h in head) + "</tr>"]
    for row in rows:
        out.append("<tr>" + "".join(f'<td class="num">{c}</td>' if i in numeric else f"<td>{c}</td>"
                                    for i, c in enumerate(row)) + "</tr>")
    out.append("</table>")
    return "\n".join(out)


def _fmt(x: Any, digits: int = 4) -> str:
    if x is None:
        return "-"
    if isinstance(x, float):
        return f"{x:.{digits}f}"
    return _e(x)


def _metrics_rows(label: str, m: Mapping[str, Any]) -> list[str]:
    agr, conf = m.get("agreement"), m.get("agreement_confident")
    return [_e(label), _fmt(m["samples"]), _fmt(m["cosine"]), "-" if agr is None else f"{agr * 100:.1f}%",
            "-" if conf is None else f"{conf * 100:.1f}% ({m['confident_share'] * 100:.0f}% of samples)",
            _fmt(m.get("sqnr_db"), 2)]


def render(result: SensitivityResult, images: Mapping[str, bytes]) -> str:
    metric = result.options.metric
    doc = result.to_dict()
    parts = [
        "<!DOCTYPE html><html><head><meta charset='utf-8'>",
        f"<title>vqz-edge sensitivity: {_e(result.model)}</title><style>{_CSS}</style></head><body>",
        f"<h1>Sensitivity report: {_e(result.model)}</h1>",
        f"<p class='small'>{_e(result.data)}; calibration {_e(result.calibration)}; granularity "
        f"{_e(result.options.granularity)}, metric {_e(metric)} ({_e(LOSS_LABEL[metric])}), "
        f"{'reverse sweep (all INT8 except one)' if result.options.reverse else 'forward sweep (one unit INT8, rest FP32/FP16)'}; "
        f"preset {_e(result.preset)}; {result.evaluations} model evaluations. FP16 layers are evaluated in FP32 on "
        "the CPU (FP16 rounding not emulated).</p>",
    ]
    rows = [_metrics_rows("all candidate layers INT8 (sweep samples)", doc["all_int8"])]
    auto = doc.get("auto_plan")
    if auto:
        rows.append(_metrics_rows("automatic plan (sweep samples)", auto["achieved"]))
        if auto.get("finetuned"):
            rows.append(_metrics_rows("automatic plan fine-tuned (sweep samples)", auto["finetuned"]))
        v = auto.get("verification")
        if v:
            rows.append(_metrics_rows("all INT8, verification samples", v["baseline_all_int8"]))
            rows.append(_metrics_rows("automatic plan, verification samples", v["plan"]))
            if v.get("plan_finetuned"):
                rows.append(_metrics_rows("automatic plan fine-tuned, verification samples", v["plan_finetuned"]))
    parts += ["<h2>Summary</h2>", _table(["model", "samples", "cosine", "top-1 agreement",
                                          "top-1 agreement where FP32 softmax ≥ 0.5", "SQNR dB"], rows, {1, 2, 3, 4, 5})]
    if auto:
        s = auto["share_above_int8"]
        met = auto["met_on_sweep_data"] if not auto.get("finetuned") else auto["finetuned_met_on_sweep_data"]
        v = auto.get("verification")
        opts = auto["options"]
        cond = f"{_e(metric)} &ge; {opts['target']}" + (
            f" and top-1 agreement &ge; {opts['min_agreement']}" if opts.get("min_agreement") is not None else "")
        parts += [
            "<h2>Automatic plan</h2>",
            f"<p>Target: {cond}. On the sweep samples{' after fine-tuning' if auto.get('finetuned') else ''}: "
            f"<span class='{'ok' if met else 'bad'}'>"
            f"{'met' if met else 'not met'}</span>"
            + (f"; on {v['samples']} separate verification samples: <span class='{'ok' if v['met'] else 'bad'}'>"
               f"{'met' if v['met'] else 'not met'}</span>" if v else "") + ".</p>",
            f"<p>Above INT8: {s['compute_layers_above_int8']} of {s['compute_layers']} compute layers "
            f"({s['layers_share'] * 100:.1f}%; Conv/Gemm: {s['conv_gemm_layers_above_int8']} of {s['conv_gemm_layers']}), "
            f"{s['macs_share'] * 100:.1f}% of MACs, {s['params_share'] * 100:.1f}% of parameters; "
            f"{s['other_quantizable_above_int8']} of {s['other_quantizable']} residual Adds.</p>",
            _table(["kept above INT8 (unit)", "rank", LOSS_LABEL[metric] + " alone"],
                   [[f"<code>{_e(u)}</code>", _fmt(r.rank), f"{r.score:.4g}"]
                    for u in auto["kept"] for r in result.units if r.unit.name == u], {1, 2}),
            "<p class='small'>Search steps: " + ", ".join(
                f"{_e(st['phase'])} k={st['kept']}: {st[metric]}" for st in auto["steps"]) + "</p>",
        ]
        gap = (auto.get("finetune") or {}).get("domain_gap")
        if gap:
            parts.append(
                f"<p>Fine-tuning's distillation loss: {gap['calibration_loss']:.5f} on the calibration data, "
                f"{gap['held_out_loss']:.5f} on the held-out sweep samples (<span class='{'bad' if gap['large'] else 'ok'}'>"
                f"{gap['ratio']:.1f}x</span>)"
                + (": the held-out data looks unlike the calibration data; if it is the deployment domain, "
                   "calibration data like it narrows that gap, more fine-tuning samples are unlikely to." if gap["large"]
                   else ".") + "</p>")
        if v and v["plan"].get("per_source"):
            per_b, per_p = v["baseline_all_int8"]["per_source"], v["plan"]["per_source"]
            prow = []
            for src in sorted(per_p):
                b, p = per_b.get(src, {}), per_p[src]
                prow.append([_e(src), _fmt(int(p["samples"])), _fmt(b.get("cosine")), _fmt(p["cosine"]),
                             "-" if "agreement" not in p else f"{b.get('agreement', 0) * 100:.1f}% / {p['agreement'] * 100:.1f}%"])
            parts += ["<h3>Verification by source photo</h3>",
                      _table(["source", "samples", "cosine all INT8", "cosine plan", "top-1 agreement INT8 / plan"],
                             prow, {1, 2, 3})]
    for name, title in (("sensitivity.png", "Sensitivity ranking"),
                        ("sensitivity_by_layer.png", "Sensitivity vs layer index"),
                        ("histograms.png", "Activation histograms"),
                        ("precision_map.png", "Precision map")):
        if name in images:
            parts += [f"<h2>{title}</h2>", _img(name, images[name])]
    kept = set(result.auto.kept) if result.auto else set()
    parts += ["<h2>Ranking</h2>", _table(
        ["rank", "unit", "ops", f"{LOSS_LABEL[metric]}", "cosine", "top-1", "MMACs", "params", "flags", "plan"],
        [[_fmt(r.rank), f"<code>{_e(r.unit.name)}</code>", _e(",".join(sorted(set(r.unit.op_types)))), f"{r.score:.4g}",
          _fmt(r.metrics.cosine, 5), "-" if r.metrics.agreement is None else f"{r.metrics.agreement * 100:.1f}%",
          f"{r.macs / 1e6:.2f}", _fmt(r.params), _e(", ".join(r.flags)),
          "<span class='fp16'>FP16</span>" if r.unit.name in kept else "<span class='int8'>INT8</span>"]
         for r in result.units], {0, 3, 4, 5, 6, 7})]
    parts += ["<h2>Diagnostics</h2>", _table(
        ["kind", "tensor", "finding", "suggestion"],
        [[_e(f.kind), f"<code>{_e(f.tensor)}</code>", _e(f.detail), _e(f.suggestion)] for f in result.flags])]
    parts.append("</body></html>\n")
    return "\n".join(parts)
