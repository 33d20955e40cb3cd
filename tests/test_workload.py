"""Workloads: arrival processes, length distributions, trace replay, closed loop; all seeded."""
from __future__ import annotations

import numpy as np
import pytest

from simulator.engine import SimRuntime
from simulator.errors import ConfigError
from simulator.hardware import load_hardware
from simulator.model import load_model
from simulator.workload import parse_length, parse_workload
from strategies.tp import TP


def wl(**kw):
    base = {"requests": 200, "arrival": {"kind": "poisson", "rate_rps": 10.0}, "prompt_tokens": 64}
    base.update(kw)
    return parse_workload(base, "w.yaml")


def test_poisson_rate_and_seed():
    w = wl(requests=4000)
    a = w.generate(np.random.default_rng(1))
    b = w.generate(np.random.default_rng(1))
    assert a == b
    gaps = np.diff([r.arrival_s for r in a])
    assert gaps.mean() == pytest.approx(0.1, rel=0.05)
    assert gaps.std() == pytest.approx(0.1, rel=0.1)          # exponential: std == mean
    assert a != w.generate(np.random.default_rng(2))


def test_fixed_rate_and_all_at_once():
    f = wl(arrival={"kind": "fixed_rate", "rate_rps": 4.0}, requests=5).generate(np.random.default_rng(0))
    assert [r.arrival_s for r in f] == [0.0, 0.25, 0.5, 0.75, 1.0]
    z = wl(arrival={"kind": "all_at_once"}, requests=3).generate(np.random.default_rng(0))
    assert [r.arrival_s for r in z] == [0.0] * 3


@pytest.mark.parametrize("spec,check", [
    ({"dist": "uniform", "low": 16, "high": 115, "multiple_of": 2},
     lambda x: x.min() >= 16 and x.max() <= 115 and (x % 2 == 0).all() and len(set(x)) > 20),
    ({"dist": "normal", "mean": 500, "std": 100, "low": 300, "high": 600},
     lambda x: x.min() >= 300 and x.max() <= 600 and abs(np.median(x) - 500) < 20),
    ({"dist": "lognormal", "mean": 5.0, "std": 0.5},
     lambda x: abs(np.median(x) - np.exp(5.0)) < 15),
    ({"dist": "empirical", "values": [10, 20, 30]}, lambda x: set(x) == {10, 20, 30}),
    ({"dist": "fixed", "value": 77}, lambda x: (x == 77).all()),
    (128, lambda x: (x == 128).all()),
])
def test_length_distributions(spec, check):
    d = parse_length(spec, "w.yaml", "prompt_tokens")
    x = d.draw(np.random.default_rng(0), 2000)
    assert check(x)


def test_empirical_from_csv(tmp_path):
    p = tmp_path / "lens.csv"
    p.write_text("tokens\n5\n7\n")
    d = parse_length({"dist": "empirical", "csv": str(p), "column": "tokens"}, "w.yaml", "k")
    assert set(d.draw(np.random.default_rng(0), 100)) == {5, 7}
    with pytest.raises(ConfigError, match="column 'nope'"):
        parse_length({"dist": "empirical", "csv": str(p), "column": "nope"}, "w.yaml", "k")


def test_trace_replay(tmp_path):
    p = tmp_path / "trace.csv"
    p.write_text("arrival_s,prompt_tokens,output_tokens\n0.5,100,3\n0.0,50,1\n")
    w = parse_workload({"arrival": {"kind": "trace", "csv": str(p)}}, "w.yaml")
    reqs = w.generate(np.random.default_rng(0))
    assert [(r.arrival_s, r.prompt_tokens, r.output_tokens) for r in reqs] == [(0.0, 50, 1), (0.5, 100, 3)]
    p.write_text("arrival_s,prompt_tokens\n0,1\n")
    with pytest.raises(ConfigError, match="needs columns"):
        parse_workload({"arrival": {"kind": "trace", "csv": str(p)}}, "w.yaml")


def test_closed_loop_keeps_n_clients_busy():
    hw = load_hardware("a100-sxm4-80gb")
    model = load_model({"preset": "llama-2-7b", "layers": 2})
    w = wl(requests=9, arrival={"kind": "closed_loop", "clients": 3}, output_tokens=1)
    rt = SimRuntime(hw, 1)
    trace = rt.run(TP(model, 1), w.source(np.random.default_rng(0)))
    reqs = sorted(trace.requests, key=lambda r: r.arrival_s)
    assert len(reqs) == 9
    assert [r.arrival_s for r in reqs[:3]] == [0.0, 0.0, 0.0]
    finishes = sorted(r.finish_s for r in reqs)
    # every later request arrives exactly when an earlier one finished
    for r in reqs[3:]:
        assert min(abs(r.arrival_s - f) for f in finishes) < 1e-12


def test_warmup_marks_requests_unmeasured():
    reqs = wl(requests=5, warmup=2).generate(np.random.default_rng(0))
    assert [r.measured for r in reqs] == [False, False, True, True, True]


@pytest.mark.parametrize("bad,key", [
    ({"arrival": {"kind": "poisson"}}, "workload.arrival.rate_rps"),
    ({"prompt_tokens": {"dist": "uniform", "low": 5}}, "workload.prompt_tokens.high"),
    ({"prompt_tokens": 0}, "workload.prompt_tokens"),
    ({"batch": 0}, "workload.batch"),
])
def test_bad_workloads(bad, key):
    base = {"requests": 3, "arrival": {"kind": "all_at_once"}}
    base.update(bad)
    with pytest.raises(ConfigError) as exc:
        parse_workload(base, "w.yaml")
    assert exc.value.key == key


def test_multiple_of_draws_stay_inside_low_high():
    """Rounding to multiples never leaves [low, high], even when low is not a multiple."""
    d = parse_length({"dist": "uniform", "low": 17, "high": 40, "multiple_of": 16}, "w.yaml", "k")
    assert set(d.draw(np.random.default_rng(0), 500)) == {32}
    d = parse_length({"dist": "normal", "mean": 5, "std": 50, "low": 3, "high": 70, "multiple_of": 8},
                     "w.yaml", "k")
    x = d.draw(np.random.default_rng(0), 2000)
    assert x.min() == 8 and x.max() == 64 and (x % 8 == 0).all()


def test_all_at_once_is_an_offline_batch():
    """Every request arrives at t = 0, with its own drawn lengths; seeded like the others."""
    w = wl(arrival={"kind": "all_at_once"}, requests=50,
           prompt_tokens={"dist": "uniform", "low": 8, "high": 4096})
    reqs = w.generate(np.random.default_rng(4))
    assert [r.arrival_s for r in reqs] == [0.0] * 50 and [r.id for r in reqs] == list(range(50))
    assert len({r.prompt_tokens for r in reqs}) > 40
    assert reqs == w.generate(np.random.default_rng(4))
    assert parse_workload({"requests": 3}, "w.yaml").arrival == "all_at_once"   # the default


@pytest.mark.parametrize("arrival,key,words", [
    ({"kind": "all_at_once", "rate_rps": 4.0}, "rate_rps", "of arrival kind fixed_rate, poisson, "
     "not of all_at_once; allowed here: kind"),
    ({"kind": "all_at_once", "clients": 2}, "clients", "not of all_at_once"),
    ({"kind": "all_at_once", "csv": "t.csv"}, "csv", "of arrival kind trace"),
    ({"kind": "all_at_once", "burst": 2}, "burst", "unknown key; allowed here: kind"),
    ({"kind": "poisson", "rate_rps": 4.0, "think_s": 1.0}, "think_s", "allowed here: kind, rate_rps"),
    ({"kind": "closed_loop", "rate_rps": 4.0}, "rate_rps", "allowed here: kind, clients, think_s"),
    ({"kind": "fixed_rate", "rate_rps": 4.0, "clients": 3}, "clients", "not of fixed_rate"),
])
def test_arrival_keys_of_another_kind_are_refused(arrival, key, words):
    with pytest.raises(ConfigError) as exc:
        parse_workload({"requests": 3, "arrival": arrival}, "w.yaml")
    assert exc.value.key == f"workload.arrival.{key}" and words in exc.value.message, exc.value.line()
