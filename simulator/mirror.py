"""Mirrored groups (`Runtime.mirror`): devices that get the same program as a leader, simulated as
the leader alone (docs/engine.md). The state lives on the Machine: `leader_of`, `followers`,
`last_issued`, `group_plans`; the recorder copies the leader's rows and totals to its followers.
SPMD calls (`launch_each`, `record_all`) issue a follower right after its leader as a host-clock
move (or the leader's event), which is what its checked launch (record) would come to."""
from __future__ import annotations

from .errors import SimulationError
from .ops import COMM_TYPES
from .streams import OP, RECORD, Event

ALONE, LEADS, FOLLOWS = 0, 1, 2    # how an SPMD call issues to a device (group_plan)


def declare(m, group) -> None:
    """From now on every device of `group` gets the same launches, records and waits as
    `group[0]`, right after it (a promise of the strategy; each follower's launch is checked
    against its leader's): only the leader is simulated and its records stand for all."""
    group = tuple(group)
    leader = group[0]
    for d in group:
        if m.leader_of[d] != d or d in m.followers or any(
                st.busy or st.queue for st in m.streams[d]):
            raise SimulationError(f"mirror({group}): device {d} is already mirrored or busy; "
                                  "declare mirrored groups before launching to them")
    if any(m.host_s[d] != m.host_s[leader] for d in group):
        raise SimulationError(f"mirror({group}): the devices' host clocks differ")
    if len(group) < 2:
        return
    for d in group[1:]:
        m.leader_of[d] = leader
    m.followers[leader] = group[1:]
    m.recorder.mirror(leader, group[1:])
    m.mirrored = True
    m.group_size.clear()
    m.group_plans.clear()


def check_follower(m, kind: str, what, device: int, stream: int) -> None:
    """A follower's launch or record: check it repeats its leader's last one."""
    leader = m.leader_of[device]
    if m.last_issued.get((leader, stream)) is not what:
        raise SimulationError(f"device {device} mirrors device {leader} but its {kind} "
                              f"{getattr(what, 'name', what)!r} on stream {stream} does not "
                              f"repeat device {leader}'s last one")


def launch_each(m, ops, devices: tuple, stream: int, request: int, phase: str) -> None:
    """``for op in ops: for d in devices: launch(op, d, stream, request, phase)``. A follower
    launched right after its leader (its leader comes before it in `devices`) repeats the op
    its leader just launched on this stream, so its check passes: only its host clock moves.
    A leader's launch of a compute op is `launch` inlined."""
    plan = m.group_plans.get(devices)
    if plan is None:
        plan = group_plan(m, devices)
    host, now, launch_s = m.host_s, m.env._now, m.launch_s
    for op in ops:
        inline = type(op) not in COMM_TYPES
        for d, how, after in plan:
            if how == LEADS and inline:
                t = host[d]
                host[d] = t = (t if t > now else now) + launch_s
                m.last_issued[(d, stream)] = op
                st = m.streams[d][stream]
                q = st.queue
                q.append((OP, op, t, None, request, phase, 0))
                if not st.busy and not st.blocked and len(q) == 1:
                    m.advance(st)
            elif how != FOLLOWS:
                m.launch(op, d, stream, request, phase)
            for f in after:                    # followers: their host clocks
                t = host[f]
                host[f] = (t if t > now else now) + launch_s


def group_plan(m, devices: tuple) -> tuple:
    """How launch_each and record_all issue to `devices`: (device, how, after) in order, where
    `how` is LEADS for the leader of a mirrored group, ALONE for a device issued as itself, and
    FOLLOWS for a follower whose leader comes before it in `devices` (mirror.declare), and
    `after` lists such followers; a follower right after its leader (or its leader's other
    followers) is in its leader's `after`, any other is an entry (d, FOLLOWS, (d,))."""
    seen: set = set()
    plan: list = []
    for d in devices:
        leader = m.leader_of[d]
        if leader != d and leader in seen:
            last = plan[-1]
            if last[1] == LEADS and last[0] == leader:
                plan[-1] = (last[0], LEADS, last[2] + (d,))
            else:
                plan.append((d, FOLLOWS, (d,)))
        else:
            plan.append((d, LEADS if d in m.followers else ALONE, ()))
        seen.add(d)
    plan = m.group_plans[devices] = tuple(plan)
    return plan


def record_all(m, name: str, devices, stream: int) -> list:
    """``[record(Event(name), d, stream) for d in devices]``, the events in device order;
    a follower recorded right after its leader gets its leader's event object, which
    completes at the very time the follower's own would (see Machine.record)."""
    if type(devices) is not tuple:
        devices = tuple(devices)
    plan = m.group_plans.get(devices)
    if plan is None:
        plan = group_plan(m, devices)
    events: list = []
    for d, how, after in plan:
        if how == LEADS:                       # Machine.record, inlined
            ev = Event(name)
            ev.recorded = True
            ev.device = d
            m.last_issued[(d, stream)] = ev
            t, now = m.host_s[d], m.env._now
            st = m.streams[d][stream]
            q = st.queue
            q.append((RECORD, None, t if t > now else now, ev, -1, "", 0))
            if not st.busy and not st.blocked and len(q) == 1:
                m.advance(st)
            events.append(ev)
            if after:
                events.extend([ev] * len(after))
        elif how == ALONE:
            ev = Event(name)
            m.record(ev, d, stream)
            events.append(ev)
        else:                                  # its leader's event, recorded earlier in this call
            leader = m.leader_of[d]
            events.append(next(e for e in events if e.device == leader))
    return events
