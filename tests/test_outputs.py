"""Run outputs: plots are real PNGs, trace.json obeys the Chrome trace event format, options validate."""
from __future__ import annotations

import json
import math
import os
import struct

import numpy as np
import pandas as pd
import pytest
import yaml

from simulator.compare import compare_dir
from simulator.errors import ConfigError
from simulator.experiment import Job
from simulator.outputs import (OutputOptions, chrome_trace, plot_latency_throughput, plot_timeline,
                               timeline_window, validate_outputs)
from simulator.runner import run_experiment
from simulator.trace import COLUMNS

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
META_NAMES = {"process_name", "thread_name", "process_sort_index", "thread_sort_index"}

EXP = {
    "name": "tiny",
    "model": {"preset": "llama-2-7b", "layers": 2},
    "hardware": "a100-sxm4-80gb",
    "devices": 2,
    "seed": 1,
    "strategies": [{"name": "tp", "label": "tp-a"}, {"name": "tp", "label": "tp-b"}],
    "workload": {"requests": 4, "arrival": {"kind": "poisson", "rate_rps": [20.0, 80.0]},
                 "prompt_tokens": {"dist": "uniform", "low": 32, "high": 128}, "output_tokens": 2},
}


def write_exp(tmp_path, **changes) -> str:
    path = tmp_path / "tiny.yaml"
    path.write_text(yaml.safe_dump({**EXP, **changes}))
    return str(path)


def check_png(path: str) -> tuple[int, int]:
    """Assert a non-trivial PNG; return its (width, height) from the IHDR chunk."""
    with open(path, "rb") as fh:
        data = fh.read()
    assert data[:8] == PNG_SIGNATURE
    assert data[12:16] == b"IHDR"
    assert len(data) > 5000
    width, height = struct.unpack(">II", data[16:24])
    assert width >= 300 and height >= 200
    return width, height


def check_chrome_trace(obj) -> list[dict]:
    """Validate the Chrome trace event format (JSON object form); return the X events.

    Rules: an object with a `traceEvents` list and `displayTimeUnit` ms|ns; every event has `ph`;
    X events have a string name, numeric ts >= 0 and dur >= 0, integer pid and tid; M events have a
    known name and an args mapping; the X events of one (pid, tid) track never overlap (a stream
    runs one op at a time); every track used by an X event is named by a thread_name event and
    every pid by a process_name event.
    """
    assert isinstance(obj, dict) and isinstance(obj.get("traceEvents"), list)
    assert obj.get("displayTimeUnit") in ("ms", "ns")
    xs, thread_names, process_names = [], set(), set()
    for ev in obj["traceEvents"]:
        assert isinstance(ev, dict) and "ph" in ev
        if ev["ph"] == "X":
            assert isinstance(ev["name"], str) and ev["name"]
            for k in ("ts", "dur"):
                assert isinstance(ev[k], (int, float)) and not isinstance(ev[k], bool)
                assert math.isfinite(ev[k]) and ev[k] >= 0
            for k in ("pid", "tid"):
                assert isinstance(ev[k], int) and not isinstance(ev[k], bool)
            xs.append(ev)
        elif ev["ph"] == "M":
            assert ev["name"] in META_NAMES and isinstance(ev.get("args"), dict)
            assert isinstance(ev["pid"], int)
            if ev["name"] == "thread_name":
                assert isinstance(ev["tid"], int) and isinstance(ev["args"]["name"], str)
                thread_names.add((ev["pid"], ev["tid"]))
            if ev["name"] == "process_name":
                process_names.add(ev["pid"])
    tracks: dict = {}
    for ev in xs:
        tracks.setdefault((ev["pid"], ev["tid"]), []).append((ev["ts"], ev["ts"] + ev["dur"], ev["name"]))
    for track, spans in tracks.items():
        assert track in thread_names, f"track {track} has no thread_name metadata"
        assert track[0] in process_names
        spans.sort()
        for (s0, e0, n0), (s1, _, n1) in zip(spans, spans[1:]):
            assert s1 >= e0 - 1e-6, f"ops {n0} and {n1} overlap on track {track}"
    return xs


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("run")
    path = write_exp(tmp)
    out = str(tmp / "out")
    summary = run_experiment(path, out, progress=False, quiet=True)
    assert (summary["error"].fillna("") == "").all()
    return out


def test_run_writes_every_output(run_dir):
    for name in ("summary.csv", "latency_throughput.png", "timeline.png", "trace.json", "compare.csv"):
        assert os.path.isfile(os.path.join(run_dir, name)), name
    check_png(os.path.join(run_dir, "latency_throughput.png"))
    check_png(os.path.join(run_dir, "timeline.png"))
    assert not [f for f in os.listdir(run_dir) if f.startswith(".tmp-")]


def test_trace_json_follows_chrome_format(run_dir):
    with open(os.path.join(run_dir, "trace.json"), encoding="utf-8") as fh:
        obj = json.load(fh)      # strict JSON: json.load accepts NaN, so also check the text below
    xs = check_chrome_trace(obj)
    assert xs
    names = {ev["args"]["name"] for ev in obj["traceEvents"] if ev["name"] == "process_name"}
    assert names == {"tp-a / device 0", "tp-a / device 1", "tp-b / device 0", "tp-b / device 1"}
    for ev in xs:
        assert {"request", "phase", "op_class", "isolated_us"} <= set(ev["args"])
        assert ev["cat"]
        assert ("wait_us" in ev["args"]) == (ev["args"]["op_class"] == "comm")
    assert any(ev["args"]["op_class"] == "comm" for ev in xs)
    meta = obj["otherData"]
    assert meta["op_events_written"] == len(xs) and meta["truncated"] is False
    with open(os.path.join(run_dir, "trace.json"), encoding="utf-8") as fh:
        assert "NaN" not in fh.read()


def test_compare_csv_of_two_identical_strategies(run_dir):
    table = pd.read_csv(os.path.join(run_dir, "compare.csv"))
    assert list(zip(table["strategy_a"], table["strategy_b"])) == [("tp-a", "tp-b"), ("tp-b", "tp-a")]
    assert np.allclose(table["jct_ratio_at_equal_throughput"], 1.0)
    assert np.allclose(table["max_throughput_ratio"], 1.0)
    again = compare_dir(run_dir)                  # what `parasim compare` prints: the same table
    assert list(again.columns) == list(table.columns)
    assert np.allclose(again["throughput_at_rps"], table["throughput_at_rps"])


def test_trace_event_cap_window_option_and_stale_files(tmp_path):
    path = write_exp(tmp_path, strategies=["tp"],
                     outputs={"trace_max_events": 50, "timeline_window_s": [0.0, 0.002]})
    out = str(tmp_path / "out")
    os.makedirs(out)
    (tmp_path / "out" / "compare.csv").write_text("stale")
    run_experiment(path, out, progress=False, quiet=True)
    assert not os.path.exists(os.path.join(out, "compare.csv"))   # one strategy: nothing to compare
    with open(os.path.join(out, "trace.json"), encoding="utf-8") as fh:
        obj = json.load(fh)
    xs = check_chrome_trace(obj)
    assert len(xs) == 50 and obj["otherData"]["truncated"] is True
    check_png(os.path.join(out, "timeline.png"))


def _job(label: str = "tp") -> Job:
    return Job(0, "e", "e.yaml", {}, {"name": "tp"}, "strategies[0]", label, {"rate": 1.0})


def _ops(rows: list[tuple]) -> pd.DataFrame:
    return pd.DataFrame(rows, columns=list(COLUMNS))


OPS = _ops([  # device, stream, priority, name, kind, op_class, request, phase, start, end, xfer, iso
    (0, 0, 0, "qkv", "gemm", "compute", 0, "prefill", 0.0, 1e-3, 0.0, 1e-3),
    (0, 1, 1, "ar", "all_reduce", "comm", 1, "prefill", 2e-4, 2e-3, 5e-4, 1.5e-3),
    (0, 0, 0, "norm", "elementwise", "memory", 0, "decode", 1e-3, 1.25e-3, 1e-3, 2.5e-4),
    (1, 0, 0, "ar", "all_reduce", "comm", 1, "prefill", 5e-4, 2e-3, 5e-4, 1.5e-3),
])


def test_chrome_trace_times_are_exact_microseconds():
    obj = chrome_trace([(_job(), OPS)], OutputOptions())
    xs = check_chrome_trace(json.loads(json.dumps(obj, allow_nan=False)))
    threads = {(e["pid"], e["tid"]): e["args"]["name"] for e in obj["traceEvents"]
               if e["name"] == "thread_name"}
    assert len(set(tid for _, tid in threads)) == len(threads)     # tids unique across processes
    ar0 = next(ev for ev in xs
               if ev["name"] == "ar" and threads[ev["pid"], ev["tid"]].startswith("stream 1"))
    assert ar0["ts"] == pytest.approx(200.0) and ar0["dur"] == pytest.approx(1800.0)
    assert ar0["args"] == {"request": 1, "phase": "prefill", "op_class": "comm",
                           "isolated_us": pytest.approx(1500.0), "wait_us": pytest.approx(300.0)}
    norm = next(ev for ev in xs if ev["name"] == "norm")
    assert norm["ts"] == pytest.approx(1000.0) and norm["dur"] == pytest.approx(250.0)
    assert sorted(threads.values()) == ["stream 0 (priority 0)", "stream 0 (priority 0)",
                                        "stream 1 (priority 1)"]


def test_validator_rejects_overlap_on_one_stream():
    bad = _ops([(0, 0, 0, "a", "gemm", "compute", 0, "prefill", 0.0, 2e-3, 0.0, 2e-3),
                (0, 0, 0, "b", "gemm", "compute", 0, "prefill", 1e-3, 3e-3, 1e-3, 2e-3)])
    with pytest.raises(AssertionError, match="overlap"):
        check_chrome_trace(chrome_trace([(_job(), bad)], OutputOptions()))


def test_default_window_spans_ops_around_the_middle_of_the_run():
    assert timeline_window(OPS, OutputOptions(timeline_ops=2)) == (2e-4, 2e-3)    # 2nd and 3rd op
    assert timeline_window(OPS, OutputOptions(timeline_ops=9)) == (0.0, 2e-3)     # every op


def test_default_window_skips_idle_time_between_far_apart_requests():
    # two bursts of 10 back-to-back 1 ms ops, 20 s apart: a window of 10 ops stays inside a burst
    burst = [(0, 0, 0, "op", "gemm", "compute", r, "prefill", t0 + i * 1e-3, t0 + (i + 1) * 1e-3,
              t0 + i * 1e-3, 1e-3) for r, t0 in ((0, 0.0), (1, 20.0)) for i in range(10)]
    lo, hi = timeline_window(_ops(burst), OutputOptions(timeline_ops=10))
    assert hi - lo == pytest.approx(0.01)
    assert timeline_window(OPS, OutputOptions(timeline_window_s=(1e-3, 1.5e-3))) == (1e-3, 1.5e-3)


def test_timeline_of_two_strategies(tmp_path):
    file = str(tmp_path / "timeline.png")
    plot_timeline([(_job("a"), OPS), (_job("b"), OPS)], OutputOptions(), file)
    _, height = check_png(file)
    assert height > 400


def test_latency_plot_skips_when_no_point_succeeded(tmp_path):
    file = str(tmp_path / "lt.png")
    frame = pd.DataFrame({"strategy": ["tp", "tp"], "throughput_rps": [np.nan, np.nan],
                          "jct_mean_s": [np.nan, np.nan], "jct_p90_s": [np.nan, np.nan],
                          "error": ["boom", "boom"]})
    assert plot_latency_throughput(frame, file) is False and not os.path.exists(file)
    frame.loc[0, ["throughput_rps", "jct_mean_s", "jct_p90_s", "error"]] = [2.0, 0.1, 0.2, ""]
    assert plot_latency_throughput(frame, file) is True
    check_png(file)


@pytest.mark.parametrize("outputs, key", [
    ({"timeline_window_s": 0.5}, "outputs.timeline_window_s"),
    ({"timeline_window_s": [0.1]}, "outputs.timeline_window_s"),
    ({"timeline_window_s": ["a", 1]}, "outputs.timeline_window_s"),
    ({"timeline_window_s": [0.2, 0.1]}, "outputs.timeline_window_s"),
    ({"timeline_window_s": [-1, 0.1]}, "outputs.timeline_window_s"),
    ({"timeline_ops": 0}, "outputs.timeline_ops"),
    ({"trace_max_events": True}, "outputs.trace_max_events"),
    ({"slo_s": -1}, "outputs.slo_s"),
    ({"timline_window_s": [0, 1]}, "outputs.timline_window_s"),
    ([1, 2], "outputs"),
])
def test_validate_outputs_rejects_bad_values(tmp_path, outputs, key):
    with pytest.raises(ConfigError) as info:
        validate_outputs(write_exp(tmp_path, outputs=outputs))
    assert info.value.key == key and info.value.where.endswith("tiny.yaml")


def test_validate_outputs_reads_good_values(tmp_path):
    opts = validate_outputs(write_exp(tmp_path, outputs={"timeline_window_s": [0, 0.01],
                                                         "timeline_ops": 50, "slo_s": 2}))
    assert opts == OutputOptions(timeline_window_s=(0.0, 0.01), timeline_ops=50, slo_s=2.0)
    assert validate_outputs(write_exp(tmp_path)) == OutputOptions()
