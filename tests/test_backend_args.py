"""`--backend` and `--ray-address` as the command line checks them, with or without Ray installed:
one line and exit 2 before anything is validated, simulated or written."""
from __future__ import annotations

import sys

import pytest
import yaml

import simulator.runner as runner
from simulator.cli import main

EXP = {
    "name": "args", "model": {"preset": "llama-2-7b", "layers": 2}, "hardware": "a100-sxm4-80gb",
    "devices": 2, "strategies": ["tp"],
    "workload": {"requests": 2, "arrival": {"kind": "poisson", "rate_rps": 10.0},
                 "prompt_tokens": 32, "output_tokens": 2},
}
SEARCH = {**{k: v for k, v in EXP.items() if k != "workload"},
          "workload": {"requests": 2, "prompt_tokens": 32, "output_tokens": 2},
          "search": {"load": {"rate_rps": 1.0}, "slo": {"e2e_p90_s": 100.0}}}


def one_line_error(capsys, argv) -> str:
    code = main(argv)
    err = capsys.readouterr().err
    assert code == 2 and len(err.strip().splitlines()) == 1, err
    assert "Traceback" not in err
    return err


@pytest.mark.parametrize("command,spec", [("run", EXP), ("search", SEARCH)])
def test_backend_ray_without_ray_is_one_line(tmp_path, capsys, monkeypatch, command, spec):
    monkeypatch.setitem(sys.modules, "ray", None)          # import ray: ImportError
    monkeypatch.setattr(runner, "run_job", lambda *a, **k: pytest.fail("simulated a point"))
    path = tmp_path / "e.yaml"
    path.write_text(yaml.safe_dump(spec))
    out = tmp_path / "out"
    err = one_line_error(capsys, [command, str(path), "--out", str(out), "--backend", "ray"])
    assert err.strip() == ("parasim: error: argument: --backend ray needs Ray: "
                           "pip install -e '.[ray]'")
    assert not out.exists()


def test_ray_address_needs_the_ray_backend(tmp_path, capsys):
    path = tmp_path / "e.yaml"
    path.write_text(yaml.safe_dump(EXP))
    err = one_line_error(capsys, ["run", str(path), "--ray-address", "head:6379"])
    assert "--ray-address: needs --backend ray" in err


def test_torch_runtime_runs_locally_only(tmp_path, capsys):
    path = tmp_path / "e.yaml"
    path.write_text(yaml.safe_dump(EXP))
    err = one_line_error(capsys, ["run", str(path), "--backend", "ray", "--runtime", "torch"])
    assert "--runtime torch measures this machine" in err
