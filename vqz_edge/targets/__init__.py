"""The target catalog: Jetson Orin modules and the JetPack -> L4T -> TensorRT -> CUDA table.

The built-in catalog is data (``vqz_edge/data/targets.toml``, every number with its source). Users add
targets, or override built-in ones, in TOML files of the same ``[[target]]`` format, passed as
``targets_files=`` (the CLI's ``--targets-file``) or listed in the ``VQZ_EDGE_TARGETS`` environment
variable (paths separated by ``os.pathsep``)::

    [[target]]
    name = "my-robot-nx16"          # new target based on a built-in one
    extends = "orin-nx-16gb"
    os_reserve_mib = 3072           # our image runs a desktop and ROS

    [[target]]
    name = "custom-board"           # or a full definition
    display_name = "Custom Orin board"
    ram_mib = 8192
    cuda_cores = 1024
    gpu_sm_count = 8
    dla_cores = 1
    os_reserve_mib = 1536
    default_jetpack = "6.2"
"""

from __future__ import annotations

import functools
import os
import re
import sys
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any

from ..errors import InputError
from ..log import get_logger
from ..vocab import PACKAGE_DATA

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

_log = get_logger(__name__)

MIB = 1 << 20
ENV_VAR = "VQZ_EDGE_TARGETS"
CATALOG_SCHEMA = 1
_NAME_RE = re.compile(r"^[a-z0-9][a-z0-9._-]*$")
_VERSION_RE = re.compile(r"^\d+(\.\d+)*$")


@dataclass(frozen=True)
class JetPackInfo:
    """One JetPack release and the stack it installs."""

    version: str
    l4t: str
    tensorrt: str
    cuda: str
    cudnn: str = ""
    sources: tuple[str, ...] = ()

    def to_dict(self) -> dict[str, Any]:
        return {
            "version": self.version, "l4t": self.l4t, "tensorrt": self.tensorrt, "cuda": self.cuda,
            "cudnn": self.cudnn, "sources": list(self.sources),
        }


@dataclass(frozen=True)
class Target:
    """A deployment target (a Jetson module). Sizes in bytes; ``compute_capability`` like ``"8.7"``."""

    name: str
    display_name: str
    ram_bytes: int
    gpu_sm_count: int
    compute_capability: str
    dla_cores: int
    default_jetpack: str
    default_trt_version: str
    os_reserve_bytes: int
    cuda_cores: int = 0
    default_cuda: str = ""
    min_jetpack: str = ""
    integrated: bool = True
    notes: str = ""
    sources: tuple[str, ...] = ()
    origin: str = "builtin"
    version: int = 1

    def __post_init__(self) -> None:
        if not _NAME_RE.match(self.name):
            raise ValueError(f"target name {self.name!r} must be lower-case letters, digits, '.', '_' or '-'")
        if self.ram_bytes <= 0:
            raise ValueError(f"target {self.name}: ram must be positive, got {self.ram_bytes} bytes")
        if not 0 <= self.os_reserve_bytes < self.ram_bytes:
            raise ValueError(
                f"target {self.name}: os reserve ({self.os_reserve_bytes / MIB:.0f} MiB) must be >= 0 and below "
                f"the module RAM ({self.ram_bytes / MIB:.0f} MiB)"
            )
        if self.gpu_sm_count <= 0:
            raise ValueError(f"target {self.name}: gpu_sm_count must be positive, got {self.gpu_sm_count}")
        if self.dla_cores < 0:
            raise ValueError(f"target {self.name}: dla_cores must be >= 0, got {self.dla_cores}")
        if not re.match(r"^\d+\.\d+$", self.compute_capability):
            raise ValueError(f"target {self.name}: compute_capability must look like '8.7', got {self.compute_capability!r}")
        for label, v in (("default_jetpack", self.default_jetpack), ("default_trt_version", self.default_trt_version)):
            if not _VERSION_RE.match(v):
                raise ValueError(f"target {self.name}: {label} must be a dotted version, got {v!r}")

    @property
    def ram_mib(self) -> float:
        return self.ram_bytes / MIB

    @property
    def os_reserve_mib(self) -> float:
        return self.os_reserve_bytes / MIB

    def to_dict(self) -> dict[str, Any]:
        d: dict[str, Any] = {f.name: getattr(self, f.name) for f in fields(self)}
        d["sources"] = list(self.sources)
        d["ram_mib"] = self.ram_mib
        d["os_reserve_mib"] = self.os_reserve_mib
        return d


@dataclass(frozen=True)
class Catalog:
    targets: tuple[Target, ...]
    jetpacks: tuple[JetPackInfo, ...]
    sources: Mapping[str, str] = field(default_factory=dict)

    def names(self) -> list[str]:
        return [t.name for t in self.targets]


# ------------------------------------------------------------------------------------------ loading


def _parse_toml(text: str, where: str) -> dict[str, Any]:
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise InputError(f"{where} is not valid TOML: {exc}") from exc


_TARGET_KEYS = {
    "name", "display_name", "extends", "ram_mib", "cuda_cores", "gpu_sm_count", "compute_capability", "dla_cores",
    "os_reserve_mib", "min_jetpack", "default_jetpack", "default_trt_version", "default_cuda", "integrated", "notes",
    "sources",
}
_JETPACK_KEYS = {"version", "l4t", "tensorrt", "cuda", "cudnn", "sources"}


def _typed(entry: Mapping[str, Any], key: str, typ: type | tuple[type, ...], where: str) -> Any:
    value = entry[key]
    if isinstance(value, bool) and typ is not bool:
        raise InputError(f"{where}: '{key}' must be {getattr(typ, '__name__', typ)}, got a boolean")
    if not isinstance(value, typ):
        names = typ.__name__ if isinstance(typ, type) else " or ".join(t.__name__ for t in typ)
        raise InputError(f"{where}: '{key}' must be {names}, got {type(value).__name__} {value!r}")
    return value


def _parse_jetpacks(doc: Mapping[str, Any], where: str, sources: Mapping[str, str]) -> list[JetPackInfo]:
    out = []
    raw = doc.get("jetpack", [])
    if not isinstance(raw, list):
        raise InputError(f"{where}: 'jetpack' must be an array of tables ([[jetpack]])")
    for i, e in enumerate(raw):
        w = f"{where} [[jetpack]] #{i + 1}"
        if not isinstance(e, dict):
            raise InputError(f"{w} must be a table")
        unknown = sorted(set(e) - _JETPACK_KEYS)
        if unknown:
            raise InputError(f"{w}: unknown key(s) {unknown}; allowed: {sorted(_JETPACK_KEYS)}")
        missing = sorted({"version", "l4t", "tensorrt", "cuda"} - set(e))
        if missing:
            raise InputError(f"{w}: missing key(s) {missing}")
        out.append(
            JetPackInfo(
                version=str(_typed(e, "version", str, w)), l4t=str(_typed(e, "l4t", str, w)),
                tensorrt=str(_typed(e, "tensorrt", str, w)), cuda=str(_typed(e, "cuda", str, w)),
                cudnn=str(e.get("cudnn", "")),
                sources=tuple(sources.get(s, s) for s in e.get("sources", [])),
            )
        )
    return out


def _target_from_entry(
    e: Mapping[str, Any], where: str, *, known: Mapping[str, Target], jetpacks: Mapping[str, JetPackInfo],
    sources: Mapping[str, str], origin: str,
) -> Target:
    unknown = sorted(set(e) - _TARGET_KEYS)
    if unknown:
        raise InputError(f"{where}: unknown key(s) {unknown}; allowed: {sorted(_TARGET_KEYS)}")
    if "name" not in e:
        raise InputError(f"{where}: missing key 'name'")
    name = _typed(e, "name", str, where)
    w = f"{where} (target {name!r})"
    base: Target | None = None
    if "extends" in e:
        parent = _typed(e, "extends", str, w)
        if parent not in known:
            raise InputError(f"{w}: extends unknown target {parent!r}; known: {sorted(known)}")
        base = known[parent]
    required = {"display_name", "ram_mib", "gpu_sm_count", "os_reserve_mib", "default_jetpack"}
    missing = sorted(required - set(e)) if base is None else []
    if missing:
        raise InputError(f"{w}: missing key(s) {missing} (or use extends = \"<built-in target>\")",
                         hint="see vqz_edge/data/targets.toml for complete entries")

    def get(key: str, typ: type | tuple[type, ...], default: Any) -> Any:
        return _typed(e, key, typ, w) if key in e else default

    ram_bytes = int(get("ram_mib", (int, float), base.ram_bytes / MIB if base else 0) * MIB)
    reserve = int(get("os_reserve_mib", (int, float), base.os_reserve_bytes / MIB if base else 0) * MIB)
    jetpack = str(get("default_jetpack", str, base.default_jetpack if base else ""))
    jp = jetpacks.get(jetpack)
    if "default_trt_version" in e:
        trt = str(_typed(e, "default_trt_version", str, w))
    elif base is not None and "default_jetpack" not in e:
        trt = base.default_trt_version
    elif jp is not None:
        trt = jp.tensorrt
    else:
        raise InputError(
            f"{w}: default_jetpack {jetpack!r} is not in the JetPack table ({sorted(jetpacks)}); "
            "give default_trt_version too"
        )
    cuda = str(get("default_cuda", str, jp.cuda if jp else (base.default_cuda if base else "")))
    own_sources = tuple(sources.get(s, s) for s in get("sources", list, []))
    try:
        return Target(
            name=name,
            display_name=str(get("display_name", str, base.display_name if base else name)),
            ram_bytes=ram_bytes,
            gpu_sm_count=int(get("gpu_sm_count", int, base.gpu_sm_count if base else 0)),
            compute_capability=str(get("compute_capability", str, base.compute_capability if base else "8.7")),
            dla_cores=int(get("dla_cores", int, base.dla_cores if base else 0)),
            default_jetpack=jetpack,
            default_trt_version=trt,
            os_reserve_bytes=reserve,
            cuda_cores=int(get("cuda_cores", int, base.cuda_cores if base else 0)),
            default_cuda=cuda,
            min_jetpack=str(get("min_jetpack", str, base.min_jetpack if base else "")),
            integrated=bool(get("integrated", bool, base.integrated if base else True)),
            notes=str(get("notes", str, base.notes if base else "")),
            sources=own_sources or (base.sources if base else ()),
            origin=origin,
        )
    except ValueError as exc:
        raise InputError(f"{w}: {exc}") from exc


def _parse_targets(
    doc: Mapping[str, Any], where: str, *, known: dict[str, Target], jetpacks: Mapping[str, JetPackInfo],
    sources: Mapping[str, str], origin: str,
) -> list[Target]:
    raw = doc.get("target", [])
    if not isinstance(raw, list):
        raise InputError(f"{where}: 'target' must be an array of tables ([[target]])")
    out = []
    seen: set[str] = set()
    for i, e in enumerate(raw):
        w = f"{where} [[target]] #{i + 1}"
        if not isinstance(e, dict):
            raise InputError(f"{w} must be a table")
        t = _target_from_entry(e, w, known=known, jetpacks=jetpacks, sources=sources, origin=origin)
        if t.name in seen:
            raise InputError(f"{where}: target {t.name!r} is defined twice")
        seen.add(t.name)
        known[t.name] = t
        out.append(t)
    return out


@functools.lru_cache(maxsize=1)
def builtin_catalog() -> Catalog:
    """The catalog shipped with vqz-edge (cached)."""
    text = (PACKAGE_DATA / "targets.toml").read_text(encoding="utf-8")
    doc = _parse_toml(text, "built-in targets.toml")
    if doc.get("schema") != CATALOG_SCHEMA:
        raise InputError(f"built-in targets.toml has schema {doc.get('schema')!r}, expected {CATALOG_SCHEMA}")
    sources = {str(k): str(v) for k, v in doc.get("sources", {}).items()}
    jps = _parse_jetpacks(doc, "built-in targets.toml", sources)
    targets = _parse_targets(
        doc, "built-in targets.toml", known={}, jetpacks={j.version: j for j in jps}, sources=sources, origin="builtin"
    )
    return Catalog(tuple(targets), tuple(jps), sources)


def _env_files() -> list[Path]:
    raw = os.environ.get(ENV_VAR, "")
    return [Path(p) for p in raw.split(os.pathsep) if p.strip()]


def load_catalog(targets_files: Iterable[Path | str] = (), *, use_env: bool = True) -> Catalog:
    """The built-in catalog plus user targets files (``VQZ_EDGE_TARGETS`` first, then ``targets_files``).

    A user target with a built-in name replaces it (e.g. to set ``os_reserve_mib`` for your image);
    user files may also add ``[[jetpack]]`` rows.
    """
    base = builtin_catalog()
    files = (_env_files() if use_env else []) + [Path(p) for p in targets_files]
    if not files:
        return base
    by_name = {t.name: t for t in base.targets}
    jps = {j.version: j for j in base.jetpacks}
    sources = dict(base.sources)
    for path in files:
        if not path.is_file():
            origin = f"${ENV_VAR}" if path in _env_files() else "--targets-file"
            raise InputError(f"targets file {path} does not exist (from {origin})")
        doc = _parse_toml(path.read_text(encoding="utf-8"), str(path))
        unknown = sorted(set(doc) - {"schema", "target", "jetpack", "sources"})
        if unknown:
            raise InputError(f"{path}: unknown top-level key(s) {unknown}; allowed: schema, sources, [[jetpack]], [[target]]")
        sources.update({str(k): str(v) for k, v in doc.get("sources", {}).items()})
        for j in _parse_jetpacks(doc, str(path), sources):
            jps[j.version] = j
        for t in _parse_targets(doc, str(path), known=by_name, jetpacks=jps, sources=sources, origin=str(path)):
            _log.info("target %s from %s", t.name, path)
    return Catalog(tuple(by_name.values()), tuple(jps.values()), sources)


# ------------------------------------------------------------------------------------------ public API


def list_targets(targets_files: Iterable[Path | str] = ()) -> list[Target]:
    """Every known target: built-in ones in catalog order, then user-added ones."""
    return list(load_catalog(targets_files).targets)


def get_target(name: str, targets_files: Iterable[Path | str] = ()) -> Target:
    """The target called ``name``; InputError listing the known names otherwise."""
    cat = load_catalog(targets_files)
    for t in cat.targets:
        if t.name == name:
            return t
    raise InputError(
        f"unknown target {name!r}; known targets: {', '.join(cat.names())}",
        hint=f"run 'vqz-edge targets', or add it in a TOML file (--targets-file / ${ENV_VAR})",
    )


def resolve_targets(names: Sequence[str], targets_files: Iterable[Path | str] = ()) -> list[Target]:
    """``["all"]`` -> every target; otherwise each name looked up (comma-separated lists allowed)."""
    files = list(targets_files)
    flat = [n.strip() for name in names for n in name.split(",") if n.strip()]
    if not flat or flat == ["all"]:
        return list_targets(files)
    return [get_target(n, files) for n in flat]


def jetpack_table(targets_files: Iterable[Path | str] = ()) -> list[JetPackInfo]:
    """JetPack -> L4T -> TensorRT -> CUDA -> cuDNN rows, oldest first."""
    rows = load_catalog(targets_files).jetpacks
    return sorted(rows, key=lambda j: tuple(int(x) for x in j.version.split(".")))


def jetpack_info(version: str, targets_files: Iterable[Path | str] = ()) -> JetPackInfo:
    """The row for JetPack ``version`` (``"6.2"``); InputError listing the known versions otherwise."""
    table = jetpack_table(targets_files)
    for j in table:
        if j.version == version.strip():
            return j
    raise InputError(
        f"unknown JetPack version {version!r}; known: {', '.join(j.version for j in table)}",
        hint="add a [[jetpack]] row (version, l4t, tensorrt, cuda) in a targets file",
    )


def jetpack_for_l4t(l4t: str) -> JetPackInfo | None:
    """The JetPack release that ships Jetson Linux ``l4t`` (``"36.4.3"``), or None."""
    want = tuple(int(x) for x in l4t.strip().lstrip("Rr").split(".") if x.isdigit())
    for j in jetpack_table():
        have = tuple(int(x) for x in j.l4t.split("."))
        if have == want or (len(want) == 2 and have[:2] == want and have[2:] in ((), (0,))):
            return j
    return None


def with_overrides(target: Target, **changes: Any) -> Target:
    """A copy of ``target`` with fields changed (validated)."""
    try:
        return replace(target, **changes)
    except ValueError as exc:
        raise InputError(str(exc)) from exc


__all__ = [
    "ENV_VAR",
    "Catalog",
    "JetPackInfo",
    "Target",
    "builtin_catalog",
    "get_target",
    "jetpack_for_l4t",
    "jetpack_info",
    "jetpack_table",
    "list_targets",
    "load_catalog",
    "resolve_targets",
    "with_overrides",
]
