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

import importlib.machinery
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
    pkg.__spec__ = importlib.machinery.ModuleSpec("pycuda", None, is_package=True)
    pkg.__path__ = [str(SITE / "pycuda")]  # type: ignore[attr-defined]  # autoprimaryctx/autoinit import from here
    pkg.driver = driver  # type: ignore[attr-defined]
    pkg.VERSION = (2025, 1, 2)  # type: ignore[attr-defined]
    return {"pycuda": pkg, "pycuda.driver": driver}


def install_doubles(monkeypatch: Any, trt: str | None = "10.3", *, gpu: str = "orin-nx-16gb",
                    version: str | None = None) -> DoubleHandles:
    """Patch sys.modules with fresh doubles (``trt=None``: pycuda only; no tensorrt importable)."""
    cuda_double.LEAKS.clear()
    cuda_double._DEVICES.clear()
    cuda_double._tls.__dict__.clear()  # a new process: this thread has no CUDA context yet
    mods = _pycuda_modules(gpu)
    trt_mod = trt_double.make_module(trt, version=version, gpu=gpu) if trt else None
    for name, mod in mods.items():
        monkeypatch.setitem(sys.modules, name, mod)
    for name in ("pycuda.autoprimaryctx", "pycuda.autoinit"):  # imported afresh (tests/doubles/site/pycuda/)
        monkeypatch.delitem(sys.modules, name, raising=False)
    monkeypatch.setitem(sys.modules, "tensorrt", trt_mod)  # None: "import tensorrt" raises ImportError
    # Polygraphy keeps the TensorRT logger it created (a subclass of the previous module's ILogger), and each of
    # its modules caches what its lazy "tensorrt" import returned: forget both (a new process would not have them)
    import polygraphy.backend.trt.util as pg_util

    monkeypatch.setattr(pg_util, "TRT_LOGGER", None)
    for mod_name, module in list(sys.modules.items()):
        if mod_name.startswith("polygraphy") and module is not None:
            for value in list(vars(module).values()):
                if type(value).__name__ == "LazyModule":
                    object.__setattr__(value, "module", None)
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
        sys.modules["pycuda.driver"] = mods["pycuda.driver"]
        sys.modules["pycuda"].driver = mods["pycuda.driver"]  # type: ignore[attr-defined]
    if name in ("pycuda.autoprimaryctx", "pycuda.autoinit"):  # as pycuda's: init, retain + push device 0's context
        import atexit
        import contextlib

        driver = sys.modules["pycuda.driver"]
        auto = sys.modules[name]
        driver.init()
        auto.device = driver.Device(0)  # type: ignore[attr-defined]
        auto.context = auto.device.retain_primary_context()  # type: ignore[attr-defined]
        auto.context.push()  # type: ignore[attr-defined]

        def _finish_up() -> None:
            with contextlib.suppress(driver.Error):
                driver.Context.pop()

        atexit.register(_finish_up)
