"""Loading ONNX files with clear errors, and describing their inputs/outputs."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import onnx

from .errors import ModelLoadError


@dataclass(frozen=True)
class TensorInfo:
    name: str
    shape: tuple[int | str, ...]  # str for symbolic / unknown dims
    dtype: str

    def to_dict(self) -> dict[str, object]:
        return {"name": self.name, "shape": list(self.shape), "dtype": self.dtype}


def load_model(path: Path | str) -> onnx.ModelProto:
    path = Path(path)
    if not path.is_file():
        raise ModelLoadError(f"ONNX file {path} does not exist")
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
    dims: list[int | str] = []
    for d in vi.type.tensor_type.shape.dim:
        if d.HasField("dim_value"):
            dims.append(int(d.dim_value))
        else:
            dims.append(d.dim_param or "?")
    return tuple(dims)


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
