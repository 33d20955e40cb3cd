"""simulator/calibrate/arrivals.py: a calibration run's requests at the measured workload's
inter-arrival gaps, in another order."""
from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from simulator.calibrate.arrivals import same_load
from simulator.jobs import build
from simulator.runner import plan_run

EXPERIMENT = str(Path(__file__).resolve().parents[1] / "experiments" / "validation"
                 / "validate-cpu.yaml")


def _built(seed, **workload):
    job = plan_run(EXPERIMENT).feasible[0]
    cfg = {**job.config, "seed": seed}
    if workload:
        cfg["workload"] = {**cfg["workload"], **workload}
    return build(replace(job, config=cfg))


def _times(built):
    return [r.arrival_s for r in built.workload.generate(np.random.default_rng(built.seed))]


def test_the_calibration_run_gets_the_measured_gaps_in_another_order():
    measured, own = _built(0), _built(1001)
    w = same_load(measured, own)
    got = [r.arrival_s for r in w.generate(np.random.default_rng(0))]
    theirs = _times(measured)
    assert sorted(np.diff(got)) == pytest.approx(sorted(np.diff(theirs)))
    assert got[-1] == pytest.approx(theirs[-1])                # the same span: the same load
    assert not np.allclose(np.diff(got), np.diff(theirs))      # another pattern
    assert _times(own)[-1] < 0.5 * theirs[-1]                  # its own seed's was twice as dense


def test_its_own_lengths_and_batch_stay():
    measured = _built(0, prompt_tokens={"dist": "uniform", "low": 64, "high": 192})
    own = _built(1001, prompt_tokens={"dist": "uniform", "low": 64, "high": 192})
    w = same_load(measured, own)
    mine = own.workload.generate(np.random.default_rng(own.seed))
    got = w.generate(np.random.default_rng(123))
    assert [r.prompt_tokens for r in got] == [r.prompt_tokens for r in mine]
    assert {r.batch for r in got} == {own.workload.batch} and w.arrival == "trace"


def test_the_order_follows_the_calibration_seed():
    measured = _built(0)
    a = same_load(measured, _built(1000)).trace_rows
    b = same_load(measured, _built(1001)).trace_rows
    assert [t for t, *_ in a] != [t for t, *_ in b]
    assert same_load(measured, _built(1000)).trace_rows == a   # reproducible


def test_closed_loop_and_all_at_once_keep_their_own_arrivals():
    for arrival in ({"kind": "closed_loop", "clients": 2}, {"kind": "all_at_once"}):
        measured, own = _built(0, arrival=arrival), _built(1001, arrival=arrival)
        assert same_load(measured, own) is own.workload


def test_calibration_runs_keep_the_experiments_load_unless_told_not_to(monkeypatch):
    from simulator.calibrate import inrun
    from simulator.torchrt.runtime import RunLog
    seen = []
    monkeypatch.setattr(inrun, "simulate", lambda built, *a, **k: seen.append(built.workload))
    job = plan_run(EXPERIMENT).feasible[0]
    inrun.calibration_run(job, 1, RunLog(), log=lambda line: None)
    inrun.calibration_run(job, 1, RunLog(), log=lambda line: None, keep_load=False)
    kept, own = seen
    theirs = _times(_built(0))
    assert kept.arrival == "trace" and own.arrival == "poisson"
    assert [t for t, *_ in kept.trace_rows][-1] == pytest.approx(theirs[-1])
    assert _times(_built(1001))[-1] < 0.5 * theirs[-1]          # what its own seed would give
    assert "inter-arrival gaps" in inrun.describe_runs([job], 2)
