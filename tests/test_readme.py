"""The README's commands stay true: the first two are what CI runs, and every vqz-edge command it shows exists."""

from __future__ import annotations

import re
import shlex
from pathlib import Path

from tests.conftest import ROOT
from vqz_edge.cli import build_parser


def _code_lines() -> list[str]:
    inside, out = False, []
    for line in (ROOT / "README.md").read_text(encoding="utf-8").splitlines():
        if line.lstrip().startswith("```"):
            inside = not inside
            continue
        s = line.strip()
        if inside and s and not s.startswith("#"):
            out.append(s)
    return out


def test_first_two_commands_are_setup_demo_and_tests() -> None:
    first, second = _code_lines()[:2]
    assert first == "bash tools/setup.sh && .venv/bin/vqz-edge demo"
    assert second == ".venv/bin/python -m pytest -q"
    assert (ROOT / "tools" / "setup.sh").is_file()
    ci = (ROOT / ".ci" / "run").read_text()
    assert "bash -c \"${CMDS[0]}\"" in ci and "bash -c \"${CMDS[1]}\"" in ci, "CI must run the README's commands"


def test_every_shown_subcommand_exists() -> None:
    parser = build_parser()
    sub = next(a for a in parser._actions if a.dest == "command")  # noqa: SLF001
    known = set(sub.choices)  # type: ignore[arg-type]
    shown = set()
    for line in _code_lines():
        m = re.match(r"^(?:\$ )?(?:\.venv/bin/)?vqz-edge ([a-z][a-z-]*)(?:\s|$)", line)
        if m and not m.group(1).startswith("-"):
            shown.add(m.group(1))
    assert shown, "the README shows vqz-edge commands"
    assert shown <= known, f"README shows unknown commands: {sorted(shown - known)}"


def test_shown_export_command_parses() -> None:
    parser = build_parser()
    checked = 0
    for line in _code_lines():
        if line.startswith("$ vqz-edge export ") or line.startswith("vqz-edge export "):
            args = shlex.split(line.removeprefix("$ "))[1:]
            ns = parser.parse_args(args)
            assert ns.command == "export" and Path(ns.output).suffix == ".onnx"
            checked += 1
    assert checked >= 1, "the README shows an export command (a check that finds none would pass)"


def test_shown_calibrate_and_sensitivity_commands_parse() -> None:
    """The README's calibrate / sensitivity command lines (continuations joined) are valid for the real parser."""
    parser = build_parser()
    joined: list[str] = []
    for line in _code_lines():
        if joined and joined[-1].endswith("\\"):
            joined[-1] = joined[-1][:-1] + " " + line
        else:
            joined.append(line)
    checked = 0
    for line in joined:
        m = re.match(r"^(?:\$ )?(?:\.venv/bin/)?vqz-edge (calibrate|sensitivity) ", line)
        if m:
            args = shlex.split(line.removeprefix("$ "))[1:]
            ns = parser.parse_args(args)
            assert ns.command == m.group(1)
            checked += 1
    assert checked >= 2
