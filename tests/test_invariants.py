"""Properties every strategy must keep, over random small setups (hypothesis):

- a stream runs one op at a time (ops on one (device, stream) never overlap);
- an op never runs faster than its isolated time;
- the members of a collective end together, and its transfer starts once every member started;
- every request is served: arrival <= start <= first token <= finish;
- the same inputs give the same trace.

Generated setups that a strategy refuses at build time (ConfigError, PointError) are skipped with
`hypothesis.assume`; any other exception fails the test.
"""
from __future__ import annotations

import numpy as np
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

import strategies as registry
from simulator.engine import SimRuntime
from simulator.errors import ConfigError
from simulator.hardware import load_hardware
from simulator.model import ModelSpec
from simulator.workload import parse_workload

PROFILES = ["a100-sxm4-80gb", "a100-pcie-40gb", "rtx4090", "h100-sxm5-80gb"]
TINY = ModelSpec("tiny", layers=2, hidden=512, heads=8, kv_heads=8, ffn=1024, gated_mlp=True,
                 vocab=1000)


def check_trace(trace, devices):
    ops = trace.ops()
    assert len(ops) > 0
    for (_d, _s), g in ops.groupby(["device", "stream"]):
        g = g.sort_values(["start_s", "end_s"])
        starts, ends = g["start_s"].to_numpy(), g["end_s"].to_numpy()
        assert (starts[1:] >= ends[:-1] - 1e-12).all(), "two ops overlap on one stream"
    slack = ops["end_s"] - ops["start_s"] - ops["isolated_s"]
    assert (slack >= -1e-9 * np.maximum(1.0, ops["isolated_s"])).all(), "an op ran faster than alone"
    comm = ops[ops["op_class"] == "comm"]
    assert (comm["transfer_start_s"] >= comm["start_s"] - 1e-12).all()
    reqs = trace.request_frame()
    assert (reqs["start_s"] >= reqs["arrival_s"] - 1e-12).all()
    assert (reqs["first_token_s"] >= reqs["start_s"] - 1e-12).all()
    assert (reqs["finish_s"] >= reqs["first_token_s"] - 1e-12).all()
    assert reqs["finish_s"].notna().all()


def default_devices_ok(name, devices):
    return True


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(name=st.sampled_from(sorted(registry.REGISTRY)), devices=st.sampled_from([1, 2, 4]),
       profile=st.sampled_from(PROFILES), requests=st.integers(1, 5),
       rate=st.sampled_from([1.0, 50.0, 1000.0]), prompt=st.integers(8, 300),
       output=st.integers(1, 3), batch=st.integers(1, 2), seed=st.integers(0, 3))
def test_every_strategy_keeps_stream_order_and_dependencies(name, devices, profile, requests, rate,
                                                            prompt, output, batch, seed):
    hw = load_hardware(profile)
    cls = registry.REGISTRY[name]
    try:
        strategy = cls(TINY, devices, cls.Params())
        strategy.validate("t", "s")
    except ConfigError:          # PointError too: a setup the strategy refuses, not a bug
        assume(False)
    wl = parse_workload({"requests": requests, "batch": batch,
                         "arrival": {"kind": "poisson", "rate_rps": rate},
                         "prompt_tokens": prompt, "output_tokens": output}, "t")
    trace = SimRuntime(hw, devices).run(strategy, wl.source(np.random.default_rng(seed)))
    check_trace(trace, devices)
    assert len(trace.requests) == requests
    again = SimRuntime(hw, devices).run(cls(TINY, devices, cls.Params()),
                                        wl.source(np.random.default_rng(seed)))
    assert again.rows == trace.rows


def test_collective_members_end_together():
    hw = load_hardware("a100-pcie-40gb")
    wl = parse_workload({"requests": 3, "arrival": {"kind": "all_at_once"}, "prompt_tokens": 64,
                         "output_tokens": 2}, "t")
    for name, cls in registry.REGISTRY.items():
        strategy = cls(TINY, 2, cls.Params())
        trace = SimRuntime(hw, 2).run(strategy, wl.source(np.random.default_rng(0)))
        comm = trace.ops()
        comm = comm[comm["op_class"] == "comm"]
        # group the members of each instance by (name, transfer start): all end together
        for _, g in comm.groupby(["name", "transfer_start_s"]):
            assert g["end_s"].max() - g["end_s"].min() < 1e-12, name
