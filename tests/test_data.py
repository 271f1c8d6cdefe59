from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from vqz_edge.data import (
    DEMO_CALIBRATION_SOURCES,
    DEMO_EVALUATION_SOURCES,
    Preprocessing,
    demo_crops,
    demo_sources,
    folder_sources,
    load_image,
    make_crops,
    split_by_source,
)
from vqz_edge.errors import DataError


def test_demo_split_is_by_source_and_disjoint() -> None:
    assert not set(DEMO_CALIBRATION_SOURCES) & set(DEMO_EVALUATION_SOURCES)
    calib = {p.name for s in demo_sources("calibration") for p in s.paths}
    evaluation = {p.name for s in demo_sources("evaluation") for p in s.paths}
    assert not calib & evaluation
    # the stereo pair is one scene and stays on one side
    assert {"motorcycle_left.png", "motorcycle_right.png"} <= evaluation


def test_crops_deterministic_and_normalised() -> None:
    a = demo_crops("calibration", 24)
    b = demo_crops("calibration", 24)
    assert a.shape == (24, 3, 224, 224) and a.dtype == np.float32
    assert np.array_equal(a, b)
    assert -3 < float(a.mean()) < 3 and 0.3 < float(a.std()) < 2.0
    # random views differ from the plain view of the same photo
    n_files = sum(len(s.paths) for s in demo_sources("calibration"))
    assert not np.array_equal(a[0], a[n_files])
    assert not np.array_equal(demo_crops("calibration", 24, seed=1)[n_files:], a[n_files:])


def test_preprocessing_validation() -> None:
    with pytest.raises(DataError, match="resize"):
        Preprocessing(size=(200, 200), resize=100)
    with pytest.raises(DataError, match="layout"):
        Preprocessing(layout="CHW")
    pre = Preprocessing.for_input_shape((1, 3, 96, 96))
    assert pre.crop == 96 and pre.resize == 110


def test_folder_sources_and_split(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    for name in ["a", "b", "c", "d"]:
        Image.fromarray(rng.integers(0, 255, (40, 50, 3), dtype=np.uint8)).save(tmp_path / f"{name}.png")
    (tmp_path / "scene").mkdir()
    for side in ["left", "right"]:
        Image.fromarray(rng.integers(0, 255, (40, 50, 3), dtype=np.uint8)).save(tmp_path / "scene" / f"{side}.jpg")
    sources = folder_sources(tmp_path)
    assert [s.name for s in sources] == ["a", "b", "c", "d", "scene"]
    assert len(sources[-1].paths) == 2
    calib, evaluation = split_by_source(sources)
    assert calib and evaluation and not {s.name for s in calib} & {s.name for s in evaluation}
    x = make_crops(calib, 5, Preprocessing(size=(32, 32), resize=36))
    assert x.shape == (5, 3, 32, 32)


def test_bad_images(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="contains no images"):
        folder_sources(tmp_path)
    bad = tmp_path / "broken.png"
    bad.write_bytes(b"\x89PNG\r\n\x1a\nnot really")
    with pytest.raises(DataError, match="cannot read image .*broken.png"):
        load_image(bad)
    with pytest.raises(DataError, match="at least 2 source photos"):
        split_by_source(folder_sources(tmp_path))
