"""The calibration memory budget: plans, their limits, and results that do not depend on the plan."""

from __future__ import annotations

import importlib
import json

import numpy as np
import pytest

from tests.conftest import run_cli
from vqz_edge.calib import CalibrationOptions, calibrate, memory
from vqz_edge.calib.memory import (
    HEADROOM,
    INTERMEDIATE_FACTOR,
    ORT_MODEL_FACTOR,
    RUNTIME_OVERHEAD,
    SLOT_TARGET,
    GiB,
    MiB,
    fit_batch,
    parse_memory,
    plan_memory,
)
from vqz_edge.data import demo_crops
from vqz_edge.errors import CalibrationError, InputError

ORDER = [f"t{i}" for i in range(10)]
collect_module = importlib.import_module("vqz_edge.calib.collect")  # the package exports the function collect too


def _plan(per_tensor: int, budget: int, batch: int = 8, model: int = 10 * MiB, base: int = 200 * MiB):
    return plan_memory(dict.fromkeys(ORDER, per_tensor), ORDER, batch_size=batch, budget=budget, model_bytes=model,
                       base_bytes=base)


def test_small_model_runs_the_whole_batch_in_one_pass() -> None:
    plan = _plan(per_tensor=256 * 1024, budget=8 * GiB)  # 2.5 MiB per image
    assert plan.passes == 1 and plan.execution_batch == 8 and not plan.first_batch_rerun
    assert plan.estimated_peak <= plan.budget * HEADROOM


def test_batch_shrinks_to_a_divisor_of_the_calibration_batch() -> None:
    plan = _plan(per_tensor=int(1.2 * MiB), budget=8 * GiB)  # 12 MiB per image: 8 would exceed SLOT_TARGET
    assert plan.execution_batch * plan.bytes_per_image <= SLOT_TARGET
    assert 8 % plan.execution_batch == 0 and plan.execution_batch == 2
    assert plan.first_batch_rerun and plan.passes == 1
    plan = _plan(per_tensor=int(1.2 * MiB), budget=8 * GiB, batch=6)
    assert plan.execution_batch == 2


def test_tight_budget_splits_tensors_into_passes_in_graph_order() -> None:
    budget = 1 * GiB
    plan = _plan(per_tensor=60 * MiB, budget=budget)  # 600 MiB per image: one image of all does not fit
    assert plan.execution_batch == 1 and plan.passes > 1
    assert [n for g in plan.groups for n in g] == ORDER  # every tensor once, in order
    assert plan.estimated_peak <= budget * HEADROOM
    fixed = 200 * MiB + ORT_MODEL_FACTOR * 10 * MiB + RUNTIME_OVERHEAD
    for size in plan.group_bytes_per_image:
        assert fixed + 2 * size + INTERMEDIATE_FACTOR * 60 * MiB <= budget * HEADROOM
    assert plan.to_dict()["passes"] == plan.passes and "passes" in plan.describe()


def test_budget_below_the_model_or_one_tensor_is_refused_with_what_it_needs() -> None:
    with pytest.raises(CalibrationError, match="below what the process and the model alone take") as e:
        _plan(per_tensor=MiB, budget=300 * MiB, model=200 * MiB)
    assert "--max-memory" in (e.value.hint or "")
    with pytest.raises(CalibrationError, match="largest activation"):
        _plan(per_tensor=400 * MiB, budget=2 * GiB)


def test_fit_batch() -> None:
    assert fit_batch(32, 10 * MiB, 100 * MiB, GiB, "x") == 32
    assert fit_batch(32, 100 * MiB, 100 * MiB, GiB, "x") == int((GiB * HEADROOM - 100 * MiB - RUNTIME_OVERHEAD) // (100 * MiB))
    with pytest.raises(CalibrationError, match="cannot hold the sweep"):
        fit_batch(32, GiB, 100 * MiB, GiB, "the sweep")


@pytest.mark.parametrize("text,value", [("8G", 8 * GiB), ("1500M", 1500 * MiB), ("2.5GB", 2_500_000_000),
                                        ("4096", 4096), ("1 GiB", GiB)])
def test_parse_memory(text: str, value: int) -> None:
    assert parse_memory(text) == value


@pytest.mark.parametrize("text", ["", "-1G", "0", "8Q", "nanG", "infG"])
def test_parse_memory_refuses(text: str) -> None:
    with pytest.raises(InputError):
        parse_memory(text)


def test_results_do_not_depend_on_the_execution_batch(mobilenet_onnx, tmp_path, monkeypatch) -> None:
    """Batch 8 per run with ORT on every core and batch 1 per run (the first batch of 8 re-run for the bin
    widths) with one ORT thread write byte-identical cache, Q/DQ model and histograms."""
    data = tmp_path / "calib.npy"
    np.save(data, demo_crops("calibration", 20))
    batches = {}
    for key, target, threads in (("whole", GiB, 0), ("split", SLOT_TARGET, 1)):
        monkeypatch.setattr(memory, "SLOT_TARGET", target)
        monkeypatch.setattr(collect_module, "ORT_THREADS", threads)
        res = calibrate(mobilenet_onnx, data, tmp_path / key, CalibrationOptions(num_images=20), preset="none")
        assert res.memory is not None and res.memory.passes == 1
        batches[key] = res.memory.execution_batch
    assert batches == {"whole": 8, "split": 1}
    for name in ("calibration.cache", "model.qdq.onnx", "histograms.npz", "summary.json"):
        assert (tmp_path / "whole" / name).read_bytes() == (tmp_path / "split" / name).read_bytes(), name


def test_cli_max_memory_prints_the_plan_and_refuses_too_small(mobilenet_onnx, tmp_path) -> None:
    r = run_cli("calibrate", str(mobilenet_onnx), "--data", "demo", "--num-images", "8", "--max-memory", "2G",
                "-o", str(tmp_path / "c"), "--json", "-q")
    assert r.returncode == 0, r.stderr
    doc = json.loads(r.stdout)
    assert doc["memory"]["budget_bytes"] == 2 * GiB and doc["memory"]["passes"] == 1
    assert 0 < doc["peak_rss_bytes"] <= 2 * GiB
    r = run_cli("calibrate", str(mobilenet_onnx), "--data", "demo", "--num-images", "8", "--max-memory", "50M",
                "-o", str(tmp_path / "d"))
    assert r.returncode != 0 and "--max-memory" in r.stderr and "Traceback" not in r.stderr
    r = run_cli("calibrate", str(mobilenet_onnx), "--data", "demo", "--max-memory", "lots", "-o", str(tmp_path / "e"))
    assert r.returncode != 0 and "'lots'" in r.stderr and "Traceback" not in r.stderr


def test_sensitivity_and_finetune_batches_shrink_to_the_budget(mobilenet_onnx) -> None:
    from vqz_edge.calib.collect import model_memory
    from vqz_edge.calib.finetune import (
        FINETUNE_FACTOR,
        FINETUNE_WEIGHT_FACTOR,
        FinetuneOptions,
        fit_finetune_batch,
    )
    from vqz_edge.calib.memory import current_rss
    from vqz_edge.onnx_io import load_model
    from vqz_edge.sensitivity.run import evaluation_batch

    model = load_model(mobilenet_onnx)
    weights, per_image, largest = model_memory(model)
    assert evaluation_batch(model, 32, None) == 32  # half of this host's RAM holds 32 MobileNetV2 samples
    per = (INTERMEDIATE_FACTOR + 2) * largest
    budget = int((current_rss() + 2 * ORT_MODEL_FACTOR * weights + RUNTIME_OVERHEAD + 5.5 * per) / HEADROOM)
    assert 3 <= evaluation_batch(model, 32, budget) <= 6
    per = FINETUNE_FACTOR * per_image
    budget = int((current_rss() + FINETUNE_WEIGHT_FACTOR * weights + RUNTIME_OVERHEAD + 4.5 * per) / HEADROOM)
    assert 2 <= fit_finetune_batch(model, FinetuneOptions(batch_size=16, max_memory=budget)).batch_size <= 5
    with pytest.raises(CalibrationError, match="fine-tuning"):
        fit_finetune_batch(model, FinetuneOptions(batch_size=16, max_memory=current_rss()))
