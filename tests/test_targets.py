"""The target catalog: module facts, the JetPack table, user targets files, the `targets` command."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.conftest import run_cli
from vqz_edge.errors import InputError
from vqz_edge.targets import (
    ENV_VAR,
    get_target,
    jetpack_for_l4t,
    jetpack_info,
    jetpack_table,
    list_targets,
    load_catalog,
    resolve_targets,
)

GIB = 1 << 30

# name: (RAM GiB, CUDA cores, SMs, DLA cores) -- from the NVIDIA data sheets cited in targets.toml
MODULES = {
    "orin-nano-4gb": (4, 512, 4, 0),
    "orin-nano-8gb": (8, 1024, 8, 0),
    "orin-nx-8gb": (8, 1024, 8, 1),
    "orin-nx-16gb": (16, 1024, 8, 2),
    "agx-orin-32gb": (32, 1792, 14, 2),
    "agx-orin-64gb": (64, 2048, 16, 2),
}


@pytest.mark.parametrize("name", sorted(MODULES))
def test_module_facts(name: str) -> None:
    ram_gib, cores, sms, dla = MODULES[name]
    t = get_target(name)
    assert (t.ram_bytes, t.cuda_cores, t.gpu_sm_count, t.dla_cores) == (ram_gib * GIB, cores, sms, dla)
    assert t.gpu_sm_count * 128 == t.cuda_cores  # Ampere GA10B: 128 CUDA cores per SM
    assert t.compute_capability == "8.7"
    assert t.integrated
    assert 0 < t.os_reserve_bytes < t.ram_bytes / 2
    assert t.sources and all(len(s) > 40 for s in t.sources)  # resolved citations, not bare keys
    # the default TensorRT comes from the JetPack table
    assert t.default_trt_version == jetpack_info(t.default_jetpack).tensorrt


def test_catalog_order_and_super() -> None:
    names = [t.name for t in list_targets()]
    assert set(MODULES) <= set(names)
    assert names.index("orin-nano-4gb") < names.index("agx-orin-64gb")
    sup = get_target("orin-nano-super")  # extends orin-nano-8gb
    base = get_target("orin-nano-8gb")
    assert (sup.ram_bytes, sup.gpu_sm_count, sup.os_reserve_bytes) == (base.ram_bytes, base.gpu_sm_count, base.os_reserve_bytes)
    assert sup.min_jetpack == "6.2"


@pytest.mark.parametrize(
    ("jp", "l4t", "trt", "cuda"),
    [("5.1", "35.2.1", "8.5.2", "11.4"), ("5.1.1", "35.3.1", "8.5.2", "11.4"), ("5.1.2", "35.4.1", "8.5.2", "11.4"),
     ("6.0", "36.3.0", "8.6.2", "12.2"), ("6.1", "36.4.0", "10.3.0", "12.6"), ("6.2", "36.4.3", "10.3.0", "12.6")],
)
def test_jetpack_table(jp: str, l4t: str, trt: str, cuda: str) -> None:
    row = jetpack_info(jp)
    assert (row.l4t, row.tensorrt, row.cuda) == (l4t, trt, cuda)
    assert row.sources
    assert jetpack_for_l4t(l4t) == row


def test_jetpack_table_sorted_and_l4t_forms() -> None:
    versions = [tuple(int(x) for x in j.version.split(".")) for j in jetpack_table()]
    assert versions == sorted(versions)
    assert jetpack_for_l4t("R36.4.3").version == "6.2"  # type: ignore[union-attr]
    assert jetpack_for_l4t("36.3").version == "6.0"  # type: ignore[union-attr]
    assert jetpack_for_l4t("32.7.1") is None


def test_unknown_names_list_the_known_ones() -> None:
    with pytest.raises(InputError) as e:
        get_target("orin-nano-2gb")
    for name in MODULES:
        assert name in str(e.value)
    with pytest.raises(InputError, match="6.2"):
        jetpack_info("7.9")


def test_resolve_targets() -> None:
    assert [t.name for t in resolve_targets(["all"])] == [t.name for t in list_targets()]
    assert [t.name for t in resolve_targets(["orin-nx-8gb,agx-orin-32gb"])] == ["orin-nx-8gb", "agx-orin-32gb"]


def _write(path: Path, text: str) -> Path:
    path.write_text(text, encoding="utf-8")
    return path


def test_user_targets_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    f = _write(tmp_path / "mine.toml", """
[[target]]
name = "robot-nx16"
extends = "orin-nx-16gb"
os_reserve_mib = 3072

[[target]]
name = "orin-nano-8gb"            # override a built-in: our image is leaner
extends = "orin-nano-8gb"
os_reserve_mib = 1024

[[target]]
name = "custom-jp60"
display_name = "Custom board on JetPack 6.0"
ram_mib = 8192
gpu_sm_count = 8
os_reserve_mib = 1200
default_jetpack = "6.0"
""")
    robot = get_target("robot-nx16", [f])
    assert robot.ram_bytes == 16 * GIB and robot.dla_cores == 2 and robot.os_reserve_bytes == 3072 << 20
    assert robot.origin == str(f)
    assert get_target("orin-nano-8gb", [f]).os_reserve_bytes == 1024 << 20
    assert get_target("orin-nano-8gb").os_reserve_bytes == 1536 << 20  # built-in untouched without the file
    custom = get_target("custom-jp60", [f])
    assert (custom.default_trt_version, custom.default_cuda) == ("8.6.2", "12.2")
    # the same file through the environment variable
    monkeypatch.setenv(ENV_VAR, str(f))
    assert get_target("robot-nx16").os_reserve_bytes == 3072 << 20
    assert len(load_catalog().targets) == len(load_catalog(use_env=False).targets) + 2


@pytest.mark.parametrize(
    ("body", "match"),
    [
        ('[[target]]\nname = "x"\nextends = "orin-nx-16gb"\nram_gb = 8\n', "unknown key.*ram_gb"),
        ('[[target]]\nname = "x"\nram_mib = 8192\n', "missing key"),
        ('[[target]]\nname = "x"\nextends = "nope"\n', "extends unknown target 'nope'"),
        ('[[target]]\nname = "x"\nextends = "orin-nx-16gb"\nos_reserve_mib = 99999\n', "os reserve"),
        ('[[target]]\nname = "x"\nextends = "orin-nx-16gb"\ndla_cores = "two"\n', "'dla_cores' must be int"),
        ('[[target]]\nname = "Bad Name"\nextends = "orin-nx-16gb"\n', "lower-case"),
        ("[[target]\n", "not valid TOML"),
    ],
)
def test_bad_targets_file(tmp_path: Path, body: str, match: str) -> None:
    f = _write(tmp_path / "bad.toml", body)
    with pytest.raises(InputError, match=match):
        list_targets([f])


def test_missing_targets_file(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="does not exist"):
        list_targets([tmp_path / "nope.toml"])


def test_targets_cli_json_and_text(tmp_path: Path) -> None:
    r = run_cli("targets", "--json")
    assert r.returncode == 0, r.stderr
    doc = json.loads(r.stdout)
    names = [t["name"] for t in doc["targets"]]
    assert set(MODULES) <= set(names)
    assert {j["version"]: j["tensorrt"] for j in doc["jetpack"]}["6.2"] == "10.3.0"
    assert doc["sources"]["jp62"].startswith("https://")
    f = _write(tmp_path / "t.toml", '[[target]]\nname = "lab-agx"\nextends = "agx-orin-64gb"\n')
    r = run_cli("targets", "--targets-file", str(f))
    assert r.returncode == 0, r.stderr
    assert "lab-agx" in r.stdout and "36.4.3" in r.stdout
    r = run_cli("targets", "--targets-file", str(tmp_path / "missing.toml"))
    assert r.returncode == 2 and "does not exist" in r.stderr
