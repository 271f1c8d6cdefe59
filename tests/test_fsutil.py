"""fsutil: atomic writes give files the mode a plain open() would (0o666 minus the umask), folders 0o777 minus the
umask, private keys 0o600 -- so a container's user can read what the host wrote and the other way round
(docker/README.md, the x86 image job in .ci/docker-x86)."""

from __future__ import annotations

import contextlib
import os
import stat
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.bundle_fixtures import make_bundles, opts
from vqz_edge.bundle import install_bundle
from vqz_edge.errors import InputError
from vqz_edge.fsutil import atomic_path, atomic_write_bytes, atomic_write_json

UMASKS = [0o022, 0o002, 0o027, 0o077]


@contextlib.contextmanager
def umask(value: int) -> Iterator[None]:
    old = os.umask(value)
    try:
        yield
    finally:
        os.umask(old)


def _mode(p: Path) -> int:
    return stat.S_IMODE(p.lstat().st_mode)


@pytest.mark.parametrize("mask", UMASKS, ids=oct)
def test_atomic_writes_honour_the_umask_like_open(mask: int, tmp_path: Path) -> None:
    with umask(mask):
        atomic_write_bytes(tmp_path / "a.bin", b"x")
        atomic_write_json(tmp_path / "a.json", {"k": 1})
        (tmp_path / "plain.bin").write_bytes(b"x")  # what open() gives, for comparison
        (tmp_path / "sub").mkdir()
    assert _mode(tmp_path / "a.bin") == _mode(tmp_path / "a.json") == _mode(tmp_path / "plain.bin") == 0o666 & ~mask
    assert _mode(tmp_path / "sub") == 0o777 & ~mask


def test_replacing_a_private_file_gives_the_umask_mode(tmp_path: Path) -> None:
    """The mode is the new file's, not the replaced one's (before the fix, mkstemp's 0o600 always won)."""
    target = tmp_path / "model.onnx"
    target.write_bytes(b"old")
    target.chmod(0o600)
    with umask(0o022):
        atomic_write_bytes(target, b"new")
    assert target.read_bytes() == b"new" and _mode(target) == 0o644


def test_secret_mode_is_owner_only_from_creation(tmp_path: Path) -> None:
    with umask(0), atomic_path(tmp_path / "k.key", mode=0o600) as tmp:
        assert _mode(tmp) == 0o600  # already while empty, before any secret byte is written
        tmp.write_bytes(b"secret")
    assert _mode(tmp_path / "k.key") == 0o600 and not list(tmp_path.glob(".k.key.*"))


def test_failed_write_leaves_nothing_and_unwritable_dir_is_an_input_error(tmp_path: Path) -> None:
    with pytest.raises(RuntimeError), atomic_path(tmp_path / "x.bin") as tmp:
        tmp.write_bytes(b"half")
        raise RuntimeError("boom")
    assert list(tmp_path.iterdir()) == []
    with pytest.raises(InputError, match="does not exist"):
        atomic_write_bytes(tmp_path / "missing" / "x.bin", b"x")


@pytest.mark.parametrize("mask", [0o022, 0o027], ids=oct)
def test_keys_bundle_and_install_tree_follow_the_umask(mask: int, tmp_path: Path) -> None:
    """Everything keys/bundle/install write: files 0o666 & ~umask, folders 0o777 & ~umask, the private key 0o600
    (with umask 022 a host user other than the container's can read every output but the key)."""
    with umask(mask):
        (tmp_path / "b").mkdir()
        bundles = make_bundles(tmp_path / "b")
        root = tmp_path / "root"
        install_bundle(bundles["v1"], root, opts(bundles))
    assert _mode(bundles["key"]) == 0o600
    assert _mode(bundles["pub"]) == _mode(bundles["v1"]) == 0o666 & ~mask
    files = dirs = 0
    for dirpath, dirnames, filenames in os.walk(root):
        for d in dirnames:
            p = Path(dirpath, d)
            if not p.is_symlink():
                assert _mode(p) == 0o777 & ~mask, p
                dirs += 1
        for f in filenames:
            p = Path(dirpath, f)
            if not p.is_symlink():
                assert _mode(p) == 0o666 & ~mask, p
                files += 1
    assert dirs >= 4 and files >= 8  # releases/<id>/bundle/..., builds/<key>/model.onnx, state.json, journal
    assert (root / "current" / "model.onnx").is_file()
