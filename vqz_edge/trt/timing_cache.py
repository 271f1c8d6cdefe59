"""The TensorRT timing cache of a build: loaded and checked (Polygraphy neither checks ``create_timing_cache`` for
None nor ``set_timing_cache``'s result), merged and saved under a file lock; a corrupt one, or one from another
TensorRT/GPU, is replaced."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..errors import EngineBuildError
from ..fsutil import atomic_write_bytes, file_lock
from ..log import get_logger

if TYPE_CHECKING:
    import tensorrt as trt


_log = get_logger(__name__)


@dataclass
class TimingCacheUse:
    """What happened to the timing cache file while configuring (filled in by the config step)."""

    path: Path
    loaded: bool = False  # the file's cache is what this build uses
    stale: bool = False  # the file was made by another TensorRT / device (or was unreadable): replace, do not merge
    config: Any = None


def load_timing_cache(config: trt.IBuilderConfig, use: TimingCacheUse) -> None:
    """Give the build the cache in ``use.path`` when it belongs to this TensorRT and device; otherwise an empty
    one, and say so. ``create_timing_cache`` returns None for a corrupt blob and ``set_timing_cache`` False for
    another TensorRT/device's cache: both are checked (passing None on would be a TypeError inside TensorRT)."""
    use.config = config
    data = b""
    if use.path.is_file():
        with file_lock(use.path):
            data = use.path.read_bytes()
    cache = None
    if data:
        try:
            cache = config.create_timing_cache(data)
        except (RuntimeError, TypeError, ValueError) as exc:
            _log.warning("ignoring timing cache %s: %s", use.path, exc)
        if cache is None:
            _log.warning("timing cache %s is unreadable (corrupt or not a timing cache); starting an empty one", use.path)
            use.stale = True
        elif config.set_timing_cache(cache, False):
            use.loaded = True
            return
        else:
            _log.warning("timing cache %s was made by another TensorRT version or GPU; starting an empty one "
                         "(it will be replaced, not merged)", use.path)
            use.stale = True
    fresh = config.create_timing_cache(b"")
    if fresh is None or not config.set_timing_cache(fresh, False):
        raise EngineBuildError("TensorRT refused an empty timing cache")


def save_timing_cache(use: TimingCacheUse) -> None:
    """Merge what this build timed with what other builds of the same TensorRT/device wrote meanwhile, under the
    file lock; a stale file is replaced."""
    config = use.config
    if config is None:
        return
    cache = config.get_timing_cache()
    if cache is None:
        return
    with file_lock(use.path):
        if use.path.is_file() and not use.stale:
            try:
                other = config.create_timing_cache(use.path.read_bytes())
            except (RuntimeError, TypeError, ValueError):
                other = None
            if other is None or not cache.combine(other, False):
                _log.warning("timing cache %s could not be merged (changed by another TensorRT or GPU meanwhile); "
                             "replacing it", use.path)
        atomic_write_bytes(use.path, bytes(cache.serialize()))
