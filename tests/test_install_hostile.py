"""Attacks and damage on the device side: a bundle file swapped while it is being installed, a release damaged
after install (status must see it, installing the same bundle must repair it), wrong kinds of paths."""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tests.bundle_fixtures import make_bundles, opts
from vqz_edge.bundle import (
    BundleIntegrityError,
    install_bundle,
    load_public_key,
    refresh,
    rollback,
    status,
    verify_bundle,
)
from vqz_edge.bundle import reader as bundle_reader
from vqz_edge.bundle.manifest import parse_manifest
from vqz_edge.cli import main
from vqz_edge.fsutil import sha256_file


@pytest.fixture(scope="module")
def bundles(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    return make_bundles(tmp_path_factory.mktemp("hostile_bundles"))


def _kept_and_served_match_manifest(root: Path) -> dict[str, Any]:
    """The installed payload hashes to the manifest that was verified: every kept file and the served model."""
    info = json.loads((root / "current" / "release.json").read_text())
    kept = root / info["bundle"]
    manifest = parse_manifest((kept / "MANIFEST.json").read_bytes())
    for name, entry in manifest.files.items():
        assert sha256_file(kept / name) == entry.sha256, name
    served_from = manifest.files[info["build"]["source"]]
    assert sha256_file(root / "current" / info["served"]) == served_from.sha256
    return info


def _after_first_scan(monkeypatch: pytest.MonkeyPatch, action: Callable[[], None]) -> list[int]:
    """Run ``action`` once, right after the installer's first complete read of the bundle."""
    real = bundle_reader.scan_tar
    calls: list[int] = []

    def scan(fileobj: Any, handle: Any, **kw: Any) -> Any:
        result = real(fileobj, handle, **kw)
        calls.append(1)
        if len(calls) == 1:
            action()
        return result

    monkeypatch.setattr(bundle_reader, "scan_tar", scan)
    return calls


def test_bundle_renamed_over_between_verify_and_extract_installs_the_verified_payload(
        bundles: dict[str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Issue 16 #1: the attacker renames an older signed bundle over the path after it was verified."""
    genuine, older = tmp_path / "incoming.tar", tmp_path / "older.tar"
    shutil.copy(bundles["v2"], genuine)
    shutil.copy(bundles["v1"], older)
    _after_first_scan(monkeypatch, lambda: os.replace(older, genuine))
    root = tmp_path / "root"
    res = install_bundle(genuine, root, opts(bundles))
    assert res.action == "installed" and res.bundle_version == 2
    info = _kept_and_served_match_manifest(root)
    assert info["bundle_id"] == res.bundle_id
    st = status(root)
    assert st["healthy"] and st["integrity"]["checked"] and not st["integrity"]["problems"]


def test_bundle_rewritten_in_place_between_verify_and_extract_is_refused(
        bundles: dict[str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The same attack through the same inode (the open file sees it): the second pass must notice."""
    genuine = tmp_path / "incoming.tar"
    shutil.copy(bundles["v2"], genuine)
    other = bundles["v1"].read_bytes()

    def rewrite() -> None:
        with open(genuine, "r+b") as fh:
            fh.truncate(0)
            fh.write(other)

    _after_first_scan(monkeypatch, rewrite)
    root = tmp_path / "root"
    with pytest.raises(BundleIntegrityError, match="changed while it was being installed"):
        install_bundle(genuine, root, opts(bundles))
    assert not (root / "current").exists()
    assert list((root / "staging").iterdir()) == [] and list((root / "releases").iterdir()) == []


def test_status_detects_a_damaged_served_model_and_reinstall_repairs_it(
        bundles: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Issue 16 #2: truncate the served model; status says healthy and re-installing was a no-op."""
    root = tmp_path / "root"
    res = install_bundle(bundles["v1"], root, opts(bundles))
    served = root / "current" / "model.onnx"
    with open(served, "r+b") as fh:
        fh.truncate(100)
    st = status(root)
    assert not st["healthy"] and any("model.onnx" in p for p in st["integrity"]["problems"])
    assert main(["status", "--root", str(root)]) == 1
    assert "DAMAGED" in capsys.readouterr().out
    assert main(["status", "--root", str(root), "--no-verify", "--json"]) == 0  # not hashed: and it says so
    assert json.loads(capsys.readouterr().out)["integrity"]["checked"] is False
    again = install_bundle(bundles["v1"], root, opts(bundles))
    assert again.action == "installed" and any("damaged" in n for n in again.notes)
    assert again.bundle_id == res.bundle_id
    _kept_and_served_match_manifest(root)
    assert status(root)["healthy"]
    assert install_bundle(bundles["v1"], root, opts(bundles)).action == "noop"  # intact now: nothing to do


def test_status_detects_a_damaged_kept_bundle_file_and_reinstall_repairs_it(bundles: dict[str, Path], tmp_path: Path) -> None:
    root = tmp_path / "root"
    res = install_bundle(bundles["v1"], root, opts(bundles))
    ref = root / "releases" / res.bundle_id / "bundle" / "reference" / "output_0.npy"
    data = bytearray(ref.read_bytes())
    data[-1] ^= 1
    ref.write_bytes(bytes(data))
    st = status(root)
    assert not st["healthy"] and any("output_0.npy" in p for p in st["integrity"]["problems"])
    assert install_bundle(bundles["v1"], root, opts(bundles)).action == "installed"
    _kept_and_served_match_manifest(root)
    assert status(root)["healthy"]


def test_refresh_rebuilds_a_damaged_build_from_the_kept_bundle(bundles: dict[str, Path], tmp_path: Path) -> None:
    root = tmp_path / "root"
    install_bundle(bundles["v1"], root, opts(bundles))
    (root / "current" / "model.onnx").write_bytes(b"not a model")
    res = refresh(root, opts(bundles))
    assert res.action == "rebuilt" and any("damaged" in n for n in res.notes)
    _kept_and_served_match_manifest(root)


def test_rollback_does_not_switch_to_a_damaged_previous_build(bundles: dict[str, Path], tmp_path: Path) -> None:
    root = tmp_path / "root"
    v1 = install_bundle(bundles["v1"], root, opts(bundles))
    install_bundle(bundles["v2"], root, opts(bundles))
    old = root / "releases" / v1.bundle_id / "builds" / v1.device_key / "model.onnx"
    old.write_bytes(old.read_bytes()[:-7])
    res = rollback(root, opts(bundles))
    assert res.bundle_id == v1.bundle_id and any("damaged" in n for n in res.notes)
    _kept_and_served_match_manifest(root)


@pytest.mark.parametrize(("argv", "says"), [
    (["install", "{dir}", "--root", "{tmp}/r", "--allow-unsigned"], "is a directory, not a file"),
    (["status", "--root", "{file}"], "is a regular file, not a directory"),
    (["rollback", "--root", "{file}"], "is a regular file, not a directory"),
    (["install", "{bundle}", "--root", "{file}", "--key", "{pub}"], "is a regular file, not a directory"),
    (["bundle", "verify", "{dir}", "--allow-unsigned"], "is a directory, not a file"),
])
def test_wrong_kind_of_path_says_what_it_is(argv: list[str], says: str, bundles: dict[str, Path], tmp_path: Path,
                                            capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "adir").mkdir()
    (tmp_path / "afile").write_text("x")
    names = {"dir": str(tmp_path / "adir"), "file": str(tmp_path / "afile"), "tmp": str(tmp_path),
             "bundle": str(bundles["v1"]), "pub": str(bundles["pub"])}
    rc = main([a.format(**names) for a in argv] + (["--backend", "onnxruntime"] if argv[0] in ("install", "rollback") else []))
    assert rc == 2
    assert says in capsys.readouterr().err


# ----------------------------------------------------------------------------------------- crafted tar headers

_FIELDS = {  # USTAR header fields: (offset, length)
    "name": (0, 100), "mode": (100, 8), "uid": (108, 8), "gid": (116, 8), "size": (124, 12), "mtime": (136, 12),
    "typeflag": (156, 1), "linkname": (157, 100), "magic": (257, 6), "version": (263, 2), "uname": (265, 32),
    "gname": (297, 32), "devmajor": (329, 8), "devminor": (337, 8), "prefix": (345, 155),
}


def _headers(data: bytes) -> list[int]:
    """Offsets of the tar headers of a canonical bundle."""
    out, pos = [], 0
    while data[pos:pos + 512] != b"\0" * 512:
        out.append(pos)
        size = int(data[pos + 124:pos + 136].rstrip(b"\0 ") or b"0", 8)
        pos += 512 + -(-size // 512) * 512
    return out


def _fix_checksum(head: bytearray) -> None:
    head[148:156] = b" " * 8
    head[148:156] = b"%06o\0 " % sum(head)


@settings(max_examples=120, deadline=None)
@given(which=st.integers(0, 50), field=st.sampled_from(sorted(_FIELDS)),
       value=st.one_of(st.binary(min_size=1, max_size=16),
                       st.text("01234567 \0", min_size=1, max_size=12).map(str.encode),
                       st.sampled_from([b"777777777777", b"77777777777\0", b"0" * 12, b"-1\0", b"../../etc/passwd\0",
                                        b"/abs\0", b"2", b"1", b"5", b"ustar ", b"\xff" * 8])),
       fix_checksum=st.booleans())
def test_crafted_tar_headers_are_refused_as_integrity_errors(bundles: dict[str, Path], which: int, field: str,
                                                             value: bytes, fix_checksum: bool) -> None:
    """Hypothesis over the header fields of a real signed bundle: any change is refused with exit 5, never a
    ValueError/TypeError trace, and nothing is accepted that differs from what was signed."""
    data = bundles["v1"].read_bytes()
    heads = _headers(data)
    at = heads[which % len(heads)]
    off, length = _FIELDS[field]
    head = bytearray(data[at:at + 512])
    head[off:off + min(length, len(value))] = value[:length]
    if fix_checksum:
        _fix_checksum(head)
    crafted = data[:at] + bytes(head) + data[at + 512:]
    if crafted == data:
        return
    with pytest.raises(BundleIntegrityError) as info:  # UnsafeBundleError is a BundleIntegrityError
        verify_bundle(crafted, load_public_key(bundles["pub"]))
    assert info.value.exit_code == 5


def test_size_field_of_all_sevens_is_an_integrity_error(bundles: dict[str, Path], tmp_path: Path,
                                                       capsys: pytest.CaptureFixture[str]) -> None:
    """Issue 16 #11: refused before, but by a ValueError trace with exit 1."""
    data = bytearray(bundles["v1"].read_bytes())
    at = _headers(bytes(data))[-1]
    data[at + 124:at + 136] = b"777777777777"
    head = bytearray(data[at:at + 512])
    _fix_checksum(head)
    data[at:at + 512] = head
    bad = tmp_path / "b.tar"
    bad.write_bytes(bytes(data))
    assert main(["bundle", "verify", str(bad), "--key", str(bundles["pub"])]) == 5
    assert "implausible size" in capsys.readouterr().err


def test_status_hashes_the_built_engine_and_reinstall_rebuilds_it(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """TensorRT backend (the 10.3 double): the engine built on the device is hash-checked by status too."""
    from tests.bundle_fixtures import NV_TEGRA_61, fake_jetson, make_calibration_dir
    from tests.doubles import install_doubles
    from vqz_edge.bundle import BundleOptions, InstallOptions, create_bundle, generate_keypair

    keys = generate_keypair(tmp_path / "fleet")
    spec, cal = make_calibration_dir(tmp_path / "ws")
    bundle = tmp_path / "b.tar"
    create_bundle(spec, bundle, BundleOptions("orin-nx-16gb", calibration_dir=cal, sign_key=keys.private_path))
    install_doubles(monkeypatch, "10.3")
    o = InstallOptions(backend="tensorrt", public_key=keys.public_path, device=fake_jetson(tmp_path / "dev", NV_TEGRA_61))
    root = tmp_path / "root"
    install_bundle(bundle, root, o)
    info = json.loads((root / "current" / "release.json").read_text())
    assert {"model.engine", "manifest.json"} <= set(info["files"])
    assert status(root)["healthy"]
    engine = root / "current" / "model.engine"
    engine.write_bytes(engine.read_bytes()[:-1] + b"\0")
    st = status(root)
    assert not st["healthy"] and any("model.engine" in p for p in st["integrity"]["problems"])
    assert install_bundle(bundle, root, o).action == "installed"
    assert status(root)["healthy"]
