"""The simulated machine under SimRuntime: devices with host clocks, stream FIFOs, events, ops as a
fluid (DESIGN §2; engine.py states the semantics).

`Machine` owns the state: per device its host clock, streams and running ops; the links and the
collective instances waiting for members; the trace recorder. It advances stream FIFOs, completes
events, starts ops (a collective joins its group's instance and spins until every member has
started), recomputes rates whenever the set of running ops on a device or link changes, and
records finished ops. Sequences launched with `launch_seq` go through segment.py, a collective's
join and finish through collectives.py. The hot path (an op alone on an idle device) skips the
contention model and SimPy's Timeout checks, and builds stream items and op rows as plain tuples
in `StreamItem` and `OpRecord` field order (a named tuple's
constructor and getters cost a quarter of the op rate); code off the hot path reads them by name
(`StreamItem._make`, or the recorder, which keeps rows as OpRecords).
"""
from __future__ import annotations

from typing import Iterable

from . import collectives, mirror, segment
from .errors import SimulationError
from .ops import COMM_TYPES
from .streams import (OP, RECORD, SEGMENT, WAIT, Activity, Event, Finish, Stream,
                      StreamItem, describe, describe_stream, group_key)
from .trace import CHUNK_OPS, TraceRecorder

OP_CACHE_ENTRIES = 4096        # ops whose (cost, kind, class) the machine keeps by identity


class Machine:
    """`devices` devices of one profile: the state and mechanics behind SimRuntime's verbs."""

    def __init__(self, env, devices: int, cost, contention, launch_s: float, shared_link: bool,
                 recorder: TraceRecorder, segments: bool = True, event_wait_s: float = 0.0,
                 jitter=None, dispatch_s: float = 0.0, spreads=None, idle_wakeup_s: float = 0.0,
                 record_s: float = 0.0, comm_lag_s: float = 0.0):
        self.env = env
        self.devices = devices
        self.cost = cost
        self.contention = contention
        self.launch_s = launch_s
        self.event_wait_s = event_wait_s       # a stream blocked on an event wakes this late
        self.jitter = jitter                   # jitter.Jitter: op times drawn per run, or None
        self.dispatch_s = dispatch_s           # a stream's own time per op, added to each op
        self.idle_wakeup_s = idle_wakeup_s     # an idle stream starts what is launched this late
        self.record_s = record_s               # a stream's own time to record an event
        spreads = spreads or {}                # reaction -> times to draw from (with `jitter`)
        self.event_waits = spreads.get("event_wait")
        self.dispatches = spreads.get("dispatch")
        self.comm_lag_s = comm_lag_s           # a collective's member ends this long after it
        self.comm_lags = spreads.get("comm_lag")   # or one of these, drawn per member
        # a machine-wide contention model (contention.CoreContention) rates all devices' ops at
        # once, and any start or end changes every device's rates
        self.machine_wide = getattr(contention, "machine_wide", False)
        self.shared = shared_link
        self.recorder = recorder
        self.rows = recorder.buffer            # finished ops go here; folded in chunks
        self.segments = segments               # launch_seq as timed segments where exact
        self.host_s = [0.0] * devices          # each device's host clock
        self.streams: list[list[Stream]] = [[Stream(d, 0, 0)] for d in range(devices)]
        self.running: list[list[Stream]] = [[] for _ in range(devices)]
        self.links: dict = {}                  # link -> {Activity: None}
        self.coll_seq: dict = {}               # (device,) + group_key -> launches so far
        self.groups: dict = {}                 # (group_key, seq) -> Group waiting for members
        self.op_cost: dict = {}                # id(op) -> (op, OpCost, kind, op_class, seconds)
        self.seg_on: list = [None] * devices   # the segment running on each device
        self.segment_counts = {"run": 0, "expanded": 0, "split": 0}
        self.end_s = 0.0                       # time of the last op end or event
        self.mirrored = False                  # some devices mirror a leader (see mirror())
        self.leader_of = list(range(devices))  # the device each one's work is simulated on
        self.followers: dict = {}              # leader -> the devices that mirror it
        self.last_issued: dict = {}            # (leader, stream) -> its last launched op or event
        self.group_size: dict = {}            # collective group -> members simulated
        self.group_plans: dict = {}            # devices -> mirror.group_plan(devices)
        self.paced_checked: dict = {}          # group -> {id(op): cost entry}: paced.py
        self.paced_programs: dict = {}         # (id(program), group) -> its tables: paced.py

    # ------------------------------------------------------------------------------ host side
    def host_now(self, device: int) -> float:
        t = self.host_s[device]
        return t if t > self.env._now else self.env._now

    def create_stream(self, device: int, priority: int) -> int:
        streams = self.streams[device]
        streams.append(Stream(device, len(streams), priority))
        return len(streams) - 1

    def mirror(self, group) -> None:
        """See mirror.declare."""
        mirror.declare(self, group)

    def launch(self, op, device: int, stream: int = 0, request: int = -1, phase: str = "") -> None:
        host = self.host_s
        t = host[device]
        now = self.env._now
        host[device] = t = (t if t > now else now) + self.launch_s
        if self.mirrored:
            if self.leader_of[device] != device:
                mirror.check_follower(self, "launch", op, device, stream)
                return
            self.last_issued[(device, stream)] = op
        st = self.streams[device][stream]
        seq = 0
        if type(op) in COMM_TYPES:
            # NCCL semantics: the i-th launch of a group on a device joins the group's i-th instance
            if device not in op.group:
                raise SimulationError(f"{describe(op)} launched on device {device}, "
                                      f"not a member of {op.group}")
            seq_key = (device,) + group_key(op)
            seq = self.coll_seq.get(seq_key, 0)
            self.coll_seq[seq_key] = seq + 1
        st.queue.append((OP, op, t, None, request, phase, seq))
        if not st.busy and not st.blocked and len(st.queue) == 1:
            self.advance(st)

    def launch_seq(self, ops, devices, stream: int = 0, request: int = -1, phase: str = "") -> None:
        devices = tuple(devices)
        if len(ops) < 2 or not self.segments:
            mirror.launch_each(self, ops, devices, stream, request, phase)
            return
        simulated = devices
        if self.mirrored:
            simulated = tuple(d for d in devices if self.leader_of[d] == d)
            if any(self.leader_of[d] not in devices for d in devices):
                simulated = ()                  # a follower without its leader: op by op
        seg = segment.plan(self, ops, simulated, devices, stream, request, phase) \
            if simulated else None
        if seg is None:
            mirror.launch_each(self, ops, devices, stream, request, phase)
            return
        for d in devices:
            if d in simulated:
                self.enqueue(d, stream, StreamItem(SEGMENT, seg, 0.0, None, request, phase, 0))
            else:
                self.host_s[d] = self.host_s[self.leader_of[d]]
        if self.mirrored and ops:
            for d in simulated:
                self.last_issued[(d, stream)] = ops[-1]

    def record(self, event: Event, device: int, stream: int) -> None:
        if event.recorded:
            raise SimulationError(f"event {event.name!r} is recorded twice; events are single-use")
        event.recorded = True
        event.device = device
        if self.mirrored:
            leader = self.leader_of[device]
            if leader != device:                # completes with the leader's event
                twin = self.last_issued.get((leader, stream))
                if not isinstance(twin, Event):
                    raise SimulationError(f"device {device} mirrors device {leader} but records "
                                          f"event {event.name!r} where device {leader} recorded none")
                if twin.done:
                    self.complete_event(event, twin.time)
                else:
                    twin.callbacks.append(lambda t, ev=event: self.complete_event(ev, t))
                return
            self.last_issued[(device, stream)] = event
        t, now = self.host_s[device], self.env._now
        self.enqueue(device, stream, (RECORD, None, t if t > now else now, event, -1, "", 0))

    def wait(self, device: int, stream: int, event: Event) -> None:
        if self.mirrored and self.leader_of[device] != device:
            return                              # the leader's wait stands for it
        t, now = self.host_s[device], self.env._now
        self.enqueue(device, stream, (WAIT, None, t if t > now else now, event, -1, "", 0))

    # ------------------------------------------------------------------------------ streams
    def enqueue(self, device, stream, item) -> None:
        st = self.streams[device][stream]
        st.queue.append(item)
        if not st.busy and not st.blocked and len(st.queue) == 1:
            self.advance(st)

    def advance(self, st: Stream) -> None:
        """Start what the head of `st`'s FIFO allows, until it is busy, blocked or empty."""
        q = st.queue
        env = self.env
        while q and not st.busy and not st.blocked:
            item = q[0]
            now = env._now
            ready = item[2]
            if self.idle_wakeup_s and ready >= st.free_s:   # launched to an idle stream: it
                ready = st.free_s = ready + self.idle_wakeup_s   # wakes late (free: awake then)
            if ready > now:
                st.blocked = True
                env.timeout(ready - now).callbacks.append(lambda _e, st=st: self._unblock(st))
                return
            kind = item[0]
            if kind == OP:
                q.popleft()
                seg = self.seg_on[st.device]
                if seg is not None:            # an op starts beside a running segment
                    segment.split(self, seg)
                # the start, inlined for the common case: a compute op alone on an idle device
                op = item[1]
                hit = self.op_cost.get(id(op))
                if hit is None or hit[0] is not op:
                    hit = self.cost_entry(op)
                op_class = hit[3]
                st.busy = True
                st.item = item
                st.cost = hit[1]
                st.kind = hit[2]
                st.start = st.last = now
                st.op_class = op_class
                st.factor = 1.0
                seconds = hit[4]
                if self.jitter is not None and op_class != "comm":   # kernel and dispatch drawn
                    seconds = self.jitter.scale(hit[2], hit[1].seconds) + self._dispatch()
                st.remaining = seconds
                st.rate = 0.0
                running = self.running[st.device]
                running.append(st)
                if op_class == "comm":
                    st.activity = None
                    self._join(st, op, st.device)
                    return
                st.activity = st
                if len(running) == 1 and not self.machine_wide:   # alone: full speed, no model
                    st.rate = 1.0
                    st.ev = Finish(env, st, self.on_finish, seconds)
                else:
                    self.reflow((st.device,), ())
                return
            if kind == RECORD:
                q.popleft()
                self.complete_event(item[3])
                if self.record_s:              # the stream's own time recording it, after it
                    st.free_s = now + self.record_s
                    st.blocked = True
                    env.timeout(self.record_s).callbacks.append(
                        lambda _e, st=st: self._unblock(st))
                    return
                st.free_s = now
            elif kind == SEGMENT:
                q.popleft()
                segment.arrive(self, st, item[1])
                return
            elif item[3].done:
                q.popleft()
                st.free_s = now
            else:
                st.blocked = True
                item[3].streams.append(st)
                return

    def _unblock(self, st: Stream) -> None:
        st.blocked = False
        self.advance(st)

    def complete_event(self, ev: Event, time_s: float | None = None) -> None:
        """`ev` completes now (or, for a follower's event, at its leader's event's time)."""
        ev.done = True
        if time_s is None:
            ev.time = self.end_s = self.env._now
        else:
            ev.time = time_s
        delay = self.event_wait_s
        if self.event_waits is not None and ev.streams:
            delay = self.jitter.pick(self.event_waits)
        for st in ev.streams:
            if delay:                              # the waiting stream wakes `delay` later
                self.env.timeout(delay).callbacks.append(lambda _e, st=st: self._unblock(st))
            else:
                st.blocked = False
                self.advance(st)
        ev.streams = []
        for fn in ev.callbacks:
            fn(ev.time)
        ev.callbacks = []
        if ev.signal is not None and not ev.signal.triggered:
            ev.signal.succeed()

    # ------------------------------------------------------------------------------ ops
    def cost_entry(self, op) -> tuple:
        """(op, OpCost, kind, op_class, isolated seconds), cached by the op object's identity."""
        cost = self.cost.cost(op)
        cache = self.op_cost
        if len(cache) >= OP_CACHE_ENTRIES:     # bounded: ops are re-made every step
            cache.clear()
        hit = cache[id(op)] = (op, cost, op.family, cost.op_class, cost.seconds + self.dispatch_s)
        return hit

    def _dispatch(self) -> float:
        """A stream's own time for one op: drawn where the profile gives a list, else its mean."""
        return self.jitter.pick(self.dispatches) if self.dispatches is not None else self.dispatch_s

    _join = collectives.join
    new_activity = collectives.new_activity

    def finish_event(self, act, callback, delay: float) -> Finish:
        """Call callback(the event) `delay` seconds from now; the event's `act` is `act`."""
        return Finish(self.env, act, callback, delay)

    def reflow(self, devices: Iterable[int], links: Iterable) -> None:
        """Recompute rates of everything on `devices` and `links` and reschedule finish times."""
        touched: dict = {}
        rates_of = self.contention.rates
        if self.machine_wide:
            everything = [run for running in self.running for run in running]
            for run, rate in zip(everything, rates_of(everything) if everything else ()):
                run.factor = rate
                if run.activity is not None:
                    touched[run.activity] = None
            devices = ()
        for d in devices:
            running = self.running[d]
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
            for act in self.links.get(link, ()):
                touched[act] = None
        now = self.env._now
        all_links = self.links
        for act in touched:
            if act.__class__ is Stream:        # a single-device op: its device's factor
                rate = act.factor
            else:                              # a collective: its slowest member, its links' shares
                rate = min([r.factor for r in act.runs])
                for link in act.links:
                    share = 1.0 / len(all_links[link])
                    if share < rate:
                        rate = share
            if rate == act.rate:
                continue
            act.remaining -= act.rate * (now - act.last)
            if act.remaining < 0.0:
                act.remaining = 0.0
            act.last = now
            act.rate = rate
            act.ev = Finish(self.env, act, self.on_finish, act.remaining / rate)

    def on_finish(self, ev) -> None:
        """A Finish fired: end its op (or collective), unless a rate change made it stale."""
        act = ev.act
        if act.ev is not ev:           # the rate changed since and a newer finish is due
            return
        if type(act) is Activity:      # a collective: several runs, links
            self._finish_collective(act)
            return
        # a single-device op (the common case), inlined: the activity is its stream
        now = self.end_s = self.env._now
        st = act
        d = st.device
        running = self.running[d]
        running.remove(st)
        item = st.item
        rows = self.rows
        rows.append((d, st.index, st.priority, item[1].name, st.kind, st.op_class,
                                        item[4], item[5], st.start, now, st.start,
                                        st.cost.seconds))
        st.busy = False
        st.activity = None
        st.free_s = now
        if len(rows) >= CHUNK_OPS:
            self.fold()
        if running or self.machine_wide:
            self.reflow((d,), ())
        if st.queue:
            self.advance(st)

    _finish_collective = collectives.finish

    def fold(self) -> None:
        """Fold the recorded rows into the recorder's totals. No op not yet recorded can have
        started before the earliest start among running ops (or now, for ops not started)."""
        horizon = self.env._now
        for running in self.running:
            for st in running:
                if st.start < horizon:
                    horizon = st.start
        self.recorder.fold(horizon)

    # ------------------------------------------------------------------------------ diagnosis
    def stuck(self) -> list[str]:
        """A line per stream with work left (for deadlock reports)."""
        return [describe_stream(st, self.groups) for streams in self.streams for st in streams
                if st.busy or st.queue]
