"""Proof of what actually got quantized: audit a loaded VLM per component.

For every Linear layer (``nn.Linear`` and its quantized replacements): class, weight storage dtype and the
bits it effectively stores; per component the parameter bytes actually held (4-bit packed weights plus
their absmax / double-quant statistics). The verdict fails -- and names the modules -- when

1. any vision-tower or connector layer is stored below FP16,
2. the LM head was quantized,
3. a skip entry of the quantization config matched no module, or matched only containers and not a single
   Linear (the transformers-5 trap: ``"vision_tower"`` matches ``model.vision_tower`` but none of its layers).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..errors import DependencyError, ModelLoadError
from ..log import get_logger
from .configs import load_vlm_config
from .errors import AuditFailed
from .params import COMPONENTS, VISION_SIDE, component_of, iter_linear_modules
from .quantconfig import SkipEntryMatch, match_skip_entries, read_quantization_config, skip_matcher

_log = get_logger(__name__)

AUDIT_VERSION = 1


@dataclass(frozen=True)
class LayerRecord:
    name: str
    component: str
    cls: str
    dtype: str
    bits: int  # effective storage bits per weight: 4, 8, 16, 32
    quant_type: str  # nf4 / fp4 / int8 / "" (not quantized)

    @property
    def label(self) -> str:
        return f"{self.cls} ({self.quant_type or self.dtype})"


@dataclass(frozen=True)
class ComponentAudit:
    name: str
    layers: tuple[LayerRecord, ...]
    param_bytes: int
    params: int

    @property
    def by_class(self) -> dict[str, int]:
        return dict(sorted(Counter(r.label for r in self.layers).items()))

    @property
    def below_fp16(self) -> list[str]:
        return [r.name for r in self.layers if r.bits < 16]

    def to_dict(self) -> dict[str, Any]:
        return {"linear_layers": len(self.layers), "by_class": self.by_class,
                "by_dtype": dict(sorted(Counter(r.dtype for r in self.layers).items())),
                "quantized": len(self.below_fp16), "param_bytes": self.param_bytes, "params": self.params}


@dataclass(frozen=True)
class AuditReport:
    model: str
    components: tuple[ComponentAudit, ...]
    skip_entries: tuple[SkipEntryMatch, ...] | None  # None: no quantization config to check
    matcher: str
    failures: tuple[str, ...]
    quantization_config: Mapping[str, Any] | None = field(default=None, compare=False)

    @property
    def ok(self) -> bool:
        return not self.failures

    def component(self, name: str) -> ComponentAudit:
        return next(c for c in self.components if c.name == name)

    def to_dict(self) -> dict[str, Any]:
        return {
            "version": AUDIT_VERSION,
            "model": self.model,
            "ok": self.ok,
            "verdict": "PASS" if self.ok else "FAIL",
            "failures": list(self.failures),
            "components": {c.name: c.to_dict() for c in self.components},
            "skip_entries": [s.to_dict() for s in self.skip_entries] if self.skip_entries is not None else None,
            "skip_matcher": self.matcher,
        }

    def table(self) -> str:
        lines = [f"quantization audit of {self.model}",
                 f"  {'component':14} {'Linear':>6} {'below FP16':>10} {'MiB':>10}  classes"]
        for c in self.components:
            classes = ", ".join(f"{k} x{v}" for k, v in c.by_class.items()) or "-"
            lines.append(f"  {c.name:14} {len(c.layers):>6} {len(c.below_fp16):>10} {c.param_bytes / (1 << 20):>10.2f}  {classes}")
        if self.skip_entries is None:
            lines.append("  skip list: none given (no --quantization-config and none in the model's config.json)")
        else:
            n_ok = sum(1 for s in self.skip_entries if s.problem is None)
            lines.append(f"  skip list: {len(self.skip_entries)} entries, {n_ok} keep at least one Linear ({self.matcher})")
        lines.append(f"verdict: {'PASS' if self.ok else 'FAIL'}")
        lines.extend(f"  FAIL: {f}" for f in self.failures)
        return "\n".join(lines)


def _layer_record(name: str, module: Any) -> LayerRecord:
    cls = type(module).__name__
    w = getattr(module, "weight", None)
    if w is None:
        w = getattr(module, "qweight", None)
    dtype = str(getattr(w, "dtype", "none")).replace("torch.", "")
    wcls = type(w).__name__ if w is not None else ""
    if cls == "Linear4bit" or wcls == "Params4bit":
        qs = getattr(w, "quant_state", None)
        qtype = str(getattr(qs, "quant_type", None) or getattr(w, "quant_type", None) or "4bit")
        return LayerRecord(name, component_of(name), cls, dtype, 4, qtype)
    if cls == "Linear8bitLt" or wcls == "Int8Params" or dtype == "int8":
        return LayerRecord(name, component_of(name), cls, dtype, 8, "int8")
    if dtype in ("float16", "bfloat16"):
        return LayerRecord(name, component_of(name), cls, dtype, 16, "")
    if dtype in ("float32", "float64"):
        return LayerRecord(name, component_of(name), cls, dtype, 32, "")
    bits = int(getattr(module, "w_bit", getattr(module, "bits", 4)))  # AWQ / GPTQ packed weights
    return LayerRecord(name, component_of(name), cls, dtype, bits, f"int{bits}")


def _tensor_bytes(t: Any) -> int:
    return int(t.numel() * t.element_size()) if t is not None and hasattr(t, "numel") else 0


def _quant_state_bytes(p: Any) -> int:
    qs = getattr(p, "quant_state", None)
    if qs is None:
        return _tensor_bytes(getattr(p, "SCB", None))  # LLM.int8: fp32 scale per output row
    n = _tensor_bytes(getattr(qs, "absmax", None))
    if getattr(qs, "nested", False) and getattr(qs, "state2", None) is not None:
        n += _tensor_bytes(qs.state2.absmax) + _tensor_bytes(getattr(qs, "offset", None))
    return n


def audit_model(model: Any, skip_modules: Sequence[str] | None = None, *, name: str = "model",
                quantization_config: Mapping[str, Any] | None = None) -> AuditReport:
    """Audit an in-memory model (any transformers LLaVA / LLaVA-NeXT / Mllama, quantized or not)."""
    layers: dict[str, list[LayerRecord]] = {c: [] for c in COMPONENTS}
    for lname, module in iter_linear_modules(model):
        rec = _layer_record(lname, module)
        layers[rec.component].append(rec)
    pbytes = dict.fromkeys(COMPONENTS, 0)
    pcount = dict.fromkeys(COMPONENTS, 0)
    seen: set[int] = set()
    for pname, p in model.named_parameters():
        if id(p) in seen:
            continue
        seen.add(id(p))
        comp = component_of(pname)
        pbytes[comp] += _tensor_bytes(p) + _quant_state_bytes(p)
        qs = getattr(p, "quant_state", None)
        pcount[comp] += int(qs.shape.numel()) if qs is not None and getattr(qs, "shape", None) is not None else int(p.numel())
    comps = tuple(ComponentAudit(c, tuple(layers[c]), pbytes[c], pcount[c]) for c in COMPONENTS)
    failures: list[str] = []
    for c in comps:
        if c.name in VISION_SIDE and c.below_fp16:
            failures.append(
                f"{len(c.below_fp16)} of {len(c.layers)} {c.name} Linear layers are stored below FP16 "
                f"({', '.join(sorted({r.label for r in c.layers if r.bits < 16}))}): {_some(c.below_fp16)}"
            )
    head = next(c for c in comps if c.name == "lm_head")
    if head.below_fp16:
        failures.append(f"the LM head was quantized: {_some(head.below_fp16)}")
    matches: tuple[SkipEntryMatch, ...] | None = None
    matcher = skip_matcher()[1]
    if skip_modules is not None:
        matches = tuple(match_skip_entries(model, skip_modules))
        bad = [m.problem for m in matches if m.problem]
        if bad:
            failures.append(f"{len(bad)} of {len(matches)} skip entries keep no Linear layer: " + "; ".join(bad[:5])
                            + (" ..." if len(bad) > 5 else ""))
    report = AuditReport(name, comps, matches, matcher, tuple(failures), quantization_config)
    _log.info("audit of %s: %s", name, "PASS" if report.ok else "FAIL")
    return report


def _some(names: Sequence[str], k: int = 4) -> str:
    return ", ".join(names[:k]) + (f" ... (+{len(names) - k} more)" if len(names) > k else "")


def load_model(model_dir: Path, quantization_config: Mapping[str, Any] | None = None, *, dtype: str | None = None,
               device: str | None = None) -> Any:
    """Load a transformers VLM from ``model_dir`` (on the CPU, or ``device`` such as ``cuda``), quantized with
    ``quantization_config`` if given.

    ``dtype`` (``float16``, ``bfloat16``, ``float32``) sets the dtype of what stays unquantized; default: the
    checkpoint's own."""
    try:
        import transformers  # noqa: F401
        from transformers import AutoModelForImageTextToText, BitsAndBytesConfig
    except ImportError as exc:
        raise DependencyError("transformers is not installed", hint="pip install 'vqz-edge[export]'") from exc
    kwargs: dict[str, Any] = {}
    if dtype is not None:
        import torch

        if dtype not in ("float16", "bfloat16", "float32"):
            raise ValueError(f"dtype {dtype!r} not in ('float16', 'bfloat16', 'float32')")
        kwargs["dtype"] = getattr(torch, dtype)
    if quantization_config is not None:
        try:
            import bitsandbytes  # noqa: F401
        except ImportError as exc:
            raise DependencyError(
                "bitsandbytes is not installed; it is needed to load the model quantized",
                hint="pip install bitsandbytes accelerate (bitsandbytes >= 0.45 has a CPU backend)",
            ) from exc
        bnb_config: Any = BitsAndBytesConfig
        kwargs["quantization_config"] = bnb_config.from_dict(dict(quantization_config))
    if device is not None and device != "cpu":
        kwargs["device_map"] = device
    from transformers.utils import logging as hf_log_module

    hf_logging: Any = hf_log_module
    auto: Any = AutoModelForImageTextToText
    bars = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()  # the library does not draw on stderr; restored below
    try:
        model = auto.from_pretrained(str(model_dir), **kwargs)
    except (OSError, ValueError, RuntimeError, KeyError) as exc:
        raise ModelLoadError(f"cannot load the model in {model_dir}: {str(exc).splitlines()[0]}") from exc
    finally:
        if bars:
            hf_logging.enable_progress_bar()
    return model.eval()


def audit_directory(model_dir: Path, quantization_config: Path | None = None, *, dtype: str | None = None) -> AuditReport:
    """``vqz-edge vlm audit``: load ``model_dir`` (quantized with the given config) and audit it.

    The skip list checked is the given config's; without one, the ``quantization_config`` stored in the
    model's config.json (a pre-quantized checkpoint) if any.
    """
    model_dir = Path(model_dir)
    cfg = load_vlm_config(model_dir)  # a supported VLM, or a clear error naming the key
    qc = read_quantization_config(quantization_config) if quantization_config is not None else None
    model = load_model(model_dir, qc, dtype=dtype)
    skip: Sequence[str] | None = None
    if qc is not None:
        skip = qc.get("llm_int8_skip_modules") or []
    else:
        stored = cfg.raw.get("quantization_config")
        if isinstance(stored, Mapping) and stored.get("llm_int8_skip_modules") is not None:
            skip = list(stored["llm_int8_skip_modules"])
    return audit_model(model, skip, name=cfg.name, quantization_config=qc)


def require_pass(report: AuditReport) -> AuditReport:
    if report.ok:
        return report
    raise AuditFailed(
        f"quantization audit of {report.model} failed:\n  " + "\n  ".join(report.failures),
        hint="generate the skip list from the module tree: vqz-edge vlm export MODEL_DIR -o OUT "
        "(writes quantization_config.json with full module paths)",
    )
