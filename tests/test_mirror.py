"""Mirrored groups (Runtime.mirror): a strategy that issues the same program to every device of a
group, leader first, may have only the leader simulated. The result must be the trace of simulating
every device: every strategy that mirrors, on two profiles, both ways, row for row (to 1e-12: where
contention changes a collective's rate, the full run reflows it once per member device, and the
roundings of those updates can differ in the last place)."""
from __future__ import annotations

import pytest

from simulator.engine import SimRuntime
from simulator.errors import SimulationError
from simulator.metrics import summarize
from tests.test_engine import Program, StubCost, no_requests, op, profile
from tests.test_segment import CASES, log, run_strategy


@pytest.mark.parametrize("segments", [True, False], ids=["segments", "op-level"])
@pytest.mark.parametrize("hw_name", ["a100-sxm4-80gb", "a100-pcie-40gb"])
@pytest.mark.parametrize("key", sorted(k for k in CASES if not k.startswith("pp")))
def test_mirrored_run_gives_every_devices_trace(key, hw_name, segments):
    rt, mirrored = run_strategy(key, hw_name, segments, mirror=True)
    _, full = run_strategy(key, hw_name, segments, mirror=False)
    assert rt.machine.followers                        # the strategy did mirror its devices
    close(log(mirrored), log(full))
    close([tuple(r.__dict__.values()) for r in mirrored.requests],
          [tuple(r.__dict__.values()) for r in full.requests])
    assert mirrored.total_ops == full.total_ops
    assert summarize(mirrored) == pytest.approx(summarize(full), rel=1e-12, nan_ok=True)


def close(rows_a, rows_b, rel=1e-12):
    """Equal row for row: other fields exactly, floats to `rel`."""
    assert len(rows_a) == len(rows_b)
    for a, b in zip(rows_a, rows_b):
        assert len(a) == len(b)
        for x, y in zip(a, b):
            if isinstance(x, float):
                assert x == pytest.approx(y, rel=rel, abs=1e-15), (a, b)
            else:
                assert x == y, (a, b)


def _run(host, devices=2):
    table = {"a": (1.0, "compute"), "b": (2.0, "compute")}
    rt = SimRuntime(profile(), devices, cost=StubCost(table), launch_overhead_s=0.0)
    return rt.run(Program(host), no_requests)


def test_a_follower_that_launches_something_else_is_an_error():
    def host(rt):
        rt.mirror((0, 1))
        rt.launch(op("a"), 0, 0)
        rt.launch(op("b"), 1, 0)

    with pytest.raises(SimulationError, match="mirrors device 0"):
        _run(host)


def test_a_follower_record_without_its_leaders_is_an_error():
    def host(rt):
        rt.mirror((0, 1))
        rt.launch(op("a"), 0, 0)
        rt.record(rt.new_event("x"), 1, 0)

    with pytest.raises(SimulationError, match="records event 'x' where device 0 recorded none"):
        _run(host)


def test_mirror_after_launching_is_an_error():
    def host(rt):
        rt.launch(op("a"), 1, 0)
        rt.mirror((0, 1))

    with pytest.raises(SimulationError, match="declare mirrored groups before launching"):
        _run(host)


def test_a_followers_event_completes_with_its_leaders():
    seen = []

    def host(rt):
        rt.mirror((0, 1))
        a = op("a")
        evs = [rt.new_event(f"e{d}") for d in (0, 1)]
        for d in (0, 1):
            rt.launch(a, d, 0)
        for d in (0, 1):
            rt.record(evs[d], d, 0)
        rt.when(evs[1], lambda t: seen.append(("when", t)))
        yield from rt.synchronize(evs[1])
        seen.append(("sync", rt.now))

    trace = _run(host)
    assert seen == [("when", 1.0), ("sync", 1.0)]
    assert sorted((r.device, r.start_s, r.end_s) for r in trace.records()) == [(0, 0.0, 1.0), (1, 0.0, 1.0)]
