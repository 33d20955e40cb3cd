"""Real time for the serving layer and the host: `RealClock` (a `HostClock` on time.perf_counter)
and `Driver`, which runs generators (the host program, the workload source) on the host thread.

A generator yields what it waits for: a `Deadline` (``clock.sleep``) or a `RealSignal`
(``signal.wait()``). The driver resumes it when the deadline has passed or the signal has fired.
Other threads (the device streams) hand the host work only through `Driver.post(t, fn)`: the host
thread runs posted functions in time order (sorted within each batch it drains) between generator
steps, so serving state and `when` callbacks are only ever touched by the host thread, as in
SimRuntime. Nothing busy-spins: an idle host sleeps on a `threading.Condition` until something is
posted or the next deadline comes.

This module does not import torch.
"""
from __future__ import annotations

import gc
import heapq
import itertools
import threading
import time
from collections import deque
from contextlib import contextmanager
from typing import Callable, Generator, Iterator


class Deadline:
    """What a sleeping generator yields: resume at clock time `at`."""
    __slots__ = ("at",)

    def __init__(self, at: float):
        self.at = at


class RealSignal:
    """A one-shot wake-up (runtime.Signal) for generators run by a Driver; host thread only."""
    __slots__ = ("driver", "fired", "waiters")

    def __init__(self, driver: "Driver"):
        self.driver, self.fired, self.waiters = driver, False, []

    def wait(self) -> Generator:
        if not self.fired:
            yield self

    def fire(self) -> None:
        if not self.fired:
            self.fired = True
            self.driver.ready.extend((proc, None) for proc in self.waiters)
            self.waiters = []


@contextmanager
def frozen_heap() -> Iterator[None]:
    """The objects that exist now left out of the cyclic garbage collector's passes until the
    block ends (`gc.freeze`; serving engines freeze their heap after warm-up for the same
    reason). A full collection stops every thread (it holds the GIL) for as long as it takes to
    walk every tracked object: with a few earlier runs' traces and logs alive that was 0.3-0.6 s
    on the 2-core development machine, inside a measured run of 5 s whose requests last 0.3 s,
    and nothing the simulator models (docs/validation.md, "Collector pauses"). The run's own
    objects are still collected."""
    gc.freeze()
    try:
        yield
    finally:
        gc.unfreeze()


class RealClock:
    """The HostClock of a real run: seconds since `start()` (construction until then)."""

    def __init__(self):
        self.driver = Driver(self)
        self.t0 = time.perf_counter()

    def start(self) -> None:
        self.t0 = time.perf_counter()

    @property
    def now(self) -> float:
        return time.perf_counter() - self.t0

    def sleep(self, seconds: float) -> Generator:
        yield Deadline(self.now + max(0.0, seconds))

    def call_later(self, seconds: float, fn: Callable[[], None]) -> None:
        self.driver.at(self.now + max(0.0, seconds), fn)

    def new_signal(self) -> RealSignal:
        return RealSignal(self.driver)


class Proc:
    """A generator the driver runs; `done` once it returned (its value in `value`)."""
    __slots__ = ("gen", "done", "value")

    def __init__(self, gen):
        self.gen, self.done, self.value = gen, False, None


class Driver:
    """Runs generators on the host thread in real time (module docstring)."""

    def __init__(self, clock: RealClock):
        self.clock = clock
        self.cond = threading.Condition()
        self.inbox: list = []              # (t, seq, fn) posted by other threads
        self.timers: list = []             # heap of (t, seq, fn)
        self.ready: deque = deque()        # (Proc, value to send)
        self.procs: list[Proc] = []
        self._seq = itertools.count()
        self.activity = 0.0                # clock time of the last device progress (any thread)
        self.busy_s = 0.0                  # wall time the host thread spent making progress

    def spawn(self, gen) -> Proc:
        proc = Proc(gen)
        self.procs.append(proc)
        self.ready.append((proc, None))
        return proc

    def at(self, t: float, fn: Callable[[], None]) -> None:
        """Host thread: call fn() once the clock reaches t."""
        heapq.heappush(self.timers, (t, next(self._seq), fn))

    def post(self, t: float, fn: Callable[[], None]) -> None:
        """Any thread: call fn() on the host thread soon (in order of t among what is drained)."""
        with self.cond:
            self.inbox.append((t, next(self._seq), fn))
            self.cond.notify()

    def poke(self) -> None:
        """Any thread: make a host sleeping in `run` look again (e.g. a stream went idle)."""
        with self.cond:
            self.cond.notify()

    def _step(self, proc: Proc, value) -> None:
        try:
            what = proc.gen.send(value)
        except StopIteration as stop:
            proc.done, proc.value = True, stop.value
            return
        if isinstance(what, Deadline):
            self.at(what.at, lambda: self.ready.append((proc, None)))
        elif isinstance(what, RealSignal):
            if what.fired:
                self.ready.append((proc, None))
            else:
                what.waiters.append(proc)
        else:
            raise TypeError(f"a host generator yielded {what!r}; yield from a runtime verb, "
                            "clock.sleep or signal.wait instead")

    def run(self, idle: Callable[[], bool], stall_s: float,
            on_stall: Callable[[], None]) -> None:
        """Run until nothing can happen any more: no generator ready, no timer, nothing posted and
        `idle()` (no device work outstanding). `on_stall()` is called (and should raise) when
        device work is outstanding but neither the host nor a device (`activity`) has made
        progress for `stall_s` seconds."""
        clock = self.clock
        last = clock.now
        while True:
            progressed = False
            t0 = time.perf_counter()
            while self.ready:
                proc, value = self.ready.popleft()
                self._step(proc, value)
                progressed = True
            now = clock.now
            while self.timers and self.timers[0][0] <= now:
                heapq.heappop(self.timers)[2]()
                progressed = True
            with self.cond:
                batch, self.inbox = self.inbox, []
            if batch:
                batch.sort()
                for _t, _s, fn in batch:
                    fn()
                progressed = True
            if progressed or self.ready:
                self.busy_s += time.perf_counter() - t0
                last = clock.now
                continue
            with self.cond:
                if self.inbox:
                    continue
                busy = not idle()
                if not self.timers and not busy:
                    return
                left = stall_s - (clock.now - max(last, self.activity))
                if busy and left <= 0:
                    on_stall()
                    return
                bounds = [0.5]
                if self.timers:
                    bounds.append(max(0.0, self.timers[0][0] - clock.now))
                if busy:
                    bounds.append(max(left, 0.01))
                self.cond.wait(min(bounds))
