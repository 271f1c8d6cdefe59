"""Preprocessing as a declared, recorded stage (issue 17): presets change what calibration measures, a folder
calibrated with a letterbox preset equals the same photos letterboxed by hand, BGR swaps channels, a later stage
catches a declaration that differs from the record, dynamic dims are filled, and every spec in the docs parses.

Real photos from scikit-image throughout; the model is a small hand-built ONNX graph (Conv/ConvTranspose/Gemm/
MatMul, dynamic N, H, W) so each calibration takes about a second."""

from __future__ import annotations

import json
import re
import shutil
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper
from PIL import Image

from tests.conftest import ROOT
from tests.onnx_graphs import image_model
from vqz_edge.cli import main
from vqz_edge.data.images import _skimage_data_dir, demo_crops, load_image, preprocess
from vqz_edge.data.source import open_data
from vqz_edge.errors import DataError, SpecError
from vqz_edge.onnx_io import TensorInfo, graph_inputs
from vqz_edge.preprocessing import PRESETS, Preprocessing, PreprocessingRequest
from vqz_edge.spec import parse_spec

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

PHOTOS = ("chelsea.png", "coffee.png", "rocket.jpg")


@pytest.fixture(scope="module")
def model_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("pre") / "model.onnx"
    onnx.save(image_model(), path)
    return path


@pytest.fixture(scope="module")
def photo_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    d = tmp_path_factory.mktemp("photos")
    for name in PHOTOS:
        shutil.copy(_skimage_data_dir() / name, d / name)
    return d


def _cli(*argv: str, capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    rc = main(list(argv))
    out = capsys.readouterr()
    return rc, out.out, out.err


# -- presets change what calibration measures ----------------------------------------------------------------------

def test_clip_and_imagenet_presets_give_different_thresholds(tmp_path: Path, model_path: Path,
                                                             capsys: pytest.CaptureFixture[str]) -> None:
    """The bug: a spec declaring CLIP mean/std calibrated exactly like the ImageNet default. Now the spec is read."""
    caches, amax = {}, {}
    for preset in ("imagenet", "clip"):
        spec = tmp_path / f"{preset}.toml"
        spec.write_text(f'[preprocessing]\npreset = "{preset}"\nsize = 64\n[precision]\npreset = "none"\n')
        out = tmp_path / preset
        rc, stdout, err = _cli("calibrate", str(model_path), "--data", "demo", "--num-images", "16", "--spec",
                               str(spec), "-o", str(out), "-q", capsys=capsys)
        assert rc == 0, err
        assert f"preprocessing {preset}: center-crop 64x64" in stdout
        caches[preset] = (out / "calibration.cache").read_bytes()
        summary = json.loads((out / "summary.json").read_text())
        amax[preset] = summary["tensors"]["input"]["amax"]
        rec = summary["data"]["preprocessing"]
        assert rec["preset"] == preset and rec["mean"] == list(PRESETS[preset].mean)
        assert rec["origin"] == "declared (spec [preprocessing])"
        assert json.loads((out / "plan.json").read_text())["preprocessing"] == rec
    assert caches["imagenet"] != caches["clip"]
    # the input's range follows the normalisation: CLIP's std is larger, so its values are smaller
    assert amax["clip"] < amax["imagenet"] * 0.95
    # the same mean/std without a preset (the spec) gives the CLIP result, not the ImageNet default's
    spec = tmp_path / "meanstd.toml"
    spec.write_text("[preprocessing]\nmean = [0.48145466, 0.4578275, 0.40821073]\n"
                    "std = [0.26862954, 0.26130258, 0.27577711]\nresize = 64\ninterpolation = \"bicubic\"\n"
                    "size = [64, 64]\n[precision]\npreset = \"none\"\n")
    rc, _, err = _cli("calibrate", str(model_path), "--data", "demo", "--num-images", "16", "--spec", str(spec),
                      "-o", str(tmp_path / "meanstd"), "-q", capsys=capsys)
    assert rc == 0, err
    assert (tmp_path / "meanstd" / "calibration.cache").read_bytes() == caches["clip"]


def test_cli_overrides_the_spec_and_says_so(tmp_path: Path, model_path: Path,
                                            capsys: pytest.CaptureFixture[str]) -> None:
    spec = tmp_path / "spec.toml"
    spec.write_text('[preprocessing]\npreset = "imagenet"\nsize = 64\n')
    rc, out, err = _cli("calibrate", str(model_path), "--data", "demo", "--num-images", "8", "--spec", str(spec),
                        "--mean", "0.5,0.5,0.5", "--std", "0.5,0.5,0.5", "-o", str(tmp_path / "o"), "-q",
                        capsys=capsys)
    assert rc == 0, err
    assert ("note: command line overrides spec [preprocessing]: mean [0.485, 0.456, 0.406] (its preset imagenet's) "
            "-> [0.5, 0.5, 0.5]") in out
    rec = json.loads((tmp_path / "o" / "summary.json").read_text())["data"]["preprocessing"]
    assert rec["mean"] == [0.5, 0.5, 0.5] and rec["std"] == [0.5, 0.5, 0.5] and rec["size"] == [64, 64]
    assert rec["preset"] == "imagenet+custom"


def test_a_folder_of_photos_needs_a_declaration(tmp_path: Path, model_path: Path, photo_dir: Path,
                                               capsys: pytest.CaptureFixture[str]) -> None:
    rc, _, err = _cli("calibrate", str(model_path), "--data", str(photo_dir), "--size", "64",
                      "-o", str(tmp_path / "o"), capsys=capsys)
    assert rc == 2 and "no preprocessing declared" in err and "--preprocess imagenet|clip|siglip|yolo|raw" in err
    assert not (tmp_path / "o").exists()
    # the demo photos get the demo classifier's preset, and the output says so
    rc, out, err = _cli("calibrate", str(model_path), "--data", "demo", "--num-images", "8", "--input-shape",
                        "1x3x64x64", "-o", str(tmp_path / "d"), "-q", capsys=capsys)
    assert rc == 0, err
    assert "(the imagenet preset: the default for the demo photos)" in out


# -- letterbox: folder == the same photos letterboxed by hand ----------------------------------------------------

def _letterbox_by_hand(path: Path, h: int, w: int) -> np.ndarray:
    """Ultralytics' LetterBox written out with PIL and numpy: scale to fit, centre, pad 114, RGB / 255, CHW."""
    img = Image.open(path).convert("RGB")
    r = min(h / img.height, w / img.width)
    nw, nh = round(img.width * r), round(img.height * r)
    if (nw, nh) != img.size:
        img = img.resize((nw, nh), Image.Resampling.BILINEAR)
    dh, dw = (h - nh) / 2, (w - nw) / 2
    top, left = int(round(dh - 0.1)), int(round(dw - 0.1))
    canvas = np.full((h, w, 3), 114, np.uint8)
    canvas[top:top + nh, left:left + nw] = np.asarray(img)
    return (canvas.astype(np.float32) / np.float32(255.0)).transpose(2, 0, 1)


def test_letterbox_folder_matches_an_npy_letterboxed_by_hand(tmp_path: Path, model_path: Path, photo_dir: Path,
                                                             capsys: pytest.CaptureFixture[str]) -> None:
    h, w = 96, 128  # a detector's non-square input; the photos are 300x451, 400x600 and 427x640
    by_hand = np.stack([_letterbox_by_hand(photo_dir / name, h, w) for name in sorted(PHOTOS)])
    np.save(tmp_path / "hand.npy", by_hand)
    # one crop per photo: the first crop of every photo is the whole photo
    common = ["--num-images", "3", "--batch-size", "3", "--preset", "none", "-q"]
    rc, out, err = _cli("calibrate", str(model_path), "--data", str(photo_dir), "--preprocess", "yolo", "--size",
                        f"{h}x{w}", "-o", str(tmp_path / "folder"), *common, capsys=capsys)
    assert rc == 0, err
    assert "letterbox 96x128 (pad 114)" in out
    rc, _, err = _cli("calibrate", str(model_path), "--data", str(tmp_path / "hand.npy"), "--input-shape",
                      f"1x3x{h}x{w}", "-o", str(tmp_path / "npy"), *common, capsys=capsys)
    assert rc == 0, err
    assert (tmp_path / "folder" / "calibration.cache").read_bytes() == (tmp_path / "npy" / "calibration.cache").read_bytes()
    # the folder's data are the hand-made array, byte for byte
    src = open_data(photo_dir, TensorInfo("input", ("N", 3, "H", "W"), "float32"), count=3,
                    preprocessing=PreprocessingRequest(preset="yolo", size=(h, w)))
    assert np.concatenate(list(src.batches(3))).tobytes() == by_hand.tobytes()
    summary = json.loads((tmp_path / "npy" / "summary.json").read_text())
    assert summary["data"]["preprocessing"] is None  # an array without a sidecar: unknown, not guessed


def test_data_sidecar_is_recorded_and_a_different_declaration_refused(tmp_path: Path, model_path: Path,
                                                                      capsys: pytest.CaptureFixture[str]) -> None:
    rc, out, err = _cli("data", "--split", "calibration", "--count", "6", "--preprocess", "yolo", "--size", "64x96",
                        "-o", str(tmp_path / "cal.npy"), capsys=capsys)
    assert rc == 0, err
    assert "yolo: letterbox 64x96" in out
    rc, _, err = _cli("calibrate", str(model_path), "--data", str(tmp_path / "cal.npy"), "-o", str(tmp_path / "a"),
                      "-q", capsys=capsys)
    assert rc == 0, err
    rec = json.loads((tmp_path / "a" / "summary.json").read_text())["data"]["preprocessing"]
    assert rec["preset"] == "yolo" and rec["origin"] == "recorded in cal.json"
    rc, _, err = _cli("calibrate", str(model_path), "--data", str(tmp_path / "cal.npy"), "--preprocess", "imagenet",
                      "-o", str(tmp_path / "b"), "-q", capsys=capsys)
    assert rc == 2 and "cal.json (the array's sidecar)" in err and "* resize_mode" in err
    assert not (tmp_path / "b").exists()


# -- BGR, scale, geometry -------------------------------------------------------------------------------------------

def test_bgr_really_swaps_channels(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    img = load_image(_skimage_data_dir() / "astronaut.png")
    rgb = preprocess(img, PreprocessingRequest(preset="raw").resolve((1, 3, 64, 64)))
    bgr = preprocess(img, PreprocessingRequest(preset="raw", channel_order="BGR").resolve((1, 3, 64, 64)))
    assert not np.array_equal(rgb[0], rgb[2])  # a colour photo: the swap is visible
    assert np.array_equal(bgr[0], rgb[2]) and np.array_equal(bgr[1], rgb[1]) and np.array_equal(bgr[2], rgb[0])
    assert rgb.max() > 200  # raw: 0..255, no scaling
    # mean/std are in the model's channel order: BGR's first mean applies to blue
    caffe = PreprocessingRequest(preset="raw", channel_order="BGR", mean=(104.0, 117.0, 123.0), std=(1.0, 1.0, 1.0))
    x = preprocess(img, caffe.resolve((1, 3, 64, 64)))
    assert np.allclose(x[0], rgb[2] - 104.0) and np.allclose(x[2], rgb[0] - 123.0)
    # and through the data command
    for order in ("RGB", "BGR"):
        rc, _, err = _cli("data", "--split", "evaluation", "--count", "2", "--preprocess", "raw", "--size", "32",
                          "--channel-order", order, "-o", str(tmp_path / f"{order}.npy"), "-q", capsys=capsys)
        assert rc == 0, err
    a, b = np.load(tmp_path / "RGB.npy"), np.load(tmp_path / "BGR.npy")
    assert np.array_equal(a[:, ::-1], b) and not np.array_equal(a, b)


def test_demo_preprocessing_is_unchanged_and_presets_resolve() -> None:
    # the demo's crops: resize the short side to 256, center crop 224, ImageNet mean/std (as before issue 17)
    x = demo_crops("calibration", 2)
    img = load_image(_skimage_data_dir() / "astronaut.png")
    small = np.asarray(Image.fromarray(img).resize((256, 256), Image.Resampling.BILINEAR))[16:240, 16:240]
    ref = (small.astype(np.float32) / np.float32(255.0) - np.array([0.485, 0.456, 0.406], np.float32)) / np.array(
        [0.229, 0.224, 0.225], np.float32)
    assert np.array_equal(x[0], ref.transpose(2, 0, 1).astype(np.float32))
    assert PreprocessingRequest(preset="imagenet").resolve((1, 3, 96, 96)).resize == 110
    nhwc = PreprocessingRequest(preset="siglip").resolve(("N", 224, 224, 3))
    assert nhwc.layout == "NHWC" and nhwc.resize_mode == "stretch" and nhwc.mean == (0.5, 0.5, 0.5)
    gray = PreprocessingRequest(preset="imagenet").resolve((1, 1, 32, 32))
    assert gray.channels == 1 and gray.mean == (0.449,) and gray.std == (0.226,)
    with pytest.raises(DataError, match="dynamic height/width; declare the image size"):
        PreprocessingRequest(preset="yolo").resolve(("N", 3, "H", "W"))
    with pytest.raises(DataError, match=r"size 64x64 does not match the model input \[1, 3, 32, 32\]"):
        PreprocessingRequest(preset="yolo", size=(64, 64)).resolve((1, 3, 32, 32))
    with pytest.raises(DataError, match="needs both mean and std"):
        PreprocessingRequest(mean=(0.5, 0.5, 0.5))
    # records round-trip, and older (version 1) summaries still read
    pre = PreprocessingRequest(preset="yolo", size=(48, 192), channel_order="BGR").resolve(None)
    assert Preprocessing.from_dict(json.loads(json.dumps(pre.to_dict()))) == pre
    old = Preprocessing.from_dict({"resize": 256, "crop": 224, "mean": [0.485, 0.456, 0.406],
                                   "std": [0.229, 0.224, 0.225], "layout": "NCHW", "channels": 3, "version": 1})
    assert not old.differences(PreprocessingRequest(preset="imagenet").resolve((1, 3, 224, 224)))


# -- a later stage checks the record -------------------------------------------------------------------------------

def test_recorded_and_declared_mismatch_is_caught(tmp_path: Path, model_path: Path,
                                                  capsys: pytest.CaptureFixture[str]) -> None:
    cal = tmp_path / "cal"
    rc, _, err = _cli("calibrate", str(model_path), "--data", "demo", "--num-images", "8", "--preprocess",
                      "imagenet", "--size", "64", "-o", str(cal), "-q", capsys=capsys)
    assert rc == 0, err
    qdq = str(cal / "model.qdq.onnx")
    # evaluate: nothing declared -> the record is inherited
    rc, out, err = _cli("evaluate", str(model_path), qdq, "--data", "demo", "--num-images", "8", "--json",
                        capsys=capsys)
    assert rc == 0, err
    doc = json.loads(out)
    assert doc["preprocessing"]["preset"] == "imagenet" and doc["preprocessing"]["size"] == [64, 64]
    assert doc["preprocessing"]["origin"] == f"recorded in {cal / 'summary.json'}" and doc["warnings"] == []
    # a different declaration stops, both recipes side by side, the differing fields starred
    rc, _, err = _cli("evaluate", str(model_path), qdq, "--data", "demo", "--num-images", "8", "--preprocess",
                      "clip", capsys=capsys)
    assert rc == 2
    assert f"preprocessing differs from what {cal / 'summary.json'} recorded" in err
    assert re.search(r"\* mean\s+\[0\.485, 0\.456, 0\.406\]\s+\[0\.481455, 0\.457827, 0\.408211\]", err), err
    assert re.search(r"\* interpolation\s+bilinear\s+bicubic", err) and "  channel_order" in err
    assert "--allow-preprocessing-mismatch" in err
    # ... and goes on with a warning when allowed
    rc, out, err = _cli("evaluate", str(model_path), qdq, "--data", "demo", "--num-images", "8", "--preprocess",
                        "clip", "--allow-preprocessing-mismatch", "--json", capsys=capsys)
    assert rc == 0, err
    doc = json.loads(out)
    assert doc["preprocessing"]["preset"] == "clip" and "preprocessing differs" in doc["warnings"][0]
    # sensitivity checks the calibration's record the same way, and inherits its precision preset
    rc, _, err = _cli("sensitivity", str(model_path), "--calibration", str(cal), "--data", "demo", "--num-images",
                      "4", "--preprocess", "imagenet", "--size", "32", "-o", str(tmp_path / "s"), capsys=capsys)
    assert rc == 2 and "* size" in err and "64x64" in err and "32x32" in err
    rc, out, err = _cli("sensitivity", str(model_path), "--calibration", str(cal), "--data", "demo",
                        "--num-images", "4", "--batch-size", "4", "-o", str(tmp_path / "s"), "--json", capsys=capsys)
    assert rc == 0, err
    doc = json.loads(out)
    assert doc["preset"] == {"name": "cnn", "origin": f"inherited from {cal / 'summary.json'}"}
    assert doc["preprocessing"]["recipe"]["size"] == [64, 64] and doc["preprocessing"]["warnings"] == []


def test_a_spec_without_a_precision_preset_inherits_the_calibrations(tmp_path: Path, model_path: Path,
                                                                     capsys: pytest.CaptureFixture[str]) -> None:
    """A spec that only declares [preprocessing] says nothing about the preset: sensitivity keeps the one the
    calibration used (here none), not the spec's default cnn; a spec that writes a preset wins."""
    cal = tmp_path / "cal"
    rc, _, err = _cli("calibrate", str(model_path), "--data", "demo", "--num-images", "8", "--preprocess",
                      "imagenet", "--size", "64", "--preset", "none", "-o", str(cal), "-q", capsys=capsys)
    assert rc == 0, err
    only_pre = tmp_path / "pre.toml"
    only_pre.write_text('[preprocessing]\npreset = "imagenet"\nsize = 64\n')
    with_preset = tmp_path / "vit.toml"
    with_preset.write_text('[preprocessing]\npreset = "imagenet"\nsize = 64\n[precision]\npreset = "cnn"\n')
    for spec, want in ((only_pre, {"name": "none", "origin": f"inherited from {cal / 'summary.json'}"}),
                       (with_preset, {"name": "cnn", "origin": f"spec {with_preset}"})):
        rc, out, err = _cli("sensitivity", str(model_path), "--calibration", str(cal), "--data", "demo", "--spec",
                            str(spec), "--num-images", "4", "--batch-size", "4", "-o", str(tmp_path / spec.stem),
                            "--json", capsys=capsys)
        assert rc == 0, err
        assert json.loads(out)["preset"] == want
    # a summary from before the preset was recorded: calibrate's default, and the output says it is not recorded
    summary = json.loads((cal / "summary.json").read_text())
    del summary["precision"]
    (cal / "summary.json").write_text(json.dumps(summary))
    rc, out, err = _cli("sensitivity", str(model_path), "--calibration", str(cal), "--data", "demo", "--num-images",
                        "4", "--batch-size", "4", "-o", str(tmp_path / "old"), "--json", capsys=capsys)
    assert rc == 0, err
    doc = json.loads(out)["preset"]
    assert doc["name"] == "cnn" and "records no preset" in doc["origin"] and "--preset" in doc["origin"], doc


def test_run_uses_the_recorded_recipe_and_warns_without_one(tmp_path: Path, model_path: Path,
                                                            capsys: pytest.CaptureFixture[str]) -> None:
    cal = tmp_path / "cal"
    rc, _, err = _cli("calibrate", str(model_path), "--data", "demo", "--num-images", "8", "--preprocess", "yolo",
                      "--size", "48x80", "-o", str(cal), "-q", capsys=capsys)
    assert rc == 0, err
    photo = str(_skimage_data_dir() / "chelsea.png")
    rc, out, err = _cli("run", str(cal / "model.qdq.onnx"), "--input", photo, "--no-memory-check", "--json",
                        capsys=capsys)
    assert rc == 0, err
    doc = json.loads(out)
    assert doc["preprocessing"]["preset"] == "yolo" and doc["preprocessing"]["size"] == [48, 80]
    assert doc["warnings"] == []
    shutil.copy(model_path, tmp_path / "bare.onnx")
    rc, out, err = _cli("run", str(tmp_path / "bare.onnx"), "--input", photo, "--no-memory-check", "--size", "64",
                        "--json", capsys=capsys)
    assert rc == 2 and "no preprocessing declared" in err  # a size alone is not a recipe
    rc, out, err = _cli("run", str(tmp_path / "bare.onnx"), "--input", photo, "--no-memory-check", "--preprocess",
                        "clip", "--size", "64", "--json", capsys=capsys)
    assert rc == 0, err
    assert json.loads(out)["preprocessing"]["preset"] == "clip"


# -- dynamic dims ---------------------------------------------------------------------------------------------------

def _paddle_like(path: Path, batch_dim: int = -1) -> None:
    """A text-recogniser-shaped model whose input is [-1, 3, ?, ?] (dim_value -1 for the batch, as Paddle writes)."""
    rng = np.random.default_rng(0)
    w = numpy_helper.from_array((rng.standard_normal((8, 3, 3, 3)) * 0.3).astype(np.float32), "w")
    nodes = [helper.make_node("Conv", ["x", "w"], ["c"], name="conv/Conv", pads=[1, 1, 1, 1]),
             helper.make_node("Relu", ["c"], ["y"], name="conv/Relu")]
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [batch_dim, 3, None, None])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [batch_dim, 8, None, None])
    model = helper.make_model(helper.make_graph(nodes, "paddle_like", [x], [y], [w]),
                              opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 7
    onnx.save(model, path)


@pytest.mark.parametrize("batch_dim", [-1, 0])
def test_minus_one_and_zero_dims_are_dynamic_and_input_shape_fills_them(
        tmp_path: Path, photo_dir: Path, batch_dim: int, capsys: pytest.CaptureFixture[str]) -> None:
    _paddle_like(tmp_path / "rec.onnx", batch_dim)
    info = graph_inputs(onnx.load(tmp_path / "rec.onnx"))[0]
    assert info.shape == (str(batch_dim), 3, "?", "?")
    # the command: "1 != -1 at dim 0" before
    rc, out, err = _cli("export", str(tmp_path / "rec.onnx"), "--input-shape", "1x3x48x192",
                        "-o", str(tmp_path / "rec.fixed.onnx"), capsys=capsys)
    assert rc == 0, err
    assert "real photo crops" in out and "RANDOM" not in out
    # the docs' calibration of it, from a folder of photos
    rc, out, err = _cli("calibrate", str(tmp_path / "rec.fixed.onnx"), "--data", str(photo_dir), "--preprocess",
                        "raw", "--size", "48x192", "--scale", "1/255", "--num-images", "6", "-o",
                        str(tmp_path / "cal"), "-q", capsys=capsys)
    assert rc == 0, err
    rec = json.loads((tmp_path / "cal" / "summary.json").read_text())["data"]["preprocessing"]
    assert rec["size"] == [48, 192] and rec["scale"] == "1/255" and rec["preset"] == "raw+custom"
    rc, _, err = _cli("calibrate", str(tmp_path / "rec.onnx"), "--data", "demo", "--input-shape", "1x4x48x192",
                      "-o", str(tmp_path / "bad"), capsys=capsys)
    assert rc == 2 and "does not match model input 'x'" in err and "(4 != 3)" in err


# -- one spec drives the pipeline ----------------------------------------------------------------------------------

def _toml_blocks() -> list[tuple[str, str]]:
    blocks = []
    for doc in [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]:
        text = doc.read_text(encoding="utf-8")
        for m in re.finditer(r"```toml\n(.*?)```", text, flags=re.S):
            blocks.append((f"{doc.relative_to(ROOT)}:{text[:m.start()].count(chr(10)) + 1}", m.group(1)))
    return blocks


def test_every_spec_shown_in_the_readme_and_docs_parses() -> None:
    blocks = _toml_blocks()
    specs = [(where, body) for where, body in blocks if "[[target]]" not in body]
    assert len(specs) >= 6, [w for w, _ in blocks]
    for where, body in specs:
        try:
            parse_spec(tomllib.loads(body))
        except SpecError as exc:  # pragma: no cover - the message is the point
            pytest.fail(f"{where}: {exc}")
    assert any(w.startswith("README.md") for w, _ in specs) and any(w.startswith("docs/spec.md") for w, _ in specs)


def test_partial_specs_and_keys_that_are_used_or_refused(tmp_path: Path) -> None:
    spec = parse_spec({"precision": {"preset": "cnn"}})
    assert spec.inputs == () and spec.preprocessing.is_empty()
    with pytest.raises(SpecError, match=r"no \[model\] table"):
        _ = spec.model.name
    with pytest.raises(SpecError, match="apply to torch sources"):
        parse_spec({"model": {"name": "m", "source": "m.onnx", "opset": 13}})
    with pytest.raises(SpecError, match=r"unknown key\(s\) \['mena'\] in \[preprocessing\]"):
        parse_spec({"preprocessing": {"mena": [0.5]}})
    with pytest.raises(SpecError, match=r"\[preprocessing\]: unknown preprocessing preset 'yolov8'"):
        parse_spec({"preprocessing": {"preset": "yolov8"}})
    with pytest.raises(SpecError, match="scale"):
        parse_spec({"preprocessing": {"preset": "raw", "scale": 0.5}})
    full = parse_spec({"preprocessing": {"preset": "yolo", "size": [384, 640], "channel_order": "bgr",
                                         "scale": "none", "pad_value": 0}})
    assert full.preprocessing.resolve(None) == Preprocessing(
        size=(384, 640), resize_mode="letterbox", resize=439, pad_value=0, scale="1", mean=(0.0, 0.0, 0.0),
        std=(1.0, 1.0, 1.0), channel_order="BGR")


def test_export_with_spec_reads_source_weights_opset_and_shape(tmp_path: Path, mobilenet_weights: Path,
                                                               capsys: pytest.CaptureFixture[str]) -> None:
    spec = tmp_path / "spec.toml"
    spec.write_text('[model]\nname = "tiny"\nsource = "tests.factories:conv_bn"\nopset = 13\n'
                    '[[inputs]]\nname = "input"\nshape = [1, 3, 32, 32]\n')
    rc, out, err = _cli("export", "--spec", str(spec), "-o", str(tmp_path / "t.onnx"), "--json", capsys=capsys)
    assert rc == 0, err
    doc = json.loads(out)
    assert doc["opset"] == 13 and doc["inputs"][0]["shape"][1:] == [3, 32, 32]
    spec.write_text('[model]\nname = "tiny"\nsource = "tests.factories:conv_bn"\nweights = "missing.pth"\n')
    rc, _, err = _cli("export", "--spec", str(spec), "-o", str(tmp_path / "u.onnx"), capsys=capsys)
    assert rc != 0 and "missing.pth" in err  # the spec's weights are read, not ignored


def test_partial_and_onnx_specs_round_trip() -> None:
    for doc in ({"precision": {"preset": "vit"}},
                {"model": {"name": "rec", "source": "rec.onnx"}, "preprocessing": {"preset": "raw", "scale": "1/255",
                                                                                 "size": [48, 192]}}):
        spec = parse_spec(doc)
        assert parse_spec(spec.to_dict()) == spec


def test_the_shared_options_keep_the_device_cli_light() -> None:
    """The preprocessing options are on device commands (run): building the parser must not load the workstation
    dependencies (numba, scipy, torch, onnxruntime), which JetPack's Python 3.8 image does not have."""
    import subprocess

    code = ("import sys, vqz_edge.cli; vqz_edge.cli.build_parser(); "
            "print(sorted(m for m in ('numba', 'scipy', 'torch', 'onnxruntime') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=ROOT)
    assert out.stdout.strip() == "[]", out.stdout


def test_the_readme_precision_only_spec_drives_plan(tmp_path: Path, model_path: Path,
                                                    capsys: pytest.CaptureFixture[str]) -> None:
    readme = next(body for where, body in _toml_blocks() if where.startswith("README.md") and "[precision]" in body)
    spec = tmp_path / "spec.toml"
    spec.write_text(readme)
    rc, out, err = _cli("plan", str(spec), "--onnx", str(model_path), "-o", str(tmp_path / "plan.json"), "--json",
                        capsys=capsys)
    assert rc == 0, err
    assert json.loads(out)["model"] == model_path.parent.name  # named after the ONNX's folder, as calibrate does
    rc, _, err = _cli("plan", str(spec), capsys=capsys)
    assert rc == 2 and "no [model] table" in err


def test_device_calibrator_feeds_the_recorded_recipe() -> None:
    """When TensorRT calibrates on the device (no offline cache accepted), the builder hands its calibrator the
    recipe the offline calibration recorded; without one, the spec's declaration."""
    from vqz_edge.trt.calibrator import spec_batches

    spec = parse_spec({"preprocessing": {"preset": "imagenet", "size": 64},
                       "calibration": {"data": "demo", "num_images": 4}})
    shape = (2, 3, 64, 64)
    clip = PreprocessingRequest(preset="clip", size=(64, 64)).resolve(shape)
    recorded = np.concatenate(list(spec_batches(spec, "input", shape, clip)()))
    declared = np.concatenate(list(spec_batches(spec, "input", shape)()))
    want = np.concatenate(list(open_data("demo", TensorInfo("input", shape, "float32"), count=4,
                                         preprocessing=clip).batches(2)))
    assert recorded.shape == (4, 3, 64, 64) and np.array_equal(recorded, want)
    assert not np.allclose(recorded, declared)  # clip's mean/std/interpolation, not the spec's imagenet
