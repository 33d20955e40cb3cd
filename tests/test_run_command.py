"""`parasim run` as a user meets it: the output folder, the exit-status rule, the dry run, the
console table, the timeline point, byte-identical outputs, --version and `strategies list`."""
from __future__ import annotations

import os
import subprocess
import sys

import pandas as pd
import pytest
import yaml

import simulator.runner as runner
from simulator import __version__
from simulator.cli import main
from simulator.errors import ConfigError, DeadlockError
from simulator.experiment import load_experiment
from simulator.outputs import OutputOptions, choose_timeline_point, validate_outputs

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
EXP = {
    "name": "small",
    "model": {"preset": "llama-2-7b", "layers": 2},
    "hardware": "a100-sxm4-80gb",
    "devices": 2,
    "seed": 1,
    "strategies": ["tp", {"name": "pp", "stages": 2, "label": "pp2"}],
    "workload": {"requests": 4, "arrival": {"kind": "poisson", "rate_rps": [20.0, 80.0, 40.0]},
                 "prompt_tokens": {"dist": "uniform", "low": 32, "high": 128}, "output_tokens": 2},
}


def write(tmp_path, name="small.yaml", **changes) -> str:
    path = tmp_path / name
    path.write_text(yaml.safe_dump({**EXP, **changes}, sort_keys=False))
    return str(path)


def cli(args, capsys):
    code = main(args)
    out = capsys.readouterr()
    return code, out.out, out.err


@pytest.mark.parametrize("make", ["file", "under_file", "uncreatable"])
def test_bad_out_folder_is_one_line_before_any_simulation(tmp_path, capsys, monkeypatch, make):
    (tmp_path / "afile").write_text("x")
    out = {"file": tmp_path / "afile", "under_file": tmp_path / "afile" / "sub",
           "uncreatable": "/proc/parasim-cannot-be-here"}[make]
    monkeypatch.setattr(runner, "run_job", lambda *a, **k: pytest.fail("simulated a point"))
    code, _, err = cli(["run", write(tmp_path), "--out", str(out), "--no-progress"], capsys)
    assert code == 2 and len(err.strip().splitlines()) == 1, err
    assert err.startswith("parasim: error: argument: --out: ") and "Traceback" not in err
    assert (tmp_path / "afile").read_text() == "x"


def test_infeasible_points_are_skipped_listed_and_exit_0(tmp_path, capsys):
    f = write(tmp_path, devices=[2, 3])            # tp=3 does not divide 32 heads; pp2 on 3 devices
    code, out, err = cli(["run", f, "--out", str(tmp_path / "o"), "--no-progress"], capsys)
    assert code == 0, err
    assert "infeasible, skipped" in err and "devices=3" in err
    s = pd.read_csv(tmp_path / "o" / "summary.csv", keep_default_na=False)
    bad = s[s["devices"] == 3]
    assert len(bad) > 0 and bad["error"].str.startswith("infeasible: ").all()
    assert (s[s["devices"] == 2]["error"] == "").all()
    assert "infeasible" in out and "NaN" not in out and "nan" not in out


def test_no_feasible_point_is_bad_input(tmp_path, capsys):
    f = write(tmp_path, devices=3, strategies=["tp"])
    code, _, err = cli(["run", f, "--out", str(tmp_path / "o"), "--no-progress"], capsys)
    assert code == 2 and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "o").exists()


def test_a_point_failing_while_simulating_exits_1(tmp_path, capsys, monkeypatch):
    real = runner.simulate

    def flaky(built, *args, **kwargs):
        if built.strategy.name == "pp":
            raise DeadlockError("stuck: device 0 stream 0 waits for recv")
        return real(built, *args, **kwargs)
    monkeypatch.setattr(runner, "simulate", flaky)
    code, out, err = cli(["run", write(tmp_path), "--out", str(tmp_path / "o"), "--no-progress"],
                         capsys)
    assert code == 1
    assert "failed while simulating" in err and "stuck" in err
    s = pd.read_csv(tmp_path / "o" / "summary.csv", keep_default_na=False)
    assert (s[s["strategy"] == "tp"]["error"] == "").all()
    assert s[s["strategy"] == "pp2"]["error"].str.contains("stuck").all()


def test_dry_run_lists_points_and_writes_nothing(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(runner, "run_job", lambda *a, **k: pytest.fail("simulated a point"))
    out_dir = tmp_path / "o"
    code, out, err = cli(["run", write(tmp_path, devices=[2, 3]), "--out", str(out_dir), "--dry-run"],
                         capsys)
    assert code == 0, err
    assert "12 job(s) = 6 sweep point(s) x 2 strategies" in out
    assert "point 5: devices=3, workload.arrival.rate_rps=40.0: all infeasible" in out
    assert "tp: infeasible: " in out and "timeline point: point 1" in out
    assert not out_dir.exists()
    code, _, err = cli(["run", write(tmp_path, devices=3), "--dry-run"], capsys)
    assert code == 2


def test_console_table_is_formatted(tmp_path, capsys):
    code, out, _ = cli(["run", write(tmp_path), "--out", str(tmp_path / "o"), "--no-progress"],
                       capsys)
    assert code == 0
    header, first = out.splitlines()[:2]
    for col in ("strategy", "model", "devices", "rate_rps", "requests", "jct_mean_ms",
                "throughput_rps", "exposed_comm_ms", "exposed_comm_%", "status"):
        assert col in header.split()
    cells = dict(zip(header.split(), first.split()))
    assert cells["model"] == "llama-2-7b" and cells["requests"] == "4" and cells["status"] == "ok"
    assert cells["tpot_mean_ms"] != "nan"


def test_timeline_point_default_and_choice(tmp_path):
    f = write(tmp_path)
    jobs = load_experiment(f)
    chosen = choose_timeline_point(f, jobs, {}, OutputOptions())
    assert chosen.point == 1 and dict(chosen.settings)["workload.arrival.rate_rps"] == 80.0
    assert [jobs[i].label for i in chosen.indices] == ["tp", "pp2"]
    infeasible = {2: "x", 3: "x"}          # both strategies at rate 80: the next-highest load
    assert choose_timeline_point(f, jobs, infeasible, OutputOptions()).point == 2
    no_load = write(tmp_path, "n.yaml", workload={**EXP["workload"], "arrival": {"kind": "all_at_once"},
                                                  "prompt_tokens": [64, 128, 256]})
    assert choose_timeline_point(no_load, load_experiment(no_load), {}, OutputOptions()).point == 1
    picked = validate_outputs(write(tmp_path, outputs={"timeline_point": {"rate_rps": 40.0}}))
    assert choose_timeline_point(f, jobs, {}, picked).point == 2
    assert choose_timeline_point(f, jobs, {}, OutputOptions(timeline_point=0)).point == 0


@pytest.mark.parametrize("value, key, words", [
    ({"rate_rps": 5.0}, "outputs.timeline_point.rate_rps", "swept values: 20.0, 80.0, 40.0"),
    ({"clients": 2}, "outputs.timeline_point.clients", "not a swept axis"),
    (7, "outputs.timeline_point", "0 to 2"),
    (-1, "outputs.timeline_point", "index >= 0"),
    ("high", "outputs.timeline_point", "index >= 0"),
])
def test_bad_timeline_point_is_bad_input(tmp_path, capsys, value, key, words):
    f = write(tmp_path, outputs={"timeline_point": value})
    code, _, err = cli(["run", f, "--out", str(tmp_path / "o"), "--dry-run"], capsys)
    assert code == 2 and f": {key}: " in err and words in err, err


def test_timeline_point_where_nothing_is_feasible(tmp_path):
    f = write(tmp_path, devices=[2, 3], outputs={"timeline_point": {"devices": 3}})
    with pytest.raises(ConfigError, match="every strategy is infeasible"):
        runner.plan_run(f)


def test_identical_runs_give_byte_identical_files(tmp_path):
    # two processes with different string-hash seeds (set order), one serial and one parallel
    f = write(tmp_path, outputs={"trace_max_events": 300})
    for name, seed, jobs in (("a", "1", "1"), ("b", "2", "2")):
        done = subprocess.run([sys.executable, "-m", "simulator.cli", "run", f, "--out",
                               str(tmp_path / name), "--jobs", jobs, "--no-progress"],
                              env={**os.environ, "PYTHONHASHSEED": seed}, cwd=ROOT,
                              capture_output=True, text=True, timeout=300)
        assert done.returncode == 0, done.stderr
    files = sorted(os.path.relpath(os.path.join(d, n), tmp_path / "a")     # outputs, not the cache
                   for d, _, names in os.walk(tmp_path / "a") for n in names if ".cache" not in d)
    assert {"summary.csv", "requests.csv", "compare.csv", "latency_throughput.png", "timeline.png",
            "trace.json"} <= set(files)
    for rel in files:
        assert (tmp_path / "a" / rel).read_bytes() == (tmp_path / "b" / rel).read_bytes(), rel
    assert b"Matplotlib" not in (tmp_path / "a" / "timeline.png").read_bytes()


def test_version_and_strategies_list(capsys):
    with pytest.raises(SystemExit) as info:
        main(["--version"])
    assert info.value.code == 0 and capsys.readouterr().out.strip() == f"parasim {__version__}"
    code, out, _ = cli(["strategies", "list"], capsys)
    assert code == 0
    for line in ("tp: ", "    host_sync: bool = True", "liger: ", "    window: int = 6",
                 "pp: ", "iso: ", "    chunks: int = 2"):
        assert line in out.splitlines() or any(x.startswith(line) for x in out.splitlines()), line
