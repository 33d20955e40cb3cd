"""A TorchRuntime run is warm (torchrt.work.POOL, jobs.simulate's warm-up) and in-run calibration
means are robust to a rare stall (calibrate/inrun.py robust_mean)."""
from __future__ import annotations

import statistics

import pytest

torch = pytest.importorskip("torch")
from simulator.calibrate.inrun import WINSOR_QUANTILE, _mean, robust_mean  # noqa: E402
from simulator.experiment import load_experiment  # noqa: E402
from simulator.jobs import WARMUP_REQUESTS, build, simulate  # noqa: E402
from simulator.torchrt import runtime as torchrt_runtime  # noqa: E402
from simulator.torchrt.runtime import RunLog, TorchRuntime  # noqa: E402
from simulator.torchrt.work import POOL, Work, WorkPool  # noqa: E402

TINY = "experiments/torch/tiny.yaml"


def test_pool_hands_back_what_it_was_given_per_device_and_stream():
    pool = WorkPool()
    cpu = torch.device("cpu")
    a = pool.take(cpu, 0, 0)
    assert isinstance(a, Work)
    pool.give(a, 0, 0)
    assert pool.take(cpu, 1, 0) is not a                 # another simulated device
    assert pool.take(cpu, 0, 1) is not a                 # another stream
    assert pool.take(cpu, 0, 0) is a
    assert pool.take(cpu, 0, 0) is not a                 # in use: never handed out twice
    pool.give(a, 0, 0)
    pool.clear()
    assert pool.take(cpu, 0, 0) is not a


def test_a_run_gives_its_works_back_and_the_next_run_takes_them():
    POOL.clear()
    built = build(load_experiment(TINY)[0])
    simulate(built, 0, runtime="torch", warm_up=False)
    kept = dict(POOL._free)
    assert {(k[1], k[2]) for k in kept} == {(0, 0), (1, 0)}       # two devices, one stream each
    weights = {k: len(w._weights) for k, w in kept.items()}
    assert all(n > 0 for n in weights.values())                     # the run's GEMM weights
    taken = []
    original = TorchRuntime.make_work

    def spy(self, device, index):
        work = original(self, device, index)
        taken.append(work)
        return work
    TorchRuntime.make_work = spy
    try:
        simulate(built, 0, runtime="torch", warm_up=False)
    finally:
        TorchRuntime.make_work = original
    assert {id(w) for w in taken} == {id(w) for w in kept.values()}


def test_simulate_warms_up_on_the_first_requests_then_measures_them_all(monkeypatch):
    built = build(load_experiment(TINY)[0])
    runs = []
    original = torchrt_runtime.TorchRuntime.run

    def spy(self, strategy, source, scheduler=None):
        trace = original(self, strategy, source, scheduler)
        runs.append((self, strategy, trace))
        return trace
    monkeypatch.setattr(torchrt_runtime.TorchRuntime, "run", spy)
    log = RunLog()
    trace = simulate(built, 0, runtime="torch", run_log=log)
    assert len(runs) == 2
    (warm, warm_strategy, warm_trace), (measured, strategy, _) = runs
    assert warm is not measured and warm_strategy is not strategy  # a fresh copy of the program
    assert len(warm_trace.requests) == WARMUP_REQUESTS
    arrivals = [r.arrival_s for r in warm_trace.requests]
    assert max(arrivals) - min(arrivals) < 0.005                   # all at once
    assert len(trace.requests) == built.workload.requests          # the warm-up is not measured
    assert log.host.launches == measured.launches                  # nor logged
    runs.clear()
    simulate(built, 0, runtime="torch", warm_up=False)
    assert len(runs) == 1


def test_robust_mean_caps_a_rare_stall():
    values = [40e-6] * 1999 + [0.3]                    # one 300 ms stall among 2000 dispatches
    assert statistics.fmean(values) > 150e-6
    assert robust_mean(values) == pytest.approx(40e-6)
    spread = [i * 1e-6 for i in range(1, 5001)]        # a smooth tail keeps nearly its mean
    assert robust_mean(spread) == pytest.approx(statistics.fmean(spread), rel=1e-3)
    assert robust_mean(spread) < statistics.fmean(spread)


def test_robust_mean_of_few_values_is_their_mean():
    few = [100e-6, 300e-6]
    assert robust_mean(few) == pytest.approx(200e-6)
    assert len(few) * (1 - WINSOR_QUANTILE) < 1


def test_reaction_means_say_they_are_capped():
    out = _mean([40e-6] * 2000, "measured: test", "ops")
    assert out["value"] == pytest.approx(40.0)
    assert "2000 ops" in out["source"] and "99.9% quantile" in out["source"]
