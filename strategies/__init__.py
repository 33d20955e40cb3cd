"""Strategies, registered under the name the YAML uses (equal to the module name)."""
from __future__ import annotations

from .base import Params, Strategy
from .tp import TP

REGISTRY: dict[str, type[Strategy]] = {cls.name: cls for cls in (TP,)}


def names() -> list[str]:
    return sorted(REGISTRY)
