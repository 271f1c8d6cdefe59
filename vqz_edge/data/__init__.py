"""Images -> preprocessed arrays, with calibration/evaluation split by source photo."""

from .images import (
    DEMO_CALIBRATION_SOURCES,
    DEMO_EVALUATION_SOURCES,
    DEMO_SOURCES,
    ImageSource,
    Preprocessing,
    demo_crops,
    demo_sources,
    folder_sources,
    iter_crops,
    load_array_file,
    load_image,
    make_crops,
    preprocess,
    split_by_source,
)

__all__ = [
    "DEMO_CALIBRATION_SOURCES",
    "DEMO_EVALUATION_SOURCES",
    "DEMO_SOURCES",
    "ImageSource",
    "Preprocessing",
    "demo_crops",
    "demo_sources",
    "folder_sources",
    "iter_crops",
    "load_array_file",
    "load_image",
    "make_crops",
    "preprocess",
    "split_by_source",
]
