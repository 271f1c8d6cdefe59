"""Deterministic image preprocessing and the bundled demo data (real photos shipped in scikit-image).

Calibration and evaluation data are split by *source photo*: crops of one photo never land on both
sides, so fidelity is measured on scenes the calibrator never saw. The stereo pair
``motorcycle_left``/``motorcycle_right`` is one scene and counts as one source.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..errors import DataError, DependencyError, require_dir, require_file
from ..log import get_logger
from ..preprocessing import Preprocessing as Preprocessing
from ..preprocessing import PreprocessingRequest

_log = get_logger(__name__)

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp")


@dataclass(frozen=True)
class ImageSource:
    """One source scene: one or more image files that show the same thing."""

    name: str
    paths: tuple[Path, ...] = field(default_factory=tuple)


def load_image(path: Path, channels: int = 3) -> np.ndarray:
    """Read an image as uint8 HxWxC (RGB or grayscale). Grayscale photos are replicated to RGB."""
    from PIL import Image, UnidentifiedImageError

    path = Path(path)
    require_file(path, "image", error=DataError)
    try:
        with Image.open(path) as img:
            img.load()
            mode = "RGB" if channels == 3 else "L"
            arr = np.asarray(img.convert(mode))
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as exc:
        raise DataError(f"cannot read image {path}: {exc}", hint="remove or replace the file") from exc
    if arr.ndim == 2:
        arr = arr[:, :, None]
    return arr


_RESAMPLING = {"bilinear": "BILINEAR", "bicubic": "BICUBIC", "nearest": "NEAREST"}


def _resize(img: np.ndarray, size_hw: tuple[int, int], interpolation: str = "bilinear") -> np.ndarray:
    from PIL import Image

    h, w = size_hw
    method = getattr(Image.Resampling, _RESAMPLING[interpolation])
    if img.shape[2] == 1:
        out = np.asarray(Image.fromarray(img[:, :, 0]).resize((w, h), method))[:, :, None]
    else:
        out = np.asarray(Image.fromarray(img).resize((w, h), method))
    return out


def letterbox_geometry(h: int, w: int, size: tuple[int, int]) -> tuple[int, int, int, int]:
    """(new_h, new_w, top, left) of a photo h x w letterboxed into ``size``: scaled to fit with its aspect kept,
    centred (the odd pixel of padding goes bottom/right, as in Ultralytics' LetterBox)."""
    H, W = size
    r = min(H / h, W / w)
    nh, nw = min(H, max(1, round(h * r))), min(W, max(1, round(w * r)))
    top, left = int(round((H - nh) / 2 - 0.1)), int(round((W - nw) / 2 - 0.1))
    return nh, nw, top, left


def _geometry(img: np.ndarray, pre: Preprocessing) -> np.ndarray:
    H, W = pre.size
    h, w = img.shape[:2]
    if pre.resize_mode == "stretch":
        return _resize(img, (H, W), pre.interpolation) if (h, w) != (H, W) else img
    if pre.resize_mode == "letterbox":
        nh, nw, top, left = letterbox_geometry(h, w, pre.size)
        inner = _resize(img, (nh, nw), pre.interpolation) if (nh, nw) != (h, w) else img
        canvas = np.full((H, W, img.shape[2]), pre.pad_value, np.uint8)
        canvas[top : top + nh, left : left + nw] = inner
        return canvas
    # center-crop: scale so the photo covers the crop grown by resize / short side, then cut the centre
    scale = pre.resize / min(h, w) if H == W else max(pre.resize * H / min(H, W) / h, pre.resize * W / min(H, W) / w)
    nh, nw = max(H, round(h * scale)), max(W, round(w * scale))
    img = _resize(img, (nh, nw), pre.interpolation)
    top, left = (nh - H) // 2, (nw - W) // 2
    return img[top : top + H, left : left + W]


def preprocess(img: np.ndarray, pre: Preprocessing) -> np.ndarray:
    """uint8 HxWxC (RGB) -> float32 CxHxW (or HxWxC): geometry, channel order, scale, (x - mean) / std."""
    if img.ndim != 3 or img.shape[2] != pre.channels:
        raise DataError(f"image has shape {img.shape}; preprocessing expects HxWx{pre.channels}")
    img = _geometry(img, pre)
    if pre.channel_order == "BGR" and pre.channels == 3:
        img = img[:, :, ::-1]
    x: np.ndarray = img.astype(np.float32)
    if pre.scale == "1/255":
        x = x / np.float32(255.0)
    x = (x - np.asarray(pre.mean, np.float32)) / np.asarray(pre.std, np.float32)
    if pre.layout == "NCHW":
        x = x.transpose(2, 0, 1)
    return np.ascontiguousarray(x, dtype=np.float32)


def _seed(*parts: object) -> int:
    digest = hashlib.sha256("/".join(str(p) for p in parts).encode()).digest()
    return int.from_bytes(digest[:8], "little")


def _random_view(img: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """A random square-ish region (25-100% of the short side) with optional horizontal flip."""
    h, w = img.shape[:2]
    short = min(h, w)
    side = int(short * rng.uniform(0.25, 1.0))
    side = max(side, min(32, short))
    aspect = rng.uniform(0.8, 1.25)
    ch, cw = min(h, int(side * aspect)), min(w, int(side / aspect))
    top = int(rng.integers(0, h - ch + 1))
    left = int(rng.integers(0, w - cw + 1))
    view = img[top : top + ch, left : left + cw]
    if rng.random() < 0.5:
        view = view[:, ::-1]
    return np.ascontiguousarray(view)


def iter_crops(
    sources: Sequence[ImageSource], count: int, pre: Preprocessing, *, seed: int = 0, batch: int = 32
) -> Iterator[np.ndarray]:
    """Yield ``count`` deterministic crops in batches (float32 (b, ...)); only one batch is in memory.

    Crops go round-robin over the images of ``sources``. The first crop of every image is the plain full
    image (resize + center crop); further crops are random regions and flips drawn from a generator
    seeded by (seed, source, index), so the i-th crop does not depend on the batch size.
    """
    if count <= 0:
        raise DataError(f"number of crops must be positive, got {count}")
    if batch <= 0:
        raise DataError(f"batch size must be positive, got {batch}")
    files = [(src.name, p) for src in sources for p in src.paths]
    if not files:
        raise DataError("no images to crop from")
    cache: dict[Path, np.ndarray] = {}
    for start in range(0, count, batch):
        out: np.ndarray | None = None
        n = min(batch, count - start)
        for j in range(n):
            i = start + j
            name, path = files[i % len(files)]
            k = i // len(files)
            if path not in cache:
                cache[path] = load_image(path, pre.channels)
            img = cache[path]
            if k > 0:
                img = _random_view(img, np.random.default_rng(_seed(seed, name, path.name, k)))
            x = preprocess(img, pre)
            if out is None:
                out = np.empty((n, *x.shape), np.float32)
            out[j] = x
        assert out is not None
        yield out


def make_crops(sources: Sequence[ImageSource], count: int, pre: Preprocessing, *, seed: int = 0) -> np.ndarray:
    """All ``count`` crops of :func:`iter_crops` in one array."""
    return np.concatenate(list(iter_crops(sources, count, pre, seed=seed, batch=64)))


# The bundled demo's photos (all real photographs shipped in scikit-image; synthetic images such as
# chessboard, logo, phantom, color and horse are left out). The split is fixed and by scene.
DEMO_SOURCES: dict[str, tuple[str, ...]] = {
    "astronaut": ("astronaut.png",),
    "brick": ("brick.png",),
    "camera": ("camera.png",),
    "cell": ("cell.png",),
    "chelsea": ("chelsea.png",),
    "clock_motion": ("clock_motion.png",),
    "coffee": ("coffee.png",),
    "coins": ("coins.png",),
    "grass": ("grass.png",),
    "gravel": ("gravel.png",),
    "hubble_deep_field": ("hubble_deep_field.jpg",),
    "ihc": ("ihc.png",),
    "microaneurysms": ("microaneurysms.png",),
    "moon": ("moon.png",),
    "motorcycle": ("motorcycle_left.png", "motorcycle_right.png"),
    "page": ("page.png",),
    "retina": ("retina.jpg",),
    "rocket": ("rocket.jpg",),
    "text": ("text.png",),
}
DEMO_CALIBRATION_SOURCES = (
    "astronaut", "brick", "cell", "clock_motion", "coins", "gravel", "hubble_deep_field", "moon", "page", "rocket",
)
DEMO_EVALUATION_SOURCES = tuple(sorted(set(DEMO_SOURCES) - set(DEMO_CALIBRATION_SOURCES)))
# The demo classifier (ImageNet MobileNetV2) is fed the imagenet preset at 224x224, declared here once.
DEMO_PREPROCESSING = PreprocessingRequest(preset="imagenet", origin="the demo").resolve((1, 3, 224, 224))


def _skimage_data_dir() -> Path:
    try:
        import skimage
    except ImportError as exc:
        raise DependencyError(
            "the demo photos ship inside scikit-image, which is not installed",
            hint="pip install 'vqz-edge[calibrate]' (or scikit-image)",
        ) from exc
    return Path(skimage.__file__).parent / "data"


def demo_sources(split: str) -> list[ImageSource]:
    """The demo's photo sources for ``split`` in {'calibration', 'evaluation', 'all'}."""
    names = {
        "calibration": DEMO_CALIBRATION_SOURCES,
        "evaluation": DEMO_EVALUATION_SOURCES,
        "all": tuple(sorted(DEMO_SOURCES)),
    }.get(split)
    if names is None:
        raise DataError(f"unknown demo split {split!r}; use 'calibration', 'evaluation' or 'all'")
    root = _skimage_data_dir()
    out = []
    for name in names:
        paths = tuple(root / f for f in DEMO_SOURCES[name])
        missing = [str(p) for p in paths if not p.is_file()]
        if missing:
            raise DataError(f"demo photo(s) missing from scikit-image: {missing}", hint="reinstall scikit-image")
        out.append(ImageSource(name, paths))
    return out


def demo_crops(split: str, count: int, pre: Preprocessing | None = None, *, seed: int = 0) -> np.ndarray:
    """``count`` preprocessed crops of the demo photos of one split (the ``imagenet`` preset at 224x224 unless
    ``pre`` says otherwise: the demo classifier's own preprocessing)."""
    return make_crops(demo_sources(split), count, pre or DEMO_PREPROCESSING, seed=seed)


def folder_sources(folder: Path) -> list[ImageSource]:
    """Image files under ``folder``. Files in a sub-folder form one source (one scene); top-level files
    are each their own source."""
    folder = Path(folder)
    require_dir(folder, "data folder", error=DataError, hint="a folder of photos (or, for --data, a FILE.npy or 'demo')")
    files = sorted(p for p in folder.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
    if not files:
        raise DataError(
            f"data folder {folder} contains no images ({', '.join(IMAGE_SUFFIXES)})",
            hint="point --data at a folder of photos or at a .npy array",
        )
    groups: dict[str, list[Path]] = {}
    for p in files:
        rel = p.relative_to(folder)
        key = rel.parts[0] if len(rel.parts) > 1 else rel.stem
        groups.setdefault(key, []).append(p)
    return [ImageSource(k, tuple(v)) for k, v in sorted(groups.items())]


def split_by_source(
    sources: Iterable[ImageSource], evaluation_fraction: float = 0.5
) -> tuple[list[ImageSource], list[ImageSource]]:
    """Deterministic split by source name hash: (calibration, evaluation). Both sides non-empty when >=2 sources."""
    if not 0.0 < evaluation_fraction < 1.0:
        raise ValueError(f"evaluation_fraction must be in (0, 1), got {evaluation_fraction}")
    ordered = sorted(sources, key=lambda s: (_seed("split", s.name), s.name))
    if len(ordered) < 2:
        raise DataError(
            f"need at least 2 source photos to split calibration from evaluation, got {len(ordered)}"
        )
    n_eval = min(len(ordered) - 1, max(1, round(len(ordered) * evaluation_fraction)))
    return sorted(ordered[n_eval:], key=lambda s: s.name), sorted(ordered[:n_eval], key=lambda s: s.name)


def load_array_file(path: Path) -> np.ndarray:
    """A preprocessed float array saved with numpy (.npy), memory-mapped."""
    path = Path(path)
    require_file(path, "data file", error=DataError)
    try:
        arr: np.ndarray = np.load(path, mmap_mode="r", allow_pickle=False)
    except EOFError:
        raise DataError(f"{path} is empty (0 bytes): not a .npy array") from None
    except (ValueError, OSError) as exc:
        raise DataError(f"cannot read {path} as a .npy array: {exc}") from exc
    if arr.ndim < 2 or arr.shape[0] == 0:
        raise DataError(f"{path} holds an array of shape {arr.shape}; expected (N, ...) with N >= 1")
    if not np.issubdtype(arr.dtype, np.floating):
        raise DataError(f"{path} has dtype {arr.dtype}; expected preprocessed float data")
    return arr
