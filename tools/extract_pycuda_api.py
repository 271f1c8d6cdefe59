#!/usr/bin/env python3
"""Extract the API surface of ``pycuda.driver`` at a release tag from pycuda's own sources.

``pycuda.driver`` is ``from pycuda._driver import *`` (Boost.Python: ``src/wrapper/wrap_cudadrv.cpp``) plus
Python code (``pycuda/driver.py``). This reads both mechanically (names only) and writes JSON like
tools/extract_trt_api.py does for TensorRT: module names, and per class its methods, static methods,
properties and class attributes; per enum its values. Preprocessor branches (``#if CUDAPP_CUDA_VERSION``) are
all taken: the CUDA of every supported JetPack (11.4+) enables them.

    python tools/extract_pycuda_api.py --git-dir pycuda.git --tag v2022.2 -o tests/doubles/api/pycuda-2022.2.json
"""

from __future__ import annotations

import argparse
import ast
import json
import re
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from extract_trt_api import git, match_bracket, split_args, string_literal, strip_comments  # noqa: E402

_CLASS_RE = re.compile(r"\bpy::(class_|enum_)\s*<")


def parse_wrapper(src: str) -> tuple[dict[str, dict[str, list[str]]], set[str]]:
    src = strip_comments(src)
    src = "\n".join(line for line in src.splitlines() if not line.lstrip().startswith("#"))  # preprocessor lines
    classes: dict[str, dict[str, set[str]]] = {}
    functions: set[str] = set()
    var_at: list[tuple[int, str, str]] = []  # (position, variable, class) for "py::class_<...> wrp("Name")"

    def cls(name: str, kind: str) -> dict[str, set[str]]:
        return classes.setdefault(name, {"kind": {kind}, "methods": set(), "static": set(), "properties": set(),
                                         "attrs": set(), "values": set(), "bases": set()})

    def chain(i: int, entry: dict[str, set[str]]) -> None:
        while True:
            m = re.match(r"\s*\.\s*([A-Za-z_]\w*)\s*\(", src[i:])
            if not m:
                return
            method = m.group(1)
            open_paren = i + m.end() - 1
            end = match_bracket(src, open_paren)
            args = split_args(src[open_paren + 1:end - 1])
            name = string_literal(args[0]) if args else None
            if method == "def" and name:
                entry["methods"].add(name)
            elif method == "def" and args and "py::self" in args[0]:
                entry["methods"].add("__eq__" if "==" in args[0] else "__ne__")
            elif method == "DEF_SIMPLE_METHOD" and args:
                entry["methods"].add(args[0].strip())
            elif method == "staticmethod" and name:
                entry["static"].add(name)
                entry["methods"].discard(name)
            elif method in ("add_property", "def_readonly", "def_readwrite") and name:
                entry["properties"].add(name)
            elif method == "value" and name:
                entry["values"].add(name)
            i = end

    for m in _CLASS_RE.finditer(src):
        lt = m.end() - 1
        gt = match_bracket(src, lt)
        targs = split_args(src[lt + 1:gt - 1])
        rest = src[gt:]
        vm = re.match(r"\s*([A-Za-z_]\w*)?\s*\(", rest)
        if not vm:
            continue
        open_paren = gt + vm.end() - 1
        end = match_bracket(src, open_paren)
        args = split_args(src[open_paren + 1:end - 1])
        name = string_literal(args[0]) if args else None
        if name is None:
            continue
        entry = cls(name, "enum" if m.group(1) == "enum_" else "class")
        for t in targs:
            b = re.match(r"py::bases<\s*(\w+)\s*>", t.strip())
            if b:
                entry["bases"].add(b.group(1))
        if vm.group(1):
            var_at.append((m.start(), vm.group(1), name))
        chain(end, entry)
    # chains and attributes started from a variable: "wrp.def(...)", "cls.attr("X") = ..."
    for m in re.finditer(r"\b([A-Za-z_]\w*)\s*(?=\.\s*(?:def|DEF_SIMPLE_METHOD|staticmethod|add_property|attr)\b)", src):
        owners = [c for pos, var, c in var_at if var == m.group(1) and pos < m.start()]
        if not owners:
            continue
        entry = classes[owners[-1]]
        am = re.match(r"\s*\.\s*attr\s*\(\s*\"(\w+)\"\s*\)\s*=", src[m.end():])
        if am:
            entry["attrs"].add(am.group(1))
        else:
            chain(m.end(), entry)
    for m in re.finditer(r"\bpy::def\s*\(\s*\"(\w+)\"", src):
        functions.add(m.group(1))
    for m in re.finditer(r"\bDEF_SIMPLE_FUNCTION\s*\(\s*(\w+)\s*\)", src):
        functions.add(m.group(1))
    for m in re.finditer(r"\bDECLARE_EXC\s*\(\s*(\w+)\s*,", src):
        cls(m.group(1), "exception")
    for m in re.finditer(r"py::scope\(\)\s*\.attr\(\s*\"(\w+)\"\s*\)\s*=\s*(\w+)", src):
        owners = [c for pos, var, c in var_at if var == m.group(2) and pos < m.start()]
        if owners:
            classes[m.group(1)] = classes[owners[-1]]
    camel = {re.sub(r"(?<!^)(?=[A-Z])", "_", k).lower(): k for k in classes}  # host_pointer -> HostPointer
    for e in classes.values():
        e["bases"] = {camel.get(b, b) for b in e["bases"]}
    out = {k: {f: sorted(v) for f, v in e.items()} for k, e in classes.items()}
    for e in out.values():
        e["kind"] = e["kind"][0]  # type: ignore[assignment]
    return out, functions  # type: ignore[return-value]


def parse_driver_py(src: str, classes: dict[str, dict[str, list[str]]]) -> set[str]:
    """Top-level names pycuda/driver.py defines, and Class.attr = ... assignments (also inside
    _add_functionality(), which the module calls at import)."""
    names: set[str] = set()
    tree = ast.parse(src)
    for node in tree.body:
        if isinstance(node, (ast.FunctionDef, ast.ClassDef)):
            names.add(node.name)
        elif isinstance(node, ast.Assign):
            names.update(t.id for t in node.targets if isinstance(t, ast.Name))
        elif isinstance(node, (ast.Import, ast.ImportFrom)):
            names.update((a.asname or a.name).split(".")[0] for a in node.names if a.name != "*")
    for node in ast.walk(tree):
        if isinstance(node, ast.Assign):
            for t in node.targets:
                if isinstance(t, ast.Attribute) and isinstance(t.value, ast.Name) and t.value.id in classes:
                    classes[t.value.id]["methods"] = sorted({*classes[t.value.id]["methods"], t.attr})
    return names


def extract(git_dir: Path, tag: str) -> dict[str, object]:
    commit = git(git_dir, "rev-list", "-n", "1", tag).strip()
    wrapper, driver = "src/wrapper/wrap_cudadrv.cpp", "pycuda/driver.py"
    classes, functions = parse_wrapper(git(git_dir, "show", f"{tag}:{wrapper}"))
    py_names = parse_driver_py(git(git_dir, "show", f"{tag}:{driver}"), classes)
    return {
        "schema": 1,
        "repository": "https://github.com/inducer/pycuda",
        "tag": tag,
        "commit": commit,
        "sources": [driver, wrapper],
        "module": sorted(set(classes) | functions | py_names),
        "functions": sorted(functions),
        "classes": dict(sorted(classes.items())),
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--git-dir", type=Path, required=True, help="a clone or bare mirror of inducer/pycuda")
    ap.add_argument("--tag", required=True, help="release tag, e.g. v2022.2")
    ap.add_argument("-o", "--output", type=Path, help="JSON file to write (default: stdout)")
    args = ap.parse_args(argv)
    text = json.dumps(extract(args.git_dir, args.tag), indent=1, sort_keys=True) + "\n"
    if args.output:
        args.output.parent.mkdir(parents=True, exist_ok=True)
        args.output.write_text(text, encoding="utf-8")
    else:
        sys.stdout.write(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
