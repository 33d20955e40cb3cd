"""`--backend ray` (simulator/ray_backend.py) on a local Ray: the same summary.csv and search.csv
as the local pool, byte for byte; a lost task retried once, then recorded; a bad address in one
line. Skipped without Ray: ``pip install -e '.[ray]'`` to run them (docs/cluster.md)."""
from __future__ import annotations

import functools
import gzip
import os
import socket
import subprocess
import sys

import pandas as pd
import pytest
import yaml

ray = pytest.importorskip("ray")

import simulator.runner as runner  # noqa: E402
from simulator.cli import main  # noqa: E402
from simulator.search import run_search  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
EXP = {                              # experiments/quickstart.yaml, reduced
    "name": "quickstart-small",
    "model": {"preset": "llama-2-13b", "layers": 4},
    "hardware": "a100-sxm4-80gb",
    "devices": 4,
    "seed": 0,
    "strategies": ["tp", {"name": "pp", "stages": 4, "label": "pp4"}],
    "workload": {"requests": 6, "batch": 1, "arrival": {"kind": "poisson",
                                                        "rate_rps": [2.0, 6.0, 12.0]},
                 "prompt_tokens": {"dist": "uniform", "low": 128, "high": 512},
                 "output_tokens": 4},
}
SEARCH = {
    "name": "tiny-search",
    "model": {"preset": "llama-3-8b", "layers": 2},
    "hardware": "h100-sxm5-80gb",
    "devices": [1, 2],
    "strategies": ["tp"],
    "serving": {"scheduler": "continuous", "max_num_seqs": 16},
    "workload": {"requests": 16, "prompt_tokens": {"dist": "uniform", "low": 64, "high": 256},
                 "output_tokens": 8},
    "search": {"load": {"find": "max_rate", "low_rps": 1, "high_rps": 1000, "tolerance": 0.5},
               "slo": {"ttft_p90_s": 0.02, "tpot_p90_s": 0.003}},
}


def write(tmp_path, data, name="exp.yaml") -> str:
    path = tmp_path / name
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return str(path)


@pytest.fixture(scope="module")
def local_ray():
    """One local Ray for the module's tests (the backend uses a session already open)."""
    ray.init(num_cpus=2, include_dashboard=False, logging_level="ERROR")
    ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])   # the crashing tasks below
    yield
    ray.shutdown()


def test_the_cli_starts_a_local_ray_and_writes_the_local_pools_files(tmp_path):
    """No session open, no address: the run starts a local Ray and shuts it down after."""
    path = write(tmp_path, EXP)
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    for name, extra in (("local", ["--jobs", "2"]), ("ray", ["--jobs", "2", "--backend", "ray"])):
        done = subprocess.run([sys.executable, "-m", "simulator.cli", "run", path, "--out",
                               str(tmp_path / name), "--no-progress", *extra], cwd=ROOT, env=env,
                              capture_output=True, text=True, timeout=240)
        assert done.returncode == 0, done.stderr
    for name in ("summary.csv", "requests.csv", "compare.csv", "trace.json"):
        assert (tmp_path / "ray" / name).read_bytes() == (tmp_path / "local" / name).read_bytes()


def test_ray_summary_is_byte_identical_to_the_local_pool(tmp_path, local_ray):
    path = write(tmp_path, dict(EXP, devices=[2, 4]))       # pp4 on 2 devices: infeasible
    assert main(["run", path, "--out", str(tmp_path / "local"), "--no-progress"]) == 0
    assert main(["run", path, "--out", str(tmp_path / "ray"), "--no-progress",
                 "--backend", "ray"]) == 0
    summary = (tmp_path / "ray" / "summary.csv").read_bytes()
    assert summary == (tmp_path / "local" / "summary.csv").read_bytes()
    frame = pd.read_csv(tmp_path / "ray" / "summary.csv")
    assert len(frame) == 12 and frame["error"].fillna("").str.startswith("infeasible").sum() == 3
    # the ray run filled the cache (the traced timeline jobs always run); a local re-run from it
    # writes the same bytes
    assert len(os.listdir(tmp_path / "ray" / ".cache")) >= 7   # not the timeline point's jobs
    assert main(["run", path, "--out", str(tmp_path / "ray"), "--no-progress"]) == 0
    assert (tmp_path / "ray" / "summary.csv").read_bytes() == summary


def test_ray_search_csv_is_identical(tmp_path, local_ray):
    path = write(tmp_path, SEARCH)
    quiet = dict(progress=lambda _m: None)
    local = run_search(path, str(tmp_path / "local"), **quiet)
    on_ray = run_search(path, str(tmp_path / "ray"), backend="ray", **quiet)
    assert (tmp_path / "ray" / "search.csv").read_bytes() == \
        (tmp_path / "local" / "search.csv").read_bytes()
    assert (local.frame["status"] == "ok").all() and local.frame["probes"].min() > 2
    pd.testing.assert_frame_equal(local.frame, on_ray.frame)


def _crash(flag: str, real, args):
    """Job 0's worker dies (a Ray WorkerCrashedError), once while `flag` is missing, or always
    when `flag` is empty; every other job runs as usual."""
    if args[0].index == 0 and (not flag or not os.path.exists(flag)):
        if flag:
            open(flag, "w").close()
        os._exit(1)
    return real(args)


def test_a_lost_task_is_retried_once(tmp_path, local_ray, monkeypatch):
    flag = tmp_path / "crashed-once"
    path = write(tmp_path, EXP)
    assert main(["run", path, "--out", str(tmp_path / "local"), "--no-progress"]) == 0
    monkeypatch.setattr(runner, "_work", functools.partial(_crash, str(flag), runner._work))
    assert main(["run", path, "--out", str(tmp_path / "ray"), "--no-progress",
                 "--backend", "ray", "--jobs", "2"]) == 0
    assert flag.exists()                                  # it did crash, and the retry ran it
    assert (tmp_path / "ray" / "summary.csv").read_bytes() == \
        (tmp_path / "local" / "summary.csv").read_bytes()


def test_a_task_lost_twice_is_recorded_as_failed(tmp_path, local_ray, monkeypatch, capsys):
    timeline = {"timeline_point": {"workload.arrival.rate_rps": 6.0}}    # not job 0's point
    path = write(tmp_path, dict(EXP, outputs=timeline))
    monkeypatch.setattr(runner, "_work", functools.partial(_crash, "", runner._work))
    code = main(["run", path, "--out", str(tmp_path / "ray"), "--no-progress", "--backend", "ray"])
    assert code == 1                                      # as for a point failing to simulate
    frame = pd.read_csv(tmp_path / "ray" / "summary.csv")
    error = frame["error"].fillna("")
    assert error[0].startswith("Ray lost the task twice (WorkerCrashedError")
    assert (error[1:] == "").all() and frame["jct_mean_s"][1:].notna().all()
    assert "\n" not in error[0]
    assert "Ray lost the task twice" in capsys.readouterr().err


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.parametrize("how", ["flag", "env", "malformed"])
def test_a_bad_address_is_one_line(tmp_path, capsys, monkeypatch, how):
    monkeypatch.setattr(runner, "run_job", lambda *a, **k: pytest.fail("simulated a point"))
    address = f"127.0.0.1:{_free_port()}" if how != "malformed" else "http://head:8265"
    argv = ["run", write(tmp_path, EXP), "--out", str(tmp_path / "o"), "--no-progress",
            "--backend", "ray"]
    if how == "env":
        monkeypatch.setenv("RAY_ADDRESS", address)
    else:
        argv += ["--ray-address", address]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err, err
    key = "RAY_ADDRESS" if how == "env" else "--ray-address"
    assert err.startswith(f"parasim: error: argument: {key}: ")
    assert ("no Ray head answers at" in err) if how != "malformed" else "not a Ray address" in err
    assert not (tmp_path / "o" / "summary.csv").exists()


def test_a_node_with_other_code_simulates_nothing(tmp_path, local_ray, monkeypatch):
    """The driver's fingerprint differs from the workers': every job is recorded as failed."""
    monkeypatch.setattr("simulator.ray_backend.code_fingerprint", lambda: "0" * 64)
    path = write(tmp_path, dict(EXP, devices=2, strategies=["tp"]))
    assert main(["run", path, "--out", str(tmp_path / "o"), "--no-progress", "--backend",
                 "ray"]) == 1
    errors = pd.read_csv(tmp_path / "o" / "summary.csv")["error"].fillna("")
    assert errors.str.contains(r"runs other parasim code \(fingerprint").all(), errors
    assert not (tmp_path / "o" / ".cache").exists()          # a failed job is never cached


def _note(folder: str, real, args):
    """Run the job, leaving a file that says which process ran it and whether it spilled."""
    open(os.path.join(folder, f"{args[0].index}-{os.getpid()}-{args[2] is not None}"), "w").close()
    return real(args)


def test_full_op_traces_are_written_by_the_driver(tmp_path, local_ray, monkeypatch):
    """outputs.trace: full: the timeline point's jobs run here (their op rows go to OUT/ops)."""
    path = write(tmp_path, dict(EXP, outputs={"trace": "full"}))
    assert main(["run", path, "--out", str(tmp_path / "local"), "--no-progress"]) == 0
    notes = tmp_path / "notes"
    notes.mkdir()
    monkeypatch.setattr(runner, "_work", functools.partial(_note, str(notes), runner._work))
    assert main(["run", path, "--out", str(tmp_path / "ray"), "--no-progress",
                 "--backend", "ray"]) == 0
    ran = [name.split("-") for name in os.listdir(notes)]
    assert len(ran) == 6 and {spill for _, _, spill in ran} == {"True", "False"}
    assert all((pid == str(os.getpid())) == (spill == "True") for _, pid, spill in ran)
    ops = sorted(os.listdir(tmp_path / "ray" / "ops"))
    assert ops and ops == sorted(os.listdir(tmp_path / "local" / "ops"))
    for name in ("summary.csv", "trace.json"):
        assert (tmp_path / "ray" / name).read_bytes() == (tmp_path / "local" / name).read_bytes()
    for name in ops:                          # gzip headers hold the time they were written
        ray_rows, local_rows = (gzip.decompress((tmp_path / d / "ops" / name).read_bytes())
                                for d in ("ray", "local"))
        assert ray_rows == local_rows
