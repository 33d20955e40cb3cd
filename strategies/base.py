"""What every strategy shares: construction from validated parameters, and the host-code shape.

A strategy is host code (DESIGN §1): `setup(rt)` creates its streams, `host(rt)` is the host program,
a generator that takes requests with ``yield from rt.next_request()`` and launches their ops through
the runtime verbs. It never computes a cost: where it needs a duration (Liger's fill budget) it asks
``rt.profiled_seconds(op)``, as its real counterpart reads its offline profile.
"""
from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Any, ClassVar, Generator

from simulator.errors import ConfigError
from simulator.model import ModelSpec
from simulator.schema import Section


@dataclass(frozen=True)
class Params:
    """Base of strategy parameters; subclasses add typed fields with defaults."""

    @classmethod
    def parse(cls, data: dict, where: str, key: str) -> "Params":
        sec = Section(data, where, key)
        values = {}
        for f in fields(cls):
            default = f.default
            types = _types_of(f.type)
            if sec.has(f.name):
                values[f.name] = sec.get(f.name, types)
            else:
                values[f.name] = default
        sec.done(allowed=["name", "label"] + [f.name for f in fields(cls)])
        params = cls(**values)
        problem = params.check()
        if problem:
            name, message = problem
            raise ConfigError(where, f"{key}.{name}" if key else name, message)
        return params

    def check(self) -> tuple[str, str] | None:
        """(field, message) for the first invalid value, or None."""
        return None


def _types_of(annotation) -> tuple:
    text = str(annotation)
    out = []
    for name, t in (("bool", bool), ("int", int), ("float", float), ("str", str)):
        if name in text:
            out.append(t)
    if float in out and int not in out:
        out.append(int)
    return tuple(out) or (object,)


class Strategy:
    """Base class. Subclasses set `name`, `Params`, and implement `setup` and `host`."""
    name: ClassVar[str] = ""
    Params: ClassVar[type] = Params

    def __init__(self, model: ModelSpec, devices: int, params: Any = None):
        self.model = model
        self.devices = devices
        self.params = params if params is not None else self.Params()

    def validate(self, where: str, key: str) -> None:
        """Raise ConfigError if this strategy cannot run this model on this many devices."""

    def parallel_layout(self) -> tuple[int, int]:
        """(tp, pp): how the model's weights are split, for the memory check."""
        return self.devices, 1

    def stage_layers(self) -> tuple[int, ...] | None:
        """Layers per pipeline stage when given explicitly (None: as even as possible)."""
        return None

    def layouts(self) -> list:
        """[((tp, pp), stage layers or None, resident requests)] of every weight placement the
        strategy uses, for the memory check (one, unless it switches configurations)."""
        return [(self.parallel_layout(), self.stage_layers(), self.resident_requests())]

    def resident_requests(self) -> int:
        """How many requests' KV caches a device may hold at once, for the memory check."""
        return 1

    def concurrent_steps(self) -> int:
        """How many requests' steps a device may run at once (their activations live together),
        for the memory check's activation term."""
        return 1

    def setup(self, rt) -> None:
        pass

    def host(self, rt) -> Generator:
        raise NotImplementedError

    def batch_host(self, rt) -> Generator:
        """The host program under continuous batching: it takes steps (``rt.next_batch``) from
        the serving layer's scheduler instead of whole requests (docs/serving.md)."""
        raise NotImplementedError

    def label(self) -> str:
        return self.name
