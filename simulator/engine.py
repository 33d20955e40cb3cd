"""SimRuntime: the simulated multi-device machine (DESIGN §2), driven by SimPy.

Strategies talk to it through the runtime verbs only: ``create_stream``, ``launch``, ``record``,
``wait``, ``synchronize`` (a generator: the host blocks), ``next_request`` (a generator),
``finish_when`` / ``first_token_when`` and ``profiled_seconds``.

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
from typing import Callable, Generator, Iterable, Optional

import simpy
from simpy.events import NORMAL, Event as _SimEvent

from .contention import ContentionModel, make_contention
from .cost import CostModel
from .errors import DeadlockError, SimulationError
from .hardware import HardwareProfile
from .ops import Collective, Op, SendRecv
from .trace import Trace

_OP, _RECORD, _WAIT = 0, 1, 2
_COMM_TYPES = frozenset((Collective, SendRecv))
_KIND = {"Gemm": "gemm", "Attention": "attention", "Elementwise": "elementwise",
         "SendRecv": "send_recv"}


class Event:
    """A CUDA-like event: recorded once on a stream, completes when that stream reaches it."""
    __slots__ = ("name", "done", "time", "device", "recorded", "_streams", "_callbacks", "_sim")

    def __init__(self, name: str = ""):
        self.name = name
        self.done = False
        self.time: Optional[float] = None
        self.device: Optional[int] = None
        self.recorded = False
        self._streams: list = []
        self._callbacks: list = []
        self._sim = None

    def __repr__(self) -> str:
        return f"Event({self.name!r}, done={self.done})"


# A stream item is a tuple (hot path: cheaper than an object):
# (kind, op, ready_at, event, request, phase, seq) -- seq numbers a device's launches of one group.


class _Stream:
    __slots__ = ("device", "index", "priority", "queue", "busy", "blocked", "current")

    def __init__(self, device: int, index: int, priority: int):
        self.device, self.index, self.priority = device, index, priority
        self.queue: deque = deque()
        self.busy = False          # an op is running (or spinning) on it
        self.blocked = False       # waiting for an event or for its head's launch to finish
        self.current = None        # the _Run in progress


class _Finish(_SimEvent):
    """A SimPy event scheduled at an activity's projected finish (a Timeout without its checks:
    the delay is known to be >= 0). `act` is the activity it finishes."""

    def __init__(self, env, act, callback, delay):
        self.env = env
        self.callbacks = [callback]
        self._value = None
        self._ok = True
        self.act = act
        env.schedule(self, NORMAL, delay)


class _Run:
    """One op on one device: what the contention model sees. A single-device op is its own
    activity (the fields after `activity`); a collective's runs share one `_Activity`."""
    __slots__ = ("stream", "item", "cost", "kind", "start", "op_class", "priority", "factor",
                 "activity", "runs", "links", "remaining", "rate", "last", "ev")

    def __init__(self, stream, item, cost, kind, start, op_class, work):
        self.stream = stream
        self.item = item
        self.cost = cost
        self.kind = kind
        self.start = self.last = start
        self.op_class = op_class
        self.priority = stream.priority
        self.factor = 1.0
        self.remaining = work
        self.links = ()
        self.rate = 0.0
        self.ev = None
        if op_class == "comm":
            self.activity = None
        else:
            self.activity = self
            self.runs = (self,)


class _Activity:
    """Work in progress: remaining isolated seconds, shared by its runs (one per member device).
    `ev` is the pending finish timeout; a timeout that is no longer `ev` is stale and ignored."""
    __slots__ = ("runs", "links", "remaining", "rate", "last", "ev", "start")

    def __init__(self, runs, links, work, now):
        self.runs, self.links = runs, links
        self.remaining, self.rate, self.last, self.ev, self.start = work, 0.0, now, None, now


class _Group:
    """A collective instance waiting for its members."""
    __slots__ = ("op", "runs", "size")

    def __init__(self, op, size):
        self.op, self.runs, self.size = op, [], size


class SimRuntime:
    """The simulated machine: `devices` devices of `hardware`, costed by `cost`."""

    def __init__(self, hardware: HardwareProfile, devices: int, *, cost: CostModel | None = None,
                 contention: ContentionModel | None = None, launch_overhead_s: float | None = None):
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
        self._running: list[list[_Run]] = [[] for _ in range(devices)]
        self._links: dict = {}
        self._coll_seq: dict = {}
        self._groups: dict = {}
        self._shared = hardware.interconnect.shared_link
        self._rows: list = []
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

    # ------------------------------------------------------------------------------ streams
    def _host_now(self, device: int) -> float:
        t = self._host[device]
        return t if t > self.env._now else self.env._now

    def _enqueue(self, device, stream, item) -> None:
        st = self._streams[device][stream]
        st.queue.append(item)
        if not st.busy and not st.blocked and len(st.queue) == 1:
            self._advance(st)

    def _advance(self, st: _Stream) -> None:
        q = st.queue
        env = self.env
        while q and not st.busy and not st.blocked:
            item = q[0]
            now = env._now
            if item[2] > now:
                st.blocked = True
                env.timeout(item[2] - now).callbacks.append(lambda _e, st=st: self._unblock(st))
                return
            kind = item[0]
            if kind == _OP:
                q.popleft()
                # _start, inlined for the common case: a compute op alone on an idle device
                op = item[1]
                hit = self._op_cost.get(id(op))
                if hit is None or hit[0] is not op:
                    hit = self._cost_entry(op)
                op_class = hit[3]
                run = _Run(st, item, hit[1], hit[2], now, op_class, hit[4])
                st.busy = True
                st.current = run
                running = self._running[st.device]
                running.append(run)
                if op_class == "comm":
                    self._join(run, op, st.device)
                elif len(running) == 1:    # alone on an idle device: full speed, no contention model
                    run.rate = 1.0
                    run.ev = _Finish(env, run, self._on_timeout, hit[4])
                else:
                    self._reflow((st.device,), ())
                return
            if kind == _RECORD:
                q.popleft()
                self._complete_event(item[3])
            elif item[3].done:
                q.popleft()
            else:
                st.blocked = True
                item[3]._streams.append(st)
                return

    def _unblock(self, st: _Stream) -> None:
        st.blocked = False
        self._advance(st)

    def _complete_event(self, ev: Event) -> None:
        ev.done = True
        ev.time = self._end = self.env._now
        for st in ev._streams:
            st.blocked = False
            self._advance(st)
        ev._streams = []
        for fn in ev._callbacks:
            fn(ev.time)
        ev._callbacks = []
        if ev._sim is not None and not ev._sim.triggered:
            ev._sim.succeed()

    # ------------------------------------------------------------------------------ ops
    def _cost_entry(self, op) -> tuple:
        """(op, OpCost, kind, op_class, isolated seconds), cached by the op object's identity."""
        kind = op.kind if type(op) is Collective else _KIND[type(op).__name__]
        cost = self.cost.cost(op)
        hit = self._op_cost[id(op)] = (op, cost, kind, cost.op_class, cost.seconds)
        return hit

    def _join(self, run: _Run, op, device: int) -> None:
        group = op.group
        key = (type(op).__name__, getattr(op, "kind", ""), group)
        gkey = (key, run.item[6])
        g = self._groups.get(gkey)
        if g is None:
            g = self._groups[gkey] = _Group(op, len(group))
        elif g.op.bytes != op.bytes:
            raise SimulationError(f"{_describe(op)} on device {device} does not match the "
                                  f"{g.op.bytes:.0f} bytes its other members launched")
        g.runs.append(run)
        if len(g.runs) < g.size:
            self._reflow((device,), ())
            return
        del self._groups[gkey]
        links = tuple(("port", d) for d in group) + ((("shared",),) if self._shared else ())
        act = _Activity(tuple(g.runs), links, run.cost.seconds, self.env._now)
        for r in g.runs:
            r.activity = act
        for link in links:
            self._links.setdefault(link, {})[act] = None
        self._reflow(group, links)

    def _reflow(self, devices: Iterable[int], links: Iterable) -> None:
        """Recompute rates of everything on `devices` and `links` and reschedule finish times."""
        touched: dict = {}
        rates_of = self.contention.rates
        for d in devices:
            running = self._running[d]
            if not running:
                continue
            if len(running) == 1:
                run = running[0]
                run.factor = 1.0
                if run.activity is not None:
                    touched[run.activity] = None
                continue
            for run, rate in zip(running, rates_of(running)):
                run.factor = rate
                if run.activity is not None:
                    touched[run.activity] = None
        for link in links:
            for act in self._links.get(link, ()):
                touched[act] = None
        now = self.env._now
        for act in touched:
            rate = min(r.factor for r in act.runs)
            for link in act.links:
                rate = min(rate, 1.0 / len(self._links[link]))
            if rate == act.rate:
                continue
            act.remaining -= act.rate * (now - act.last)
            if act.remaining < 0.0:
                act.remaining = 0.0
            act.last = now
            act.rate = rate
            act.ev = _Finish(self.env, act, self._on_timeout, act.remaining / rate)

    def _on_timeout(self, ev) -> None:
        act = ev.act
        if act.ev is not ev:           # the rate changed since and a newer timeout is due
            return
        if type(act) is _Activity:     # a collective: several runs, links
            self._finish(act)
            return
        # a single-device op (the common case), inlined
        now = self._end = self.env._now
        st = act.stream
        d = st.device
        running = self._running[d]
        running.remove(act)
        item = act.item
        self._rows.append((d, st.index, st.priority, item[1].name, act.kind, act.op_class, item[4],
                           item[5], act.start, now, act.start, act.cost.seconds))
        st.busy = False
        st.current = None
        if running:
            self._reflow((d,), ())
        if st.queue:
            self._advance(st)

    def _finish(self, act) -> None:
        now = self.env._now
        self._end = now
        rows = self._rows
        busy = []
        for run in act.runs:
            st = run.stream
            item = run.item
            op = item[1]
            d = st.device
            running = self._running[d]
            running.remove(run)
            if running:
                busy.append(d)
            rows.append((d, st.index, st.priority, op.name, run.kind, run.op_class, item[4],
                         item[5], run.start, now, act.start, run.cost.seconds))
            st.busy = False
            st.current = None
        links = []
        for link in act.links:
            members = self._links[link]
            del members[act]
            if members:
                links.append(link)
        if busy or links:
            self._reflow(busy, links)
        for run in act.runs:
            self._advance(run.stream)

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

    def _describe_stream(self, st: _Stream) -> str:
        where = f"device {st.device} stream {st.index} (priority {st.priority})"
        if st.busy and st.current is not None:
            run = st.current
            op = run.item[1]
            if run.activity is None:
                key = (type(op).__name__, getattr(op, "kind", ""), op.group)
                g = next((g for (k, _), g in self._groups.items() if k == key and run in g.runs), None)
                have = {r.stream.device for r in g.runs} if g else {st.device}
                missing = [d for d in op.group if d not in have]
                return f"{where}: {_describe(op)} waits for device(s) {missing} to start it"
            return f"{where}: running {_describe(op)}"
        item = st.queue[0]
        if item[0] == _WAIT:
            ev = item[3]
            why = "which was never recorded" if not ev.recorded else \
                f"recorded on device {ev.device} but not yet reached"
            return f"{where}: head waits on event {ev.name!r} {why}"
        if item[0] == _OP:
            return f"{where}: head {_describe(item[1])} not started"
        return f"{where}: head records event {item[3].name!r}"

    def _trace(self) -> Trace:
        reqs = {}
        for row in self._rows:
            r = row[6]
            if r >= 0 and (r not in reqs or row[8] < reqs[r]):
                reqs[r] = row[8]
        from .trace import RequestRecord
        records = []
        for rid, (arrival, _s, first, finish, req) in self._requests.items():
            start = reqs.get(rid, finish)
            records.append(RequestRecord(rid, arrival, start, first if first is not None else finish,
                                         finish, req.prompt_tokens, req.output_tokens, req.batch,
                                         req.measured))
        meta = {"devices": self.devices, "hardware": self.hw.name, "makespan_s": self._end}
        return Trace(self._rows, records, meta)


def _describe(op) -> str:
    if isinstance(op, Collective):
        return f"{op.kind} {op.name!r} over devices {op.group}"
    if isinstance(op, SendRecv):
        return f"send/recv {op.name!r} {op.src}->{op.dst}"
    return f"{type(op).__name__.lower()} {op.name!r}"
