"""The simulated machine's mechanics under SimRuntime: streams, events, ops as a fluid.

`_Machine` holds the parts of SimRuntime that the runtime verbs never expose: advancing stream FIFOs,
completing events, starting ops (a collective joins its group's instance and spins until every
member has started), recomputing rates whenever the set of running ops on a device or link changes,
and finishing ops into trace rows. See engine.py for the semantics; the hot path (an op alone on an
idle device) avoids the contention model and SimPy's Timeout checks.
"""
from __future__ import annotations

from collections import deque
from typing import Iterable, Optional

from simpy.events import NORMAL, Event as _SimEvent

from .errors import SimulationError
from .ops import COMM_TYPES, Collective, SendRecv
from .segment import _SEG
from .trace import CHUNK_OPS

_OP, _RECORD, _WAIT = 0, 1, 2
_COMM_TYPES = COMM_TYPES
OP_CACHE_ENTRIES = 4096        # ops whose (cost, kind, class) the engine keeps by identity


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
    """A FIFO of items on one device, and the op it runs (a stream runs one op at a time, so the
    stream carries that op's state: what the contention model sees, and, for a single-device op,
    the fluid activity itself; a collective's member streams share one `_Activity`)."""
    __slots__ = ("device", "index", "priority", "queue", "busy", "blocked",
                 "item", "cost", "kind", "start", "op_class", "factor", "activity", "runs",
                 "links", "remaining", "rate", "last", "ev")

    def __init__(self, device: int, index: int, priority: int):
        self.device, self.index, self.priority = device, index, priority
        self.queue: deque = deque()
        self.busy = False          # an op is running (or spinning) on it
        self.blocked = False       # waiting for an event or for its head's launch to finish
        self.activity = None       # while busy: itself (single-device op) or a collective's _Activity
        self.runs = (self,)
        self.links = ()
        self.ev = None


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


class _Activity:
    """A collective's work in progress: remaining isolated seconds, shared by its runs (the member
    streams, one per device).
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


class _Machine:
    """Mechanics of SimRuntime (a mixin: the state lives in SimRuntime.__init__)."""

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
                seg = self._seg_on[st.device]
                if seg is not None:            # an op starts beside a running segment
                    self._seg_split(seg)
                # _start, inlined for the common case: a compute op alone on an idle device
                op = item[1]
                hit = self._op_cost.get(id(op))
                if hit is None or hit[0] is not op:
                    hit = self._cost_entry(op)
                op_class = hit[3]
                st.busy = True
                st.item = item
                st.cost = hit[1]
                st.kind = hit[2]
                st.start = st.last = now
                st.op_class = op_class
                st.factor = 1.0
                st.remaining = hit[4]
                st.rate = 0.0
                running = self._running[st.device]
                running.append(st)
                if op_class == "comm":
                    st.activity = None
                    self._join(st, op, st.device)
                    return
                st.activity = st
                if len(running) == 1:      # alone on an idle device: full speed, no contention model
                    st.rate = 1.0
                    st.ev = _Finish(env, st, self._on_timeout, hit[4])
                else:
                    self._reflow((st.device,), ())
                return
            if kind == _RECORD:
                q.popleft()
                self._complete_event(item[3])
            elif kind == _SEG:
                q.popleft()
                self._seg_arrive(st, item[1])
                return
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
        kind = op.family
        cost = self.cost.cost(op)
        cache = self._op_cost
        if len(cache) >= OP_CACHE_ENTRIES:     # bounded: ops are re-made every step
            cache.clear()
        hit = cache[id(op)] = (op, cost, kind, cost.op_class, cost.seconds)
        return hit

    def _join(self, run: _Stream, op, device: int) -> None:
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
        act = self._new_activity(tuple(g.runs), group, run.cost.seconds, self.env._now)
        self._reflow(group, act.links)

    def _new_activity(self, runs, group, seconds: float, now: float) -> _Activity:
        """A collective's transfer over its members' ports (and the shared link, if any)."""
        links = tuple(("port", d) for d in group) + ((("shared",),) if self._shared else ())
        act = _Activity(runs, links, seconds, now)
        for r in runs:
            r.activity = act
        for link in links:
            self._links.setdefault(link, {})[act] = None
        return act

    def _finish_event(self, act, callback, delay: float) -> "_Finish":
        return _Finish(self.env, act, callback, delay)

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
        # a single-device op (the common case), inlined: the activity is its stream
        now = self._end = self.env._now
        st = act
        d = st.device
        running = self._running[d]
        running.remove(st)
        item = st.item
        self._rows.append((d, st.index, st.priority, item[1].name, st.kind, st.op_class, item[4],
                           item[5], st.start, now, st.start, st.cost.seconds))
        st.busy = False
        st.activity = None
        if len(self._rows) >= CHUNK_OPS:
            self._fold()
        if running:
            self._reflow((d,), ())
        if st.queue:
            self._advance(st)

    def _finish(self, act) -> None:
        now = self.env._now
        self._end = now
        rows = self._rows
        busy = []
        for st in act.runs:
            item = st.item
            d = st.device
            running = self._running[d]
            running.remove(st)
            if running:
                busy.append(d)
            rows.append((d, st.index, st.priority, item[1].name, st.kind, st.op_class, item[4],
                         item[5], st.start, now, act.start, st.cost.seconds))
            st.busy = False
            st.activity = None
        if len(rows) >= CHUNK_OPS:
            self._fold()
        links = []
        for link in act.links:
            members = self._links[link]
            del members[act]
            if members:
                links.append(link)
        if busy or links:
            self._reflow(busy, links)
        for st in act.runs:
            self._advance(st)

    def _fold(self) -> None:
        """Fold the recorded rows into the recorder's totals. No op not yet recorded can have
        started before the earliest start among running ops (or now, for ops not started)."""
        horizon = self.env._now
        for running in self._running:
            for st in running:
                if st.start < horizon:
                    horizon = st.start
        self._recorder.fold(horizon)

    # ------------------------------------------------------------------------------ driving

    def _describe_stream(self, st: _Stream) -> str:
        where = f"device {st.device} stream {st.index} (priority {st.priority})"
        if st.busy:
            op = st.item[1]
            if st.activity is None:
                key = (type(op).__name__, getattr(op, "kind", ""), op.group)
                g = next((g for (k, _), g in self._groups.items() if k == key and st in g.runs), None)
                have = {r.device for r in g.runs} if g else {st.device}
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


def _describe(op) -> str:
    if isinstance(op, Collective):
        return f"{op.kind} {op.name!r} over devices {op.group}"
    if isinstance(op, SendRecv):
        return f"send/recv {op.name!r} {op.src}->{op.dst}"
    return f"{type(op).__name__.lower()} {op.name!r}"
