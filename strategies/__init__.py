"""Strategies, registered under the name the YAML uses, which equals the module name.

Every module of this package that defines a `Strategy` subclass whose `name` equals the module's
name is registered; adding a strategy means adding one module.
"""
from __future__ import annotations

import importlib
import pkgutil

from .base import Params, Strategy

__all__ = ["Params", "Strategy", "REGISTRY", "names", "get"]

REGISTRY: dict[str, type[Strategy]] = {}

for _info in sorted(pkgutil.iter_modules(__path__), key=lambda i: i.name):
    if _info.name in ("base", "program") or _info.name.startswith("_"):
        continue
    _module = importlib.import_module(f"{__name__}.{_info.name}")
    for _obj in vars(_module).values():
        if isinstance(_obj, type) and issubclass(_obj, Strategy) and _obj.name == _info.name:
            REGISTRY[_info.name] = _obj


def names() -> list[str]:
    return sorted(REGISTRY)


def get(name: str) -> type[Strategy]:
    return REGISTRY[name]
