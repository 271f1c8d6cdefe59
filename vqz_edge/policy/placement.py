"""Where QuantizeLinear/DequantizeLinear go: the placement rules, one per op pattern, TensorRT-fusion aware.

The precision plan says *which* layers run INT8; placement says *which inputs* of such a layer get a Q/DQ pair,
and which layers can run INT8 at all. Every stage that quantizes (the Q/DQ writer, the sensitivity units and
diagnostics, quantization-aware fine-tuning) reads this one module, so what is measured on the CPU is what the
engine builds. Rules, in the order they are tried for each node (docs/placement.md has the why and the
measurements):

``conv``
    Conv / ConvTranspose: Q/DQ on the activation input and per-channel on the weight. BatchNorm is folded at export;
    a following Relu/Clip/LeakyRelu fuses into the INT8 kernel (calibration skips the pre-activation tensor).
``linear``
    Gemm / MatMul with a weight (an initializer operand): Q/DQ on the activation and per-channel on the weight.
``gemv``
    A MatMul over one token per sample, ``(..., 1, K) x (K, C)`` (a head on a class token, a pooled ``keepdims``
    vector): one row per sample, so TensorRT runs it as a GEMV without tensor cores; INT8 buys no speed and costs
    accuracy, and NVIDIA Model Optimizer leaves such MatMuls unquantized. Kept in float (``PlacementOptions.gemv``).
    A rank-2 Gemm/MatMul ``(N, K)`` (a CNN classifier) is left to the ``linear`` rule: its rows are the batch, which
    the graph does not fix (the presets keep the final head FP32 anyway).
``attention``
    MatMul of two activations (attention Q.K^T and probabilities.V): Q/DQ on both inputs -- TensorRT's fused INT8
    MHA kernels read INT8 Q, K, V and INT8 post-softmax probabilities (``PlacementOptions.attention``).
``residual_add`` (``PlacementOptions.residual_add = "fusion"``, the default)
    An Add of two activations where one input comes from a Conv through ops TensorRT fuses into it (BatchNorm, bias
    Add, constant Mul, Relu/Clip/LeakyRelu, each with one consumer): TensorRT fuses the Add into that Conv's INT8
    kernel, which reads the *other* input -- the skip connection -- as INT8. So the skip input gets Q/DQ and the
    Conv-branch input none (a Q/DQ there would quantize the Conv's output twice and block the fusion). With a Conv
    on both inputs the branch with the longer path from their lowest common ancestor is the fused one (ResNet's
    downsample shortcut is the shorter). This is NVIDIA Model Optimizer's rule (its ``build_non_residual_input_map``
    names the fused input the "non-residual input" and removes its Q/DQ).
``float_add``
    An Add of two activations with no Conv branch -- a transformer's residual stream ``x + Attn(LN(x))``, an
    embedding sum -- gets no Q/DQ and stays FP16: TensorRT fuses it into the GEMM epilogue, and quantizing the
    residual stream (the tensor with the outlier channels) is what collapses ViTs under INT8.

``residual_add = "both"`` is the seed's placement (both inputs of every two-activation Add), kept for comparison;
``"none"`` keeps every Add in float.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import onnx
from onnx import helper

from ..errors import ModelLoadError

LINEAR_OPS = ("Conv", "ConvTranspose", "Gemm", "MatMul")
RESIDUAL_MODES = ("fusion", "both", "none")
GEMV_MODES = ("float", "int8")
PATTERNS = ("conv", "linear", "attention", "residual_add", "both_add")
# ops TensorRT fuses into a Conv on its output side (with a constant operand where binary)
_CONV_EPILOGUE = ("BatchNormalization", "Relu", "Clip", "LeakyRelu")
_CONST_BINARY = ("Add", "Mul")
_LCA_DEPTH = 512


@dataclass(frozen=True)
class PlacementOptions:
    residual_add: str = "fusion"
    attention: bool = True
    gemv: str = "float"

    def __post_init__(self) -> None:
        if self.residual_add not in RESIDUAL_MODES:
            raise ValueError(f"residual_add {self.residual_add!r} is not one of {list(RESIDUAL_MODES)}")
        if self.gemv not in GEMV_MODES:
            raise ValueError(f"gemv {self.gemv!r} is not one of {list(GEMV_MODES)}")

    def to_dict(self) -> dict[str, Any]:
        return dict(vars(self))


@dataclass(frozen=True)
class Site:
    """A node that can run INT8 and the inputs that get Q/DQ when it does."""

    node: str
    op_type: str
    pattern: str
    activations: tuple[int, ...]  # input indices of activation tensors (per-tensor Q/DQ)
    weights: tuple[tuple[int, int], ...]  # (input index, channel axis) of initializers (per-channel Q/DQ)


@dataclass(frozen=True)
class Placement:
    options: PlacementOptions
    sites: Mapping[str, Site]
    excluded: Mapping[str, tuple[str, str]] = field(default_factory=dict)  # node -> (pattern, why it stays float)

    def site(self, name: str) -> Site | None:
        return self.sites.get(name)

    def quantizable(self, name: str) -> bool:
        return name in self.sites

    def activation_inputs(self, node: onnx.NodeProto) -> list[str]:
        s = self.sites.get(node.name)
        return [] if s is None else [node.input[k] for k in s.activations]

    def weight_inputs(self, node: onnx.NodeProto) -> list[str]:
        s = self.sites.get(node.name)
        return [] if s is None else [node.input[k] for k, _ in s.weights]

    def counts(self) -> dict[str, int]:
        out: dict[str, int] = {}
        for s in self.sites.values():
            out[s.pattern] = out.get(s.pattern, 0) + 1
        for pattern, _ in self.excluded.values():
            out[pattern] = out.get(pattern, 0) + 1
        return dict(sorted(out.items()))

    def to_dict(self) -> dict[str, Any]:
        return {"options": self.options.to_dict(), "counts": self.counts(),
                "excluded": {k: {"pattern": p, "why": w} for k, (p, w) in sorted(self.excluded.items())}}


def weight_axis(node: onnx.NodeProto, input_index: int, rank: int) -> int:
    """The output-channel axis of a weight operand, for per-channel scales."""
    if node.op_type == "Conv":
        return 0
    if node.op_type == "ConvTranspose":
        return 1
    if node.op_type == "Gemm":
        attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
        if input_index == 1:
            return 0 if attrs.get("transB", 0) else 1
        return 1 if attrs.get("transA", 0) else 0
    if node.op_type == "MatMul":
        return rank - 1 if input_index == 1 else max(rank - 2, 0)
    raise ValueError(f"no weight axis for {node.op_type}")


class _Graph:
    def __init__(self, model: onnx.ModelProto) -> None:
        self.inits = {i.name: i for i in model.graph.initializer}
        self.constants = {o for n in model.graph.node if n.op_type == "Constant" for o in n.output}
        self.producer = {o: n for n in model.graph.node for o in n.output}
        self.consumers: dict[str, list[onnx.NodeProto]] = {}
        for n in model.graph.node:
            for i in n.input:
                self.consumers.setdefault(i, []).append(n)
        self.ranks = _activation_ranks(model)

    def const(self, name: str) -> bool:
        return name in self.inits or name in self.constants

    def conv_backbone(self, tensor: str) -> onnx.NodeProto | None:
        """The Conv whose output reaches ``tensor`` through ops TensorRT fuses into it, else None."""
        node: onnx.NodeProto | None = self.producer.get(tensor)
        for _ in range(6):
            if node is None:
                return None
            if node.op_type in ("Conv", "ConvTranspose"):
                return node
            if node.op_type in _CONV_EPILOGUE:
                src = node.input[0]
            elif node.op_type in _CONST_BINARY and len(node.input) == 2 and sum(self.const(i) for i in node.input) == 1:
                src = next(i for i in node.input if not self.const(i))
            else:
                return None
            if len(self.consumers.get(src, [])) != 1:  # the Conv's output is read elsewhere: not fusible
                return None
            node = self.producer.get(src)
        return None

    def ancestors(self, node: onnx.NodeProto) -> dict[str, int]:
        """Node name -> distance (in nodes) for ``node`` and everything upstream of it."""
        dist = {node.name: 0}
        queue = deque([node])
        while queue:
            cur = queue.popleft()
            if dist[cur.name] >= _LCA_DEPTH:
                continue
            for i in cur.input:
                p = self.producer.get(i)
                if p is not None and p.name not in dist:
                    dist[p.name] = dist[cur.name] + 1
                    queue.append(p)
        return dist


def _activation_ranks(model: onnx.ModelProto) -> dict[str, tuple[int | None, ...]]:
    """Static shapes (None for a symbolic dim) of every tensor shape inference can type."""
    stripped = onnx.ModelProto()
    stripped.CopyFrom(model)
    keep = []
    for init in stripped.graph.initializer:  # shapes only: big weights become typed inputs, small constants stay
        if int(np.prod(init.dims)) > 1024:
            stripped.graph.input.append(helper.make_tensor_value_info(init.name, init.data_type, list(init.dims)))
        else:
            keep.append(init)
    del stripped.graph.initializer[:]
    stripped.graph.initializer.extend(keep)
    try:
        inferred = onnx.shape_inference.infer_shapes(stripped)
    except Exception:  # noqa: BLE001 -- shape inference is advisory here: an untyped tensor just isn't a GEMV
        inferred = stripped
    out: dict[str, tuple[int | None, ...]] = {}
    for vi in [*inferred.graph.input, *inferred.graph.value_info, *inferred.graph.output]:
        t = vi.type.tensor_type
        if t.HasField("shape"):
            out[vi.name] = tuple(d.dim_value if d.HasField("dim_value") else None for d in t.shape.dim)
    return out


def _is_gemv(g: _Graph, node: onnx.NodeProto, activation: str) -> bool:
    """One token per sample: a MatMul whose activation is (..., 1, K)."""
    if node.op_type != "MatMul":
        return False
    shape = g.ranks.get(activation)
    return shape is not None and len(shape) >= 3 and shape[-2] == 1


def _add_site(g: _Graph, node: onnx.NodeProto, options: PlacementOptions) -> Site | tuple[str, str]:
    if options.residual_add == "both":
        return Site(node.name, node.op_type, "both_add", (0, 1), ())
    if options.residual_add == "none":
        return ("float_add", "placement residual_add='none': every Add stays in float")
    b0, b1 = g.conv_backbone(node.input[0]), g.conv_backbone(node.input[1])
    p0, p1 = g.producer.get(node.input[0]), g.producer.get(node.input[1])
    if (b0 is None and b1 is None) or p0 is None or p1 is None:
        return ("float_add", "Add of two activations without a Conv branch (residual stream / elementwise): no Q/DQ, "
                             "FP16 in the GEMM epilogue")
    if b0 is not None and b1 is not None and b0.name == b1.name:
        return ("float_add", f"both inputs come from {b0.name}: not a residual Add")
    a0, a1 = g.ancestors(p0), g.ancestors(p1)
    common = set(a0) & set(a1)
    lca = min(common, key=lambda n: (a0[n] + a1[n], n)) if common else None
    if b0 is not None and b1 is not None:
        fused = 0 if lca is not None and a0[lca] > a1[lca] else 1
        if lca is None:
            fused = 1
    else:
        backbone = b0 if b0 is not None else b1
        assert backbone is not None
        if lca is not None and lca == backbone.name:  # Conv -> (branch) -> Add <- Conv: ConvNeXt-like, no residual
            return ("float_add", f"both inputs branch from {backbone.name}: not a residual Add")
        fused = 0 if b0 is not None else 1
    return Site(node.name, node.op_type, "residual_add", (1 - fused,), ())


WEIGHT_OPERANDS = {"Conv": (1,), "ConvTranspose": (1,), "Gemm": (0, 1), "MatMul": (0, 1)}  # where place() takes weights


def constant_node_weights(model: onnx.ModelProto) -> list[str]:
    """Layers whose weight operand is the output of a ``Constant`` node, not an initializer (some Paddle and TF
    converters write them so). :func:`place` takes only initializers for weights: such a Conv would get no weight
    Q/DQ and such a MatMul would pass for an attention MatMul."""
    constants = {o for n in model.graph.node if n.op_type == "Constant" for o in n.output}
    return [n.name or f"{n.op_type}#{i}" for i, n in enumerate(model.graph.node)
            if any(k < len(n.input) and n.input[k] in constants for k in WEIGHT_OPERANDS.get(n.op_type, ()))]


def require_initializer_weights(model: onnx.ModelProto, where: str) -> None:
    """Raise ModelLoadError naming the layers whose weights are ``Constant`` nodes: calibrating them as they are
    would quantize their activations only and leave the weights float without saying so."""
    bad = constant_node_weights(model)
    if bad:
        raise ModelLoadError(
            f"{where}: {len(bad)} layer(s) take their weights from Constant nodes, not initializers "
            f"({', '.join(bad[:5])}{' ...' if len(bad) > 5 else ''}); their weights would not be quantized",
            hint=f"run `vqz-edge export {where} -o model.onnx` first (it turns Constant nodes into initializers, "
            "folds BatchNorm and verifies the result), then calibrate model.onnx",
        )


def place(model: onnx.ModelProto, options: PlacementOptions | None = None) -> Placement:
    """The placement of every node of ``model`` under ``options`` (default: the TensorRT-fusion rules)."""
    options = options or PlacementOptions()
    g = _Graph(model)
    sites: dict[str, Site] = {}
    excluded: dict[str, tuple[str, str]] = {}
    for node in model.graph.node:
        op = node.op_type
        acts: tuple[int, ...]
        weights: tuple[tuple[int, int], ...]
        if op in ("Conv", "ConvTranspose"):
            weights = ((1, weight_axis(node, 1, len(g.inits[node.input[1]].dims))),) \
                if len(node.input) > 1 and node.input[1] in g.inits else ()
            acts = (0,) if node.input[0] not in g.inits else ()
            sites[node.name] = Site(node.name, op, "conv", acts, weights)
        elif op in ("Gemm", "MatMul"):
            acts = tuple(k for k in range(2) if node.input[k] not in g.inits)
            weights = tuple((k, weight_axis(node, k, len(g.inits[node.input[k]].dims)))
                            for k in range(2) if node.input[k] in g.inits)
            if weights:
                if options.gemv == "float" and acts and _is_gemv(g, node, node.input[acts[0]]):
                    excluded[node.name] = ("gemv", "one row per sample: a GEMV at batch 1 (no tensor cores, no INT8 "
                                                   "speed-up); no Q/DQ")
                else:
                    sites[node.name] = Site(node.name, op, "linear", acts, weights)
            elif options.attention:
                sites[node.name] = Site(node.name, op, "attention", acts, ())
            else:
                excluded[node.name] = ("attention", "placement attention=False: activation x activation MatMul in float")
        elif op == "Add" and len(node.input) == 2 and all(i and not g.const(i) for i in node.input):
            decided = _add_site(g, node, options)
            if isinstance(decided, Site):
                sites[node.name] = decided
            else:
                excluded[node.name] = decided
    return Placement(options, sites, excluded)


__all__ = ["GEMV_MODES", "LINEAR_OPS", "PATTERNS", "RESIDUAL_MODES", "WEIGHT_OPERANDS", "Placement", "PlacementOptions",
           "Site", "constant_node_weights", "place", "require_initializer_weights",
           "weight_axis"]
