"""Exact-log behaviour tests of SimRuntime (DESIGN §2, §6): tiny hand-made programs on a synthetic
profile and a stub cost model, so that every start and end time can be worked out by hand.

The stub cost gives each op an isolated time and class looked up by its name; the contention
factors are round numbers (compute_by_comm = 1.25, so compute beside communication runs at 0.8;
low_priority_share = 0.2), and launches cost no host time unless a test says otherwise.
"""
from __future__ import annotations

from dataclasses import replace
from types import MappingProxyType

import pytest

from simulator.cost import OpCost
from simulator.engine import SimRuntime
from simulator.errors import DeadlockError
from simulator.hardware import OP_CLASSES, ContentionSpec, load_hardware
from simulator.ops import Collective, Elementwise
from simulator.workload import Request, open_loop

BASE = load_hardware("a100-sxm4-80gb")
EXACT = 1e-9


# ------------------------------------------------------------------------------------ helpers

class StubCost:
    """Isolated seconds and op class by op name: {name: (seconds, op_class)}."""

    def __init__(self, table: dict):
        self.table = table

    def cost(self, op) -> OpCost:
        seconds, op_class = self.table[op.name]
        bound = "bandwidth" if op_class == "comm" else op_class
        return OpCost(seconds, bound, op_class, 0.0, 0.0)

    def seconds(self, op) -> float:
        return self.table[op.name][0]


def profile(*, compute_by_comm=1.25, comm_by_compute=1.0, share=0.2, shared_link=False):
    """The built-in A100 profile with known contention factors (all others 1.0)."""
    slowdown = {(a, b): 1.0 for a in OP_CLASSES for b in OP_CLASSES if a != b}
    slowdown[("compute", "comm")] = compute_by_comm
    slowdown[("comm", "compute")] = comm_by_compute
    return replace(BASE,
                   contention=ContentionSpec("factor", MappingProxyType(slowdown), share),
                   interconnect=replace(BASE.interconnect, shared_link=shared_link))


class Program:
    """A strategy made of a host function (plain or generator) and an optional setup."""

    def __init__(self, host, setup=None):
        self._host, self._setup = host, setup

    def setup(self, rt):
        if self._setup is not None:
            self._setup(rt)

    def host(self, rt):
        body = self._host(rt)
        if body is not None:
            yield from body


def no_requests(rt):
    rt.sources_done()
    return
    yield  # a generator that sends nothing


arrivals = open_loop          # each request arrives at its arrival_s


def simulate(host, table, *, devices=1, hw=None, launch_s=0.0, setup=None, source=no_requests):
    rt = SimRuntime(hw or profile(), devices, cost=StubCost(table), launch_overhead_s=launch_s)
    trace = rt.run(Program(host, setup), source)
    return rt, trace


def row(trace, name, device=0):
    df = trace.ops()
    hit = df[(df["name"] == name) & (df["device"] == device)]
    assert len(hit) == 1, f"expected one row for {name!r} on device {device}, got {len(hit)}"
    return hit.iloc[0]


def assert_log(trace, expected):
    """The whole trace equals `expected`: rows (device, stream, name, start, end) or, with a
    sixth element, also the transfer start; in any order (both sides are sorted), times exact to
    1e-9 s. A missing or extra op fails, and the message prints both logs."""
    def key(r):
        return (r[0], r[1], round(r[3], 9), round(r[4], 9), r[2])

    ops = trace.ops()
    got = sorted(((int(d), int(s), n, float(a), float(b), float(t)) for d, s, n, a, b, t in
                  zip(ops["device"], ops["stream"], ops["name"], ops["start_s"], ops["end_s"],
                      ops["transfer_start_s"])), key=key)
    want = sorted(expected, key=key)

    def show(rows):
        return "\n".join("  " + ", ".join(f"{x:g}" if isinstance(x, float) else str(x) for x in r)
                         for r in rows)
    msg = f"trace differs from the expected log\nexpected:\n{show(want)}\ngot:\n{show(got)}"
    assert len(got) == len(want), msg
    for g, w in zip(got, want):
        assert g[:3] == tuple(w[:3]), msg
        assert g[3] == pytest.approx(w[3], abs=EXACT) and g[4] == pytest.approx(w[4], abs=EXACT), msg
        if len(w) > 5:
            assert g[5] == pytest.approx(w[5], abs=EXACT), msg


def op(name):
    return Elementwise(1, name=name)


def ar(name, group, nbytes=1024):
    return Collective("all_reduce", nbytes, tuple(group), name=name)


# ------------------------------------------------------------------------------------ 1. FIFO

def test_single_op_alone_takes_its_isolated_time():
    table = {"a": (1.5, "compute")}

    def host(rt):
        rt.launch(op("a"), 0, 0)

    _, trace = simulate(host, table)
    assert_log(trace, [(0, 0, "a", 0.0, 1.5, 0.0)])
    assert row(trace, "a")["isolated_s"] == 1.5
    assert trace.meta["makespan_s"] == pytest.approx(1.5, abs=EXACT)


def test_fifo_one_stream_runs_ops_back_to_back():
    table = {"a": (1.0, "compute"), "b": (2.0, "compute")}

    def host(rt):
        rt.launch(op("a"), 0, 0)
        rt.launch(op("b"), 0, 0)

    _, trace = simulate(host, table)
    # a: [0, 1]; b waits for a on the same stream: [1, 1 + 2 = 3]
    assert_log(trace, [(0, 0, "a", 0.0, 1.0, 0.0), (0, 0, "b", 1.0, 3.0, 1.0)])
    assert list(trace.ops()["name"]) == ["a", "b"]
    assert row(trace, "b")["isolated_s"] == 2.0
    assert trace.meta["makespan_s"] == pytest.approx(3.0, abs=EXACT)


# ------------------------------------------------------------------------------------ 2. events

def waited_across_streams(rt):
    """a on stream 0, an event after it; stream 1 waits on that event, then runs b (also
    test_stream_costs)."""
    s1 = rt.create_stream(0)
    ev = rt.new_event("a_done")
    rt.launch(op("a"), 0, 0)
    rt.record(ev, 0, 0)
    rt.wait(0, s1, ev)
    rt.launch(op("b"), 0, s1)


def test_wait_on_event_starts_op_at_recorded_time():
    table = {"a": (1.0, "compute"), "b": (1.0, "compute")}
    _, trace = simulate(waited_across_streams, table)
    # a: [0, 1] alone; the event completes at 1; b on stream 1 waits for it: [1, 2], alone again
    assert_log(trace, [(0, 0, "a", 0.0, 1.0), (0, 1, "b", 1.0, 2.0)])


def test_without_wait_same_priority_compute_ops_share_the_device():
    table = {"a": (1.0, "compute"), "b": (2.0, "compute")}

    def host(rt):
        s1 = rt.create_stream(0)
        rt.launch(op("a"), 0, 0)
        rt.launch(op("b"), 0, s1)

    _, trace = simulate(host, table)
    # Both start at 0; same priority, so they split compute evenly: each at rate 1/2.
    # a: 1 s of work at 1/2 -> ends at 2; b has done 1 s of its 2 s by then, then runs alone:
    # ends at 2 + 1 = 3.
    assert_log(trace, [(0, 0, "a", 0.0, 2.0), (0, 1, "b", 0.0, 3.0)])


def test_event_recorded_on_one_device_gates_a_stream_of_another():
    table = {"a": (1.5, "compute"), "b": (1.0, "compute")}

    def host(rt):
        ev = rt.new_event("a_done")
        rt.launch(op("a"), 0, 0)
        rt.record(ev, 0, 0)
        rt.wait(1, 0, ev)
        rt.launch(op("b"), 1, 0)

    _, trace = simulate(host, table, devices=2)
    # a on device 0: [0, 1.5]; b on device 1 waits for the event: [1.5, 2.5]
    assert_log(trace, [(0, 0, "a", 0.0, 1.5), (1, 0, "b", 1.5, 2.5)])


# ------------------------------------------------------------------------------------ 3. collectives

def test_collective_with_a_late_member_spins_then_transfers():
    table = {"x": (2.0, "compute"), "ar": (1.0, "comm"), "c": (1.0, "compute")}

    def host(rt):
        rt.launch(ar("ar", (0, 1)), 0, 0)
        rt.launch(op("c"), 0, 0)
        rt.launch(op("x"), 1, 0)
        rt.launch(ar("ar", (0, 1)), 1, 0)

    _, trace = simulate(host, table, devices=2)
    # Device 0 starts the all-reduce at 0 and holds stream 0 while spinning; device 1 reaches it
    # after x ([0, 2]); the transfer runs [2, 2 + 1 = 3] on both; c waits on device 0: [3, 4].
    assert_log(trace, [(0, 0, "ar", 0.0, 3.0, 2.0), (0, 0, "c", 3.0, 4.0),
                       (1, 0, "x", 0.0, 2.0), (1, 0, "ar", 2.0, 3.0, 2.0)])


def test_spinning_collective_slows_compute_beside_it():
    table = {"x": (2.0, "compute"), "ar": (1.0, "comm"), "y": (2.0, "compute")}

    def host(rt):
        s1 = rt.create_stream(0)
        rt.launch(ar("ar", (0, 1)), 0, s1)
        rt.launch(op("y"), 0, 0)
        rt.launch(op("x"), 1, 0)
        rt.launch(ar("ar", (0, 1)), 1, 0)

    _, trace = simulate(host, table, devices=2)
    # On device 0 the all-reduce occupies SMs from t=0 (spinning until 2, transferring [2, 3]),
    # so y runs at 1/1.25 = 0.8 throughout: 2 s of work ends at 2 / 0.8 = 2.5 (< 3).
    # The transfer itself is not slowed (comm_by_compute = 1.0): [2, 3].
    assert_log(trace, [(0, 0, "y", 0.0, 2.5), (0, 1, "ar", 0.0, 3.0, 2.0),
                       (1, 0, "x", 0.0, 2.0), (1, 0, "ar", 2.0, 3.0, 2.0)])


def test_collective_instances_match_in_launch_order():
    table = {"x": (1.0, "compute"), "ar1": (1.0, "comm"), "ar2": (2.0, "comm")}

    def host(rt):
        for d in (0, 1):
            if d == 1:
                rt.launch(op("x"), 1, 0)
            rt.launch(ar("ar1", (0, 1)), d, 0)
            rt.launch(ar("ar2", (0, 1)), d, 0)

    _, trace = simulate(host, table, devices=2)
    # ar1: device 0 from 0, device 1 from 1 (after x); transfer [1, 2]. ar2 then starts on both
    # at 2 and transfers [2, 4].
    assert_log(trace, [(0, 0, "ar1", 0.0, 2.0, 1.0), (0, 0, "ar2", 2.0, 4.0, 2.0),
                       (1, 0, "x", 0.0, 1.0), (1, 0, "ar1", 1.0, 2.0, 1.0),
                       (1, 0, "ar2", 2.0, 4.0, 2.0)])


def test_collective_instances_match_in_launch_order_across_streams():
    table = {"x": (2.0, "compute"), "ar1": (1.0, "comm"), "ar2": (2.0, "comm")}

    def host(rt):
        for d in (0, 1):
            rt.create_stream(d)
        # device 0: ar1 behind x on stream 0, ar2 on the idle stream 1
        rt.launch(op("x"), 0, 0)
        rt.launch(ar("ar1", (0, 1)), 0, 0)
        rt.launch(ar("ar2", (0, 1)), 0, 1)
        # device 1: ar1 on the idle stream 1, ar2 behind x on stream 0 (same launch order)
        rt.launch(op("x"), 1, 0)
        rt.launch(ar("ar1", (0, 1)), 1, 1)
        rt.launch(ar("ar2", (0, 1)), 1, 0)

    _, trace = simulate(host, table, devices=2, hw=profile(compute_by_comm=1.0))
    # ar1 is instance 0 on both devices, ar2 instance 1. Device 0 starts ar2 at 0 and ar1 at 2
    # (after x), device 1 the other way round, so both instances have all members only at 2.
    # Both transfers then share the ports of devices 0 and 1 (rate 1/2 each): ar1 (1 s) ends at
    # 2 + 2 = 4; ar2 has done 1 of its 2 s by then and ends at 4 + 1 = 5.
    assert_log(trace, [(0, 0, "x", 0.0, 2.0), (0, 0, "ar1", 2.0, 4.0, 2.0),
                       (0, 1, "ar2", 0.0, 5.0, 2.0),
                       (1, 0, "x", 0.0, 2.0), (1, 0, "ar2", 2.0, 5.0, 2.0),
                       (1, 1, "ar1", 0.0, 4.0, 2.0)])


# ------------------------------------------------------------------------------------ 4. contention

def g_beside_all_reduce(rt):
    """Both devices start all-reduce 'ar' on a second stream; device 0 runs compute op 'g' beside it."""
    for d in (0, 1):
        s1 = rt.create_stream(d)
        rt.launch(ar("ar", (0, 1)), d, s1)
    rt.launch(op("g"), 0, 0)


def test_compute_beside_all_reduce_is_slowed_by_the_profile_factor():
    table = {"g": (1.0, "compute"), "ar": (1.0, "comm")}

    host = g_beside_all_reduce

    _, trace = simulate(host, table, devices=2, hw=profile(compute_by_comm=1.25))
    # g runs at 1/1.25 = 0.8 while the all-reduce runs ([0, 1]: comm is not slowed, factor 1.0):
    # by t=1 g has done 0.8 s, the remaining 0.2 s run alone at rate 1: g ends at 1.2.
    assert_log(trace, [(0, 0, "g", 0.0, 1.2), (0, 1, "ar", 0.0, 1.0, 0.0),
                       (1, 1, "ar", 0.0, 1.0, 0.0)])


def test_collective_slowed_on_one_member_slows_all_members():
    table = {"g": (1.0, "compute"), "ar": (1.0, "comm")}

    host = g_beside_all_reduce

    hw = profile(compute_by_comm=1.25, comm_by_compute=2.0)
    _, trace = simulate(host, table, devices=2, hw=hw)
    # While both run on device 0: g at 0.8, the all-reduce at 1/2 (its slowest member).
    # g ends at 1 / 0.8 = 1.25; the all-reduce has done 0.625 s by then, the remaining 0.375 s
    # run at rate 1: it ends at 1.625 on both devices.
    assert_log(trace, [(0, 0, "g", 0.0, 1.25), (0, 1, "ar", 0.0, 1.625, 0.0),
                       (1, 1, "ar", 0.0, 1.625, 0.0)])


def test_compute_rate_is_recomputed_at_every_change_beside_it():
    table = {"g": (2.0, "compute"), "c1": (0.4, "comm"), "c2": (0.4, "comm"),
             "y": (0.6, "compute")}

    def host(rt):
        s1 = rt.create_stream(0)
        ev = rt.new_event("y_done")
        rt.launch(op("g"), 0, 0)
        rt.launch(ar("c1", (0, 1)), 0, s1)
        rt.wait(0, s1, ev)
        rt.launch(ar("c2", (0, 1)), 0, s1)
        rt.launch(ar("c1", (0, 1)), 1, 0)
        rt.launch(op("y"), 1, 0)
        rt.record(ev, 1, 0)
        rt.launch(ar("c2", (0, 1)), 1, 0)

    _, trace = simulate(host, table, devices=2, hw=profile(compute_by_comm=1.25))
    # c1 [0, 0.4]; y on device 1 [0.4, 1.0]; c2 waits for y's event on device 0: [1.0, 1.4].
    # g on device 0: [0, 0.4] at 0.8 -> 0.32 s done; [0.4, 1.0] alone at 1 -> 0.92;
    # [1.0, 1.4] at 0.8 -> 1.24; the remaining 0.76 s alone: ends at 1.4 + 0.76 = 2.16.
    # On device 1 stream 0: c1 [0, 0.4], y [0.4, 1.0], c2 [1.0, 1.4] back to back.
    assert_log(trace, [(0, 0, "g", 0.0, 2.16), (0, 1, "c1", 0.0, 0.4, 0.0),
                       (0, 1, "c2", 1.0, 1.4, 1.0),
                       (1, 0, "c1", 0.0, 0.4, 0.0), (1, 0, "y", 0.4, 1.0),
                       (1, 0, "c2", 1.0, 1.4, 1.0)])


def test_makespan_is_the_end_of_the_last_op():
    table = {"g": (1.0, "compute"), "ar": (1.0, "comm")}

    host = g_beside_all_reduce

    _, trace = simulate(host, table, devices=2)
    # Same program as above: g first expects to end at 1 / 0.8 = 1.25, then speeds up when the
    # all-reduce ends at 1 and really ends at 1.2, the last thing that happens.
    assert_log(trace, [(0, 0, "g", 0.0, 1.2), (0, 1, "ar", 0.0, 1.0, 0.0),
                       (1, 1, "ar", 0.0, 1.0, 0.0)])
    assert trace.meta["makespan_s"] == pytest.approx(1.2, abs=EXACT)


# ------------------------------------------------------------------------------------ 5. priority

def test_stream_priority_shares_compute():
    table = {"hi": (1.0, "compute"), "lo": (1.0, "compute")}

    def host(rt):
        high = rt.create_stream(0, priority=-1)
        rt.launch(op("lo"), 0, 0)
        rt.launch(op("hi"), 0, high)

    _, trace = simulate(host, table, hw=profile(share=0.2))
    # hi (priority -1) gets 1 - 0.2 = 0.8, lo gets 0.2: hi ends at 1 / 0.8 = 1.25; lo has done
    # 0.25 s by then and runs its remaining 0.75 s alone: ends at 2.0.
    assert_log(trace, [(0, 0, "lo", 0.0, 2.0), (0, 1, "hi", 0.0, 1.25)])
    assert row(trace, "hi")["priority"] == -1
    assert row(trace, "lo")["priority"] == 0


# ------------------------------------------------------------------------------------ 6. host

def test_launch_overhead_makes_tiny_ops_host_bound():
    table = {n: (0.1, "compute") for n in ("a", "b", "c")}

    def host(rt):
        for n in ("a", "b", "c"):
            rt.launch(op(n), 0, 0)

    _, trace = simulate(host, table, launch_s=0.5)
    # Each launch costs 0.5 s of host time: the ops are launched at 0.5, 1.0, 1.5 and each runs
    # 0.1 s on an otherwise idle stream.
    assert_log(trace, [(0, 0, "a", 0.5, 0.6), (0, 0, "b", 1.0, 1.1), (0, 0, "c", 1.5, 1.6)])


def test_synchronize_blocks_the_host_until_the_event():
    table = {"a": (1.0, "compute"), "b": (0.1, "compute")}
    seen = {}

    def host(rt):
        ev = rt.new_event("a_done")
        rt.launch(op("a"), 0, 0)          # host clock 0.5: a runs [0.5, 1.5]
        rt.record(ev, 0, 0)
        yield from rt.synchronize(ev)     # the event completes at 1.5
        seen["after_sync"] = rt.now
        rt.launch(op("b"), 0, 0)          # launched from 1.5: ready at 2.0

    _, trace = simulate(host, table, launch_s=0.5)
    assert seen["after_sync"] == pytest.approx(1.5, abs=EXACT)
    assert_log(trace, [(0, 0, "a", 0.5, 1.5), (0, 0, "b", 2.0, 2.1)])


def test_synchronize_also_waits_for_the_host_clock():
    table = {n: (0.1, "compute") for n in ("a", "b", "c", "d")}
    seen = {}

    def host(rt):
        ev = rt.new_event("a_done")
        rt.launch(op("a"), 0, 0)          # ready 0.5: [0.5, 0.6], event at 0.6
        rt.record(ev, 0, 0)
        rt.launch(op("b"), 0, 0)          # ready 1.0
        rt.launch(op("c"), 0, 0)          # ready 1.5
        yield from rt.synchronize(ev)     # event done at 0.6, but the host is busy until 1.5
        seen["after_sync"] = rt.now
        rt.launch(op("d"), 0, 0)          # ready 1.5 + 0.5 = 2.0

    _, trace = simulate(host, table, launch_s=0.5)
    assert seen["after_sync"] == pytest.approx(1.5, abs=EXACT)
    assert_log(trace, [(0, 0, "a", 0.5, 0.6), (0, 0, "b", 1.0, 1.1), (0, 0, "c", 1.5, 1.6),
                       (0, 0, "d", 2.0, 2.1)])


# ------------------------------------------------------------------------------------ 7. deadlock

def test_deadlock_names_device_stream_and_unrecorded_event():
    table = {"b": (1.0, "compute")}

    def host(rt):
        s1 = rt.create_stream(0)
        rt.wait(0, s1, rt.new_event("never_recorded"))
        rt.launch(op("b"), 0, s1)

    with pytest.raises(DeadlockError) as info:
        simulate(host, table)
    msg = str(info.value)
    assert "device 0 stream 1" in msg
    assert "'never_recorded'" in msg
    assert "never recorded" in msg


def test_deadlock_names_the_collective_member_that_never_launched():
    table = {"ar": (1.0, "comm")}

    def host(rt):
        rt.launch(ar("ar", (0, 1)), 0, 0)

    with pytest.raises(DeadlockError) as info:
        simulate(host, table, devices=2)
    msg = str(info.value)
    assert "device 0 stream 0" in msg
    assert "all_reduce 'ar'" in msg
    assert "device(s) [1]" in msg


def test_deadlock_names_event_recorded_behind_a_stuck_stream():
    table = {"b": (1.0, "compute"), "c": (1.0, "compute")}

    def host(rt):
        s1 = rt.create_stream(0)
        rt.wait(0, 0, rt.new_event("never_recorded"))
        rt.launch(op("c"), 0, 0)
        stuck = rt.new_event("behind_c")
        rt.record(stuck, 0, 0)
        rt.wait(0, s1, stuck)
        rt.launch(op("b"), 0, s1)

    with pytest.raises(DeadlockError) as info:
        simulate(host, table)
    msg = str(info.value)
    assert "device 0 stream 0" in msg and "'never_recorded'" in msg
    assert "device 0 stream 1" in msg and "'behind_c'" in msg
    assert "recorded on device 0 but not yet reached" in msg


def test_deadlock_names_a_host_blocked_in_synchronize():
    table = {}

    def host(rt):
        yield from rt.synchronize(rt.new_event("orphan"))

    with pytest.raises(DeadlockError) as info:
        simulate(host, table)
    assert "host: blocked in synchronize on event 'orphan'" in str(info.value)


# ------------------------------------------------------------------------------------ 8. shared link

@pytest.mark.parametrize("shared, end", [(True, 2.0), (False, 1.0)])
def test_shared_link_halves_concurrent_disjoint_transfers(shared, end):
    table = {"ar_a": (1.0, "comm"), "ar_b": (1.0, "comm")}

    def host(rt):
        for d in (0, 1):
            rt.launch(ar("ar_a", (0, 1)), d, 0)
        for d in (2, 3):
            rt.launch(ar("ar_b", (2, 3)), d, 0)

    _, trace = simulate(host, table, devices=4, hw=profile(shared_link=shared))
    # Alone each all-reduce takes 1 s. On a shared link the two concurrent transfers split its
    # bandwidth (rate 1/2 each): both end at 2. Without a shared link they use disjoint ports: 1.
    assert_log(trace, [(d, 0, name, 0.0, end, 0.0)
                       for name, group in (("ar_a", (0, 1)), ("ar_b", (2, 3))) for d in group])


def test_shared_link_alone_takes_isolated_time():
    table = {"ar_a": (1.0, "comm")}

    def host(rt):
        for d in (0, 1):
            rt.launch(ar("ar_a", (0, 1)), d, 0)

    _, trace = simulate(host, table, devices=2, hw=profile(shared_link=True))
    assert_log(trace, [(0, 0, "ar_a", 0.0, 1.0, 0.0), (1, 0, "ar_a", 0.0, 1.0, 0.0)])


def test_shared_link_rates_follow_transfers_joining_and_leaving():
    table = {"x": (0.5, "compute"), "ar_a": (1.0, "comm"), "ar_b": (1.0, "comm")}

    def host(rt):
        for d in (0, 1):
            rt.launch(ar("ar_a", (0, 1)), d, 0)
        rt.launch(op("x"), 2, 0)
        for d in (2, 3):
            rt.launch(ar("ar_b", (2, 3)), d, 0)

    _, trace = simulate(host, table, devices=4, hw=profile(shared_link=True))
    # ar_a alone on the link [0, 0.5]: 0.5 s done. ar_b's transfer starts at 0.5 (after x on
    # device 2); both at rate 1/2: ar_a's remaining 0.5 s end at 0.5 + 1 = 1.5. ar_b has done
    # 0.5 s by then and runs its other 0.5 s alone: ends at 2.0.
    assert_log(trace, [(0, 0, "ar_a", 0.0, 1.5, 0.0), (1, 0, "ar_a", 0.0, 1.5, 0.0),
                       (2, 0, "x", 0.0, 0.5), (2, 0, "ar_b", 0.5, 2.0, 0.5),
                       (3, 0, "ar_b", 0.0, 2.0, 0.5)])


# ------------------------------------------------------------------------------------ 9. determinism

def _busy_program():
    table = {"g": (1.0, "compute"), "m": (0.3, "memory"), "ar": (0.7, "comm"),
             "h": (0.4, "compute")}

    def setup(rt):
        for d in (0, 1):
            rt.create_stream(d, priority=-1)

    def host(rt):
        while True:
            req = yield from rt.next_request()
            if req is None:
                return
            done = rt.new_event(f"done{req.id}")
            for d in (0, 1):
                side = 1
                rt.launch(op("g"), d, 0, request=req.id, phase="prefill")
                rt.launch(ar("ar", (0, 1)), d, side, request=req.id, phase="prefill")
                rt.launch(op("m"), d, side, request=req.id, phase="decode")
                rt.launch(op("h"), d, 0, request=req.id, phase="decode")
            rt.record(done, 0, 0)
            rt.finish_when(req.id, done)

    reqs = [Request(i, 0.25 * i, 16, 2) for i in range(4)]
    return host, setup, table, arrivals(reqs)


def test_same_program_gives_identical_trace():
    traces = []
    for _ in range(2):
        host, setup, table, source = _busy_program()
        _, trace = simulate(host, table, devices=2, launch_s=0.01, setup=setup, source=source)
        traces.append(trace)
    a, b = traces
    assert len(a.rows) == 4 * 2 * 4
    assert a.rows == b.rows
    assert repr(a.rows) == repr(b.rows)
    assert a.requests == b.requests


# ------------------------------------------------------------------------------------ 10. requests

def test_request_first_token_and_finish_times():
    table = {"prefill": (1.0, "compute"), "decode": (0.5, "compute")}

    def host(rt):
        while True:
            req = yield from rt.next_request()
            if req is None:
                return
            first, done = rt.new_event(f"first{req.id}"), rt.new_event(f"done{req.id}")
            rt.launch(op("prefill"), 0, 0, request=req.id, phase="prefill")
            rt.record(first, 0, 0)
            rt.launch(op("decode"), 0, 0, request=req.id, phase="decode")
            rt.record(done, 0, 0)
            rt.first_token_when(req.id, first)
            rt.finish_when(req.id, done)

    reqs = [Request(0, 1.0, 8, 2), Request(1, 1.5, 8, 2)]
    _, trace = simulate(host, table, source=arrivals(reqs))
    # r0 arrives at 1: prefill [1, 2], decode [2, 2.5].
    # r1 arrives at 1.5 and queues behind r0 on stream 0: prefill [2.5, 3.5], decode [3.5, 4].
    recs = {r.request: r for r in trace.requests}
    expected = {0: (1.0, 1.0, 2.0, 2.5), 1: (1.5, 2.5, 3.5, 4.0)}
    for rid, (arrival, start, first, finish) in expected.items():
        r = recs[rid]
        assert r.arrival_s == pytest.approx(arrival, abs=EXACT)
        assert r.start_s == pytest.approx(start, abs=EXACT)
        assert r.first_token_s == pytest.approx(first, abs=EXACT)
        assert r.finish_s == pytest.approx(finish, abs=EXACT)
        assert (r.prompt_tokens, r.output_tokens, r.batch) == (8, 2, 1)
    assert_log(trace, [(0, 0, "prefill", 1.0, 2.0), (0, 0, "decode", 2.0, 2.5),
                       (0, 0, "prefill", 2.5, 3.5), (0, 0, "decode", 3.5, 4.0)])
    df = trace.ops()
    assert list(zip(df["request"], df["phase"])) == [(0, "prefill"), (0, "decode"),
                                                     (1, "prefill"), (1, "decode")]


def test_profiled_slowdown_answers_from_the_contention_model():
    rt = SimRuntime(profile(compute_by_comm=1.25, comm_by_compute=1.1), 1)
    assert rt.profiled_slowdown("compute", "comm") == pytest.approx(1.25)
    assert rt.profiled_slowdown("comm", "compute") == pytest.approx(1.1)
    assert rt.profiled_slowdown("compute", "compute") == pytest.approx(2.0)   # equal share
