"""A double of NVIDIA's ``tensorrt`` Python module, per release (8.5, 8.6, 10.3, 11.1), for tests only.

Strictness: the module and every class carry exactly the names of that release's bindings
(tests/doubles/api/tensorrt-*.json, extracted from NVIDIA's pybind sources by tools/extract_trt_api.py);
anything else raises AttributeError, anything the release has but the double lacks raises NotImplementedError.

Behaviour, each from the cited source:

* ONNX parsing (onnx/onnx-tensorrt at the matching branch): layers are named after their node
  (``ImporterContext::registerLayer``; extra layers of one node get ``<node>_<n>``), tensors after ONNX values;
  from 8.6 each layer's metadata is ``[ONNX Layer: <node>]``, with ``| <doc string line>`` entries on 8.6
  (``processMetadata`` in onnx2trt_utils.cpp, 8.6-GA) and ``| Local Function: <f>`` on 10.x
  (importerUtils.cpp, 10.1-GA). The 8.x parser registers the built-in plugins itself
  (``initLibNvInferPlugins`` in ModelImporter.cpp, 8.5-GA/8.6-GA); 10.x does not, so a plugin-backed node
  (InstanceNormalization on 8.5 always, on 8.6 unless NATIVE_INSTANCENORM, on 10.x only if that flag is
  cleared) fails to parse unless ``init_libnvinfer_plugins`` was called.
* Building: layer precisions from Q/DQ placement (explicit), calibration scales (implicit: the calibrator's
  cache when its header matches this version, else ``get_batch`` until it returns nothing), FP16/INT8 flags,
  and layer constraints only with OBEY/PREFER_PRECISION_CONSTRAINTS; strongly typed networks (10+) take their
  types from the graph; TensorRT 11 has no FP16/INT8 flags, layer precisions nor calibrators. DLA layers that
  cannot run there need GPU_FALLBACK.
* The engine: a plan with TensorRT's header layout (tag ``ftrt``, serialization version 0, version bytes
  24..27; samples/common/sampleEngines.cpp ``printPlanVersion``) wrapping the network description and the
  ONNX model it runs; deserialising checks the version, the compute capability, that every plugin used is
  registered in this process, and runs DLA engines on ``Runtime.DLA_core`` (default -1: core 0).
* Execution: ONNX Runtime on the CPU reads inputs from and writes outputs to the simulated CUDA memory of
  tests/doubles/cuda_double.py at the addresses given to ``set_tensor_address``, on the stream's schedule.
  INT8 layers run fake-quantized (explicit: the Q/DQ model as is; implicit: the cache's scales, weights
  per channel), FP16 layers round their outputs to float16.
* The inspector's JSON (``Layers`` with ``Name``, ``LayerType``, ``Inputs``/``Outputs`` ``Format/Datatype``,
  ``Metadata`` from 8.6), the format TensorRT Engine Explorer (tools/experimental/trt-engine-explorer) reads.
"""

from __future__ import annotations

import base64
import hashlib
import importlib.machinery
import json
import struct
import sys
import types
import warnings
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import numpy as np

from . import cuda_double
from .surface import StrictBase, Surface, load_surface, make_enum, strict_class

VERSIONS = {"8.5": "8.5.2.2", "8.6": "8.6.1.6", "10.3": "10.3.0.26", "11.1": "11.1.0.9"}
SURFACES = {"8.5": "tensorrt-8.5.2.json", "8.6": "tensorrt-8.6.1.json", "10.3": "tensorrt-10.3.0.json",
            "11.1": "tensorrt-11.1.0.json"}
MOD = "tensorrt.tensorrt"
PLAN_TAG = 0x74727466
PAYLOAD_MAGIC = b"VQZ-DOUBLE-PLAN\0"
TIMING_MAGIC = b"VQZ-DOUBLE-TC\0"

# ONNX elem type -> TensorRT DataType name
_ONNX_TO_TRT = {1: "FLOAT", 10: "HALF", 16: "BF16", 3: "INT8", 2: "UINT8", 6: "INT32", 7: "INT64", 9: "BOOL"}
_TRT_TO_NP = {"FLOAT": np.float32, "HALF": np.float16, "INT8": np.int8, "UINT8": np.uint8, "INT32": np.int32,
              "INT64": np.int64, "BOOL": np.bool_}
_ITEMSIZE = {"FLOAT": 4, "HALF": 2, "BF16": 2, "INT8": 1, "UINT8": 1, "INT32": 4, "INT64": 8, "BOOL": 1, "FP8": 1,
             "INT4": 1, "FP4": 1, "E8M0": 1}
# ONNX op -> LayerType of its main layer (onnx-tensorrt's importers)
_OP_LAYER = {
    "Conv": "CONVOLUTION", "ConvTranspose": "DECONVOLUTION", "MatMul": "MATRIX_MULTIPLY", "Gemm": "MATRIX_MULTIPLY",
    "Relu": "ACTIVATION", "Clip": "ACTIVATION", "Sigmoid": "ACTIVATION", "Tanh": "ACTIVATION", "LeakyRelu": "ACTIVATION",
    "Elu": "ACTIVATION", "Selu": "ACTIVATION", "Softplus": "ACTIVATION", "HardSigmoid": "ACTIVATION",
    "Add": "ELEMENTWISE", "Sub": "ELEMENTWISE", "Mul": "ELEMENTWISE", "Div": "ELEMENTWISE", "Pow": "ELEMENTWISE",
    "Max": "ELEMENTWISE", "Min": "ELEMENTWISE", "Erf": "UNARY", "Exp": "UNARY", "Log": "UNARY", "Sqrt": "UNARY",
    "Abs": "UNARY", "Neg": "UNARY", "Reciprocal": "UNARY", "GlobalAveragePool": "REDUCE", "GlobalMaxPool": "REDUCE",
    "ReduceMean": "REDUCE", "ReduceSum": "REDUCE", "ReduceMax": "REDUCE", "AveragePool": "POOLING",
    "MaxPool": "POOLING", "Flatten": "SHUFFLE", "Reshape": "SHUFFLE", "Transpose": "SHUFFLE", "Squeeze": "SHUFFLE",
    "Unsqueeze": "SHUFFLE", "Concat": "CONCATENATION", "Slice": "SLICE", "Split": "SLICE", "Gather": "GATHER",
    "Shape": "SHAPE", "Cast": "CAST", "Identity": "IDENTITY", "Softmax": "SOFTMAX", "Resize": "RESIZE",
    "Pad": "PADDING", "LayerNormalization": "NORMALIZATION", "BatchNormalization": "SCALE",
    "QuantizeLinear": "QUANTIZE", "DequantizeLinear": "DEQUANTIZE", "Constant": "CONSTANT",
}
_COMPUTE = {"CONVOLUTION", "DECONVOLUTION", "MATRIX_MULTIPLY", "ELEMENTWISE", "ACTIVATION", "UNARY", "REDUCE",
            "POOLING", "SOFTMAX", "RESIZE", "NORMALIZATION", "SCALE", "PLUGIN_V2", "PADDING"}
_INT8_CAPABLE = {"CONVOLUTION", "DECONVOLUTION", "MATRIX_MULTIPLY", "ELEMENTWISE", "ACTIVATION", "POOLING", "REDUCE",
                 "SCALE", "PADDING", "CONCATENATION"}
_DLA_CAPABLE = {"CONVOLUTION", "DECONVOLUTION", "ACTIVATION", "POOLING", "ELEMENTWISE", "SCALE", "CONCATENATION",
                "LRN", "SOFTMAX"}
_KERNEL = {"CONVOLUTION": "CaskConvolution", "DECONVOLUTION": "CaskDeconvolution", "MATRIX_MULTIPLY": "CaskGemm",
           "POOLING": "CaskPooling", "REDUCE": "Reduce", "SOFTMAX": "CaskSoftMaxV2", "SHUFFLE": "Shuffle",
           "ELEMENTWISE": "PointWiseV2", "ACTIVATION": "PointWiseV2", "UNARY": "PointWiseV2", "RESIZE": "Resize",
           "NORMALIZATION": "Normalization", "SCALE": "Scale", "PLUGIN_V2": "PluginV2", "PADDING": "Padding",
           "SLICE": "Slice", "GATHER": "Gather", "CONCATENATION": "Concatenation"}
_FORMAT = {"int8": "Thirty-two wide channel vectorized row major Int8 format", "fp16": "Row major linear FP16 format",
           "fp32": "Row major linear FP32"}
# Plugin creators the 8.x/10.x parsers use for ONNX ops (onnx-tensorrt: InstanceNormalization_TRT, ROIAlign_TRT)
_PLUGIN_OPS = {"InstanceNormalization": "InstanceNormalization_TRT", "RoiAlign": "ROIAlign_TRT"}


class TrtDoubleState:
    """What one instance of the double module shares: version, surface, classes, plugin registry."""

    def __init__(self, key: str, version: str, gpu: str) -> None:
        self.key = key
        self.surface: Surface = load_surface(SURFACES[key])
        self.version_string = version
        parts = [int(x) for x in version.split(".")] + [0, 0, 0]
        self.version = tuple(parts[:4])
        self.major_minor = (parts[0], parts[1])
        self.gpu_name = gpu
        self.plugins_registered = False
        self.cls: dict[str, type] = {}
        self.enum: dict[str, type] = {}
        self.deprecated_calls: list[str] = []

    # version facts, from the bindings themselves
    def has(self, qual: str, name: str) -> bool:
        return self.surface.has_class(qual) and name in self.surface.members(qual)

    @property
    def device(self) -> cuda_double.Device:
        return cuda_double.sim_device(self.gpu_name)

    def new(self, qual: str, *args: Any, **kwargs: Any) -> Any:
        return self.cls[qual](*args, **kwargs)

    def E(self, qual: str) -> Any:  # noqa: N802 -- an enum class
        return self.enum[qual]

    def dtype(self, name: str) -> Any:
        return getattr(self.enum["DataType"], name)

    def log(self, logger: Any, severity: str, msg: str) -> None:
        if logger is not None:
            logger.log(getattr(self.enum["ILogger.Severity"], severity), msg)

    def deprecated(self, name: str, replacement: str) -> None:
        """TensorRT's bindings wrap deprecated members with utils::deprecate: a Python DeprecationWarning."""
        self.deprecated_calls.append(name)
        warnings.warn(f"Use {replacement} instead.", DeprecationWarning, stacklevel=3)


def _require_init(obj: Any, qual: str) -> None:
    """pybind11: a Python subclass of a bound class must call the base __init__."""
    if not getattr(obj, "_trt_init", False):
        raise TypeError(f"{MOD}.{qual}.__init__() must be called when overriding __init__")


# --------------------------------------------------------------------------------------------- small types


class Impl(StrictBase):
    _st: TrtDoubleState


class PlainImpl(Impl):
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        raise NotImplementedError(f"{type(self).__name__} cannot be constructed in the TensorRT test double")


class DimsImpl(Impl):
    MAX_DIMS = 8

    def __init__(self, shape: Iterable[int] = ()) -> None:
        self._d = [int(x) for x in shape]

    def __len__(self) -> int:
        return len(self._d)

    def __getitem__(self, i: Any) -> Any:
        return self._d[i]

    def __setitem__(self, i: int, v: int) -> None:
        self._d[i] = int(v)

    def __iter__(self) -> Any:
        return iter(self._d)

    def __eq__(self, other: object) -> bool:
        return list(self) == list(other) if isinstance(other, (list, tuple, DimsImpl)) else NotImplemented

    def __hash__(self) -> int:
        return hash(tuple(self._d))

    def __repr__(self) -> str:
        return repr(tuple(self._d))

    __str__ = __repr__


class HostMemoryImpl(bytes, Impl):
    def __new__(cls, data: bytes) -> HostMemoryImpl:
        return bytes.__new__(cls, data)

    @property
    def nbytes(self) -> int:
        return len(self)

    @property
    def dtype(self) -> Any:
        return self._st.dtype("UINT8")


class ILoggerImpl(Impl):
    def __init__(self) -> None:
        self._trt_init = True

    def log(self, severity: Any, msg: str) -> None:
        raise RuntimeError('Tried to call pure virtual function "ILogger::log"')


class LoggerImpl(ILoggerImpl):
    def __init__(self, min_severity: Any = None) -> None:
        self._trt_init = True
        self._min = min_severity if min_severity is not None else self._st.E("ILogger.Severity").WARNING

    @property
    def min_severity(self) -> Any:
        return self._min

    @min_severity.setter
    def min_severity(self, v: Any) -> None:
        self._min = v

    def log(self, severity: Any, msg: str) -> None:
        if int(severity) <= int(self._min):
            print(f"[TRT] [{severity.name[0]}] {msg}", file=sys.stderr)


class InterfaceImpl(Impl):
    """IProgressMonitor, calibrators: user subclasses call the base __init__."""

    def __init__(self) -> None:
        self._trt_init = True


class CalibratorImpl(InterfaceImpl):
    _algo = "ENTROPY_CALIBRATION_2"

    def get_algorithm(self) -> Any:
        return getattr(self._st.E("CalibrationAlgoType"), self._algo)


# --------------------------------------------------------------------------------------------- network


class TensorImpl(Impl):
    def __init__(self, name: str, dtype: str, shape: Iterable[int]) -> None:
        self._name, self._dtype, self._shape = name, dtype, [int(x) for x in shape]
        self._is_input = self._is_output = False
        self._range: tuple[float, float] | None = None

    name = property(lambda self: self._name, lambda self, v: setattr(self, "_name", str(v)))
    is_network_input = property(lambda self: self._is_input)
    is_network_output = property(lambda self: self._is_output)
    is_shape_tensor = property(lambda self: False)
    is_execution_tensor = property(lambda self: True)
    location = property(lambda self: self._st.E("TensorLocation").DEVICE)
    allowed_formats = property(lambda self: 0)

    @property
    def dtype(self) -> Any:
        return self._st.dtype(self._dtype)

    @dtype.setter
    def dtype(self, v: Any) -> None:
        self._dtype = v.name

    @property
    def shape(self) -> Any:
        return self._st.new("Dims", self._shape)

    @shape.setter
    def shape(self, v: Iterable[int]) -> None:
        self._shape = [int(x) for x in v]

    @property
    def dynamic_range(self) -> tuple[float, float] | None:
        return self._range

    @dynamic_range.setter
    def dynamic_range(self, v: tuple[float, float]) -> None:
        self._range = (float(v[0]), float(v[1]))

    def set_dynamic_range(self, lo: float, hi: float) -> bool:
        self._range = (float(lo), float(hi))
        return True

    def reset_dynamic_range(self) -> None:
        self._range = None


class LayerImpl(Impl):
    def __init__(self, name: str, ltype: str, inputs: list[Any], outputs: list[Any], *, op: str = "",
                 node: str = "", metadata: str = "", attrs: dict[str, Any] | None = None) -> None:
        self._name, self._type, self._inputs, self._outputs = name, ltype, inputs, outputs
        self._op, self._node, self._metadata = op, node, metadata
        self._attrs = attrs or {}
        self._precision: str | None = None
        self._out_types: dict[int, str] = {}

    name = property(lambda self: self._name, lambda self, v: setattr(self, "_name", str(v)))
    type = property(lambda self: getattr(self._st.E("LayerType"), self._type))
    num_inputs = property(lambda self: len(self._inputs))
    num_outputs = property(lambda self: len(self._outputs))
    metadata = property(lambda self: self._metadata, lambda self, v: setattr(self, "_metadata", str(v)))

    def get_input(self, i: int) -> Any:
        return self._inputs[i] if 0 <= i < len(self._inputs) else None

    def get_output(self, i: int) -> Any:
        return self._outputs[i] if 0 <= i < len(self._outputs) else None

    def set_input(self, i: int, t: Any) -> None:
        self._inputs[i] = t

    @property
    def precision(self) -> Any:
        return self._st.dtype(self._precision or "FLOAT")

    @precision.setter
    def precision(self, dt: Any) -> None:
        if not hasattr(dt, "name") or dt not in list(self._st.E("DataType")):
            raise TypeError(f"precision must be a tensorrt.DataType, got {dt!r}")
        self._precision = dt.name

    precision_is_set = property(lambda self: self._precision is not None)

    def reset_precision(self) -> None:
        self._precision = None

    def set_output_type(self, index: int, dt: Any) -> None:
        if not 0 <= index < len(self._outputs):
            raise IndexError(f"output index {index} out of range")
        self._out_types[index] = dt.name

    def get_output_type(self, index: int) -> Any:
        return self._st.dtype(self._out_types.get(index, self._outputs[index]._dtype))

    def output_type_is_set(self, index: int) -> bool:
        return index in self._out_types

    def reset_output_type(self, index: int) -> None:
        self._out_types.pop(index, None)


class NetworkImpl(Impl):
    def __init__(self, flags: int) -> None:
        self._flags = int(flags)
        self._inputs: list[Any] = []
        self._outputs: list[Any] = []
        self._layers: list[Any] = []
        self._name = "Unnamed Network 0"
        self._onnx: bytes | None = None  # the model the parser read (what the engine runs)
        self._onnx_nodes: list[dict[str, Any]] = []

    def _flag(self, name: str) -> bool:
        flag = getattr(self._st.E("NetworkDefinitionCreationFlag"), name, None)
        return flag is not None and bool(self._flags & (1 << int(flag)))

    @property
    def _strongly_typed(self) -> bool:
        return self._flag("STRONGLY_TYPED")

    @property
    def has_implicit_batch_dimension(self) -> bool:
        return self._st.major_minor[0] < 10 and not self._flag("EXPLICIT_BATCH")

    name = property(lambda self: self._name, lambda self, v: setattr(self, "_name", str(v)))
    num_inputs = property(lambda self: len(self._inputs))
    num_outputs = property(lambda self: len(self._outputs))
    num_layers = property(lambda self: len(self._layers))
    flags = property(lambda self: self._flags)

    def get_flag(self, flag: Any) -> bool:
        return bool(self._flags & (1 << int(flag)))

    def get_input(self, i: int) -> Any:
        return self._inputs[i] if 0 <= i < len(self._inputs) else None

    def get_output(self, i: int) -> Any:
        return self._outputs[i] if 0 <= i < len(self._outputs) else None

    def get_layer(self, i: int) -> Any:
        return self._layers[i] if 0 <= i < len(self._layers) else None

    def __len__(self) -> int:
        return len(self._layers)

    def __getitem__(self, i: int) -> Any:
        if i < 0:
            i += len(self._layers)
        if not 0 <= i < len(self._layers):
            raise IndexError("layer index out of range")
        return self._layers[i]

    def mark_output(self, t: Any) -> None:
        t._is_output = True
        if t not in self._outputs:
            self._outputs.append(t)

    def unmark_output(self, t: Any) -> None:
        t._is_output = False
        if t in self._outputs:
            self._outputs.remove(t)


class ParserErrorImpl(Impl):
    def __init__(self, code: str, desc: str, node: int, node_name: str, node_op: str, func: str) -> None:
        self._code, self._desc, self._node, self._node_name, self._node_op, self._func = (
            code, desc, node, node_name, node_op, func)

    def code(self) -> Any:
        return getattr(self._st.E("ErrorCode"), self._code)

    def desc(self) -> str:
        return self._desc

    def file(self) -> str:
        return "ModelImporter.cpp"

    def line(self) -> int:
        return 0

    def func(self) -> str:
        return self._func

    def node(self) -> int:
        return self._node

    def node_name(self) -> str:
        return self._node_name

    def node_operator(self) -> str:
        return self._node_op

    def local_function_stack(self) -> list[str]:
        return []

    def local_function_stack_size(self) -> int:
        return 0

    def __str__(self) -> str:
        code = self._code
        if self._st.major_minor[0] < 10:  # pyOnnx.cpp lambdas::parser_error_str (8.5.2, 8.6.1)
            return f"In node {self._node} ({self._func}): {code}: {self._desc}"
        return (f"In node {self._node} with name: {self._node_name} and operator: {self._node_op} ({self._func}): "
                f"{code}: {self._desc}")

    __repr__ = __str__


class OnnxParserImpl(Impl):
    def __init__(self, network: Any, logger: Any) -> None:
        if not isinstance(network, NetworkImpl):
            raise TypeError("OnnxParser(): incompatible constructor arguments (network must be an INetworkDefinition)")
        _require_init(logger, "ILogger")
        self._network, self._logger = network, logger
        self._errors: list[Any] = []
        native = self._st.major_minor >= (10, 0)  # kNATIVE_INSTANCENORM is ON by default from 10.0
        self._flags = 1 if native else 0

    num_errors = property(lambda self: len(self._errors))

    @property
    def flags(self) -> int:
        return self._flags

    @flags.setter
    def flags(self, v: int) -> None:
        self._flags = int(v)

    def set_flag(self, flag: Any) -> None:
        self._flags |= 1 << int(flag)

    def clear_flag(self, flag: Any) -> None:
        self._flags &= ~(1 << int(flag))

    def get_flag(self, flag: Any) -> bool:
        return bool(self._flags & (1 << int(flag)))

    def get_error(self, i: int) -> Any:
        return self._errors[i] if 0 <= i < len(self._errors) else None

    def clear_errors(self) -> None:
        self._errors.clear()

    def supports_operator(self, op: str) -> bool:
        return op in _OP_LAYER or op in _PLUGIN_OPS

    def parse_from_file(self, path: str) -> bool:
        import onnx

        self._st.log(self._logger, "INFO", f"----------------------------------------------------------------\n"
                     f"Input filename:   {path}")
        try:
            model = onnx.load(str(path))
        except Exception as exc:  # noqa: BLE001 -- the parser reports, it does not raise
            self._error("MODEL_DESERIALIZE_FAILED", f"Failed to parse the ONNX file {path}: {exc}", -1, "", "", "parseFromFile")
            return False
        return self._parse(model)

    def parse(self, model: Any, path: str | None = None) -> bool:
        import onnx

        try:
            proto = onnx.load_model_from_string(bytes(model))
        except Exception as exc:  # noqa: BLE001
            self._error("MODEL_DESERIALIZE_FAILED", f"Failed to parse ONNX model: {exc}", -1, "", "", "parse")
            return False
        return self._parse(proto)

    def _error(self, code: str, desc: str, node: int, name: str, op: str, func: str) -> None:
        self._errors.append(self._st.new("ParserError", code, desc, node, name, op, func))
        self._st.log(self._logger, "ERROR", f"ModelImporter.cpp: {desc}")

    def _plugin_for(self, op: str) -> str | None:
        if op == "InstanceNormalization":
            flag = getattr(self._st.E("OnnxParserFlag"), "NATIVE_INSTANCENORM", None) if "OnnxParserFlag" in self._st.enum else None
            native = flag is not None and bool(self._flags & (1 << int(flag)))
            return None if native else _PLUGIN_OPS[op]
        return _PLUGIN_OPS.get(op)

    def _parse(self, model: Any) -> bool:
        st, net = self._st, self._network
        if net.has_implicit_batch_dimension:
            self._error("INVALID_GRAPH", "This version of the ONNX parser only supports TensorRT "
                        "INetworkDefinitions with an explicit batch dimension. Please ensure the network was created "
                        "with the EXPLICIT_BATCH NetworkDefinitionCreationFlag.", -1, "", "", "importModel")
            return False
        if st.major_minor[0] < 10:
            st.plugins_registered = True  # 8.x: ModelImporter calls initLibNvInferPlugins itself
        return _import_model(self, model)


def _import_model(parser: OnnxParserImpl, model: Any) -> bool:
    import onnx
    from onnx import numpy_helper, shape_inference

    st, net = parser._st, parser._network
    graph = model.graph
    try:
        inferred = shape_inference.infer_shapes(model)
    except Exception:  # noqa: BLE001 -- shapes are best effort, like the parser's own inference
        inferred = model
    types_by_name: dict[str, tuple[int, list[int]]] = {}
    for vi in list(inferred.graph.value_info) + list(graph.input) + list(graph.output):
        tt = vi.type.tensor_type
        dims = [d.dim_value if d.HasField("dim_value") and d.dim_value > 0 else -1 for d in tt.shape.dim]
        types_by_name[vi.name] = (tt.elem_type, dims)
    initializers = {i.name: i for i in graph.initializer}
    tensors: dict[str, Any] = {}
    layer_names: set[str] = set()
    counter = [0]

    def dt_name(elem: int) -> str:
        name = _ONNX_TO_TRT.get(elem, "FLOAT")
        if name == "INT64" and st.major_minor[0] < 10:
            return "INT32"  # 8.x casts INT64 weights and tensors down to INT32 (with a warning)
        return name

    def unique(basename: str) -> str:  # ImporterContext::generateUniqueName
        candidate = basename
        while candidate in layer_names:
            candidate = f"{basename}_{counter[0]}"
            counter[0] += 1
        layer_names.add(candidate)
        return candidate

    def metadata(node: Any) -> str:
        if st.major_minor < (8, 6):
            return ""
        text = f"[ONNX Layer: {node.name}"
        if st.major_minor < (10, 0) and node.doc_string:
            for line in node.doc_string.splitlines():
                if line.strip():
                    text += " | " + line.replace('"', "'")
        return text + "]"

    def add_layer(basename: str, ltype: str, inputs: list[Any], outputs: list[Any], node: Any = None,
                  attrs: dict[str, Any] | None = None) -> Any:
        qual = _LAYER_CLASS.get(ltype, "ILayer")
        if not st.surface.has_class(qual):
            qual = "ILayer"
        layer = st.new(qual, unique(basename), ltype, inputs, outputs, op=node.op_type if node is not None else "",
                       node=node.name if node is not None else "", metadata=metadata(node) if node is not None else "",
                       attrs=attrs)
        net._layers.append(layer)
        return layer

    def tensor_for(name: str, node: Any) -> Any:
        if not name:
            return None
        if name in tensors:
            return tensors[name]
        if name in initializers:  # weights used as a tensor: a CONSTANT layer named after them
            arr = numpy_helper.to_array(initializers[name])
            t = st.new("ITensor", name, dt_name(initializers[name].data_type), arr.shape)
            add_layer(name, "CONSTANT", [], [t])
            tensors[name] = t
            return t
        raise KeyError(name)

    for inp in graph.input:
        if inp.name in initializers:
            continue
        elem, dims = types_by_name.get(inp.name, (1, []))
        t = st.new("ITensor", inp.name, dt_name(elem), dims)
        t._is_input = True
        net._inputs.append(t)
        tensors[inp.name] = t

    weight_inputs = {"Conv": (1, 2), "ConvTranspose": (1, 2), "BatchNormalization": (1, 2, 3, 4), "Clip": (1, 2),
                     "Reshape": (1,), "Resize": (1, 2, 3), "Pad": (1, 2), "Slice": (1, 2, 3, 4), "Squeeze": (1,),
                     "Unsqueeze": (1,), "ReduceMean": (1,), "ReduceSum": (1,), "Split": (1,)}
    for index, node in enumerate(graph.node):
        op = node.op_type
        plugin = parser._plugin_for(op)
        ltype = "PLUGIN_V2" if plugin else _OP_LAYER.get(op)
        if ltype is None:
            parser._error("UNSUPPORTED_NODE", f"No importer registered for op: {op}. Attempting to import as plugin. "
                          "Plugin not found, are the plugin name, version, and namespace correct?", index, node.name,
                          op, "importFallbackPluginImporter")
            return False
        if plugin and not st.plugins_registered:
            parser._error("UNSUPPORTED_NODE", f"Plugin not found, are the plugin name, version, and namespace "
                          f"correct? (creator {plugin} version 1 is not registered: call "
                          "trt.init_libnvinfer_plugins(logger, '') before parsing)", index, node.name, op,
                          "importPluginCreator")
            return False
        if op == "Constant":
            value = onnx.helper.get_attribute_value(node.attribute[0])
            arr = numpy_helper.to_array(value) if hasattr(value, "dims") else np.asarray(value)
            t = st.new("ITensor", node.output[0], dt_name(value.data_type if hasattr(value, "data_type") else 1), arr.shape)
            add_layer(node.name or node.output[0], "CONSTANT", [], [t], node)
            tensors[node.output[0]] = t
            continue
        skip = weight_inputs.get(op, ())
        ins = []
        for k, name in enumerate(node.input):
            if k in skip and name in initializers:
                continue  # consumed as weights by the importer
            try:
                ins.append(tensor_for(name, node))
            except KeyError:
                parser._error("INVALID_GRAPH", f"Input {name!r} of node {node.name!r} is not produced by any node",
                              index, node.name, op, "importNode")
                return False
        outs = []
        for name in node.output:
            elem, dims = types_by_name.get(name, (1, []))
            if op == "QuantizeLinear":
                elem = 3
            outs.append(st.new("ITensor", name, dt_name(elem), dims))
        attrs = {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}
        if op == "Gemm" and len(node.input) > 2:  # MatrixMultiply + ElementWise(bias): two layers, one node
            mid = st.new("ITensor", f"{node.name}_matmul_out", "FLOAT", outs[0]._shape)
            add_layer(node.name, "MATRIX_MULTIPLY", ins[:2], [mid], node, attrs)
            bias = tensor_for(node.input[2], node)
            add_layer(node.name, "ELEMENTWISE", [mid, bias], outs, node, attrs)
        else:
            add_layer(node.name or node.output[0], ltype, ins, outs, node, dict(attrs, plugin=plugin))
        for t in outs:
            tensors[t._name] = t
    for out in graph.output:
        if out.name in tensors:
            net.mark_output(tensors[out.name])
    net._onnx = model.SerializeToString()
    return True


# --------------------------------------------------------------------------------------------- build


class ProfileImpl(Impl):
    def __init__(self) -> None:
        self._shapes: dict[str, tuple[list[int], list[int], list[int]]] = {}
        self._valid = True

    def set_shape(self, input: str, min: Iterable[int], opt: Iterable[int], max: Iterable[int]) -> None:  # noqa: A002
        lo, mid, hi = ([int(x) for x in s] for s in (min, opt, max))
        if not (len(lo) == len(mid) == len(hi)) or any(not a <= b <= c for a, b, c in zip(lo, mid, hi)):
            self._valid = False  # TensorRT logs and leaves the profile invalid
            return
        self._shapes[str(input)] = (lo, mid, hi)

    def get_shape(self, input: str) -> list[Any]:  # noqa: A002
        s = self._shapes.get(str(input))
        if s is None:
            return []
        return [self._st.new("Dims", x) for x in s]

    def __bool__(self) -> bool:
        return self._valid and bool(self._shapes)

    __nonzero__ = __bool__


class TimingCacheImpl(Impl):
    def __init__(self, entries: dict[str, Any], trt: str, cc: str) -> None:
        self._entries, self._trt, self._cc = dict(entries), trt, cc

    def serialize(self) -> Any:
        doc = json.dumps({"trt": self._trt, "cc": self._cc, "entries": self._entries}, sort_keys=True).encode()
        return self._st.new("IHostMemory", TIMING_MAGIC + doc)

    def combine(self, other: Any, ignore_mismatch: bool) -> bool:
        if (other._trt, other._cc) != (self._trt, self._cc) and not ignore_mismatch:
            return False
        self._entries.update(other._entries)
        return True

    def reset(self) -> bool:
        self._entries.clear()
        return True


class ConfigImpl(Impl):
    def __init__(self, builder: BuilderImpl) -> None:
        self._builder = builder
        self._flags = 0
        st = self._st
        if st.has("BuilderFlag", "TF32"):
            self._flags |= 1 << int(st.E("BuilderFlag").TF32)  # TF32 is on by default
        gpu = st.device.gpu
        self._pools = {"WORKSPACE": gpu.total_bytes if gpu else 0}
        self._profiles: list[Any] = []
        self._calib_profile: Any = None
        self._calibrator: Any = None
        self._verbosity = st.E("ProfilingVerbosity").LAYER_NAMES_ONLY
        self._device_type = st.E("DeviceType").GPU
        self._dla_core = -1
        self._timing_cache: Any = None
        self._monitor: Any = None
        self._capability = st.E("EngineCapability").STANDARD
        self._tactics = 0xFF
        self._quant_flags = 0
        self._layer_device: dict[str, Any] = {}
        self._opt_level = 3

    def set_flag(self, flag: Any) -> None:
        self._flags |= 1 << int(flag)

    def clear_flag(self, flag: Any) -> None:
        self._flags &= ~(1 << int(flag))

    def get_flag(self, flag: Any) -> bool:
        return bool(self._flags & (1 << int(flag)))

    flags = property(lambda self: self._flags, lambda self, v: setattr(self, "_flags", int(v)))

    def _has_flag(self, name: str) -> bool:
        flag = getattr(self._st.E("BuilderFlag"), name, None)
        return flag is not None and self.get_flag(flag)

    def set_memory_pool_limit(self, pool: Any, size: int) -> None:
        self._pools[pool.name] = int(size)

    def get_memory_pool_limit(self, pool: Any) -> int:
        return self._pools.get(pool.name, 0)

    def add_optimization_profile(self, profile: Any) -> int:
        if not profile:
            return -1
        self._profiles.append(profile)
        return len(self._profiles) - 1

    num_optimization_profiles = property(lambda self: len(self._profiles))

    def set_calibration_profile(self, profile: Any) -> bool:
        if not profile:
            return False
        self._calib_profile = profile
        return True

    def get_calibration_profile(self) -> Any:
        return self._calib_profile

    @property
    def int8_calibrator(self) -> Any:
        return self._calibrator

    @int8_calibrator.setter
    def int8_calibrator(self, c: Any) -> None:
        if c is not None and not isinstance(c, self._st.cls["IInt8Calibrator"]):
            raise TypeError("int8_calibrator must be a tensorrt.IInt8Calibrator")
        self._calibrator = c

    profiling_verbosity = property(lambda self: self._verbosity, lambda self, v: setattr(self, "_verbosity", v))
    default_device_type = property(lambda self: self._device_type, lambda self, v: setattr(self, "_device_type", v))
    engine_capability = property(lambda self: self._capability, lambda self, v: setattr(self, "_capability", v))
    builder_optimization_level = property(lambda self: self._opt_level, lambda self, v: setattr(self, "_opt_level", int(v)))

    @property
    def DLA_core(self) -> int:  # noqa: N802 -- TensorRT's name
        return self._dla_core

    @DLA_core.setter
    def DLA_core(self, v: int) -> None:  # noqa: N802
        self._dla_core = int(v)

    @property
    def progress_monitor(self) -> Any:
        return self._monitor

    @progress_monitor.setter
    def progress_monitor(self, m: Any) -> None:
        if m is not None:
            _require_init(m, "IProgressMonitor")
        self._monitor = m

    def can_run_on_DLA(self, layer: Any) -> bool:  # noqa: N802
        return layer._type in _DLA_CAPABLE

    def set_device_type(self, layer: Any, device: Any) -> None:
        self._layer_device[layer.name] = device

    def get_device_type(self, layer: Any) -> Any:
        return self._layer_device.get(layer.name, self._device_type)

    def is_device_type_set(self, layer: Any) -> bool:
        return layer.name in self._layer_device

    def reset_device_type(self, layer: Any) -> None:
        self._layer_device.pop(layer.name, None)

    def get_tactic_sources(self) -> int:
        return self._tactics

    def set_tactic_sources(self, v: int) -> bool:
        self._tactics = int(v)
        return True

    def get_preview_feature(self, feature: Any) -> bool:
        return False

    def set_preview_feature(self, feature: Any, enable: bool) -> None:
        pass

    def get_quantization_flag(self, flag: Any) -> bool:
        return bool(self._quant_flags & (1 << int(flag)))

    def set_quantization_flag(self, flag: Any) -> None:
        self._quant_flags |= 1 << int(flag)

    def clear_quantization_flag(self, flag: Any) -> None:
        self._quant_flags &= ~(1 << int(flag))

    def create_timing_cache(self, blob: Any) -> Any:
        data = bytes(blob)
        st = self._st
        cc = "{}.{}".format(*st.device.gpu.compute_capability) if st.device.gpu else "0.0"
        if not data:
            return st.new("ITimingCache", {}, st.version_string, cc)
        if not data.startswith(TIMING_MAGIC):
            st.log(self._builder._logger, "ERROR", "[timingCache.cpp::deserialize] Error Code 3: API Usage Error "
                   "(the timing cache blob is corrupted or was not created by TensorRT)")
            return None  # createTimingCache returns nullptr: None in Python
        try:
            doc = json.loads(data[len(TIMING_MAGIC):])
        except ValueError:
            st.log(self._builder._logger, "ERROR", "[timingCache.cpp::deserialize] corrupted timing cache")
            return None
        return st.new("ITimingCache", doc["entries"], doc["trt"], doc["cc"])

    def set_timing_cache(self, cache: Any, ignore_mismatch: bool) -> bool:
        if not isinstance(cache, TimingCacheImpl):
            raise TypeError("set_timing_cache(): incompatible function arguments. The following argument types are "
                            "supported:\n    1. (self: tensorrt.IBuilderConfig, cache: tensorrt.ITimingCache, "
                            f"ignore_mismatch: bool) -> bool\n\nInvoked with: {cache!r}")
        st = self._st
        cc = "{}.{}".format(*st.device.gpu.compute_capability) if st.device.gpu else "0.0"
        if (cache._trt, cache._cc) != (st.version_string, cc) and not ignore_mismatch:
            st.log(self._builder._logger, "WARNING", "Timing cache was created by another TensorRT version or on "
                   "another device; it is not used (ignore_mismatch=False)")
            return False
        self._timing_cache = cache
        return True

    def get_timing_cache(self) -> Any:
        return self._timing_cache


class BuilderImpl(Impl):
    def __init__(self, logger: Any) -> None:
        _require_init(logger, "ILogger")
        self._logger = logger
        if self._st.device.gpu is None:
            raise TypeError("pybind11::init(): factory function returned nullptr (no CUDA device: "
                            "[TRT] CUDA initialization failure with error: 100)")

    logger = property(lambda self: self._logger)
    num_DLA_cores = property(lambda self: self._st.device.gpu.dla_cores if self._st.device.gpu else 0)
    max_DLA_batch_size = property(lambda self: 32)
    platform_has_fast_fp16 = property(lambda self: True)
    platform_has_fast_int8 = property(lambda self: True)
    platform_has_tf32 = property(lambda self: True)

    def create_network(self, flags: int = 0) -> Any:
        return self._st.new("INetworkDefinition", flags)

    def create_builder_config(self) -> Any:
        return self._st.new("IBuilderConfig", self)

    def create_optimization_profile(self) -> Any:
        return self._st.new("IOptimizationProfile")

    def build_serialized_network(self, network: Any, config: Any) -> Any:
        plan = _build(self._st, self._logger, network, config)
        return None if plan is None else self._st.new("IHostMemory", plan)


_LAYER_CLASS = {
    "CONVOLUTION": "IConvolutionLayer", "DECONVOLUTION": "IDeconvolutionLayer", "ACTIVATION": "IActivationLayer",
    "POOLING": "IPoolingLayer", "SCALE": "IScaleLayer", "SOFTMAX": "ISoftMaxLayer", "CONCATENATION": "IConcatenationLayer",
    "ELEMENTWISE": "IElementWiseLayer", "UNARY": "IUnaryLayer", "PADDING": "IPaddingLayer", "SHUFFLE": "IShuffleLayer",
    "REDUCE": "IReduceLayer", "GATHER": "IGatherLayer", "MATRIX_MULTIPLY": "IMatrixMultiplyLayer",
    "CONSTANT": "IConstantLayer", "IDENTITY": "IIdentityLayer", "CAST": "ICastLayer", "SLICE": "ISliceLayer",
    "SHAPE": "IShapeLayer", "RESIZE": "IResizeLayer", "QUANTIZE": "IQuantizeLayer", "DEQUANTIZE": "IDequantizeLayer",
    "NORMALIZATION": "INormalizationLayer", "PLUGIN_V2": "IPluginV2Layer",
}


def _build(st: TrtDoubleState, logger: Any, network: Any, config: Any) -> bytes | None:
    """The "optimizer": decide every layer's precision and device, calibrate if needed, serialise."""

    def error(msg: str) -> None:
        st.log(logger, "ERROR", msg)

    if not network._layers:
        error("[network.cpp::validate] Error Code 4: Internal Error (Network must have at least one output)")
        return None
    weak_flags = [n for n in ("FP16", "INT8") if config._has_flag(n)]
    strong = network._strongly_typed
    if strong and weak_flags:
        error(f"[network.cpp::validate] Error Code 4: API Usage Error (BuilderFlag::k{weak_flags[0]} is set for a "
              "strongly typed network; a strongly typed network takes its types from the graph)")
        return None
    # profiles
    dynamic = [t for t in network._inputs if any(d < 0 for d in t._shape)]
    if dynamic and not config._profiles:
        error("[network.cpp::validate] Error Code 4: Internal Error (Network has dynamic or shape inputs, but no "
              "optimization profile has been defined.)")
        return None
    for p in config._profiles:
        for t in network._inputs:
            shapes = p._shapes.get(t._name)
            if shapes is None:
                if any(d < 0 for d in t._shape):
                    error(f"[optimizationProfile.cpp::validate] Error Code 4: Internal Error ({t._name}: dynamic input "
                          "is missing dimensions in profile 0.)")
                    return None
                continue
            for s in shapes:
                if len(s) != len(t._shape) or any(d >= 0 and d != v for d, v in zip(t._shape, s)):
                    error(f"[optimizationProfile.cpp::validate] Error Code 4: Internal Error ({t._name}: profile shape "
                          f"{s} does not match the input's dimensions {t._shape})")
                    return None
    by_output: dict[str, Any] = {}
    for layer in network._layers:
        for t in layer._outputs:
            by_output[t._name] = layer
    has_qdq = any(layer._type in ("QUANTIZE", "DEQUANTIZE") for layer in network._layers)
    int8, fp16 = "INT8" in weak_flags, "FP16" in weak_flags
    obey, prefer = config._has_flag("OBEY_PRECISION_CONSTRAINTS"), config._has_flag("PREFER_PRECISION_CONSTRAINTS")
    scales: dict[str, float] = {}
    mode = "explicit" if has_qdq else ("implicit" if int8 else ("fp16" if fp16 else "fp32"))
    if strong:
        mode = "strong"
    if mode == "implicit":
        if config._calibrator is not None:
            got = _calibrate(st, logger, network, config)
            if got is None:
                return None
            scales = got
        else:
            scales = {t._name: max(abs(t._range[0]), abs(t._range[1])) / 127.0 for layer in network._layers
                      for t in [*layer._inputs, *layer._outputs] if t is not None and t._range is not None}
            scales.update({t._name: max(abs(t._range[0]), abs(t._range[1])) / 127.0 for t in network._inputs
                           if t._range is not None})
    # precisions
    precisions: dict[str, str] = {}
    for layer in network._layers:
        if layer._type not in _COMPUTE:
            continue
        constrained = layer._precision if (obey or prefer) and layer._precision else None
        from_dq = any(t is not None and by_output.get(t._name) is not None and by_output[t._name]._type == "DEQUANTIZE"
                      for t in layer._inputs[:1])
        if mode == "strong":
            p = "int8" if from_dq else ("fp16" if layer._outputs[0]._dtype == "HALF" else "fp32")
        elif constrained:
            p = {"HALF": "fp16", "FLOAT": "fp32", "INT8": "int8"}.get(constrained, "fp32")
        elif mode == "explicit" and from_dq:
            p = "int8"
        elif (mode == "implicit" and layer._type in _INT8_CAPABLE and all(
                t is None or t._name in scales for t in layer._inputs if t is not None and t._dtype == "FLOAT"
                and (by_output.get(t._name) is None or by_output[t._name]._type != "CONSTANT"))):
            p = "int8"
        else:
            p = "fp16" if fp16 else "fp32"
        precisions[layer._name] = p
    if constrained_without_flag := [x._name for x in network._layers if x._precision and not (obey or prefer)]:
        st.log(logger, "WARNING", f"{len(constrained_without_flag)} layer(s) have a precision set but neither "
               "OBEY_PRECISION_CONSTRAINTS nor PREFER_PRECISION_CONSTRAINTS is set: the precisions are ignored")
    # devices
    dla_core = None
    devices: dict[str, str] = {}
    if config._device_type == st.E("DeviceType").DLA:
        gpu = st.device.gpu
        if gpu is None or gpu.dla_cores == 0:
            error("[builder.cpp] Error Code 2: Internal Error (DLA is not available on this platform)")
            return None
        dla_core = max(config._dla_core, 0)
        if dla_core >= gpu.dla_cores:
            error(f"DLA core {dla_core} is not available; this platform has {gpu.dla_cores}")
            return None
        for layer in network._layers:
            if layer._type not in _COMPUTE:
                continue
            ok = layer._type in _DLA_CAPABLE and precisions.get(layer._name) in ("fp16", "int8")
            if not ok and not config._has_flag("GPU_FALLBACK"):
                error(f"[network.cpp::validate] Error Code 4: Internal Error (DLA validation failed: layer "
                      f"{layer._name} cannot run on DLA and GPU fallback is disabled)")
                return None
            devices[layer._name] = "DLA" if ok else "GPU"
    # progress (10+)
    monitor = config._monitor
    if monitor is not None:
        monitor.phase_start("Building engine", None, len(network._layers))
        for step in range(len(network._layers)):
            if not monitor.step_complete("Building engine", step):
                monitor.phase_finish("Building engine")
                error("Engine build was cancelled by the IProgressMonitor")
                return None
        monitor.phase_finish("Building engine")
    if config._timing_cache is not None:
        for layer in network._layers:
            config._timing_cache._entries[f"{layer._type}:{precisions.get(layer._name, '-')}"] = 1
    engine_layers = _fuse(st, network, precisions, devices, by_output)
    plugins = sorted({layer._attrs.get("plugin") for layer in network._layers if layer._attrs.get("plugin")})
    gpu = st.device.gpu
    io = []
    for t in network._inputs + network._outputs:
        entry: dict[str, Any] = {"name": t._name, "mode": "INPUT" if t._is_input else "OUTPUT", "dtype": t._dtype,
                                 "shape": t._shape}
        if t._is_input and config._profiles:
            entry["profiles"] = [p._shapes.get(t._name, (t._shape, t._shape, t._shape)) for p in config._profiles]
        io.append(entry)
    desc = {
        "version": list(st.version), "cc": list(gpu.compute_capability) if gpu else [0, 0], "mode": mode, "io": io,
        "layers": engine_layers, "plugins": plugins, "dla_core": dla_core, "scales": scales,
        "precisions": precisions, "num_profiles": max(1, len(config._profiles)),
        "device_memory": _activation_bytes(network), "onnx": base64.b64encode(network._onnx or b"").decode(),
    }
    body = PAYLOAD_MAGIC + json.dumps(desc, sort_keys=True).encode()
    head = bytearray(struct.pack("<II", PLAN_TAG, 0) + b"\0" * 20)
    head[24:28] = bytes(st.version[:4])
    return bytes(head) + body


def _activation_bytes(network: Any) -> int:
    total = 0
    for layer in network._layers:
        for t in layer._outputs:
            total += int(np.prod([d if d > 0 else 8 for d in t._shape] or [1])) * _ITEMSIZE.get(t._dtype, 4)
    return total // 2 + 4096


def _fuse(st: TrtDoubleState, network: Any, precisions: dict[str, str], devices: dict[str, str],
          by_output: dict[str, Any]) -> list[dict[str, Any]]:
    """Engine layers as the inspector reports them: compute layers, a following activation fused into its
    producer ("A + B"), Q/DQ absorbed into their consumers' metadata, DLA layers grouped into ForeignNodes."""
    consumers: dict[str, list[Any]] = {}
    for layer in network._layers:
        for t in layer._inputs:
            if t is not None:
                consumers.setdefault(t._name, []).append(layer)
    out: list[dict[str, Any]] = []
    fused_into: set[str] = set()
    dla_run: list[str] = []

    def flush_dla() -> None:
        if dla_run:
            fmt = "Channel major FP16 format where channel % 16 == 0"
            out.append({"Name": "{ForeignNode[" + dla_run[0] + "..." + dla_run[-1] + "]}", "LayerType": "DLA",
                        "Inputs": [{"Name": "dla_in", "Format/Datatype": fmt}],
                        "Outputs": [{"Name": "dla_out", "Format/Datatype": fmt}]})
            dla_run.clear()

    for layer in network._layers:
        if layer._name in fused_into or layer._type not in _COMPUTE:
            continue
        if devices.get(layer._name) == "DLA":
            dla_run.append(layer._name)
            continue
        flush_dla()
        names = [layer._name]
        metas = [layer._metadata] if layer._metadata else []
        for t in layer._inputs:  # absorbed dequantize layers
            src = by_output.get(t._name) if t is not None else None
            if src is not None and src._type == "DEQUANTIZE" and src._metadata:
                metas.insert(0, src._metadata)
        last = layer
        nxt = consumers.get(layer._outputs[0]._name, []) if layer._outputs else []
        if (layer._type in ("CONVOLUTION", "MATRIX_MULTIPLY", "DECONVOLUTION", "ELEMENTWISE") and len(nxt) == 1
                and nxt[0]._type == "ACTIVATION" and precisions.get(nxt[0]._name) == precisions[layer._name]
                and devices.get(nxt[0]._name) != "DLA"):
            last = nxt[0]
            names.append(last._name)
            fused_into.add(last._name)
            if last._metadata:
                metas.append(last._metadata)
        p = precisions[layer._name]
        out_p = precisions[last._name]
        q_after = [c for c in consumers.get(last._outputs[0]._name, [])] if last._outputs else []
        if any(c._type == "QUANTIZE" for c in q_after):
            out_p = "int8"
            for c in q_after:
                if c._type == "QUANTIZE" and c._metadata:
                    metas.append(c._metadata)
        elif last._name in precisions and 0 in last._out_types:
            out_p = {"HALF": "fp16", "FLOAT": "fp32", "INT8": "int8"}.get(last._out_types[0], out_p)
        entry: dict[str, Any] = {
            "Name": " + ".join(names), "LayerType": _KERNEL.get(layer._type, layer._type.title()),
            "Inputs": [{"Name": t._name, "Location": "Device", "Dimensions": t._shape, "Format/Datatype": _FORMAT[p]}
                       for t in layer._inputs if t is not None],
            "Outputs": [{"Name": t._name, "Location": "Device", "Dimensions": t._shape,
                         "Format/Datatype": _FORMAT[out_p]} for t in last._outputs],
            "TacticValue": "0x" + hashlib.sha256(layer._name.encode()).hexdigest()[:16],
        }
        if st.major_minor >= (8, 6) and metas:
            entry["Metadata"] = "\x1f".join(metas)
        out.append(entry)
    flush_dla()
    return out


def _calibrate(st: TrtDoubleState, logger: Any, network: Any, config: Any) -> dict[str, float] | None:
    """IInt8EntropyCalibrator2 protocol: cache first, else batches from get_batch; write the cache back."""
    cal = config._calibrator
    _require_init(cal, "IInt8Calibrator")
    header = f"TRT-{_version_code(st)}-EntropyCalibration2"
    cache = cal.read_calibration_cache()
    if cache:
        lines = bytes(cache).decode("ascii", "replace").splitlines()
        if lines and lines[0].strip() == header:
            scales = {}
            for line in lines[1:]:
                name, _, hexval = line.rpartition(":")
                if name:
                    scales[name.strip()] = struct.unpack(">f", bytes.fromhex(hexval.strip()))[0]
            return scales
        st.log(logger, "WARNING", f"Calibration cache header {lines[0] if lines else ''!r} does not match "
               f"{header!r}: the cache is ignored and the network is calibrated")
    import onnxruntime as ort

    profile = config._calib_profile or (config._profiles[0] if config._profiles else None)
    names = [t._name for t in network._inputs]
    shapes = {t._name: (profile._shapes[t._name][1] if profile is not None and t._name in profile._shapes else t._shape)
              for t in network._inputs}
    model = _with_all_outputs(network._onnx or b"")
    sess = ort.InferenceSession(model, providers=["CPUExecutionProvider"])
    out_names = [o.name for o in sess.get_outputs()]
    amax: dict[str, float] = {}
    batches = 0
    while True:
        ptrs = cal.get_batch(names)
        if not ptrs:
            break
        feeds = {}
        for name, ptr in zip(names, ptrs):
            t = next(x for x in network._inputs if x._name == name)
            dt = np.dtype(_TRT_TO_NP[t._dtype])
            n = int(np.prod(shapes[name])) * dt.itemsize
            feeds[name] = np.frombuffer(bytes(st.device.memory(int(ptr), n)), dtype=dt).reshape(shapes[name])
        for name, arr in zip(out_names, sess.run(out_names, feeds)):
            if np.issubdtype(np.asarray(arr).dtype, np.floating):
                amax[name] = max(amax.get(name, 0.0), float(np.max(np.abs(arr))) if np.size(arr) else 0.0)
        for name, arr in feeds.items():
            amax[name] = max(amax.get(name, 0.0), float(np.max(np.abs(arr))))
        batches += 1
    if batches == 0:
        st.log(logger, "ERROR", "Calibration failure occurred with no scaling factors detected. This could be due to "
               "no int8 calibrator or insufficient custom scales for network layers.")
        return None
    scales = {k: v / 127.0 for k, v in amax.items()}
    text = header + "\n" + "".join(f"{k}: {struct.pack('>f', v).hex()}\n" for k, v in sorted(scales.items()))
    cal.write_calibration_cache(st.new("IHostMemory", text.encode()))
    return scales


def _version_code(st: TrtDoubleState) -> int:
    major, minor, patch = st.version[:3]
    return major * 10000 + minor * 100 + patch if major >= 10 else major * 1000 + minor * 100 + patch


def _with_all_outputs(onnx_bytes: bytes) -> bytes:
    import onnx

    model = onnx.load_model_from_string(onnx_bytes)
    have = {o.name for o in model.graph.output}
    for node in model.graph.node:
        for name in node.output:
            if name and name not in have:
                model.graph.output.append(onnx.helper.make_empty_tensor_value_info(name))
                have.add(name)
    return model.SerializeToString()


# --------------------------------------------------------------------------------------------- runtime


class RuntimeImpl(Impl):
    def __init__(self, logger: Any) -> None:
        _require_init(logger, "ILogger")
        self._logger = logger
        self._dla_core = -1
        self._host_code = False
        self._max_threads = 1

    logger = property(lambda self: self._logger)
    num_DLA_cores = property(lambda self: self._st.device.gpu.dla_cores if self._st.device.gpu else 0)
    max_threads = property(lambda self: self._max_threads, lambda self, v: setattr(self, "_max_threads", int(v)))
    engine_host_code_allowed = property(lambda self: self._host_code, lambda self, v: setattr(self, "_host_code", bool(v)))

    @property
    def DLA_core(self) -> int:  # noqa: N802
        return self._dla_core

    @DLA_core.setter
    def DLA_core(self, v: int) -> None:  # noqa: N802
        self._dla_core = int(v)

    def deserialize_cuda_engine(self, blob: Any) -> Any:
        st = self._st
        data = bytes(blob)

        def error(msg: str) -> None:
            st.log(self._logger, "ERROR", msg)

        if len(data) < 28 or struct.unpack_from("<I", data, 0)[0] != PLAN_TAG:
            error("1: [stdArchiveReader.cpp::StdArchiveReaderInitCommon::46] Error Code 1: Serialization "
                  "(Serialization assertion stdVersionRead == kSERIALIZATION_VERSION failed.Magic tag does not match)")
            return None
        built = tuple(data[24:28])
        if built[:3] != st.version[:3]:
            error("1: [stdArchiveReader.cpp::StdArchiveReaderInitCommon::46] Error Code 1: Serialization (Serialization "
                  "assertion stdVersionRead == kSERIALIZATION_VERSION failed.Version tag does not match. The engine "
                  f"plan file is not compatible with this version of TensorRT, expecting library version "
                  f"{'.'.join(map(str, st.version))} got {'.'.join(map(str, built))}, please rebuild.)")
            return None
        body = data[28:]
        if not body.startswith(PAYLOAD_MAGIC):
            error("1: [runtime.cpp::deserializeCudaEngine] Error Code 1: Serialization (the plan is corrupt)")
            return None
        try:
            desc = json.loads(body[len(PAYLOAD_MAGIC):])
        except ValueError:
            error("1: [runtime.cpp::deserializeCudaEngine] Error Code 1: Serialization (the plan is corrupt)")
            return None
        gpu = st.device.gpu
        if gpu is None or tuple(desc["cc"]) != gpu.compute_capability:
            have = "{}.{}".format(*gpu.compute_capability) if gpu else "none"
            error("6: The engine plan file is generated on an incompatible device, expecting compute "
                  f"{have} got compute {desc['cc'][0]}.{desc['cc'][1]}, please rebuild.")
            return None
        for plugin in desc["plugins"]:
            if not st.plugins_registered:
                error(f"1: [pluginV2Runner.cpp::load::303] Error Code 1: Serialization (Serialization assertion "
                      f"creator failed.Cannot deserialize plugin since corresponding IPluginCreator not found in "
                      f"Plugin Registry) -- getPluginCreator could not find plugin: {plugin} version: 1")
                return None
        core = None
        if desc["dla_core"] is not None:
            core = self._dla_core if self._dla_core >= 0 else 0
            if core >= (gpu.dla_cores if gpu else 0):
                error(f"Cannot deserialize the DLA engine on DLA core {core}: this platform has {gpu.dla_cores} core(s)")
                return None
        return st.new("ICudaEngine", desc, core)


class EngineImpl(Impl):
    def __init__(self, desc: dict[str, Any], dla_core: int | None) -> None:
        self._desc = desc
        self._dla_core_used = dla_core  # the DLA core this engine really runs on (None: GPU)
        self._io = desc["io"]
        self._onnx = base64.b64decode(desc["onnx"])

    def _find(self, name: str) -> dict[str, Any]:
        for t in self._io:
            if t["name"] == name:
                return t
        raise ValueError(f"tensor {name!r} is not an I/O tensor of this engine")

    num_io_tensors = property(lambda self: len(self._io))
    num_layers = property(lambda self: len(self._desc["layers"]))
    num_optimization_profiles = property(lambda self: self._desc["num_profiles"])
    name = property(lambda self: "Unnamed Network 0")
    refittable = property(lambda self: False)
    has_implicit_batch_dimension = property(lambda self: False)

    @property
    def device_memory_size(self) -> int:
        if self._st.major_minor >= (10, 0):
            self._st.deprecated("device_memory_size", "device_memory_size_v2")
        return int(self._desc["device_memory"])

    device_memory_size_v2 = property(lambda self: int(self._desc["device_memory"]))

    def get_device_memory_size_for_profile(self, i: int) -> int:
        self._st.deprecated("get_device_memory_size_for_profile", "get_device_memory_size_for_profile_v2")
        return int(self._desc["device_memory"])

    def get_device_memory_size_for_profile_v2(self, i: int) -> int:
        return int(self._desc["device_memory"])

    def get_tensor_name(self, i: int) -> str:
        return str(self._io[i]["name"])

    def get_tensor_mode(self, name: str) -> Any:
        return getattr(self._st.E("TensorIOMode"), self._find(name)["mode"])

    def get_tensor_shape(self, name: str) -> Any:
        return self._st.new("Dims", self._find(name)["shape"])

    def get_tensor_dtype(self, name: str) -> Any:
        return self._st.dtype(self._find(name)["dtype"])

    def get_tensor_location(self, name: str) -> Any:
        return self._st.E("TensorLocation").DEVICE

    def get_tensor_profile_shape(self, name: str, profile_index: int) -> list[Any]:
        t = self._find(name)
        if t["mode"] != "INPUT" or "profiles" not in t:
            return [self._st.new("Dims", t["shape"])] * 3
        return [self._st.new("Dims", s) for s in t["profiles"][profile_index]]

    def create_execution_context(self, strategy: Any = None) -> Any:
        return self._st.new("IExecutionContext", self)

    def create_engine_inspector(self) -> Any:
        return self._st.new("EngineInspector", self)

    def serialize(self) -> Any:
        raise NotImplementedError("ICudaEngine.serialize: the double keeps no re-serialisable state")

    # TensorRT 8.x bindings API (deprecated since 8.5: DeprecationWarning, as utils::deprecate issues)
    @property
    def num_bindings(self) -> int:
        self._st.deprecated("num_bindings", "num_io_tensors")
        return len(self._io)

    def get_binding_name(self, i: int) -> str:
        self._st.deprecated("get_binding_name", "get_tensor_name")
        return str(self._io[i]["name"])

    def binding_is_input(self, i: Any) -> bool:
        self._st.deprecated("binding_is_input", "get_tensor_mode")
        return bool(self._io[i]["mode"] == "INPUT")

    def get_binding_shape(self, i: Any) -> Any:
        self._st.deprecated("get_binding_shape", "get_tensor_shape")
        return self._st.new("Dims", self._io[i]["shape"])

    def get_binding_dtype(self, i: Any) -> Any:
        self._st.deprecated("get_binding_dtype", "get_tensor_dtype")
        return self._st.dtype(self._io[i]["dtype"])

    def get_profile_shape(self, profile_index: int, binding: Any) -> list[Any]:
        self._st.deprecated("get_profile_shape", "get_tensor_profile_shape")
        return self.get_tensor_profile_shape(self._io[binding]["name"], profile_index)


class InspectorImpl(Impl):
    def __init__(self, engine: EngineImpl) -> None:
        self._engine = engine
        self._context: Any = None

    execution_context = property(lambda self: self._context, lambda self, v: setattr(self, "_context", v))

    def get_engine_information(self, fmt: Any) -> str:
        layers = self._engine._desc["layers"]
        if fmt == self._st.E("LayerInformationFormat").JSON:
            bindings = [t["name"] for t in self._engine._io]
            return json.dumps({"Layers": layers, "Bindings": bindings})
        return "\n".join(x["Name"] for x in layers)

    def get_layer_information(self, index: int, fmt: Any) -> str:
        return json.dumps(self._engine._desc["layers"][index])


class ContextImpl(Impl):
    def __init__(self, engine: EngineImpl) -> None:
        import onnxruntime as ort

        self._engine = engine
        self._shapes: dict[str, list[int]] = {}
        self._addresses: dict[str, int] = {}
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = 1
        self._session = ort.InferenceSession(_executable_model(engine._desc, engine._onnx), opts,
                                             providers=["CPUExecutionProvider"])
        self._name = ""
        for t in engine._io:
            if t["mode"] == "INPUT" and all(d >= 0 for d in t["shape"]):
                self._shapes[t["name"]] = list(t["shape"])

    engine = property(lambda self: self._engine)
    name = property(lambda self: self._name, lambda self, v: setattr(self, "_name", str(v)))
    active_optimization_profile = property(lambda self: 0)

    @property
    def all_binding_shapes_specified(self) -> bool:
        return all(t["name"] in self._shapes for t in self._engine._io if t["mode"] == "INPUT")

    def set_input_shape(self, name: str, shape: Iterable[int]) -> bool:
        t = self._engine._find(name)
        shape = [int(x) for x in shape]
        lo, _opt, hi = t.get("profiles", [[t["shape"]] * 3])[0]
        if len(shape) != len(t["shape"]) or any(not a <= s <= b for a, s, b in zip(lo, shape, hi)):
            self._engine._st.log(None, "ERROR", "set_input_shape outside the profile")
            return False
        self._shapes[name] = shape
        return True

    def _output_shapes(self) -> dict[str, list[int]]:
        return _infer_output_shapes(self._engine, {k: tuple(v) for k, v in self._shapes.items()})

    def get_tensor_shape(self, name: str) -> Any:
        t = self._engine._find(name)
        if t["mode"] == "INPUT":
            return self._engine._st.new("Dims", self._shapes.get(name, t["shape"]))
        if not self.all_binding_shapes_specified:
            return self._engine._st.new("Dims", t["shape"])
        return self._engine._st.new("Dims", self._output_shapes()[name])

    def set_tensor_address(self, name: str, ptr: int) -> bool:
        self._engine._find(name)
        self._addresses[name] = int(ptr)
        return True

    def get_tensor_address(self, name: str) -> int:
        return self._addresses.get(name, 0)

    def execute_async_v3(self, stream_handle: int) -> bool:
        st = self._engine._st
        if not self.all_binding_shapes_specified:
            st.log(None, "ERROR", "3: [executionContext.cpp::enqueueV3] Error Code 3: API Usage Error (Parameter check "
                   "failed, condition: allInputDimensionsSpecified(routine).)")
            return False
        missing = [t["name"] for t in self._engine._io if t["name"] not in self._addresses]
        if missing:
            st.log(None, "ERROR", f"3: [executionContext.cpp::enqueueV3] Error Code 3: API Usage Error (Neither address "
                   f"or allocator is set for I/O tensor {missing[0]}.)")
            return False
        out_shapes = self._output_shapes()
        shapes = dict(self._shapes)
        addresses = dict(self._addresses)
        session = self._session

        def run() -> None:
            device = st.device
            feeds = {}
            for t in self._engine._io:
                if t["mode"] != "INPUT":
                    continue
                dt = np.dtype(_TRT_TO_NP[t["dtype"]])
                shape = shapes[t["name"]]
                raw = device.memory(addresses[t["name"]], int(np.prod(shape)) * dt.itemsize)
                feeds[t["name"]] = np.frombuffer(bytes(raw), dtype=dt).reshape(shape)
            names = [t["name"] for t in self._engine._io if t["mode"] == "OUTPUT"]
            for name, arr in zip(names, session.run(names, feeds)):
                t = self._engine._find(name)
                arr = np.ascontiguousarray(arr, dtype=_TRT_TO_NP[t["dtype"]])
                if list(arr.shape) != list(out_shapes[name]):
                    raise cuda_double.CudaSimError(f"output {name} shape {arr.shape} != {out_shapes[name]}")
                device.memory(addresses[name], arr.nbytes)[:] = arr.reshape(-1).view(np.uint8).tobytes()

        try:
            st.device.enqueue(int(stream_handle), run)
        except cuda_double.CudaSimError as exc:
            st.log(None, "ERROR", str(exc))
            return False
        return True

    # deprecated (8.x)
    def set_binding_shape(self, index: int, shape: Iterable[int]) -> bool:
        self._engine._st.deprecated("set_binding_shape", "set_input_shape")
        return self.set_input_shape(self._engine._io[index]["name"], shape)

    def get_binding_shape(self, index: int) -> Any:
        self._engine._st.deprecated("get_binding_shape", "get_tensor_shape")
        return self.get_tensor_shape(self._engine._io[index]["name"])

    def execute_async_v2(self, bindings: list[int], stream_handle: int) -> bool:
        self._engine._st.deprecated("execute_async_v2", "execute_async_v3")
        for t, ptr in zip(self._engine._io, bindings):
            self._addresses[t["name"]] = int(ptr)
        return self.execute_async_v3(stream_handle)


def _infer_output_shapes(engine: EngineImpl, input_shapes: dict[str, tuple[int, ...]]) -> dict[str, list[int]]:
    cache = engine.__dict__.setdefault("_shape_cache", {})
    key = tuple(sorted(input_shapes.items()))
    if key not in cache:
        import onnx
        from onnx import shape_inference

        model = onnx.load_model_from_string(engine._onnx)
        for inp in model.graph.input:
            if inp.name in input_shapes:
                dims = inp.type.tensor_type.shape.dim
                for d, v in zip(dims, input_shapes[inp.name]):
                    d.ClearField("dim_param")
                    d.dim_value = int(v)
        inferred = shape_inference.infer_shapes(model, strict_mode=False)
        out = {}
        for o in inferred.graph.output:
            out[o.name] = [d.dim_value if d.HasField("dim_value") else -1 for d in o.type.tensor_type.shape.dim]
        cache[key] = out
    return dict(cache[key])


def _executable_model(desc: dict[str, Any], onnx_bytes: bytes) -> bytes:
    """The model ONNX Runtime runs for this engine: implicit INT8 layers fake-quantized with the calibration
    scales (activations per tensor, weights per output channel), FP16 layers' outputs rounded to float16."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    if desc["mode"] in ("explicit", "strong") and not any(p == "fp16" for p in desc["precisions"].values()):
        return onnx_bytes
    model = onnx.load_model_from_string(onnx_bytes)
    graph = model.graph
    inits = {i.name: i for i in graph.initializer}
    new_nodes = []
    scales = desc["scales"]
    for node in graph.node:
        p = desc["precisions"].get(node.name)
        if desc["mode"] == "implicit" and p == "int8" and node.op_type in ("Conv", "Gemm", "MatMul", "ConvTranspose"):
            x = node.input[0]
            if x in scales and scales[x] > 0:
                s_name, z_name = f"{x}__dbl_scale", f"{x}__dbl_zp"
                if s_name not in inits:
                    graph.initializer.append(numpy_helper.from_array(np.array(scales[x], dtype=np.float32), s_name))
                    graph.initializer.append(numpy_helper.from_array(np.array(0, dtype=np.int8), z_name))
                    inits[s_name] = graph.initializer[-2]
                q, dq = f"{x}__dbl_q", f"{x}__dbl_dq"
                new_nodes.append(helper.make_node("QuantizeLinear", [x, s_name, z_name], [q]))
                new_nodes.append(helper.make_node("DequantizeLinear", [q, s_name, z_name], [dq]))
                node.input[0] = dq
            w = node.input[1] if len(node.input) > 1 else ""
            if w in inits:
                arr = numpy_helper.to_array(inits[w]).astype(np.float32)
                axis = 0
                if node.op_type == "Gemm" and not any(a.name == "transB" and a.i for a in node.attribute):
                    axis = 1
                if node.op_type == "MatMul":
                    axis = arr.ndim - 1
                red = tuple(i for i in range(arr.ndim) if i != axis)
                amax = np.max(np.abs(arr), axis=red, keepdims=True)
                s = np.where(amax > 0, amax / 127.0, 1.0)
                q = np.clip(np.round(arr / s), -127, 127) * s
                inits[w].CopyFrom(numpy_helper.from_array(q.astype(np.float32), w))
        new_nodes.append(node)
        if p == "fp16":
            for i, out in enumerate(list(node.output)):
                if not out:
                    continue
                raw = f"{out}__dbl_fp32"
                node.output[i] = raw
                h = f"{out}__dbl_fp16"
                new_nodes.append(helper.make_node("Cast", [raw], [h], to=TensorProto.FLOAT16))
                new_nodes.append(helper.make_node("Cast", [h], [out], to=TensorProto.FLOAT))
    del graph.node[:]
    graph.node.extend(new_nodes)
    return model.SerializeToString()


# --------------------------------------------------------------------------------------------- module


def _init_libnvinfer_plugins(st: TrtDoubleState) -> Callable[..., bool]:
    def init_libnvinfer_plugins(logger: Any, namespace: str) -> bool:
        if logger is not None:
            _require_init(logger, "ILogger")
        st.plugins_registered = True
        return True

    return init_libnvinfer_plugins


_IMPLS: dict[str, type] = {
    "Dims": DimsImpl, "IHostMemory": HostMemoryImpl, "ILogger": ILoggerImpl, "Logger": LoggerImpl,
    "IProgressMonitor": InterfaceImpl, "IInt8Calibrator": CalibratorImpl, "IInt8EntropyCalibrator2": CalibratorImpl,
    "ITensor": TensorImpl, "ILayer": LayerImpl, "INetworkDefinition": NetworkImpl, "ParserError": ParserErrorImpl,
    "OnnxParser": OnnxParserImpl, "IOptimizationProfile": ProfileImpl, "ITimingCache": TimingCacheImpl,
    "IBuilderConfig": ConfigImpl, "Builder": BuilderImpl, "Runtime": RuntimeImpl, "ICudaEngine": EngineImpl,
    "EngineInspector": InspectorImpl, "IExecutionContext": ContextImpl,
}


def make_module(key: str = "10.3", *, version: str | None = None, gpu: str = "orin-nx-16gb") -> types.ModuleType:
    """A fresh ``tensorrt`` double for release ``key`` (8.5, 8.6, 10.3, 11.1) on the simulated ``gpu``."""
    st = TrtDoubleState(key, version or VERSIONS[key], gpu)
    surface = st.surface
    for qual, c in surface.classes.items():
        if c["kind"] != "enum":
            continue
        attrs = {"itemsize": property(lambda self: _ITEMSIZE.get(self.name, 4))} if qual == "DataType" else None
        st.enum[qual] = make_enum(surface, qual, MOD, member_attrs=attrs)
    def impl_of(qual: str) -> type:
        c = surface.classes[qual]
        impl = _IMPLS.get(qual)
        if impl is not None:
            return impl
        bases = set(c.get("bases", ()))
        if qual.startswith("I") and qual.endswith("Layer") or "ILayer" in bases:
            return LayerImpl
        if qual.startswith("IInt8") or "IInt8Calibrator" in bases:
            return CalibratorImpl
        return PlainImpl

    def build_class(qual: str) -> type:
        if qual in st.cls:
            return st.cls[qual]
        impl = impl_of(qual)
        parent = None
        for base in surface.classes[qual].get("bases", ()):
            if base in surface.classes and surface.classes[base]["kind"] != "enum":
                candidate = build_class(base)
                if issubclass(candidate, impl) or issubclass(impl, impl_of(base)) and impl is impl_of(base):
                    parent = candidate
                    break
        if parent is not None and not issubclass(parent, impl):
            parent = None
        cls = strict_class(impl, surface, qual, module=MOD, label=f"TensorRT {st.version_string}", parent=parent)
        cls._st = st
        st.cls[qual] = cls
        return cls

    for qual, c in surface.classes.items():
        if c["kind"] != "enum":
            build_class(qual)
    # nested classes and enums, exported enum values, attributes the package's __init__.py sets
    for qual, c in surface.classes.items():
        if "." in qual:
            scope, name = qual.rsplit(".", 1)
            value = st.enum.get(qual) or st.cls.get(qual)
            if scope in st.cls:
                setattr(st.cls[scope], name, value)
                if c.get("export_values"):
                    for v in c.get("values", ()):
                        setattr(st.cls[scope], v, getattr(value, v))
    if "Logger" in st.cls and "ILogger.Severity" in st.enum:
        sev = st.enum["ILogger.Severity"]
        for name in surface.classes["Logger"].get("python_attrs", ()):
            if name == "Severity":
                st.cls["Logger"].Severity = sev
            elif name in sev.__members__:
                setattr(st.cls["Logger"], name, getattr(sev, name))

    def enter(this: Any) -> Any:
        warnings.warn("Context managers for TensorRT types are deprecated. Memory will be freed automatically when "
                      "the reference count reaches 0.", DeprecationWarning, stacklevel=2)
        return this

    for qual, c in surface.classes.items():
        if "__enter__" in c.get("python_attrs", ()) and qual in st.cls:
            st.cls[qual].__enter__ = enter
            st.cls[qual].__exit__ = lambda this, *exc: None
    mod = types.ModuleType("tensorrt")
    mod.__spec__ = importlib.machinery.ModuleSpec("tensorrt", None)  # as an imported module has (find_spec reads it)
    mod.__doc__ = f"TensorRT {st.version_string} test double (API: {surface.source})"
    values: dict[str, Any] = {**{q: v for q, v in st.cls.items() if "." not in q},
                              **{q: v for q, v in st.enum.items() if "." not in q},
                              "__version__": st.version_string,
                              "init_libnvinfer_plugins": _init_libnvinfer_plugins(st),
                              "get_nv_onnx_parser_version": lambda: st.version[0] * 10000 + st.version[1] * 100,
                              "volume": lambda it: int(np.prod(list(it))) if list(it) else 1,
                              "nptype": lambda t: _TRT_TO_NP[t.name], "os": __import__("os"),
                              "sys": sys, "warnings": warnings, "ctypes": __import__("ctypes")}
    dt = st.enum["DataType"]
    for alias, name in (("float32", "FLOAT"), ("float16", "HALF"), ("int8", "INT8"), ("int32", "INT32"),
                        ("int64", "INT64"), ("bool", "BOOL"), ("uint8", "UINT8"), ("bfloat16", "BF16"), ("fp8", "FP8"),
                        ("int4", "INT4")):
        if hasattr(dt, name):
            values[alias] = getattr(dt, name)
    for name in surface.module:
        if name in values:
            setattr(mod, name, values[name])
        elif not name.startswith("_"):
            setattr(mod, name, _unimplemented(name, st))
    mod._double_state = st  # type: ignore[attr-defined]  # tests read what happened (deprecated calls, plugins)
    return mod


def _unimplemented(name: str, st: TrtDoubleState) -> Any:
    def stub(*args: Any, **kwargs: Any) -> Any:
        raise NotImplementedError(f"tensorrt.{name} exists in TensorRT {st.version_string}; the test double does not "
                                  "implement it")

    stub.__name__ = name
    return stub


def plan_bytes_path(path: Path) -> dict[str, Any]:
    """Read a double-built plan's description (tests inspect what the 'device' built)."""
    data = Path(path).read_bytes()
    return json.loads(data[28 + len(PAYLOAD_MAGIC):])  # type: ignore[no-any-return]
