"""Metrics from traces: closed forms on hand-made traces."""
from __future__ import annotations

import numpy as np
import pytest

from simulator.metrics import device_metrics, summarize, union_length
from simulator.trace import RequestRecord, Trace


def test_union_length():
    assert union_length(np.array([0.0, 1.0, 5.0]), np.array([2.0, 3.0, 6.0])) == 4.0
    assert union_length(np.array([]), np.array([])) == 0.0
    assert union_length(np.array([0.0, 0.5]), np.array([4.0, 1.0])) == 4.0


def row(device, start, end, cls, stream=0):
    return (device, stream, 0, "x", "gemm" if cls != "comm" else "all_reduce", cls, 0, "prefill",
            start, end, start, end - start)


def test_exposed_comm_and_busy_fraction():
    rows = [row(0, 0, 2, "compute"), row(0, 1, 3, "comm", 1), row(0, 4, 5, "comm"),
            row(1, 0, 5, "compute")]
    t = Trace.from_rows(rows, [], {"devices": 2, "makespan_s": 10.0})
    d = device_metrics(t).set_index("device")
    assert d.loc[0, "busy_s"] == 4.0 and d.loc[0, "exposed_comm_s"] == 2.0     # [2,3] and [4,5]
    assert d.loc[1, "exposed_comm_s"] == 0.0 and d.loc[1, "busy_fraction"] == 0.5


def test_spin_is_not_busy():
    spinning = (0, 0, 0, "ar", "all_reduce", "comm", 0, "prefill", 0.0, 3.0, 2.0, 1.0)
    t = Trace.from_rows([spinning, row(0, 0, 1, "compute", 1)], [], {"devices": 1, "makespan_s": 4.0})
    d = device_metrics(t).set_index("device")
    assert d.loc[0, "spin_s"] == 2.0
    assert d.loc[0, "busy_s"] == 2.0              # compute [0,1] + transfer [2,3]
    assert d.loc[0, "exposed_comm_s"] == 1.0


def test_request_summary():
    reqs = [RequestRecord(0, 0.0, 0.0, 1.0, 3.0, 10, 3, 1, False),
            RequestRecord(1, 1.0, 1.0, 2.0, 5.0, 10, 3, 1, True),
            RequestRecord(2, 2.0, 3.0, 4.0, 6.0, 10, 1, 1, True)]
    t = Trace.from_rows([row(0, 0, 6, "compute")], reqs, {"devices": 1, "makespan_s": 6.0})
    s = summarize(t)
    assert s["requests"] == 2                                       # the warm-up one is left out
    assert s["jct_mean_s"] == pytest.approx((4.0 + 4.0) / 2)
    assert s["throughput_rps"] == pytest.approx(2 / (6.0 - 1.0))
    assert s["ttft_mean_s"] == pytest.approx((1.0 + 2.0) / 2)
    assert s["tpot_mean_s"] == pytest.approx(1.5)                   # (5-2)/(3-1); single-pass has none


@pytest.mark.parametrize("chunk", [1, 2, 3, 7, 1000])
def test_chunked_totals_match_whole_union(chunk):
    """Folding rows a few at a time gives the union lengths of all rows at once."""
    rng = np.random.default_rng(3)
    rows = []
    for i in range(200):
        d = int(rng.integers(0, 3))
        s = float(rng.uniform(0, 50))
        e = s + float(rng.exponential(1.0))
        cls = ("compute", "memory", "comm")[int(rng.integers(0, 3))]
        x = s + (float(rng.uniform(0, e - s)) if cls == "comm" else 0.0)
        rows.append((d, int(rng.integers(0, 2)), 0, "x", "gemm", cls, i % 5, "prefill", s, e, x, e - s))
    t = Trace.from_rows(rows, [], {"devices": 3, "makespan_s": 60.0}, chunk_ops=chunk)
    got = device_metrics(t).set_index("device")
    for d in range(3):
        mine = [r for r in rows if r[0] == d]
        s = np.array([r[10] if r[5] == "comm" else r[8] for r in mine])
        e = np.array([r[9] for r in mine])
        comm = np.array([r[5] == "comm" for r in mine])
        assert got.loc[d, "busy_s"] == pytest.approx(union_length(s, e), rel=1e-12)
        assert got.loc[d, "compute_s"] == pytest.approx(union_length(s[~comm], e[~comm]), rel=1e-12)
        assert got.loc[d, "comm_s"] == pytest.approx(union_length(s[comm], e[comm]), rel=1e-12)
        spin = sum(r[10] - r[8] for r in mine if r[5] == "comm")
        assert got.loc[d, "spin_s"] == pytest.approx(spin, rel=1e-12)
    assert t.total_ops == 200 and t.complete


def test_recorder_keeps_only_what_it_is_asked_to():
    from simulator.trace import TraceRecorder
    rec = TraceRecorder(1, keep_ops=3)
    for i in range(10):
        rec.buffer.append(row(0, i, i + 1, "compute"))
        if len(rec.buffer) >= 4:
            rec.fold(float(i + 1))
    rec.fold(float("inf"))
    assert rec.ops == 10 and [r[8] for r in rec.kept] == [0, 1, 2]
    assert rec.device_stats()[0].busy_s == 10.0


# ---------------------------------------------------------------------- serving metrics and SLO

from simulator.errors import ConfigError  # noqa: E402
from simulator.metrics import Slo, parse_slo, request_metrics  # noqa: E402

# (request, arrival, start, first token, finish, prompt, output, batch, measured):
# ttft 0.5, 1.0, 2.0, 1.75; tpot 1/3, 0.5, none (single pass), 1/12; queue 0, 0.5, 1.0, 1.5
SERVED = [RequestRecord(0, 0.0, 0.0, 0.5, 1.0, 100, 2, 1, False),       # warm-up: left out
          RequestRecord(1, 1.0, 1.0, 1.5, 2.5, 100, 4, 1, True),
          RequestRecord(2, 2.0, 2.5, 3.0, 4.0, 200, 3, 2, True),
          RequestRecord(3, 3.0, 4.0, 5.0, 5.0, 50, 1, 1, True),
          RequestRecord(4, 4.0, 5.5, 5.75, 6.0, 10, 4, 1, True)]


def served(slo=None):
    t = Trace.from_rows([row(0, 0, 6, "compute")], SERVED, {"devices": 1, "makespan_s": 6.0})
    return summarize(t, slo), request_metrics(t, slo)


def test_serving_percentiles_and_token_throughput():
    s, req = served()
    assert s["requests"] == 4 and s["throughput_rps"] == pytest.approx(4 / 5.0)
    assert s["ttft_p50_s"] == pytest.approx(1.375)                  # sorted 0.5, 1, 1.75, 2
    assert s["ttft_p99_s"] == pytest.approx(1.75 + 0.97 * 0.25)
    assert s["ttft_p90_s"] == pytest.approx(1.75 + 0.7 * 0.25)      # unchanged column
    assert s["tpot_p50_s"] == pytest.approx(1 / 3)                  # sorted 1/12, 1/3, 1/2
    assert s["tpot_p90_s"] == pytest.approx(1 / 3 + 0.8 / 6)
    assert s["tpot_p99_s"] == pytest.approx(1 / 3 + 0.98 / 6)
    assert s["queue_mean_s"] == pytest.approx(0.75)
    assert s["queue_p90_s"] == pytest.approx(1.0 + 0.7 * 0.5)
    assert s["queue_p99_s"] == pytest.approx(1.0 + 0.97 * 0.5)
    # tokens of every sequence (request 2 has batch 2) over the span 1.0 .. 6.0
    assert s["input_tokens_per_s"] == pytest.approx((100 + 2 * 200 + 50 + 10) / 5.0)
    assert s["output_tokens_per_s"] == pytest.approx((4 + 2 * 3 + 1 + 4) / 5.0)
    assert np.isnan(s["goodput_rps"]) and "meets_slo" not in req.columns


@pytest.mark.parametrize("slo,meets", [
    (Slo(ttft_s=1.0), [0, 1, 2]),                 # a bound is met with equality
    (Slo(tpot_s=0.4), [1, 3, 4]),                 # the single-pass request has no TPOT to miss
    (Slo(ttft_s=1.0, tpot_s=0.4), [1]),
    (Slo(ttft_s=0.1), []),
])
def test_goodput_counts_measured_requests_meeting_every_bound(slo, meets):
    s, req = served(slo)
    assert list(req.loc[req["meets_slo"], "request"]) == meets      # warm-up 0 flagged too
    assert s["goodput_rps"] == pytest.approx(len([r for r in meets if r != 0]) / 5.0)
    # the other columns do not depend on the SLO
    plain, _ = served()
    assert {k: v for k, v in s.items() if k != "goodput_rps"} == \
        pytest.approx({k: v for k, v in plain.items() if k != "goodput_rps"})


def test_single_pass_run_has_no_tpot_percentiles():
    reqs = [RequestRecord(i, float(i), float(i), i + 0.5, i + 0.5, 10, 1, 1, True) for i in range(3)]
    s = summarize(Trace.from_rows([row(0, 0, 3, "compute")], reqs, {"devices": 1, "makespan_s": 3.0}))
    assert all(np.isnan(s[k]) for k in ("tpot_p50_s", "tpot_p90_s", "tpot_p99_s"))
    assert s["output_tokens_per_s"] == pytest.approx(3 / 2.5)


@pytest.mark.parametrize("value,key,words", [
    ({"ttft_s": 0}, "slo.ttft_s", "> 0.0"),
    ({"tpot_s": -0.1}, "slo.tpot_s", "> 0.0"),
    ({"ttft_s": float("inf")}, "slo.ttft_s", "finite"),
    ({"ttft_s": "fast"}, "slo.ttft_s", "expected a number"),
    ({"ttft_s": True}, "slo.ttft_s", "boolean"),
    ({"jct_s": 1.0}, "slo.jct_s", "allowed here: tpot_s, ttft_s"),
    ({}, "slo", "give ttft_s, tpot_s or both"),
    (0.5, "slo", "expected a mapping"),
])
def test_bad_slo(value, key, words):
    with pytest.raises(ConfigError) as exc:
        parse_slo(value, "e.yaml")
    assert exc.value.key == key and words in exc.value.message


def test_slo_parses_either_or_both():
    assert parse_slo(None, "e.yaml") is None
    assert parse_slo({"ttft_s": 2}, "e.yaml") == Slo(ttft_s=2.0)
    assert parse_slo({"tpot_s": 0.05, "ttft_s": 1}, "e.yaml") == Slo(ttft_s=1.0, tpot_s=0.05)
