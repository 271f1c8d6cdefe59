"""The package layout (issue 19): no import cycle between vqz_edge packages, no import placed inside a function
between them, and the CLI's one dispatch table.

A "package" is a direct child of vqz_edge (a sub-package such as ``calib`` or a module such as ``errors``).
Heavy third-party libraries (torch, numba, onnxruntime, TensorRT) may still be imported inside functions; an
import of vqz_edge code may not: a command's modules are loaded through ``vqz_edge.cli.COMMANDS`` only.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

import vqz_edge
from vqz_edge.cli import COMMANDS, build_parser, command_module

ROOT = Path(vqz_edge.__file__).resolve().parent


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports(path: Path) -> list[tuple[str, int, bool]]:
    """(imported vqz_edge module, line, inside a function) for every vqz_edge import in ``path``; imports under
    ``if TYPE_CHECKING:`` are left out (they never run)."""
    mod = _module_name(path)
    is_pkg = path.name == "__init__.py"
    tree = ast.parse(path.read_text(encoding="utf-8"))
    found: list[tuple[str, int, bool]] = []

    def visit(node: ast.AST, in_function: bool) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.If) and "TYPE_CHECKING" in ast.unparse(child.test):
                continue
            if isinstance(child, ast.ImportFrom):
                if child.level:
                    base = mod.split(".") if is_pkg else mod.split(".")[:-1]
                    base = base[: len(base) - (child.level - 1)]
                    target = ".".join(base + ([child.module] if child.module else []))
                else:
                    target = child.module or ""
                names = [f"{target}.{a.name}" for a in child.names] if child.module is None else [target]
                found.extend((n, child.lineno, in_function) for n in names if n.split(".")[0] == "vqz_edge")
            elif isinstance(child, ast.Import):
                found.extend((a.name, child.lineno, in_function) for a in child.names if a.name.split(".")[0] == "vqz_edge")
            visit(child, in_function or isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)))

    visit(tree, False)
    return found


CHILDREN = {p.stem for p in ROOT.glob("*.py")} | {p.name for p in ROOT.iterdir() if (p / "__init__.py").is_file()}


def _package(module: str) -> str:
    """The direct child of vqz_edge that ``module`` belongs to (``vqz_edge`` itself for a name such as
    ``vqz_edge.__version__``)."""
    parts = module.split(".")
    return f"vqz_edge.{parts[1]}" if len(parts) > 1 and parts[1] in CHILDREN else "vqz_edge"


SOURCES = sorted(ROOT.rglob("*.py"))


def test_the_scan_sees_the_package() -> None:
    # a scan that finds nothing would pass everything below
    assert len(SOURCES) > 80
    edges = {(_package(_module_name(p)), _package(t)) for p in SOURCES for t, _, _ in _imports(p)}
    assert ("vqz_edge.bundle", "vqz_edge.trt") in edges and ("vqz_edge.runtime", "vqz_edge.memory") in edges


# The one vqz_edge import left inside a function: the numba kernel, compiled on first use, so that the calib
# package (and everything that imports it) loads without numba.
LAZY = {("vqz_edge.calib.histogram", "vqz_edge.calib._kernels")}


def test_no_function_level_import_of_vqz_edge_code() -> None:
    # between packages (the rule) and inside a package too: no import placed in a function to dodge a loop
    bad = [f"{p.relative_to(ROOT.parent)}:{line} imports {target} inside a function"
           for p in SOURCES for target, line, in_function in _imports(p)
           if in_function and (_module_name(p), target) not in LAZY]
    assert bad == [], "\n".join(bad)
    found = {(_module_name(p), t) for p in SOURCES for t, _, f in _imports(p) if f}
    assert found == LAZY  # the scan sees function-level imports (and the allowance is not stale)


def test_no_import_cycle_between_packages() -> None:
    graph: dict[str, set[str]] = {}
    for p in SOURCES:
        a = _package(_module_name(p))
        for target, _, _ in _imports(p):
            b = _package(target)
            if b != a and b != "vqz_edge":
                graph.setdefault(a, set()).add(b)
    cycles = []

    def walk(node: str, path: list[str]) -> None:
        for nxt in sorted(graph.get(node, ())):
            if nxt in path:
                cycles.append(" -> ".join([*path[path.index(nxt):], nxt]))
            elif len(path) < len(graph) + 1:
                walk(nxt, [*path, nxt])

    for start in sorted(graph):
        walk(start, [start])
    assert cycles == [], "import cycles between packages:\n" + "\n".join(sorted(set(cycles)))


# The layout, bottom up: a package imports only packages of lower layers (down the pipeline), never one of its own
# layer or above. A new package must be placed here.
LAYERS = {
    # the core: errors and logging, then the vocabulary, TensorRT versions, file helpers, progress
    "vqz_edge": 0, "errors": 0, "log": 0,
    "vocab": 1, "versions": 1, "fsutil": 1, "progress": 1,
    # on-disk artifacts (cache, calibration directory, plan, engine manifest), ONNX I/O, the target catalog
    "artifacts": 2, "onnx_io": 2, "ort": 2, "targets": 2, "demo": 2,
    # data: photos, preprocessing and the data sources (folder, .npy, demo) every stage reads
    "data": 3,
    # the build spec; the device facts (one module) and the 4-bit kernel check
    "spec": 4, "device": 4, "nf4check": 4,
    # the stages, in pipeline order
    "export": 5, "policy": 6, "calib": 7, "sensitivity": 8, "report": 9, "trt": 10, "memory": 10, "runtime": 11,
    "vlm": 12, "bundle": 12, "fleet": 13,
    # the command line
    "cli": 14, "__main__": 15,
}


def test_every_import_points_down_the_pipeline() -> None:
    packages = {_package(_module_name(p)).split(".")[-1] for p in SOURCES}
    assert packages <= set(LAYERS), f"place the new package(s) in LAYERS: {sorted(packages - set(LAYERS))}"
    up = set()
    for p in SOURCES:
        a = _package(_module_name(p)).split(".")[-1]
        for target, line, _ in _imports(p):
            b = _package(target).split(".")[-1]
            if b != a and b != "vqz_edge" and LAYERS[b] >= LAYERS[a]:
                up.add(f"{p.relative_to(ROOT.parent)}:{line}: {a} (layer {LAYERS[a]}) imports {b} (layer {LAYERS[b]})")
    assert sorted(up) == [], "\n".join(sorted(up))


def test_the_artifacts_import_only_the_core() -> None:
    for p in (ROOT / "artifacts").glob("*.py"):
        if p.name == "__init__.py":
            continue
        used = {_package(t).split(".")[-1] for t, _, _ in _imports(p)} - {"artifacts"}
        assert used and all(LAYERS[u] <= 1 for u in used), (p.name, sorted(used))


def test_dispatch_table_names_every_command_module() -> None:
    on_disk = {p.stem for p in (ROOT / "cli").glob("*_cmd.py")}
    assert {c.module for c in COMMANDS.values()} == on_disk
    sub = next(a for a in build_parser()._actions if a.dest == "command")
    assert list(sub.choices) == list(COMMANDS)  # type: ignore[union-attr]
    for name in COMMANDS:
        assert hasattr(command_module(name), "register")


def test_a_command_module_that_fails_to_import_is_an_error(monkeypatch: pytest.MonkeyPatch) -> None:
    from vqz_edge import cli

    monkeypatch.setitem(cli.COMMANDS, "targets", cli.Command("no_such_cmd", "missing", workstation=False))
    with pytest.raises(ModuleNotFoundError):
        cli.main(["targets"])


def test_a_device_command_loads_no_workstation_code() -> None:
    # `vqz-edge targets` in a fresh interpreter: its own module only, never torch, numba or the workstation stages
    code = ("import sys; from vqz_edge.cli import main; main(['targets', '--json']); "
            "print(sorted(m for m in sys.modules if m.split('.')[0] in ('torch', 'numba', 'onnxruntime') "
            "or m.startswith(('vqz_edge.cli.', 'vqz_edge.export', 'vqz_edge.sensitivity', 'vqz_edge.vlm'))), "
            "file=sys.stderr)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stderr.strip().splitlines()[-1] == "['vqz_edge.cli.options', 'vqz_edge.cli.targets_cmd']"
