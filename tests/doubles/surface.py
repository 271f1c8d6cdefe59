"""API surfaces (tests/doubles/api/*.json, extracted from the vendors' sources) and the machinery that makes a
double exactly as strict as the real module: a name the release does not have raises AttributeError; a name
it has but the double does not implement raises NotImplementedError (stricter than the real module, never
more lenient).

Per release, :func:`strict_class` derives a class from an implementation class: every public attribute the
implementation defines that the release lacks is shadowed by a descriptor raising AttributeError (so neither
``obj.x`` nor ``hasattr(Class, "x")`` sees it), every name the release has that the implementation lacks is
a descriptor raising NotImplementedError, and setting an attribute that is not a writable property raises
AttributeError, as pybind11 objects without ``__dict__`` do. User subclasses (an ``ILogger`` subclass)
behave like Python subclasses of pybind11 classes: they may add attributes.
"""

from __future__ import annotations

import functools
import json
from pathlib import Path
from typing import Any

API_DIR = Path(__file__).resolve().parent / "api"

# pybind11 enums have these whatever the release
PYBIND_ENUM_IMPLICIT = frozenset({"name", "value", "__members__", "__entries"})


class Surface:
    """One release's API: module names, and per qualified class name its members."""

    def __init__(self, doc: dict[str, Any], label: str) -> None:
        self.doc = doc
        self.label = label
        self.classes: dict[str, dict[str, Any]] = doc["classes"]
        self.module: frozenset[str] = frozenset(doc["module"])

    @property
    def source(self) -> str:
        return f"{self.doc['repository']} @ {self.doc['tag']} ({self.doc['commit'][:12]})"

    def has_class(self, qual: str) -> bool:
        return qual in self.classes

    @functools.lru_cache(maxsize=None)  # noqa: B019 -- a Surface lives as long as the test session
    def members(self, qual: str) -> frozenset[str]:
        """Every attribute name an instance (or the class) of ``qual`` has, bases included."""
        c = self.classes[qual]
        names = set(c.get("methods", ())) | set(c.get("properties", ())) | set(c.get("readonly", ()))
        names |= set(c.get("static", ())) | set(c.get("python_attrs", ())) | set(c.get("attrs", ()))
        names |= set(c.get("values", ()))
        if c.get("kind") == "enum":
            names |= PYBIND_ENUM_IMPLICIT
        prefix = qual + "."
        for other, oc in self.classes.items():
            if other.startswith(prefix) and "." not in other[len(prefix):]:
                names.add(other[len(prefix):])  # a nested class or enum
                if oc.get("export_values"):
                    names |= set(oc.get("values", ()))
        for base in c.get("bases", ()):
            if base in self.classes:
                names |= self.members(base)
        return frozenset(names)

    @functools.lru_cache(maxsize=None)  # noqa: B019
    def writable(self, qual: str) -> frozenset[str]:
        c = self.classes[qual]
        names = set(c.get("properties", ()))
        for base in c.get("bases", ()):
            if base in self.classes:
                names |= self.writable(base)
        return frozenset(names)

    def enum_values(self, qual: str) -> list[str]:
        return list(self.classes[qual].get("values", ()))


@functools.lru_cache(maxsize=None)
def load_surface(filename: str) -> Surface:
    path = API_DIR / filename
    return Surface(json.loads(path.read_text(encoding="utf-8")), filename)


class _Absent:
    """A name this release does not have: AttributeError on get and set, on the class and its instances."""

    def __init__(self, owner: str, name: str, module: str) -> None:
        self.owner, self.name, self.module = owner, name, module

    def __get__(self, obj: Any, objtype: Any = None) -> Any:
        raise AttributeError(f"type object '{self.module}.{self.owner}' has no attribute '{self.name}'" if obj is None
                             else f"'{self.module}.{self.owner}' object has no attribute '{self.name}'")

    def __set__(self, obj: Any, value: Any) -> None:
        raise AttributeError(f"'{self.module}.{self.owner}' object has no attribute '{self.name}'")


class _Unimplemented:
    """A name the release has that the double does not implement: NotImplementedError, never a silent pass."""

    def __init__(self, owner: str, name: str, label: str) -> None:
        self.owner, self.name, self.label = owner, name, label

    def __get__(self, obj: Any, objtype: Any = None) -> Any:
        raise NotImplementedError(f"{self.owner}.{self.name} exists in {self.label}; the test double does not "
                                  "implement it (add it to tests/doubles, following the vendor's sources)")

    def __set__(self, obj: Any, value: Any) -> None:
        self.__get__(obj)


class StrictBase:
    """Base of every double class: attributes can only be set where the real binding allows it."""

    _double_class = True
    _writable: frozenset[str] = frozenset()
    _api_owner = "?"
    _api_module = "?"

    def __setattr__(self, name: str, value: Any) -> None:
        if name.startswith("_") or _user_subclass(self):
            object.__setattr__(self, name, value)
            return
        if name in type(self)._writable:
            object.__setattr__(self, name, value)
            return
        raise AttributeError(f"can't set attribute '{name}' of '{self._api_module}.{self._api_owner}'"
                             if hasattr(type(self), name) else
                             f"'{self._api_module}.{self._api_owner}' object has no attribute '{name}'")


def _user_subclass(obj: Any) -> bool:
    return not type(obj).__dict__.get("_double_class", False)


def strict_class(impl: type, surface: Surface, qual: str, *, module: str, label: str | None = None,
                 parent: type | None = None) -> type:
    """The class ``qual`` of ``surface``, implemented by ``impl`` (see the module docstring). ``parent``: the
    double of its pybind base class (IConvolutionLayer's is ILayer's), which must derive from ``impl``."""
    allowed = surface.members(qual)
    ns: dict[str, Any] = {"_double_class": True, "_writable": surface.writable(qual), "_api_owner": qual,
                          "_api_module": module, "__module__": module, "__qualname__": qual.split(".")[-1]}
    seen = set()
    for klass in impl.__mro__:
        if klass is object:
            continue
        for name, value in vars(klass).items():
            if name.startswith("_") or name in seen:
                continue
            seen.add(name)
            if name not in allowed:
                ns[name] = _Absent(qual, name, module)
            elif parent is not None and isinstance(parent.__dict__.get(name), (_Absent, _Unimplemented)):
                ns[name] = value  # the base class lacks it, this class has it
    if parent is not None:
        for klass in parent.__mro__:
            for name, value in vars(klass).items():
                if isinstance(value, (_Absent, _Unimplemented)) and name in allowed and name not in ns and name not in seen:
                    ns[name] = _Unimplemented(qual, name, label or surface.label)
    for name in allowed:
        if name.startswith("__") or name in seen or name in ns:
            continue
        if not any(name in vars(k) for k in impl.__mro__):
            ns[name] = _Unimplemented(qual, name, label or surface.label)
    return type(qual.split(".")[-1], (parent or impl,), ns)


class EnumValue:
    """A member of a pybind11 enum: ``.name``, ``.value``, ``int()``, hashable, equal only to itself."""

    __slots__ = ("_enum", "_name", "_value")

    def __init__(self, enum: type, name: str, value: int) -> None:
        self._enum, self._name, self._value = enum, name, value

    @property
    def name(self) -> str:
        return self._name

    @property
    def value(self) -> int:
        return self._value

    def __int__(self) -> int:
        return self._value

    def __index__(self) -> int:
        return self._value

    def __hash__(self) -> int:
        return hash((self._enum.__qualname__, self._value))

    def __eq__(self, other: object) -> bool:
        return isinstance(other, EnumValue) and other._enum is self._enum and other._value == self._value

    def __ne__(self, other: object) -> bool:
        return not self == other

    def __repr__(self) -> str:
        return f"<{self._enum.__qualname__}.{self._name}: {self._value}>"

    def __str__(self) -> str:
        return f"{self._enum.__qualname__}.{self._name}"


class _EnumMeta(type):
    def __iter__(cls) -> Any:
        return iter(cls.__members__.values())  # type: ignore[attr-defined]


def make_enum(surface: Surface, qual: str, module: str, values: dict[str, int] | None = None,
              member_attrs: dict[str, Any] | None = None) -> type:
    """The pybind11 enum ``qual`` of this release: its members in declaration order; integer values from
    ``values`` where the double needs the vendor's numbers, else the declaration index. ``member_attrs``:
    properties the package's __init__.py adds to members (DataType.itemsize)."""
    names = surface.enum_values(qual)
    cls = _EnumMeta(qual.split(".")[-1], (), {"__module__": module, "__qualname__": qual})
    member_cls = type(f"{cls.__name__}Value", (EnumValue,), dict(member_attrs or {}, __slots__=()))
    members = {}
    for i, name in enumerate(names):
        member = member_cls(cls, name, (values or {}).get(name, i))
        members[name] = member
        setattr(cls, name, member)
    cls.__members__ = members  # type: ignore[attr-defined]
    return cls
