"""`adaptive`: switch between two configurations by queue length (the hot-switching idea of Liger's
follow-up work), paying a modelled switch.

Two strategies share the devices: `low` serves while the load is light, `high` while it is heavy
(e.g. ``low: tp``, ``high: "pp:tp=2"``; a spec is a strategy name, optionally with ``:key=value,
...`` parameters). The host runs the current configuration's own host program on a view of the
runtime that ends its request stream at a *decision point* (each time that program asks for a
request) when a switch is due:

- in `low`, when at least `up_queue` requests wait;
- in `high`, when at most `down_queue` requests wait;
- never before `min_dwell_s` in the current configuration (hysteresis).

The current configuration then finishes what it admitted (its host program returns once its
request stream has ended, and the host waits until every request it started has finished), and the
weights are moved to the other layout: modelled as one all-to-all over every device of each
device's new weight shard (the model's weights / devices; assumed: the whole layout changes, and
nothing is served meanwhile). Arrivals queue during the switch. The run starts in `low`; the
last configuration may switch once more after the last request, which changes no request metric.

Both configurations' setup runs at the start on the same devices (their streams coexist). The view
never mirrors devices (the two programs differ per device). Static serving only.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Generator

from simulator.errors import ConfigError
from simulator.model import memory_per_device
from simulator.ops import Collective

from .base import Params, Strategy


@dataclass(frozen=True)
class AdaptiveParams(Params):
    low: str = "tp"
    high: str = "pp"
    up_queue: int = 8
    down_queue: int = 0
    min_dwell_s: float = 1.0

    def check(self) -> tuple[str, str] | None:
        if self.up_queue < 1:
            return "up_queue", f"must be >= 1, got {self.up_queue}"
        if not 0 <= self.down_queue < self.up_queue:
            return "down_queue", f"must be >= 0 and below up_queue ({self.up_queue}), got " \
                                 f"{self.down_queue}"
        if self.min_dwell_s < 0:
            return "min_dwell_s", f"must be >= 0, got {self.min_dwell_s}"
        return None


def parse_spec(spec: str, model, devices: int, where: str, key: str) -> Strategy:
    """A configuration from ``name`` or ``name:key=value,key=value`` (values as YAML scalars)."""
    import yaml

    from . import REGISTRY
    name, _, rest = spec.partition(":")
    name = name.strip()
    if name not in REGISTRY or name == "adaptive":
        allowed = ", ".join(n for n in sorted(REGISTRY) if n != "adaptive")
        raise ConfigError(where, key, f"{spec!r}: unknown strategy {name!r}; allowed: {allowed}")
    params: dict = {}
    for item in filter(None, (p.strip() for p in rest.split(","))):
        k, eq, v = item.partition("=")
        if not eq:
            raise ConfigError(where, key, f"{spec!r}: expected key=value after ':', got {item!r}")
        params[k.strip()] = yaml.safe_load(v)
    cls = REGISTRY[name]
    strategy = cls(model, devices, cls.Params.parse(params, where, key))
    strategy.validate(where, key)
    return strategy


class Adaptive(Strategy):
    name = "adaptive"
    Params = AdaptiveParams

    def __init__(self, model, devices, params=None):
        super().__init__(model, devices, params)
        self.low = self.high = None
        try:                                       # validate() says what is wrong, and where
            self.validate("strategy", "adaptive")
        except ConfigError:
            pass

    def validate(self, where: str, key: str) -> None:
        p = self.params
        self.low = parse_spec(p.low, self.model, self.devices, where, f"{key}.low")
        self.high = parse_spec(p.high, self.model, self.devices, where, f"{key}.high")

    def layouts(self) -> list:
        return self.low.layouts() + self.high.layouts()

    def concurrent_steps(self) -> int:
        return max(self.low.concurrent_steps(), self.high.concurrent_steps())

    def setup(self, rt) -> None:
        view = _View(rt, self)
        self.low.setup(view)
        self.high.setup(view)
        self.shard_bytes = memory_per_device(self.model, self.devices, 1, 0, 0).weights_bytes
        self.switches: list = []          # (time, to) of every switch (tests, analyses)

    def host(self, rt) -> Generator:
        group = tuple(range(self.devices))
        current, other = self.low, self.high
        while True:
            view = _View(rt, self, current is self.low)
            yield from current.host(view)
            if view.over:
                return
            for ev in view.finishes:               # what it admitted finishes first
                yield from rt.synchronize(ev)
            if self.devices > 1:
                op = Collective("all_to_all", float(self.shard_bytes), group, "reshard_weights")
                for d in group:
                    rt.launch(op, d, 0, -1, "switch")
                moved = rt.new_event("switch")
                rt.record(moved, group[0], 0)
                yield from rt.synchronize(moved)
            current, other = other, current
            self.switches.append((rt.now, "high" if current is self.high else "low"))


class _View:
    """The runtime as the current configuration sees it: its request stream ends when a switch is
    due (module docstring); every other verb is the runtime's, except `mirror` (none)."""

    def __init__(self, rt, owner: Adaptive, up: bool = True):
        self._rt, self._owner, self._up = rt, owner, up
        self._since = rt.now
        self.finishes: list = []
        self.over = False                          # no more requests will ever come

    def __getattr__(self, name):
        return getattr(self._rt, name)

    def mirror(self, group) -> None:
        pass

    def _switch_due(self) -> bool:
        p = self._owner.params
        if self._rt.now - self._since < p.min_dwell_s:
            return False
        waiting = self._rt.waiting()
        return waiting >= p.up_queue if self._up else waiting <= p.down_queue

    def try_next_request(self):
        return None if self._switch_due() else self._rt.try_next_request()

    def next_request(self) -> Generator:
        if self._switch_due():
            return None
        req = yield from self._rt.next_request()
        if req is None:
            self.over = True
        return req

    def finish_when(self, request: int, event) -> None:
        self.finishes.append(event)
        self._rt.finish_when(request, event)
