"""SimRuntime: the `Runtime` (simulator/runtime.py) of a simulated multi-device machine (DESIGN §2).

It composes three parts: a SimPy environment and its clock; the `Machine` (machine.py: host clocks,
streams, events, ops as a fluid, segments); and the runtime-neutral `Serving` layer (serving.py:
arrivals, the request queue, request records). Strategies use only the Runtime verbs.

Semantics, in short:
- Each device has a host clock. A launch costs the profile's launch overhead of host time; the op
  cannot start before its launch is done. ``synchronize`` blocks the host until the event completes.
- A stream is a FIFO: an op starts when the item before it is done, it has been launched, and any
  event the stream waits on has completed. ``record`` completes its event when the stream reaches it.
- A collective (or send/recv) is one op on each member device, matched NCCL-style: the i-th launch of
  a group on a device joins the i-th instance of that group. It occupies its stream from the moment
  it starts there, spins until every member has started, then transfers; all members end together.
- Running ops progress as a fluid: each has remaining isolated work and a rate from the device's
  contention model (and, for transfers, the share of each link they use); whenever the set of
  running ops on a device or link changes, rates and finish times are recomputed.
- ``launch_seq`` (an SPMD launch of an op sequence) runs as one timed segment where nothing else
  can touch its devices, with exactly the op-by-op times (segment.py); `segments=False` turns that
  off (every op simulated one by one, for checking).
- If the event queue empties while work is pending, a DeadlockError names the stuck streams, their
  head items and what each waits on.
- Op rows stream into a TraceRecorder: per-device totals always, full rows as `keep_ops` says.
"""
from __future__ import annotations

from dataclasses import dataclass
from functools import partial
from typing import Callable, Generator

import simpy

from .contention import ContentionModel, make_contention
from .cost import CostModel
from .errors import DeadlockError, SimulationError
from .hardware import HardwareProfile
from .jitter import Jitter
from . import paced
from .mirror import record_all as spmd_record_all
from .machine import Machine
from .ops import Op
from .serving import Serving, ServingVerbs
from .streams import Event
from .trace import KEEP_ALL, Trace, TraceRecorder

__all__ = ["Event", "SimRuntime"]


class _Probe:
    """A stand-in running op for asking the contention model (see `profiled_slowdown`)."""
    __slots__ = ("op_class", "priority")

    def __init__(self, op_class: str, priority: int = 0):
        self.op_class, self.priority = op_class, priority


class _SimSignal:
    __slots__ = ("event",)

    def __init__(self, env):
        self.event = env.event()

    def wait(self) -> Generator:
        yield self.event

    def fire(self) -> None:
        if not self.event.triggered:
            self.event.succeed()


class SimClock:
    """The HostClock of a SimPy environment."""

    def __init__(self, env: simpy.Environment):
        self.env = env

    @property
    def now(self) -> float:
        return self.env.now

    def sleep(self, seconds: float) -> Generator:
        yield self.env.timeout(seconds)

    def call_later(self, seconds: float, fn: Callable[[], None]) -> None:
        self.env.timeout(seconds).callbacks.append(lambda _e: fn())

    def new_signal(self) -> _SimSignal:
        return _SimSignal(self.env)


_NOTICE_EPS_S = 1e-9     # an event noticed at t + callback_s: float slack of the timeout there


@dataclass(frozen=True)
class Planner:
    """What a host program's offline profile says (`profiled_*`) when it is not the machine's own
    profile: a planning profile's cost model, contention model and per-op dispatch."""
    cost: CostModel
    contention: ContentionModel
    dispatch_s: float


class SimRuntime(ServingVerbs):
    """The simulated machine: `devices` devices of `hardware`, costed by `cost`, as a Runtime.

    `keep_ops`: full op rows to keep in the trace (KEEP_ALL, or the first N that end at or after
    `keep_from_s`; totals cover every op either way); `spill_path`: also write every row to this
    gzipped CSV, chunk by chunk; `segments`: simulate `launch_seq` sequences as segments where exact.
    A profile with op-time jitter (`device.jitter`, jitter.py) draws each op's time from a
    generator seeded by `seed`; with it, or with a machine-wide contention model (`cores`), every
    device is simulated op by op (no segments, no mirroring: those assume identical, fixed times
    and devices that do not slow each other). `planning`: the profile the host program plans with
    (`profiled_seconds`, `profiled_slowdown`) where that is not `hardware`: a scheduler's
    offline profile next to the machine as it runs (parasim validate, docs/validation.md)."""

    def __init__(self, hardware: HardwareProfile, devices: int, *, cost: CostModel | None = None,
                 contention: ContentionModel | None = None, launch_overhead_s: float | None = None,
                 keep_ops: int = KEEP_ALL, keep_from_s: float = 0.0, segments: bool = True,
                 mirror: bool = True, spill_path: str | None = None, seed: int = 0,
                 planning: HardwareProfile | None = None):
        if devices < 1:
            raise ValueError("devices must be >= 1")
        self.hw = hardware
        self.devices = devices
        self.env = simpy.Environment()
        self.cost = cost or CostModel(hardware)
        self.contention = contention or make_contention(hardware.contention)
        launch_s = hardware.launch_overhead_s if launch_overhead_s is None else launch_overhead_s
        self.recorder = TraceRecorder(devices, keep_ops, keep_from_s, spill_path)
        varies = bool(hardware.device.jitter or hardware.spreads)
        jitter = Jitter(hardware.device.jitter, seed) if varies else None
        dev = hardware.device
        # segments and mirroring assume fixed op times, devices that do not slow each other,
        # and streams that take no time of their own between ops (nor after a collective)
        if jitter is not None or getattr(self.contention, "machine_wide", False) \
                or dev.idle_wakeup_s or dev.record_s or dev.comm_lag_s:
            segments, mirror = False, False
        self.machine = Machine(self.env, devices, self.cost, self.contention, launch_s,
                               hardware.interconnect.shared_link, self.recorder, segments,
                               dev.event_wait_s, jitter, dev.dispatch_s, hardware.spreads,
                               dev.idle_wakeup_s, dev.record_s, dev.comm_lag_s)
        self.serving = Serving(SimClock(self.env))
        self.segment_counts = self.machine.segment_counts
        self.mirror_groups = mirror
        self.wakeup_s = hardware.wakeup_s         # a blocked host resumes this long after its event
        self.callback_s = hardware.callback_s     # a host callback runs this long after its event
        self.jitter = jitter
        self._wakeups = hardware.spreads.get("wakeup")   # wake-up times to draw from, or None
        self._planning = None if planning is None else Planner(
            CostModel(planning), make_contention(planning.contention), planning.device.dispatch_s)
        if type(self).launch is SimRuntime.launch:     # the hot path: no extra call per launch
            self.launch = self.machine.launch
        if type(self).launch_seq is SimRuntime.launch_seq:
            self.launch_seq = self.machine.launch_seq
        if type(self).record_all is SimRuntime.record_all:
            self.record_all = partial(spmd_record_all, self.machine)
        if type(self).wait is SimRuntime.wait:
            self.wait = self.machine.wait

    # ------------------------------------------------------------------------------ runtime verbs
    @property
    def now(self) -> float:
        return self.env.now

    @property
    def launch_s(self) -> float:
        return self.machine.launch_s

    def launch(self, op: Op, device: int, stream: int = 0, request: int = -1, phase: str = "") -> None:
        self.machine.launch(op, device, stream, request, phase)

    def launch_seq(self, ops, devices, stream: int = 0, request: int = -1, phase: str = "") -> None:
        """Exactly ``for op in ops: for d in devices: launch(op, d, stream, request, phase)``,
        simulated as one segment where that is exact (segment.py)."""
        self.machine.launch_seq(ops, devices, stream, request, phase)

    def launch_paced(self, runs, devices, stream: int = 0, request: int = -1, phase: str = "",
                     until_arrival: bool = True) -> Generator:
        """Launch `runs` of ops one run at a time, each once the previous run's last op is about to
        start (paced.py states the exact host program); returns (runs launched, the last run's
        waits and mains events). Computed in one pass where nothing else can happen meanwhile."""
        return paced.launch_paced(self, runs, devices, stream, request, phase, until_arrival)

    def wait(self, device: int, stream: int, event: Event) -> None:
        """Later items on (device, stream) start only after `event` has completed."""
        self.machine.wait(device, stream, event)

    def mirror(self, group) -> None:
        """The strategy's promise that every device of `group` gets the same launches, records and
        waits as `group[0]`, each right after it: only `group[0]` is simulated and its trace rows
        stand for the others (machine.py checks every follower's launch and record against its
        leader's). `SimRuntime(..., mirror=False)` simulates every device anyway."""
        if self.mirror_groups:
            self.machine.mirror(group)

    def create_stream(self, device: int, priority: int = 0) -> int:
        """A new stream on `device`; returns its index (stream 0 exists already, priority 0)."""
        return self.machine.create_stream(device, priority)

    def new_event(self, name: str = "") -> Event:
        return Event(name)

    def record(self, event: Event, device: int, stream: int = 0) -> None:
        self.machine.record(event, device, stream)

    def record_all(self, name: str, devices, stream: int = 0) -> list:
        """Exactly a new event per device, each recorded on (device, stream); a mirrored
        follower's is its leader's (mirror.record_all)."""
        return spmd_record_all(self.machine, name, devices, stream)

    def profiled_seconds(self, op: Op) -> float:
        """The op's isolated time, as a profiler would have measured it (the cost model here;
        through the machine's cache of ops by identity, which its launch then finds). With a
        `planning` profile: that profile's cost model and dispatch, as the program's offline
        profile would say while the machine runs as `hardware` says."""
        if self._planning is not None:
            return self._planning.cost.cost(op).seconds + self._planning.dispatch_s
        m = self.machine
        hit = m.op_cost.get(id(op))
        if hit is None or hit[0] is not op:
            hit = m.cost_entry(op)
        return hit[4]

    def profiled_slowdown(self, op_class: str, beside_class: str) -> float:
        """How much slower an op of `op_class` runs beside one of `beside_class` on one device, as
        an overlapped profiling run would measure it (here: the contention model's answer)."""
        pair = [_Probe(op_class), _Probe(beside_class)]
        model = self.contention if self._planning is None else self._planning.contention
        return 1.0 / model.rates(pair)[0]

    def _noticed(self, event: Event) -> bool:
        """Whether the host has taken note of `event`: it completed `callback_s` ago or more (the
        host's view of an event: `query`, callbacks, waits; TorchRuntime's host thread likewise
        sees an event only once it has handled its completion)."""
        if not event.done:
            return False
        return not self.callback_s or event.time + self.callback_s <= self.env._now + _NOTICE_EPS_S

    def _resume_s(self) -> float:
        """How long after an event a host blocked on it resumes: a wake-up (drawn where the
        profile gives a list), and not before the event's callbacks."""
        wake = self.jitter.pick(self._wakeups) if self._wakeups else self.wakeup_s
        return wake if wake > self.callback_s else self.callback_s

    def _after(self, at_s: float) -> Generator:
        now = self.env.now
        if at_s > now:
            yield self.env.timeout(at_s - now)

    def synchronize(self, event: Event) -> Generator:
        """Host blocks until `event` completes (and its device's host has issued its launches).
        It resumes `wakeup_s` after the event, and not before its callbacks have run."""
        if not event.done:
            if event.signal is None:
                event.signal = self.env.event()
            self.serving.host_state = f"blocked in synchronize on event {event.name!r}"
            yield event.signal
            self.serving.host_state = "running"
            if self.wakeup_s or self.callback_s:
                yield from self._after(event.time + self._resume_s())
        elif not self._noticed(event):             # done, not yet noticed: until it is
            yield from self._after(event.time + self.callback_s)
        host = self.machine.host_s[event.device if event.device is not None else 0]
        if host > self.env.now:
            yield self.env.timeout(host - self.env.now)

    def query(self, event: Event) -> bool:
        """Whether `event` has completed, as the host sees it (CUDA: cudaEventQuery)."""
        return self._noticed(event)

    def when(self, event: Event, fn: Callable[[float], None]) -> None:
        """Call fn(time) when `event` completes (at once if the host has seen it complete): on the
        host, `callback_s` after it (the profile's host.callback_us), with the event's time."""
        if self._noticed(event):
            fn(event.time)
        elif event.done:                           # completed, not yet noticed
            t = event.time
            self.env.timeout(t + self.callback_s - self.env.now).callbacks.append(lambda _e: fn(t))
        elif self.callback_s:
            delay, env = self.callback_s, self.env
            event.callbacks.append(
                lambda t: env.timeout(delay).callbacks.append(lambda _e: fn(t)))
        else:
            event.callbacks.append(fn)

    def wait_any(self, events) -> Generator:
        """Host blocks until at least one of `events` has completed (returns at once if the host
        has seen one complete); it resumes as `synchronize` does."""
        if any(self._noticed(e) for e in events):
            return
        done = [e.time for e in events if e.done]
        if done:                                   # completed, not yet noticed: until one is
            yield from self._after(min(done) + self.callback_s)
            return
        waiter = self.env.event()

        def fire(_t):
            if not waiter.triggered:
                waiter.succeed()
        for e in events:
            e.callbacks.append(fire)
        self.serving.host_state = "blocked in wait_any on events " + ", ".join(repr(e.name) for e in events)
        yield waiter
        self.serving.host_state = "running"
        if self.wakeup_s or self.callback_s:
            first = min(e.time for e in events if e.done)
            yield from self._after(first + self._resume_s())

    # ------------------------------------------------------------------------------ driving
    def run(self, strategy, source: Callable[[Serving], Generator], scheduler=None) -> Trace:
        """Run `strategy.host(self)` as the host program and `source(serving)` as the arrivals;
        with a batch `scheduler` (simulator/batching.py) the host is `strategy.batch_host`."""
        strategy.setup(self)
        self.env.process(source(self.serving))
        host = self.env.process(self.serving.host_program(strategy, self, scheduler))
        self.env.run()
        self._check_idle(host)
        return self._trace()

    def _check_idle(self, host) -> None:
        stuck = self.machine.stuck()
        if not host.triggered:
            stuck.append(f"host: {self.serving.host_state}")
        if stuck:
            raise DeadlockError(f"deadlock at t={self.machine.end_s:.6f}s: " + "; ".join(stuck))
        unfinished = self.serving.unfinished()
        if unfinished:
            raise SimulationError(f"{len(unfinished)} request(s) never finished (first: {unfinished[0]}); "
                                  "the strategy did not mark their completion")

    def _trace(self) -> Trace:
        rec = self.recorder
        rec.fold(float("inf"))
        rec.close()
        meta = {"devices": self.devices, "hardware": self.hw.name, "makespan_s": self.machine.end_s,
                "ops": rec.ops, "marks": rec.marks, "rows_from_s": rec.keep_from_s}
        trace = Trace(rec.kept, self.serving.records(rec.first_start), meta, rec.device_stats())
        self.serving.add_batching(trace)
        return trace
