"""Op-time jitter (`device.jitter`, simulator/jitter.py) and the machine-wide `cores` contention
model (contention.CoreContention): what the simulator needs to predict runs on devices that vary
from op to op and share one CPU's cores (docs/engine.md). Exact logs on test_engine's stub cost."""
from __future__ import annotations

from dataclasses import replace
from types import MappingProxyType

import pytest
import yaml

from simulator.engine import SimRuntime
from simulator.errors import ConfigError
from simulator.hardware import ContentionSpec, load_hardware
from tests.test_engine import Program, StubCost, ar, assert_log, no_requests, op, profile
from tests.test_reaction_latency import simulate, write_profile


# ------------------------------------------------------------------------------------ jitter

def test_jitter_draws_have_mean_one_and_the_asked_spread():
    import statistics
    from simulator.jitter import Jitter
    j = Jitter({"gemm": 0.5, "elementwise": 0.0}, seed=3)
    xs = [j.scale("gemm", 2.0) for _ in range(40_000)]
    assert statistics.fmean(xs) == pytest.approx(2.0, rel=0.02)
    assert statistics.pstdev(xs) / statistics.fmean(xs) == pytest.approx(0.5, rel=0.05)
    assert j.scale("elementwise", 2.0) == 2.0 and j.scale("attention", 2.0) == 2.0
    again = Jitter({"gemm": 0.5}, seed=3)
    assert [again.scale("gemm", 2.0) for _ in range(5)] == xs[:5]


def test_jitter_ratios_are_drawn_uniformly():
    import collections
    from simulator.jitter import Jitter
    j = Jitter({"all_reduce": (0.5, 0.5, 2.0)}, seed=1)
    xs = collections.Counter(j.scale("all_reduce", 1.0) for _ in range(30_000))
    assert set(xs) == {0.5, 2.0}
    assert xs[0.5] / 30_000 == pytest.approx(2 / 3, abs=0.02)


def jittery(cv):
    hw = profile()
    return replace(hw, device=replace(hw.device, jitter=cv))


def spmd_program(steps=20):
    def host(rt):
        rt.mirror((0, 1))
        for _ in range(steps):
            rt.launch_seq([op("a"), op("b")], (0, 1))
            reduce = ar("ar", (0, 1))
            for d in (0, 1):
                rt.launch(reduce, d, 0)
        yield from ()
    return host


def run_jittery(hw, seed):
    rt = SimRuntime(hw, 2, cost=StubCost({"a": (1.0, "compute"), "b": (0.5, "compute"),
                                          "ar": (0.25, "comm")}), launch_overhead_s=0.0, seed=seed)
    return rt, rt.run(Program(spmd_program()), no_requests)


def test_jitter_makes_devices_wait_for_the_slowest_at_each_collective():
    """Each device's a and b (elementwise ops here) take their own draws; every collective starts when the later device
    arrives, so the run takes longer than the sum of the means (20 x 1.75 s)."""
    calm_rt, calm = run_jittery(profile(), 0)
    rt, noisy = run_jittery(jittery({"elementwise": 0.4, "all_reduce": 0.2}), 7)
    assert calm.meta["makespan_s"] == pytest.approx(20 * 1.75, abs=1e-9)
    assert noisy.meta["makespan_s"] > 20 * 1.75 * 1.05
    assert rt.segment_counts["run"] == 0 and not rt.machine.mirrored   # op by op, every device
    ops = noisy.ops()
    a0 = ops[(ops["name"] == "a") & (ops["device"] == 0)]
    a1 = ops[(ops["name"] == "a") & (ops["device"] == 1)]
    assert list(a0["end_s"] - a0["start_s"]) != list(a1["end_s"] - a1["start_s"])
    ars = ops[ops["name"] == "ar"]
    for _t, grp in ars.groupby("transfer_start_s"):
        assert len(grp) == 2 and grp["end_s"].nunique() == 1     # one transfer for the group


def test_jitter_is_reproducible_by_seed():
    hw = jittery({"elementwise": 0.4})
    _, t1 = run_jittery(hw, 11)
    _, t2 = run_jittery(hw, 11)
    _, t3 = run_jittery(hw, 12)
    assert t1.ops().equals(t2.ops())
    assert not t1.ops().equals(t3.ops())


def test_profiles_read_jitter_per_family(tmp_path):
    path = write_profile(tmp_path, device={"jitter": {
        "gemm": {"value": 0.5, "source": "measured: in-run"},
        "all_reduce": {"value": [1, 2, 3], "source": "measured: in-run"}}})
    hw = load_hardware(path)
    assert dict(hw.device.jitter) == {"gemm": 0.5, "all_reduce": (0.5, 1.0, 1.5)}   # mean 1
    assert hw.sources["device.jitter.all_reduce"] == "measured: in-run"
    assert dict(load_hardware("a100-sxm4-80gb").device.jitter) == {}
    for bad, says in (({"matmul": {"value": 0.5, "source": "assumed: x"}}, "gemm"),
                      ({"gemm": {"value": [1.0], "source": "assumed: x"}}, "at least two"),
                      ({"gemm": {"value": [1.0, -2.0], "source": "assumed: x"}}, "> 0"),
                      ({"gemm": {"value": [1.0, 2.0], "source": "guess"}}, "source"),
                      ({"gemm": {"value": -0.1, "source": "assumed: x"}}, ">= 0")):
        with pytest.raises(ConfigError) as exc:
            load_hardware(write_profile(tmp_path, device={"jitter": bad}))
        assert f"device.jitter.{next(iter(bad))}" in str(exc.value) and says in str(exc.value)


def test_inrun_jitter_is_the_quantiles_of_time_over_mean():
    from simulator.calibrate.inrun import JITTER_QUANTILES, MIN_JITTER, jitter_ratios
    from simulator.ops import Gemm
    g, h, k = Gemm(8, 64, 32, "fp32"), Gemm(16, 64, 32, "fp32"), Gemm(32, 64, 32, "fp32")
    times = [1.0] * 60 + [3.0] * 40                     # mean 1.8: ratios 0.556 and 1.667
    log = [(g, 0, 0, 10.0 * i, 10.0 * i + t, 10.0 * i + t) for i, t in enumerate(times)]
    log += [(h, 0, 0, 5000.0 + i, 5000.0 + i + 0.5, 5000.0 + i + 0.5)
            for i in range(MIN_JITTER - 1)]               # too few: left out
    log += [(k, 0, 0, 9000.0 + i, 9000.0 + i + 0.25, 9000.0 + i + 0.25)
            for i in range(MIN_JITTER)]                   # a shape that never varies
    out = jitter_ratios(log)
    assert set(out) == {"gemm"}
    ratios, shapes, n = out["gemm"]
    assert (shapes, n) == (2, 100 + MIN_JITTER) and len(ratios) == JITTER_QUANTILES
    assert ratios == sorted(ratios)
    assert {round(r, 6) for r in ratios} == {round(1 / 1.8, 6), 1.0, round(3 / 1.8, 6)}


# ------------------------------------------------------------------------------------ cores

def cores_profile(cores=2.0, threads=1.0):
    hw = profile()
    return replace(hw, contention=ContentionSpec("cores", MappingProxyType({}), 0.0, cores,
                                                 threads))


def test_core_contention_shares_the_cores_among_the_threads_asked_for():
    from types import SimpleNamespace as NS
    from simulator.contention import CoreContention
    m = CoreContention(ContentionSpec("cores", MappingProxyType({}), 0.0, 2.0, 1.0))
    busy = [NS(op_class="compute", priority=0), NS(op_class="memory", priority=-4)]
    assert m.rates(busy) == [1.0, 1.0]                          # two threads, two cores
    waiting = NS(op_class="comm", priority=0, activity=None)    # a member waiting for the others
    moving = NS(op_class="comm", priority=0, activity=object())
    assert m.rates(busy + [waiting]) == [1.0, 1.0, 1.0]
    assert m.rates(busy + [moving, moving]) == [0.5] * 4
    two_each = CoreContention(ContentionSpec("cores", MappingProxyType({}), 0.0, 4.0, 2.0))
    assert two_each.rates(busy * 2) == [0.5] * 4                # 8 threads asked of 4 cores


def test_cores_couple_devices_that_share_them():
    """Two cores, one thread per op: three compute ops on two devices each run at 2/3; when one
    ends the other two run at full speed. No segments, no mirroring under it."""
    table = {"a": (1.0, "compute"), "b": (2.0, "compute")}

    def host(rt):
        s1 = rt.create_stream(0)
        rt.launch(op("a"), 0, 0)
        rt.launch(op("b"), 0, s1)
        rt.launch(op("b"), 1, 0)
        yield from ()
    rt, trace = simulate(host, table, cores_profile(), devices=2)
    # a: 1 s of work at 2/3 -> ends at 1.5; the b's did 1.0 by then, 1.0 left at full speed -> 2.5
    assert_log(trace, [(0, 0, "a", 0.0, 1.5), (0, 1, "b", 0.0, 2.5), (1, 0, "b", 0.0, 2.5)])
    assert not rt.machine.segments and not rt.mirror_groups


def test_under_cores_a_collective_member_asks_for_a_core_only_while_it_transfers():
    table = {"a": (1.0, "compute"), "ar": (1.0, "comm"), "x": (3.0, "compute")}

    def host(rt):
        s1 = rt.create_stream(0)
        rt.launch(op("x"), 0, s1)               # device 0, second stream: 3 s of work
        reduce = ar("ar", (0, 1))
        rt.launch(op("a"), 1, 0)                # device 1 joins the collective at 1.0
        rt.launch(reduce, 1, 0)
        rt.launch(reduce, 0, 0)                 # device 0 waits for it from 0
        yield from ()
    _, trace = simulate(host, table, cores_profile(cores=2.0), devices=2)
    # [0, 1]: x and a run (ar on device 0 waits, asks nothing): 2 threads, full speed.
    # [1, ...]: x and both members transfer: 3 threads on 2 cores, 2/3 each; the transfer's
    # 1 s of work ends at 2.5; x did 1 + 1 = 2 s, its last 1 s alone ends at 3.5
    assert_log(trace, [(0, 1, "x", 0.0, 3.5), (1, 0, "a", 0.0, 1.0),
                       (0, 0, "ar", 0.0, 2.5, 1.0), (1, 0, "ar", 1.0, 2.5, 1.0)])


def test_profiles_read_the_cores_model_and_refuse_factor_keys_there(tmp_path):
    from importlib import resources
    data = yaml.safe_load(resources.files("hwprofiles").joinpath("a100-sxm4-80gb.yaml").read_text())
    data.pop("measured_tables", None)
    data["contention"] = {"model": "cores", "cores": {"value": 4, "source": "measured: x"},
                          "threads_per_op": {"value": 2, "source": "assumed: y"}}
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(data))
    spec = load_hardware(str(path)).contention
    assert (spec.model, spec.cores, spec.threads_per_op) == ("cores", 4.0, 2.0)
    data["contention"]["low_priority_share"] = {"value": 0.5, "source": "assumed: z"}
    path.write_text(yaml.safe_dump(data))
    with pytest.raises(ConfigError) as exc:
        load_hardware(str(path))
    assert "contention.low_priority_share" in str(exc.value) and "model cores" in str(exc.value)
    data["contention"] = {"model": "cores"}
    path.write_text(yaml.safe_dump(data))
    with pytest.raises(ConfigError) as exc:
        load_hardware(str(path))
    assert "contention.cores" in str(exc.value)


def test_hardware_show_prints_jitter_reactions_and_cores(tmp_path, capsys):
    from importlib import resources
    from simulator.cli import main
    data = yaml.safe_load(resources.files("hwprofiles").joinpath("a100-sxm4-80gb.yaml").read_text())
    data.pop("measured_tables", None)
    data["contention"] = {"model": "cores", "cores": {"value": 2, "source": "measured: x"}}
    data["device"]["jitter"] = {"gemm": {"value": [0.5, 1.5], "source": "measured: x"},
                                "all_reduce": {"value": 0.2, "source": "assumed: x"}}
    data["device"]["dispatch_us"] = {"value": 40, "source": "measured: x"}
    data["host"]["wakeup_us"] = {"value": 90, "source": "measured: x"}
    path = tmp_path / "p.yaml"
    path.write_text(yaml.safe_dump(data))
    assert main(["hardware", "show", str(path)]) == 0
    out = capsys.readouterr().out
    assert "stream 40 us per op" in out and "host wakes 90 us" in out
    assert "gemm 0.5-1.5x of the mean" in out and "all_reduce CV 0.2" in out
    assert "cores: 2 shared by every device, 1 per running op" in out
    assert main(["hardware", "show", "a100-sxm4-80gb"]) == 0
    plain = capsys.readouterr().out
    assert "reactions" not in plain and "jitter" not in plain and "cores:" not in plain


# ------------------------------------------------------------------------------------ spreads

def test_reactions_given_as_lists_are_read_as_their_mean_and_times(tmp_path):
    path = write_profile(tmp_path,
                         host={"wakeup_us": {"value": [10, 30], "source": "measured: in-run"}},
                         device={"dispatch_us": {"value": [0, 100], "source": "measured: in-run"},
                                 "event_wait_us": {"value": 7, "source": "measured: in-run"}})
    hw = load_hardware(path)
    assert hw.wakeup_s == pytest.approx(20e-6) and hw.device.dispatch_s == pytest.approx(50e-6)
    assert hw.spreads == {"wakeup": pytest.approx((10e-6, 30e-6)),
                          "dispatch": pytest.approx((0.0, 100e-6))}
    assert hw.device.event_wait_s == pytest.approx(7e-6)
    with pytest.raises(ConfigError) as exc:
        load_hardware(write_profile(tmp_path, host={"wakeup_us": {"value": [5, -1],
                                                                  "source": "assumed: x"}}))
    assert "host.wakeup_us" in str(exc.value) and ">= 0" in str(exc.value)


def spread_profile(**spreads):
    hw = profile()
    means = {k: sum(v) / len(v) for k, v in spreads.items()}
    return replace(hw, wakeup_s=means.get("wakeup", 0.0), spreads=MappingProxyType(spreads),
                   device=replace(hw.device, dispatch_s=means.get("dispatch", 0.0),
                                  event_wait_s=means.get("event_wait", 0.0)))


def test_reaction_times_are_drawn_from_their_lists():
    """Dispatch drawn per op from {0, 1}: each of 200 ops takes 1 + 0 or 1 + 1; a blocked host
    resumes 0.25 or 0.75 after its event; both draws seeded by the run's seed."""
    table = {"a": (1.0, "compute")}
    seen = []

    def host(rt):
        for _ in range(200):
            rt.launch(op("a"), 0, 0)
        for _ in range(20):
            ev = rt.new_event("e")
            rt.launch(op("a"), 0, 0)
            rt.record(ev, 0, 0)
            yield from rt.synchronize(ev)
            seen.append(round(rt.now - ev.time, 9))
    hw = spread_profile(dispatch=(0.0, 1.0), wakeup=(0.25, 0.75))
    _, trace = simulate(host, table, hw)
    spans = (trace.ops()["end_s"] - trace.ops()["start_s"]).round(9)
    assert set(spans) == {1.0, 2.0} and 60 < (spans == 2.0).sum() < 160
    assert set(seen) == {0.25, 0.75}
    _, again = simulate(host, table, hw)
    assert again.ops().equals(trace.ops())


def test_event_waits_are_drawn_per_event():
    table = {"a": (1.0, "compute"), "b": (0.5, "compute")}

    def host(rt):
        s1 = rt.create_stream(0)
        for i in range(40):
            ev = rt.new_event(f"e{i}")
            rt.launch(op("a"), 0, 0)
            rt.record(ev, 0, 0)
            rt.wait(0, s1, ev)
            rt.launch(op("b"), 0, s1)
            yield from rt.synchronize(ev)
            yield rt.env.timeout(5.0)               # let b run before the next round
    _, trace = simulate(host, table, spread_profile(event_wait=(0.0, 0.125)))
    ops = trace.ops()
    a_end = ops[ops["name"] == "a"]["end_s"].to_numpy()
    b_start = ops[ops["name"] == "b"]["start_s"].to_numpy()
    assert set((b_start - a_end).round(9)) == {0.0, 0.125}
