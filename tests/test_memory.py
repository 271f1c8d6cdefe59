"""The memory budget: hand-computed arithmetic per catalog target, /proc/meminfo parsing, estimates, CLI."""

from __future__ import annotations

import json
import math
import sys
import types
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from tests.conftest import run_cli
from tests.test_runtime import write_fake_engine
from vqz_edge.device import parse_meminfo, read_jtop, read_live_memory, read_meminfo
from vqz_edge.errors import DataError
from vqz_edge.memory import BudgetError, MemoryItem, check_budget, require_fit
from vqz_edge.memory.estimate import estimate_engine_dir, estimate_onnx, parse_size, resident_item
from vqz_edge.targets import get_target, list_targets

MIB = 1 << 20
FIXTURES = Path(__file__).parent / "fixtures" / "meminfo"

ITEMS = [
    MemoryItem("engine", 100 * MIB, "fp16", "engine"),
    MemoryItem("activations", 50 * MIB, "", "activations"),
    MemoryItem("I/O buffers", 10 * MIB, "", "io"),
]

# Hand-computed headroom in MiB with the defaults (JetPack 6.2: CUDA 12.6 -> 256 MiB context, TensorRT 10.3 ->
# 192 MiB runtime; margin 5% of RAM; items 160 MiB):  RAM - OS reserve - 448 - 160 - 0.05 * RAM
EXPECTED_HEADROOM_MIB = {
    "orin-nano-4gb": 4096 - 1024 - 448 - 160 - 204.8,      # 2259.2
    "orin-nano-8gb": 8192 - 1536 - 448 - 160 - 409.6,      # 5638.4
    "orin-nano-super": 8192 - 1536 - 448 - 160 - 409.6,    # 5638.4
    "orin-nx-8gb": 8192 - 1536 - 448 - 160 - 409.6,        # 5638.4
    "orin-nx-16gb": 16384 - 2048 - 448 - 160 - 819.2,      # 12908.8
    "agx-orin-32gb": 32768 - 2560 - 448 - 160 - 1638.4,    # 27961.6
    "agx-orin-64gb": 65536 - 3584 - 448 - 160 - 3276.8,    # 58067.2
}


def test_every_catalog_target_has_a_hand_computed_case() -> None:
    assert {t.name for t in list_targets()} == set(EXPECTED_HEADROOM_MIB)


@pytest.mark.parametrize("name", sorted(EXPECTED_HEADROOM_MIB))
def test_budget_arithmetic(name: str) -> None:
    r = check_budget(get_target(name), ITEMS)
    assert r.fits and not r.live
    # the margin is floor(5% of RAM bytes): at most 1 byte below the exact MiB figure
    assert r.headroom_bytes == pytest.approx(EXPECTED_HEADROOM_MIB[name] * MIB, abs=1)
    names = [row.name for row in r.rows]
    assert names == ["module RAM", "OS + services reserve", "CUDA context", "TensorRT runtime", "engine", "activations",
                     "I/O buffers", "safety margin (5%)"]
    assert r.required_bytes + r.headroom_bytes == r.capacity_bytes == get_target(name).ram_bytes
    d = json.loads(json.dumps(r.to_dict()))
    assert d["fits"] is True and d["headroom_bytes"] == r.headroom_bytes and len(d["rows"]) == 8
    table = r.table()
    assert f"{EXPECTED_HEADROOM_MIB[name]:.1f}" in table and "FITS" in table


def test_jetpack5_overhead() -> None:
    # TensorRT 8.5.2 ships with CUDA 11.4 (no lazy loading): 640 MiB context + 384 MiB TensorRT/cuDNN/cuBLAS
    r = check_budget(get_target("orin-nano-8gb"), ITEMS, trt_version="8.5.2")
    assert r.headroom_bytes == pytest.approx((8192 - 1536 - 640 - 384 - 160 - 409.6) * MIB, abs=1)
    # TensorRT 8.6.2 is JetPack 6.0 with CUDA 12.2: lazy loading, 256 MiB
    r = check_budget(get_target("orin-nano-8gb"), ITEMS, trt_version="8.6.2")
    assert r.headroom_bytes == pytest.approx((8192 - 1536 - 256 - 384 - 160 - 409.6) * MIB, abs=1)


def test_overrides_and_live() -> None:
    t = get_target("orin-nx-8gb")
    r = check_budget(t, ITEMS, os_reserve_bytes=1000 * MIB, margin_fraction=0.0)
    assert r.headroom_bytes == (8192 - 1000 - 448 - 160) * MIB
    assert r.rows[1].note == "override"
    live = check_budget(t, ITEMS, live_free_bytes=2000 * MIB, live_source="test")
    assert live.live and "OS + services reserve" not in [row.name for row in live.rows]
    assert live.headroom_bytes == (2000 - 448 - 160 - 100) * MIB  # margin: 5% of the 2000 MiB free
    assert live.fits_on == ()  # other targets make no sense for a live reading
    with pytest.raises(ValueError, match="margin"):
        check_budget(t, ITEMS, margin_fraction=0.7)
    with pytest.raises(ValueError, match="OS reserve"):
        check_budget(t, ITEMS, os_reserve_bytes=9000 * MIB)


def test_does_not_fit_verdict_and_advice() -> None:
    items = [MemoryItem("weights", 3000 * MIB, "fp16, 1.5B params", "weights"), *ITEMS[1:]]
    r = check_budget(get_target("orin-nano-4gb"), items)
    expected = 4096 - 1024 - 448 - 3000 - 60 - 204.8
    assert not r.fits and r.headroom_bytes == pytest.approx(expected * MIB, abs=1)
    assert "DOES NOT FIT" in r.verdict() and f"{-expected:.1f} MiB" in r.verdict()
    advice = "\n".join(r.advice)
    assert "quantize" in advice and "saves ~1500 MiB" in advice
    assert "fits on: orin-nano-8gb" in advice
    with pytest.raises(BudgetError) as e:
        require_fit(r)
    assert e.value.exit_code == 7 and e.value.report is r
    assert "refusing" in str(e.value) and "= headroom" in str(e.value)
    # tight: fits with under 10% headroom
    tight = check_budget(get_target("orin-nano-4gb"), [MemoryItem("w", 2300 * MIB, "", "weights")])
    assert tight.fits and tight.tight and "measure on the device" in tight.advice[0]


def test_memory_item_validation() -> None:
    with pytest.raises(ValueError, match="negative"):
        MemoryItem("x", -1)
    with pytest.raises(ValueError, match="kind"):
        MemoryItem("x", 1, kind="gpu")
    assert parse_size("350MiB") == 350 * MIB and parse_size("1.5GiB") == 1536 * MIB and parse_size("2G") == 2 << 30
    item = resident_item("detector=512M")
    assert (item.bytes, item.kind) == (512 * MIB, "resident")


# ------------------------------------------------------------------------------------------ /proc/meminfo


def test_meminfo_captured_x86() -> None:
    m = read_meminfo(FIXTURES / "x86_64_debian12_vm_24gib.txt")
    assert m.total_bytes == 24684092 * 1024
    assert m.available_bytes == 24041160 * 1024 and not m.available_estimated
    assert m.free_bytes == 21233244 * 1024
    assert m.swap_total_bytes == 0 and m.nvmap_used_bytes is None
    assert m.fields["HugePages_Total"] == 0  # unit-less counts stay plain numbers


def test_meminfo_jetson() -> None:
    m = read_meminfo(FIXTURES / "jetson_orin_nano_8gb_constructed.txt")
    assert m.total_bytes == 7620608 * 1024
    assert m.available_bytes == 5702912 * 1024
    assert m.nvmap_used_bytes == 512000 * 1024
    assert m.swap_total_bytes == m.swap_free_bytes == 3810304 * 1024
    assert m.fields["CmaTotal"] == 262144 * 1024


def test_meminfo_without_memavailable() -> None:
    m = read_meminfo(FIXTURES / "old_kernel_no_memavailable.txt")
    assert m.available_estimated
    assert m.available_bytes == (50012 + 127524 + 405964) * 1024


def test_meminfo_garbage() -> None:
    with pytest.raises(DataError, match="MemTotal"):
        parse_meminfo("hello\nworld\n", source="junk")


def test_live_memory_falls_back_to_meminfo(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "jtop", None)  # jetson-stats not installed: import fails
    assert read_jtop() is None
    live = read_live_memory(meminfo_path=FIXTURES / "jetson_orin_nano_8gb_constructed.txt")
    assert live.available_bytes == 5702912 * 1024 and "MemAvailable" in live.source


def test_live_memory_from_jtop(monkeypatch: pytest.MonkeyPatch) -> None:
    """jtop's documented RAM dict (kB: tot, used = tot - free - buffers - cached) -> bytes available."""

    class FakeJtop:
        def __enter__(self) -> FakeJtop:
            return self

        def __exit__(self, *a: object) -> None:
            pass

        def ok(self) -> bool:
            return True

        memory = {"RAM": {"tot": 7620608, "used": 1900000, "free": 4127360, "buffers": 61440, "cached": 1740800}}

    mod = types.ModuleType("jtop")
    mod.jtop = FakeJtop  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "jtop", mod)
    live = read_live_memory(meminfo_path=FIXTURES / "x86_64_debian12_vm_24gib.txt")
    assert live.source.startswith("jtop")
    assert (live.total_bytes, live.available_bytes) == (7620608 * 1024, (7620608 - 1900000) * 1024)


# ------------------------------------------------------------------------------------------ estimates


def test_estimate_mobilenet(mobilenet_onnx: Path) -> None:
    model = onnx.load(str(mobilenet_onnx))
    n_float = sum(math.prod(i.dims) for i in model.graph.initializer if i.data_type == TensorProto.FLOAT)
    e1 = estimate_onnx(mobilenet_onnx)
    e8 = estimate_onnx(mobilenet_onnx, batch=8)
    w, act, io = (i.bytes for i in e1.items)
    assert w == 2 * n_float and e1.precision == "fp16"
    assert estimate_onnx(mobilenet_onnx, precision="fp32").items[0].bytes == 4 * n_float
    assert io == (3 * 224 * 224 + 1000) * 4
    # the largest MobileNetV2 block at 224x224 keeps 96x112x112 + 16x112x112 fp16 values live: > 2.4 MB
    assert 96 * 112 * 112 * 2 < act < 20 * MIB
    assert e8.items[1].bytes == pytest.approx(8 * act, rel=0.01)
    assert e8.items[2].bytes == 8 * io and e8.max_batch == 8


def _tiny_qdq_model(path: Path) -> int:
    """x -> Q -> DQ -> Conv(W: int8 via DQ, bias float) -> y. Returns the number of weight elements."""
    w = np.random.default_rng(0).integers(-127, 127, (8, 3, 3, 3)).astype(np.int8)
    inits = [
        numpy_helper.from_array(w, "w_q"), numpy_helper.from_array(np.array(0.02, np.float32), "w_s"),
        numpy_helper.from_array(np.array(0, np.int8), "w_z"), numpy_helper.from_array(np.zeros(8, np.float32), "b"),
        numpy_helper.from_array(np.array(0.05, np.float32), "x_s"), numpy_helper.from_array(np.array(0, np.int8), "x_z"),
    ]
    nodes = [
        helper.make_node("QuantizeLinear", ["x", "x_s", "x_z"], ["xq"], name="q"),
        helper.make_node("DequantizeLinear", ["xq", "x_s", "x_z"], ["xd"], name="dq"),
        helper.make_node("DequantizeLinear", ["w_q", "w_s", "w_z"], ["wd"], name="dqw"),
        helper.make_node("Conv", ["xd", "wd", "b"], ["y"], name="conv", pads=[1, 1, 1, 1]),
    ]
    g = helper.make_graph(nodes, "qdq", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 3, 16, 16])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 8, 16, 16])], inits)
    onnx.save(helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)]), str(path))
    return w.size


def test_estimate_qdq(tmp_path: Path) -> None:
    n = _tiny_qdq_model(tmp_path / "tiny.qdq.onnx")
    e = estimate_onnx(tmp_path / "tiny.qdq.onnx", batch=2)
    assert e.precision == "int8" and e.details["qdq"]
    # int8 weights (1 byte) + float bias at fp16 + scales/zero-points
    assert e.items[0].bytes == n * 1 + 8 * 2 + 2 * 2 + 2 * 1
    assert e.items[2].bytes == 2 * (3 + 8) * 16 * 16 * 4


def test_estimate_engine_dir(tmp_path: Path) -> None:
    d = write_fake_engine(tmp_path / "eng", device_memory=[5 * MIB, 9 * MIB])
    e = estimate_engine_dir(d)
    engine, act, io = e.items
    assert engine.bytes == (d / "model.engine").stat().st_size
    assert act.bytes == 9 * MIB
    assert io.bytes == (8 * 3 * 224 * 224 + 8 * 1000) * 4  # both bindings at the profile max batch 8


# ------------------------------------------------------------------------------------------ CLI


def test_check_memory_demo_model_every_target(mobilenet_onnx: Path) -> None:
    r = run_cli("check-memory", str(mobilenet_onnx), "--json")
    assert r.returncode == 0, r.stderr
    doc = json.loads(r.stdout)
    assert doc["fits"] is True
    assert [x["target"] for x in doc["reports"]] == [t.name for t in list_targets()]
    for rep in doc["reports"]:
        assert rep["headroom_bytes"] > 0 and {row["kind"] for row in rep["rows"]} >= {"capacity", "reserve", "overhead", "item"}
    r = run_cli("check-memory", str(mobilenet_onnx), "--target", "orin-nano-4gb,agx-orin-64gb")
    assert r.returncode == 0, r.stderr
    assert "FITS on orin-nano-4gb" in r.stdout and "FITS on agx-orin-64gb" in r.stdout and "= headroom" in r.stdout


def test_check_memory_does_not_fit(mobilenet_onnx: Path, tmp_path: Path) -> None:
    r = run_cli("check-memory", str(mobilenet_onnx), "-t", "orin-nano-4gb", "--batch", "1024", "--json")
    assert r.returncode == 7, r.stderr
    doc = json.loads(r.stdout)
    rep = doc["reports"][0]
    assert rep["fits"] is False and rep["headroom_bytes"] < 0
    assert any("lower the maximum batch" in a for a in rep["advice"])
    r = run_cli("check-memory", str(mobilenet_onnx), "-t", "orin-nano-4gb", "--resident", "llm=3GiB")
    assert r.returncode == 7
    assert "DOES NOT FIT" in r.stdout and "resident: llm" in r.stdout and "fits on: orin-nano-8gb" in r.stdout


def test_check_memory_engine_dir_and_spec(tmp_path: Path, mobilenet_onnx: Path) -> None:
    d = write_fake_engine(tmp_path / "eng", device_memory=[64 * MIB])
    r = run_cli("check-memory", str(d), "--json")  # default target: the manifest's (orin-nx-16gb)
    assert r.returncode == 0, r.stderr
    doc = json.loads(r.stdout)
    assert [x["target"] for x in doc["reports"]] == ["orin-nx-16gb"]
    assert doc["estimate"]["items"][1]["bytes"] == 64 * MIB
    spec = tmp_path / "spec.toml"
    spec.write_text(f"""
version = 1
[model]
name = "mnv2"
source = "{mobilenet_onnx}"
[[inputs]]
name = "input"
shape = [1, 3, 224, 224]
max_shape = [4, 3, 224, 224]
[build]
targets = ["orin-nano-8gb"]
""", encoding="utf-8")
    r = run_cli("check-memory", str(spec), "--json")
    assert r.returncode == 0, r.stderr
    doc = json.loads(r.stdout)
    assert [x["target"] for x in doc["reports"]] == ["orin-nano-8gb"]
    assert doc["estimate"]["max_batch"] == 4 and doc["estimate"]["precision"] == "int8"  # spec default precision
