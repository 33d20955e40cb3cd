"""A stream's own time beside its ops (docs/engine.md, "Reaction latencies"): an idle stream wakes
`device.idle_wakeup_us` after a launch to it, and recording an event takes `device.record_us` of
its stream's time. Exact logs on the stub cost model, as in test_reaction_latency.py; the
TorchRuntime side (what a real run measures) and the in-run profile that carries both."""
from __future__ import annotations

from dataclasses import replace

import pytest

from simulator.errors import ConfigError
from simulator.hardware import load_hardware
from tests.test_engine import ar, assert_log, op, profile, waited_across_streams
from tests.test_reaction_latency import TABLE, simulate, write_profile


def costly(idle_wakeup_s=0.0, record_s=0.0, event_wait_s=0.0, dispatch_s=0.0):
    hw = profile()
    return replace(hw, device=replace(hw.device, idle_wakeup_s=idle_wakeup_s, record_s=record_s,
                                      event_wait_s=event_wait_s, dispatch_s=dispatch_s))


def test_an_idle_stream_wakes_for_its_first_op_and_not_between_queued_ones():
    def host(rt):
        rt.launch(op("a"), 0, 0)
        rt.launch(op("b"), 0, 0)            # queued behind a: no wake-up
        yield from ()
    _, trace = simulate(host, TABLE, costly(idle_wakeup_s=0.25))
    assert_log(trace, [(0, 0, "a", 0.25, 1.25), (0, 0, "b", 1.25, 1.75)])


def test_a_launch_after_the_stream_ran_dry_pays_the_wake_up_again():
    def host(rt):
        rt.launch(op("a"), 0, 0)            # [0.25, 1.25]
        yield rt.env.timeout(2.0)
        rt.launch(op("b"), 0, 0)            # the stream has been idle since 1.25
        yield rt.env.timeout(0.1)
        rt.launch(op("b"), 0, 0)            # b runs until 2.75: queued, no wake-up
    _, trace = simulate(host, TABLE, costly(idle_wakeup_s=0.25))
    assert_log(trace, [(0, 0, "a", 0.25, 1.25), (0, 0, "b", 2.25, 2.75),
                       (0, 0, "b", 2.75, 3.25)])


def test_a_launch_that_finds_the_stream_busy_but_lands_after_it_ends_wakes_it():
    """The host clock runs ahead of the stream: an op whose launch is done after the stream's
    last op ended found the stream idle, though the stream was busy when the host began it."""
    from simulator.engine import SimRuntime
    from tests.test_engine import Program, StubCost, no_requests
    rt = SimRuntime(costly(idle_wakeup_s=0.25), 1, cost=StubCost(TABLE), launch_overhead_s=1.0)

    def host(r):
        r.launch(op("b"), 0, 0)             # launch done at 1.0, wakes, [1.25, 1.75]
        r.launch(op("b"), 0, 0)             # launch done at 2.0 > 1.75: idle again
        yield from ()
    trace = rt.run(Program(host), no_requests)
    assert_log(trace, [(0, 0, "b", 1.25, 1.75), (0, 0, "b", 2.25, 2.75)])


def test_a_blocked_wait_pays_the_event_wait_and_what_follows_it_no_wake_up():
    # s1 wakes at 0.25 for its wait, then blocks until the event
    _, trace = simulate(waited_across_streams, TABLE,
                        costly(idle_wakeup_s=0.25, event_wait_s=0.5))
    # a [0.25, 1.25]; the event at 1.25, s1 resumes at 1.75 and b follows at once
    assert_log(trace, [(0, 0, "a", 0.25, 1.25), (0, 1, "b", 1.75, 2.25)])


def test_a_record_completes_its_event_at_once_and_holds_its_stream():
    seen = {}

    def host(rt):
        ev = rt.new_event("a_done")
        rt.launch(op("a"), 0, 0)
        rt.record(ev, 0, 0)
        rt.when(ev, lambda t: seen.setdefault("event", t))
        rt.launch(op("b"), 0, 0)
        yield from rt.synchronize(ev)
        seen["host"] = rt.now
    _, trace = simulate(host, TABLE, costly(record_s=0.125))
    assert_log(trace, [(0, 0, "a", 0.0, 1.0), (0, 0, "b", 1.125, 1.625)])
    assert seen == {"event": 1.0, "host": 1.0}


def test_records_cost_each_time_and_the_dispatch_still_goes_with_the_op():
    def host(rt):
        for i in range(3):
            rt.record(rt.new_event(f"e{i}"), 0, 0)
        rt.launch(op("b"), 0, 0)
        yield from ()
    _, trace = simulate(host, TABLE, costly(record_s=0.125, dispatch_s=0.25))
    assert_log(trace, [(0, 0, "b", 0.375, 1.125)])


def test_a_collective_member_ending_leaves_its_stream_awake_for_what_is_queued():
    def host(rt):
        reduce = ar("ar", (0, 1))
        rt.launch(op("a"), 0, 0)
        rt.launch(reduce, 0, 0)
        rt.launch(reduce, 1, 0)
        rt.launch(op("b"), 1, 0)            # queued behind the collective on device 1
        yield from ()
    table = {"a": (1.0, "compute"), "b": (0.5, "compute"), "ar": (0.5, "comm")}
    _, trace = simulate(host, table, costly(idle_wakeup_s=0.25), devices=2)
    assert_log(trace, [(0, 0, "a", 0.25, 1.25), (0, 0, "ar", 1.25, 1.75, 1.25),
                       (1, 0, "ar", 0.25, 1.75, 1.25), (1, 0, "b", 1.75, 2.25)])


def test_stream_costs_turn_off_segments_and_mirroring():
    def host(rt):
        rt.mirror((0, 1))
        rt.launch_seq([op("a"), op("b")], (0, 1))
        yield from ()
    for hw, fast in ((profile(), True), (costly(idle_wakeup_s=0.25), False),
                     (costly(record_s=0.25), False), (lagging(0.25), False)):
        rt, trace = simulate(host, TABLE, hw, devices=2)
        assert (rt.segment_counts["run"] > 0) == fast
        assert rt.machine.mirrored == fast
        assert {r.device for r in trace.records()} == {0, 1}


def test_zero_stream_costs_leave_the_log_unchanged():
    _, t1 = simulate(waited_across_streams, TABLE, costly())
    _, t0 = simulate(waited_across_streams, TABLE, profile())
    assert t1.ops().equals(t0.ops())


# ------------------------------------------------------------------------------------ profiles

def test_profiles_read_the_stream_costs_with_their_sources(tmp_path):
    path = write_profile(tmp_path, device={
        "idle_wakeup_us": {"value": 150, "source": "measured: in-run"},
        "record_us": {"value": 30, "source": "measured: in-run"}})
    hw = load_hardware(path)
    assert (hw.device.idle_wakeup_s, hw.device.record_s) == pytest.approx((150e-6, 30e-6))
    assert hw.sources["device.idle_wakeup_us"] == "measured: in-run"
    base = load_hardware("a100-sxm4-80gb")
    assert (base.device.idle_wakeup_s, base.device.record_s) == (0.0, 0.0)


@pytest.mark.parametrize("key", ["idle_wakeup_us", "record_us"])
def test_a_negative_stream_cost_is_refused_with_its_key(tmp_path, key):
    path = write_profile(tmp_path, device={key: {"value": -1, "source": "assumed: x"}})
    with pytest.raises(ConfigError) as exc:
        load_hardware(path)
    assert f"device.{key}" in str(exc.value)


def test_in_run_reactions_carry_the_stream_costs():
    from simulator.calibrate.inrun import reactions
    from simulator.torchrt.runtime import HostLog
    data = {"device": {"dispatch_us": {"value": 1, "source": "old"},
                       "idle_wakeup_us": {"value": 999, "source": "old"}}, "host": {}}
    log = HostLog(0.01, 100, 100, dispatches_s=[10e-6, 30e-6], idle_wakeups_s=[100e-6, 300e-6],
                  records_s=[20e-6])
    out = reactions(data, log, "measured: test")["device"]
    assert out["idle_wakeup_us"]["value"] == pytest.approx(200.0)
    assert out["record_us"]["value"] == pytest.approx(20.0)
    assert out["dispatch_us"]["value"] == pytest.approx(20.0)
    assert "2 launches" in out["idle_wakeup_us"]["source"]
    quiet = reactions(data, HostLog(0.01, 100, 100), "measured: test")["device"]
    assert "idle_wakeup_us" not in quiet                 # nothing seen: the old one goes too
    total = HostLog()
    total.add(log)
    total.add(log)
    assert (len(total.idle_wakeups_s), len(total.records_s)) == (4, 2)


# ------------------------------------------------------------------------------ member lags

def lagging(lag_s, lags=None):
    hw = costly()
    spreads = {"comm_lag": tuple(lags)} if lags else {}
    return replace(hw, device=replace(hw.device, comm_lag_s=lag_s), spreads=spreads)


def test_each_member_of_a_collective_ends_its_lag_after_the_transfer():
    def host(rt):
        reduce = ar("ar", (0, 1))
        rt.launch(reduce, 0, 0)
        rt.launch(reduce, 1, 0)
        rt.launch(op("b"), 0, 0)            # waits for its stream's member to end
        yield from ()
    table = {"b": (0.5, "compute"), "ar": (0.5, "comm")}
    _, trace = simulate(host, table, lagging(0.25), devices=2)
    assert_log(trace, [(0, 0, "ar", 0.0, 0.75, 0.0), (0, 0, "b", 0.75, 1.25),
                       (1, 0, "ar", 0.0, 0.75, 0.0)])


def test_drawn_lags_make_the_next_collective_wait_for_the_later_member():
    """With lags drawn per member, the members of a collective end apart and the next one
    starts when the later arrives: two all-reduces take longer than twice one transfer plus the
    mean lag, as the real gloo members do."""
    def host(rt):
        reduce = ar("ar", (0, 1))
        for _ in range(40):
            rt.launch(reduce, 0, 0)
            rt.launch(reduce, 1, 0)
        yield from ()
    table = {"ar": (0.5, "comm")}
    _, drawn = simulate(host, table, lagging(0.25, [0.0, 0.5]), devices=2)
    _, fixed = simulate(host, table, lagging(0.25), devices=2)
    end = lambda t: max(r.end_s for r in t.records())   # noqa: E731
    assert end(fixed) == pytest.approx(40 * 0.75)
    # a member ends 0 or 0.5 after the transfer: the later of two is 0.5 three times in four
    assert end(drawn) > end(fixed) + 5 * 0.25
    ends = {}
    for r in drawn.records():
        ends.setdefault(r.transfer_start_s, []).append(r.end_s)
    assert any(a != b for a, b in ends.values())           # members end apart
    # every transfer starts once both members have ended the previous one
    rows = sorted(drawn.records(), key=lambda r: (r.device, r.start_s))
    by_dev = {d: [r for r in rows if r.device == d] for d in (0, 1)}
    for k in range(1, 40):
        assert by_dev[0][k].transfer_start_s == pytest.approx(
            max(by_dev[0][k - 1].end_s, by_dev[1][k - 1].end_s))


def test_a_lagging_member_holds_what_follows_on_its_stream_only():
    def host(rt):
        s1 = rt.create_stream(0)
        reduce = ar("ar", (0, 1))
        rt.launch(reduce, 0, 0)
        rt.launch(reduce, 1, 0)
        rt.launch(op("b"), 0, s1)           # another stream of device 0: not held
        yield from ()
    table = {"b": (0.5, "compute"), "ar": (0.5, "comm")}
    _, trace = simulate(host, table, lagging(0.25), devices=2)
    got = {(r.device, r.stream, r.name): (r.start_s, r.end_s) for r in trace.records()}
    assert got[(0, 1, "b")][0] == 0.0      # (slowed beside the transfer: the stub's contention)
    assert got[(0, 0, "ar")][1] == got[(1, 0, "ar")][1] == pytest.approx(0.75)


def test_profiles_read_member_lags_as_a_time_or_times_to_draw(tmp_path):
    path = write_profile(tmp_path, device={
        "comm_lag_us": {"value": [0, 100, 300], "source": "measured: in-run"}})
    hw = load_hardware(path)
    assert hw.device.comm_lag_s == pytest.approx(400e-6 / 3)
    assert hw.spreads["comm_lag"] == pytest.approx((0.0, 100e-6, 300e-6))
    assert load_hardware("a100-sxm4-80gb").device.comm_lag_s == 0.0
