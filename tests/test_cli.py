"""The command line: cost queries with JSON, hardware and model listings, a small run."""
from __future__ import annotations

import json

import pandas as pd
import yaml

from simulator.cli import main
from simulator.hardware import builtin_names


def run(args, capsys):
    code = main(args)
    out = capsys.readouterr()
    return code, out.out, out.err


def test_cost_gemm_json(capsys):
    code, out, _ = run(["cost", "--hardware", "a100-sxm4-80gb", "--json", "gemm", "--m", "4096",
                        "--n", "8192", "--k", "8192", "--dtype", "fp16"], capsys)
    assert code == 0
    d = json.loads(out)
    assert d["bound"] == "compute"
    flops = 2 * 4096 * 8192 * 8192
    assert flops / 312e12 < d["seconds"] < flops / 312e12 / 0.5      # between peak and half of it


def test_cost_all_reduce_json_scales_with_bytes(capsys):
    args = ["cost", "--hardware", "a100-sxm4-80gb", "--json", "all-reduce", "--devices", "4", "--bytes"]
    _, small, _ = run(args + ["1024"], capsys)
    _, big, _ = run(args + ["268435456"], capsys)
    s, b = json.loads(small), json.loads(big)
    assert s["bound"] == "latency" and b["bound"] == "bandwidth"
    assert b["seconds"] > 50 * s["seconds"]


def test_hardware_list_and_show(capsys):
    code, out, _ = run(["hardware", "list"], capsys)
    assert code == 0
    for name in ("v100-sxm2-32gb", "a100-sxm4-80gb", "a100-pcie-40gb", "a800-sxm4-80gb",
                 "h100-sxm5-80gb", "rtx4090"):
        assert name in builtin_names() and name in out
    code, out, _ = run(["hardware", "show", "rtx4090"], capsys)
    assert code == 0 and "pcie_host" in out and "datasheet:" in out


def test_hardware_show_accepts_a_path(tmp_path, capsys):
    from importlib import resources
    text = resources.files("hwprofiles").joinpath("a100-sxm4-80gb.yaml").read_text()
    data = yaml.safe_load(text)
    data["name"] = "my-box"
    p = tmp_path / "my-box.yaml"
    p.write_text(yaml.safe_dump(data))
    code, out, _ = run(["hardware", "show", str(p)], capsys)
    assert code == 0 and out.startswith("my-box")
    del data["device"]["sms"]["source"]
    p.write_text(yaml.safe_dump(data))
    code, _, err = run(["hardware", "show", str(p)], capsys)
    assert code == 2 and "device.sms.source" in err


def test_models_list(capsys):
    code, out, _ = run(["models", "list"], capsys)
    assert code == 0 and "glm-130b" in out and "llama-3-70b" in out


def test_run_writes_summary(tmp_path, capsys):
    exp = {"model": {"preset": "llama-2-7b", "layers": 2}, "hardware": "h100-sxm5-80gb", "devices": 2,
           "strategies": ["tp"], "workload": {"requests": 4, "prompt_tokens": 128}}
    p = tmp_path / "e.yaml"
    p.write_text(yaml.safe_dump(exp))
    code, out, _ = run(["run", str(p), "--out", str(tmp_path / "o"), "--no-progress"], capsys)
    assert code == 0 and "jct_mean_ms" in out
    s = pd.read_csv(tmp_path / "o" / "summary.csv")
    assert s.loc[0, "experiment"] == "e" and s.loc[0, "requests"] == 4
