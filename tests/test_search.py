"""`parasim search`: bisection, pruning, resuming, outputs and bad input (simulator/search.py)."""
from __future__ import annotations

import math

import pandas as pd
import pytest
import yaml

from simulator import search
from simulator.cli import main
from simulator.errors import ConfigError
from simulator.search import Config, Load, load_search, meets, next_rate, record, run_search

SPEC = {
    "name": "tiny-search",
    "model": {"preset": "llama-3-8b", "layers": 2},
    "hardware": "h100-sxm5-80gb",
    "devices": [1, 2],
    "strategies": ["tp", {"name": "pp", "tp": 1, "label": "pp"}],
    "serving": {"scheduler": "continuous", "max_num_seqs": 32},
    "workload": {"requests": 40, "prompt_tokens": {"dist": "uniform", "low": 64, "high": 512},
                 "output_tokens": {"dist": "uniform", "low": 8, "high": 32}},
    "search": {"load": {"find": "max_rate", "low_rps": 1, "high_rps": 4000, "tolerance": 0.2},
               "slo": {"ttft_p90_s": 0.02, "tpot_p90_s": 0.003}},
}


def _write(tmp_path, spec=None, name="spec.yaml"):
    path = tmp_path / name
    path.write_text(yaml.safe_dump(spec or SPEC, sort_keys=False))
    return str(path)


@pytest.mark.parametrize("knee", [0.7, 7.3, 130.0, 999.0])
def test_bisection_finds_the_knee(knee):
    """A closed-form system that meets its SLO exactly up to `knee` req/s: the search ends with
    the best rate within the tolerance below the knee, in about log2(range / tolerance) probes."""
    load = Load(True, low_rps=0.5, high_rps=1000.0, tolerance=0.02, keep_up=0.9)
    slo = {"ttft_p90_s": 1.0}
    c = Config(job=None)
    while True:
        rate = next_rate(c, load)
        if rate is None:
            break
        row = {"ttft_p90_s": 0.5 if rate <= knee else 2.0, "throughput_rps": rate,
               "offered_rps": rate}
        record(c, rate, row, slo, load)
    assert c.status == "ok"
    assert knee / 1.02 <= c.best_rate <= knee
    assert c.probes <= 2 + math.ceil(math.log2(math.log(2000) / math.log(1.02)))


def test_the_ends_of_the_range_are_reported():
    load = Load(True, low_rps=1.0, high_rps=10.0, tolerance=0.05)
    never, always = Config(job=None), Config(job=None)
    for c, ok in ((never, False), (always, True)):
        while (rate := next_rate(c, load)) is not None:
            record(c, rate, {"ttft_p90_s": 0.1 if ok else 9.0, "throughput_rps": rate}, {"ttft_p90_s": 1.0}, load)
    assert never.status.startswith("misses the SLO at low_rps") and never.probes == 1
    assert always.status.startswith("meets the SLO up to high_rps") and always.best_rate == 10.0


def test_meets_needs_every_bound_and_keeping_up():
    row = {"ttft_p90_s": 0.1, "tpot_p90_s": 0.01, "jct_p90_s": 2.0, "throughput_rps": 9.5,
           "offered_rps": 10.0}
    assert meets(row, {"ttft_p90_s": 0.1, "e2e_p90_s": 2.0}, 10.0, 0.9)
    assert not meets(row, {"tpot_p90_s": 0.009}, 10.0, 0.9)
    assert not meets(row, {"ttft_p90_s": 1.0}, 10.0, 0.96)         # fell behind the arrivals
    assert not meets(dict(row, ttft_p90_s=float("nan")), {"ttft_p90_s": 1.0})
    assert not meets(dict(row, error="boom"), {"ttft_p90_s": 1.0})


def test_a_search_ranks_writes_and_its_best_runs(tmp_path, capsys):
    out = tmp_path / "out"
    code = main(["search", _write(tmp_path), "--out", str(out), "--jobs", "2"])
    printed = capsys.readouterr().out
    assert code == 0 and "winner:" in printed and "runner-up:" in printed
    frame = pd.read_csv(out / "search.csv")
    assert len(frame) == 4 and (frame["status"] == "ok").all()
    best = frame.sort_values("goodput_per_gpu_rps", ascending=False).iloc[0]
    assert f"winner: {best['strategy']}" in printed
    # the winner's best rate met the SLO; its p90 TTFT and TPOT are within the bounds
    assert best["ttft_p90_s"] <= 0.02 and best["tpot_p90_s"] <= 0.003
    assert (out / "pareto.png").stat().st_size > 10_000
    spec = yaml.safe_load((out / "best.yaml").read_text())
    assert spec["workload"]["arrival"] == {"kind": "poisson", "rate_rps": float(best["best_rate_rps"])}
    assert spec["devices"] == int(best["devices"])
    run_out = tmp_path / "best-run"
    assert main(["run", str(out / "best.yaml"), "--out", str(run_out), "--no-progress"]) == 0
    ran = pd.read_csv(run_out / "summary.csv").iloc[0]
    assert ran["ttft_p90_s"] == pytest.approx(best["ttft_p90_s"], rel=1e-12)


def test_a_killed_search_resumes_from_the_cache(tmp_path, monkeypatch):
    spec = dict(SPEC, devices=1, strategies=["tp"])
    path = _write(tmp_path, spec)
    first = run_search(path, str(tmp_path / "out"), progress=lambda _m: None)

    def no_simulation(*_a, **_k):
        raise AssertionError("a cached probe was simulated again")
    monkeypatch.setattr("simulator.runner.run_job", no_simulation)
    again = run_search(path, str(tmp_path / "out"), progress=lambda _m: None)
    pd.testing.assert_frame_equal(first.frame, again.frame)


def test_pruning_names_the_memory_reason(tmp_path, capsys):
    spec = dict(SPEC, model="llama-3-70b", devices=[1, 8], strategies=["tp"],
                workload=dict(SPEC["workload"], requests=8))
    spec["search"] = {"load": {"rate_rps": 1.0}, "slo": {"e2e_p90_s": 100.0}}
    code = main(["search", _write(tmp_path, spec), "--out", str(tmp_path / "o")])
    printed = capsys.readouterr().out
    assert code == 0
    line = next(ln for ln in printed.splitlines() if ln.startswith("pruned:"))
    assert "GiB" in line and "tp" in line
    frame = pd.read_csv(tmp_path / "o" / "search.csv")
    pruned = frame[frame["devices"] == 1].iloc[0]
    assert pruned["status"].startswith("pruned: ") and "GiB" in pruned["status"]
    assert frame[frame["devices"] == 8].iloc[0]["status"] == "ok"


@pytest.mark.parametrize("change, key, words", [
    ({"strategies": []}, "strategies", "non-empty"),
    ({"search": {"load": {"low_rps": 1}, "slo": {"ttft_p50_s": 1}}}, "search.slo.ttft_p50_s",
     "unknown SLO"),
    ({"search": {"load": {"low_rps": -1}, "slo": {"ttft_p90_s": 1}}}, "search.load.low_rps", "> 0"),
    ({"search": {"load": {"low_rps": 5, "high_rps": 2}, "slo": {"ttft_p90_s": 1}}},
     "search.load.high_rps", "must exceed low_rps"),
    ({"search": {"load": {}, "slo": {}}}, "search.slo", "at least one"),
    ({"workload": dict(SPEC["workload"], arrival={"kind": "poisson", "rate_rps": 2})},
     "workload.arrival", "the search sets the arrival"),
])
def test_bad_search_input_is_one_line(tmp_path, capsys, change, key, words):
    spec = dict(SPEC, **change)
    path = _write(tmp_path, spec)
    with pytest.raises(ConfigError) as exc:
        load_search(path)
    assert exc.value.key == key and words in exc.value.message
    assert main(["search", path, "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and key in err[0]
    assert not (tmp_path / "o").exists()


def test_a_search_without_its_section_is_refused(tmp_path):
    spec = {k: v for k, v in SPEC.items() if k != "search"}
    with pytest.raises(ConfigError, match="search: {load"):
        load_search(_write(tmp_path, spec))


def test_with_rate_sets_the_arrival_and_the_point():
    job = load_search_jobs()[0]
    probe = search.with_rate(job, 2.5, 99)
    assert probe.index == 99 and probe.config["workload"]["arrival"]["rate_rps"] == 2.5
    assert job.config["workload"]["arrival"]["rate_rps"] == 1.0       # the original is untouched
    assert probe.cache_key() != job.cache_key()


def load_search_jobs():
    import tempfile
    from pathlib import Path
    with tempfile.TemporaryDirectory() as tmp:
        return load_search(_write(Path(tmp))).jobs


def test_a_search_compares_adaptive_with_the_fixed_configurations(tmp_path):
    spec = {k: v for k, v in SPEC.items() if k != "serving"}
    spec.update(devices=2, strategies=["tp", {"name": "pp", "tp": 1, "label": "pp"},
                                       {"name": "adaptive", "low": "tp", "high": "pp",
                                        "up_queue": 2, "label": "adaptive"}])
    spec["search"] = {"load": {"find": "max_rate", "low_rps": 1, "high_rps": 400,
                               "tolerance": 0.3}, "slo": {"e2e_p90_s": 0.5}}
    result = run_search(_write(tmp_path, spec), str(tmp_path / "out"), progress=lambda _m: None)
    frame = result.frame.set_index("strategy")
    assert set(frame.index) == {"tp", "pp", "adaptive"}
    assert (frame["status"] == "ok").all() and (frame["best_rate_rps"] > 1).all()
