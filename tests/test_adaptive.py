"""`adaptive` (strategies/adaptive.py) and Poisson arrivals with a rate step."""
from __future__ import annotations

import numpy as np
import pytest

from simulator.engine import SimRuntime
from simulator.errors import ConfigError
from simulator.hardware import load_hardware
from simulator.jobs import make_strategy
from simulator.model import load_model
from simulator.workload import parse_workload

HW = load_hardware("a100-sxm4-80gb")
MODEL = load_model({"preset": "llama-2-13b", "layers": 4})


def _workload(n=200, rate=2.0, step_at=None, step_rate=None, output=8):
    arrival = {"kind": "poisson", "rate_rps": rate}
    if step_at is not None:
        arrival.update(step_at_s=step_at, step_rate_rps=step_rate)
    return parse_workload({"requests": n, "arrival": arrival,
                           "prompt_tokens": {"dist": "uniform", "low": 128, "high": 1024},
                           "output_tokens": output}, "test")


def test_a_rate_step_keeps_the_arrivals_before_it_and_speeds_up_after():
    plain = [r.arrival_s for r in _workload(2000).generate(np.random.default_rng(1))]
    step = [r.arrival_s for r in _workload(2000, 2.0, 100.0, 20.0).generate(np.random.default_rng(1))]
    before = [t for t in plain if t <= 100.0]
    assert step[:len(before)] == before                    # the same draws up to the step
    after = np.diff([t for t in step if t > 100.0])
    assert abs(after.mean() - 1 / 20.0) < 0.1 / 20.0       # ~1800 gaps: mean within 10%
    assert 170 <= len(before) <= 230                       # 2 req/s for 100 s (3 sigma: +-42)


@pytest.mark.parametrize("arrival, key", [
    ({"kind": "poisson", "rate_rps": 1, "step_at_s": 10}, "step_rate_rps"),
    ({"kind": "poisson", "rate_rps": 1, "step_rate_rps": 3}, "step_at_s"),
    ({"kind": "poisson", "rate_rps": 1, "step_at_s": -1, "step_rate_rps": 3}, "step_at_s"),
    ({"kind": "fixed_rate", "rate_rps": 1, "step_at_s": 1, "step_rate_rps": 3}, "step_at_s"),
])
def test_bad_rate_steps(arrival, key):
    with pytest.raises(ConfigError) as exc:
        parse_workload({"requests": 4, "arrival": arrival}, "t.yaml")
    assert exc.value.key.endswith(key)


def _run(spec, wl, devices=4, seed=0):
    strategy = make_strategy(spec, MODEL, devices, "test", "strategy")
    rt = SimRuntime(HW, devices)
    trace = rt.run(strategy, wl.source(np.random.default_rng(seed)))
    return strategy, trace


def _times(trace):
    return {r.request: (r.first_token_s, r.finish_s) for r in trace.requests}


def test_thresholds_never_met_serve_exactly_as_low():
    wl = _workload(40, 4.0)
    adaptive, a = _run({"name": "adaptive", "low": "tp", "high": "pp", "up_queue": 1000}, wl)
    _, tp = _run({"name": "tp"}, wl)
    assert adaptive.switches == []
    for rid, (ft, fin) in _times(tp).items():
        assert _times(a)[rid] == pytest.approx((ft, fin), rel=1e-9)


@pytest.mark.parametrize("low, high", [("tp", "pp:stages=4"), ("pp:stages=4", "tp")])
def test_a_load_step_switches_up_drains_and_pays_the_reshard(low, high):
    """pp has requests in flight when its request stream ends: the switch must wait for them."""
    wl = _workload(200, 1.0, 30.0, 1000.0)
    spec = {"name": "adaptive", "low": low, "high": high, "up_queue": 4, "down_queue": 0,
            "min_dwell_s": 1.0}
    adaptive, trace = _run(spec, wl)
    assert adaptive.switches and adaptive.switches[0][1] == "high"
    assert adaptive.switches[0][0] > 30.0                    # only after the step
    ops = trace.ops()
    reshard = ops[ops["name"] == "reshard_weights"]
    assert len(reshard) == 4 * len(adaptive.switches)        # one all-to-all on every device each
    first = reshard["start_s"].min()
    # the low configuration finished every request it had started before the weights moved
    started = ops[(ops["start_s"] < first) & (ops["request"] >= 0)]["request"].unique()
    fin = {r.request: r.finish_s for r in trace.requests}
    assert all(fin[r] <= first for r in started)
    # and nothing of any request ran while the weights moved
    moving = (ops["request"] >= 0) & (ops["end_s"] > first) & (ops["start_s"] < reshard["end_s"].min())
    assert not moving.any()
    assert all(f is not None for f in fin.values())


@pytest.mark.parametrize("params, key, words", [
    ({"low": "tq"}, "strategy.low", "unknown strategy"),
    ({"high": "pp:stages"}, "strategy.high", "key=value"),
    ({"high": "pp:stages=3"}, "strategy.high.stages", "device count"),
    ({"low": "adaptive"}, "strategy.low", "unknown strategy"),
    ({"up_queue": 2, "down_queue": 2}, "strategy.down_queue", "below up_queue"),
])
def test_bad_adaptive_params(params, key, words):
    with pytest.raises(ConfigError) as exc:
        make_strategy({"name": "adaptive", **params}, MODEL, 4, "test", "strategy")
    assert exc.value.key == key and words in exc.value.message
