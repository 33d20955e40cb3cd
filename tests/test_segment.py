"""Segments (simulator/segment.py): a launch_seq simulated as one timed unit must give exactly the
op-by-op engine's trace: hand-worked logs, the split and expand paths against op-level runs, and
every strategy on small cases with segments on and off."""
from __future__ import annotations

import numpy as np
import pytest

import strategies
from simulator.engine import SimRuntime
from simulator.hardware import load_hardware
from simulator.metrics import summarize
from simulator.model import load_model
from simulator.workload import parse_workload
from tests.test_engine import StubCost, Program, ar, no_requests, op, profile

TABLE = {"a": (1.0, "compute"), "b": (1.0, "compute"), "c": (1.0, "compute"),
         "d": (1.5, "compute"), "p": (1.0, "compute"), "x": (1.0, "compute"),
         "ar": (2.0, "comm")}


def both(host, *, devices=2, launch_s=0.0, hw=None, table=TABLE):
    """Run `host` with segments on and off; return (segment runtime, its log, op-level log)."""
    logs = []
    for segments in (True, False):
        rt = SimRuntime(hw or profile(), devices, cost=StubCost(table), launch_overhead_s=launch_s,
                        segments=segments)
        trace = rt.run(Program(host), no_requests)
        logs.append((rt, log(trace), trace))
    return logs[0][0], logs[0][1], logs[1][1], logs[0][2], logs[1][2]


def log(trace):
    """Every row, in a canonical order (rows are recorded as ops end; segments record at once)."""
    return sorted((r.device, r.stream, r.start_s, r.end_s, r.name, r.transfer_start_s, r.request,
                   r.phase, r.isolated_s, r.op_class) for r in trace.records())


def test_segment_log_by_hand_with_launch_overhead():
    def host(rt):
        rt.launch_seq([op("a"), ar("ar", (0, 1)), op("b")], (0, 1), 0, 7, "prefill")

    rt, seg, ref, trace, _ = both(host, launch_s=0.5)
    # launches end at 0.5, 1.0, 1.5 on each device's host: a [0.5, 1.5], ar [1.5, 3.5], b [3.5, 4.5]
    want = []
    for d in (0, 1):
        want += [(d, 0, 0.5, 1.5, "a", 0.5, 7, "prefill", 1.0, "compute"),
                 (d, 0, 1.5, 3.5, "ar", 1.5, 7, "prefill", 2.0, "comm"),
                 (d, 0, 3.5, 4.5, "b", 3.5, 7, "prefill", 1.0, "compute")]
    assert seg == sorted(want) and ref == seg
    assert rt.segment_counts == {"run": 1, "expanded": 0, "split": 0}
    assert trace.meta["makespan_s"] == 4.5


def test_segment_waits_for_late_launches_exactly_as_ops_do():
    """Launches slower than the ops: each op starts when its launch is done."""
    def host(rt):
        rt.launch_seq([op("a"), op("b"), op("c")], (0,), 0)

    rt, seg, ref, _, _ = both(host, devices=1, launch_s=1.25)
    assert [(r[2], r[3]) for r in seg] == [(1.25, 2.25), (2.5, 3.5), (3.75, 4.75)]
    assert seg == ref and rt.segment_counts["run"] == 1


def test_an_op_beside_a_running_segment_splits_it():
    """x starts on device 0's second stream at 1.5, while b runs in the segment: from then on the
    engine runs ops one by one, with b's remaining work and the contention model."""
    def host(rt):
        s1 = rt.create_stream(0, priority=1)
        ev = rt.new_event("d_done")
        rt.launch_seq([op("a"), op("b"), op("c")], (0,), 0)
        rt.launch(op("d"), 1, 0)
        rt.record(ev, 1, 0)
        rt.wait(0, s1, ev)
        rt.launch(op("x"), 0, s1)

    rt, seg, ref, t1, t2 = both(host)
    assert seg == ref
    assert rt.segment_counts == {"run": 1, "expanded": 0, "split": 1}
    b = next(r for r in seg if r[4] == "b")
    assert b[2] == 1.0 and b[3] > 2.0                  # slowed by x from 1.5 on
    assert summarize(t1) == pytest.approx(summarize(t2), rel=1e-12, nan_ok=True)


def test_a_split_during_a_collective_keeps_its_transfer():
    def host(rt):
        s1 = rt.create_stream(1, priority=1)
        ev = rt.new_event("p_done")
        rt.launch_seq([op("a"), ar("ar", (0, 1)), op("b")], (0, 1), 0)
        rt.launch(op("p"), 2, 0)
        rt.launch(op("p"), 2, 0)
        rt.record(ev, 2, 0)
        rt.wait(1, s1, ev)
        rt.launch(op("x"), 1, s1)                          # starts at 2.0, inside ar [1, 3]

    rt, seg, ref, _, _ = both(host, devices=3)
    assert seg == ref
    assert rt.segment_counts == {"run": 1, "expanded": 0, "split": 1}


def test_members_arriving_at_different_times_run_op_by_op():
    def host(rt):
        rt.launch(op("p"), 0, 0)                           # device 0 reaches the segment at 1.0
        rt.launch_seq([op("a"), ar("ar", (0, 1)), op("b")], (0, 1), 0)

    rt, seg, ref, _, _ = both(host)
    assert seg == ref
    assert rt.segment_counts == {"run": 0, "expanded": 1, "split": 0}
    assert next(r for r in seg if r[0] == 1 and r[4] == "a")[2] == 0.0   # device 1 did not wait


def test_unequal_host_clocks_fall_back_to_single_ops():
    def host(rt):
        rt.launch(op("p"), 0, 0)
        rt.launch_seq([op("a"), op("b")], (0, 1), 0)

    rt, seg, ref, _, _ = both(host, launch_s=0.5)
    assert seg == ref and rt.segment_counts["run"] == 0


def test_shared_link_segment_with_comm_over_part_of_the_machine_is_op_level():
    """Another group's transfer could share the link, so no closed form is taken."""
    def host(rt):
        rt.launch_seq([op("a"), ar("ar", (0, 1))], (0, 1), 0)
        rt.launch_seq([op("a"), ar("ar", (2, 3))], (2, 3), 0)

    rt, seg, ref, _, _ = both(host, devices=4, hw=profile(shared_link=True))
    assert seg == ref and rt.segment_counts["run"] == 0
    rt, seg, ref, _, _ = both(host, devices=4, hw=profile(shared_link=False))
    assert seg == ref and rt.segment_counts["run"] == 2


# ------------------------------------------------------------------------------------ strategies

CASES = {
    "tp": ({}, 4), "tp-no-sync": ({"host_sync": False}, 2),
    "pp": ({}, 4), "pp-hybrid": ({"tp": 2}, 4), "pp-no-sync": ({"host_sync": False}, 2),
    "iso": ({}, 2), "liger": ({}, 2),
}


def run_strategy(key, hw_name, segments, keep_ops=-1, rate=40.0, mirror=True):
    params, devices = CASES[key]
    name = key.split("-")[0]
    cls = strategies.get(name)
    model = load_model({"preset": "llama-2-7b", "layers": 4})
    wl = parse_workload({"requests": 6, "arrival": {"kind": "poisson", "rate_rps": rate},
                         "prompt_tokens": {"dist": "uniform", "low": 32, "high": 256},
                         "output_tokens": {"dist": "uniform", "low": 1, "high": 5}}, "test")
    rt = SimRuntime(load_hardware(hw_name), devices, segments=segments, keep_ops=keep_ops,
                    mirror=mirror)
    trace = rt.run(cls(model, devices, cls.Params(**params)), wl.source(np.random.default_rng(1)))
    return rt, trace


@pytest.mark.parametrize("hw_name", ["a100-sxm4-80gb", "a100-pcie-40gb"])
@pytest.mark.parametrize("key", sorted(CASES))
def test_every_strategy_gives_the_op_level_trace_exactly(key, hw_name):
    rt, seg = run_strategy(key, hw_name, True)
    _, ref = run_strategy(key, hw_name, False)
    assert log(seg) == log(ref)                                   # same floats, every op
    assert [r.__dict__ for r in seg.requests] == [r.__dict__ for r in ref.requests]
    assert summarize(seg) == pytest.approx(summarize(ref), rel=1e-12, nan_ok=True)
    if key != "liger" and not (key == "pp-hybrid" and hw_name == "a100-pcie-40gb"):
        assert rt.segment_counts["run"] > 0


@pytest.mark.parametrize("key", ["tp", "pp", "iso", "liger"])
def test_totals_without_rows_match_the_op_level_run(key):
    """With no rows kept, segments go straight into the recorder's totals."""
    _, seg = run_strategy(key, "a100-sxm4-80gb", True, keep_ops=0)
    _, ref = run_strategy(key, "a100-sxm4-80gb", False)
    assert len(seg.rows) == 0 and seg.total_ops == len(ref.rows)
    assert summarize(seg) == pytest.approx(summarize(ref), rel=1e-9, nan_ok=True)


def test_a_segment_reached_while_another_stream_runs_goes_op_by_op():
    """Stream 1 of device 0 runs d [0, 1.5] when stream 0 reaches the segment: no closed form."""
    def host(rt):
        s1 = rt.create_stream(0, priority=1)
        rt.launch(op("d"), 0, s1)
        rt.launch_seq([op("a"), op("b")], (0,), 0)

    rt, seg, ref, _, _ = both(host, devices=1)
    assert seg == ref
    assert rt.segment_counts == {"run": 0, "expanded": 1, "split": 0}
    a = next(r for r in seg if r[4] == "a")
    assert a[3] > 1.0                                   # slowed beside d


def test_delay_to_lands_on_the_exact_float():
    from simulator.segment import delay_to
    rng = np.random.default_rng(5)
    for _ in range(2000):
        now = float(rng.uniform(0, 1e-3))
        t = now + float(rng.uniform(0, 1e-3)) * float(rng.choice([1e-9, 1e-3, 1.0]))
        assert now + delay_to(now, t) == t


@pytest.mark.parametrize("seed", range(6))
def test_times_equal_the_op_by_op_recurrence_bit_for_bit(seed):
    """`times` gives the op-by-op recurrence's very floats, also where launches bind late."""
    from simulator.segment import times
    rng = np.random.default_rng(seed)
    n = int(rng.integers(1, 400))
    secs = rng.exponential(5e-6, n).tolist()
    launch = float(rng.choice([0.0, 2e-6, 4.5e-6, 9e-6]))
    ready = np.add.accumulate(np.r_[float(rng.uniform(0, 1e-3)), np.full(n, launch)])[1:]
    t = float(rng.uniform(0, 2e-3))
    want_s, want_e = [], []
    u = t
    for r, c in zip(ready.tolist(), secs):
        if r > u:
            u = u + (r - u)
        want_s.append(u)
        u = u + c
        want_e.append(u)
    got_s, got_e = times(ready, secs, t)
    assert got_s == want_s and got_e == want_e
