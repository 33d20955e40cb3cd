"""Segments: a sequence of ops launched on every device of a group (`launch_seq`), simulated as one
timed unit when nothing else can touch those devices (DESIGN §2, resolution).

A segment is exact, not approximate: with the devices to itself, op k on every member starts at
``max(end of op k-1, its launch time)`` and ends its isolated time later; a collective's members
start together (the group arrived together and ran the same ops), so it transfers at once, alone on
its links, at full rate. So one pass over the sequence (r_k: op k's launch time, c_k: its isolated
time, t: when the group reached the segment) gives every time, with the very float operations the
op-level engine performs:

    if r_k > t: t = t + (r_k - t);   start_k = t;   t = t + c_k;   end_k = t

once per segment, not once per op per device. The one event at the segment's end is scheduled
from its start; where SimPy's clock cannot reach the op-level end time from there (start + delay
rounds past it), it lands one ulp away (`delay_to`), so later times may differ from op-level
ones by about 1e-16 relative; every recorded start and end within a segment is exact.

When it applies (`plan`): the members' host clocks are equal (so are their launch times), every
collective's group is the segment's group, each member's collective sequence numbers agree, and a
segment with communication on a machine with a shared link spans every device (no other group's
transfer can share that link). It runs only when every member reaches it at the same time
and nothing else runs on the members then; otherwise its ops are put back on the member streams as
single ops (`expand`). If an op starts on another stream of a member device while the segment runs,
the segment is split at that moment
(`split`): finished ops are recorded, the running op becomes an ordinary running op (or collective
activity) with its remaining work, and the rest go back on the streams, so the op-level engine takes
over with exactly the state it would have had.
"""
from __future__ import annotations

import bisect
import math

import numpy as np

from .streams import OP, StreamItem, group_key
from .trace import OpRecord


class Segment:
    """One launch_seq in flight: its ops, launch times and, once running, the planned times."""
    __slots__ = ("ops", "devices", "stream", "request", "phase", "ready", "seqs", "arrived",
                 "state", "start", "end", "costs", "secs", "totals", "ev", "arrive_s", "fixed")

    def __init__(self, ops, devices, stream, request, phase, ready, seqs):
        self.ops, self.devices, self.stream = ops, devices, stream
        self.request, self.phase = request, phase
        self.ready = ready           # numpy array: each op's launch-done time (equal on every member)
        self.seqs = seqs             # per op: the collective sequence number (0 for compute)
        self.arrived: list = []      # member streams that reached the segment
        self.state = "queued"        # queued -> running -> done, or expanded / split
        self.costs: list = []        # per op: the machine's cost entry (op, OpCost, kind, class, s)
        self.secs: list = []         # per op: its isolated seconds
        self.totals = (0.0, 0.0)     # isolated compute and communication seconds of all ops
        self.start: list = []
        self.end: list = []
        self.ev = None
        self.arrive_s = None
        self.fixed = None            # (time the stream reaches it, starts, ends) planned ahead


class FloatView:
    """A float array read as the list of Python floats it holds (each converted when read): a
    paced segment's times and seconds (paced.py), which its usual path reads at two places."""
    __slots__ = ("a",)

    def __init__(self, a):
        self.a = a

    def __len__(self) -> int:
        return len(self.a)

    def __getitem__(self, k: int) -> float:
        return float(self.a[k])

    def __iter__(self):
        return iter(self.a.tolist())


class OneGroupSeqs:
    """A segment's collective sequence numbers where its collectives are one group's: the i-th
    (op comms[i]) has first + i, any other op 0 (the list paced._segment would build)."""
    __slots__ = ("comms", "first", "n")

    def __init__(self, comms: list, first: int, n: int):
        self.comms, self.first, self.n = comms, first, n

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, k: int) -> int:
        i = bisect.bisect_left(self.comms, k)
        return self.first + i if i < len(self.comms) and self.comms[i] == k else 0


def plan(m, ops, devices, group_devices, stream, request, phase):
    """The Segment for this launch on Machine `m`, or None where the closed form may not hold
    (then the caller launches the ops one by one). `devices` are the ones simulated,
    `group_devices` all that the launch covers (the same, unless some mirror others). Advances the
    host clocks and collective counters exactly as the single launches would. A step's ops repeat a
    few op objects (one layer's, times the layers), so the per-op work is done once per distinct
    op."""
    if len(ops) < 2:
        return None
    host, now = m.host_s, m.env._now
    base = host[devices[0]]
    if any(host[d] != base for d in devices):
        return None
    ids = list(map(id, ops))
    table: dict = {}
    comm_ids = set()
    group = tuple(sorted(group_devices))
    for op in dict(zip(ids, ops)).values():         # each distinct op object once
        hit = m.op_cost.get(id(op))
        if hit is None or hit[0] is not op:
            hit = m.cost_entry(op)
        table[id(op)] = hit
        if hit[3] == "comm":
            if tuple(sorted(op.group)) != group:
                return None
            comm_ids.add(id(op))
    entries = list(map(table.__getitem__, ids))
    seqs = [0] * len(ops)
    secs = [h[4] for h in entries]
    comm_s = 0.0
    if comm_ids:
        if m.shared and len(group_devices) < m.devices:
            return None
        counters: dict = {}
        for i in [i for i, oid in enumerate(ids) if oid in comm_ids]:
            key = group_key(ops[i])
            if key not in counters:
                got = {m.coll_seq.get((d,) + key, 0) for d in devices}
                if len(got) != 1:
                    return None
                counters[key] = got.pop()
            seqs[i] = counters[key]
            counters[key] += 1
            comm_s += secs[i]
        for key, nxt in counters.items():
            for d in devices:
                m.coll_seq[(d,) + key] = nxt
    steps = np.full(len(ops) + 1, m.launch_s)
    steps[0] = base if base > now else now
    ready = np.add.accumulate(steps)[1:]          # sequential, as launch() adds them
    last = float(ready[-1])
    for d in devices:
        host[d] = last
    seg = Segment(ops, devices, stream, request, phase, ready, seqs)
    seg.costs, seg.secs, seg.totals = entries, secs, (sum(secs) - comm_s, comm_s)
    return seg


# ------------------------------------------------------------------------------ arrival
def arrive(m, st, seg) -> None:
    """Member stream `st` reached `seg` (it is at the head of its FIFO)."""
    if seg.state == "expanded":
        _expand_one(m, st, seg)
        return
    now = m.env._now
    st.busy = True
    seg.arrived.append(st)
    if seg.arrive_s is None:
        seg.arrive_s = now
        if len(seg.devices) > 1:       # give same-time arrivals their turn, then decide
            m.env.timeout(0).callbacks.append(lambda _e: _check(m, seg))
    if len(seg.arrived) == len(seg.devices) and seg.state == "queued":
        if now == seg.arrive_s and _alone(m, seg.devices):
            _run(m, seg)
        else:
            _expand(m, seg)


def _alone(m, devices) -> bool:
    """Nothing else runs on `devices` (no op, no other segment), so nothing else uses their links:
    a segment with communication spans every device where links are shared (see plan)."""
    return all(not m.running[d] and m.seg_on[d] is None for d in devices)


def _check(m, seg) -> None:
    if seg.state == "queued" and len(seg.arrived) < len(seg.devices):
        _expand(m, seg)


def _expand(m, seg) -> None:
    seg.state = "expanded"
    m.segment_counts["expanded"] += 1
    for st in seg.arrived:
        st.busy = False
        _expand_one(m, st, seg)


def _expand_one(m, st, seg) -> None:
    """Put `seg`'s ops back at the front of `st` as single ops, and go on."""
    st.queue.extendleft(reversed(_items(seg, 0)))
    m.advance(st)


def _items(seg, first: int) -> list:
    ready, seqs, ops = seg.ready, seg.seqs, seg.ops
    rid, phase = seg.request, seg.phase
    return [StreamItem(OP, ops[k], float(ready[k]), None, rid, phase, seqs[k])
            for k in range(first, len(ops))]


# ------------------------------------------------------------------------------ running
def _run(m, seg) -> None:
    now = m.env._now
    if seg.fixed is not None and seg.fixed[0] == now:     # planned ahead (paced.py)
        _, seg.start, seg.end = seg.fixed
        _start(m, seg, now, seg.end[-1])
        return
    seg.start, seg.end = times(seg.ready, seg.secs, now)
    _start(m, seg, now, seg.end[-1])


def times(ready: np.ndarray, secs: list, t: float) -> tuple[list, list]:
    """Start and end of each op, from the stream reaching the first at `t`: the machine's own
    recurrence `if r > t: t = t + (r - t); start = t; t = t + c; end = t` (a plain loop: at about
    40 ns an op it beats a vectorised running sum on steps of a few hundred ops)."""
    starts: list = []
    ends: list = []
    starts_append, ends_append = starts.append, ends.append
    for r, c in zip(ready.tolist(), secs):
        if r > t:
            t = t + (r - t)          # as the machine's wait for a launch ends
        starts_append(t)
        t = t + c
        ends_append(t)
    return starts, ends


def _start(m, seg, now: float, end_s: float) -> None:
    seg.state = "running"
    m.segment_counts["run"] += 1
    for d in seg.devices:
        m.seg_on[d] = seg
    seg.ev = m.finish_event(seg, lambda ev: _done(m, ev), delay_to(now, end_s))


def _done(m, ev) -> None:
    seg = ev.act
    if seg.ev is not ev:
        return                      # split meanwhile
    m.end_s = m.env._now
    _record(m, seg, len(seg.ops))
    seg.state = "done"
    for st in seg.arrived:
        m.seg_on[st.device] = None
        st.busy = False
    for st in seg.arrived:
        m.advance(st)


def _record(m, seg, n: int) -> None:
    """Record ops 0..n-1 of a running segment on every member: rows while the recorder keeps
    them, else straight into its totals (the segment had its devices to itself)."""
    if n == 0:
        return
    rec = m.recorder
    entries = seg.costs
    if rec.wants_rows(seg.end[n - 1]):
        s, e = seg.start, seg.end
        rid, phase = seg.request, seg.phase
        for st in seg.arrived:
            d, idx, pr = st.device, st.index, st.priority
            m.rows.extend(OpRecord(d, idx, pr, h[0].name, h[2], h[3], rid, phase, s[k], e[k], s[k], h[4])
                          for k, h in zip(range(n), entries))
        return
    if n == len(entries):
        compute_s, comm_s = seg.totals
    else:
        compute_s = sum(h[4] for h in entries[:n] if h[3] != "comm")
        comm_s = sum(h[4] for h in entries[:n] if h[3] == "comm")
    for st in seg.arrived:
        rec.add_exclusive(st.device, compute_s, comm_s, n, seg.end[n - 1])
    rec.note_start(seg.request, seg.start[0])


def split(m, seg) -> None:
    """An op is about to start beside the segment: hand its state to the op-level machine."""
    now = m.env._now
    n_done = bisect.bisect_right(seg.end, now)
    _record(m, seg, n_done)
    seg.state = "split"
    m.segment_counts["split"] += 1
    seg.ev = None
    for st in seg.arrived:
        m.seg_on[st.device] = None
    k = n_done
    if k < len(seg.ops) and seg.start[k] <= now:
        _resume(m, seg, k)
        k += 1
    else:
        for st in seg.arrived:
            st.busy = False
    for st in seg.arrived:
        st.queue.extendleft(reversed(_items(seg, k)))
        if not st.busy:
            m.advance(st)


def _resume(m, seg, k: int) -> None:
    """Op k of `seg` is running on every member since start[k]: make it an ordinary running op
    (or collective activity) whose rate-1 progress since then the next reflow accounts for."""
    op, cost, kind, op_class, seconds = seg.costs[k]
    s, e, now = seg.start[k], seg.end[k], m.env._now
    runs = tuple(seg.arrived)
    act = m.new_activity(runs, op.group, seconds, s) if op_class == "comm" else None
    for st in runs:
        st.item = StreamItem(OP, op, float(seg.ready[k]), None, seg.request, seg.phase, seg.seqs[k])
        st.cost, st.kind, st.op_class = cost, kind, op_class
        st.start = st.last = s
        st.factor, st.remaining, st.rate = 1.0, seconds, 1.0
        st.activity = act if act is not None else st
        m.running[st.device].append(st)
        if act is None:
            st.ev = m.finish_event(st, m.on_finish, delay_to(now, e))
    if act is not None:
        act.rate, act.last = 1.0, s
        act.ev = m.finish_event(act, m.on_finish, delay_to(now, e))


def delay_to(now: float, t: float) -> float:
    """A delay d with now + d == t exactly (SimPy schedules at now + delay; the op-level machine
    reaches t as start + isolated time, and a segment must end at that very float)."""
    d = t - now
    for _ in range(64):
        got = now + d
        if got == t:
            return d
        step = d + (t - got)                 # the residual, or at least one ulp towards it
        d = step if step != d else math.nextafter(d, math.inf if got < t else -math.inf)
    return t - now
