"""How late the host and the streams react to a completed event (docs/engine.md, "Reaction
latencies"): `host.wakeup_us` (a blocked host resumes), `host.callback_us` (a host callback runs)
and `device.event_wait_us` (a stream blocked on another stream's event resumes). Exact logs on
the stub cost of test_engine; built-in profiles have none of them, so nothing changes there."""
from __future__ import annotations

from dataclasses import replace

import pytest
import yaml

from simulator.engine import SimRuntime
from simulator.errors import ConfigError
from simulator.hardware import load_hardware
from simulator.workload import Request, open_loop
from tests.test_engine import EXACT, Program, StubCost, ar, assert_log, no_requests, op, profile


def latent(wakeup_s=0.0, callback_s=0.0, event_wait_s=0.0):
    hw = profile()
    return replace(hw, wakeup_s=wakeup_s, callback_s=callback_s,
                   device=replace(hw.device, event_wait_s=event_wait_s))


def simulate(host, table, hw, devices=1, source=no_requests):
    rt = SimRuntime(hw, devices, cost=StubCost(table), launch_overhead_s=0.0)
    return rt, rt.run(Program(host), source)


TABLE = {"a": (1.0, "compute"), "b": (0.5, "compute")}


def sync_program(seen):
    def host(rt):
        ev = rt.new_event("a_done")
        rt.launch(op("a"), 0, 0)
        rt.record(ev, 0, 0)
        yield from rt.synchronize(ev)      # a ends at 1.0
        seen["sync"] = rt.now
        rt.launch(op("b"), 0, 0)
    return host


def test_a_blocked_host_resumes_wakeup_after_the_event():
    seen = {}
    _, trace = simulate(sync_program(seen), TABLE, latent(wakeup_s=0.25))
    assert seen["sync"] == pytest.approx(1.25, abs=EXACT)
    assert_log(trace, [(0, 0, "a", 0.0, 1.0), (0, 0, "b", 1.25, 1.75)])


def test_a_host_that_does_not_block_pays_no_wakeup():
    seen = {}

    def host(rt):
        ev = rt.new_event("a_done")
        rt.launch(op("a"), 0, 0)
        rt.record(ev, 0, 0)
        yield rt.env.timeout(2.0)           # the event completed meanwhile
        yield from rt.synchronize(ev)
        seen["sync"] = rt.now
        ev2 = rt.new_event("again")
        rt.record(ev2, 0, 0)
        yield from rt.wait_any([ev, ev2])   # one is done: returns at once
        seen["any"] = rt.now
    simulate(host, TABLE, latent(wakeup_s=0.25))
    assert seen == {"sync": pytest.approx(2.0, abs=EXACT), "any": pytest.approx(2.0, abs=EXACT)}


def test_wait_any_resumes_wakeup_after_the_first_event():
    seen = {}

    def host(rt):
        s1 = rt.create_stream(0)
        e_a, e_b = rt.new_event("a"), rt.new_event("b")
        rt.launch(op("a"), 0, 0)
        rt.record(e_a, 0, 0)
        rt.launch(op("b"), 0, s1)
        rt.record(e_b, 0, s1)
        yield from rt.wait_any([e_a, e_b])
        seen["any"] = rt.now
    # a and b share the device (low_priority_share 0.2 applies only across priorities: equal
    # priorities split it evenly): b, 0.5 s of work at rate 1/2, ends at 1.0
    simulate(host, TABLE, latent(wakeup_s=0.125, callback_s=0.0625))
    assert seen["any"] == pytest.approx(1.125, abs=EXACT)


def test_a_blocked_host_resumes_only_after_the_events_callbacks():
    """TorchRuntime's host runs an event's callbacks before the host blocked on it resumes: with
    callback_us above wakeup_us the host resumes at the callbacks' time."""
    seen, calls = {}, []

    def host(rt):
        ev = rt.new_event("a_done")
        rt.launch(op("a"), 0, 0)
        rt.record(ev, 0, 0)
        rt.when(ev, lambda t: calls.append(rt.now))
        yield from rt.synchronize(ev)
        seen["sync"] = rt.now
    simulate(host, TABLE, latent(wakeup_s=0.125, callback_s=0.5))
    assert calls == [pytest.approx(1.5, abs=EXACT)] and seen["sync"] == pytest.approx(1.5, abs=EXACT)


def test_the_host_sees_an_event_done_only_once_it_noticed_it():
    """Between an event's completion and callback_us later, `query` says not done, a `when`
    callback waits for the notice, and a wait on it returns at the notice: a host loop that
    waits until a callback has moved its state (pp's) cannot spin at one instant."""
    seen = {}

    def host(rt):
        ev = rt.new_event("a_done")
        rt.launch(op("a"), 0, 0)
        rt.record(ev, 0, 0)
        state = {"moved": False}
        rt.when(ev, lambda t: state.update(moved=True))
        yield rt.env.timeout(1.1)                # a completed at 1.0; noticed at 1.25
        seen["query"] = rt.query(ev)
        calls = []
        rt.when(ev, lambda t: calls.append((t, rt.now)))
        spins = 0
        while not state["moved"]:                # the loop of strategies/pp.py::host
            yield from rt.wait_any([ev])
            spins += 1
        seen.update(spins=spins, now=rt.now, calls=calls, again=rt.query(ev))
        yield from rt.synchronize(ev)
        seen["sync"] = rt.now
    simulate(host, TABLE, latent(callback_s=0.25))
    assert seen["query"] is False and seen["again"] is True
    assert seen["spins"] == 1 and seen["now"] == pytest.approx(1.25, abs=EXACT)
    assert seen["calls"] == [pytest.approx((1.0, 1.25), abs=EXACT)]
    assert seen["sync"] == pytest.approx(1.25, abs=EXACT)


def test_a_callback_runs_callback_after_its_event_with_the_event_time():
    calls = []

    def host(rt):
        ev = rt.new_event("a_done")
        rt.launch(op("a"), 0, 0)
        rt.record(ev, 0, 0)
        rt.when(ev, lambda t: calls.append((t, rt.now)))
        yield rt.env.timeout(5.0)
        rt.when(ev, lambda t: calls.append((t, rt.now)))     # done already: at once
    simulate(host, TABLE, latent(callback_s=0.25))
    assert calls == [pytest.approx((1.0, 1.25), abs=EXACT), pytest.approx((1.0, 5.0), abs=EXACT)]


def test_request_times_keep_the_event_time_under_callback_latency():
    def host(rt):
        req = yield from rt.next_request()
        ev = rt.new_event("done")
        rt.launch(op("a"), 0, 0, req.id, "prefill")
        rt.record(ev, 0, 0)
        rt.first_token_when(req.id, ev)
        rt.finish_when(req.id, ev)
        assert (yield from rt.next_request()) is None
    _, trace = simulate(host, TABLE, latent(callback_s=0.25),
                        source=open_loop([Request(0, 0.0, 16, 1)]))
    rec = trace.requests[0]
    assert rec.finish_s == pytest.approx(1.0, abs=EXACT)


def test_a_stream_blocked_on_an_event_resumes_event_wait_after_it():
    def host(rt):
        s1 = rt.create_stream(0)
        ev = rt.new_event("a_done")
        rt.launch(op("a"), 0, 0)
        rt.record(ev, 0, 0)
        rt.wait(0, s1, ev)                  # blocks: a ends at 1.0
        rt.launch(op("b"), 0, s1)
        yield from ()
    _, trace = simulate(host, TABLE, latent(event_wait_s=0.25))
    assert_log(trace, [(0, 0, "a", 0.0, 1.0), (0, 1, "b", 1.25, 1.75)])


def test_a_wait_on_a_completed_event_costs_nothing():
    def host(rt):
        s1 = rt.create_stream(0)
        ev = rt.new_event("a_done")
        rt.launch(op("a"), 0, 0)
        rt.record(ev, 0, 0)
        yield rt.env.timeout(2.0)
        rt.wait(0, s1, ev)                  # done at 1.0: nothing to wake from
        rt.launch(op("b"), 0, s1)
    _, trace = simulate(host, TABLE, latent(event_wait_s=0.25))
    assert_log(trace, [(0, 0, "a", 0.0, 1.0), (0, 1, "b", 2.0, 2.5)])


def test_no_latency_leaves_the_log_unchanged():
    seen, seen0 = {}, {}
    _, t1 = simulate(sync_program(seen), TABLE, latent())
    _, t0 = simulate(sync_program(seen0), TABLE, profile())
    assert seen == seen0 and t1.ops().equals(t0.ops())


def test_paced_launches_follow_the_host_program_under_wakeup_latency():
    """launch_paced's one-pass form assumes an instant wake-up: with a wake-up latency it runs
    the literal program, whose every synchronize pays it."""
    table = {"a": (1.0, "compute"), "b": (0.25, "compute"), "ar": (0.5, "comm")}
    seen = {}

    def host(rt):
        rt.mirror((0, 1))
        runs = [[op("a"), op("b")], [ar("ar", (0, 1))], [op("b")]]
        n, _w, _m = yield from rt.launch_paced(runs, (0, 1), 0, 0, "decode", until_arrival=False)
        seen["n"] = n
    rt, trace = simulate(host, table, latent(wakeup_s=0.5), devices=2)
    assert seen["n"] == 3 and rt.segment_counts.get("paced_runs", 0) == 0
    # run 0: a [0, 1], b [1, 1.25]; its wait (before b) completes at 1.0, the host resumes at
    # 1.5 and launches ar: [1.5, 2.0]; the wait before ar completes at 1.5, the host resumes at
    # 2.0 and launches b: [2.0, 2.25]
    got = sorted((r.name, r.start_s, r.end_s) for r in trace.records() if r.device == 0)
    assert got == [("a", 0.0, 1.0), ("ar", 1.5, 2.0), ("b", 1.0, 1.25), ("b", 2.0, 2.25)]


# ------------------------------------------------------------------------------------ profiles

def write_profile(tmp_path, host=None, device=None):
    src = load_hardware("a100-sxm4-80gb").path
    from importlib import resources
    data = yaml.safe_load(resources.files("hwprofiles").joinpath("a100-sxm4-80gb.yaml").read_text())
    data.pop("measured_tables", None)
    data["host"].update(host or {})
    data["device"].update(device or {})
    path = tmp_path / "p.yaml"
    path.write_text(yaml.safe_dump(data))
    assert src
    return str(path)


def test_profiles_read_the_latencies_with_their_sources(tmp_path):
    path = write_profile(tmp_path,
                         host={"wakeup_us": {"value": 80, "source": "measured: in-run"},
                               "callback_us": {"value": 40, "source": "measured: in-run"}},
                         device={"event_wait_us": {"value": 120, "source": "measured: in-run"}})
    hw = load_hardware(path)
    assert (hw.wakeup_s, hw.callback_s, hw.device.event_wait_s) == \
        pytest.approx((80e-6, 40e-6, 120e-6))
    assert hw.sources["host.wakeup_us"] == "measured: in-run"
    base = load_hardware("a100-sxm4-80gb")
    assert (base.wakeup_s, base.callback_s, base.device.event_wait_s) == (0.0, 0.0, 0.0)
    assert hw.for_execution("graphs").wakeup_s == hw.wakeup_s


def test_a_negative_latency_is_refused_with_its_key(tmp_path):
    path = write_profile(tmp_path, host={"wakeup_us": {"value": -1, "source": "assumed: x"}})
    with pytest.raises(ConfigError) as exc:
        load_hardware(path)
    assert "host.wakeup_us" in str(exc.value)


def test_dispatch_is_added_to_every_op_and_to_profiled_times():
    hw = profile()
    hw = replace(hw, device=replace(hw.device, dispatch_s=0.25))
    seen = {}

    def host(rt):
        reduce = ar("ar", (0, 1))
        rt.launch(op("a"), 0, 0)
        rt.launch(reduce, 0, 0)
        rt.launch(reduce, 1, 0)
        seen["profiled"] = rt.profiled_seconds(op("a"))
        yield from ()
    table = {"a": (1.0, "compute"), "ar": (0.5, "comm")}
    _, trace = simulate(host, table, hw, devices=2)
    # a: 1.0 + 0.25; the collective joins at 1.25 (device 1 waits from 0): 0.5 + 0.25
    assert_log(trace, [(0, 0, "a", 0.0, 1.25), (0, 0, "ar", 1.25, 2.0, 1.25),
                       (1, 0, "ar", 0.0, 2.0, 1.25)])
    assert seen["profiled"] == pytest.approx(1.25)
    assert trace.ops()["isolated_s"].max() == pytest.approx(1.0)   # the kernel's own time
