"""Segments: a sequence of ops launched on every device of a group (`launch_seq`), simulated as one
timed unit when nothing else can touch those devices (DESIGN §2, resolution).

A segment is exact, not approximate: with the devices to itself, op k on every member starts at
``max(end of op k-1, its launch time)`` and ends its isolated time later; a collective's members
start together (the group arrived together and ran the same ops), so it transfers at once, alone on
its links, at full rate. So one pass over the sequence (r_k: op k's launch time, c_k: its isolated
time, t: when the group reached the segment) gives every time, with the very float operations the
op-level engine performs (bit-identical):

    if r_k > t: t = t + (r_k - t);   start_k = t;   t = t + c_k;   end_k = t

and once per segment, not once per op per device.

When it applies (`plan`): the members' host clocks are equal (so are their launch times), every
collective's group is the segment's group, each member's collective sequence numbers agree, and a
segment with communication on a machine with a shared link spans every device (no other group's
transfer can share that link). It runs only when every member reaches it at the same time;
otherwise its ops are put back on the member streams as single ops (`expand`). If an op starts on
another stream of a member device while the segment runs, the segment is split at that moment
(`split`): finished ops are recorded, the running op becomes an ordinary running op (or collective
activity) with its remaining work, and the rest go back on the streams, so the op-level engine takes
over with exactly the state it would have had.
"""
from __future__ import annotations

import bisect

import numpy as np

from .trace import KEEP_ALL

_SEG = 3          # stream item kind (beside machine.py's _OP, _RECORD, _WAIT)


class Segment:
    """One launch_seq in flight: its ops, launch times and, once running, the planned times."""
    __slots__ = ("ops", "devices", "stream", "request", "phase", "ready", "seqs", "arrived",
                 "state", "start", "end", "costs", "totals", "ev", "arrive_s")

    def __init__(self, ops, devices, stream, request, phase, ready, seqs):
        self.ops, self.devices, self.stream = ops, devices, stream
        self.request, self.phase = request, phase
        self.ready = ready           # numpy array: each op's launch-done time (equal on every member)
        self.seqs = seqs             # per op: the collective sequence number (0 for compute)
        self.arrived: list = []      # member streams that reached the segment
        self.state = "queued"        # queued -> running -> done, or expanded / split
        self.costs: list = []        # per op: the engine's cost entry (op, OpCost, kind, class, s)
        self.totals = (0.0, 0.0)     # isolated compute and communication seconds of all ops
        self.ev = None
        self.arrive_s = None


class SegmentMixin:
    """launch_seq and segment mechanics of SimRuntime (state: `_seg_on`, per device)."""

    def launch_seq(self, ops, devices, stream: int = 0, request: int = -1, phase: str = "") -> None:
        """Launch `ops` in order on every device of `devices`, op-major: exactly
        ``for op in ops: for d in devices: launch(op, d, stream, request, phase)`` (an SPMD launch,
        as a captured CUDA graph replayed on each device)."""
        devices = tuple(devices)
        seg = self._plan(ops, devices, stream, request, phase) if self.segments else None
        if seg is None:
            launch = self.launch
            for op in ops:
                for d in devices:
                    launch(op, d, stream, request, phase)
            return
        for d in devices:
            self._enqueue(d, stream, (_SEG, seg, 0.0, None, request, phase, 0))

    def _plan(self, ops, devices, stream, request, phase):
        """The Segment for this launch, or None where the closed form may not hold."""
        if len(ops) < 2:
            return None
        host, now = self._host, self.env._now
        base = host[devices[0]]
        if any(host[d] != base for d in devices):
            return None
        group = tuple(sorted(devices))
        seqs = [0] * len(ops)
        counters: dict = {}
        entries = []
        cache_get, cost_entry = self._op_cost.get, self._cost_entry
        comm_s = compute_s = 0.0
        for i, op in enumerate(ops):
            hit = cache_get(id(op))
            if hit is None or hit[0] is not op:
                hit = cost_entry(op)
            entries.append(hit)
            if hit[3] != "comm":
                compute_s += hit[4]
                continue
            comm_s += hit[4]
            if tuple(sorted(op.group)) != group:
                return None
            key = (type(op).__name__, getattr(op, "kind", ""), op.group)
            if key not in counters:
                got = {self._coll_seq.get((d,) + key, 0) for d in devices}
                if len(got) != 1:
                    return None
                counters[key] = got.pop()
            seqs[i] = counters[key]
            counters[key] += 1
        if counters and self._shared and len(devices) < self.devices:
            return None
        for key, nxt in counters.items():
            for d in devices:
                self._coll_seq[(d,) + key] = nxt
        steps = np.full(len(ops) + 1, self.launch_s)
        steps[0] = base if base > now else now
        ready = np.add.accumulate(steps)[1:]          # sequential, as launch() adds them
        last = float(ready[-1])
        for d in devices:
            host[d] = last
        seg = Segment(ops, devices, stream, request, phase, ready, seqs)
        seg.costs, seg.totals = entries, (compute_s, comm_s)
        return seg

    # ------------------------------------------------------------------------------ arrival
    def _seg_arrive(self, st, seg) -> None:
        """Member stream `st` reached `seg` (it is at the head of its FIFO)."""
        if seg.state == "expanded":
            self._expand_one(st, seg, 0)
            return
        now = self.env._now
        st.busy = True
        seg.arrived.append(st)
        if seg.arrive_s is None:
            seg.arrive_s = now
            if len(seg.devices) > 1:       # give same-time arrivals their turn, then decide
                self.env.timeout(0).callbacks.append(lambda _e: self._seg_check(seg))
        if len(seg.arrived) == len(seg.devices) and seg.state == "queued":
            if now == seg.arrive_s:
                self._seg_run(seg)
            else:
                self._seg_expand(seg)

    def _seg_check(self, seg) -> None:
        if seg.state == "queued" and len(seg.arrived) < len(seg.devices):
            self._seg_expand(seg)

    def _seg_expand(self, seg) -> None:
        seg.state = "expanded"
        self.segment_counts["expanded"] += 1
        for st in seg.arrived:
            st.busy = False
            self._expand_one(st, seg, 0)

    def _expand_one(self, st, seg, first: int) -> None:
        """Put ops first.. of `seg` back at the front of `st` as single ops, and go on."""
        items = self._seg_items(seg, st.device, first)
        st.queue.extendleft(reversed(items))
        self._advance(st)

    def _seg_items(self, seg, device: int, first: int) -> list:
        ready, seqs, ops = seg.ready, seg.seqs, seg.ops
        rid, phase = seg.request, seg.phase
        return [(0, ops[k], float(ready[k]), None, rid, phase, seqs[k]) for k in range(first, len(ops))]

    # ------------------------------------------------------------------------------ running
    def _seg_run(self, seg) -> None:
        now = self.env._now
        starts, ends = [], []
        t = now
        for r, h in zip(seg.ready.tolist(), seg.costs):
            if r > t:
                t = t + (r - t)          # as the engine's wait for a launch ends
            starts.append(t)
            t = t + h[4]
            ends.append(t)
        seg.start, seg.end = starts, ends
        seg.state = "running"
        self.segment_counts["run"] += 1
        for d in seg.devices:
            self._seg_on[d] = seg
        seg.ev = self._finish_event(seg, self._seg_done, t - now)

    def _seg_done(self, ev) -> None:
        seg = ev.act
        if seg.ev is not ev:
            return                      # split meanwhile
        self._end = self.env._now
        self._seg_record(seg, len(seg.ops))
        seg.state = "done"
        for st in seg.arrived:
            self._seg_on[st.device] = None
            st.busy = False
        for st in seg.arrived:
            self._advance(st)

    def _seg_record(self, seg, n: int) -> None:
        """Record ops 0..n-1 of a running segment on every member: rows while the recorder keeps
        them, else straight into its totals (the segment had its devices to itself)."""
        if n == 0:
            return
        rec = self._recorder
        entries = seg.costs
        if rec.keep_ops == KEEP_ALL or len(rec.kept) + len(rec.buffer) < rec.keep_ops:
            s, e = seg.start, seg.end
            rid, phase = seg.request, seg.phase
            for st in seg.arrived:
                d, idx, pr = st.device, st.index, st.priority
                self._rows.extend((d, idx, pr, h[0].name, h[2], h[3], rid, phase, s[k], e[k], s[k], h[4])
                                  for k, h in zip(range(n), entries))
            return
        if n == len(entries):
            compute_s, comm_s = seg.totals
        else:
            compute_s = sum(h[4] for h in entries[:n] if h[3] != "comm")
            comm_s = sum(h[4] for h in entries[:n] if h[3] == "comm")
        for st in seg.arrived:
            rec.add_exclusive(st.device, compute_s, comm_s, n)
        rec.note_start(seg.request, seg.start[0])

    def _seg_split(self, seg) -> None:
        """An op is about to start beside the segment: hand its state to the op-level engine."""
        now = self.env._now
        n_done = bisect.bisect_right(seg.end, now)
        self._seg_record(seg, n_done)
        seg.state = "split"
        self.segment_counts["split"] += 1
        seg.ev = None
        for st in seg.arrived:
            self._seg_on[st.device] = None
        k = n_done
        if k < len(seg.ops) and seg.start[k] <= now:
            self._seg_resume(seg, k)
            k += 1
        else:
            for st in seg.arrived:
                st.busy = False
        for st in seg.arrived:
            st.queue.extendleft(reversed(self._seg_items(seg, st.device, k)))
            if not st.busy:
                self._advance(st)

    def _seg_resume(self, seg, k: int) -> None:
        """Op k of `seg` is running on every member since start[k]: make it an ordinary running op
        (or collective activity) whose rate-1 progress since then the next reflow accounts for."""
        hit = seg.costs[k]
        op, cost, kind, op_class, seconds = hit
        s, e, now = seg.start[k], seg.end[k], self.env._now
        runs = tuple(seg.arrived)
        act = self._new_activity(runs, op.group, seconds, s) if op_class == "comm" else None
        for st in runs:
            st.item = (0, op, float(seg.ready[k]), None, seg.request, seg.phase, seg.seqs[k])
            st.cost, st.kind, st.op_class = cost, kind, op_class
            st.start = st.last = s
            st.factor, st.remaining, st.rate = 1.0, seconds, 1.0
            st.activity = act if act is not None else st
            self._running[st.device].append(st)
            if act is None:
                st.ev = self._finish_event(st, self._on_timeout, e - now)
        if act is not None:
            act.rate, act.last = 1.0, s
            act.ev = self._finish_event(act, self._on_timeout, e - now)
