"""A collective's members in an op log: when the group's transfer ended, and how late each member
saw it end.

On TorchRuntime's CPU devices each member of a gloo collective (or send/recv) runs on its own
stream thread and returns from the transfer when that thread wakes: in the closed loop's tp runs
the two members of an all-reduce ended 300 us apart on average (docs/validation.md). The members
of one instance share their join time (the last member's start, `Comm.joined`), so an op log
groups them by it. The group's transfer is its first member's end minus the join; every member's
lag is its own end minus that first end. The tables take the transfer (`first_ends`) and the
profile's `device.comm_lag_us` the lags (`member_lags`): the simulator ends each member's stream
a drawn lag after the transfer (docs/engine.md), so the next collective waits for the later
member as the real one does. A mean per member, or one time for the whole group, would end the
members together and lose that wait.
"""
from __future__ import annotations

from simulator.ops import Collective, SendRecv

LAG_QUANTILES = 32      # times a profile's comm_lag_us is summarised by


def _instances(entries) -> dict:
    """(run, kind, group, join time) -> [each logged member's end minus the join] for the
    collectives and send/recvs of an op log (entries: op, device, stream, start, end, join, run?)."""
    out: dict = {}
    for op, _device, _stream, start, end, xfer, *run in entries:
        if isinstance(op, (Collective, SendRecv)):
            key = (run[0] if run else None, type(op).__name__, tuple(op.group), xfer)
            out.setdefault(key, []).append(end - max(xfer, start))
    return out


def _complete(instances: dict):
    """The instances whose every member is in the log (a log cut mid-run has some without)."""
    for key, ends in instances.items():
        if len(ends) == len(key[2]):
            yield key, ends


def first_ends(entries) -> dict:
    """(run, kind, group, join time) -> the group's transfer: its first member's end minus the
    join, for each instance every member of which is in the log."""
    return {key: min(ends) for key, ends in _complete(_instances(entries))}


def transfer_seconds(firsts: dict, op, xfer: float, start: float, end: float, run) -> float:
    """One member's sample of its group's transfer: the group's first end (`first_ends`) where
    its instance is complete, else its own end minus the join."""
    key = (run[0] if run else None, type(op).__name__, tuple(op.group), xfer)
    return firsts.get(key, end - max(xfer, start))


def member_lags(entries) -> list:
    """Every member's end minus its group's first end (seconds), over the complete instances."""
    return [e - min(ends) for _key, ends in _complete(_instances(entries)) for e in ends]


def lag_section(lags: list, source: str) -> dict | None:
    """The profile's `device.comm_lag_us`: LAG_QUANTILES quantiles of `lags` (at the midpoints of
    equal slices, as the jitter's), or None without lags."""
    if not lags:
        return None
    ordered = sorted(lags)
    picked = [ordered[min(len(ordered) - 1, int((i + 0.5) / LAG_QUANTILES * len(ordered)))]
              for i in range(LAG_QUANTILES)]
    return {"value": [float(f"{max(0.0, v) * 1e6:.4g}") for v in picked],
            "source": (f"{source}: quantiles of a collective member's end after its group's "
                       f"first ({len(lags)} members)")}
