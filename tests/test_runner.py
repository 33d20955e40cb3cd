"""The experiment runner: sweeps, caching, worker-count independence, summary columns."""
from __future__ import annotations

import os

import pandas as pd
import pytest
import yaml

from simulator.experiment import load_experiment
from simulator.runner import SUMMARY_COLUMNS, run_experiment

EXP = {
    "name": "sweep",
    "model": {"preset": "llama-2-7b", "layers": 2},
    "hardware": "a100-sxm4-80gb",
    "devices": [1, 2],
    "seed": 3,
    "strategies": ["tp"],
    "workload": {"requests": 6, "arrival": {"kind": "poisson", "rate_rps": [50.0, 200.0]},
                 "prompt_tokens": {"dist": "uniform", "low": 32, "high": 256}, "output_tokens": 3},
}


@pytest.fixture
def exp_file(tmp_path):
    path = tmp_path / "sweep.yaml"
    path.write_text(yaml.safe_dump(EXP))
    return str(path)


def test_sweep_expands_cartesian_product_in_key_order(exp_file):
    jobs = load_experiment(exp_file)
    assert [(j.point["devices"], j.point["workload.arrival.rate_rps"]) for j in jobs] == \
        [(1, 50.0), (1, 200.0), (2, 50.0), (2, 200.0)]
    assert len({j.cache_key() for j in jobs}) == 4


def test_summary_has_required_and_swept_columns(exp_file, tmp_path):
    summary = run_experiment(exp_file, str(tmp_path / "out"), progress=False)
    for col in SUMMARY_COLUMNS + ["workload.arrival.rate_rps", "error"]:
        assert col in summary.columns
    assert len(summary) == 4
    assert (summary["requests"] == 6).all()
    on_disk = pd.read_csv(tmp_path / "out" / "summary.csv")
    assert list(on_disk.columns) == list(summary.columns)
    reqs = pd.read_csv(tmp_path / "out" / "requests.csv")
    assert len(reqs) == 24 and {"jct_s", "ttft_s", "tpot_s", "strategy"} <= set(reqs.columns)


def test_results_identical_across_worker_counts(exp_file, tmp_path):
    a = run_experiment(exp_file, str(tmp_path / "serial"), workers=1, progress=False)
    b = run_experiment(exp_file, str(tmp_path / "parallel"), workers=2, progress=False)
    pd.testing.assert_frame_equal(a, b)
    assert (tmp_path / "serial" / "summary.csv").read_bytes() == \
        (tmp_path / "parallel" / "summary.csv").read_bytes()
    assert (tmp_path / "serial" / "requests.csv").read_bytes() == \
        (tmp_path / "parallel" / "requests.csv").read_bytes()


def test_rerun_uses_cache_and_gives_same_result(exp_file, tmp_path, monkeypatch):
    out = str(tmp_path / "out")
    first = run_experiment(exp_file, out, progress=False, traced=set())
    cached = os.listdir(os.path.join(out, ".cache"))
    assert len(cached) == 4
    import simulator.runner as runner
    calls = []
    real = runner.run_job
    monkeypatch.setattr(runner, "run_job",
                        lambda job, keep=False, spill=None: calls.append(job) or real(job, keep, spill))
    second = run_experiment(exp_file, out, progress=False, traced=set())
    assert calls == []                                   # every point came from the cache
    pd.testing.assert_frame_equal(first, second)


def test_changed_point_is_recomputed(exp_file, tmp_path, monkeypatch):
    out = str(tmp_path / "out")
    run_experiment(exp_file, out, progress=False, traced=set())
    data = dict(EXP, seed=4)
    path = tmp_path / "sweep.yaml"
    path.write_text(yaml.safe_dump(data))
    import simulator.runner as runner
    calls = []
    real = runner.run_job
    monkeypatch.setattr(runner, "run_job",
                        lambda job, keep=False, spill=None: calls.append(job) or real(job, keep, spill))
    run_experiment(str(path), out, progress=False, traced=set())
    assert len(calls) == 4


def test_same_seed_same_summary(exp_file, tmp_path):
    a = run_experiment(exp_file, str(tmp_path / "a"), progress=False, traced=set())
    b = run_experiment(exp_file, str(tmp_path / "b"), progress=False, traced=set())
    pd.testing.assert_frame_equal(a, b)


def test_higher_load_never_lowers_jct(exp_file, tmp_path):
    s = run_experiment(exp_file, str(tmp_path / "o"), progress=False, traced=set())
    for dev, grp in s.groupby("devices"):
        grp = grp.sort_values("workload.arrival.rate_rps")
        assert grp["jct_mean_s"].iloc[1] >= grp["jct_mean_s"].iloc[0] - 1e-12
    # more TP devices make one request faster at light load
    light = s[s["workload.arrival.rate_rps"] == 50.0].set_index("devices")
    assert light.loc[2, "jct_p50_s"] < light.loc[1, "jct_p50_s"]


def test_strategy_variants_from_lists(tmp_path):
    data = dict(EXP, devices=2, strategies=[{"name": "tp", "host_sync": [True, False]}])
    path = tmp_path / "v.yaml"
    path.write_text(yaml.safe_dump(data))
    labels = sorted({j.label for j in load_experiment(str(path))})
    assert labels == ["tp[host_sync=False]", "tp[host_sync=True]"]


def test_memory_check_counts_every_resident_request_and_explicit_splits(tmp_path):
    from simulator.errors import ConfigError
    from simulator.runner import build
    exp = {"model": "llama-2-13b", "hardware": "a100-pcie-40gb", "devices": 2,
           "strategies": ["tp", "liger", {"name": "pp", "split": "4,36"}],
           "workload": {"requests": 2, "batch": 8, "prompt_tokens": 4000, "output_tokens": 2}}
    path = tmp_path / "m.yaml"
    path.write_text(yaml.safe_dump(exp))
    tp, liger, pp = load_experiment(str(path))
    build(tp)                                    # one request's KV cache at a time fits
    with pytest.raises(ConfigError, match="GiB per device"):
        build(liger)                             # six windowed requests' KV caches do not
    with pytest.raises(ConfigError, match="GiB per device"):
        build(pp)                                # 36 of 40 layers on one device do not


def test_cache_key_follows_the_measured_tables_a_profile_names(tmp_path):
    from importlib import resources
    text = resources.files("hwprofiles").joinpath("a100-sxm4-80gb.yaml").read_text()
    data = yaml.safe_load(text)
    data["measured_tables"] = {"gemm": {"csv": "g.csv", "source": "measured: test"}}
    (tmp_path / "box.yaml").write_text(yaml.safe_dump(data))
    (tmp_path / "g.csv").write_text("m,n,k,dtype,seconds\n16,4096,4096,fp16,0.0001\n")
    exp = dict(EXP, hardware="box.yaml", devices=1)
    path = tmp_path / "e.yaml"
    path.write_text(yaml.safe_dump(exp))
    before = load_experiment(str(path))[0].cache_key()
    (tmp_path / "g.csv").write_text("m,n,k,dtype,seconds\n16,4096,4096,fp16,0.0002\n")
    assert load_experiment(str(path))[0].cache_key() != before


def test_a_long_traced_job_keeps_a_bounded_stretch_from_its_middle(tmp_path, monkeypatch):
    """Over TRACE_ROWS ops, a traced job is simulated again keeping rows from about its middle op:
    the rows are bounded, the metrics are those of the untraced run."""
    from simulator import runner
    from simulator.experiment import load_experiment
    path = tmp_path / "e.yaml"
    path.write_text("model: {preset: llama-2-7b, layers: 2}\nhardware: a100-sxm4-80gb\ndevices: 2\n"
                    "strategies: [iso]\nworkload: {requests: 12, arrival: {kind: poisson, rate_rps: 50},"
                    " prompt_tokens: 256, output_tokens: 3}\n")
    job = load_experiment(str(path))[0]
    whole = runner.run_job(job, True)
    assert whole.trace.complete and whole.trace.meta["rows_from_s"] == 0.0
    monkeypatch.setattr(runner, "TRACE_ROWS", 100)
    monkeypatch.setattr("simulator.trace.CHUNK_OPS", 64)      # marks every 64 ops
    cut = runner.run_job(job, True)
    assert 50 <= len(cut.trace.rows) <= 100 and not cut.trace.complete
    t0 = cut.trace.meta["rows_from_s"]
    assert 0.0 < t0 < whole.trace.meta["makespan_s"]
    assert min(r.end_s for r in cut.trace.rows) >= t0
    middle = sorted(r.end_s for r in whole.trace.rows)[whole.trace.total_ops // 2]
    assert t0 <= middle
    assert cut.row.keys() == whole.row.keys()
    for k, v in whole.row.items():
        want = pytest.approx(v, rel=1e-9, nan_ok=True) if isinstance(v, float) else v
        assert cut.row[k] == want, k          # nan_ok: goodput_rps is NaN without an slo


def test_outputs_trace_full_streams_every_op_row_to_disk(tmp_path):
    """outputs.trace: full writes each traced job's rows, all of them, as a gzipped CSV."""
    import gzip

    import pandas as pd

    from simulator import runner
    from simulator.trace import COLUMNS
    path = tmp_path / "e.yaml"
    path.write_text("model: {preset: llama-2-7b, layers: 2}\nhardware: a100-sxm4-80gb\ndevices: 2\n"
                    "strategies: [tp, iso]\nworkload: {requests: 5, arrival: {kind: poisson,"
                    " rate_rps: 50}, prompt_tokens: 256, output_tokens: 3}\noutputs: {trace: full}\n")
    out = tmp_path / "o"
    summary = runner.run_experiment(str(path), str(out), progress=False, quiet=True)
    for label in ("tp", "iso"):
        file = out / "ops" / f"{label}.csv.gz"
        with gzip.open(file, "rt") as fh:
            rows = pd.read_csv(fh)
        assert list(rows.columns) == list(COLUMNS)
        ops = int(summary.set_index("strategy").loc[label, "ops"])
        assert len(rows) == ops and set(rows["device"]) == {0, 1}
    assert not list((out / "ops").glob("*.part"))
    bad = tmp_path / "b.yaml"
    bad.write_text(path.read_text().replace("trace: full", "trace: everything"))
    with pytest.raises(Exception, match="outputs.trace"):
        runner.run_experiment(str(bad), str(tmp_path / "o2"), progress=False, quiet=True)


SERVING_COLUMNS = ["ttft_p50_s", "ttft_p99_s", "tpot_p50_s", "tpot_p90_s", "tpot_p99_s",
                   "queue_mean_s", "queue_p90_s", "queue_p99_s", "input_tokens_per_s",
                   "output_tokens_per_s", "goodput_rps"]


def _one_point(tmp_path, name, **changes):
    exp = {**EXP, "devices": 1, "workload": {**EXP["workload"],
                                            "arrival": {"kind": "poisson", "rate_rps": 50.0}}}
    exp.update(changes)
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(exp))
    out = tmp_path / name
    summary = run_experiment(str(path), str(out), progress=False)
    return summary, pd.read_csv(out / "summary.csv"), pd.read_csv(out / "requests.csv")


def test_serving_columns_goodput_and_meets_slo(tmp_path):
    """Without `slo` the goodput column is there and empty and requests.csv has no meets_slo; with
    one, goodput is the meeting requests over the throughput's span, and the SLO is a sweep axis."""
    plain, on_disk, reqs = _one_point(tmp_path, "plain")
    assert set(SERVING_COLUMNS) <= set(on_disk.columns)
    assert on_disk["goodput_rps"].isna().all() and "meets_slo" not in reqs.columns
    span = reqs["finish_s"].max() - reqs["arrival_s"].min()
    assert on_disk["output_tokens_per_s"].iloc[0] == pytest.approx(6 * 3 / span)
    assert on_disk["input_tokens_per_s"].iloc[0] == pytest.approx(reqs["prompt_tokens"].sum() / span)
    bound = float(reqs["ttft_s"].median())
    swept, on_disk, reqs = _one_point(tmp_path, "slo", slo={"ttft_s": [bound, 1e6]})
    assert list(on_disk["slo.ttft_s"]) == [bound, 1e6]
    first = reqs[reqs["slo.ttft_s"] == bound]
    assert list(first["meets_slo"]) == list(first["ttft_s"] <= bound)
    assert on_disk["goodput_rps"].iloc[0] == pytest.approx(first["meets_slo"].sum() / span)
    assert on_disk["goodput_rps"].iloc[1] == pytest.approx(on_disk["throughput_rps"].iloc[1])
    same = [c for c in plain.columns if c not in ("goodput_rps", "error") and c in swept.columns]
    pd.testing.assert_frame_equal(swept.iloc[[0]][same].reset_index(drop=True), plain[same])


def test_console_shows_goodput_only_with_an_slo():
    from simulator.console import summary_table
    row = {"strategy": "tp", "model": "m", "devices": 2, "requests": 4, "jct_mean_s": 0.5,
           "throughput_rps": 2.0, "error": ""}
    plain = summary_table(pd.DataFrame([{**row, "goodput_rps": float("nan")}]))
    assert "goodput_rps" not in plain and "throughput_rps" in plain
    table = summary_table(pd.DataFrame([{**row, "goodput_rps": 1.5}]))
    assert table.splitlines()[0].split()[5:7] == ["throughput_rps", "goodput_rps"]
    assert table.splitlines()[1].split()[5:7] == ["2.000", "1.500"]
