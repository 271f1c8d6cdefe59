"""Loading ONNX files with clear errors, and describing their inputs/outputs."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import onnx
from onnx import numpy_helper

from .errors import InputError, ModelLoadError, SpecError, require_file

if TYPE_CHECKING:
    from .spec import InputSpec


@dataclass(frozen=True)
class TensorInfo:
    name: str
    shape: tuple[int | str, ...]  # str for symbolic / unknown dims
    dtype: str

    def to_dict(self) -> dict[str, object]:
        return {"name": self.name, "shape": list(self.shape), "dtype": self.dtype}


def load_model(path: Path | str) -> onnx.ModelProto:
    path = Path(path)
    require_file(path, "ONNX file", error=ModelLoadError)
    try:
        model = onnx.load(str(path))
    except Exception as exc:  # protobuf raises DecodeError and friends, with no common base we can name
        raise ModelLoadError(
            f"{path} is not a readable ONNX model ({type(exc).__name__}: {exc})",
            hint="the file may be truncated or not ONNX; export it again",
        ) from exc
    if not model.graph.node:
        raise ModelLoadError(f"{path} holds an ONNX model with an empty graph", hint="the file may be truncated")
    try:
        onnx.checker.check_model(model)
    except onnx.checker.ValidationError as exc:
        raise ModelLoadError(f"{path} fails onnx.checker: {str(exc).splitlines()[0]}") from exc
    return model


def _dims(vi: onnx.ValueInfoProto) -> tuple[int | str, ...]:
    """Fixed dims as ints; every dynamic one as a string: a named dim ('batch'), an unnamed one ('?'), and the
    dim_value -1 or 0 that Paddle and some TF converters write for "any size" ('-1', '0')."""
    dims: list[int | str] = []
    for d in vi.type.tensor_type.shape.dim:
        if d.HasField("dim_value") and d.dim_value > 0:
            dims.append(int(d.dim_value))
        elif d.HasField("dim_value"):
            dims.append(str(d.dim_value))
        else:
            dims.append(d.dim_param or "?")
    return tuple(dims)


def params_for_unset_dims(model: onnx.ModelProto) -> list[str]:
    """Rewrite, in place, the graph inputs' and outputs' dim_value -1 / 0 (how Paddle and some TF converters write
    "any size") as named dynamic dims ('<tensor>_dim<i>'): ONNX Runtime would take 0 literally, TensorRT refuses
    both. Returns one note per rewritten dim."""
    notes = []
    for vi in [*model.graph.input, *model.graph.output]:
        for i, d in enumerate(vi.type.tensor_type.shape.dim):
            if d.HasField("dim_value") and d.dim_value <= 0:
                old = d.dim_value
                d.dim_param = f"{vi.name}_dim{i}"
                notes.append(f"{vi.name} dim {i}: dim_value {old} written as the dynamic dim {d.dim_param!r}")
    return notes


def fill_dynamic(info: TensorInfo, shape: Sequence[int] | None, what: str = "--input-shape") -> TensorInfo:
    """``info`` with its dynamic dims filled from ``shape`` (fixed dims must agree; InputError naming both)."""
    if shape is None:
        return info
    if len(shape) != len(info.shape):
        raise InputError(f"{what} {'x'.join(map(str, shape))} has rank {len(shape)} but model input {info.name!r} "
                         f"has rank {len(info.shape)} (shape {list(info.shape)})")
    for i, (want, have) in enumerate(zip(shape, info.shape)):
        if isinstance(have, int) and have != want:
            raise InputError(f"{what} {'x'.join(map(str, shape))} does not match model input {info.name!r} shape "
                             f"{list(info.shape)} at dim {i} ({want} != {have})")
    return TensorInfo(info.name, tuple(int(d) for d in shape), info.dtype)


def graph_inputs(model: onnx.ModelProto) -> list[TensorInfo]:
    inits = {i.name for i in model.graph.initializer}
    return [
        TensorInfo(vi.name, _dims(vi), onnx.helper.tensor_dtype_to_np_dtype(vi.type.tensor_type.elem_type).name)
        for vi in model.graph.input
        if vi.name not in inits
    ]


def graph_outputs(model: onnx.ModelProto) -> list[TensorInfo]:
    return [
        TensorInfo(vi.name, _dims(vi), onnx.helper.tensor_dtype_to_np_dtype(vi.type.tensor_type.elem_type).name)
        for vi in model.graph.output
    ]


def opset_of(model: onnx.ModelProto) -> int:
    for imp in model.opset_import:
        if imp.domain in ("", "ai.onnx"):
            return int(imp.version)
    return 0


def count_ops(model: onnx.ModelProto, op_type: str) -> int:
    return sum(1 for n in model.graph.node if n.op_type == op_type)


def _weight_tensors(model: onnx.ModelProto) -> list[onnx.TensorProto]:
    tensors = list(model.graph.initializer)
    for node in model.graph.node:
        if node.op_type == "Constant":
            tensors += [a.t for a in node.attribute if a.name == "value" and a.HasField("t")]
    return tensors


def nonfinite_weights(model: onnx.ModelProto) -> list[str]:
    """Initializers / Constant tensors holding NaN or Inf, each as 'name (k of n values, e.g. nan)'."""
    bad = []
    for t in _weight_tensors(model):
        if t.data_type not in (onnx.TensorProto.FLOAT, onnx.TensorProto.FLOAT16, onnx.TensorProto.DOUBLE,
                               onnx.TensorProto.BFLOAT16):
            continue
        arr = np.asarray(numpy_helper.to_array(t), dtype=np.float64)
        mask = ~np.isfinite(arr)
        if mask.any():
            bad.append(f"{t.name or '<constant>'} ({int(mask.sum())} of {arr.size} values, e.g. {arr[mask].flat[0]})")
    return bad


def require_finite_weights(model: onnx.ModelProto, where: str) -> None:
    """Raise ModelLoadError naming every weight tensor of ``model`` that holds NaN/Inf."""
    bad = nonfinite_weights(model)
    if bad:
        raise ModelLoadError(
            f"{where} has non-finite weights: {', '.join(bad[:5])}" + (f" and {len(bad) - 5} more" if len(bad) > 5 else ""),
            hint="the checkpoint is corrupt or training diverged; a model with NaN/Inf weights is never exported",
        )


def check_spec_inputs(inputs: Sequence[InputSpec], model: onnx.ModelProto, where: str, spec_path: object = None) -> None:
    """Refuse a spec whose [[inputs]] do not describe ``model``: every model input needs an entry of the same
    name, rank and dtype, and every fixed dimension of the model must be the spec's in shape, min_shape and
    max_shape (SpecError naming the input, both shapes and the files)."""
    spec_name = f"spec {spec_path}" if spec_path else "the spec"
    model_inputs = {i.name: i for i in graph_inputs(model)}
    given = {i.name: i for i in inputs}
    missing = [n for n in model_inputs if n not in given]
    unknown = [n for n in given if n not in model_inputs]
    if missing or unknown:
        raise SpecError(
            f"{spec_name} does not match {where}: "
            + "; ".join([f"model input {n!r} {list(model_inputs[n].shape)} has no [[inputs]] entry" for n in missing]
                        + [f"[[inputs]] {n!r} is not an input of the model (its inputs: {sorted(model_inputs)})"
                           for n in unknown]),
            hint="make [[inputs]] name the model's inputs, with their shapes",
        )
    for name, info in model_inputs.items():
        sp = given[name]
        if sp.dtype != info.dtype:
            raise SpecError(f"{spec_name}: input {name!r} has dtype {sp.dtype}, {where} takes {info.dtype}")
        for label, shape in (("shape", sp.shape), ("min_shape", sp.min_shape), ("max_shape", sp.max_shape)):
            if shape is None:
                continue
            if len(shape) != len(info.shape):
                raise SpecError(f"{spec_name}: input {name!r} {label} {list(shape)} has rank {len(shape)}, {where} "
                                f"takes rank {len(info.shape)} ({list(info.shape)})")
            for axis, (have, want) in enumerate(zip(shape, info.shape)):
                if isinstance(want, int) and want > 0 and have != want:
                    raise SpecError(
                        f"{spec_name}: input {name!r} {label} {list(shape)} differs from {where} "
                        f"{list(info.shape)} at axis {axis} ({have} != {want})",
                        hint="fix [[inputs]] (or export the model with this shape)",
                    )
