"""Numbers that poison silently and artifacts that do not belong together, on the tiny CNN (3x8x8 in) through
the real command line (in-process ``main``): each case of issue 16 must end in a clear refusal naming the
tensor, sample or file -- never an exit 0 with NaN, a 'perfect' score, or a set of files from two runs."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import numpy_helper

from tests.bundle_fixtures import SPEC, make_calibration_dir, tiny_model
from vqz_edge.artifacts.calib_cache import CalibrationCache, write_cache
from vqz_edge.cli import main


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("poison")
    spec, cal = make_calibration_dir(d / "w")
    from vqz_edge.data import demo_crops

    x = demo_crops("calibration", 32)
    good = np.ascontiguousarray(x[:, :, 100:108, 100:108])  # 3x8x8 patches of real photos
    out = {"spec": spec, "cal": cal, "model": cal / "model.onnx", "good": d / "good.npy"}
    np.save(out["good"], good)
    for name, edit in (("nan", lambda a: a.__setitem__((3, 1, 2, 2), np.nan)),
                       ("big", lambda a: a.__setitem__((3, 1, 2, 2), 1e30)),
                       ("inf", lambda a: a.__setitem__((0, 0, 0, 0), np.inf))):
        a = good.copy()
        edit(a)
        out[name] = d / f"{name}.npy"
        np.save(out[name], a)
    out["zero"] = d / "zero.npy"
    np.save(out["zero"], np.zeros_like(good))
    # the same model with one NaN weight
    m = tiny_model()
    w = numpy_helper.to_array(m.graph.initializer[0]).copy()
    w.flat[0] = np.nan
    m.graph.initializer[0].CopyFrom(numpy_helper.from_array(w, m.graph.initializer[0].name))
    out["nan_model"] = d / "nan_model.onnx"
    onnx.save(m, out["nan_model"])
    # finite weights, activations far beyond FP16: conv weights x 1e6
    m = tiny_model()
    w = numpy_helper.to_array(m.graph.initializer[0]) * np.float32(1e6)
    m.graph.initializer[0].CopyFrom(numpy_helper.from_array(w, m.graph.initializer[0].name))
    out["huge_model"] = d / "huge_model.onnx"
    onnx.save(m, out["huge_model"])
    # a ReLU that is 0 on every input: conv bias -1e3
    m = tiny_model()
    b = np.full(4, -1e3, np.float32)
    m.graph.initializer[1].CopyFrom(numpy_helper.from_array(b, m.graph.initializer[1].name))
    out["dead_model"] = d / "dead_model.onnx"
    onnx.save(m, out["dead_model"])
    return out


def _run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    capsys.readouterr()
    rc = main([*argv])
    out, err = capsys.readouterr()
    assert "Traceback" not in err
    return rc, out, err


# ---------------------------------------------------------------------------------------------------- export


def test_export_refuses_nan_weights_naming_the_parameter(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "m.onnx"
    rc, stdout, _ = _run(capsys, "export", "tests.factories:nan_weights", "-o", str(out), "--input-shape", "1x3x16x16",
                         "--json")
    assert rc == 2 and not out.exists()
    doc = json.loads(stdout)  # strict JSON, no NaN
    assert "stem.0.weight" in doc["error"] and "non-finite" in doc["error"]


def test_export_refuses_an_onnx_with_nan_initializers(tiny: dict[str, Path], tmp_path: Path,
                                                      capsys: pytest.CaptureFixture[str]) -> None:
    rc, _, err = _run(capsys, "export", str(tiny["nan_model"]), "-o", str(tmp_path / "m.onnx"))
    assert rc == 2 and "conv.weight (1 of 108 values, e.g. nan)" in err and not (tmp_path / "m.onnx").exists()


def test_export_refuses_a_model_whose_outputs_are_nan(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    rc, _, err = _run(capsys, "export", "tests.factories:inf_after_fold", "-o", str(tmp_path / "m.onnx"),
                      "--input-shape", "1x3x16x16")
    assert rc == 5 and "the source model produced" in err and not (tmp_path / "m.onnx").exists()


# -------------------------------------------------------------------------------------------------- evaluate


def test_evaluate_never_calls_a_nan_model_perfect(tiny: dict[str, Path], tmp_path: Path,
                                                  capsys: pytest.CaptureFixture[str]) -> None:
    report = tmp_path / "fidelity.json"
    for extra in ([], ["--json"], ["-o", str(report)]):
        rc, out, err = _run(capsys, "evaluate", str(tiny["model"]), str(tiny["nan_model"]), "--data", str(tiny["good"]),
                            *extra)
        assert rc == 5 and "the candidate model produced nan" in (out + err) and "sample 0" in (out + err)
        if "--json" in extra:
            assert json.loads(out)["type"] == "VerificationError"
    assert not report.exists()


@pytest.mark.parametrize(("data", "says"), [
    ("nan", "sample 3 holds nan at position [1, 2, 2]"),
    ("inf", "sample 0 holds inf at position [0, 0, 0]"),
    ("big", "sample 3 holds 1e+30 at position [1, 2, 2], beyond the +-65504"),
    ("zero", "every value of all 32 samples is 0"),
])
def test_poisoned_data_is_refused_by_every_stage_naming_the_sample(data: str, says: str, tiny: dict[str, Path],
                                                                   tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = str(tiny[data])
    rc, _, err = _run(capsys, "evaluate", str(tiny["model"]), str(tiny["cal"] / "model.qdq.onnx"), "--data", path)
    assert rc == 2 and says in err, err
    rc, _, err = _run(capsys, "calibrate", str(tiny["model"]), "--data", path, "-o", str(tmp_path / "cal"))
    assert rc == 2 and says in err, err
    assert not (tmp_path / "cal").exists()  # a failed run leaves no folder


def test_sensitivity_on_nan_data_and_impossible_targets(tiny: dict[str, Path], tmp_path: Path,
                                                        capsys: pytest.CaptureFixture[str]) -> None:
    cal = tmp_path / "cal"
    rc, _, err = _run(capsys, "calibrate", str(tiny["model"]), "--data", str(tiny["good"]), "-o", str(cal), "-q")
    assert rc == 0, err
    base = ["sensitivity", str(tiny["model"]), "--calibration", str(cal), "--num-images", "8", "-q"]
    rc, _, err = _run(capsys, *base, "--data", str(tiny["nan"]))
    assert rc == 2 and "sample 3 holds nan" in err
    rc, _, err = _run(capsys, *base, "--data", str(tiny["good"]), "--goal", "5")
    assert rc == 2 and "--goal 5.0 is impossible for --metric cosine" in err
    rc, _, err = _run(capsys, *base, "--data", str(tiny["good"]), "-o", str(cal))
    assert rc == 2 and "is the calibration directory itself" in err
    blocker = tmp_path / "file"
    blocker.write_text("x")
    rc, _, err = _run(capsys, *base, "--data", str(tiny["good"]), "-o", str(blocker / "out"))
    assert rc == 2 and "is a regular file, not a directory" in err
    assert not (cal / "sensitivity").exists()


# ---------------------------------------------------------------------------------------------------- calibrate


def test_calibrate_refuses_ranges_beyond_fp16_naming_the_tensor(tiny: dict[str, Path], tmp_path: Path,
                                                                capsys: pytest.CaptureFixture[str]) -> None:
    rc, _, err = _run(capsys, "calibrate", str(tiny["huge_model"]), "--data", str(tiny["good"]), "-o",
                      str(tmp_path / "cal"), "--method", "max")
    assert rc == 6 and "tensor 'f': amax 6.37" in err and "beyond the FP16 range" in err  # the first, sorted
    assert not (tmp_path / "cal").exists()


def test_calibrate_warns_about_tensors_that_are_always_zero(tiny: dict[str, Path], tmp_path: Path,
                                                            capsys: pytest.CaptureFixture[str]) -> None:
    rc, out, _ = _run(capsys, "calibrate", str(tiny["dead_model"]), "--data", str(tiny["good"]), "-o",
                      str(tmp_path / "cal"), "--method", "max")
    assert rc == 0 and "WARNING: tensor 'r' is 0 on every calibration sample" in out


def test_calibrate_refuses_nan_weights_before_any_work(tiny: dict[str, Path], tmp_path: Path,
                                                       capsys: pytest.CaptureFixture[str]) -> None:
    rc, _, err = _run(capsys, "calibrate", str(tiny["nan_model"]), "--data", str(tiny["good"]), "-o", str(tmp_path / "c"))
    assert rc == 2 and "has non-finite weights: conv.weight" in err


# --------------------------------------------------------------------------------------------------------- run


def test_run_refuses_nan_outputs_and_labels_every_sample(tiny: dict[str, Path], tmp_path: Path,
                                                         capsys: pytest.CaptureFixture[str]) -> None:
    rc, _, err = _run(capsys, "run", str(tiny["nan_model"]), "--input", str(tiny["good"]), "--no-memory-check")
    assert rc == 5 and "holds NaN/Inf for input" in err and "nan%" not in err
    rc, _, err = _run(capsys, "run", str(tiny["model"]), "--input", str(tiny["nan"]), "--no-memory-check")
    assert rc == 2 and f"input {tiny['nan']}[3] holds NaN/Inf" in err
    # a classifier with 1000 outputs: one line of labels per sample of a 32-sample array
    m = tiny_model()
    fc = np.random.default_rng(0).standard_normal((1000, 4)).astype(np.float32)
    m.graph.initializer[2].CopyFrom(numpy_helper.from_array(fc, "fc.weight"))
    m.graph.initializer[3].CopyFrom(numpy_helper.from_array(np.zeros(1000, np.float32), "fc.bias"))
    m.graph.output[0].type.tensor_type.shape.dim[1].dim_value = 1000
    onnx.save(m, tmp_path / "cls.onnx")
    rc, out, _ = _run(capsys, "run", str(tmp_path / "cls.onnx"), "--input", str(tiny["good"]), "--no-memory-check",
                      "--json")
    doc = json.loads(out)
    assert rc == 0 and [e["input"] for e in doc["top_k"]] == [f"{tiny['good']}[{i}]" for i in range(32)]


# ------------------------------------------------------------------------------------------ sets that do not match


BAD_SPEC = SPEC.replace("shape = [1, 3, 8, 8]\nmax_shape = [4, 3, 8, 8]", "shape = [1, 3, 16, 16]\nmax_shape = [4, 3, 16, 16]")
WRONG_NAME_SPEC = SPEC.replace('name = "input"', 'name = "pixels"')


@pytest.mark.parametrize(("text", "says"), [
    (BAD_SPEC, "differs from"),
    (WRONG_NAME_SPEC, "[[inputs]] 'pixels' is not an input of the model"),
])
def test_a_spec_that_does_not_describe_the_model_is_refused_everywhere(text: str, says: str, tiny: dict[str, Path],
                                                                       tmp_path: Path,
                                                                       capsys: pytest.CaptureFixture[str]) -> None:
    cal = tmp_path / "calibration" / "tiny"
    shutil.copytree(tiny["cal"], cal)
    spec = tmp_path / "spec.toml"
    spec.write_text(text.replace('source = "tiny.onnx"', f'source = "{cal / "model.onnx"}"'), encoding="utf-8")
    for argv in (["plan", str(spec), "-o", str(tmp_path / "plan.json")],
                 ["calibrate", str(cal / "model.onnx"), "--spec", str(spec), "--data", str(tiny["good"]), "-o",
                  str(tmp_path / "c")],
                 ["check-memory", str(spec)],
                 ["bundle", str(spec), "--target", "orin-nx-16gb", "--calibration-dir", str(cal), "-o",
                  str(tmp_path / "b.tar")]):
        rc, _, err = _run(capsys, *argv)
        assert rc == 2 and says in err, (argv[0], err)
    assert not (tmp_path / "b.tar").exists() and not (tmp_path / "plan.json").exists() and not (tmp_path / "c").exists()


def test_bundle_refuses_a_cache_of_another_model(tiny: dict[str, Path], tmp_path: Path,
                                                 capsys: pytest.CaptureFixture[str]) -> None:
    cal = tmp_path / "cal"
    shutil.copytree(tiny["cal"], cal)
    write_cache(cal / "calibration.cache", CalibrationCache.from_amax(
        {"/features/features.0/Conv_output_0": 2.0, "images": 3.0}, 100300))
    rc, _, err = _run(capsys, "bundle", str(tiny["spec"]), "--target", "orin-nx-16gb", "--calibration-dir", str(cal),
                      "-o", str(tmp_path / "b.tar"))
    assert rc == 2 and "belongs to another model" in err and not (tmp_path / "b.tar").exists()


def test_bundle_refuses_a_calibration_set_made_for_another_model(tiny: dict[str, Path], tmp_path: Path,
                                                                 capsys: pytest.CaptureFixture[str]) -> None:
    """Same architecture, other weights: tensor names match, only the set's stamp can tell."""
    _, other = make_calibration_dir(tmp_path / "other", seed=7)
    rc, _, err = _run(capsys, "calibrate", str(other / "model.onnx"), "--data", str(tiny["good"]), "-o", str(other), "-q")
    assert rc == 0, err
    cal = tmp_path / "cal"
    shutil.copytree(tiny["cal"], cal)
    for name in ("calibration.cache", "model.qdq.onnx", "summary.json", "histograms.npz"):
        shutil.copy(other / name, cal / name)
    rc, _, err = _run(capsys, "bundle", str(tiny["spec"]), "--target", "orin-nx-16gb", "--calibration-dir", str(cal),
                      "-o", str(tmp_path / "b.tar"))
    assert rc == 2 and "was made for another model" in err and not (tmp_path / "b.tar").exists()


def test_nan_born_inside_the_model_is_named_by_tensor_and_batch(tiny: dict[str, Path], tmp_path: Path,
                                                                capsys: pytest.CaptureFixture[str]) -> None:
    """Finite weights, finite data, a Sqrt of negative conv outputs: the activation guard names the tensor."""
    m = tiny_model()
    relu = next(n for n in m.graph.node if n.op_type == "Relu")
    relu.input[0] = "s"
    m.graph.node.insert(list(m.graph.node).index(relu), onnx.helper.make_node("Sqrt", ["c"], ["s"], name="/sqrt"))
    onnx.save(m, tmp_path / "sqrt.onnx")
    rc, _, err = _run(capsys, "calibrate", str(tmp_path / "sqrt.onnx"), "--data", str(tiny["good"]), "-o",
                      str(tmp_path / "cal"), "--batch-size", "8")
    assert rc == 6 and "tensor 's' has NaN/Inf values in calibration batch 0" in err
    assert not (tmp_path / "cal").exists()
