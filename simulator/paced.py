"""Paced launches (`Runtime.launch_paced`): a host that launches runs of ops one run at a time,
each once the previous run's last op is about to start, as Liger's hybrid synchronisation does.

The verb means exactly this host program (`literal`):

    for j, run in enumerate(runs):
        if j:
            if until_arrival and a request is waiting: stop
            synchronize on waits[j-1] (one event per device)
        record waits[j] (every device) before the run's last op; launch the run (op-major, every
        device); record mains[j] after it
    -> (runs launched, the last run's waits, its mains)

Simulated literally, each run costs a host wake-up and a few events. `SimRuntime` computes the
same times in one pass (`closed_form`) when nothing else can happen meanwhile: one device is
simulated (a mirrored group), its other streams are idle, its stream holds at most the op it runs
(alone, so its end is fixed) and event records, and the serving layer knows when the next request
arrives. The pass follows the host clock, the records' launch times and the stream, with the float
operations the machine performs, and stops at the first run after which the host would find a
request waiting. Runs before that one become one segment with those times (segment.py); the host
sleeps until the wake-up of that run and launches it literally, so the strategy continues from
exactly the state the literal program leaves.
"""
from __future__ import annotations

from functools import reduce
from itertools import chain
from operator import add, is_, itemgetter
from typing import Generator

import numpy as np

from .segment import FloatView, OneGroupSeqs, Segment, delay_to
from .streams import RECORD, SEGMENT, StreamItem, group_key


def literal(rt, runs, devices, stream, request, phase, until_arrival, first: int = 0) -> Generator:
    """The host program itself, from run `first` (whose host wake-up is now), with its per-device
    loops as the SPMD verbs they are (`record_all`, one-op `launch_seq`); a handle that
    `record_all` gives several devices is synchronised on once (it is one event)."""
    waits = mains = None
    for j in range(first, len(runs)):
        run = runs[j]
        if j > first:
            if until_arrival and rt.serving.waiting():
                return j, waits, mains
            last = None
            for ev in waits:
                if ev is not last:
                    yield from rt.synchronize(ev)
                    last = ev
        end = len(run) - 1
        for i, op in enumerate(run):
            if i == end:
                waits = rt.record_all(f"wait.r{request}", devices, stream)
            rt.launch_seq((op,), devices, stream, request, phase)
        mains = rt.record_all(f"main.r{request}", devices, stream)
    return len(runs), waits, mains


def launch_paced(rt, runs, devices, stream, request, phase, until_arrival) -> Generator:
    devices = tuple(devices)
    plan = closed_form(rt, runs, devices, stream, until_arrival)
    if plan is None:
        return (yield from literal(rt, runs, devices, stream, request, phase, until_arrival))
    k, wake_s, host_s, seg = plan
    m = rt.machine
    if seg is not None:
        for part in seg if type(seg) is tuple else (seg,):
            part.request, part.phase = request, phase
            m.enqueue(part.devices[0], stream,
                      StreamItem(SEGMENT, part, 0.0, None, request, phase, 0))
        for d in devices:
            m.host_s[d] = host_s
        m.segment_counts["paced_runs"] = m.segment_counts.get("paced_runs", 0) + k
    now = rt.env.now
    if wake_s > now:
        yield rt.env.timeout(delay_to(now, wake_s))
    return (yield from literal(rt, runs, devices, stream, request, phase, until_arrival, first=k))


def closed_form(rt, runs, devices, stream, until_arrival):
    """(k, wake-up of run k, host clock then, Segment of runs[:k] or None), or None where the
    literal program must run (module docstring)."""
    m = rt.machine
    if not m.segments or len(runs) < 2 or rt.wakeup_s or rt.callback_s:   # the host reacts late:
        return None                                                     # the literal program
    simulated = [d for d in devices if m.leader_of[d] == d]
    if len(simulated) != 1 or any(m.leader_of[d] != simulated[0] for d in devices):
        return None
    dev = simulated[0]
    arrival = rt.serving.next_arrival_s
    if until_arrival and (arrival is None or rt.serving.waiting()):
        return None
    if not until_arrival:
        arrival = float("inf")
    st = m.streams[dev][stream]
    if m.seg_on[dev] is not None or any(o.busy or o.queue for o in m.streams[dev] if o is not st):
        return None
    now = m.env._now
    t = now
    if st.busy:
        if len(m.running[dev]) != 1 or st.activity is None or st.activity.ev is None:
            return None
        t = st.activity.ev.at                     # it runs alone: its end is fixed
    for item in st.queue:
        if item[0] != RECORD:
            return None
        if item[2] > t:
            t = t + (item[2] - t)
    free_s = t                                    # when the stream reaches the first op
    group = tuple(sorted(devices))
    cost_of, cost_entry = m.op_cost.get, m.cost_entry
    checked: dict = {}                            # id(op) -> its cost entry, once checked
    seen = checked.get
    h, w, launch_s = m.host_s[dev], now, m.launch_s
    if (h if h > now else now) + launch_s <= free_s:   # else the host is behind at once
        fast = _host_ahead(m, dev, stream, runs, checked, group, free_s, h, now, launch_s,
                           arrival if until_arrival else None)
        if fast is not None:
            return fast
    ops, entries, readys, starts, ends = [], [], [], [], []
    readys_append, starts_append, ends_append = readys.append, starts.append, ends.append
    k = last_run = len(runs) - 1
    for j, run in enumerate(runs):
        if j == last_run or (until_arrival and arrival <= w):
            k = j
            break
        if not run:
            return None
        hits = list(map(seen, map(id, run)))
        if None in hits:                          # a distinct op (a layer's recur): check it once
            for i, op in enumerate(run):
                hit = seen(id(op))
                if hit is None:
                    hit = cost_of(id(op))
                    if hit is None or hit[0] is not op:
                        hit = cost_entry(op)
                    if hit[3] == "comm" and tuple(sorted(op.group)) != group:
                        return None
                    checked[id(op)] = hit
                hits[i] = hit
        # The machine's float operations, with `max(h, w)` written out once: after a launch the
        # host clock h is at least the wake-up w, so later maxima are h itself.
        if w > h:
            h = w
        for i in range(len(hits) - 1):
            h = h + launch_s
            if h > t:
                t = t + (h - t)
            readys_append(h)
            starts_append(t)
            t = t + hits[i][4]
            ends_append(t)
        if h > t:                                 # the waits record, reached when the stream is
            t = t + (h - t)
        wait_s = t
        h = h + launch_s
        if h > t:
            t = t + (h - t)
        readys_append(h)
        starts_append(t)
        t = t + hits[-1][4]
        ends_append(t)
        ops.extend(run)
        entries.extend(hits)
        if h > t:                                 # the mains record, after the run
            t = t + (h - t)
        if wait_s > w:                            # the host wakes when the waits complete
            w = wait_s
        if h > w:                                 # ... and its own launches are issued
            w = w + (h - w)
        if j == 0 and last_run > 1 and t == ends[-1] and "comm" not in {e[3] for e in hits}:
            rest = _host_ahead(m, dev, stream, _after_first(runs), checked, group, t, h, w,
                               launch_s, arrival if until_arrival else None)
            if rest is not None:                  # the host behind for the first run only
                first = _segment(m, dev, stream, ops, entries, readys, free_s, starts, ends)
                return rest[0] + 1, rest[1], rest[2], (first, rest[3])
    if k == 0:
        return None
    return k, w, h, _segment(m, dev, stream, ops, entries, readys, free_s, starts, ends)


def _entries(m, ops, group):
    """(ids, the machine's cost entry of each op), each distinct op checked once per group (kept
    across calls, by identity); None where a collective's group is not `group`."""
    ids = list(map(id, ops))
    known = m.paced_checked.get(group)
    if known is None:
        known = m.paced_checked[group] = {}
    entries = list(map(known.get, ids))
    if None in entries or not all(map(is_, map(itemgetter(0), entries), ops)):
        cost_of, cost_entry = m.op_cost.get, m.cost_entry
        if len(known) >= 4096:                    # bounded, as the machine's cost cache
            known.clear()
        for oid, op in dict(zip(ids, ops)).items():   # check each distinct op once
            hit = known.get(oid)
            if hit is None or hit[0] is not op:
                hit = cost_of(oid)
                if hit is None or hit[0] is not op:
                    hit = cost_entry(op)
                if hit[3] == "comm" and tuple(sorted(op.group)) != group:
                    return None
                known[oid] = hit
        entries = list(map(known.__getitem__, ids))
    return ids, entries


def _program(m, program: list, group: tuple):
    """(cost entries, isolated seconds as an array, indices of the collectives, (each one's
    group as a number, the group keys by number)) of a program that runs offering flat() cut (a list they
    promise not to change), once per program and group; None where a collective's group is not
    `group`."""
    key = (id(program), group)
    hit = m.paced_programs.get(key)
    if hit is not None and hit[0] is program and hit[1] == len(program):
        return hit[2]
    got = _entries(m, program, group)
    if got is None:
        return None
    ids, entries = got
    secs = np.fromiter(map(itemgetter(4), entries), dtype=float, count=len(entries))
    comm_ids = {oid for oid, hit in dict(zip(ids, entries)).items() if hit[3] == "comm"}
    comm_at = np.flatnonzero(np.fromiter(map(comm_ids.__contains__, ids), dtype=bool,
                                         count=len(ids)))
    keys: dict = {}                               # group key -> its number
    numbers = {oid: keys.setdefault(group_key(hit[0]), len(keys))
               for oid, hit in dict(zip(ids, entries)).items() if oid in comm_ids}
    groups = (np.fromiter(map(numbers.__getitem__, map(ids.__getitem__, comm_at.tolist())),
                          dtype=np.int64, count=len(comm_at)), list(keys))
    if len(m.paced_programs) >= 4096:             # bounded: programs are kept alive here
        m.paced_programs.clear()
    m.paced_programs[key] = (program, len(program), (entries, secs, comm_at, groups))
    return entries, secs, comm_at, groups


def _after_first(runs):
    """runs[1:], offering flat() where `runs` do."""
    if getattr(runs, "flat", None) is None:
        return list(runs)[1:]
    program, cuts = runs.flat()
    return _Cut(program, cuts[1:])


class _Cut:
    __slots__ = ("program", "cuts")

    def __init__(self, program, cuts):
        self.program, self.cuts = program, cuts

    def flat(self):
        return self.program, self.cuts


def _host_ahead(m, dev, stream, runs, checked, group, free_s, h, now, launch_s, arrival):
    """closed_form's result for the common case, computed with whole-array steps: every op's
    launch is done by the time the stream reaches it (the host is ahead). Then the stream's times
    are one running sum from `free_s` (numpy's accumulate adds in order, as the loop does), run
    j's wake-up is the start of run j-1's last op, and its launches count up from that. The
    premise is checked on the result, op by op (launch done <= start); None where it fails, or
    where a run is empty or long, or an op needs a check: the loop then decides, as before."""
    flat = getattr(runs, "flat", None)
    comm_at = None
    if flat is not None:                          # the runs as one list and cut points
        program, cuts = flat()
        table = _program(m, program, group)
        if table is None:
            return None
        entries_of, secs_of, comm_at, groups = table
        first, last = cuts[0], cuts[-1]
        ops, entries, secs = program[first:last], entries_of[first:last], secs_of[first:last]
        cuts = np.array(cuts)
        lens = cuts[1:] - cuts[:-1]
        bounds = cuts[1:] - first
        if lens.min() == 0 or lens.max() > 16:
            return None
    else:
        runs = list(runs)
        lens = np.fromiter(map(len, runs), dtype=np.int64, count=len(runs))
        if not len(lens) or lens.min() == 0 or lens.max() > 16:
            return None
        ops = list(chain.from_iterable(runs))
        bounds = None
        got = _entries(m, ops, group)
        if got is None:
            return None
        entries = got[1]
        secs = np.fromiter(map(itemgetter(4), entries), dtype=float, count=len(ops))
    acc = np.empty(len(ops) + 1)
    acc[0] = free_s
    acc[1:] = secs
    ends = np.add.accumulate(acc)                 # t = t + c, op after op
    starts = ends[:-1]
    if bounds is None:
        bounds = np.cumsum(lens)
    wakes = np.empty(len(lens))                   # w_j: now, then run j-1's waits record
    wakes[0] = now
    wakes[1:] = starts[bounds[:-1] - 1]
    k = len(lens) - 1
    if arrival is not None:                       # the first run at whose wake-up one arrived
        k = min(k, int(np.searchsorted(wakes, arrival, "left")))
    if k == 0:
        return None
    n = int(bounds[k - 1])
    base = wakes[:k].copy()                       # each run's launches start at max(h, w)
    if h > now:
        base[0] = h
    counts = lens[:k]
    readys = np.repeat(base, counts) + launch_s
    if counts.max() > 1:
        pos = np.arange(n) - np.repeat(bounds[:k] - counts, counts)
        for i in range(1, int(counts.max())):
            later = pos >= i
            readys[later] = readys[later] + launch_s
    if not (readys <= starts[:n]).all():          # the host was behind somewhere: the loop
        return None
    if comm_at is not None:                       # the program's collectives among these
        lo, hi = np.searchsorted(comm_at, (first, first + n))
        comms, of = comm_at[lo:hi] - first, groups[0][lo:hi]
        if not len(comms) or of.min() == of.max():   # one group's (the usual case)
            seg = _numbered(m, dev, stream, ops[:n], entries[:n], readys, free_s, starts[:n],
                            ends[1:n + 1], acc[1:n + 1], comms,
                            groups[1][int(of[0])] if len(comms) else None)
            return k, float(wakes[k]), float(readys[-1]), seg
        comms = comms.tolist()
    else:
        comms = [i for i, hit in enumerate(entries[:n]) if hit[3] == "comm"]
    seg = _segment(m, dev, stream, ops[:n], entries[:n], readys, free_s, starts[:n].tolist(),
                   ends[1:n + 1].tolist(), acc[1:n + 1].tolist(), comms)
    return k, float(wakes[k]), float(readys[-1]), seg


def _numbered(m, dev, stream, ops, entries, readys, free_s, starts, ends, secs, comms, key):
    """`_segment` for the whole-array pass, where the collectives (indices `comms`, an array)
    are all of group `key`: the same segment, its times, seconds and sequence numbers read from
    the arrays when asked; the totals summed in order as `_segment` sums them."""
    first = 0
    if len(comms):
        first = m.coll_seq.get((dev,) + key, 0)
        m.coll_seq[(dev,) + key] = first + len(comms)
    comm_s = float(np.add.accumulate(secs[comms])[-1]) if len(comms) else 0.0
    total = float(np.add.accumulate(secs)[-1])    # sum(secs): in order, from the first
    seg = Segment(ops, (dev,), stream, -1, "", readys, OneGroupSeqs(comms.tolist(), first, len(ops)))
    seg.costs, seg.secs, seg.totals = entries, FloatView(secs), (total - comm_s, comm_s)
    seg.fixed = (free_s, FloatView(starts), FloatView(ends))
    return seg


def _segment(m, dev, stream, ops, entries, readys, free_s, starts, ends, secs=None,
             comms=None) -> Segment:
    """The runs' ops as a segment with its times fixed (the collective counters advance as the
    launches would). `secs` (each op's isolated seconds) and `comms` (the indices of its
    collectives) where the caller has them."""
    if comms is None:
        comms = [i for i, hit in enumerate(entries) if hit[3] == "comm"]
    seqs, comm_s = [0] * len(ops), 0.0
    if comms:
        pick = itemgetter(*comms) if len(comms) > 1 else (lambda xs: (xs[comms[0]],))
        comm_ops = pick(ops)
        comm_s = reduce(add, map(itemgetter(4), pick(entries)), 0.0)   # in order, as launched
        keys = {oid: group_key(op) for oid, op in dict(zip(map(id, comm_ops), comm_ops)).items()}
        of_op = list(map(keys.__getitem__, map(id, comm_ops)))
        counters: dict = {}
        if len(keys) == 1 or len(set(of_op)) == 1:    # one group: numbered in turn
            key = of_op[0]
            first = counters[key] = m.coll_seq.get((dev,) + key, 0)
            numbers = np.zeros(len(ops), dtype=np.int64)
            numbers[comms] = np.arange(first, first + len(comms))
            seqs = numbers.tolist()
            counters[key] += len(comms)
        else:
            for i, key in zip(comms, of_op):
                if key not in counters:
                    counters[key] = m.coll_seq.get((dev,) + key, 0)
                seqs[i] = counters[key]
                counters[key] += 1
        for key, nxt in counters.items():
            m.coll_seq[(dev,) + key] = nxt
    seg = Segment(ops, (dev,), stream, -1, "", np.asarray(readys), seqs)
    if secs is None:
        secs = [h[4] for h in entries]
    seg.costs, seg.secs, seg.totals = entries, secs, (sum(secs) - comm_s, comm_s)
    seg.fixed = (free_s, starts, ends)
    return seg
