"""`pp`: pipeline parallelism and the tp x pp hybrid (DESIGN §4).

Closed forms (DESIGN §6): one request alone takes the sum of its stage times and transfers; a
saturated pipeline delivers one request per busiest-stage time. Reductions: one stage is `tp`
exactly. Generative requests: decode steps flow through every stage, the next step waits for the
token, and requests interleave across stages without exceeding `max_in_flight`.
"""
from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest

import strategies
from simulator.contention import NoContention
from simulator.engine import SimRuntime
from simulator.errors import ConfigError
from simulator.experiment import load_experiment
from simulator.hardware import load_hardware
from simulator.model import ModelSpec, load_model, split_layers
from simulator.ops import SendRecv
from simulator.runner import build, make_strategy
from simulator.workload import Request, open_loop
from strategies.pp import PP, balance_layers, parse_split
from strategies.program import Step, request_steps, step_ops

HW = load_hardware("a100-pcie-40gb")
QUIET = replace(HW, interconnect=replace(HW.interconnect, shared_link=False))   # no link sharing
MODEL = load_model("llama-2-13b")
SMALL = ModelSpec("small", 8, 1024, 16, 16, 4096, True, 32000)
EXACT = 1e-9


# ------------------------------------------------------------------------------------ helpers

source = open_loop            # each request arrives at its arrival_s


def run(name, devices, reqs, *, model=MODEL, hw=HW, launch_s=None, quiet=False, **params):
    cls = strategies.get(name)
    strategy = cls(model, devices, cls.Params(**params))
    strategy.validate("test", "strategy")
    rt = SimRuntime(hw, devices, launch_overhead_s=launch_s,
                    contention=NoContention() if quiet else None)
    return rt, strategy, rt.run(strategy, source(reqs))


def at_once(n, prompt=512, output=1):
    return [Request(i, 0.0, prompt, output) for i in range(n)]


def stage_times(rt, strategy, step, model=MODEL):
    """Busy seconds of each stage for one step: its ops' profiled times plus its receive and send."""
    pp = strategy
    xfer = rt.profiled_seconds(SendRecv(pp.act_bytes(step), 0, pp.tp))
    out = []
    for s, devs in enumerate(pp.groups):
        ops = step_ops(model, pp.tp, step, devs, pp.layers_per_stage[s], s == pp.stages - 1)
        busy = sum(rt.profiled_seconds(op) for op in ops)
        out.append(busy + xfer * ((s > 0) + (s < pp.stages - 1)))
    return out, xfer


def finishes(trace):
    return np.sort(trace.request_frame()["finish_s"].to_numpy())


# ------------------------------------------------------------------------------------ closed forms

@pytest.mark.parametrize("stages, tp", [(4, 1), (2, 2)])
def test_one_request_alone_takes_its_stage_times_plus_transfers(stages, tp):
    rt, pp, trace = run("pp", stages * tp, at_once(1), hw=QUIET, launch_s=0.0, stages=stages, tp=tp)
    times, xfer = stage_times(rt, pp, Step(1, 512, 512, "prefill"))
    # stage_times counts every transfer on both of its stages; alone, each is paid once
    expected = sum(times) - xfer * (stages - 1)
    assert finishes(trace)[0] == pytest.approx(expected, abs=EXACT)
    # an idle receiver waits for the activation instead of spinning in its receive
    p2p = trace.ops().query("name == 'p2p_act'")
    assert len(p2p) == 2 * tp * (stages - 1)
    assert np.allclose(p2p["start_s"], p2p["transfer_start_s"], atol=EXACT)


def test_one_request_alone_pays_one_launch_overhead_with_a_real_host():
    rt, pp, trace = run("pp", 4, at_once(1), hw=QUIET)
    times, xfer = stage_times(rt, pp, Step(1, 512, 512, "prefill"))
    # the host runs ahead of the GPUs: only the first launch on stage 0 is exposed
    assert finishes(trace)[0] == pytest.approx(rt.launch_s + sum(times) - 3 * xfer, abs=EXACT)


def test_saturated_pipeline_delivers_one_request_per_busiest_stage_time():
    n = 40
    rt, pp, trace = run("pp", 4, at_once(n), hw=QUIET, quiet=True)
    times, _ = stage_times(rt, pp, Step(1, 512, 512, "prefill"))
    fin = finishes(trace)
    period = (fin[-1] - fin[9]) / (n - 10)          # steady state, after the pipeline filled
    assert period == pytest.approx(max(times), rel=0.02)
    assert period < 0.4 * sum(times)                # stages really overlap (4 stages: ~1/4)


def test_saturated_pipeline_period_from_trace_with_contention_and_link_sharing():
    """Default profile: transfers share the PCIe root, so take the busiest stage's time from the
    trace (each op from its transfer start to its end) and check the delivery rate against it."""
    n = 40
    _, pp, trace = run("pp", 4, at_once(n))
    ops = trace.ops()
    steady = ops[ops["request"] == n // 2]
    busy = (steady["end_s"] - steady["transfer_start_s"]).groupby(steady["device"]).sum()
    fin = finishes(trace)
    period = (fin[-1] - fin[9]) / (n - 10)
    assert period == pytest.approx(busy.max(), rel=0.02)


def test_default_split_is_balanced_and_explicit_split_is_used():
    rt, pp, _ = run("pp", 4, at_once(1))
    assert pp.layers_per_stage == (10, 10, 10, 10)
    rt, pp, trace = run("pp", 2, at_once(1), split="25,15")
    assert pp.layers_per_stage == (25, 15)
    per_device = trace.ops().query("name == 'qkv'").groupby("device").size()
    assert per_device.to_dict() == {0: 25, 1: 15}


def test_balance_layers_minimises_the_slowest_stage():
    assert balance_layers(41, 1.0, [0.0] * 4) == split_layers(41, 4)
    assert balance_layers(10, 1.0, [0.0, 0.0, 3.0]) == (4, 4, 2)     # last stage holds a heavy head
    # 2 layers of 1 s and a 1.5 s head: (2, 0) is not allowed, (1, 1) gives 2.5 s
    assert balance_layers(2, 1.0, [0.0, 1.5]) == (1, 1)
    # brute force on a small case
    extra = [0.2, 0.5, 0.1, 2.3]
    got = balance_layers(12, 1.0, extra)
    best = min(max(n * 1.0 + e for n, e in zip(c, extra))
               for c in _compositions(12, 4))
    assert sum(got) == 12 and max(n + e for n, e in zip(got, extra)) == pytest.approx(best)


def _compositions(total, parts):
    if parts == 1:
        yield (total,)
        return
    for first in range(1, total - parts + 2):
        for rest in _compositions(total - first, parts - 1):
            yield (first,) + rest


# ------------------------------------------------------------------------------------ reductions

MIXED = [Request(0, 0.0, 300, 4), Request(1, 0.0, 128, 1), Request(2, 0.001, 64, 3),
         Request(3, 0.5, 200, 2), Request(4, 0.5, 100, 1)]


def _rows(trace):
    """Every row, in a canonical order (a mirrored tp records followers' rows as copies)."""
    return sorted(tuple(r) for r in trace.rows)


@pytest.mark.parametrize("host_sync", [True, False])
def test_one_stage_pp_is_tp_on_one_device(host_sync):
    _, _, tp = run("tp", 1, MIXED, host_sync=host_sync)
    _, _, pp = run("pp", 1, MIXED, host_sync=host_sync)
    assert _rows(pp) == _rows(tp)
    assert pp.requests == tp.requests


def test_one_stage_pp_is_a_plain_single_device_program():
    """An independent single-device host program: serve requests in order, sync after each step."""
    class Single:
        def setup(self, rt):
            pass

        def host(self, rt):
            while (req := (yield from rt.next_request())) is not None:
                steps = request_steps(req.batch, req.prompt_tokens, req.output_tokens)
                for i, step in enumerate(steps):
                    for op in step_ops(MODEL, 1, step, (0,)):
                        rt.launch(op, 0, 0, req.id, step.phase)
                    ev = rt.new_event(f"r{req.id}.step{i}")
                    rt.record(ev, 0, 0)
                    if i == 0:
                        rt.first_token_when(req.id, ev)
                    if i == len(steps) - 1:
                        rt.finish_when(req.id, ev)
                    else:
                        yield from rt.synchronize(ev)

    single = SimRuntime(HW, 1).run(Single(), source(MIXED))
    _, _, pp = run("pp", 1, MIXED)
    assert _rows(pp) == _rows(single)


def test_one_stage_pp_with_tp_is_tp_on_all_devices():
    _, _, tp = run("tp", 4, MIXED)
    _, _, pp = run("pp", 4, MIXED, stages=1, tp=4)
    assert _rows(pp) == _rows(tp)
    assert pp.requests == tp.requests


# ------------------------------------------------------------------------------------ generative

def _steps_on(trace, request, device, per_step):
    rows = trace.ops().query("request == @request and device == @device").sort_values("start_s")
    assert len(rows) % per_step == 0
    return [rows.iloc[i:i + per_step] for i in range(0, len(rows), per_step)]


def test_decode_steps_flow_through_every_stage_and_wait_for_the_token():
    out = 4
    rt, pp, trace = run("pp", 2, at_once(2, prompt=256, output=out))
    ops = trace.ops()
    layer_ops = len(step_ops(MODEL, 1, Step(1, 1, 2, "decode"), (0,), 1, False))
    for r in (0, 1):
        for d in (0, 1):
            decode = ops.query("request == @r and device == @d and phase == 'decode'")
            assert decode["name"].value_counts()["qkv"] == (out - 1) * pp.layers_per_stage[d]
        # stage 0: its layers and the send per step; the last stage: receive, layers, LM head
        first = _steps_on(trace, r, 0, 20 * layer_ops + 1)
        last = _steps_on(trace, r, 1, 1 + 20 * layer_ops + 2)
        assert len(first) == len(last) == out
        for k in range(out - 1):
            token = last[k].query("name == 'lm_head'")["end_s"].iloc[0]
            assert first[k + 1]["start_s"].min() >= token - EXACT
    req = trace.request_frame()
    assert (req["first_token_s"] < req["finish_s"]).all()


def test_two_requests_interleave_across_stages():
    _, _, trace = run("pp", 2, at_once(2, prompt=256, output=6))
    ops = trace.ops().query("phase == 'decode'")
    a1 = ops.query("request == 0 and device == 1")
    b0 = ops.query("request == 1 and device == 0")
    # some decode op of B on stage 0 runs while some decode op of A is on stage 1
    overlap = [(b.start_s < a.end_s and a.start_s < b.end_s)
               for a in a1.itertuples() for b in b0.iloc[::40].itertuples()]
    assert any(overlap)
    # and so two requests finish in less than twice one request's time
    one = finishes(run("pp", 2, at_once(1, prompt=256, output=6))[2])[0]
    assert finishes(trace)[-1] < 1.5 * one


def test_arrival_is_admitted_while_another_request_decodes():
    """The host must not sit in wait_any on A's token while B waits and there is room."""
    a = Request(0, 0.0, 256, 40)
    b = Request(1, 0.05, 256, 1)
    _, _, trace = run("pp", 2, [a, b])
    req = trace.request_frame().set_index("request")
    assert req.loc[1, "finish_s"] < req.loc[0, "finish_s"]
    # B starts within one stage-0 step of arriving (its prefill queues behind at most A's step)
    assert req.loc[1, "start_s"] - 0.05 < 0.02


def _driving_counts(trace, first_device=0):
    """Requests between their first op's start and the start of their last op on stage 0."""
    ops = trace.ops().query("request >= 0")
    s0 = ops[ops["device"] == first_device].groupby("request")["start_s"].max()
    begin = ops.groupby("request")["start_s"].min()
    points = sorted(begin.to_list())
    return [int(((begin <= t) & (t < s0)).sum()) for t in points]


@pytest.mark.parametrize("limit", [1, 2, 3])
def test_max_in_flight_is_respected(limit):
    _, _, trace = run("pp", 4, at_once(6, prompt=128, output=5), max_in_flight=limit)
    assert max(_driving_counts(trace)) == limit


def test_one_in_flight_serialises_decode_loops():
    _, _, trace = run("pp", 2, at_once(2, prompt=128, output=4), max_in_flight=1)
    ops = trace.ops()
    a_last_on_0 = ops.query("request == 0 and device == 0")["start_s"].max()
    assert ops.query("request == 1")["start_s"].min() >= a_last_on_0


def test_without_host_sync_decode_loops_hold_stage_zero():
    _, _, synced = run("pp", 2, at_once(2, prompt=128, output=4))
    _, _, device_side = run("pp", 2, at_once(2, prompt=128, output=4), host_sync=False)
    assert finishes(device_side)[-1] > finishes(synced)[-1]


# ------------------------------------------------------------------------------------ parameters

def _make(devices, model=MODEL, **params):
    return make_strategy({"name": "pp", **params}, model, devices, "exp.yaml", "strategies[1]")


@pytest.mark.parametrize("devices, params, key", [
    (4, {"stages": 3}, "strategies[1].stages"),
    (4, {"stages": 2, "tp": 1}, "strategies[1].stages"),
    (4, {"tp": 3}, "strategies[1].tp"),
    (6, {"tp": 3}, "strategies[1].tp"),                  # 3 does not divide llama-2-13b's 40 heads
    (2, {"split": "10,10"}, "strategies[1].split"),      # sums to 20, not 40
    (2, {"split": "40"}, "strategies[1].split"),         # one stage for two
    (2, {"split": "20,x"}, "strategies[1].split"),
    (2, {"split": "40,0"}, "strategies[1].split"),
    (2, {"max_in_flight": 0}, "strategies[1].max_in_flight"),
    (2, {"stages": 0}, "strategies[1].stages"),
    (2, {"bogus": 1}, "strategies[1].bogus"),
])
def test_bad_params_raise_config_error_naming_the_key(devices, params, key):
    with pytest.raises(ConfigError) as err:
        _make(devices, **params)
    assert err.value.key == key


def test_more_stages_than_layers_is_refused():
    tiny = replace(SMALL, layers=2)
    with pytest.raises(ConfigError) as err:
        _make(4, model=tiny)
    assert err.value.key == "strategies[1].stages"


def test_parse_split_accepts_strings_and_ints():
    assert parse_split("20, 20") == (20, 20)
    assert parse_split(40) == (40,)
    with pytest.raises(ValueError):
        parse_split("")


def test_split_in_yaml_is_a_string_and_lists_of_splits_are_sweeps(tmp_path):
    """Unquoted 25,15 is a string in block style (in a {flow: mapping} quote it: "25,15")."""
    path = tmp_path / "exp.yaml"
    path.write_text(
        "model: llama-2-13b\nhardware: a100-pcie-40gb\ndevices: 2\n"
        "strategies:\n  - name: pp\n    split: 25,15\n  - {name: pp, split: ['30,10', '20,20']}\n"
        "workload: {requests: 2, prompt_tokens: 64}\n")
    jobs = load_experiment(str(path))
    assert [j.label for j in jobs] == ["pp[split=25,15]", "pp[split=30,10]", "pp[split=20,20]"]
    strategy = build(jobs[0]).strategy
    assert isinstance(strategy, PP) and strategy.split == (25, 15)
    assert strategy.parallel_layout() == (1, 2)


def test_hybrid_layout_and_groups():
    s = _make(4, stages=2, tp=2)
    assert s.parallel_layout() == (2, 2)
    assert s.groups == ((0, 1), (2, 3))
    assert s.max_in_flight == 2
    assert _make(4, tp=2).stages == 2
