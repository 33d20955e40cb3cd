"""Execution modes (``execution: eager | graphs``) and AIConfigurator's tables named in a profile
or an experiment (``measured_tables: {aiconfigurator: ...}``)."""
from __future__ import annotations

import copy
import dataclasses
import os

import pandas as pd
import pytest
import yaml

from simulator import aiconfigurator as aic
from simulator.cli import main
from simulator.cost import CostModel
from simulator.errors import ConfigError
from simulator.hardware import load_hardware
from simulator.ops import Collective
from simulator.runner import run_experiment

BASE = {
    "name": "x",
    "model": {"preset": "llama-3-70b", "layers": 4},
    "hardware": "h100-sxm5-80gb",
    "devices": 8,
    "seed": 0,
    "strategies": [{"name": "tp", "label": "tp8"}],
    "workload": {"requests": 4, "batch": 1, "arrival": {"kind": "all_at_once"},
                 "prompt_tokens": 128, "output_tokens": 24},
}
needs_database = pytest.mark.skipif(not aic.available(), reason=f"needs {aic.INSTALL_HINT}")


def write(tmp_path, data, name="exp.yaml"):
    path = tmp_path / name
    path.write_text(yaml.safe_dump(data))
    return str(path)


def summary(tmp_path, data) -> pd.DataFrame:
    out = tmp_path / "out"
    run_experiment(write(tmp_path, data), str(out), progress=False)
    return pd.read_csv(out / "summary.csv")


def run_cli(args, capsys):
    code = main(args)
    captured = capsys.readouterr()
    return code, captured.out, captured.err


# ----------------------------------------------------------------------------------- the profile

def test_graphs_swaps_launch_kernel_and_collective_numbers():
    eager = load_hardware("h100-sxm5-80gb")
    graphs = eager.for_execution("graphs")
    assert graphs.execution == "graphs" and eager.execution == "eager"
    assert graphs.launch_overhead_s == eager.graphs.launch_overhead_s < eager.launch_overhead_s
    assert graphs.device.kernel_overhead_s == eager.graphs.kernel_overhead_s
    assert graphs.interconnect.collectives[8] == eager.graphs.collectives[8]
    assert graphs.interconnect.p2p == eager.interconnect.p2p           # sends are NCCL either way
    assert eager.for_execution("eager") is eager
    small = Collective("all_reduce", 16384.0, tuple(range(8)))       # one decode token of 8192 x bf16
    t_eager, t_graphs = CostModel(eager).seconds(small), CostModel(graphs).seconds(small)
    assert t_graphs < 0.5 * t_eager                                  # one-shot custom all-reduce
    large = Collective("all_reduce", 256.0 * 2**20, tuple(range(8)))
    assert CostModel(graphs).seconds(large) == pytest.approx(CostModel(eager).seconds(large), rel=0.25)


def test_graphs_on_a_profile_without_its_numbers_is_refused():
    with pytest.raises(ConfigError, match="rtx4090.*no numbers for graphs.*execution.graphs"):
        load_hardware("rtx4090").for_execution("graphs", "exp.yaml")
    with pytest.raises(ConfigError, match="must be one of eager, graphs"):
        load_hardware("h100-sxm5-80gb").for_execution("turbo", "exp.yaml")


def test_graphs_numbers_need_sources(tmp_path):
    data = yaml.safe_load(open(os.path.join(os.path.dirname(__file__), "..", "hwprofiles",
                                            "h100-sxm5-80gb.yaml")))
    data["execution"]["graphs"]["launch_overhead_us"] = 0.5
    path = tmp_path / "p.yaml"
    path.write_text(yaml.safe_dump(data))
    with pytest.raises(ConfigError) as exc:
        load_hardware(str(path))
    assert "execution.graphs.launch_overhead_us" in str(exc.value)


# ------------------------------------------------------------------------------- an experiment

def test_graphs_cut_tp8_decode_time(tmp_path):
    """Decode steps of 70B at TP 8 are short and all-reduce heavy: graphs (small host launch cost,
    custom all-reduce) cut TPOT and the exposed communication."""
    data = dict(BASE, execution=["eager", "graphs"])
    s = summary(tmp_path, data).set_index("execution")
    assert s.loc["graphs", "tpot_mean_s"] < 0.9 * s.loc["eager", "tpot_mean_s"]
    assert s.loc["graphs", "exposed_comm_s"] < s.loc["eager", "exposed_comm_s"]


def test_cli_refuses_graphs_without_numbers_in_one_line(tmp_path, capsys):
    data = dict(BASE, hardware="rtx4090", devices=2, execution="graphs",
                model={"preset": "llama-2-7b", "layers": 2})
    code, out, err = run_cli(["run", write(tmp_path, data), "--out", str(tmp_path / "o")], capsys)
    assert code == 2
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err
    assert "execution" in err and "rtx4090" in err and "eager" in err


def test_cli_refuses_an_unknown_execution(tmp_path, capsys):
    code, _, err = run_cli(["run", write(tmp_path, dict(BASE, execution="turbo")),
                            "--out", str(tmp_path / "o")], capsys)
    assert code == 2 and "execution" in err and "eager, graphs" in err
    assert len(err.strip().splitlines()) == 1


# ------------------------------------------------------------------------- database tables

@needs_database
def test_experiment_names_database_tables(tmp_path):
    (tmp_path / "a").mkdir()
    roof = summary(tmp_path / "a", BASE)
    named = dict(BASE, measured_tables={"aiconfigurator": {
        "system": "h100_sxm", "framework": "vllm", "version": "0.24.0",
        "families": ["gemm", "attention", "all_reduce"]}})
    (tmp_path / "b").mkdir()
    db = summary(tmp_path / "b", named)
    assert db["jct_mean_s"].iloc[0] != pytest.approx(roof["jct_mean_s"].iloc[0], rel=1e-6)
    # the refitted roofline lands near the measured tables it was fitted on
    assert db["jct_mean_s"].iloc[0] == pytest.approx(roof["jct_mean_s"].iloc[0], rel=0.25)


@needs_database
def test_profile_names_database_tables(tmp_path):
    from simulator.jobs import with_execution
    data = yaml.safe_load(open(os.path.join(os.path.dirname(__file__), "..", "hwprofiles",
                                            "h100-sxm5-80gb.yaml")))
    data["measured_tables"] = {"aiconfigurator": {"system": "h100_sxm", "families": ["gemm"]}}
    path = tmp_path / "p.yaml"
    path.write_text(yaml.safe_dump(data))
    hw = load_hardware(str(path))
    assert hw.database is not None and hw.measured_tables == {}
    run = with_execution(hw, {}, "exp.yaml")
    assert set(run.measured_tables) == {"gemm"}
    assert "gemm_perf.parquet" in run.measured_tables["gemm"].source


@needs_database
def test_bad_database_names_are_one_line_errors(tmp_path, capsys):
    bad = copy.deepcopy(BASE)
    bad["measured_tables"] = {"aiconfigurator": {"system": "h999"}}
    code, _, err = run_cli(["run", write(tmp_path, bad), "--out", str(tmp_path / "o")], capsys)
    assert code == 2 and "measured_tables" in err and "h999" in err and "h100_sxm" in err
    assert len(err.strip().splitlines()) == 1
    bad["measured_tables"] = {"aiconfigurator": {"system": "h100_sxm", "families": ["moe"]}}
    code, _, err = run_cli(["run", write(tmp_path, bad), "--out", str(tmp_path / "o")], capsys)
    assert code == 2 and "families[0]" in err and "'moe'" in err


def test_missing_package_is_a_one_line_error(tmp_path, capsys, monkeypatch):
    import importlib.util
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name == aic.PACKAGE else real(name, *a))
    data = dict(BASE, measured_tables={"aiconfigurator": {"system": "h100_sxm"}})
    aic._LOADED.clear()
    code, _, err = run_cli(["run", write(tmp_path, data), "--out", str(tmp_path / "o")], capsys)
    assert code == 2 and "aiconfigurator-core" in err and "pip install" in err
    assert len(err.strip().splitlines()) == 1


def test_database_spec_is_not_a_sweep(tmp_path):
    """`families` is a list of table names, not a sweep axis."""
    from simulator.experiment import load_experiment
    data = dict(BASE, measured_tables={"aiconfigurator": {"system": "h100_sxm",
                                                           "families": ["gemm", "attention"]}})
    jobs = load_experiment(write(tmp_path, data))
    assert len(jobs) == 1


def test_dataclass_replace_keeps_profile_fields():
    hw = load_hardware("a100-sxm4-80gb")
    assert dataclasses.replace(hw).graphs == hw.graphs


def test_cache_key_follows_the_database_version(tmp_path, monkeypatch):
    from simulator.experiment import load_experiment
    data = dict(BASE, measured_tables={"aiconfigurator": {"system": "h100_sxm"}})
    job = load_experiment(write(tmp_path, data))[0]
    plain = load_experiment(write(tmp_path, BASE, "plain.yaml"))[0]
    before, before_plain = job.cache_key(), plain.cache_key()
    monkeypatch.setattr(aic, "package_version", lambda: "99.0")
    monkeypatch.setattr(aic, "available", lambda: True)
    assert job.cache_key() != before
    assert plain.cache_key() == before_plain


def test_hardware_show_prints_the_new_numbers(capsys):
    assert main(["hardware", "show", "h100-sxm5-80gb"]) == 0
    out = capsys.readouterr().out
    assert "attention    0.578 of peak" in out and "floor 6.86 us" in out
    assert "fp8 GEMM     0.58 of the fp8 peak" in out
    assert "graphs       host 0.5 us per kernel" in out and "graphs       n=8:" in out
    assert main(["hardware", "show", "rtx4090"]) == 0
    out = capsys.readouterr().out
    assert "(plain roofline)" in out and "graphs" not in out.split("sources:")[0]
