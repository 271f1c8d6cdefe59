"""The resolved precision plan: the single description that the Q/DQ writer, the TensorRT builder,
bundles and reports all consume.

JSON form (``plan.json``)::

    {"version": 1, "model": "mobilenet_v2", "onnx_sha256": "...",
     "layers": [{"name": "/features/features.0/features.0.0/Conv", "op_type": "Conv",
                 "precision": "int8", "rule": "default", "quantizable": true}, ...]}

``name`` is the ONNX node name, which TensorRT's ONNX parser uses as the layer name.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from ..vocab import LAYER_PRECISIONS

PLAN_VERSION = 1


@dataclass(frozen=True)
class LayerDecision:
    name: str
    op_type: str
    precision: str
    rule: str
    quantizable: bool

    def __post_init__(self) -> None:
        if self.precision not in LAYER_PRECISIONS:
            raise ValueError(f"layer {self.name!r}: precision {self.precision!r} not in {LAYER_PRECISIONS}")
        if self.precision == "int8" and not self.quantizable:
            raise ValueError(f"layer {self.name!r} ({self.op_type}) has no INT8 implementation to ask for")

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "op_type": self.op_type,
            "precision": self.precision,
            "rule": self.rule,
            "quantizable": self.quantizable,
        }


@dataclass(frozen=True)
class ResolvedPlan:
    model: str
    onnx_sha256: str
    layers: tuple[LayerDecision, ...]
    version: int = PLAN_VERSION

    def __post_init__(self) -> None:
        if self.version != PLAN_VERSION:
            raise ValueError(f"plan version {self.version} is not supported (expected {PLAN_VERSION})")
        names = [layer.name for layer in self.layers]
        if len(set(names)) != len(names):
            raise ValueError("plan has duplicate layer names")

    def precision_of(self, name: str) -> str | None:
        for layer in self.layers:
            if layer.name == name:
                return layer.precision
        return None

    def by_precision(self, precision: str) -> list[LayerDecision]:
        return [layer for layer in self.layers if layer.precision == precision]

    def kept_high(self) -> list[LayerDecision]:
        """Layers that get TensorRT precision constraints: quantizable layers kept above INT8 (FP16/FP32),
        and any layer pinned to FP32 (e.g. a Softmax or the final head)."""
        return [
            layer
            for layer in self.layers
            if (layer.quantizable and layer.precision != "int8") or layer.precision == "fp32"
        ]

    def int8_layers(self) -> list[LayerDecision]:
        return [layer for layer in self.layers if layer.precision == "int8"]

    def to_dict(self) -> dict[str, Any]:
        return {
            "version": self.version,
            "model": self.model,
            "onnx_sha256": self.onnx_sha256,
            "layers": [layer.to_dict() for layer in self.layers],
        }

    @classmethod
    def from_dict(cls, doc: Mapping[str, Any]) -> ResolvedPlan:
        layers: Iterable[Mapping[str, Any]] = doc.get("layers", [])
        return cls(
            model=str(doc["model"]),
            onnx_sha256=str(doc["onnx_sha256"]),
            layers=tuple(
                LayerDecision(str(x["name"]), str(x["op_type"]), str(x["precision"]), str(x["rule"]), bool(x["quantizable"]))
                for x in layers
            ),
            version=int(doc.get("version", PLAN_VERSION)),
        )
