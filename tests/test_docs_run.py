"""Docs are code: every fenced block in README.md and docs/*.md marked ``runnable`` is executed here.

The marker is the word ``runnable`` after the block's language (GitHub still highlights the language):

* ```` ```bash runnable ```` -- a shell script, run with ``bash -euo pipefail``;
* ```` ```console runnable ```` -- a transcript: every ``$ `` line (with ``\\`` continuations) is run; a command
  ending in ``(exit N)`` must exit N, every other one 0; the first output line the transcript shows (unless it is
  ``...``) must appear in what the command printed;
* ```` ```python runnable ```` -- run with this interpreter.

A document's blocks run in order in one fresh directory, with this environment's ``bin`` first on PATH (so
``vqz-edge`` is the one under test). A marked block with nothing to run fails, and so does a docs tree with no marked
block at all. Mark only blocks that run on a CPU in seconds: the whole file must stay well under a minute.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from tests.conftest import ROOT

DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
FENCE = re.compile(r"^\s*```(.*)$")
LANGUAGES = ("bash", "console", "python")
EXIT = re.compile(r"\s+\(exit (\d+)\)\s*$")


@dataclass
class Command:
    text: str
    exit_code: int = 0
    first_output: str | None = None


@dataclass
class Block:
    doc: Path
    line: int
    language: str
    body: list[str] = field(default_factory=list)

    @property
    def where(self) -> str:
        return f"{self.doc.relative_to(ROOT)}:{self.line}"

    def commands(self) -> list[Command]:
        """What the block runs; [] when it has nothing to run."""
        if self.language == "console":
            out: list[Command] = []
            lines = iter(self.body)
            for line in lines:
                if line.startswith("$ "):
                    text = line[2:]
                    while text.endswith("\\"):
                        text = text[:-1] + " " + next(lines, "").strip()
                    m = EXIT.search(text)
                    out.append(Command(EXIT.sub("", text), int(m.group(1)) if m else 0))
                elif out and out[-1].first_output is None and line.strip():
                    out[-1].first_output = "" if line.strip() == "..." else line.strip()
            return out
        code = [s for s in (x.strip() for x in self.body) if s and not s.startswith("#")]
        return [Command("\n".join(self.body))] if code else []


def marked_blocks(doc: Path, text: str | None = None) -> list[Block]:
    """The blocks of ``doc`` marked runnable (``text``: the document, default read from ``doc``)."""
    blocks: list[Block] = []
    current: Block | None = None
    inside = False
    for n, line in enumerate((text if text is not None else doc.read_text(encoding="utf-8")).splitlines(), 1):
        m = FENCE.match(line)
        if m:
            if not inside:
                words = m.group(1).split()
                if "runnable" in words:
                    current = Block(doc, n, words[0] if words[0] != "runnable" else "")
                    blocks.append(current)
            else:
                current = None
            inside = not inside
        elif current is not None:
            current.body.append(line)
    return blocks


ALL = [b for doc in DOCS for b in marked_blocks(doc)]


def test_marked_blocks_are_found_and_each_has_something_to_run() -> None:
    assert len(ALL) >= 8, "the docs have runnable blocks (a run that finds none would pass)"
    for b in ALL:
        assert b.language in LANGUAGES, f"{b.where}: a runnable block needs a language among {LANGUAGES}"
        assert b.commands(), f"{b.where}: marked runnable but has nothing to run"


def test_the_parser_flags_an_empty_marked_block() -> None:
    doc = ROOT / "README.md"
    text = "x\n```bash runnable\n# only a comment\n\n```\n```console runnable\nno prompt here\n```\n```bash\nls\n```\n"
    blocks = marked_blocks(doc, text)
    assert [(b.line, b.language, b.commands()) for b in blocks] == [(2, "bash", []), (6, "console", [])]
    console = marked_blocks(doc, "```console runnable\n$ vqz-edge a \\\n  --b   (exit 7)\n  ...\n$ true\nok\n```\n")
    assert [(c.text, c.exit_code, c.first_output) for c in console[0].commands()] == [
        ("vqz-edge a  --b", 7, ""), ("true", 0, "ok")]


def _run(block: Block, cmd: Command, cwd: Path) -> None:
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"}
    if block.language == "python":
        argv = [sys.executable, "-c", cmd.text]
    else:
        argv = ["bash", "-euo", "pipefail", "-c", cmd.text]
    res = subprocess.run(argv, cwd=cwd, env=env, capture_output=True, text=True, timeout=300)
    shown = f"{block.where}: {cmd.text!r} exited {res.returncode}\n{res.stdout[-2000:]}\n{res.stderr[-2000:]}"
    assert res.returncode == cmd.exit_code, shown
    if cmd.first_output:
        printed = {line.strip() for line in (res.stdout + res.stderr).splitlines()}
        assert cmd.first_output in printed, f"{block.where}: the shown output {cmd.first_output!r} is not printed\n{shown}"


@pytest.mark.parametrize("doc", sorted({b.doc for b in ALL}), ids=lambda d: str(d.relative_to(ROOT)))
def test_runnable_blocks_run(doc: Path, tmp_path: Path) -> None:
    (tmp_path / ".venv").symlink_to(Path(sys.executable).parent.parent)  # `.venv/bin/vqz-edge` works too
    for block in marked_blocks(doc):
        for cmd in block.commands():
            _run(block, cmd, tmp_path)
