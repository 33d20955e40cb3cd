"""Contention models: how fast each op runs while others run beside it on the same device.

The engine runs ops as a fluid process (DESIGN §2): every running op has remaining isolated work
and a progress rate in (0, 1]; whenever the set of running ops on a device changes, the engine asks
the device's contention model for new rates and recomputes finish times.

A model is any object with ``rates(running) -> list[float]``, where `running` is a sequence of
objects with ``op_class`` ('compute', 'memory' or 'comm') and ``priority`` (CUDA convention: lower
number = higher priority). A collective that has started on a device but still waits for its other
members is included: like an NCCL kernel it holds SMs while it spins.
"""
from __future__ import annotations

from typing import Protocol, Sequence

from .hardware import ContentionSpec


class Running(Protocol):
    op_class: str
    priority: int


class ContentionModel(Protocol):
    def rates(self, running: Sequence[Running]) -> list[float]: ...


class NoContention:
    """Every op runs at its isolated speed whatever runs beside it (an upper bound on overlap)."""

    def rates(self, running: Sequence[Running]) -> list[float]:
        return [1.0] * len(running)


class FactorContention:
    """Class-pair slowdown factors plus priority sharing within a class.

    For an op of class `a`: rate = share / prod(slowdown[a, b] for each other class b present).
    Compute and memory ops of the same class share their resource: the ops at the highest priority
    present split (1 - low_priority_share) of it evenly (all of it when no lower-priority op of that
    class runs), the lower-priority ones split `low_priority_share` evenly. Communication ops do not
    share by class here: the engine shares links between concurrent transfers.
    """

    SHARED_CLASSES = ("compute", "memory")

    def __init__(self, spec: ContentionSpec):
        self.slowdown = dict(spec.slowdown)
        self.low_share = spec.low_priority_share
        self._cache: dict = {}

    def rates(self, running: Sequence[Running]) -> list[float]:
        if len(running) == 1:
            return [1.0]
        key = tuple([(r.op_class, r.priority) for r in running])
        hit = self._cache.get(key)
        if hit is None:
            if len(self._cache) >= 4096:      # a run sees a handful of mixes; bound it anyway
                self._cache.clear()
            hit = self._cache[key] = self._rates(running)
        return hit

    def _rates(self, running: Sequence[Running]) -> list[float]:
        """Rates are a function of the running ops' (class, priority) pairs, in order."""
        present = {r.op_class for r in running}
        top: dict[str, int] = {}
        for r in running:
            if r.op_class in self.SHARED_CLASSES:
                p = top.get(r.op_class)
                if p is None or r.priority < p:
                    top[r.op_class] = r.priority
        counts: dict[tuple, int] = {}
        for r in running:
            if r.op_class in self.SHARED_CLASSES:
                level = r.priority == top[r.op_class]
                counts[(r.op_class, level)] = counts.get((r.op_class, level), 0) + 1
        out = []
        for r in running:
            cls = r.op_class
            rate = 1.0
            if cls in self.SHARED_CLASSES:
                n_top = counts.get((cls, True), 0)
                n_low = counts.get((cls, False), 0)
                if r.priority == top[cls]:
                    rate = (1.0 - self.low_share if n_low else 1.0) / n_top
                else:
                    rate = self.low_share / n_low
            for other in present:
                if other != cls:
                    rate /= self.slowdown.get((cls, other), 1.0)
            out.append(rate)
        return out


class CoreContention:
    """Devices that share a CPU's cores (TorchRuntime's CPU devices, docs/validation.md).

    Machine-wide (`machine_wide`): `rates` gets every running op of every device at once. A
    compute or memory op uses `threads_per_op` threads; a collective's member uses them while
    its transfer runs (gloo copies and reduces on its member's thread) and none while it waits
    for the others. While they ask for more threads than `cores`, every running op gets the same
    share, cores / threads asked for, as the OS time-slices runnable threads evenly; stream
    priorities mean nothing to it.
    """

    machine_wide = True

    def __init__(self, spec: ContentionSpec):
        self.cores, self.threads = spec.cores, spec.threads_per_op

    def rates(self, running: Sequence[Running]) -> list[float]:
        asked = 0.0
        for r in running:
            if r.op_class != "comm" or getattr(r, "activity", True) is not None:
                asked += self.threads
        share = self.cores / asked if asked > self.cores else 1.0
        return [share] * len(running)


def make_contention(spec: ContentionSpec) -> ContentionModel:
    if spec.model == "none":
        return NoContention()
    if spec.model == "cores":
        return CoreContention(spec)
    return FactorContention(spec)
