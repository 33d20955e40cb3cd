"""Mirrored groups (`Runtime.mirror`): devices that get the same program as a leader, simulated as
the leader alone (docs/engine.md). The state lives on the Machine: `leader_of`, `followers`,
`last_issued`; the recorder copies the leader's rows and totals to its followers."""
from __future__ import annotations

from .errors import SimulationError


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
