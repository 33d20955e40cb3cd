"""Strict reading of user mappings (YAML, JSON) into typed values.

Every description is parsed through a `Section`: it takes keys one by one with their types and
ranges, and `done()` rejects any key that was not taken, naming the allowed ones. Every failure is a
`ConfigError` that names the file, the dotted key and what is allowed, so user input never escapes
as a traceback.
"""
from __future__ import annotations

import difflib
import math
from typing import Any, Callable, Iterable, Mapping

from .errors import ConfigError

_MISSING = object()

_TYPE_NAMES = {bool: "a boolean", int: "an integer", float: "a number", str: "a string",
               list: "a list", dict: "a mapping"}


def _type_name(types: tuple) -> str:
    return " or ".join(_TYPE_NAMES.get(t, t.__name__) for t in types)


def _kind_of(value: Any) -> str:
    if value is None:
        return "nothing (null)"
    return _TYPE_NAMES.get(type(value), type(value).__name__)


class Section:
    """A mapping being read: `where` is the file, `path` the dotted key of this mapping."""

    def __init__(self, data: Any, where: str, path: str = ""):
        if not isinstance(data, Mapping):
            raise ConfigError(where, path or "(top level)", f"expected a mapping, got {_kind_of(data)}")
        for key in data:
            if not isinstance(key, (str, int)) or isinstance(key, bool):
                raise ConfigError(where, path or "(top level)", f"keys must be strings, got {key!r}")
        self.data = {str(k): v for k, v in data.items()}
        self.where = where
        self.path = path
        self._taken: set[str] = set()

    def key(self, name: str) -> str:
        return f"{self.path}.{name}" if self.path else name

    def error(self, name: str, message: str) -> ConfigError:
        return ConfigError(self.where, self.key(name), message)

    def has(self, name: str) -> bool:
        return name in self.data

    def raw(self, name: str, default: Any = _MISSING) -> Any:
        self._taken.add(name)
        if name not in self.data:
            if default is _MISSING:
                raise self.error(name, "is required but missing")
            return default
        return self.data[name]

    def get(self, name: str, types: type | tuple, default: Any = _MISSING, *,
            min: float | None = None, max: float | None = None, min_open: bool = False,
            choices: Iterable[Any] | None = None) -> Any:
        """Read a scalar of `types`, with optional bounds (min exclusive when `min_open`) and choices."""
        value = self.raw(name, default)
        if value is default and name not in self.data:
            return value
        return check_value(value, types, self.where, self.key(name), min=min, max=max,
                           min_open=min_open, choices=choices)

    def section(self, name: str, default: Any = _MISSING) -> "Section":
        value = self.raw(name, default)
        return Section(value, self.where, self.key(name))

    def done(self, allowed: Iterable[str] = ()) -> None:
        """Reject keys not taken; the message lists the taken ones and `allowed` (keys valid here
        that this mapping happens not to use), with the closest match first when one is near."""
        extra = [k for k in self.data if k not in self._taken]
        if extra:
            names = sorted(set(self._taken) | set(allowed))
            near = difflib.get_close_matches(extra[0], names, n=1)
            hint = f"did you mean {near[0]!r}? " if near else ""
            raise ConfigError(self.where, self.key(str(extra[0])),
                              f"unknown key; {hint}allowed here: {', '.join(names) or 'none'}")


def check_value(value: Any, types: type | tuple, where: str, key: str, *, min=None, max=None,
                min_open: bool = False, choices=None) -> Any:
    types = types if isinstance(types, tuple) else (types,)
    if float in types and isinstance(value, int) and not isinstance(value, bool):
        value = float(value)
    if isinstance(value, bool) and bool not in types:
        raise ConfigError(where, key, f"expected {_type_name(types)}, got a boolean")
    if not isinstance(value, types):
        raise ConfigError(where, key, f"expected {_type_name(types)}, got {_kind_of(value)}")
    if isinstance(value, float) and not math.isfinite(value):
        raise ConfigError(where, key, f"must be a finite number, got {value}")
    if choices is not None:
        choices = list(choices)
        if value not in choices:
            raise ConfigError(where, key, f"{value!r} is not allowed; choose one of: "
                              + ", ".join(str(c) for c in choices))
    if min is not None and (value < min or (min_open and value == min)):
        op = ">" if min_open else ">="
        raise ConfigError(where, key, f"must be {op} {min}, got {value}")
    if max is not None and value > max:
        raise ConfigError(where, key, f"must be <= {max}, got {value}")
    return value


def parse_with(where: str, key: str, fn: Callable[[], Any]) -> Any:
    """Run `fn`, turning a plain ValueError from it into a ConfigError at `key`."""
    try:
        return fn()
    except ConfigError:
        raise
    except (ValueError, TypeError) as exc:
        raise ConfigError(where, key, str(exc)) from None
