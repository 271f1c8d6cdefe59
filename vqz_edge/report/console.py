"""Compact console tables for ``vqz-edge sensitivity`` (plain text; the CLI prints them)."""

from __future__ import annotations

from ..sensitivity.sweep import LOSS_LABEL, SensitivityResult, metric_in


def _short(name: str, width: int) -> str:
    return name if len(name) <= width else "..." + name[-(width - 3):]


def _pct(x: float | None) -> str:
    return "   -  " if x is None else f"{x * 100:5.1f}%"


def format_ranking(result: SensitivityResult, top: int = 15, width: int = 52) -> str:
    metric = result.options.metric
    kept = set(result.auto.kept) if result.auto else set()
    head = f"{'#':>3} {'unit':{width}s} {'op':6s} {LOSS_LABEL[metric][:12]:>12s} {'cosine':>8s} {'top-1':>6s} {'MMACs':>7s}  flags"
    lines = [head]
    for r in result.units[:top]:
        ops = ",".join(sorted(set(r.unit.op_types)))[:6]
        mark = " [FP16]" if r.unit.name in kept else ""
        lines.append(f"{r.rank:3d} {_short(r.unit.name, width):{width}s} {ops:6s} {r.score:12.4g} {r.metrics.cosine:8.5f} "
                     f"{_pct(r.metrics.agreement)} {r.macs / 1e6:7.2f}  {','.join(r.flags)}{mark}")
    if len(result.units) > top:
        lines.append(f"    ... {len(result.units) - top} more units (see sensitivity.json / the HTML report)")
    return "\n".join(lines)


def format_diagnostics(result: SensitivityResult, limit: int = 12) -> str:
    if not result.flags:
        return "diagnostics: no flags"
    counts: dict[str, int] = {}
    for f in result.flags:
        counts[f.kind] = counts.get(f.kind, 0) + 1
    lines = ["diagnostics: " + ", ".join(f"{v} {k}" for k, v in sorted(counts.items()))]
    order = {"twin_peak": 0, "outliers": 1, "channel_spread": 2}
    for f in sorted(result.flags, key=lambda f: (order.get(f.kind, 9), -f.value))[:limit]:
        lines.append(f"  [{f.kind}] {_short(f.tensor, 60)}: {f.detail}")
        lines.append(f"      -> {f.suggestion}")
    if len(result.flags) > limit:
        lines.append(f"  ... {len(result.flags) - limit} more (see the report)")
    return "\n".join(lines)


def format_auto_plan(result: SensitivityResult) -> str:
    a = result.auto
    if a is None:
        return ""
    m = a.metric
    s = a.share
    cond = f"{m} >= {a.options.target}" + (
        f" and top-1 agreement >= {a.options.min_agreement}" if a.options.min_agreement is not None else "") + (
        f"; searched for {a.options.aim:.6g} on the sweep samples (--margin {a.options.margin:g})"
        if a.options.margin else "")
    lines = [
        f"automatic plan ({cond}): keep {len(a.kept)} unit(s) above INT8 -> "
        f"{'MET' if a.met else 'NOT MET'} on the {result.samples} sweep samples",
        f"  sweep samples:   all INT8 {m} {a.baseline.value(m):.4f} top-1 {_pct(a.baseline.agreement).strip()}  ->  "
        f"plan {m} {a.achieved.value(m):.4f} top-1 {_pct(a.achieved.agreement).strip()}",
    ]
    if a.finetuned is not None and a.finetune is not None:
        f = a.finetuned
        lines.append(f"  fine-tuned ({a.finetune['options']['samples']} samples of {a.finetune['data']}): plan {m} "
                     f"{f.value(m):.4f} top-1 {_pct(f.agreement).strip()} on the sweep samples "
                     f"({'MET' if a.meets(f) else 'NOT MET'})")
        gap = a.finetune.get("domain_gap")
        if gap:
            lines.append(f"    distillation loss: calibration data {gap['calibration_loss']:.5f}, held-out sweep samples "
                         f"{gap['held_out_loss']:.5f} ({gap['ratio']:.1f}x)"
                         + (": the held-out data (--data) looks unlike the calibration data -- if --data is the "
                            "deployment domain, calibrate and fine-tune on data like it (more samples are unlikely "
                            "to close this)" if gap["large"] else ""))
    v = a.verification
    if v:
        b, p = v["baseline_all_int8"], v["plan"]
        lines.append(f"  verification ({v['samples']} other held-out samples): all INT8 {m} {metric_in(b, m):.4f} top-1 "
                     f"{_pct(b['agreement']).strip()}  ->  plan {m} {metric_in(p, m):.4f} top-1 {_pct(p['agreement']).strip()}"
                     + ("" if v.get("plan_finetuned") else f"  {'MET' if v['met'] else 'NOT MET'}"))
        ft = v.get("plan_finetuned")
        if ft:
            lines.append(f"    fine-tuned plan {m} {metric_in(ft, m):.4f} top-1 {_pct(ft['agreement']).strip()}  "
                         f"{'MET' if v['met'] else 'NOT MET'}")
        final = ft or p
        if final.get("agreement_confident") is not None:
            lines.append(f"    top-1 agreement where FP32 is confident (softmax >= 0.5, {final['confident_share'] * 100:.0f}% "
                         f"of samples): all INT8 {_pct(b['agreement_confident']).strip()} -> "
                         f"{'fine-tuned ' if ft else ''}plan {_pct(final['agreement_confident']).strip()}")
    lines.append(f"  above INT8: {s['compute_layers_above_int8']}/{s['compute_layers']} compute layers "
                 f"({s['layers_share'] * 100:.1f}%; Conv/Gemm {s['conv_gemm_layers_above_int8']}/{s['conv_gemm_layers']}), "
                 f"{s['macs_share'] * 100:.1f}% of MACs, {s['params_share'] * 100:.1f}% of params")
    if a.pins is not None:
        lines.append(f"  preset pins: {a.pins['pinned_layers']} pinned layers in {a.pins['groups']} groups; released "
                     f"{len(a.released)} ({', '.join(a.pins.get('released_groups', [])) or 'none'})")
    for u in a.kept:
        lines.append(f"    FP16  {u}")
    return "\n".join(lines)
