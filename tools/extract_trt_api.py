#!/usr/bin/env python3
"""Extract the Python API surface of a TensorRT release from NVIDIA's own binding sources.

The TensorRT Python module is a pybind11 extension (``python/src/**/*.cpp`` in github.com/NVIDIA/TensorRT)
plus a small pure-Python ``__init__.py`` (``python/packaging/**/tensorrt/__init__.py``). This script reads
both at one release tag and writes, mechanically, every name that release's ``tensorrt`` module has:

* module attributes (classes, enums, free functions ``m.def``, names the ``__init__.py`` defines);
* per class: methods (``.def``), properties (``.def_property*``, ``.def_readwrite``/``readonly``), static
  methods, the pybind base classes (so inherited names resolve), and the class it is nested in;
* per enum: its members (``.value``), and ``export_values()``.

The output is JSON (sorted, deterministic) with the repository, tag, commit and the paths it came from. The
test doubles of ``tensorrt`` (tests/doubles/) load it: a name the release does not have raises
AttributeError there, as it would on the device.

    python tools/extract_trt_api.py --git-dir /path/to/TensorRT.git --tag v10.3.0 -o tests/doubles/api/tensorrt-10.3.json

Only ``git show`` is used (a bare mirror works). No code is copied: names only.
"""

from __future__ import annotations

import argparse
import ast
import json
import re
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

BINDING_DIRS = ("python/src/",)
INIT_CANDIDATES = (
    "python/packaging/bindings_wheel/tensorrt/__init__.py",  # 8.6+
    "python/packaging/tensorrt/__init__.py",  # 8.5
)


def git(git_dir: Path, *args: str) -> str:
    out = subprocess.run(["git", f"--git-dir={git_dir}", *args], capture_output=True, text=True, check=False)
    if out.returncode != 0:
        raise SystemExit(f"git {' '.join(args)} failed: {out.stderr.strip()}")
    return out.stdout


# --- C++ lexing -------------------------------------------------------------------------------


def strip_comments(src: str) -> str:
    """Remove // and /* */ comments, keep string and char literals intact (newlines kept)."""
    out: list[str] = []
    i, n = 0, len(src)
    while i < n:
        c = src[i]
        if c == "/" and i + 1 < n and src[i + 1] == "/":
            j = src.find("\n", i)
            i = n if j < 0 else j
        elif c == "/" and i + 1 < n and src[i + 1] == "*":
            j = src.find("*/", i + 2)
            chunk = src[i:n if j < 0 else j + 2]
            out.append("\n" * chunk.count("\n"))
            i = n if j < 0 else j + 2
        elif c == "R" and src.startswith('R"', i):  # raw string R"delim( ... )delim"
            k = src.find("(", i + 2)
            delim = src[i + 2:k]
            end = src.find(")" + delim + '"', k)
            out.append(src[i:end + len(delim) + 2])
            i = end + len(delim) + 2
        elif c in "\"'":
            j = i + 1
            while j < n and src[j] != c:
                j += 2 if src[j] == "\\" else 1
            out.append(src[i:j + 1])
            i = j + 1
        else:
            out.append(c)
            i += 1
    return "".join(out)


# Macros as NVIDIA's release build of the full `tensorrt` module sees them (python/include/ForwardDeclarations.h:
# EXPORT_ALL_BINDINGS is 1 when building the `tensorrt` target; ENABLE_INETWORK_SERIALIZE is an opt-in CMake
# option; pybind11 is >= 2.6; Linux). A condition on any other macro is an error, not a guess.
MACROS = {"EXPORT_ALL_BINDINGS": 1, "ENABLE_INETWORK_SERIALIZE": 0, "PYBIND11_VERSION_MAJOR": 2,
          "PYBIND11_VERSION_MINOR": 10, "_WIN32": None, "WIN32": None, "WIN32_LEAN_AND_MEAN": None}


def _eval_condition(expr: str, macros: dict[str, int | None]) -> bool:
    expr = re.sub(r"defined\s*\(\s*(\w+)\s*\)", lambda m: "1" if macros.get(m.group(1)) is not None else "0", expr)
    expr = re.sub(r"defined\s+(\w+)", lambda m: "1" if macros.get(m.group(1)) is not None else "0", expr)
    names = set(re.findall(r"[A-Za-z_]\w*", expr))
    unknown = names - set(macros)
    if unknown:
        raise ValueError(f"preprocessor condition {expr!r} uses unknown macros {sorted(unknown)}")
    py = expr.replace("&&", " and ").replace("||", " or ").replace("!", " not ").replace(" not =", "!=")
    return bool(eval(py, {}, {k: (v or 0) for k, v in macros.items()}))  # noqa: S307 -- our own macro table


def preprocess(src: str, macros: dict[str, int | None] = MACROS) -> str:
    """Keep the lines the preprocessor keeps (#if/#ifdef/#ifndef/#elif/#else/#endif); drop directive lines."""
    out: list[str] = []
    stack: list[tuple[bool, bool]] = []  # (this branch active, some branch of this #if was taken)
    active = True
    for line in src.splitlines():
        d = re.match(r"\s*#\s*(if|ifdef|ifndef|elif|else|endif)\b(.*)", line)
        if d is None:
            if re.match(r"\s*#", line):
                out.append("")  # #include, #define, #pragma
            else:
                out.append(line if active else "")
            continue
        kind, rest = d.group(1), d.group(2).split("//")[0].strip()
        if kind in ("if", "ifdef", "ifndef"):
            cond = (_eval_condition(rest, macros) if kind == "if" else
                    (macros.get(rest) is not None) == (kind == "ifdef"))
            stack.append((active, cond))
            active = active and cond
        elif kind == "elif":
            parent, taken = stack[-1]
            cond = not taken and _eval_condition(rest, macros)
            stack[-1] = (parent, taken or cond)
            active = parent and cond
        elif kind == "else":
            parent, taken = stack[-1]
            active = parent and not taken
            stack[-1] = (parent, True)
        else:
            parent, _ = stack.pop()
            active = parent
        out.append("")
    return "\n".join(out)


_CLOSE = {"(": ")", "[": "]", "{": "}", "<": ">"}


def skip_string(src: str, i: int) -> int:
    q = src[i]
    j = i + 1
    while j < len(src) and src[j] != q:
        j += 2 if src[j] == "\\" else 1
    return j + 1


def match_bracket(src: str, i: int) -> int:
    """Index just past the bracket closing the one at ``i`` ('(' '[' '{'; '<' counts only <>)."""
    opener = src[i]
    depth = 0
    j = i
    while j < len(src):
        c = src[j]
        if c in "\"'":
            j = skip_string(src, j)
            continue
        if opener == "<":
            if c == "<":
                depth += 1
            elif c == ">":
                depth -= 1
                if depth == 0:
                    return j + 1
        else:
            if c in "([{":
                depth += 1
            elif c in ")]}":
                depth -= 1
                if depth == 0:
                    return j + 1
        j += 1
    raise ValueError(f"unbalanced {opener!r} at {i}")


def split_args(text: str) -> list[str]:
    """Top-level comma split of a call's argument text (without the outer brackets)."""
    args, depth, start, j = [], 0, 0, 0
    while j < len(text):
        c = text[j]
        if c in "\"'":
            j = skip_string(text, j)
            continue
        if c in "([{<":
            depth += 1
        elif c in ")]}>":
            depth -= 1
        elif c == "," and depth == 0:
            args.append(text[start:j].strip())
            start = j + 1
        j += 1
    tail = text[start:].strip()
    if tail:
        args.append(tail)
    return args


_STR_RE = re.compile(r'^"((?:[^"\\]|\\.)*)"$')


def string_literal(arg: str) -> str | None:
    m = _STR_RE.match(arg.strip())
    return m.group(1) if m else None


def template_args(text: str) -> list[str]:
    """'<A, B, std::unique_ptr<A, py::nodelete>>' -> ['A', 'B', 'std::unique_ptr<...>']."""
    return split_args(text[1:-1])


# --- the surface ----------------------------------------------------------------------------------


@dataclass
class PyClass:
    name: str
    cpp: str
    kind: str  # "class" | "enum"
    scope: str | None  # python name of the enclosing class, None for the module
    bases_cpp: list[str] = field(default_factory=list)
    methods: set[str] = field(default_factory=set)
    properties: set[str] = field(default_factory=set)  # readable and writable (a write-only one too)
    readonly: set[str] = field(default_factory=set)
    static: set[str] = field(default_factory=set)
    values: list[str] = field(default_factory=list)  # enum members in declaration order (their integer values)
    export_values: bool = False
    python_attrs: set[str] = field(default_factory=set)  # set by __init__.py (e.g. __enter__, Logger.WARNING)


@dataclass
class Surface:
    classes: dict[str, PyClass] = field(default_factory=dict)  # key: qualified python name "ILogger.Severity"
    functions: set[str] = field(default_factory=set)  # m.def
    module_attrs: set[str] = field(default_factory=set)  # m.attr("x") = ... and __init__.py names
    sources: list[str] = field(default_factory=list)


_CHAIN_METHODS = {
    "def": "methods", "def_static": "static", "def_property": "properties", "def_property_readonly": "readonly",
    "def_readwrite": "properties", "def_readonly": "readonly", "def_property_static": "properties",
    "def_property_readonly_static": "readonly", "def_readonly_static": "readonly",
    "def_readwrite_static": "properties",
}
_HEAD_RE = re.compile(r"\bpy::(class_|enum_|bind_vector|bind_map)\s*<")
_VARCHAIN_RE = re.compile(r"\b([A-Za-z_]\w*)\s*\.\s*(def\w*|value|export_values|attr)\s*\(")


class Extractor:
    def __init__(self) -> None:
        self.surface = Surface()
        self.var_class: dict[str, str] = {}  # binding variable -> qualified python class name
        self.cpp_to_py: dict[str, str] = {}

    # The chain after a class/enum expression: .def(...).value(...)...
    def follow_chain(self, src: str, i: int, cls: PyClass | None) -> int:
        while True:
            j = i
            while j < len(src) and src[j].isspace():
                j += 1
            if j >= len(src) or src[j] != ".":
                return j
            m = re.match(r"\.\s*([A-Za-z_]\w*)\s*\(", src[j:])
            if not m:
                return j
            method = m.group(1)
            open_paren = j + m.end() - 1
            end = match_bracket(src, open_paren)
            args = split_args(src[open_paren + 1:end - 1])
            self.record(cls, method, args)
            i = end

    def record(self, cls: PyClass | None, method: str, args: list[str]) -> None:
        name = string_literal(args[0]) if args else None
        if cls is None:  # the module: m.def("...")
            if method == "def" and name:
                self.surface.functions.add(name)
            elif method == "attr" and name:
                self.surface.module_attrs.add(name)
            return
        if method == "value" and name:
            if name not in cls.values:
                cls.values.append(name)
        elif method == "export_values":
            cls.export_values = True
        elif method in _CHAIN_METHODS:
            if name is not None:
                getattr(cls, _CHAIN_METHODS[method]).add(name)
            elif method == "def" and args and args[0].replace(" ", "").startswith("py::init"):
                cls.methods.add("__init__")
            elif method == "def" and args and "py::self" in args[0]:
                op = args[0].replace(" ", "")
                for sym, dunder in (("==", "__eq__"), ("!=", "__ne__"), ("<", "__lt__"), ("hash(", "__hash__")):
                    if sym in op:
                        cls.methods.add(dunder)
                        break

    def scope_name(self, arg: str) -> str | None:
        arg = arg.strip()
        if arg == "m":
            return None
        if arg in self.var_class:
            return self.var_class[arg]
        raise ValueError(f"unknown binding scope {arg!r}")

    def parse_file(self, path: str, src: str) -> None:
        src = preprocess(strip_comments(src))
        self.surface.sources.append(path)
        pos = 0
        spans: list[tuple[int, int]] = []
        for m in _HEAD_RE.finditer(src):
            if m.start() < pos:
                continue
            kind = "enum" if m.group(1) == "enum_" else "class"
            lt = m.end() - 1
            gt = match_bracket(src, lt)
            targs = template_args(src[lt:gt])
            j = gt
            while src[j].isspace():
                j += 1
            var = None
            vm = re.match(r"([A-Za-z_]\w*)\s*[({]", src[j:])
            if vm and src[j] not in "({":
                var = vm.group(1)
                j += vm.end() - 1
            if src[j] not in "({":
                continue  # a type mention, e.g. a return type
            end = match_bracket(src, j)
            cargs = split_args(src[j + 1:end - 1])
            name = string_literal(cargs[1]) if len(cargs) > 1 else None
            if name is None:
                continue
            scope = self.scope_name(cargs[0])
            qual = f"{scope}.{name}" if scope else name
            cpp = targs[0].strip()
            cls = self.surface.classes.get(qual)
            if cls is None:
                bases = [t.strip() for t in targs[1:] if not t.strip().startswith(("std::", "py::"))
                         and not t.strip().startswith("Py") and "Trampoline" not in t and "Default" not in t]
                cls = PyClass(name=name, cpp=cpp, kind=kind, scope=scope, bases_cpp=bases)
                self.surface.classes[qual] = cls
                self.cpp_to_py.setdefault(cpp, qual)
            # "auto x = py::class_<...>(...)" assigns a variable too
            before = src[max(0, m.start() - 80):m.start()]
            am = re.search(r"(?:auto|py::class_<[^;]*>)\s+([A-Za-z_]\w*)\s*=\s*$", before)
            if am:
                var = am.group(1)
            if var:
                self.var_class[var] = qual
            stop = self.follow_chain(src, end, cls)
            spans.append((m.start(), stop))
            pos = stop
        # Chains started from a variable: binding.def(...), m.def(...), m.attr("x")
        for m in _VARCHAIN_RE.finditer(src):
            if any(a <= m.start() < b for a, b in spans):
                continue
            var = m.group(1)
            if var == "m":
                cls = None
            elif var in self.var_class:
                cls = self.surface.classes[self.var_class[var]]
            else:
                continue
            self.follow_chain(src, m.start() + len(var), cls)

    def resolve_bases(self) -> dict[str, list[str]]:
        out: dict[str, list[str]] = {}
        for qual, cls in self.surface.classes.items():
            out[qual] = [self.cpp_to_py[b] for b in cls.bases_cpp if b in self.cpp_to_py]
        return out


# --- the pure-Python __init__.py ---------------------------------------------------------------------


def parse_init(src: str, surface: Surface, extractor: Extractor) -> None:
    src = re.sub(r"##(\w+)##", lambda m: "tensorrt" if m.group(1) == "TENSORRT_MODULE" else "0", src)
    tree = ast.parse(src)
    classes = surface.classes

    def class_of(expr: ast.expr) -> PyClass | None:
        parts = []
        while isinstance(expr, ast.Attribute):
            parts.append(expr.attr)
            expr = expr.value
        if isinstance(expr, ast.Name):
            parts.append(expr.id)
        return classes.get(".".join(reversed(parts)))

    def visit(body: list[ast.stmt], top: bool) -> None:
        for node in body:
            if isinstance(node, (ast.FunctionDef, ast.ClassDef)) and top:
                surface.module_attrs.add(node.name)
            elif isinstance(node, ast.Assign):
                for t in node.targets:
                    if isinstance(t, ast.Name) and top:
                        surface.module_attrs.add(t.id)
                    elif isinstance(t, ast.Attribute):
                        owner = class_of(t.value)
                        if owner is not None:
                            owner.python_attrs.add(t.attr)
            elif isinstance(node, ast.For):
                # for attr, value in ILogger.Severity.__members__.items(): setattr(Logger, attr, value)
                it = node.iter
                if (isinstance(it, ast.Call) and isinstance(it.func, ast.Attribute)
                        and isinstance(it.func.value, ast.Attribute) and it.func.value.attr == "__members__"):
                    enum = class_of(it.func.value.value)
                    for stmt in node.body:
                        if (isinstance(stmt, ast.Expr) and isinstance(stmt.value, ast.Call)
                                and isinstance(stmt.value.func, ast.Name) and stmt.value.func.id == "setattr"):
                            owner = class_of(stmt.value.args[0])
                            if owner is not None and enum is not None:
                                owner.python_attrs.update(enum.values)
                visit(node.body, False)
            elif isinstance(node, ast.If):
                if "sys.platform" in ast.unparse(node.test) and "win" in ast.unparse(node.test):
                    continue  # Windows-only definitions: absent on Linux and on a Jetson
                visit(node.body, top)
                visit(node.orelse, top)
            elif isinstance(node, ast.Try):
                # an import in a try body may fail (tensorrt_libs is absent on a Jetson): only the fallbacks count
                visit([n for n in node.body if not isinstance(n, (ast.Import, ast.ImportFrom))], top)
                for h in node.handlers:
                    visit(h.body, top)
                visit(node.orelse, top)
            elif isinstance(node, (ast.Import, ast.ImportFrom)) and top:
                for alias in node.names:
                    if alias.name != "*":
                        surface.module_attrs.add((alias.asname or alias.name).split(".")[0])
            elif isinstance(node, ast.Delete) and top:
                for t in node.targets:
                    if isinstance(t, ast.Name):
                        surface.module_attrs.discard(t.id)

    visit(tree.body, True)
    del extractor


# --- driver ---------------------------------------------------------------------------------------------


def extract(git_dir: Path, tag: str) -> dict[str, object]:
    commit = git(git_dir, "rev-list", "-n", "1", tag).strip()
    files = [p for p in git(git_dir, "ls-tree", "-r", "--name-only", tag, "python/src/").splitlines()
             if p.endswith(".cpp")]
    ex = Extractor()
    # Files that declare bases must come first: pyFoundationalTypes, pyCore, then the rest in name order.
    order = sorted(files, key=lambda p: (0 if "Foundational" in p else 1 if "pyCore" in p else 2, p))
    for path in order:
        ex.parse_file(path, git(git_dir, "show", f"{tag}:{path}"))
    existing = set(git(git_dir, "ls-tree", "-r", "--name-only", tag, "python/packaging/").splitlines())
    init_path = next((p for p in INIT_CANDIDATES if p in existing), None)
    if init_path is None:
        raise SystemExit(f"no tensorrt/__init__.py at {tag}")
    parse_init(git(git_dir, "show", f"{tag}:{init_path}"), ex.surface, ex)
    ex.surface.sources.append(init_path)
    bases = ex.resolve_bases()
    classes = {}
    for qual, cls in sorted(ex.surface.classes.items()):
        entry: dict[str, object] = {"kind": cls.kind, "cpp": cls.cpp, "bases": bases[qual]}
        if cls.kind == "enum":
            entry["values"] = list(cls.values)
            entry["export_values"] = cls.export_values
        entry["methods"] = sorted(cls.methods)
        entry["properties"] = sorted(cls.properties - cls.readonly)
        entry["readonly"] = sorted(cls.readonly)
        entry["static"] = sorted(cls.static)
        entry["python_attrs"] = sorted(cls.python_attrs)
        classes[qual] = entry
    module = sorted({q for q, c in ex.surface.classes.items() if c.scope is None}
                    | ex.surface.functions | ex.surface.module_attrs)
    return {
        "schema": 1,
        "repository": "https://github.com/NVIDIA/TensorRT",
        "tag": tag,
        "commit": commit,
        "sources": sorted(ex.surface.sources),
        "module": module,
        "functions": sorted(ex.surface.functions),
        "classes": classes,
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--git-dir", type=Path, required=True, help="a clone or bare mirror of NVIDIA/TensorRT")
    ap.add_argument("--tag", required=True, help="release tag, e.g. 8.5.2, v8.6.1, v10.3.0, v11.1")
    ap.add_argument("-o", "--output", type=Path, help="JSON file to write (default: stdout)")
    args = ap.parse_args(argv)
    doc = extract(args.git_dir, args.tag)
    text = json.dumps(doc, indent=1, sort_keys=True) + "\n"
    if args.output:
        args.output.parent.mkdir(parents=True, exist_ok=True)
        args.output.write_text(text, encoding="utf-8")
        n = sum(len(c["methods"]) + len(c["properties"]) + len(c["readonly"])  # type: ignore[index]
                for c in doc["classes"].values())  # type: ignore[union-attr]
        print(f"{args.output}: {len(doc['classes'])} classes/enums, {n} members, {len(doc['module'])} module names",
              file=sys.stderr)
    else:
        sys.stdout.write(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
