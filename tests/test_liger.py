"""Tests of the `liger` strategy (strategies/liger.py; shared/research/liger.md §2.3-2.5).

The model is the Liger artifact's layer shape (GLM-130B hidden 12288 as 128 heads x 96, a 4h
GELU FFN) cut to a few layers, with a tiny vocabulary because the artifact has no LM head.
"""
from __future__ import annotations

import numpy as np
import pytest

import strategies
from simulator.engine import SimRuntime
from simulator.errors import ConfigError
from simulator.hardware import load_hardware
from simulator.metrics import summarize
from simulator.model import load_model
from simulator.ops import Gemm, is_comm
from simulator.runner import make_strategy
from simulator.workload import parse_workload
from strategies.liger import Liger, LigerParams
from strategies.liger_flight import slice_gemm as _slice

ARTIFACT_LAYER = {"preset": "glm-130b", "heads": 128, "kv_heads": 128, "head_dim": 96,
                  "ffn": 49152, "gated_mlp": False, "vocab": 128}
PCIE = load_hardware("a100-pcie-40gb")
NVLINK = load_hardware("v100-sxm2-32gb")
EPS = 1e-12


def model(layers=2, **over):
    return load_model({**ARTIFACT_LAYER, "layers": layers, **over})


def workload(requests=12, arrival=None, output_tokens=1, low=16, high=115):
    return parse_workload({"requests": requests, "batch": 2,
                           "arrival": arrival or {"kind": "all_at_once"},
                           "prompt_tokens": {"dist": "uniform", "low": low, "high": high,
                                             "multiple_of": 2},
                           "output_tokens": output_tokens}, "test")


def run(name, m, wl, devices=2, hw=PCIE, launch_s=None, log=False, segments=True, **params):
    cls = strategies.get(name)
    strategy = cls(m, devices, cls.Params(**params))
    if log:
        strategy.plan_log = []
    rt = SimRuntime(hw, devices, launch_overhead_s=launch_s, segments=segments)
    trace = rt.run(strategy, wl.source(np.random.default_rng(0)))
    return strategy, trace


def timeline(trace):
    """Per device, in time order: what ran, for whom, and exactly when (streams left out)."""
    df = trace.ops().sort_values(["device", "start_s", "end_s"], kind="stable")
    cols = ["device", "name", "request", "phase", "start_s", "end_s", "transfer_start_s",
            "isolated_s"]
    return [tuple(r) for r in df[cols].itertuples(index=False)]


def stream_rows(trace, device, stream):
    df = trace.ops()
    df = df[(df["device"] == device) & (df["stream"] == stream)]
    return df.sort_values(["start_s", "end_s"], kind="stable").reset_index(drop=True)


# ------------------------------------------------------------------ (a) window 1 is tp exactly

WORKLOADS = {
    "poisson prefill": dict(requests=16, arrival={"kind": "poisson", "rate_rps": 60.0}),
    "all at once": dict(requests=10),
    "decode": dict(requests=6, arrival={"kind": "poisson", "rate_rps": 20.0},
                   output_tokens={"dist": "uniform", "low": 1, "high": 6}),
}


@pytest.mark.parametrize("launch_s", [None, 0.0],
                         ids=["profile launch overhead", "no launch overhead"])
@pytest.mark.parametrize("shape", sorted(WORKLOADS))
def test_window_of_one_gives_the_tp_trace_exactly(shape, launch_s):
    """With one request in flight nothing is filled, and the hybrid sync wakes the host when a
    segment's last op starts: the next segment's launches are hidden under it whenever that op
    lasts at least the launch overhead, as every op of these shapes does. Then every op starts and
    ends at exactly tp's times (same floats), including decode steps and their host syncs. Op by
    op (segments end where the two programs differ, so their one-ulp roundings would differ too);
    with segments, to 1e-12."""
    m, wl = model(), workload(**WORKLOADS[shape])
    _, tp = run("tp", m, wl, launch_s=launch_s, segments=False)
    liger, lg = run("liger", m, wl, launch_s=launch_s, segments=False, window=1)
    assert timeline(lg) == timeline(tp)
    _, tp_seg = run("tp", m, wl, launch_s=launch_s)
    _, lg_seg = run("liger", m, wl, launch_s=launch_s, window=1)
    for a, b in zip(timeline(lg_seg), timeline(tp), strict=True):
        assert a[:4] == b[:4] and a[4:] == pytest.approx(b[4:], rel=1e-12)
    for a, b in zip(timeline(tp_seg), timeline(tp), strict=True):
        assert a[:4] == b[:4] and a[4:] == pytest.approx(b[4:], rel=1e-12)
    assert set(lg.ops()["stream"]) == {liger.main[0]}
    assert lg.request_frame().equals(tp.request_frame())


def test_window_of_one_on_host_bound_shapes_is_tp_order_never_earlier():
    """Where ops are shorter than the launch overhead (a tiny model), exact equality is impossible
    by design: tp's host runs arbitrarily far ahead, Liger's host launches a segment only once the
    previous segment's last op has started, so the launch of the next segment's first op is exposed.
    What holds: the same ops in the same order on every device, none earlier than under tp."""
    tiny = load_model({"name": "tiny", "layers": 2, "hidden": 256, "heads": 4, "kv_heads": 4,
                       "ffn": 1024, "gated_mlp": False, "vocab": 1000})
    wl = workload(requests=6, arrival={"kind": "poisson", "rate_rps": 2000.0})
    _, tp = run("tp", tiny, wl)
    _, lg = run("liger", tiny, wl, window=1)
    a, b = timeline(tp), timeline(lg)
    assert [r[:4] for r in a] == [r[:4] for r in b]
    assert all(y[4] >= x[4] - EPS and y[5] >= x[5] - EPS for x, y in zip(a, b))
    assert any(y[4] > x[4] + 1e-9 for x, y in zip(a, b))      # the exposed launches are visible
    _, tp0 = run("tp", tiny, wl, launch_s=0.0)
    _, lg0 = run("liger", tiny, wl, launch_s=0.0, window=1)
    assert timeline(lg0) == timeline(tp0)                      # and vanish without launch cost


# ------------------------------------------------------------------ (b) decomposition

@pytest.mark.parametrize("n", [8, 13, 1000, 6144, 24576])
def test_gemm_slices_tile_the_output_dimension(n):
    g = Gemm(128, n, 12288, name="ffn_up")
    for cuts in ([0, 8], [0, 3, 8], [0, 1, 2, 5, 7, 8], list(range(9))):
        pieces = [_slice(g, lo, hi, 8) for lo, hi in zip(cuts, cuts[1:])]
        assert sum(p.n for p in pieces) == n
        assert sum(p.flops for p in pieces) == pytest.approx(g.flops, rel=1e-12)
        assert all(p.m == g.m and p.k == g.k for p in pieces)
        assert [p.name for p in pieces] == \
            [f"ffn_up[{hi - lo}/8]" for lo, hi in zip(cuts, cuts[1:])]


def test_decomposed_gemms_of_a_run_add_up_to_the_original():
    liger, trace = run("liger", model(), workload(requests=12), log=True)
    launches = [x for e in liger.plan_log for x in e["main"] + e["sub"]]
    by_op: dict = {}
    for x in launches:
        by_op.setdefault((x["request"], x["index"]), []).append(x)
    split = {k: v for k, v in by_op.items() if len(v) > 1}
    assert len(split) >= 5, "the run should decompose some GEMMs"
    for pieces in split.values():
        original = pieces[0]["original"]
        assert isinstance(original, Gemm)
        assert sum(p["op"].n for p in pieces) == original.n
        assert sum(p["op"].flops for p in pieces) == pytest.approx(original.flops, rel=1e-12)
    # every launched piece is in the trace, on every device, with the piece's own cost
    ops = trace.ops()
    for pieces in split.values():
        for p in pieces:
            rows = ops[(ops["request"] == p["request"]) & (ops["name"] == p["op"].name)]
            assert set(rows["device"]) == {0, 1}
            assert p["profiled_s"] in set(rows["isolated_s"])
    names = ops["name"].str.extract(r"^(\w+)\[(\d+)/8\]$").dropna()
    assert set(names[0]) <= {"qkv", "out_proj", "ffn_up", "ffn_down", "lm_head"}


# ------------------------------------------------------------------ (c) fill budget

@pytest.mark.parametrize("comm_budget", ["remaining", "profiled"])
@pytest.mark.parametrize("factor", [0.8, 0.5])
def test_sub_stream_fill_respects_the_budget(comm_budget, factor):
    liger, _ = run("liger", model(layers=3), workload(requests=16), log=True,
                   contention_factor=factor, comm_budget=comm_budget)
    filled = collectives = 0
    for e in liger.plan_log:
        planned = sum(x["profiled_s"] for x in e["main"])
        assert e["planned_s"] == pytest.approx(planned, rel=1e-12)
        assert e["budget_s"] == pytest.approx(factor * planned, rel=1e-12)
        compute = [x for x in e["sub"] if not is_comm(x["original"])]
        comm = [x for x in e["sub"] if is_comm(x["original"])]
        assert not (compute and comm), "a segment is filled with the opposite class only"
        assert all(is_comm(x["original"]) != e["main_comm"] for x in e["sub"])
        assert sum(x["profiled_s"] for x in compute) <= factor * planned * (1 + 1e-12)
        assert sum(x["charged_s"] for x in e["sub"]) <= e["budget_s"] * (1 + 1e-12)
        if comm_budget == "remaining" and comm:   # one collective takes the rest of the budget
            assert len(comm) == 1 and e["sub"][-1] is comm[0]
            assert sum(x["charged_s"] for x in e["sub"]) == pytest.approx(e["budget_s"], rel=1e-12)
        else:
            assert sum(x["profiled_s"] for x in comm) <= factor * planned * (1 + 1e-12)
        filled += len(e["sub"])
        collectives += len(comm)
    assert filled > 20
    assert collectives > 0 or comm_budget == "profiled"


def test_contention_factor_from_the_profile():
    liger, _ = run("liger", model(layers=1), workload(requests=3), hw=NVLINK, log=True,
                   contention_factor="profile")
    slow = NVLINK.contention.slowdown
    assert liger.factors[True] == slow[("comm", "compute")] / slow[("compute", "comm")]
    assert liger.factors[False] == slow[("compute", "comm")] / slow[("comm", "compute")]
    for e in liger.plan_log:
        assert e["budget_s"] == pytest.approx(liger.factors[e["main_comm"]] * e["planned_s"])


# ------------------------------------------------------------------ (d) under load

def test_under_load_liger_beats_tp_throughput_and_keeps_the_head_fast():
    """A comm-heavy machine (A100 over PCIe): the window's other requests run under the head's
    all-reduces, so throughput rises; the head keeps the main stream, so its JCT stays near tp's."""
    m, wl = model(), workload(requests=24)
    _, tp = run("tp", m, wl)
    _, lg = run("liger", m, wl)
    s_tp, s_lg = summarize(tp), summarize(lg)
    assert s_lg["throughput_rps"] > 1.05 * s_tp["throughput_rps"]
    assert s_lg["jct_mean_s"] < s_tp["jct_mean_s"]
    head_tp = tp.request_frame().set_index("request").loc[0]
    head_lg = lg.request_frame().set_index("request").loc[0]
    assert head_lg["finish_s"] - head_lg["arrival_s"] == pytest.approx(
        head_tp["finish_s"] - head_tp["arrival_s"], rel=0.10)


# ------------------------------------------------------------------ (e) streams and dependencies

@pytest.mark.parametrize("params", [{}, {"retire": "any", "comm_budget": "profiled"}])
def test_stream_order_and_inter_stream_dependencies(params):
    liger, trace = run("liger", model(), workload(requests=12), log=True, **params)
    for d in range(2):
        main = stream_rows(trace, d, liger.main[d])
        sub = stream_rows(trace, d, liger.sub[d])
        for rows in (main, sub):       # a stream is a FIFO: its ops never overlap
            assert (rows["start_s"].to_numpy()[1:] >= rows["end_s"].to_numpy()[:-1] - EPS).all()
        # launch order from the host's log == execution order on each stream
        assert list(main["name"]) == [x["op"].name for e in liger.plan_log for x in e["main"]]
        assert list(sub["name"]) == [x["op"].name for e in liger.plan_log for x in e["sub"]]
        main_end, sub_at, checked = [], 0, 0
        m_at = 0
        for k, e in enumerate(liger.plan_log):
            m_at += len(e["main"])
            main_end.append(main["end_s"][m_at - 1])
            for _ in e["sub"]:
                if k > 0:              # sub work of iteration k waits for main segment k-1
                    assert sub["start_s"][sub_at] >= main_end[k - 1] - EPS
                    checked += 1
                sub_at += 1
        assert checked > 20


def test_handoff_wait_keeps_each_request_a_chain_of_ops():
    """Optionally a new head's main-stream ops wait for its own sub-stream ops (the artifact does
    not: on 4 PCIe devices a head's op can start while its previous op still runs on the sub
    stream)."""
    def overlaps(trace):
        df = trace.ops()
        df = df[df["device"] == 0].sort_values("start_s", kind="stable")
        bad = 0
        for _, g in df.groupby("request"):
            ends = np.maximum.accumulate(g["end_s"].to_numpy())
            bad += int((g["start_s"].to_numpy()[1:] < ends[:-1] - EPS).sum())
        return bad
    m, wl = model(layers=4), workload(requests=40)
    _, loose = run("liger", m, wl, devices=4)
    _, tight = run("liger", m, wl, devices=4, handoff_wait=True)
    assert overlaps(loose) > 0
    assert overlaps(tight) == 0


@pytest.mark.parametrize("params", [{}, {"contention_factor": 1.5, "host_sync": False},
                                    {"contention_factor": 1.5, "host_sync": False, "window": 3,
                                     "retire": "any", "decompose_factor": 1, "handoff_wait": True}])
def test_first_token_and_finish_wait_for_all_of_the_requests_ops(params):
    """A new head's main-stream ops can overtake its own sub-stream ops (the artifact's hazard;
    frequent with tiny host-bound ops and an over-full budget). A request's first token is still
    marked after its prefill's last op and its finish after every one of its ops, with or without
    host sync; with handoff_wait its decode ops also start after its first token."""
    tiny = load_model({"name": "tiny", "layers": 2, "hidden": 512, "heads": 8, "kv_heads": 8,
                       "ffn": 1024, "gated_mlp": True, "vocab": 1000})
    wl = parse_workload({"requests": 12, "batch": 3,
                         "arrival": {"kind": "poisson", "rate_rps": 1e5},
                         "prompt_tokens": {"dist": "uniform", "low": 4, "high": 300},
                         "output_tokens": {"dist": "uniform", "low": 1, "high": 5}}, "test")
    _, trace = run("liger", tiny, wl, hw=load_hardware("a100-sxm4-80gb"), **params)
    ops = trace.ops()
    req = trace.request_frame().set_index("request")
    for r, g in ops.groupby("request"):
        assert req.loc[r, "finish_s"] >= g["end_s"].max() - EPS
        assert req.loc[r, "first_token_s"] >= g[g["phase"] == "prefill"]["end_s"].max() - EPS
        decode = g[g["phase"] == "decode"]
        if len(decode) and params.get("handoff_wait"):
            assert decode["start_s"].min() >= req.loc[r, "first_token_s"] - EPS


def test_decode_steps_wait_for_the_previous_token():
    wl = workload(requests=8, arrival={"kind": "poisson", "rate_rps": 200.0},
                  output_tokens={"dist": "uniform", "low": 2, "high": 5})
    for params in ({}, {"retire": "any"}):
        _, trace = run("liger", model(), wl, **params)
        ops = trace.ops()
        req = trace.request_frame().set_index("request")
        for r, g in ops[ops["device"] == 0].groupby("request"):
            g = g.sort_values("start_s", kind="stable")
            phase = g["phase"].to_numpy()
            starts, ends = g["start_s"].to_numpy(), g["end_s"].to_numpy()
            prefill_end = ends[phase == "prefill"].max()
            assert starts[phase == "decode"].min() >= prefill_end - EPS
            assert req.loc[r, "first_token_s"] == pytest.approx(prefill_end, abs=EPS)
            assert req.loc[r, "finish_s"] == pytest.approx(ends.max(), abs=EPS)
        assert (req["output_tokens"] > 1).all()
        assert len(ops[ops["phase"] == "decode"]) > 0


def test_host_sync_off_lets_segments_cross_steps():
    wl = workload(requests=4, output_tokens=3)
    liger, _ = run("liger", model(layers=1), wl, devices=1, log=True, host_sync=False)
    assert max(len(e["main"]) for e in liger.plan_log) > 12     # one segment, many steps
    liger, _ = run("liger", model(layers=1), wl, devices=1, log=True)
    assert max(len(e["main"]) for e in liger.plan_log) <= 10


# ------------------------------------------------------------------ (f) configuration

@pytest.mark.parametrize("key, value", [
    ("window", 0), ("contention_factor", 0.0), ("contention_factor", -1),
    ("contention_factor", "fast"),
    ("decompose_factor", 0), ("comm_budget", "all"), ("retire", "never"), ("host_sync", "yes"),
    ("window", 2.5), ("main_priority", "high")])
def test_bad_params_name_the_key(key, value):
    with pytest.raises(ConfigError) as exc:
        make_strategy({"name": "liger", key: value}, model(), 2, "exp.yaml", "strategies[1]")
    assert exc.value.key == f"strategies[1].{key}"
    assert exc.value.where == "exp.yaml"


def test_unknown_param_and_bad_tp_degree_name_the_key():
    with pytest.raises(ConfigError) as exc:
        make_strategy({"name": "liger", "depth": 3}, model(), 2, "exp.yaml", "strategies[0]")
    assert exc.value.key == "strategies[0].depth"
    with pytest.raises(ConfigError) as exc:
        make_strategy({"name": "liger"}, model(), 3, "exp.yaml", "strategies[0]")
    assert exc.value.key == "strategies[0]"


def test_defaults_are_the_artifacts():
    p = LigerParams()
    assert (p.window, p.contention_factor, p.decompose_factor, p.comm_budget, p.retire) == \
        (6, 0.8, 8, "remaining", "head")
    assert (p.main_priority, p.sub_priority) == (-4, 0)
    assert strategies.get("liger") is Liger
    assert make_strategy({"name": "liger", "window": 3, "contention_factor": "profile"},
                         model(), 2, "exp.yaml", "s").params.window == 3
