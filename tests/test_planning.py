"""A host program may plan with a profile that is not the machine's (SimRuntime's `planning`), and
`parasim validate` measures and calibrates in interleaved rounds, every run planning with the
micro-benchmarked profile (validate.measure)."""
from __future__ import annotations

import pytest

from simulator.engine import SimRuntime
from simulator.experiment import load_experiment
from simulator.hardware import load_hardware
from simulator.jobs import build, simulate
from simulator.ops import Gemm

FAST = load_hardware("h100-sxm5-80gb")
SLOW = load_hardware("a100-sxm4-80gb")
GEMM = Gemm(4096, 4096, 4096, "fp16", "g")


def test_profiled_times_come_from_the_planning_profile():
    planned = SimRuntime(FAST, 1, planning=SLOW)
    slow = SimRuntime(SLOW, 1).profiled_seconds(GEMM)
    assert planned.profiled_seconds(GEMM) == pytest.approx(slow)
    assert SimRuntime(FAST, 1).profiled_seconds(GEMM) < planned.profiled_seconds(GEMM)


def test_profiled_slowdown_comes_from_the_planning_profile():
    planned = SimRuntime(FAST, 2, planning=SLOW)
    for a, b in (("compute", "comm"), ("memory", "compute")):
        assert planned.profiled_slowdown(a, b) == \
            pytest.approx(SimRuntime(SLOW, 2).profiled_slowdown(a, b))


def test_the_machine_still_runs_as_its_own_profile():
    """tp plans nothing: the same run whatever it plans with; liger plans its fill budget with
    profiled times, so a slower planning profile changes its decisions, not the op times."""
    job = load_experiment("experiments/quickstart.yaml")[0]
    built = build(job)
    alone = simulate(built, 0)
    planned = simulate(build(job), 0, planning=load_hardware("v100-sxm2-32gb"))
    assert planned.meta["makespan_s"] == alone.meta["makespan_s"]
    assert [r.finish_s for r in planned.requests] == [r.finish_s for r in alone.requests]


def test_liger_decides_by_its_planning_profile():
    job = next(j for j in load_experiment("experiments/liger-artifact-2xv100.yaml")
               if j.label.startswith("liger"))
    own = simulate(build(job), 0)
    other = simulate(build(job), 0, planning=load_hardware("l4-24gb"))
    assert other.meta["makespan_s"] != pytest.approx(own.meta["makespan_s"], rel=1e-9)


torch = pytest.importorskip("torch")


@pytest.mark.parametrize("repeat, calibration", [(3, 2), (2, 2), (5, 3), (1, 4), (4, 0), (0, 2)])
def test_a_sitting_centres_both_kinds_of_run_on_the_same_moment(repeat, calibration):
    from simulator.calibrate.validate import schedule
    order = schedule(repeat, calibration)
    assert order.count("measured") == repeat and order.count("calibration") == calibration
    for kind, n in (("measured", repeat), ("calibration", calibration)):
        at = [i for i, k in enumerate(order) if k == kind]
        if n:                               # its runs' mean position is the sitting's middle
            assert abs(sum(at) / n - (len(order) - 1) / 2) <= 0.5, order
        if n > 1:                           # and they are spread, not bunched
            assert max(b - a for a, b in zip(at, at[1:])) <= -(-len(order) // n) + 1, order
    assert schedule(3, 2) == ["measured", "calibration", "measured", "calibration", "measured"]


def test_measure_warms_up_then_interleaves_calibration_and_measured_runs(monkeypatch):
    from simulator.calibrate import inrun, validate
    from simulator.runner import JobResult
    jobs = validate.plan_validation("experiments/validation/validate-cpu.yaml")[1]
    order, lines, clock = [], [], [0.0]

    def cal(job, i, run_log, log, runtime):
        order.append(("cal", job.label, i, job.config["hardware"]))

    def run(job, keep_trace=False, spill_path=None, runtime="sim", planning=None, run_log=None):
        assert runtime == "torch"
        clock[0] += 5.0                                  # every run takes 5 s
        kind = "run" if run_log is not None else "warm"  # every measured run is logged
        order.append((kind, job.label, len([o for o in order if o[:2] == (kind, job.label)]),
                      job.config["hardware"]))
        return JobResult(0, {"jct_mean_s": 0.25}, None, None, None)
    monkeypatch.setattr(inrun, "calibration_run", cal)
    monkeypatch.setattr(validate, "run_job", run)
    monkeypatch.setattr(validate.time, "perf_counter", lambda: clock[0])
    labels = [j.label for j in jobs]
    # a round of the four strategies takes 20 s: 45 s of warm-up are three whole rounds
    measured = validate.measure(jobs, "/p/micro.yaml", repeat=3, calibration=2, log=lines.append,
                                warm_up_s=45.0)
    steps = [("warm", 0), ("warm", 1), ("warm", 2),
             ("run", 0), ("cal", 0), ("run", 1), ("cal", 1), ("run", 2)]
    expected = [(kind, label, i) for kind, i in steps for label in labels]
    assert [o[:3] for o in order] == expected
    assert {o[3] for o in order} == {"/p/micro.yaml"}              # every run plans with it
    assert {k: len(v) for k, v in measured.runs.items()} == {label: 3 for label in labels}
    assert "2 run(s) of each of" in measured.what
    assert sum("warm-up run, JCT 250.0 ms (not measured)" in line for line in lines) == 3 * 4
    order.clear()
    none = validate.measure(jobs, "/p/given.yaml", repeat=2, calibration=0, log=print,
                            warm_up_s=1.0)                        # one round at least
    assert none.run_log is None
    assert [o[0] for o in order] == ["warm"] * len(labels) + ["run"] * 2 * len(labels)
    order.clear()
    validate.measure(jobs, "/p/given.yaml", repeat=1, calibration=0, log=print)   # the default
    assert [o[0] for o in order] == ["run"] * len(labels)


def test_a_failed_warm_up_run_is_refused_with_one_line(monkeypatch):
    from simulator.calibrate import validate
    from simulator.errors import ConfigError
    from simulator.runner import JobResult
    jobs = validate.plan_validation("experiments/validation/validate-cpu.yaml")[1]
    monkeypatch.setattr(validate, "run_job", lambda job, **kw: JobResult(0, {}, None, None,
                                                                        "deadlock"))
    with pytest.raises(ConfigError, match="the warm-up run failed: deadlock"):
        validate.measure(jobs, "/p/micro.yaml", repeat=1, calibration=0, log=print,
                         warm_up_s=1.0)
