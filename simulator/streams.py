"""The simulated machine's records: events, stream items, streams, collective activities.

Plain slotted classes and named tuples that `Machine` (machine.py) and its segments (segment.py)
move around; they hold state and no behaviour.
"""
from __future__ import annotations

from collections import deque
from typing import Any, NamedTuple, Optional

from simpy.events import NORMAL, Event as _SimEvent

from .ops import Collective, SendRecv

OP, RECORD, WAIT, SEGMENT = 0, 1, 2, 3       # StreamItem kinds


class StreamItem(NamedTuple):
    """One entry of a stream's FIFO. `ready_s`: when the host finished issuing it (it cannot start
    earlier); `seq`: for a collective, which instance of its group this device's launch joins."""
    kind: int                  # OP, RECORD, WAIT or SEGMENT
    op: Any                    # the op (OP) or the Segment (SEGMENT)
    ready_s: float
    event: Any                 # the Event (RECORD, WAIT)
    request: int
    phase: str
    seq: int


class Event:
    """A CUDA-like event: recorded once on a stream, completes when that stream reaches it.
    Strategies see only `name`; the rest is the machine's."""
    __slots__ = ("name", "done", "time", "device", "recorded", "streams", "callbacks", "signal")

    def __init__(self, name: str = ""):
        self.name = name
        self.done = False
        self.time: Optional[float] = None
        self.device: Optional[int] = None
        self.recorded = False
        self.streams: list = []        # streams blocked waiting on it
        self.callbacks: list = []      # host callbacks fn(time)
        self.signal = None             # a SimPy event the host synchronises on

    def __repr__(self) -> str:
        return f"Event({self.name!r}, done={self.done})"


class Stream:
    """A FIFO of items on one device, and the op it runs (a stream runs one op at a time, so the
    stream carries that op's state: what the contention model sees, and, for a single-device op,
    the fluid activity itself; a collective's member streams share one `Activity`)."""
    __slots__ = ("device", "index", "priority", "queue", "busy", "blocked",
                 "item", "cost", "kind", "start", "op_class", "factor", "activity", "runs",
                 "links", "remaining", "rate", "last", "ev", "free_s")

    def __init__(self, device: int, index: int, priority: int):
        self.device, self.index, self.priority = device, index, priority
        self.queue: deque = deque()
        self.busy = False          # an op (or a segment) is running on it
        self.blocked = False       # waiting for an event or for its head's launch to finish
        self.activity = None       # while busy: itself (single-device op) or a collective's Activity
        self.runs = (self,)
        self.links = ()
        self.ev = None
        self.free_s = 0.0          # when it finished its last item (Machine.idle_wakeup_s)


class Activity:
    """A collective's work in progress: remaining isolated seconds, shared by its runs (the member
    streams, one per device). `ev` is the pending finish; one that is no longer `ev` is stale."""
    __slots__ = ("runs", "links", "remaining", "rate", "last", "ev", "start")

    def __init__(self, runs, links, work, now):
        self.runs, self.links = runs, links
        self.remaining, self.rate, self.last, self.ev, self.start = work, 0.0, now, None, now


class Group:
    """A collective instance waiting for its members."""
    __slots__ = ("op", "runs", "size")

    def __init__(self, op, size):
        self.op, self.runs, self.size = op, [], size


class Finish(_SimEvent):
    """A SimPy event scheduled at an activity's projected finish (a Timeout without its checks: the
    delay is known to be >= 0). `act` is what it finishes. Sets SimPy's `_value`/`_ok` as Timeout
    does (simpy is pinned; tests/test_engine_internals.py breaks if that changes)."""

    def __init__(self, env, act, callback, delay):
        self.env = env
        self.callbacks = [callback]
        self._value = None
        self._ok = True
        self.act = act
        self.at = env._now + delay          # when it fires (SimPy computes the same sum)
        env.schedule(self, NORMAL, delay)


def describe(op) -> str:
    if isinstance(op, Collective):
        return f"{op.kind} {op.name!r} over devices {op.group}"
    if isinstance(op, SendRecv):
        return f"send/recv {op.name!r} {op.src}->{op.dst}"
    return f"{type(op).__name__.lower()} {op.name!r}"


def group_key(op) -> tuple:
    """What identifies a collective's group for NCCL-style matching."""
    return (type(op).__name__, getattr(op, "kind", ""), op.group)


def describe_stream(st: Stream, groups: dict) -> str:
    """What a stream with work left is stuck on (deadlock reports); `groups`: the machine's
    collective instances waiting for members."""
    where = f"device {st.device} stream {st.index} (priority {st.priority})"
    if st.busy:
        op = StreamItem._make(st.item).op
        if st.activity is None:
            key = group_key(op)
            g = next((g for (k, _), g in groups.items() if k == key and st in g.runs), None)
            have = {r.device for r in g.runs} if g else {st.device}
            missing = [d for d in op.group if d not in have]
            return f"{where}: {describe(op)} waits for device(s) {missing} to start it"
        return f"{where}: running {describe(op)}"
    item = StreamItem._make(st.queue[0])
    if item.kind == WAIT:
        ev = item.event
        why = "which was never recorded" if not ev.recorded else \
            f"recorded on device {ev.device} but not yet reached"
        return f"{where}: head waits on event {ev.name!r} {why}"
    if item.kind == OP:
        return f"{where}: head {describe(item.op)} not started"
    if item.kind == SEGMENT:
        return f"{where}: head is a sequence of {len(item.op.ops)} ops, not started"
    return f"{where}: head records event {item.event.name!r}"
