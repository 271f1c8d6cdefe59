"""The build spec: one typed, versioned TOML file that every stage reads.

    version = 1
    [model]
    name = "mobilenet_v2"            # used for output folders: calibration/<name>/, engines/<name>/...
    source = "mobilenet_v2"          # torchvision name, package.module:factory, or a .onnx file
    weights = "path/to/weights.pth"  # optional
    opset = 17

    [[inputs]]
    name = "input"
    shape = [1, 3, 224, 224]         # opt shape; min_shape / max_shape for TensorRT profiles
    dtype = "float32"

    [preprocessing]                  # how images become input tensors
    resize = 256
    crop = 224

    [calibration]
    data = "demo"                    # "demo", a folder of images, or a .npy file
    method = "entropy"
    num_images = 256
    batch_size = 8

    [[precision.rules]]              # issue: precision policy
    match = "classifier*"
    precision = "fp32"

    [build]
    targets = ["orin-nx-16gb"]

Validation raises SpecError naming the key and the allowed values. Unknown keys are errors (a typo in
a spec must not silently fall back to a default).
"""

from __future__ import annotations

import sys
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .data.images import IMAGENET_MEAN, IMAGENET_STD, Preprocessing
from .errors import SpecError, require_file
from .vocab import CALIBRATION_METHODS, PRECISIONS

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

SPEC_VERSION = 1
DTYPES = ("float32", "float16", "int64", "int32", "uint8", "bool")


def _check_keys(table: Mapping[str, Any], allowed: set[str], where: str) -> None:
    unknown = sorted(set(table) - allowed)
    if unknown:
        raise SpecError(f"unknown key(s) {unknown} in [{where}]; allowed keys: {sorted(allowed)}")


def _get(table: Mapping[str, Any], key: str, typ: type | tuple[type, ...], where: str, default: Any = ...) -> Any:
    if key not in table:
        if default is ...:
            raise SpecError(f"missing required key '{where}.{key}'")
        return default
    value = table[key]
    if isinstance(value, bool) and typ in (int, float, (int, float)):
        raise SpecError(f"'{where}.{key}' must be {getattr(typ, '__name__', typ)}, got a boolean")
    if not isinstance(value, typ):
        names = typ.__name__ if isinstance(typ, type) else " or ".join(t.__name__ for t in typ)
        raise SpecError(f"'{where}.{key}' must be {names}, got {type(value).__name__} {value!r}")
    return value


def _choice(value: str, allowed: tuple[str, ...], key: str) -> str:
    if value not in allowed:
        raise SpecError(f"'{key}' = {value!r} is not allowed; choose one of {list(allowed)}")
    return value


def _shape(value: Any, key: str) -> tuple[int, ...]:
    if not isinstance(value, list) or not value or not all(isinstance(d, int) and not isinstance(d, bool) for d in value):
        raise SpecError(f"'{key}' must be a non-empty list of integers, got {value!r}")
    if any(d <= 0 for d in value):
        raise SpecError(f"'{key}' = {value} has a non-positive dimension; give concrete sizes")
    return tuple(value)


@dataclass(frozen=True)
class ModelSpec:
    name: str
    source: str
    weights: str | None = None
    opset: int = 17

    def __post_init__(self) -> None:
        if not self.name or "/" in self.name or self.name.startswith("."):
            raise SpecError(f"'model.name' = {self.name!r} must be a plain folder-safe name (no '/')")
        if not 11 <= self.opset <= 23:
            raise SpecError(f"'model.opset' = {self.opset} is outside the supported range 11..23")


@dataclass(frozen=True)
class InputSpec:
    name: str
    shape: tuple[int, ...]
    dtype: str = "float32"
    min_shape: tuple[int, ...] | None = None
    max_shape: tuple[int, ...] | None = None

    def __post_init__(self) -> None:
        _choice(self.dtype, DTYPES, f"inputs[{self.name}].dtype")
        for label, other in (("min_shape", self.min_shape), ("max_shape", self.max_shape)):
            if other is not None and len(other) != len(self.shape):
                raise SpecError(f"'inputs[{self.name}].{label}' has rank {len(other)}, shape has rank {len(self.shape)}")
        lo = self.min_shape or self.shape
        hi = self.max_shape or self.shape
        if any(a > b for a, b in zip(lo, self.shape)) or any(a > b for a, b in zip(self.shape, hi)):
            raise SpecError(f"inputs[{self.name}]: need min_shape <= shape <= max_shape, got {lo} / {self.shape} / {hi}")


@dataclass(frozen=True)
class CalibrationSpec:
    data: str = "demo"
    method: str = "entropy"
    num_images: int = 256
    batch_size: int = 8
    percentile: float = 99.99

    def __post_init__(self) -> None:
        _choice(self.method, CALIBRATION_METHODS, "calibration.method")
        if self.num_images <= 0:
            raise SpecError(f"'calibration.num_images' must be positive, got {self.num_images}")
        if self.batch_size <= 0:
            raise SpecError(f"'calibration.batch_size' must be positive, got {self.batch_size}")
        if not 50.0 < self.percentile <= 100.0:
            raise SpecError(f"'calibration.percentile' must be in (50, 100], got {self.percentile}")


@dataclass(frozen=True)
class PrecisionRule:
    """One policy rule. Exactly one of match (glob on node names/scopes), regex, op_type, node."""

    precision: str
    match: str | None = None
    regex: str | None = None
    op_type: str | None = None
    node: str | None = None
    reason: str = ""

    def __post_init__(self) -> None:
        _choice(self.precision, PRECISIONS, "precision.rules[].precision")
        selectors = [s for s in (self.match, self.regex, self.op_type, self.node) if s is not None]
        if len(selectors) != 1:
            raise SpecError(
                "each [[precision.rules]] needs exactly one of 'match', 'regex', 'op_type', 'node', "
                f"got {len(selectors)} (precision={self.precision!r})"
            )


@dataclass(frozen=True)
class PrecisionSpec:
    default: str = "int8"
    preset: str = "cnn"
    rules: tuple[PrecisionRule, ...] = ()

    def __post_init__(self) -> None:
        _choice(self.default, ("fp32", "fp16", "int8"), "precision.default")
        _choice(self.preset, ("cnn", "vit", "vlm-vision", "none"), "precision.preset")


@dataclass(frozen=True)
class BuildSpec:
    targets: tuple[str, ...] = ()
    workspace_mib: int | None = None

    def __post_init__(self) -> None:
        if self.workspace_mib is not None and self.workspace_mib <= 0:
            raise SpecError(f"'build.workspace_mib' must be positive, got {self.workspace_mib}")


@dataclass(frozen=True)
class Spec:
    model: ModelSpec
    inputs: tuple[InputSpec, ...]
    preprocessing: Preprocessing = field(default_factory=Preprocessing)
    calibration: CalibrationSpec = field(default_factory=CalibrationSpec)
    precision: PrecisionSpec = field(default_factory=PrecisionSpec)
    build: BuildSpec = field(default_factory=BuildSpec)
    version: int = SPEC_VERSION
    path: Path | None = field(default=None, compare=False)

    def resolve_path(self, value: str) -> Path:
        """Paths in a spec are relative to the spec file."""
        p = Path(value)
        if not p.is_absolute() and self.path is not None:
            p = self.path.parent / p
        return p

    def to_dict(self) -> dict[str, Any]:
        return {
            "version": self.version,
            "model": {k: v for k, v in vars(self.model).items() if v is not None},
            "inputs": [
                {k: (list(v) if isinstance(v, tuple) else v) for k, v in vars(i).items() if v is not None}
                for i in self.inputs
            ],
            "preprocessing": {k: v for k, v in self.preprocessing.to_dict().items() if k != "version"},
            "calibration": dict(vars(self.calibration)),
            "precision": {
                "default": self.precision.default,
                "preset": self.precision.preset,
                "rules": [{k: v for k, v in vars(r).items() if v not in (None, "")} for r in self.precision.rules],
            },
            "build": {k: (list(v) if isinstance(v, tuple) else v) for k, v in vars(self.build).items() if v is not None},
        }


def parse_spec(doc: Mapping[str, Any], path: Path | None = None) -> Spec:
    _check_keys(doc, {"version", "model", "inputs", "preprocessing", "calibration", "precision", "build"}, "spec")
    version = _get(doc, "version", int, "spec", SPEC_VERSION)
    if version != SPEC_VERSION:
        raise SpecError(f"'version' = {version} is not supported; this vqz-edge reads spec version {SPEC_VERSION}")

    m = _get(doc, "model", dict, "spec")
    _check_keys(m, {"name", "source", "weights", "opset"}, "model")
    model = ModelSpec(
        name=_get(m, "name", str, "model"),
        source=_get(m, "source", str, "model"),
        weights=_get(m, "weights", str, "model", None),
        opset=_get(m, "opset", int, "model", 17),
    )

    raw_inputs = _get(doc, "inputs", list, "spec")
    if not raw_inputs:
        raise SpecError("'inputs' must list at least one [[inputs]] table")
    inputs = []
    for i, t in enumerate(raw_inputs):
        where = f"inputs[{i}]"
        if not isinstance(t, dict):
            raise SpecError(f"'{where}' must be a table ([[inputs]])")
        _check_keys(t, {"name", "shape", "dtype", "min_shape", "max_shape"}, where)
        inputs.append(
            InputSpec(
                name=_get(t, "name", str, where),
                shape=_shape(_get(t, "shape", list, where), f"{where}.shape"),
                dtype=_get(t, "dtype", str, where, "float32"),
                min_shape=_shape(t["min_shape"], f"{where}.min_shape") if "min_shape" in t else None,
                max_shape=_shape(t["max_shape"], f"{where}.max_shape") if "max_shape" in t else None,
            )
        )
    names = [i.name for i in inputs]
    if len(set(names)) != len(names):
        raise SpecError(f"input names must be unique, got {names}")

    p = _get(doc, "preprocessing", dict, "spec", {})
    _check_keys(p, {"resize", "crop", "mean", "std", "layout", "channels"}, "preprocessing")
    try:
        pre = Preprocessing(
            resize=_get(p, "resize", int, "preprocessing", 256),
            crop=_get(p, "crop", int, "preprocessing", 224),
            mean=tuple(_get(p, "mean", list, "preprocessing", list(IMAGENET_MEAN))),
            std=tuple(_get(p, "std", list, "preprocessing", list(IMAGENET_STD))),
            layout=_get(p, "layout", str, "preprocessing", "NCHW"),
            channels=_get(p, "channels", int, "preprocessing", 3),
        )
    except ValueError as exc:
        raise SpecError(str(exc)) from exc

    c = _get(doc, "calibration", dict, "spec", {})
    _check_keys(c, {"data", "method", "num_images", "batch_size", "percentile"}, "calibration")
    calibration = CalibrationSpec(
        data=_get(c, "data", str, "calibration", "demo"),
        method=_get(c, "method", str, "calibration", "entropy"),
        num_images=_get(c, "num_images", int, "calibration", 256),
        batch_size=_get(c, "batch_size", int, "calibration", 8),
        percentile=float(_get(c, "percentile", (int, float), "calibration", 99.99)),
    )

    pr = _get(doc, "precision", dict, "spec", {})
    _check_keys(pr, {"default", "preset", "rules"}, "precision")
    rules = []
    for i, r in enumerate(_get(pr, "rules", list, "precision", [])):
        where = f"precision.rules[{i}]"
        if not isinstance(r, dict):
            raise SpecError(f"'{where}' must be a table ([[precision.rules]])")
        _check_keys(r, {"precision", "match", "regex", "op_type", "node", "reason"}, where)
        rules.append(
            PrecisionRule(
                precision=_get(r, "precision", str, where),
                match=_get(r, "match", str, where, None),
                regex=_get(r, "regex", str, where, None),
                op_type=_get(r, "op_type", str, where, None),
                node=_get(r, "node", str, where, None),
                reason=_get(r, "reason", str, where, ""),
            )
        )
    precision = PrecisionSpec(
        default=_get(pr, "default", str, "precision", "int8"),
        preset=_get(pr, "preset", str, "precision", "cnn"),
        rules=tuple(rules),
    )

    b = _get(doc, "build", dict, "spec", {})
    _check_keys(b, {"targets", "workspace_mib"}, "build")
    targets = _get(b, "targets", list, "build", [])
    if not all(isinstance(t, str) for t in targets):
        raise SpecError(f"'build.targets' must be a list of target names, got {targets!r}")
    build = BuildSpec(targets=tuple(targets), workspace_mib=_get(b, "workspace_mib", int, "build", None))
    return Spec(model, tuple(inputs), pre, calibration, precision, build, version, path)


def load_spec(path: Path) -> Spec:
    path = Path(path)
    require_file(path, "spec file", error=SpecError)
    try:
        doc = tomllib.loads(path.read_text(encoding="utf-8"))
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise SpecError(f"{path} is not valid TOML: {exc}") from exc
    try:
        return parse_spec(doc, path.resolve())
    except SpecError as exc:
        raise SpecError(f"{path}: {exc.message}", hint=exc.hint) from exc
