"""Preprocessing as a declared, recorded stage: how a camera frame becomes the model's input tensor.

Two types:

* :class:`PreprocessingRequest` -- what a user *declared* (the spec's ``[preprocessing]`` table, the shared
  command-line options, or both: the command line wins and says so). Every field may be missing.
* :class:`Preprocessing` -- the *resolved* recipe, every field concrete (size from the model's input where the
  declaration leaves it out). This is what the data pipeline runs and what calibration records in summary.json
  and plan.json; a later stage compares its own resolved recipe with the recorded one
  (:func:`check_against_record`) and stops when they differ.

Named presets (:data:`PRESETS`) cover the common model families: ``imagenet`` (torchvision classifiers),
``clip``, ``siglip``, ``yolo`` (letterbox, [0, 1]) and ``raw`` ([0, 255]). A declaration without a preset must
name mean and std itself: nothing falls back to ImageNet normalisation unless the user (or the bundled demo, which
says so) asked for it.

Pure Python (no numpy), importable on the device: Python 3.8 compatible.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from .errors import DataError, SpecError

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)

RESIZE_MODES = ("center-crop", "letterbox", "stretch")
SCALES = ("1/255", "1")
CHANNEL_ORDERS = ("RGB", "BGR")
LAYOUTS = ("NCHW", "NHWC")
INTERPOLATIONS = ("bilinear", "bicubic", "nearest")
PREPROCESSING_VERSION = 2


@dataclass(frozen=True)
class Preset:
    """A named starting point. ``crop_fraction``: center-crop's crop / resized short side (ImageNet 224/256)."""

    name: str
    resize_mode: str
    mean: tuple[float, ...]
    std: tuple[float, ...]
    scale: str = "1/255"
    crop_fraction: float = 0.875
    pad_value: int = 114
    interpolation: str = "bilinear"
    channel_order: str = "RGB"
    description: str = ""


PRESETS: dict[str, Preset] = {
    p.name: p
    for p in (
        Preset("imagenet", "center-crop", IMAGENET_MEAN, IMAGENET_STD,
               description="torchvision classifiers: short side to size*256/224, center crop, [0,1], ImageNet mean/std"),
        Preset("clip", "center-crop", CLIP_MEAN, CLIP_STD, crop_fraction=1.0, interpolation="bicubic",
               description="OpenAI CLIP / open_clip: short side to size (bicubic), center crop, [0,1], CLIP mean/std"),
        Preset("siglip", "stretch", (0.5, 0.5, 0.5), (0.5, 0.5, 0.5), interpolation="bicubic",
               description="SigLIP: resize to HxW (bicubic), [0,1], mean/std 0.5 (values in [-1, 1])"),
        Preset("yolo", "letterbox", (0.0, 0.0, 0.0), (1.0, 1.0, 1.0),
               description="YOLO-style detectors: letterbox (aspect kept, pad 114), RGB in [0, 1]"),
        Preset("raw", "stretch", (0.0, 0.0, 0.0), (1.0, 1.0, 1.0), scale="1",
               description="resize to HxW, values in [0, 255], no normalisation"),
    )
}


def _choice(value: str, allowed: Sequence[str], what: str) -> str:
    if value not in allowed:
        raise DataError(f"preprocessing {what} {value!r} is not allowed; choose one of {list(allowed)}")
    return value


@dataclass(frozen=True)
class Preprocessing:
    """The resolved recipe: uint8 HxWxC photo -> float32 tensor of the model's input.

    resize_mode ``center-crop`` scales the photo so that it covers the crop (the short side of the resized photo
    is ``resize`` for a square crop), then cuts the central ``size``; ``letterbox`` scales it to fit inside
    ``size`` keeping its aspect and pads with ``pad_value``; ``stretch`` resizes to ``size``. Then the channel order
    (photos are read RGB; ``BGR`` swaps), the scale (``1/255``: divide by 255; ``1``: keep 0..255), ``(x - mean) /
    std`` with mean/std listed in the *model's* channel order, and the layout.
    """

    size: tuple[int, int] = (224, 224)  # (H, W)
    resize_mode: str = "center-crop"
    resize: int = 256  # center-crop: short side of the resized photo (for a square size)
    pad_value: int = 114  # letterbox
    scale: str = "1/255"
    mean: tuple[float, ...] = IMAGENET_MEAN
    std: tuple[float, ...] = IMAGENET_STD
    channel_order: str = "RGB"
    layout: str = "NCHW"
    channels: int = 3
    interpolation: str = "bilinear"
    preset: str | None = field(default=None, compare=False)  # where it started from; informative only
    version: int = PREPROCESSING_VERSION

    def __post_init__(self) -> None:
        h, w = self.size
        if h <= 0 or w <= 0:
            raise DataError(f"preprocessing size must be positive, got {h}x{w}")
        _choice(self.resize_mode, RESIZE_MODES, "resize_mode")
        if self.resize_mode == "center-crop" and self.resize < min(h, w):
            raise DataError(f"preprocessing resize ({self.resize}) must not be below the crop's short side "
                            f"({min(h, w)}): center-crop cuts {h}x{w} out of the resized photo")
        if not 0 <= self.pad_value <= 255:
            raise DataError(f"preprocessing pad_value must be a pixel value in 0..255, got {self.pad_value}")
        _choice(self.scale, SCALES, "scale")
        _choice(self.channel_order, CHANNEL_ORDERS, "channel_order")
        _choice(self.layout, LAYOUTS, "layout")
        _choice(self.interpolation, INTERPOLATIONS, "interpolation")
        if self.channels not in (1, 3):
            raise DataError(f"preprocessing channels must be 1 or 3, got {self.channels}")
        if len(self.mean) != self.channels or len(self.std) != self.channels:
            raise DataError(f"preprocessing mean/std need {self.channels} value(s) each, got {list(self.mean)} / "
                            f"{list(self.std)}")
        if any(not s > 0 for s in self.std):
            raise DataError(f"preprocessing std values must be positive, got {list(self.std)}")

    @property
    def crop(self) -> int:
        """The square size (older callers); non-square sizes have no single crop."""
        if self.size[0] != self.size[1]:
            raise DataError(f"preprocessing size {self.size[0]}x{self.size[1]} is not square")
        return self.size[0]

    @classmethod
    def for_input_shape(cls, shape: Sequence[int], layout: str = "NCHW") -> Preprocessing:
        """The ``imagenet`` preset sized for ``shape`` (N,C,H,W or N,H,W,C). Callers that use it must say so:
        the demo classifier and export verification on demo photos."""
        return PreprocessingRequest(preset="imagenet", layout=layout).resolve(shape)

    def describe(self) -> str:
        h, w = self.size
        geo = {"center-crop": f"center-crop {h}x{w} (resize {self.resize})",
               "letterbox": f"letterbox {h}x{w} (pad {self.pad_value})", "stretch": f"stretch to {h}x{w}"}
        name = f"{self.preset}: " if self.preset else ""
        return (f"{name}{geo[self.resize_mode]}, {self.interpolation}, {self.channel_order}, scale {self.scale}, "
                f"mean {_fmt(self.mean)}, std {_fmt(self.std)}, {self.layout}")

    def to_dict(self) -> dict[str, Any]:
        return {
            "size": list(self.size),
            "resize_mode": self.resize_mode,
            "resize": self.resize,
            "pad_value": self.pad_value,
            "scale": self.scale,
            "mean": list(self.mean),
            "std": list(self.std),
            "channel_order": self.channel_order,
            "layout": self.layout,
            "channels": self.channels,
            "interpolation": self.interpolation,
            "preset": self.preset,
            "version": self.version,
        }

    @classmethod
    def from_dict(cls, doc: Mapping[str, Any]) -> Preprocessing:
        """Read a recorded recipe (version 2, or the version 1 of older summaries: ImageNet-style center crop)."""
        try:
            version = int(doc.get("version", 1))
            if version == 1:
                crop = int(doc["crop"])
                return cls(size=(crop, crop), resize=int(doc["resize"]), mean=tuple(float(v) for v in doc["mean"]),
                           std=tuple(float(v) for v in doc["std"]), layout=str(doc.get("layout", "NCHW")),
                           channels=int(doc.get("channels", 3)))
            size = [int(v) for v in doc["size"]]
            return cls(
                size=(size[0], size[1]), resize_mode=str(doc["resize_mode"]), resize=int(doc["resize"]),
                pad_value=int(doc["pad_value"]), scale=str(doc["scale"]), mean=tuple(float(v) for v in doc["mean"]),
                std=tuple(float(v) for v in doc["std"]), channel_order=str(doc["channel_order"]),
                layout=str(doc["layout"]), channels=int(doc["channels"]), interpolation=str(doc["interpolation"]),
                preset=None if doc.get("preset") is None else str(doc["preset"]), version=version,
            )
        except (KeyError, TypeError, ValueError, IndexError) as exc:
            raise DataError(f"recorded preprocessing {dict(doc)!r} is not readable: {exc}") from exc

    def differences(self, other: Preprocessing) -> list[tuple[str, Any, Any]]:
        """(field, self's, other's) for every field that changes the tensor (not the preset's name)."""
        out = []
        for f in fields(self):
            if f.name in ("preset", "version"):
                continue
            a, b = getattr(self, f.name), getattr(other, f.name)
            if f.name == "resize" and self.resize_mode != "center-crop" and other.resize_mode != "center-crop":
                continue
            if f.name == "pad_value" and "letterbox" not in (self.resize_mode, other.resize_mode):
                continue
            if a != b:
                out.append((f.name, a, b))
        return out


def _fmt(values: Sequence[float]) -> str:
    return "[" + ", ".join(f"{v:g}" for v in values) + "]"


REQUEST_FIELDS = ("preset", "size", "resize_mode", "resize", "pad_value", "scale", "mean", "std", "channel_order",
                  "layout", "interpolation")


@dataclass(frozen=True)
class PreprocessingRequest:
    """What was declared (any field may be None = not declared). ``origin`` names where it came from."""

    preset: str | None = None
    size: tuple[int, int] | None = None
    resize_mode: str | None = None
    resize: int | None = None
    pad_value: int | None = None
    scale: str | None = None
    mean: tuple[float, ...] | None = None
    std: tuple[float, ...] | None = None
    channel_order: str | None = None
    layout: str | None = None
    interpolation: str | None = None
    origin: str = field(default="", compare=False)

    def __post_init__(self) -> None:
        if self.preset is not None and self.preset not in PRESETS:
            raise DataError(f"unknown preprocessing preset {self.preset!r}; choose one of {sorted(PRESETS)}")
        for name, allowed in (("resize_mode", RESIZE_MODES), ("scale", SCALES), ("channel_order", CHANNEL_ORDERS),
                              ("layout", LAYOUTS), ("interpolation", INTERPOLATIONS)):
            value = getattr(self, name)
            if value is not None:
                _choice(value, allowed, name)
        if self.size is not None and (len(self.size) != 2 or min(self.size) <= 0):
            raise DataError(f"preprocessing size must be H x W with positive values, got {self.size}")
        if self.resize is not None and self.resize <= 0:
            raise DataError(f"preprocessing resize must be positive, got {self.resize}")
        if self.pad_value is not None and not 0 <= self.pad_value <= 255:
            raise DataError(f"preprocessing pad_value must be in 0..255, got {self.pad_value}")
        if (self.mean is None) != (self.std is None) and self.preset is None:
            raise DataError("preprocessing without a preset needs both mean and std")

    def declared(self) -> dict[str, Any]:
        return {k: getattr(self, k) for k in REQUEST_FIELDS if getattr(self, k) is not None}

    def is_empty(self) -> bool:
        return not self.declared()

    def to_dict(self) -> dict[str, Any]:
        return {k: (list(v) if isinstance(v, tuple) else v) for k, v in self.declared().items()}

    def overridden_by(self, other: PreprocessingRequest) -> tuple[PreprocessingRequest, list[str]]:
        """``other``'s declared fields win (a preset in ``other`` resets the fields ``other`` leaves out to that
        preset's); returns the merge and one note per value that changed."""
        mine, theirs = self.declared(), other.declared()
        if not theirs:
            return self, []
        if not mine:
            return other, []
        notes = []
        if "preset" in theirs and theirs.get("preset") != mine.get("preset"):
            dropped = [k for k in mine if k not in theirs and k != "preset"]
            notes.append(f"{other.origin or 'override'}: preset {theirs['preset']!r} replaces "
                         f"{self.origin or 'the declaration'}'s {_describe_decl(mine)}"
                         + (f" (its {', '.join(dropped)} dropped)" if dropped else ""))
            return other, notes
        merged = dict(mine)
        base = PRESETS.get(str(mine.get("preset")))
        for k, v in theirs.items():
            before = mine[k] if k in mine else getattr(base, k, None)
            if before is not None and before != v:
                implied = "" if k in mine else f" (its preset {base.name}'s)"  # type: ignore[union-attr]
                notes.append(f"{other.origin or 'override'} overrides {self.origin or 'the declaration'}: "
                             f"{k} {_show(before)}{implied} -> {_show(v)}")
            merged[k] = v
        origin = f"{self.origin} + {other.origin}" if self.origin and other.origin else (self.origin or other.origin)
        return PreprocessingRequest(origin=origin, **merged), notes

    def resolve(self, input_shape: Sequence[Any] | None = None, *, channels: int | None = None) -> Preprocessing:
        """The concrete recipe for a model input of ``input_shape`` (N,C,H,W / N,H,W,C; dynamic dims as strings or
        non-positive ints). The declared size must agree with the model's fixed H/W; dynamic H/W need a size."""
        if self.preset is None and self.mean is None:
            raise DataError(
                "no preprocessing declared" + (f" ({self.origin})" if self.origin else ""),
                hint="name it: --preprocess imagenet|clip|siglip|yolo|raw (plus --size/--mean/--std/--channel-order ... "
                "to adjust) or give --mean and --std, or [preprocessing] preset = \"...\" in the spec (docs/spec.md)",
            )
        base = PRESETS[self.preset] if self.preset else None
        layout = self.layout or _infer_layout(input_shape)
        model_hw: tuple[int | None, int | None] = (None, None)
        c = channels
        if input_shape is not None:
            if len(input_shape) != 4:
                raise DataError(f"image preprocessing feeds a 4-D input (N,C,H,W or N,H,W,C), got {list(input_shape)}",
                                hint="give a .npy array with the model's input shape instead")
            dc, dh, dw = ((input_shape[1], input_shape[2], input_shape[3]) if layout == "NCHW"
                          else (input_shape[3], input_shape[1], input_shape[2]))
            model_hw = (_fixed(dh), _fixed(dw))
            if _fixed(dc) is not None:
                c = _fixed(dc)
        c = 3 if c is None else c
        if c not in (1, 3):
            raise DataError(f"model input {list(input_shape or ())} has {c} channels; image data feeds 1 (grayscale) "
                            f"or 3 (colour) channels (layout {layout})",
                            hint="for NHWC models declare layout NHWC; otherwise give a .npy array")
        size = self._size(model_hw, input_shape)
        mode = self.resize_mode or (base.resize_mode if base else "center-crop")
        fraction = base.crop_fraction if base else 0.875
        resize = self.resize if self.resize is not None else max(min(size), round(min(size) / fraction))
        mean = self.mean if self.mean is not None else base.mean  # type: ignore[union-attr]
        std = self.std if self.std is not None else base.std  # type: ignore[union-attr]
        if c == 1 and len(mean) == 3 and self.mean is None:
            mean = (round(sum(mean) / 3, 3),)
        if c == 1 and len(std) == 3 and self.std is None:
            std = (round(sum(std) / 3, 3),)
        return Preprocessing(
            size=size, resize_mode=mode, resize=resize,
            pad_value=self.pad_value if self.pad_value is not None else (base.pad_value if base else 114),
            scale=self.scale or (base.scale if base else "1/255"), mean=tuple(mean), std=tuple(std),
            channel_order=self.channel_order or (base.channel_order if base else "RGB"), layout=layout, channels=c,
            interpolation=self.interpolation or (base.interpolation if base else "bilinear"),
            preset=self.preset if self.preset and not self._overrides_preset() else
            (f"{self.preset}+custom" if self.preset else "custom"),
        )

    def _overrides_preset(self) -> bool:
        return any(k in ("resize_mode", "resize", "pad_value", "scale", "mean", "std", "channel_order",
                         "interpolation") for k in self.declared())

    def _size(self, model_hw: tuple[int | None, int | None], shape: Sequence[Any] | None) -> tuple[int, int]:
        mh, mw = model_hw
        if self.size is not None:
            h, w = self.size
            for have, want, axis in ((h, mh, "H"), (w, mw, "W")):
                if want is not None and have != want:
                    raise DataError(
                        f"declared preprocessing size {h}x{w} does not match the model input {list(shape or ())} "
                        f"({axis} is {want})", hint="drop the size (it comes from the model) or fix it")
            return h, w
        if mh is None or mw is None:
            raise DataError(
                f"the model input {list(shape or ())} has dynamic height/width; declare the image size",
                hint="--size HxW (e.g. --size 48x192) or [preprocessing] size = [H, W] in the spec",
            )
        return mh, mw


def _fixed(d: Any) -> int | None:
    return int(d) if isinstance(d, int) and not isinstance(d, bool) and d > 0 else None


def _infer_layout(shape: Sequence[Any] | None) -> str:
    if shape is not None and len(shape) == 4 and _fixed(shape[1]) not in (1, 3) and _fixed(shape[3]) in (1, 3):
        return "NHWC"
    return "NCHW"


def _show(v: Any) -> str:
    if isinstance(v, tuple) and v and all(isinstance(x, float) for x in v):
        return _fmt(v)
    if isinstance(v, tuple):
        return "x".join(str(x) for x in v)
    return repr(v) if isinstance(v, str) else str(v)


def _describe_decl(d: Mapping[str, Any]) -> str:
    return ", ".join(f"{k} {_show(v)}" for k, v in d.items()) or "nothing"


# -- the spec's [preprocessing] table -------------------------------------------------------------------------------

SPEC_KEYS = ("preset", "size", "resize_mode", "resize", "crop", "pad_value", "scale", "mean", "std", "channel_order",
             "layout", "interpolation")


def parse_scale(value: Any, where: str) -> str:
    """'1/255' / 'none' / '1' or the numbers 1/255 and 1 -> '1/255' or '1'."""
    if isinstance(value, str):
        text = value.strip().lower()
        if text in ("1/255",):
            return "1/255"
        if text in ("1", "none", "1.0"):
            return "1"
    elif isinstance(value, (int, float)) and not isinstance(value, bool):
        if abs(float(value) - 1.0 / 255.0) < 1e-9:
            return "1/255"
        if float(value) == 1.0:
            return "1"
    raise SpecError(f"'{where}' = {value!r} is not allowed; use \"1/255\" (pixels / 255, values in [0, 1]) or "
                    "\"none\" (values 0..255)")


def request_from_table(table: Mapping[str, Any], where: str = "preprocessing") -> PreprocessingRequest:
    """The spec's ``[preprocessing]`` table -> a request (SpecError naming the key for anything wrong)."""
    unknown = sorted(set(table) - set(SPEC_KEYS))
    if unknown:
        raise SpecError(f"unknown key(s) {unknown} in [{where}]; allowed keys: {sorted(SPEC_KEYS)}")

    def get(key: str, typ: Any) -> Any:
        if key not in table:
            return None
        value = table[key]
        if isinstance(value, bool) or not isinstance(value, typ):
            raise SpecError(f"'{where}.{key}' has the wrong type: {value!r}")
        return value

    def floats(key: str) -> tuple[float, ...] | None:
        value = get(key, list)
        if value is None:
            return None
        if not value or not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in value):
            raise SpecError(f"'{where}.{key}' must be a list of numbers (one per channel), got {value!r}")
        return tuple(float(v) for v in value)

    size_v = get("size", (int, list))
    size: tuple[int, int] | None = None
    if isinstance(size_v, int):
        size = (size_v, size_v)
    elif size_v is not None:
        if len(size_v) != 2 or not all(isinstance(v, int) and not isinstance(v, bool) for v in size_v):
            raise SpecError(f"'{where}.size' must be [H, W] (or one integer for a square), got {size_v!r}")
        size = (size_v[0], size_v[1])
    crop = get("crop", int)
    if crop is not None:
        if size is not None and size != (crop, crop):
            raise SpecError(f"'{where}.crop' = {crop} and '{where}.size' = {list(size)} disagree; give size only")
        size = (crop, crop)
    try:
        return PreprocessingRequest(
            preset=get("preset", str), size=size, resize_mode=get("resize_mode", str), resize=get("resize", int),
            pad_value=get("pad_value", int),
            scale=parse_scale(table["scale"], f"{where}.scale") if "scale" in table else None,
            mean=floats("mean"), std=floats("std"), channel_order=_upper(get("channel_order", str)),
            layout=_upper(get("layout", str)), interpolation=get("interpolation", str), origin="spec [preprocessing]",
        )
    except DataError as exc:
        raise SpecError(f"[{where}]: {exc.message}", hint=exc.hint) from exc


def _upper(v: str | None) -> str | None:
    return None if v is None else v.upper()


# -- comparing with what calibration recorded ----------------------------------------------------------------------

def side_by_side(recorded: Preprocessing, used: Preprocessing, recorded_label: str, used_label: str) -> str:
    rows = [("field", recorded_label, used_label)]
    diff = {name for name, _, _ in recorded.differences(used)}
    for name in ("size", "resize_mode", "resize", "pad_value", "scale", "mean", "std", "channel_order", "layout",
                 "channels", "interpolation", "preset"):
        a, b = recorded.to_dict()[name], used.to_dict()[name]
        rows.append((("* " if name in diff else "  ") + name, _cell(a), _cell(b)))
    widths = [max(len(r[i]) for r in rows) for i in range(3)]
    return "\n".join("  " + "  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in rows)


def _cell(v: Any) -> str:
    if isinstance(v, list) and v and all(isinstance(x, float) for x in v):
        return _fmt(v)
    if isinstance(v, list):
        return "x".join(str(x) for x in v)
    return str(v)


def check_against_record(recorded: Preprocessing, used: Preprocessing, *, recorded_where: str, used_where: str,
                         allow: bool = False) -> str | None:
    """Stop (DataError, both recipes side by side, the differing fields starred) when ``used`` differs from what
    calibration ``recorded``; with ``allow`` return the same text as a warning instead. None when they agree."""
    if not recorded.differences(used):
        return None
    text = (f"preprocessing differs from what {recorded_where} recorded ({len(recorded.differences(used))} field(s), "
            f"starred):\n" + side_by_side(recorded, used, "recorded", used_where))
    if allow:
        return text
    raise DataError(text, hint="declare the recorded preprocessing (or leave it out: it is inherited), recalibrate "
                    "with the new one, or pass --allow-preprocessing-mismatch to go on with a warning")




def recorded_beside(model: Path) -> tuple[Preprocessing, str] | None:
    """The recipe recorded next to a model a device serves: an engine's ``manifest.json`` (the builder copies the
    recipe in), ``plan.json`` (calibration, bundles) or ``summary.json`` (a calibration directory) in the model's
    folder (or the engine directory itself), or, for a model an install root serves
    (``releases/<id>/builds/<device>/``), the plan.json of the kept bundle (``releases/<id>/bundle/``)."""
    folder = model if model.is_dir() else model.parent
    kept = folder.resolve().parent.parent / "bundle"
    for path in (folder / "manifest.json", folder / "plan.json", folder / "summary.json", kept / "plan.json"):
        name = path.name
        if not path.is_file():
            continue
        try:
            doc = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, ValueError) as exc:
            raise DataError(f"{path} is not readable JSON: {exc}") from exc
        if not isinstance(doc, dict):
            continue
        if name == "manifest.json":  # an engine manifest only (a bundle's manifest.json is not read here)
            if not isinstance(doc.get("engine"), dict) or "tensorrt_version" not in doc:
                continue
            rec = doc.get("preprocessing")
        elif name == "plan.json":
            rec = doc.get("preprocessing")
        else:
            rec = (doc.get("data") or {}).get("preprocessing")
        if isinstance(rec, dict):
            return Preprocessing.from_dict(rec), str(path)
    return None


__all__ = [
    "CLIP_MEAN",
    "CLIP_STD",
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "PRESETS",
    "Preprocessing",
    "PreprocessingRequest",
    "check_against_record",
    "parse_scale",
    "recorded_beside",
    "request_from_table",
    "side_by_side",
]
