"""Preset rules that encode the seed's lessons, found structurally in the ONNX graph.

* every preset: the final head (the last quantizable layers before a graph output) stays FP32;
* ``vit``: Softmax and LayerNorm in FP32; the layers next to Softmax/GELU/LayerNorm (Q.K^T and attn.V
  matmuls, the FFN layer that consumes GELU, the projections and residual Adds that feed LayerNorm) and the
  attention Q/K projections stay FP16 -- Q/K are the most sensitive, the FFN up-projection the least;
* ``vlm-vision``: the vision encoder of a VLM and its connector are FP16 throughout (INT8 only where a
  rule asks and a fidelity report backs it; 4-bit is refused by the resolver).
Each preset rule is a node-exact PrecisionRule with a label saying why, so the plan records it.
"""

from __future__ import annotations

import re
from collections.abc import Iterable

import onnx

from ..spec import PrecisionRule
from ..vocab import PRESETS
from .graph import initializer_names
from .placement import Placement, place

QK_NAME = re.compile(r"(?:^|[/._])(query|key|q_proj|k_proj|to_q|to_k|wq|wk)(?:$|[/._])", re.IGNORECASE)


def _consumers(model: onnx.ModelProto) -> dict[str, list[onnx.NodeProto]]:
    out: dict[str, list[onnx.NodeProto]] = {}
    for node in model.graph.node:
        for name in node.input:
            out.setdefault(name, []).append(node)
    return out


def _producers(model: onnx.ModelProto) -> dict[str, onnx.NodeProto]:
    return {o: n for n in model.graph.node for o in n.output}


PASS_THROUGH = {"Reshape", "Transpose", "Flatten", "Squeeze", "Unsqueeze", "Identity", "Cast", "Slice", "Gather",
                "Concat", "Split", "GlobalAveragePool", "ReduceMean", "Relu", "Clip", "Sigmoid", "Softmax",
                "Add", "Mul", "Div", "Sub", "Tanh", "Gelu", "Erf", "LayerNormalization", "Pow", "Sqrt"}


def final_head(model: onnx.ModelProto, placement: Placement | None = None) -> list[str]:
    """Quantizable layers reached walking back from each graph output through non-quantizable nodes."""
    placement = placement or place(model)
    inits = initializer_names(model)
    producers = _producers(model)
    found: list[str] = []
    seen: set[str] = set()
    stack = [o.name for o in model.graph.output]
    while stack:
        tensor = stack.pop()
        node = producers.get(tensor)
        if node is None or node.name in seen:
            continue
        seen.add(node.name)
        if node.op_type in ("Conv", "ConvTranspose", "Gemm", "MatMul"):
            found.append(node.name)
            continue
        if placement.quantizable(node.name) or node.op_type in PASS_THROUGH:
            stack.extend(i for i in node.input if i and i not in inits)
    return sorted(found)


def gelu_outputs(model: onnx.ModelProto) -> list[str]:
    consumers = _consumers(model)
    outs = [n.output[0] for n in model.graph.node if n.op_type == "Gelu"]
    for node in model.graph.node:
        if node.op_type != "Erf":  # x * 0.5 * (1 + erf(x / sqrt 2)): follow to the last Mul
            continue
        cur = node
        for _ in range(3):
            nxt = consumers.get(cur.output[0], [])
            if len(nxt) != 1 or nxt[0].op_type not in ("Add", "Mul"):
                break
            cur = nxt[0]
        outs.append(cur.output[0])
    return outs


def _merges(node: onnx.NodeProto, inits: set[str]) -> bool:
    """An Add of two activations (a residual merge): the neighbourhood walks stop there, whether or not the
    placement quantizes it -- the layers beyond it are not the Softmax/GELU/LayerNorm's neighbours."""
    return node.op_type == "Add" and len(node.input) == 2 and all(i and i not in inits for i in node.input)


def _nearest_quantizable(model: onnx.ModelProto, start: Iterable[str], downstream: bool, inits: set[str],
                         placement: Placement) -> set[str]:
    consumers, producers = _consumers(model), _producers(model)
    hops = {"Reshape", "Transpose", "Flatten", "Squeeze", "Unsqueeze", "Identity", "Cast", "Div", "Mul", "Add"}
    found: set[str] = set()
    frontier = list(start)
    for _ in range(4):
        nxt: list[str] = []
        for tensor in frontier:
            nodes = consumers.get(tensor, []) if downstream else [p for p in [producers.get(tensor)] if p]
            for node in nodes:
                if node.op_type in ("Conv", "Gemm", "MatMul"):
                    found.add(node.name)
                elif node.op_type in hops and not placement.quantizable(node.name) and not _merges(node, inits):
                    nxt.extend(node.output if downstream else [i for i in node.input if i and i not in inits])
        frontier = nxt
    return found


def _residual_adds_into(model: onnx.ModelProto, tensors: Iterable[str], placement: Placement) -> set[str]:
    """Quantizable residual Adds that produce ``tensors`` (directly or through shape-only ops). The default
    placement (vqz_edge.policy.placement) already keeps a transformer's residual Adds out of INT8; this pins them
    under placement residual_add='both'. In transformers
    they carry the residual stream -- the tensor with the large outlier channels -- into a LayerNorm; measured on
    all-MiniLM-L6-v2 they are its most INT8-sensitive layers (see docs/sensitivity.md)."""
    producers = _producers(model)
    hops = {"Reshape", "Transpose", "Identity", "Cast", "Squeeze", "Unsqueeze"}
    found: set[str] = set()
    for tensor in tensors:
        node = producers.get(tensor)
        while node is not None and node.op_type in hops:
            node = producers.get(node.input[0])
        if node is not None and node.op_type == "Add" and placement.quantizable(node.name):
            found.add(node.name)
    return found


def transformer_sensitive(model: onnx.ModelProto, placement: Placement | None = None) -> dict[str, tuple[str, str]]:
    """node name -> (precision, why) for the vit preset."""
    placement = placement or place(model)
    inits = initializer_names(model)
    out: dict[str, tuple[str, str]] = {}
    for node in model.graph.node:
        if node.op_type == "Softmax":
            out[node.name] = ("fp32", "preset vit: Softmax in FP32 (post-softmax values are twin-peaked)")
        elif node.op_type == "LayerNormalization":
            out[node.name] = ("fp32", "preset vit: LayerNorm in FP32")
    softmax_out = [n.output[0] for n in model.graph.node if n.op_type == "Softmax"]
    softmax_in = [n.input[0] for n in model.graph.node if n.op_type == "Softmax"]
    ln_in = [n.input[0] for n in model.graph.node if n.op_type == "LayerNormalization"]
    for name in _nearest_quantizable(model, softmax_out, True, inits, placement):
        out.setdefault(name, ("fp16", "preset vit: attn.V matmul consumes softmax output"))
    qk = _nearest_quantizable(model, softmax_in, False, inits, placement)
    for name in qk:
        out.setdefault(name, ("fp16", "preset vit: Q.K^T matmul feeds softmax"))
    for name in _nearest_quantizable(model, gelu_outputs(model), True, inits, placement):
        out.setdefault(name, ("fp16", "preset vit: consumes GELU output (twin-peaked)"))
    for name in _nearest_quantizable(model, ln_in, False, inits, placement):
        out.setdefault(name, ("fp16", "preset vit: feeds LayerNorm"))
    for name in _residual_adds_into(model, ln_in, placement):
        out.setdefault(name, ("fp16", "preset vit: residual Add feeds LayerNorm (outliers of the residual stream)"))
    # Q/K projections: by name (HF ViT query/key, CLIP/SigLIP q_proj/k_proj), else the matmuls feeding Q.K^T
    producers = _producers(model)
    for node in model.graph.node:
        if node.op_type in ("MatMul", "Gemm") and QK_NAME.search(node.name):
            out.setdefault(node.name, ("fp16", "preset vit: attention Q/K projection (most sensitive)"))
    for name in qk:
        qk_node = next(n for n in model.graph.node if n.name == name)
        for proj in _nearest_quantizable(model, [i for i in qk_node.input if i in producers], False, inits, placement):
            out.setdefault(proj, ("fp16", "preset vit: attention Q/K projection (most sensitive)"))
    return out


def preset_rules(model: onnx.ModelProto, preset: str,
                 placement: Placement | None = None) -> list[tuple[str, PrecisionRule]]:
    if preset not in PRESETS:
        raise ValueError(f"unknown precision preset {preset!r}; choose one of {list(PRESETS)}")
    rules: list[tuple[str, PrecisionRule]] = []
    if preset == "none":
        return rules
    if preset == "vlm-vision":
        rules.append(("preset vlm-vision: vision encoder of a VLM stays FP16",
                      PrecisionRule(precision="fp16", regex=".*")))
    if preset == "vit":
        placement = placement or place(model)
        for name, (precision, why) in sorted(transformer_sensitive(model, placement).items()):
            rules.append((why, PrecisionRule(precision=precision, node=name)))
    for name in final_head(model, placement):
        rules.append((f"preset {preset}: final head stays FP32", PrecisionRule(precision="fp32", node=name)))
    return rules
