"""Hostile command-line input, for every command at once: each numeric option goes through the one validation
layer (vqz_edge/cli/options.py), and hypothesis throws arbitrary text at every one of them.

The options are discovered from the real parser, so a command added later is covered without editing this file.
"""

from __future__ import annotations

import argparse
import math
from collections.abc import Iterator
from pathlib import Path

import onnx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.bundle_fixtures import tiny_model
from vqz_edge.cli import build_parser, emit_json, main, options
from vqz_edge.errors import VerificationError

# option types that take text that is not a number (paths, names, choices)
NON_NUMERIC_TYPES = (None, str, Path)


def _leaf_parsers(parser: argparse.ArgumentParser, prefix: tuple[str, ...] = ()) -> Iterator[tuple[tuple[str, ...], argparse.ArgumentParser]]:
    subs = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    if not subs:
        yield prefix, parser
        return
    for sub in subs:
        for name, child in sub.choices.items():
            if name in sub._name_parser_map and child is sub._name_parser_map[name]:
                yield from _leaf_parsers(child, (*prefix, name))


def _filler(action: argparse.Action) -> list[str]:
    """A valid value for a required argument, so parsing reaches the option under test."""
    if action.choices:
        value = str(next(iter(action.choices)))
    elif action.type in (options.shape,):
        value = "1x3x8x8"
    elif action.type in (options.image_size,):
        value = "8x8"
    elif getattr(action.type, "__module__", None) == options.__name__:
        value = "1"
    else:
        value = "x"
    n = action.nargs
    return [value] if n in (None, 1, "+", "?") or n == argparse.ONE_OR_MORE else [value] * int(n)  # type: ignore[arg-type]


def _base_argv(prefix: tuple[str, ...], parser: argparse.ArgumentParser) -> list[str]:
    argv = list(prefix)
    for a in parser._actions:
        if a.option_strings and a.required:
            argv += [a.option_strings[0], *_filler(a)]
    for a in parser._actions:
        if not a.option_strings and not isinstance(a, argparse._SubParsersAction) and a.nargs != "?":
            argv += _filler(a)
    return argv


PARSER = build_parser()


def _numeric_options() -> list[tuple[tuple[str, ...], argparse.ArgumentParser, argparse.Action]]:
    out = []
    for prefix, parser in _leaf_parsers(PARSER):
        for a in parser._actions:
            if a.option_strings and a.type not in NON_NUMERIC_TYPES and a.nargs in (None, 1):
                out.append((prefix, parser, a))
    return out


NUMERIC = _numeric_options()
IDS = [f"{' '.join(p)} {a.option_strings[-1]}" for p, _, a in NUMERIC]


def test_every_command_is_covered_and_every_number_goes_through_the_shared_layer() -> None:
    leaves = {" ".join(p) for p, _ in _leaf_parsers(build_parser())}
    assert {"calibrate", "evaluate", "install", "run", "vlm plan", "check-memory", "sensitivity"} <= leaves
    raw = [f"{' '.join(p)} {a.option_strings[-1]} (type={getattr(a.type, '__name__', a.type)})"
           for p, parser in _leaf_parsers(build_parser()) for a in parser._actions
           if a.type in (int, float) or (a.type not in NON_NUMERIC_TYPES
                                         and getattr(a.type, "__module__", "") != options.__name__)]
    assert raw == [], "numeric options must use vqz_edge.cli.options (one validation layer): " + ", ".join(raw)
    assert len(NUMERIC) >= 50  # every count, size, ratio and shape of every command


HOSTILE = ["0", "-1", "-3", "1e400", "-1e400", "nan", "NaN", "inf", "-inf", "", " ", "1.5", "0x0", "3x-5", "x",
           "99999999999999999999", "0.0", "1e-400", "1,", "0b101", "٣", "1_000", "0x3x224x224", "-1x3x48x192"]


def _parse(prefix: tuple[str, ...], parser: argparse.ArgumentParser, action: argparse.Action, text: str) -> object:
    argv = [*_base_argv(prefix, parser), f"{action.option_strings[0]}={text}"]
    try:
        ns = PARSER.parse_args(argv)
    except SystemExit as exc:
        assert exc.code == 2, f"{argv}: exit {exc.code}"
        return SystemExit
    return getattr(ns, action.dest)


def _assert_sane(value: object, action: argparse.Action) -> None:
    if value is SystemExit:
        return
    values = value if isinstance(value, tuple) else (value,)
    for v in values:
        assert isinstance(v, (int, float)) and not isinstance(v, bool)
        assert math.isfinite(v)
    if action.type in (options.positive_int, options.shape, options.image_size):
        assert all(v >= 1 for v in values)  # type: ignore[operator]
    if action.type in (options.nonnegative_int, options.nonnegative_float, options.mib):
        assert all(v >= 0 for v in values)  # type: ignore[operator]


@pytest.mark.parametrize("text", HOSTILE)
def test_known_hostile_values_are_refused_by_argparse_never_a_traceback(text: str, capsys: pytest.CaptureFixture[str]) -> None:
    for prefix, parser, action in NUMERIC:
        _assert_sane(_parse(prefix, parser, action, text), action)
    capsys.readouterr()


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(idx=st.integers(0, len(NUMERIC) - 1),
       text=st.one_of(st.text(max_size=12), st.integers().map(str), st.floats().map(repr),
                      st.lists(st.integers(-3, 300), min_size=1, max_size=5).map(lambda v: "x".join(map(str, v)))))
def test_fuzzed_numeric_options(idx: int, text: str, capsys: pytest.CaptureFixture[str]) -> None:
    if "\x00" in text:
        return
    prefix, parser, action = NUMERIC[idx]
    _assert_sane(_parse(prefix, parser, action, text), action)
    capsys.readouterr()


@pytest.mark.parametrize(("argv", "message"), [
    (["calibrate", "m.onnx", "--num-images", "0"], "--num-images: must be a positive integer"),
    (["calibrate", "m.onnx", "--batch-size", "0"], "--batch-size: must be a positive integer"),
    (["export", "m", "-o", "x.onnx", "--input-shape", "0x3x224x224"], "must have positive dimensions"),
    (["export", "m", "-o", "x.onnx", "--input-shape=-1x3x48x192"], "must have positive dimensions"),
    (["data", "--split", "calibration", "--count", "1", "-o", "d.npy", "--size", "0"], "--size: must be a positive"),
    (["data", "--split", "calibration", "--count", "1", "-o", "d.npy", "--size", "-10"], "--size: must be a positive"),
    (["evaluate", "a", "b", "--data", "demo", "--batch-size", "0"], "--batch-size: must be a positive"),
    (["evaluate", "a", "b", "--data", "demo", "--num-images", "-3"], "--num-images: must be a positive"),
    (["run", "m.onnx", "--input", "x.npy", "--threads", "-2"], "--threads: must be a non-negative"),
    (["vlm", "plan", "x", "--image-size", "0x-5"], "must have positive dimensions"),
    (["check-memory", "m.onnx", "--os-reserve-mib", "1e400"], "finite"),
    (["sensitivity", "m", "--calibration", "c", "--data", "d", "--goal", "nan"], "finite"),
])
def test_issue_cases_are_usage_errors(argv: list[str], message: str, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as info:
        build_parser().parse_args(argv)
    assert info.value.code == 2
    assert message in capsys.readouterr().err


def test_emit_json_refuses_nan_instead_of_printing_invalid_json(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(VerificationError, match=r"\$\.outputs\[0\]\.mean_cosine = nan"):
        emit_json({"outputs": [{"mean_cosine": float("nan")}]})
    assert capsys.readouterr().out == ""


# ------------------------------------------------------------------------ files of the wrong kind or encoding


BINARY = b"\x00\xff\xfe\x80 not text"


@pytest.mark.parametrize(("argv", "says"), [
    (["data", "--images", "{file}", "--split", "calibration", "--count", "2", "-o", "{tmp}/d.npy"],
     "data folder {file} is a regular file, not a directory"),
    (["run", "{model}", "--input", "{dir}", "--no-memory-check"], "image {dir} is a directory, not a file"),
    (["run", "{model}", "--input", "{empty}", "--no-memory-check"], "is empty (0 bytes)"),
    (["evaluate", "{model}", "{model}", "--data", "{dir}.npy"], "does not exist"),
    (["targets", "--targets-file", "{binary}"], "targets file {binary} is not UTF-8 text"),
    (["check-memory", "{model}", "--resident", "x=1e400GiB"], "cannot read size '1e400GiB'"),
    (["targets", "--targets-file", "{huge_ram}"], "ram_mib = inf is not a size in MiB"),
    (["vlm", "plan", "llava-1.5-7b", "--target", "orin-nx-16gb", "--vision", "int8", "--fidelity-report", "{binary}"],
     "fidelity report {binary} is not JSON text"),
    (["calibrate", "{dir}", "--data", "demo"], "ONNX file {dir} is a directory, not a file"),
    (["vlm", "plan", "{binary}", "--target", "orin-nx-16gb"], "model config {binary} is not JSON text"),
    (["check-memory", "{model}", "--targets-file", "{dir}"], "is a directory, not a file"),
])
def test_wrong_kind_or_encoding_is_named(argv: list[str], says: str, tmp_path: Path,
                                         capsys: pytest.CaptureFixture[str]) -> None:
    onnx_path = tmp_path / "m.onnx"
    onnx.save(tiny_model(), onnx_path)
    names = {"file": tmp_path / "afile", "dir": tmp_path / "adir", "tmp": tmp_path, "model": onnx_path,
             "binary": tmp_path / "bin.dat", "empty": tmp_path / "EMPTY.npy", "huge_ram": tmp_path / "t.toml"}
    names["file"].write_text("x")
    names["dir"].mkdir()
    names["binary"].write_bytes(BINARY)
    names["empty"].write_bytes(b"")
    names["huge_ram"].write_text('[[target]]\nname = "x"\nextends = "orin-nx-16gb"\nram_mib = 1e400\n')
    rc = main([a.format(**names) for a in argv])
    err = capsys.readouterr().err
    assert rc == 2, err
    assert says.format(**names) in err and "Traceback" not in err


def test_binary_quantization_config_names_the_file(tmp_path: Path) -> None:
    from vqz_edge.errors import InputError
    from vqz_edge.vlm.quantconfig import read_quantization_config

    (tmp_path / "q.json").write_bytes(BINARY)
    with pytest.raises(InputError, match=r"quantization config .*q\.json is not JSON text"):
        read_quantization_config(tmp_path / "q.json")
