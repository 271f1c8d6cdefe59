"""What precision each layer of a built engine actually runs in, checked against the plan.

Input: the JSON from ``IEngineInspector.get_engine_information(LayerInformationFormat.JSON)`` of an
engine built with ``ProfilingVerbosity.DETAILED``::

    {"Layers": [{"Name": "/f/Conv + /f/Clip", "LayerType": "CaskConvolution",
                 "Inputs": [{"Name": "...", "Format/Datatype": "Thirty-two wide channel vectorized row major Int8 format"}],
                 "Outputs": [...], "Metadata": "[ONNX Layer: /f/Conv]\\x1f[ONNX Layer: /f/Clip]", ...}, ...],
     "Bindings": ["input", "output"]}

An engine layer's precision is its first input's data type (the convention of NVIDIA's TensorRT
Engine Explorer, trex). Layers map back to ONNX nodes through "Metadata" (TensorRT 8.6+) or, failing
that, the " + "-joined fused layer name. In a fused layer only the first plan node's precision is
visible (the input type), and the last one's (the output type); nodes in between are not observable
and are reported as such rather than guessed. Pure Python: no tensorrt import; tested with fixture JSON.
"""

from __future__ import annotations

import json
import re
from collections.abc import Collection, Mapping
from dataclasses import dataclass
from typing import Any

from ..artifacts.plan import ResolvedPlan
from ..errors import EngineBuildError
from .constraints import expected_precision, onnx_nodes_from_metadata

_RANK = {"int8": 0, "fp16": 1, "fp32": 2}
# Data movement, not arithmetic: a reformat feeding an FP32 layer has an INT8 input by design.
_NOT_COMPUTE = ("reformat", "noop", "signal", "wait")
_PROFILE_RE = re.compile(r"\[profile (\d+)\]")


def precision_of_format(desc: str) -> str | None:
    """'Row major linear FP32' -> 'fp32'; 'Channel major FP16 format ...' / 'Half' -> 'fp16';
    '... Int8 format' / 'Int8' -> 'int8'; other data types -> their lowercase name; '' -> None."""
    d = desc.lower()
    for needle, name in (
        ("bfloat16", "bf16"), ("fp8", "fp8"), ("uint8", "uint8"), ("int8", "int8"), ("int32", "int32"),
        ("int64", "int64"), ("bool", "bool"), ("fp16", "fp16"), ("half", "fp16"), ("fp32", "fp32"),
        ("float", "fp32"),
    ):
        if needle in d:
            return name
    return None


@dataclass(frozen=True)
class EngineLayer:
    name: str
    type: str
    precision: str | None  # data type of the first input
    onnx_nodes: tuple[str, ...]
    output_precision: str | None = None  # data type of the first output


def _first_format(tensors: Any) -> str | None:
    first = tensors[0] if isinstance(tensors, list) and tensors and isinstance(tensors[0], Mapping) else {}
    return precision_of_format(str(first.get("Format/Datatype", "")))


def _nodes_from_name(name: str) -> tuple[str, ...]:
    """'/a/Conv + /a/Clip' -> ('/a/Conv', '/a/Clip'); 'PWN(/b/Add, /b/Relu)' -> ('/b/Add', '/b/Relu')."""
    parts: list[str] = []
    for part in name.split(" + "):
        part = part.strip()
        if part.startswith("PWN(") and part.endswith(")"):
            parts.extend(p.strip() for p in part[4:-1].split(","))
        else:
            parts.append(part)
    return tuple(p for p in parts if p)


def parse_engine_info(text: str) -> list[EngineLayer]:
    """Parse the inspector's JSON into plain EngineLayer records: first optimisation profile only,
    compute layers only (reformats and no-ops move data; their input type says nothing)."""
    try:
        doc = json.loads(text)
    except json.JSONDecodeError as exc:
        raise EngineBuildError(f"engine inspector output is not JSON: {exc}") from exc
    raw = doc.get("Layers") if isinstance(doc, Mapping) else None
    if not isinstance(raw, list):
        raise EngineBuildError("engine inspector JSON has no 'Layers' list")
    layers: list[EngineLayer] = []
    unreadable: list[str] = []
    for entry in raw:
        if not isinstance(entry, Mapping):
            raise EngineBuildError(
                "engine inspector lists layer names only; the engine must be built with "
                "ProfilingVerbosity.DETAILED to report precisions"
            )
        name = str(entry.get("Name", ""))
        profile = _PROFILE_RE.search(name)
        if profile and profile.group(1) != "0":
            continue
        layer_type = str(entry.get("LayerType", ""))
        if layer_type.lower() in _NOT_COMPUTE or name.startswith("Reformatting CopyNode"):
            continue
        nodes = onnx_nodes_from_metadata(str(entry.get("Metadata", ""))) or _nodes_from_name(name)
        precision = _first_format(entry.get("Inputs"))
        if precision is None and entry.get("Inputs"):
            unreadable.append(name)
        layers.append(EngineLayer(name, layer_type, precision, nodes, _first_format(entry.get("Outputs"))))
    if unreadable or not layers:
        what = (f"gives no data type for {len(unreadable)} layer(s) (first: {unreadable[0]!r}; the 'Format/Datatype' "
                "field of its inputs is missing or unknown)" if unreadable else "lists no compute layer")
        raise EngineBuildError(
            f"the engine inspector's JSON {what}: its schema may differ in this TensorRT version, so the precisions "
            "the engine runs cannot be checked against the plan; the engine was not written",
            hint="report the TensorRT version; --mode fp16 builds are checked the same way",
        )
    return layers


@dataclass(frozen=True)
class LayerPrecision:
    name: str  # ONNX node (plan layer)
    planned: str  # what this build should run it in (the plan's precision; INT8 -> FP16 for fp16 builds)
    actual: str | None  # lowest precision seen in the engine layers implementing it; None: not found/observable
    engine_layers: tuple[str, ...]


@dataclass(frozen=True)
class PrecisionReport:
    layers: tuple[LayerPrecision, ...]

    @property
    def violations(self) -> list[LayerPrecision]:
        """Planned FP16/FP32, runs INT8: the accuracy the plan protects is gone. Fails the build."""
        return [x for x in self.layers if x.planned != "int8" and x.actual == "int8"]

    @property
    def stayed_high(self) -> list[LayerPrecision]:
        """Planned INT8, runs FP16/FP32 (no INT8 kernel, missing scale, or TensorRT found it faster)."""
        return [x for x in self.layers if x.planned == "int8" and x.actual in ("fp16", "fp32")]

    @property
    def overridden(self) -> list[LayerPrecision]:
        """Planned FP16 runs FP32 or planned FP32 runs FP16 (PREFER_PRECISION_CONSTRAINTS overrides,
        or strong typing)."""
        return [x for x in self.layers if x.planned in ("fp16", "fp32") and x.actual in ("fp16", "fp32")
                and x.actual != x.planned]

    @property
    def not_found(self) -> list[str]:
        """Plan layers with no engine layer (folded away) or only fused mid-layer (not observable)."""
        return [x.name for x in self.layers if x.actual is None]

    def manifest_layers(self) -> list[dict[str, str | None]]:
        return [{"name": x.name, "precision": x.actual, "planned": x.planned} for x in self.layers]

    def summary(self) -> dict[str, int]:
        counts: dict[str, int] = {}
        for x in self.layers:
            key = x.actual or "not-found"
            counts[key] = counts.get(key, 0) + 1
        return counts


def observed_precisions(layer: EngineLayer, plan_nodes: Collection[str]) -> dict[str, str | None]:
    """Plan node -> precision observable in one engine layer. Nodes not in the plan (Q/DQ nodes of the
    explicit model) are ignored; the first plan node ran at the input's type, the last at the output's;
    nodes fused in between cannot be seen (None)."""
    nodes = [n for n in layer.onnx_nodes if n in plan_nodes]
    out: dict[str, str | None] = dict.fromkeys(nodes[1:-1])
    if nodes:
        out[nodes[0]] = layer.precision
    if len(nodes) > 1:
        out[nodes[-1]] = layer.output_precision
    return out


def compare_with_plan(engine_layers: list[EngineLayer], plan: ResolvedPlan, mode: str) -> PrecisionReport:
    """What each plan layer whose precision matters actually runs in: every quantizable layer and every
    layer pinned to FP32 (the plan's ``kept_high()`` set plus the INT8 ones)."""
    plan_nodes = {d.name for d in plan.layers}
    seen: dict[str, list[tuple[str, str | None]]] = {}
    for layer in engine_layers:
        for node, precision in observed_precisions(layer, plan_nodes).items():
            seen.setdefault(node, []).append((layer.name, precision))
    out: list[LayerPrecision] = []
    for decision in plan.layers:
        if not (decision.quantizable or decision.precision == "fp32"):
            continue
        impl = seen.get(decision.name, [])
        found = [p for _, p in impl if p is not None and p in _RANK]
        actual = min(found, key=lambda p: _RANK[p]) if found else None
        out.append(LayerPrecision(decision.name, expected_precision(decision.precision, mode), actual,
                                  tuple(name for name, _ in impl)))
    return PrecisionReport(tuple(out))


def check_report(report: PrecisionReport) -> None:
    """Raise when a layer the plan keeps in FP16/FP32 runs INT8."""
    bad = report.violations
    if bad:
        lines = "\n".join(f"    {x.name}: planned {x.planned}, runs int8 (engine layer {', '.join(x.engine_layers)})"
                          for x in bad[:20])
        raise EngineBuildError(
            f"{len(bad)} layer(s) the plan keeps above INT8 run in INT8; the engine was not written:\n{lines}",
            hint="use --precision-constraints obey (the default), and check that model.qdq.onnx has no "
            "Q/DQ on these layers (re-run `vqz-edge calibrate` with the current plan)",
        )
