"""One word per meaning on the command line (issue 19): the sensitivity goal is --goal, --target always names a
Jetson module, every --backend takes the same names, and the choices come from vqz_edge.vocab. Old spellings work
for one release, with a deprecation message."""

from __future__ import annotations

import argparse

import pytest

from vqz_edge import vocab
from vqz_edge.cli import build_parser


def _leaves(parser: argparse.ArgumentParser) -> list[tuple[str, argparse.ArgumentParser]]:
    out = []
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                kids = _leaves(sub)
                out += [(f"{name} {k}".strip(), p) for k, p in kids] if kids else [(name, sub)]
    return out


LEAVES = _leaves(build_parser())


def _options(flag: str) -> list[tuple[str, argparse.Action]]:
    return [(cmd, a) for cmd, p in LEAVES for a in p._actions if flag in a.option_strings]


def test_the_options_are_found() -> None:
    assert len(LEAVES) > 20 and len(_options("--backend")) >= 5 and len(_options("--target")) >= 5


def test_every_backend_option_takes_the_same_names() -> None:
    for cmd, a in _options("--backend"):
        assert tuple(a.choices or ()) == vocab.BACKENDS, cmd


@pytest.mark.parametrize(("flag", "words"), [("--method", vocab.CALIBRATION_METHODS), ("--preset", vocab.PRESETS),
                                             ("--mode", vocab.CLI_BUILD_MODES)])
def test_choices_come_from_the_vocabulary(flag: str, words: tuple[str, ...]) -> None:
    found = _options(flag)
    assert found
    for cmd, a in found:
        assert tuple(a.choices or ()) == words, cmd


def test_target_always_names_a_jetson_module() -> None:
    for cmd, a in _options("--target"):
        if a.help == argparse.SUPPRESS:  # sensitivity's old spelling of --goal
            assert cmd == "sensitivity" and a.dest == "goal"
            continue
        assert a.type is None or a.type is str, f"{cmd} --target is not a module name"


def _parse(argv: list[str]) -> argparse.Namespace:
    return build_parser(only=[argv[0]]).parse_args(argv)


def test_sensitivity_goal_and_its_old_spelling(capsys: pytest.CaptureFixture[str]) -> None:
    base = ["sensitivity", "m.onnx", "--calibration", "c", "--data", "d"]
    assert _parse([*base, "--goal", "0.995"]).goal == 0.995
    assert "deprecated" not in capsys.readouterr().err
    assert _parse([*base, "--target", "0.99"]).goal == 0.99
    assert "--target is deprecated, use --goal" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        _parse([*base, "--target", "nan"])  # the old spelling is validated like the new one


@pytest.mark.parametrize(("argv", "old", "new"), [
    (["run", "m.onnx", "--input", "x.png"], "ort", "onnxruntime"),
    (["bench", "m.onnx"], "trt", "tensorrt"),
    (["install", "b.tar", "--root", "r"], "ort", "onnxruntime"),
])
def test_old_backend_names_still_work(argv: list[str], old: str, new: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert _parse([*argv, "--backend", new]).backend == new
    assert "deprecated" not in capsys.readouterr().err
    assert _parse([*argv, "--backend", old]).backend == new
    assert f"--backend {old} is deprecated, use --backend {new}" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        _parse([*argv, "--backend", "cuda"])
