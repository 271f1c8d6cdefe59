"""Write a mypy-readable copy of tensorrt-stubs 10.13 into DIR (use as mypy_path / MYPYPATH).

The published stubs cannot be used as-is: they lack py.typed (mypy skips them, every trt name is Any),
five plugin methods use the keyword 'in' as a parameter name, one signature puts a parameter without
default after defaults, and the module-level 'bool: DataType' shadows builtins.bool in every annotation.
"""
import re
import sys
from pathlib import Path

import tensorrt_stubs

site = Path(tensorrt_stubs.__file__).resolve().parents[1]
out = Path(sys.argv[1])
for pkg in ("tensorrt", "tensorrt_bindings"):
    (out / pkg).mkdir(parents=True, exist_ok=True)
    for src in sorted((site / pkg).glob("*.pyi")):
        text = src.read_text(encoding="utf-8")
        text = re.sub(r"([(,] ?)in: ", r"\1in_: ", text)
        text = text.replace("channel_axis: int)", "channel_axis: int = ...)")
        text = re.sub(r"(->\s*|:\s*|\[\s*|,\s*|\|\s*)bool\b", r"\1builtins.bool", text)
        text = text.replace("from __future__ import annotations\n", "from __future__ import annotations\nimport builtins\n", 1)
        (out / pkg / src.name).write_text(text, encoding="utf-8")
print(f"wrote mypy-readable TensorRT stubs to {out}")
