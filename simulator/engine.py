"""SimRuntime: the simulated multi-device machine (DESIGN §2), driven by SimPy.

Strategies talk to it through the runtime verbs only: ``create_stream``, ``launch``, ``record``,
``wait``, ``query``, ``synchronize`` and ``wait_any`` (generators: the host blocks), ``when``
(a host callback), ``next_request`` (a generator) and ``try_next_request``, ``finish_when`` /
``first_token_when``, ``profiled_seconds`` and ``profiled_slowdown``. The mechanics live in machine.py.

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
- If the event queue empties while work is pending, a DeadlockError names the stuck streams, their
  head items and what each waits on.
"""
from __future__ import annotations

from collections import deque
from typing import Callable, Generator

import simpy

from .contention import ContentionModel, make_contention
from .cost import CostModel
from .errors import DeadlockError, SimulationError
from .hardware import HardwareProfile
from .machine import _OP, _RECORD, _WAIT, _COMM_TYPES, Event, _Machine, _Stream, _describe
from .ops import Op
from .segment import SegmentMixin
from .trace import KEEP_ALL, RequestRecord, Trace, TraceRecorder

__all__ = ["Event", "SimRuntime"]


class _Probe:
    """A stand-in running op for asking the contention model (see `profiled_slowdown`)."""
    __slots__ = ("op_class", "priority")

    def __init__(self, op_class: str, priority: int = 0):
        self.op_class, self.priority = op_class, priority


class SimRuntime(SegmentMixin, _Machine):
    """The simulated machine: `devices` devices of `hardware`, costed by `cost`."""

    def __init__(self, hardware: HardwareProfile, devices: int, *, cost: CostModel | None = None,
                 contention: ContentionModel | None = None, launch_overhead_s: float | None = None,
                 keep_ops: int = KEEP_ALL, segments: bool = True):
        if devices < 1:
            raise ValueError("devices must be >= 1")
        self.hw = hardware
        self.devices = devices
        self.env = simpy.Environment()
        self.cost = cost or CostModel(hardware)
        self.contention = contention or make_contention(hardware.contention)
        self.launch_s = hardware.launch_overhead_s if launch_overhead_s is None else launch_overhead_s
        self._host = [0.0] * devices
        self._streams: list[list[_Stream]] = [[_Stream(d, 0, 0)] for d in range(devices)]
        self._running: list[list] = [[] for _ in range(devices)]
        self._links: dict = {}
        self._coll_seq: dict = {}
        self._groups: dict = {}
        self._shared = hardware.interconnect.shared_link
        self.segments = segments       # launch_seq runs as timed segments where exact (segment.py)
        self._seg_on: list = [None] * devices
        self.segment_counts = {"run": 0, "expanded": 0, "split": 0}     # for tests and benchmarks
        self._comm_types = _COMM_TYPES
        self._recorder = TraceRecorder(devices, keep_ops)
        self._rows = self._recorder.buffer       # the hot path appends here; folded in chunks
        self._end = 0.0                # time of the last op end or event (stale timeouts run later)
        self._op_cost: dict = {}       # id(op) -> (op, OpCost): ops are re-launched on many devices
        self._arrivals: deque = deque()
        self._arrival_waiter = None
        self._source_done = False
        self._requests: dict = {}
        self._host_state = "not started"

    # ------------------------------------------------------------------------------ runtime verbs
    @property
    def now(self) -> float:
        return self.env.now

    def create_stream(self, device: int, priority: int = 0) -> int:
        """A new stream on `device`; returns its index (stream 0 exists already, priority 0)."""
        streams = self._streams[device]
        streams.append(_Stream(device, len(streams), priority))
        return len(streams) - 1

    def set_priority(self, device: int, stream: int, priority: int) -> None:
        self._streams[device][stream].priority = priority

    def new_event(self, name: str = "") -> Event:
        return Event(name)

    def profiled_seconds(self, op: Op) -> float:
        """The op's isolated time, as a profiler would have measured it (the cost model here)."""
        return self.cost.seconds(op)

    def profiled_slowdown(self, op_class: str, beside_class: str) -> float:
        """How much slower an op of `op_class` runs beside one of `beside_class` on one device, as
        an overlapped profiling run would measure it (here: the contention model's answer)."""
        pair = [_Probe(op_class), _Probe(beside_class)]
        return 1.0 / self.contention.rates(pair)[0]

    def launch(self, op: Op, device: int, stream: int = 0, request: int = -1, phase: str = "") -> None:
        host = self._host
        t = host[device]
        now = self.env._now
        host[device] = t = (t if t > now else now) + self.launch_s
        st = self._streams[device][stream]
        seq = 0
        if type(op) in _COMM_TYPES:
            # NCCL semantics: the i-th launch of a group on a device joins the group's i-th instance
            if device not in op.group:
                raise SimulationError(f"{_describe(op)} launched on device {device}, "
                                      f"not a member of {op.group}")
            seq_key = (device, type(op).__name__, getattr(op, "kind", ""), op.group)
            seq = self._coll_seq.get(seq_key, 0)
            self._coll_seq[seq_key] = seq + 1
        st.queue.append((_OP, op, t, None, request, phase, seq))
        if not st.busy and not st.blocked and len(st.queue) == 1:
            self._advance(st)

    def record(self, event: Event, device: int, stream: int = 0) -> None:
        if event.recorded:
            raise SimulationError(f"event {event.name!r} is recorded twice; events are single-use")
        event.recorded = True
        event.device = device
        self._enqueue(device, stream, (_RECORD, None, self._host_now(device), event, -1, "", 0))

    def wait(self, device: int, stream: int, event: Event) -> None:
        """Later items on (device, stream) start only after `event` has completed."""
        self._enqueue(device, stream, (_WAIT, None, self._host_now(device), event, -1, "", 0))

    def synchronize(self, event: Event) -> Generator:
        """Host blocks until `event` completes (and its device's host has issued its launches)."""
        if not event.done:
            if event._sim is None:
                event._sim = self.env.event()
            self._host_state = f"blocked in synchronize on event {event.name!r}"
            yield event._sim
            self._host_state = "running"
        d = event.device if event.device is not None else 0
        if self._host[d] > self.env.now:
            yield self.env.timeout(self._host[d] - self.env.now)

    def query(self, event: Event) -> bool:
        """Whether `event` has completed, without blocking (CUDA: cudaEventQuery)."""
        return event.done

    def when(self, event: Event, fn: Callable[[float], None]) -> None:
        """Call fn(time) when `event` completes (at once if it has)."""
        if event.done:
            fn(event.time)
        else:
            event._callbacks.append(fn)

    def finish_when(self, request: int, event: Event) -> None:
        self.when(event, lambda t: self._request_done(request, t))

    def first_token_when(self, request: int, event: Event) -> None:
        def mark(t):
            self._requests[request][2] = t
        self.when(event, mark)

    def next_request(self) -> Generator:
        """Host blocks until a request arrives; returns it, or None once no more will arrive."""
        while not self._arrivals:
            if self._source_done:
                return None
            self._arrival_waiter = self.env.event()
            self._host_state = "waiting for a request"
            yield self._arrival_waiter
            self._host_state = "running"
        return self._arrivals.popleft()

    def try_next_request(self):
        """The next arrived request without blocking, or None if none is waiting."""
        return self._arrivals.popleft() if self._arrivals else None

    def arrivals_done(self) -> bool:
        """True once every request has arrived and been taken by the host."""
        return self._source_done and not self._arrivals

    def wait_any(self, events) -> Generator:
        """Host blocks until at least one of `events` has completed (returns at once if one has)."""
        if any(e.done for e in events):
            return
        waiter = self.env.event()

        def fire(_t):
            if not waiter.triggered:
                waiter.succeed()
        for e in events:
            self.when(e, fire)
        self._host_state = "blocked in wait_any on events " + ", ".join(repr(e.name) for e in events)
        yield waiter
        self._host_state = "running"

    def pending_requests(self) -> int:
        """Requests that have arrived and not been taken by the host."""
        return len(self._arrivals)

    # ------------------------------------------------------------------------------ arrivals
    def arrive(self, request) -> None:
        """A request arrives now (called by the workload's source process)."""
        self._requests[request.id] = [self.env.now, None, None, None, request]
        self._arrivals.append(request)
        self._wake_host()

    def sources_done(self) -> None:
        self._source_done = True
        self._wake_host()

    def _wake_host(self):
        w = self._arrival_waiter
        if w is not None and not w.triggered:
            self._arrival_waiter = None
            w.succeed()

    def _request_done(self, request: int, t: float) -> None:
        rec = self._requests[request]
        rec[3] = t
        for fn in self._finish_listeners:
            fn(rec[4], t)

    _finish_listeners: tuple = ()

    def on_finish(self, fn: Callable) -> None:
        self._finish_listeners = tuple(self._finish_listeners) + (fn,)

    # ------------------------------------------------------------------------------ driving
    def run(self, strategy, source: Callable[["SimRuntime"], Generator]) -> Trace:
        """Run `strategy.host(self)` as the host program and `source(self)` as the arrival process."""
        strategy.setup(self)
        self.env.process(source(self))
        self._host_state = "running"
        host = self.env.process(strategy.host(self))
        self.env.run()
        self._check_idle(host)
        return self._trace()

    def _check_idle(self, host) -> None:
        stuck = []
        for streams in self._streams:
            for st in streams:
                if st.busy or st.queue:
                    stuck.append(self._describe_stream(st))
        if not host.triggered:
            stuck.append(f"host: {self._host_state}")
        unfinished = [rid for rid, rec in self._requests.items() if rec[3] is None]
        if stuck:
            raise DeadlockError(f"deadlock at t={self._end:.6f}s: " + "; ".join(stuck))
        if unfinished:
            raise SimulationError(f"{len(unfinished)} request(s) never finished (first: {unfinished[0]}); "
                                  "the strategy did not mark their completion")

    def _trace(self) -> Trace:
        rec = self._recorder
        rec.fold(float("inf"))
        records = []
        for rid, (arrival, _s, first, finish, req) in self._requests.items():
            start = rec.first_start(rid)
            start = finish if start is None else start
            records.append(RequestRecord(rid, arrival, start, first if first is not None else finish,
                                         finish, req.prompt_tokens, req.output_tokens, req.batch,
                                         req.measured))
        meta = {"devices": self.devices, "hardware": self.hw.name, "makespan_s": self._end,
                "ops": rec.ops}
        return Trace(rec.kept, records, meta, rec.device_stats())
