"""Worker processes die with the run that started them, and a killed run resumes from its cache."""
from __future__ import annotations

import glob
import os
import signal
import subprocess
import sys
import time

import pytest
import yaml

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
EXP = {
    "name": "killed",
    "model": {"preset": "llama-2-7b", "layers": 8},
    "hardware": "a100-sxm4-80gb",
    "devices": 2,
    "seed": 2,
    "strategies": ["tp"],
    "workload": {"requests": 80, "arrival": {"kind": "poisson",
                                              "rate_rps": [10.0, 20.0, 30.0, 40.0, 50.0, 60.0, 70.0, 80.0]},
                 "prompt_tokens": {"dist": "uniform", "low": 64, "high": 256}, "output_tokens": 8},
    "outputs": {"trace_max_events": 1000},
}

pytestmark = pytest.mark.skipif(not os.path.isdir("/proc/self"), reason="needs /proc (Linux)")


def children(pid: int) -> list[int]:
    """Process ids whose parent is `pid`, from /proc."""
    out = []
    for stat in glob.glob("/proc/[0-9]*/stat"):
        try:
            with open(stat) as fh:
                fields = fh.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == pid:
            out.append(int(stat.split("/")[2]))
    return out


def alive(pid: int) -> bool:
    """Running (a zombie waiting to be reaped counts as gone)."""
    try:
        with open(f"/proc/{pid}/stat") as fh:
            return fh.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def run(path: str, out: str, **kw) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "simulator.cli", "run", path, "--out", out,
                             "--jobs", "2", "--no-progress"], cwd=ROOT, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, **kw)


@pytest.mark.slow
def test_sigkilled_run_leaves_no_workers_and_resumes_from_cache(tmp_path):
    path = tmp_path / "killed.yaml"
    path.write_text(yaml.safe_dump(EXP))
    assert run(str(path), str(tmp_path / "whole")).wait(timeout=300) == 0
    out = tmp_path / "out"
    proc = run(str(path), str(out))
    workers: list[int] = []
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and proc.poll() is None:
        workers = sorted(set(workers) | set(children(proc.pid)))
        if len(workers) >= 2 and glob.glob(str(out / ".cache" / "*.pkl")):
            break
        time.sleep(0.05)
    assert proc.poll() is None, "the run finished before it could be killed"
    assert len(workers) >= 2
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=10)
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline and any(alive(w) for w in workers):
        time.sleep(0.05)
    survivors = [w for w in workers if alive(w)]
    for w in survivors:                 # do not leave them running if the assertion fails
        os.kill(w, signal.SIGKILL)
    assert not survivors, f"workers {survivors} outlived their parent"
    cached = len(glob.glob(str(out / ".cache" / "*.pkl")))
    assert 1 <= cached < 8
    assert not (out / "summary.csv").exists()
    assert run(str(path), str(out)).wait(timeout=300) == 0
    assert (out / "summary.csv").read_bytes() == (tmp_path / "whole" / "summary.csv").read_bytes()
