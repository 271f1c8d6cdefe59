"""Version-faithful test doubles of ``tensorrt`` (8.5, 8.6, 10.3, 11.1) and ``pycuda``, for tests only (never
shipped: vqz_edge does not import this package).

In-process::

    from tests.doubles import install_doubles
    handles = install_doubles(monkeypatch, trt="10.3", gpu="orin-nx-16gb")   # sys.modules patched
    import tensorrt                                                          # the 10.3 double

In a subprocess (the real CLI, as a user runs it)::

    env = double_env(trt="8.5", gpu="orin-nx-16gb")       # PYTHONPATH + VQZ_DOUBLE_* variables
    subprocess.run([sys.executable, "-m", "vqz_edge", "build", ...], env=env)

``gpu``: "orin-nx-16gb" (integrated, sm 8.7, 2 DLA cores), "orin-nano-8gb" (no DLA), "discrete", "none".
"""

from __future__ import annotations

import os
import sys
import types
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from . import cuda_double, trt_double

ROOT = Path(__file__).resolve().parents[2]
SITE = Path(__file__).resolve().parent / "site"
TRT_KEYS = tuple(trt_double.VERSIONS)


@dataclass
class DoubleHandles:
    trt: types.ModuleType | None
    driver: types.ModuleType

    @property
    def state(self) -> trt_double.TrtDoubleState:
        assert self.trt is not None
        return self.trt._double_state  # type: ignore[attr-defined,no-any-return]

    @property
    def leaks(self) -> list[str]:
        return cuda_double.LEAKS

    @property
    def device(self) -> cuda_double.Device:
        return cuda_double.sim_device(cuda_double.CURRENT_GPU)


def _pycuda_modules(gpu: str) -> dict[str, types.ModuleType]:
    driver = cuda_double.make_driver_module(gpu)
    pkg = types.ModuleType("pycuda")
    pkg.__path__ = []  # type: ignore[attr-defined]
    pkg.driver = driver  # type: ignore[attr-defined]
    pkg.VERSION = (2025, 1, 2)  # type: ignore[attr-defined]
    auto = types.ModuleType("pycuda.autoprimaryctx")
    auto.__doc__ = "pycuda.autoprimaryctx double: cuda.init(), retain device 0's primary context, push it"

    def _init_auto() -> None:
        driver.init()
        auto.device = driver.Device(0)  # type: ignore[attr-defined]
        auto.context = auto.device.retain_primary_context()  # type: ignore[attr-defined]
        auto.context.push()  # type: ignore[attr-defined]

    auto._vqz_init = _init_auto  # type: ignore[attr-defined]
    return {"pycuda": pkg, "pycuda.driver": driver, "pycuda.autoprimaryctx": auto}


def install_doubles(monkeypatch: Any, trt: str | None = "10.3", *, gpu: str = "orin-nx-16gb",
                    version: str | None = None) -> DoubleHandles:
    """Patch sys.modules with fresh doubles (``trt=None``: pycuda only; no tensorrt importable)."""
    cuda_double.LEAKS.clear()
    cuda_double._DEVICES.clear()
    mods = _pycuda_modules(gpu)
    trt_mod = trt_double.make_module(trt, version=version, gpu=gpu) if trt else None
    for name, mod in mods.items():
        monkeypatch.setitem(sys.modules, name, mod)
    monkeypatch.setitem(sys.modules, "pycuda.autoinit", mods["pycuda.autoprimaryctx"])
    monkeypatch.setitem(sys.modules, "tensorrt", trt_mod)  # None: "import tensorrt" raises ImportError
    # Polygraphy keeps the TensorRT logger it created (a subclass of the previous module's ILogger)
    import polygraphy.backend.trt.util as pg_util

    monkeypatch.setattr(pg_util, "TRT_LOGGER", None)
    mods["pycuda.autoprimaryctx"]._vqz_init()  # type: ignore[attr-defined]
    return DoubleHandles(trt_mod, mods["pycuda.driver"])


def double_env(trt: str | None = "10.3", *, gpu: str = "orin-nx-16gb", version: str | None = None,
               base: dict[str, str] | None = None) -> dict[str, str]:
    """Environment for a subprocess that imports the doubles as ``tensorrt`` and ``pycuda``."""
    env = dict(os.environ if base is None else base)
    env["PYTHONPATH"] = os.pathsep.join([str(SITE), str(ROOT), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    env["VQZ_DOUBLE_GPU"] = gpu
    if trt:
        env["VQZ_DOUBLE_TRT"] = trt
    else:
        env.pop("VQZ_DOUBLE_TRT", None)
    if version:
        env["VQZ_DOUBLE_TRT_VERSION"] = version
    return env


def install_from_env(name: str) -> None:
    """Called by the shims in tests/doubles/site/: replace sys.modules[name] with the double."""
    gpu = os.environ.get("VQZ_DOUBLE_GPU", "orin-nx-16gb")
    if name == "tensorrt":
        key = os.environ.get("VQZ_DOUBLE_TRT")
        if not key:
            raise ImportError("No module named 'tensorrt' (the double is not enabled: VQZ_DOUBLE_TRT is unset)")
        sys.modules["tensorrt"] = trt_double.make_module(key, version=os.environ.get("VQZ_DOUBLE_TRT_VERSION"), gpu=gpu)
        return
    if "pycuda.driver" not in sys.modules or not hasattr(sys.modules["pycuda.driver"], "Device"):
        mods = _pycuda_modules(gpu)
        for mod_name, mod in mods.items():
            if mod_name != "pycuda":
                sys.modules[mod_name] = mod
        sys.modules["pycuda"].driver = mods["pycuda.driver"]  # type: ignore[attr-defined]
    if name == "pycuda.autoprimaryctx":
        auto = sys.modules["pycuda.autoprimaryctx"]
        auto._vqz_init()  # type: ignore[attr-defined]
        import atexit

        atexit.register(lambda: auto.context.pop())  # type: ignore[attr-defined]
