"""Faults while writing: the disk fills up at every single write of every command that writes, and install roots
are read-only. Each run must end in a clear error of the error tree (exit 10, 'disk full' / 'read-only', the
path), leave the previous artifacts exactly as they were, and leave no temporary file or staging folder.

WRITERS lists every command that writes files; a test fails when a command is added to the CLI without being
placed there or in READ_ONLY_COMMANDS, so the next command is covered by default.
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
import pytest

from tests.bundle_fixtures import make_bundles, make_calibration_dir, tiny_model
from tests.faults import disk_full_at, leftovers, read_only, snapshot
from vqz_edge.bundle import install_bundle, status
from vqz_edge.bundle.install import InstallOptions
from vqz_edge.cli import COMMANDS, main
from vqz_edge.device import DevicePaths
from vqz_edge.errors import DiskFullError, ReadOnlyError
from vqz_edge.fsutil import atomic_write_bytes, remove_stale, write_set

# -------------------------------------------------------------------------------------------------- helpers


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Small real inputs: the tiny CNN and its calibration folder, signed bundles, preprocessed data."""
    d = tmp_path_factory.mktemp("faults")
    (d / "bundles").mkdir()
    out = dict(make_bundles(d / "bundles"))
    spec, cal = make_calibration_dir(d / "w")
    out["spec"], out["cal"] = spec, cal
    out["model"] = cal / "model.onnx"
    from vqz_edge.data import demo_crops

    x = demo_crops("evaluation", 16).astype(np.float32)
    small = np.ascontiguousarray(x[:, :, 100:108, 100:108])  # 3x8x8 patches of real photos (the tiny model's input)
    out["data"] = d / "data.npy"
    np.save(out["data"], small)
    return out


@dataclass(frozen=True)
class Writer:
    """A command that writes: how to prepare a folder holding its previous good output, and its argv."""

    name: str
    argv: Callable[[dict[str, Path], Path], list[str]]
    prepare: Callable[[dict[str, Path], Path], None]  # writes the "previous" artifacts into the work folder
    watched: str  # the folder (relative to the work folder) whose contents must survive a failed run


def _no_previous(world: dict[str, Path], work: Path) -> None:
    (work / "out").mkdir(parents=True)


def _previous_calibration(world: dict[str, Path], work: Path) -> None:
    (work / "out").mkdir(parents=True)
    assert main(["calibrate", str(world["model"]), "--data", str(world["data"]), "--num-images", "8",
                 "--batch-size", "8", "-o", str(work / "out"), "-q"]) == 0


def _previous_file(name: str, data: bytes = b"previous good artifact\n") -> Callable[[dict[str, Path], Path], None]:
    def prepare(world: dict[str, Path], work: Path) -> None:
        (work / "out").mkdir(parents=True)
        (work / "out" / name).write_bytes(data)
    return prepare


def _previous_install(world: dict[str, Path], work: Path) -> None:
    install_bundle(world["v1"], work / "out", InstallOptions(backend="onnxruntime", public_key=world["pub"],
                                                             device=DevicePaths(use_jtop=False)))


WRITERS = [
    Writer("calibrate", lambda w, d: ["calibrate", str(w["model"]), "--data", str(w["data"]), "--num-images", "16",
                                      "--batch-size", "8", "--method", "max", "-o", str(d / "out"), "-q"],
           _previous_calibration, "out"),
    Writer("export", lambda w, d: ["export", str(w["model"]), "-o", str(d / "out" / "m.onnx"), "--samples", "2", "-q"],
           _previous_file("m.onnx"), "out"),
    Writer("data", lambda w, d: ["data", "--split", "calibration", "--count", "2", "--size", "8",
                                 "-o", str(d / "out" / "d.npy"), "-q"],
           _previous_file("d.npy"), "out"),
    Writer("evaluate", lambda w, d: ["evaluate", str(w["model"]), str(w["cal"] / "model.qdq.onnx"), "--data",
                                     str(w["data"]), "--num-images", "8", "-o", str(d / "out" / "f.json"), "-q"],
           _previous_file("f.json"), "out"),
    Writer("bundle", lambda w, d: ["bundle", str(w["spec"]), "--target", "orin-nx-16gb", "--calibration-dir",
                                   str(w["cal"]), "-o", str(d / "out" / "b.tar"), "--smoke-samples", "2", "-q"],
           _previous_file("b.tar"), "out"),
    Writer("install", lambda w, d: ["install", str(w["v2"]), "--root", str(d / "out"), "--key", str(w["pub"]),
                                    "--backend", "onnxruntime", "--no-jtop", "-q"],
           _previous_install, "out"),
    Writer("keys", lambda w, d: ["keys", "generate", "-o", str(d / "out" / "k")], _no_previous, "out"),
]
# Commands that write no file, or only where the WRITERS above cover the code path they share.
READ_ONLY_COMMANDS = {
    "demo": "export + calibrate + evaluate + plan, covered by those",
    "plan": "one atomic_write_json, the same path as evaluate -o",
    "sensitivity": "fsutil.write_set, covered by calibrate",
    "build": "TensorRT only (skipped without it)",
    "targets": "reads", "check-memory": "reads", "run": "reads", "bench": "reads", "status": "reads",
    "vlm": "vlm export: atomic writes into a staged folder (its own tests); plan/audit/run/compare read",
    "doctor": "reads (checks the 4-bit kernels in memory, writes nothing)",
    "rollback": "the install root paths, covered by install (and read-only roots below)",
    "fleet": "fleet report -o: one atomic_write_json",
}


def test_every_command_is_either_fault_tested_or_declared_read_only() -> None:
    covered = {w.name for w in WRITERS} | set(READ_ONLY_COMMANDS)
    assert sorted(set(COMMANDS) - covered) == [], "add the new command to WRITERS (or READ_ONLY_COMMANDS)"


def _fresh(world: dict[str, Path], writer: Writer, base: Path, tag: str) -> Path:
    work = base / f"{writer.name}-{tag}"
    writer.prepare(world, work)
    return work


@pytest.mark.parametrize("writer", WRITERS, ids=[w.name for w in WRITERS])
def test_disk_full_at_every_write(writer: Writer, world: dict[str, Path], tmp_path: Path,
                                  monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    # a clean run, counting the writes
    work = _fresh(world, writer, tmp_path, "count")
    with disk_full_at(monkeypatch, None) as counter:
        assert main(writer.argv(world, work)) == 0, capsys.readouterr().err
    total = counter.writes
    assert total >= 1
    capsys.readouterr()
    for k in range(1, total + 1):
        work = _fresh(world, writer, tmp_path, f"k{k}")
        watched = work / writer.watched
        before = snapshot(watched)
        capsys.readouterr()
        with disk_full_at(monkeypatch, k) as counter:
            rc = main([*writer.argv(world, work), "--json"])
        out, err = capsys.readouterr()
        assert counter.failed, f"write {k} of {total} was not reached"
        assert rc == DiskFullError.exit_code, f"{writer.name}, ENOSPC at write {k}/{total}: exit {rc}: {err}"
        doc = json.loads(out)  # one JSON object, the error
        assert doc["type"] == "DiskFullError" and "disk full" in doc["error"], doc
        assert "Traceback" not in err
        assert leftovers(watched) == [], f"{writer.name}, ENOSPC at write {k}/{total}"
        after = snapshot(watched)
        if writer.name == "install":
            # current is the previous release with nothing else changed (the journal records the failure), or --
            # when the disk filled after the switch -- the new, verified release, and the message says so
            st = status(watched)
            assert st["healthy"] and st["integrity"]["checked"] and not st["integrity"]["problems"]
            assert list((watched / "staging").iterdir()) == [], f"install, ENOSPC at write {k}/{total}: staging left"
            assert not list((watched / "releases").glob("*/builds/.tmp-*"))
            if before["current"] == after["current"]:
                after.pop("journal.jsonl", None), before.pop("journal.jsonl", None)
                assert after == before, f"install, ENOSPC at write {k}/{total}"
            else:
                assert "is already current" in doc["error"], doc
        else:
            assert after == before, f"{writer.name}, ENOSPC at write {k}/{total} changed the previous artifacts"


# ------------------------------------------------------------------------------------- read-only install roots


def test_read_only_install_root(world: dict[str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                capsys: pytest.CaptureFixture[str]) -> None:
    root = tmp_path / "root"
    install_bundle(world["v1"], root, InstallOptions(backend="onnxruntime", public_key=world["pub"],
                                                     device=DevicePaths(use_jtop=False)))
    install_bundle(world["v2"], root, InstallOptions(backend="onnxruntime", public_key=world["pub"],
                                                     device=DevicePaths(use_jtop=False)))
    before = snapshot(root)
    device = ["--backend", "onnxruntime", "--no-jtop"]
    with read_only(monkeypatch, root):
        for argv in (["install", str(world["v1"]), "--root", str(root), "--key", str(world["pub"]), "--force", *device],
                     ["install", "--root", str(root), "--force", *device],
                     ["rollback", "--root", str(root), *device]):
            assert main(argv) == ReadOnlyError.exit_code, argv
            err = capsys.readouterr().err
            assert "read-only filesystem" in err and str(root) in err and "Traceback" not in err, err
        assert main(["status", "--root", str(root), "--json"]) == 0  # reading works on a read-only root
        assert json.loads(capsys.readouterr().out)["healthy"]
    assert snapshot(root) == before


def test_read_only_output_folders(world: dict[str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                  capsys: pytest.CaptureFixture[str]) -> None:
    ro = tmp_path / "out"  # every writer's output goes under WORK/out
    ro.mkdir()
    with read_only(monkeypatch, ro):
        for writer in WRITERS:
            rc = main(writer.argv(world, tmp_path))
            err = capsys.readouterr().err
            assert rc in (ReadOnlyError.exit_code, 2), (writer.name, rc, err)
            assert "Traceback" not in err and ("read-only" in err or "not writable" in err), (writer.name, err)
    assert list(ro.iterdir()) == []


# ------------------------------------------------------------------------------------------ sets and leftovers


def test_write_set_keeps_the_previous_set_when_the_disk_fills(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    old = {"a.bin": b"old a", "b.bin": b"old b", "summary.json": b"{}"}
    write_set(tmp_path, old, last="summary.json")
    new = {"a.bin": b"new a" * 100, "b.bin": b"new b", "summary.json": b'{"new": 1}'}
    for k in (1, 2, 3):
        with disk_full_at(monkeypatch, k), pytest.raises(DiskFullError, match="disk full"):
            write_set(tmp_path, new, last="summary.json")
        assert {p.name: p.read_bytes() for p in tmp_path.iterdir()} == old
    write_set(tmp_path, new, last="summary.json")
    assert {p.name: p.read_bytes() for p in tmp_path.iterdir()} == new


def test_orphans_of_killed_writers_are_removed_by_the_next_write(tmp_path: Path) -> None:
    dead = 2 ** 22 + 12345  # above pid_max on stock kernels: no such process
    while True:
        try:
            os.kill(dead, 0)
            dead += 1
        except ProcessLookupError:
            break
    orphan = tmp_path / f".model.onnx.{dead}.abc123.tmp"
    orphan.write_bytes(b"half")
    live = tmp_path / f".model.onnx.{os.getppid()}.abc123.tmp"  # our parent is alive: maybe writing right now
    live.write_bytes(b"in progress")
    stage = tmp_path / f".calibrate.{dead}.xyz.staging"
    stage.mkdir()
    (stage / "calibration.cache").write_bytes(b"half")
    atomic_write_bytes(tmp_path / "model.onnx", b"model")
    assert not orphan.exists() and live.exists()
    assert remove_stale(tmp_path, ".calibrate.", ".staging") == [stage]


def test_a_set_interrupted_between_renames_is_refused_on_read(world: dict[str, Path], tmp_path: Path,
                                                             monkeypatch: pytest.MonkeyPatch) -> None:
    """kill -9 between the renames of a calibration set: the new cache sits beside the old summary; readers refuse."""
    from vqz_edge.artifacts.calib_dir import check_calibration_set

    out = tmp_path / "cal"
    _previous_calibration(world, tmp_path / "w")
    shutil.copytree(tmp_path / "w" / "out", out)
    assert check_calibration_set(out) is not None
    real = os.replace
    calls: list[int] = []

    def die_on_second_rename_into_place(src: object, dst: object) -> None:
        if Path(str(dst)).parent == out:
            calls.append(1)
            if len(calls) == 2:  # one new file is in place, the rest (and the new summary) are not
                raise KeyboardInterrupt
        real(src, dst)  # type: ignore[arg-type]

    monkeypatch.setattr(os, "replace", die_on_second_rename_into_place)
    assert main(["calibrate", str(world["model"]), "--data", str(world["data"]), "--num-images", "16", "--method",
                 "max", "-o", str(out), "-q"]) == 130
    monkeypatch.setattr(os, "replace", real)
    with pytest.raises(Exception, match="mixed calibration set"):
        check_calibration_set(out)
    rc = main(["bundle", str(world["spec"]), "--target", "orin-nx-16gb", "--calibration-dir", str(out),
               "-o", str(tmp_path / "b.tar")])
    assert rc == 2 and not (tmp_path / "b.tar").exists()
    assert leftovers(out) == []


def test_failed_calibration_leaves_no_output_folder(world: dict[str, Path], tmp_path: Path) -> None:
    bad = tmp_path / "nan.npy"
    x = np.load(world["data"])
    x[3, 0, 1, 1] = np.nan
    np.save(bad, x)
    assert main(["calibrate", str(world["model"]), "--data", str(bad), "-o", str(tmp_path / "new" / "out"), "-q"]) == 2
    assert not (tmp_path / "new").exists()


def test_tiny_model_is_what_the_fixtures_say() -> None:  # guards the assumptions above (input 3x8x8)
    m = tiny_model()
    dims = [d.dim_value for d in m.graph.input[0].type.tensor_type.shape.dim[1:]]
    assert dims == [3, 8, 8] and isinstance(m, onnx.ModelProto)
