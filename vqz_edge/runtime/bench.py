"""Latency / throughput / peak-memory benchmark of any :class:`EngineRunner`."""

from __future__ import annotations

import platform
import threading
import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ..device import process_peak_rss_bytes
from ..errors import InputError
from ..log import get_logger
from ..progress import ProgressFactory, make_bar
from .base import EngineRunner

_log = get_logger(__name__)


class JtopSampler:
    """Peak system RAM used, sampled from jtop in a thread (Jetson only; inactive elsewhere)."""

    def __init__(self, interval: float = 0.2) -> None:
        self.interval = interval
        self.peak_used_bytes: int | None = None
        self.baseline_used_bytes: int | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._ready = threading.Event()

    def _loop(self) -> None:
        try:
            from jtop import jtop
        except ImportError:
            self._ready.set()
            return
        try:
            with jtop(interval=self.interval) as jetson:
                while not self._stop.is_set() and jetson.ok():
                    used = int(jetson.memory["RAM"]["used"]) * 1024
                    if self.baseline_used_bytes is None:
                        self.baseline_used_bytes = used
                        self._ready.set()
                    self.peak_used_bytes = max(self.peak_used_bytes or 0, used)
        except Exception as exc:  # noqa: BLE001 -- jtop's service may be down; the process RSS still gets reported
            _log.info("jtop sampling unavailable: %s", exc)
        finally:
            self._ready.set()

    def __enter__(self) -> JtopSampler:
        self._thread = threading.Thread(target=self._loop, name="jtop-sampler", daemon=True)
        self._thread.start()
        self._ready.wait(timeout=5.0)
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5.0)


@dataclass(frozen=True)
class BenchResult:
    model: str
    backend: str
    batch: int
    iterations: int
    warmup: int
    input_shapes: dict[str, list[int]]
    latencies_ms: tuple[float, ...] = field(repr=False)
    peak_rss_bytes: int = 0
    system_ram_peak_bytes: int | None = None
    system_ram_baseline_bytes: int | None = None
    host: str = ""

    def percentile(self, q: float) -> float:
        return float(np.percentile(np.asarray(self.latencies_ms), q))

    @property
    def throughput(self) -> float:
        """Samples (batch items) per second over the timed iterations."""
        total_s = sum(self.latencies_ms) / 1000.0
        return self.batch * len(self.latencies_ms) / total_s if total_s > 0 else float("inf")

    def to_dict(self) -> dict[str, Any]:
        lat = np.asarray(self.latencies_ms)
        d: dict[str, Any] = {
            "model": self.model, "backend": self.backend, "batch": self.batch, "iterations": self.iterations,
            "warmup": self.warmup, "input_shapes": self.input_shapes, "host": self.host,
            "latency_ms": {
                "p50": self.percentile(50), "p90": self.percentile(90), "p99": self.percentile(99),
                "mean": float(lat.mean()), "min": float(lat.min()), "max": float(lat.max()),
            },
            "throughput_per_s": self.throughput,
            "peak_memory": {
                "process_peak_rss_bytes": self.peak_rss_bytes,
                "process_peak_rss_mib": round(self.peak_rss_bytes / (1 << 20), 1),
                "system_ram_used_peak_bytes": self.system_ram_peak_bytes,
                "system_ram_used_baseline_bytes": self.system_ram_baseline_bytes,
                "source": "jtop + /proc/self/status VmHWM" if self.system_ram_peak_bytes is not None
                else "/proc/self/status VmHWM (process peak RSS)",
            },
        }
        return d


def make_inputs(runner: EngineRunner, batch: int, *, seed: int = 0) -> dict[str, np.ndarray]:
    """Seeded standard-normal (floats) or small integer inputs of each input's shape at ``batch``."""
    rng = np.random.default_rng(seed)
    feeds: dict[str, np.ndarray] = {}
    for info in runner.inputs:
        shape = info.concrete(batch)
        dt = np.dtype(info.dtype)
        if np.issubdtype(dt, np.floating):
            feeds[info.name] = rng.standard_normal(shape).astype(dt)
        elif dt == np.bool_:
            feeds[info.name] = rng.integers(0, 2, shape).astype(dt)
        else:
            feeds[info.name] = rng.integers(0, 100, shape).astype(dt)
    return feeds


def benchmark(
    runner: EngineRunner,
    *,
    batch: int = 1,
    iterations: int = 100,
    warmup: int = 10,
    seed: int = 0,
    progress: ProgressFactory | None = None,
    sample_jtop: bool = True,
    sampler: JtopSampler | None = None,
) -> BenchResult:
    """Time ``iterations`` runs at ``batch`` after ``warmup``. Pass a running ``sampler`` (started before the
    runner was opened) to include the engine's own memory in the jtop peak/baseline."""
    if batch <= 0 or iterations <= 0 or warmup < 0:
        raise InputError(f"need batch > 0, iterations > 0, warmup >= 0; got {batch}, {iterations}, {warmup}")
    mb = runner.max_batch
    if mb is not None and batch > mb:
        raise InputError(f"batch {batch} exceeds what {runner.path.name} accepts (max {mb})",
                         hint=f"use --batch {mb} or less, or rebuild with a larger max_shape")
    feeds = runner.check_feeds(make_inputs(runner, batch, seed=seed))
    latencies: list[float] = []
    own = sampler is None and sample_jtop
    if own:
        sampler = JtopSampler().__enter__()
    try:
        for _ in range(warmup):
            runner.run(feeds)
        bar = make_bar(progress, "bench (iterations)", iterations)
        for _ in range(iterations):
            t0 = time.perf_counter()
            runner.run(feeds)
            latencies.append((time.perf_counter() - t0) * 1000.0)
            bar.update(1)
        bar.close()
    finally:
        if own and sampler is not None:
            sampler.__exit__(None, None, None)
    return BenchResult(
        model=str(runner.path), backend=runner.backend, batch=batch, iterations=iterations, warmup=warmup,
        input_shapes={k: list(v.shape) for k, v in feeds.items()}, latencies_ms=tuple(latencies),
        peak_rss_bytes=process_peak_rss_bytes(),
        system_ram_peak_bytes=sampler.peak_used_bytes if sampler else None,
        system_ram_baseline_bytes=sampler.baseline_used_bytes if sampler else None,
        host=f"{platform.node()} {platform.machine()} {platform.processor() or ''}".strip(),
    )
