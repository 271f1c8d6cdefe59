"""onnx-graphsurgeon passes that remove BatchNormalization from inference graphs.

Each pass is a small function ``graph -> graph`` that mutates and returns the graph, so they chain:

    graph = fold_constants(graph)
    graph = fold_batchnorm(graph, report)
    graph = batchnorm_to_affine(graph, report)
    graph = cleanup(graph)

They serve our own torch exports and ONNX files made by other exporters (Paddle, TF, older torch):
BatchNormalization after Conv / ConvTranspose / Gemm / MatMul with constant weights is folded into
the weights; any other BatchNormalization becomes Mul + Add of constants (TensorRT then fuses it as a
scale layer). Arithmetic is done in float64 and cast back to the weight's dtype.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import onnx
import onnx_graphsurgeon as gs

from ..errors import ExportError
from ..log import get_logger

_log = get_logger(__name__)


@dataclass
class PassReport:
    folded: Counter[str] = field(default_factory=Counter)  # producer op_type -> count
    affine: int = 0  # stand-alone BN rewritten as Mul+Add
    left: list[str] = field(default_factory=list)  # BN nodes no pass could remove, with the reason

    def to_dict(self) -> dict[str, Any]:
        return {"folded_into": dict(sorted(self.folded.items())), "rewritten_as_mul_add": self.affine, "left": self.left}


def _const(t: Any) -> np.ndarray | None:
    return np.asarray(t.values) if isinstance(t, gs.Constant) else None


def _bn_params(bn: gs.Node) -> tuple[np.ndarray, np.ndarray] | None:
    """Per-channel (scale, shift) with y = x * scale + shift, or None when a parameter is not constant."""
    if len(bn.inputs) < 5:
        return None
    vals = [_const(t) for t in bn.inputs[1:5]]
    if any(v is None for v in vals):
        return None
    gamma, beta, mean, var = (np.asarray(v, np.float64).reshape(-1) for v in vals)
    eps = float(bn.attrs.get("epsilon", 1e-5))
    scale = gamma / np.sqrt(var + eps)
    return scale, beta - mean * scale


def _bn_is_inference(bn: gs.Node) -> bool:
    if int(bn.attrs.get("training_mode", 0)) != 0:
        return False
    # Opset <14 BN may declare running-stat outputs; only the first may be used.
    return all(not o.outputs for o in bn.outputs[1:])


def _rank(t: gs.Tensor) -> int | None:
    return None if t.shape is None else len(t.shape)


def _new_const(graph_names: set[str], base: str, values: np.ndarray) -> gs.Constant:
    name, i = base, 1
    while name in graph_names:
        name, i = f"{base}_{i}", i + 1
    graph_names.add(name)
    return gs.Constant(name, np.ascontiguousarray(values))


def _fold_into(prod: gs.Node, scale: np.ndarray, shift: np.ndarray, names: set[str], graph: gs.Graph) -> bool:
    """Scale ``prod``'s weights per output channel and add ``shift`` to its bias. False if not foldable."""
    op = prod.op
    if op in ("Conv", "ConvTranspose"):
        w = _const(prod.inputs[1]) if len(prod.inputs) > 1 else None
        if w is None or w.ndim < 3:
            return False
        group = int(prod.attrs.get("group", 1))
        if op == "Conv":
            cout = w.shape[0]
            if cout != scale.size:
                return False
            w2 = w.astype(np.float64) * scale.reshape((-1,) + (1,) * (w.ndim - 1))
        else:  # ConvTranspose weight: (Cin, Cout/group, k...), output channel = g * Cout/group + j
            cout = w.shape[1] * group
            if cout != scale.size or w.shape[0] % group:
                return False
            wg = w.astype(np.float64).reshape((group, w.shape[0] // group) + w.shape[1:])
            wg = wg * scale.reshape((group, 1, w.shape[1]) + (1,) * (w.ndim - 2))
            w2 = wg.reshape(w.shape)
        b = _const(prod.inputs[2]) if len(prod.inputs) > 2 and not prod.inputs[2].is_empty() else None
        if len(prod.inputs) > 2 and not prod.inputs[2].is_empty() and b is None:
            return False
        b64 = np.zeros(cout) if b is None else b.astype(np.float64).reshape(-1)
        dtype = w.dtype
        prod.inputs[1] = _new_const(names, f"{prod.inputs[1].name}_bnfold", w2.astype(dtype))
        bias = _new_const(names, f"{prod.name or op}_bias_bnfold", (b64 * scale + shift).astype(dtype))
        if len(prod.inputs) > 2:
            prod.inputs[2] = bias
        else:
            prod.inputs.append(bias)
        return True

    if op == "Gemm":
        if int(prod.attrs.get("transA", 0)) not in (0, 1):
            return False
        w = _const(prod.inputs[1])
        if w is None or w.ndim != 2:
            return False
        trans_b = int(prod.attrs.get("transB", 0))
        n = w.shape[0] if trans_b else w.shape[1]
        if n != scale.size:
            return False
        alpha = float(prod.attrs.get("alpha", 1.0))
        beta = float(prod.attrs.get("beta", 1.0))
        c = None
        if len(prod.inputs) > 2 and not prod.inputs[2].is_empty():
            c = _const(prod.inputs[2])
            if c is None:
                return False
        w64 = w.astype(np.float64) * (scale[:, None] if trans_b else scale[None, :])
        c64 = np.zeros(n) if c is None else beta * c.astype(np.float64)
        c_new = c64 * scale + shift  # broadcasts over the last (N) axis, also for (M, N) or scalar C
        dtype = w.dtype
        prod.inputs[1] = _new_const(names, f"{prod.inputs[1].name}_bnfold", (w64).astype(dtype))
        cconst = _new_const(names, f"{prod.name or op}_bias_bnfold", np.asarray(c_new).astype(dtype))
        if len(prod.inputs) > 2:
            prod.inputs[2] = cconst
        else:
            prod.inputs.append(cconst)
        prod.attrs["alpha"] = alpha
        prod.attrs["beta"] = 1.0
        return True

    if op == "MatMul":
        w = _const(prod.inputs[1])
        # BN normalises axis 1; that is MatMul's output column axis only for rank-2 outputs.
        if w is None or w.ndim != 2 or w.shape[1] != scale.size:
            return False
        a_rank = _rank(prod.inputs[0])
        if a_rank != 2:
            return False
        dtype = w.dtype
        prod.inputs[1] = _new_const(names, f"{prod.inputs[1].name}_bnfold", (w.astype(np.float64) * scale[None, :]).astype(dtype))
        mm_out = prod.outputs[0]
        mid = gs.Variable(f"{mm_out.name}_prebias", dtype=mm_out.dtype, shape=mm_out.shape)
        prod.outputs[0] = mid
        bias = _new_const(names, f"{prod.name or op}_bias_bnfold", shift.astype(dtype))
        graph.nodes.append(gs.Node("Add", name=f"{prod.name or 'MatMul'}/bias_bnfold", inputs=[mid, bias], outputs=[mm_out]))
        return True
    return False


def _all_names(graph: gs.Graph) -> set[str]:
    return set(graph.tensors().keys()) | {n.name for n in graph.nodes if n.name}


def fold_batchnorm(graph: gs.Graph, report: PassReport | None = None) -> gs.Graph:
    """Fold BatchNormalization into a preceding Conv/ConvTranspose/Gemm/MatMul with constant weights."""
    report = report if report is not None else PassReport()
    names = _all_names(graph)
    for bn in [n for n in graph.nodes if n.op == "BatchNormalization"]:
        if not _bn_is_inference(bn):
            continue
        params = _bn_params(bn)
        x = bn.inputs[0]
        if params is None or len(x.inputs) != 1 or len(x.outputs) != 1 or x in graph.outputs:
            continue
        prod = x.inputs[0]
        if prod.op not in ("Conv", "ConvTranspose", "Gemm", "MatMul") or len(prod.outputs) != 1:
            continue
        if not _fold_into(prod, *params, names, graph):
            continue
        # The producer takes over BN's output tensor, so every downstream name stays valid.
        out = bn.outputs[0]
        if prod.op == "MatMul":
            add = next(n for n in graph.nodes if n.outputs and n.outputs[0] is x)
            add.outputs[0] = out
        else:
            prod.outputs[0] = out
        bn.inputs.clear()
        bn.outputs.clear()
        report.folded[prod.op] += 1
        _log.debug("folded %s into %s %s", bn.name, prod.op, prod.name)
    return graph


def batchnorm_to_affine(graph: gs.Graph, report: PassReport | None = None) -> gs.Graph:
    """Rewrite every remaining inference BatchNormalization as Mul + Add with per-channel constants."""
    report = report if report is not None else PassReport()
    names = _all_names(graph)
    for bn in [n for n in graph.nodes if n.op == "BatchNormalization" and n.outputs]:
        label = bn.name or bn.outputs[0].name
        if not _bn_is_inference(bn):
            report.left.append(f"{label}: training_mode BatchNormalization (export the model in eval mode)")
            continue
        params = _bn_params(bn)
        if params is None:
            report.left.append(f"{label}: scale/bias/mean/var are not constants")
            continue
        x, out = bn.inputs[0], bn.outputs[0]
        rank = _rank(x) or _rank(out)
        if rank is None or rank < 2:
            report.left.append(f"{label}: input rank unknown, cannot place the channel axis")
            continue
        scale, shift = params
        dtype = x.dtype if x.dtype is not None else np.float32
        shape = (-1,) + (1,) * (rank - 2)
        s = _new_const(names, f"{label}_scale", scale.reshape(shape).astype(dtype))
        b = _new_const(names, f"{label}_shift", shift.reshape(shape).astype(dtype))
        mid = gs.Variable(f"{out.name}_scaled", dtype=out.dtype, shape=out.shape)
        graph.nodes.append(gs.Node("Mul", name=f"{label}/scale", inputs=[x, s], outputs=[mid]))
        graph.nodes.append(gs.Node("Add", name=f"{label}/shift", inputs=[mid, b], outputs=[out]))
        bn.inputs.clear()
        bn.outputs.clear()
        report.affine += 1
    return graph


def name_unnamed_nodes(graph: gs.Graph) -> gs.Graph:
    """Give every node a stable, unique name: precision rules and TensorRT layer names rely on them."""
    seen: Counter[str] = Counter()
    used = {n.name for n in graph.nodes if n.name}
    for node in graph.nodes:
        if node.name:
            continue
        base = f"{node.op}_{node.outputs[0].name}" if node.outputs else node.op
        name = base
        while name in used:
            seen[base] += 1
            name = f"{base}_{seen[base]}"
        node.name = name
        used.add(name)
    return graph


def fold_constants(graph: gs.Graph) -> gs.Graph:
    """Evaluate constant subgraphs (Constant nodes, shape arithmetic) with ONNX Runtime."""
    try:
        graph.fold_constants(error_ok=False)
    except Exception as exc:  # graphsurgeon re-raises ORT's untyped errors
        raise ExportError(f"constant folding failed: {exc}") from exc
    return graph


def cleanup(graph: gs.Graph) -> gs.Graph:
    return graph.cleanup(remove_unused_graph_inputs=False).toposort()


def remove_batchnorm(model: onnx.ModelProto, *, constant_folding: bool = True) -> tuple[onnx.ModelProto, PassReport]:
    """The whole chain on a ModelProto. Returns the new model and what was done."""
    report = PassReport()
    try:
        inferred = onnx.shape_inference.infer_shapes(model, data_prop=True)
    except Exception:  # noqa: BLE001 -- shape inference is best effort; ranks then come from value_info
        _log.debug("ONNX shape inference failed; continuing without inferred shapes")
        inferred = model
    graph = gs.import_onnx(inferred)
    if constant_folding:
        graph = fold_constants(graph)
    graph = cleanup(fold_batchnorm(graph, report))
    graph = cleanup(batchnorm_to_affine(graph, report))
    if constant_folding:
        graph = cleanup(fold_constants(graph))
    graph = name_unnamed_nodes(graph)
    out = gs.export_onnx(graph, do_type_check=True)
    out.ir_version = model.ir_version
    del out.opset_import[:]
    out.opset_import.extend(model.opset_import)
    out.producer_name = "vqz-edge"
    # keep only value_info for graph I/O; stale intermediate shapes from inference are dropped
    del out.graph.value_info[:]
    for prop in model.metadata_props:
        out.metadata_props.append(prop)
    return out, report
