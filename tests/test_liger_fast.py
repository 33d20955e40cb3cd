"""Liger's fast paths against the literal host program (strategies/liger.py, docs/strategies/liger.md).

- Quiet iterations: with others in the window, the iterations whose fill would launch nothing go to
  `launch_paced` together (`Liger._quiet_runs`). On the op-level machine (no segments, so
  launch_paced runs its literal host program) that must issue exactly the verbs of the plain
  per-iteration loop: the traces are equal bit for bit. The default engine (segments, mirrored
  devices, paced one-pass) must give the same trace to 1e-12 and the same metrics to 1e-9.
- SPMD verbs: `record_all` and one-op `launch_seq` are the per-device loops they stand for.
"""
from __future__ import annotations

import numpy as np
import pytest

from simulator.engine import SimRuntime
from simulator.errors import SimulationError
from simulator.hardware import load_hardware
from simulator.metrics import summarize
from simulator.model import load_model
from simulator.workload import parse_workload
from strategies.liger import Liger
from tests.test_engine import Program, StubCost, no_requests, op, profile
from tests.test_mirror import close


class PlainLiger(Liger):
    """Liger without the quiet-iteration batching: every iteration fills, one by one (and a lone
    request's iterations go to launch_paced as before the batching existed)."""

    def _quiet_runs(self, rt, window, f):
        return super()._quiet_runs(rt, window, f) if len(window) == 1 else []


MODELS = {                     # the model, and prompts long enough that others wait while it decodes
    "llama-7b": ({"preset": "llama-2-7b", "layers": 4}, (500, 2000)),
    "artifact": ({"preset": "glm-130b", "heads": 128, "kv_heads": 128, "head_dim": 96,
                  "ffn": 49152, "gated_mlp": False, "vocab": 128, "layers": 2}, (16, 600)),
}
PARAMS = {
    "window 2": {"window": 2},
    "window 3, profiled comm": {"window": 3, "comm_budget": "profiled"},
    "window 4, no decomposition": {"window": 4, "decompose_factor": 1},
    "window 6": {"window": 6},
    "window 5, retire any, handoff": {"window": 5, "retire": "any", "handoff_wait": True},
    "window 3, no host sync": {"window": 3, "host_sync": False},
    "window 4, profiled, factor 2": {"window": 4, "comm_budget": "profiled",
                                     "contention_factor": 2.0},
}


def run(cls, params, model_key, hw_name, devices=4, segments=True, mirror=True, rate=100.0):
    spec, prompt = MODELS[model_key]
    model = load_model(spec)
    strategy = cls(model, devices, cls.Params(**params))
    wl = parse_workload({"requests": 8, "arrival": {"kind": "poisson", "rate_rps": rate},
                         "prompt_tokens": {"dist": "uniform", "low": prompt[0], "high": prompt[1]},
                         "output_tokens": {"dist": "uniform", "low": 2, "high": 12}}, "test")
    rt = SimRuntime(load_hardware(hw_name), devices, segments=segments, mirror=mirror)
    trace = rt.run(strategy, wl.source(np.random.default_rng(3)))
    return rt, trace


def rows(trace):
    return sorted((r.device, r.stream, r.start_s, r.end_s, r.name, r.transfer_start_s, r.request,
                   r.phase, r.isolated_s, r.op_class) for r in trace.records())


def requests(trace):
    return [tuple(r.__dict__.values()) for r in trace.requests]


@pytest.mark.parametrize("hw_name", ["a100-sxm4-80gb", "a100-pcie-40gb"])
@pytest.mark.parametrize("model_key", sorted(MODELS))
@pytest.mark.parametrize("key", sorted(PARAMS))
def test_quiet_iterations_issue_exactly_the_plain_loops_verbs(key, model_key, hw_name):
    """Op level (launch_paced literal, every device simulated): the same trace, bit for bit."""
    _, plain = run(PlainLiger, PARAMS[key], model_key, hw_name, segments=False, mirror=False)
    _, fast = run(Liger, PARAMS[key], model_key, hw_name, segments=False, mirror=False)
    assert rows(fast) == rows(plain)
    assert requests(fast) == requests(plain)


@pytest.mark.parametrize("hw_name", ["a100-sxm4-80gb", "a100-pcie-40gb"])
@pytest.mark.parametrize("model_key", sorted(MODELS))
@pytest.mark.parametrize("key", sorted(PARAMS))
def test_default_engine_gives_the_op_level_trace(key, model_key, hw_name):
    rt, fast = run(Liger, PARAMS[key], model_key, hw_name)
    _, ref = run(PlainLiger, PARAMS[key], model_key, hw_name, segments=False, mirror=False)
    close(rows(fast), rows(ref))
    close(requests(fast), requests(ref))
    assert fast.total_ops == ref.total_ops
    assert summarize(fast) == pytest.approx(summarize(ref), rel=1e-9, nan_ok=True)


def test_quiet_iterations_are_taken_with_others_in_the_window():
    """The case the batching is for: the head decodes while the others wait with prefill ops
    that no all-reduce's budget fits; the one-pass form then covers most runs (so the tests above
    exercise it), and the plain loop covers none of them."""
    params = {"window": 4}
    rt, _ = run(Liger, params, "llama-7b", "a100-sxm4-80gb")
    plain_rt, _ = run(PlainLiger, params, "llama-7b", "a100-sxm4-80gb")
    busy = rt.machine.segment_counts.get("paced_runs", 0)
    assert busy > plain_rt.machine.segment_counts.get("paced_runs", 0) + 100


def test_a_fill_bound_that_is_off_breaks_the_equality(monkeypatch):
    """The equality test can fail: a Liger that batches iterations whose fill would launch
    something (it ignores the fillers) gives a different trace."""
    import strategies.liger_quiet as quiet

    params = {"window": 3}
    _, plain = run(PlainLiger, params, "artifact", "a100-pcie-40gb", segments=False, mirror=False)
    monkeypatch.setattr(quiet, "fill_bound", lambda *_a: (float("inf"), float("inf")))
    _, careless = run(Liger, params, "artifact", "a100-pcie-40gb", segments=False, mirror=False)
    assert rows(careless) != rows(plain)


# ------------------------------------------------------------------ record_all and launch_seq

def _run(host, devices=3, mirror=True):
    table = {"a": (1.0, "compute"), "b": (2.0, "compute")}
    rt = SimRuntime(profile(), devices, cost=StubCost(table), launch_overhead_s=0.5, mirror=mirror)
    return rt, rt.run(Program(host), no_requests)


@pytest.mark.parametrize("mirror", [True, False])
def test_record_all_is_a_new_event_recorded_per_device(mirror):
    seen = {}

    def host(rt):
        rt.mirror((0, 1, 2))
        rt.launch_seq([op("a")], (0, 1, 2), 0)
        evs = rt.record_all("x", (0, 1, 2), 0)
        rt.launch_seq([op("b")], (0, 1, 2), 0)
        seen["events"] = evs
        for ev in evs:
            rt.when(ev, lambda t, ev=ev: seen.setdefault("times", []).append(t))
        yield from rt.synchronize(evs[2])
        seen["now"] = rt.now

    _, trace = _run(host, mirror=mirror)
    evs = seen["events"]
    assert len(evs) == 3 and all(ev.name == "x" for ev in evs)
    # a mirrored follower's handle is its leader's; unmirrored, each device has its own
    assert len({id(ev) for ev in evs}) == (1 if mirror else 3)
    assert seen["times"] == [1.5, 1.5, 1.5]                 # launch 0.5, then a: 1 s
    assert seen["now"] == 1.5
    assert sorted((r.device, r.name, r.start_s, r.end_s) for r in trace.records()) == [
        (d, n, s, e) for d in (0, 1, 2) for n, s, e in (("a", 0.5, 1.5), ("b", 1.5, 3.5))]


def test_record_all_with_a_follower_before_its_leader_checks_it():
    def host(rt):
        rt.mirror((0, 1))
        a = op("a")
        rt.launch(a, 0, 0)
        rt.launch(a, 1, 0)
        rt.record_all("x", (1, 0), 0)          # device 1 first: its leader recorded nothing yet
        yield from ()

    with pytest.raises(SimulationError, match="records event 'x' where device 0 recorded none"):
        _run(host, devices=2)


def test_one_op_launch_seq_still_checks_a_follower_issued_before_its_leader():
    def host(rt):
        rt.mirror((0, 1))
        rt.launch(op("a"), 0, 0)
        rt.launch_seq([op("b")], (1, 0), 0)    # device 1 repeats 'a'? no: it launches 'b' first
        yield from ()

    with pytest.raises(SimulationError, match="mirrors device 0"):
        _run(host, devices=2)


def test_an_iteration_before_a_filling_one_skips_its_fill(monkeypatch):
    """Where only the next run would fill, quiet_runs says this one fills nothing (`fill_idle`)
    and its iteration skips `_fill`: taken on the busy case (the equality tests above cover it),
    and a Liger that skips every fill after a None from quiet_runs gives a different trace."""
    import strategies.liger as liger

    seen = []
    quiet = liger.quiet_runs

    def spy(self, rt, window, f):
        got = quiet(self, rt, window, f)
        seen.append(self.fill_idle)
        return got
    monkeypatch.setattr(liger, "quiet_runs", spy)
    run(Liger, {"window": 4}, "llama-7b", "a100-sxm4-80gb", segments=False, mirror=False)
    assert sum(seen) >= 5

    def careless(self, rt, window, f):
        got = quiet(self, rt, window, f)
        self.fill_idle = got is None
        return got
    params = {"window": 3}
    _, plain = run(PlainLiger, params, "artifact", "a100-pcie-40gb", segments=False, mirror=False)
    monkeypatch.setattr(liger, "quiet_runs", careless)
    _, wrong = run(Liger, params, "artifact", "a100-pcie-40gb", segments=False, mirror=False)
    assert rows(wrong) != rows(plain)


def test_quiet_runs_start_at_a_steps_first_run(monkeypatch):
    """A step's first run goes to launch_paced with the rest (the head has synchronised on its
    previous step, so no cross-stream wait is due there): taken in the busy case, whose traces
    the equality tests above compare with the plain loop's."""
    import strategies.liger as liger

    starts = []
    quiet = liger.quiet_runs

    def spy(self, rt, window, f):
        got = quiet(self, rt, window, f)
        if got is not None and got.cuts[0] == 0:
            starts.append(f.pos)
        return got
    monkeypatch.setattr(liger, "quiet_runs", spy)
    run(Liger, {"window": 4}, "llama-7b", "a100-sxm4-80gb")
    assert len(starts) > 10 and 0 in starts
