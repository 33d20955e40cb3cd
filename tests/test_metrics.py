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
