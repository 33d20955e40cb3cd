"""A collective on the simulated machine (machine.py; engine.md states the semantics): its members
join one group instance (`join`: NCCL's i-th launch on a device joins the group's i-th instance),
the last to arrive starts the transfer, an `Activity` over the members' ports and the shared link
(`new_activity`), and when it is done every member's row is recorded and its stream freed
(`finish`), each after its own lag where the profile gives member lags (`device.comm_lag_us`).
Bound as Machine methods (`Machine._join`, `new_activity`, `_finish_collective`): `m` is the
Machine.
"""
from __future__ import annotations

from .errors import SimulationError
from .streams import Activity, Group, Stream, describe, group_key
from .trace import CHUNK_OPS


def join(m, run: Stream, op, device: int) -> None:
    """`run` (a member's stream) joins its collective's group instance; the last member to
    join starts the transfer (one jitter draw for the group, its dispatch included)."""
    group = op.group
    gkey = (group_key(op), run.item[6])
    g = m.groups.get(gkey)
    if g is None:
        size = len(group)
        if m.mirrored:                  # followers' launches are their leaders'
            size = m.group_size.get(group)
            if size is None:
                size = m.group_size[group] = sum(m.leader_of[d] == d for d in group)
        g = m.groups[gkey] = Group(op, size)
    elif g.op.bytes != op.bytes:
        raise SimulationError(f"{describe(op)} on device {device} does not match the "
                              f"{g.op.bytes:.0f} bytes its other members launched")
    g.runs.append(run)
    if len(g.runs) < g.size:
        m.reflow((device,), ())
        return
    del m.groups[gkey]
    seconds = run.cost.seconds + m.dispatch_s
    if m.jitter is not None:            # one transfer: one draw for the group
        seconds = m.jitter.scale(op.family, run.cost.seconds) + m._dispatch()
    act = m.new_activity(tuple(g.runs), group, seconds, m.env._now)
    m.reflow(group, act.links)


def new_activity(m, runs, group, seconds: float, now: float) -> Activity:
    """A collective's transfer over its members' ports (and the shared link, if any)."""
    links = tuple(("port", d) for d in group) + ((("shared",),) if m.shared else ())
    act = Activity(runs, links, seconds, now)
    for r in runs:
        r.activity = act
    for link in links:
        m.links.setdefault(link, {})[act] = None
    return act


def finish(m, act: Activity) -> None:
    """The transfer is done: record every member's row and free its stream, each member `lag`
    later where the profile gives member lags (`comm_lag_s`, drawn per member from
    `comm_lags`); then the rates of what still runs, and the members' FIFOs."""
    now = m.end_s = m.env._now
    rows = m.rows
    busy = []
    lagged = []
    for st in act.runs:
        item = st.item
        d = st.device
        running = m.running[d]
        running.remove(st)
        if running:
            busy.append(d)
        end = now
        if m.comm_lag_s:                # this member's stream sees the end this late
            lag = m.jitter.pick(m.comm_lags) if m.comm_lags else m.comm_lag_s
            if lag > 0:
                end = now + lag
                lagged.append((st, lag))
        rows.append((d, st.index, st.priority, item[1].name, st.kind,
                     st.op_class, item[4], item[5], st.start, end,
                     act.start, st.cost.seconds))
        st.busy = False
        st.activity = None
        st.free_s = end
    for st, lag in lagged:                 # held, not running: it uses no core meanwhile
        st.blocked = True
        m.end_s = max(m.end_s, now + lag)
        m.env.timeout(lag).callbacks.append(lambda _e, st=st: m._unblock(st))
    if len(rows) >= CHUNK_OPS:
        m.fold()
    links = []
    for link in act.links:
        members = m.links[link]
        del members[act]
        if members:
            links.append(link)
    if busy or links or m.machine_wide:
        m.reflow(busy, links)
    for st in act.runs:
        m.advance(st)
