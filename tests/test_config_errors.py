"""Bad input: one clear line naming the file, the key and what is allowed; non-zero exit; no traceback."""
from __future__ import annotations

import os
import subprocess
import sys

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from simulator.cli import main
from simulator.errors import ConfigError
from simulator.experiment import load_experiment
from simulator.runner import build, validate_jobs

GOOD = {
    "name": "t",
    "model": {"preset": "llama-2-7b", "layers": 2},
    "hardware": "a100-sxm4-80gb",
    "devices": 2,
    "seed": 0,
    "strategies": ["tp"],
    "workload": {"requests": 3, "arrival": {"kind": "poisson", "rate_rps": 5.0},
                 "prompt_tokens": 64, "output_tokens": 2},
}


def write(tmp_path, data, name="exp.yaml"):
    path = tmp_path / name
    path.write_text(yaml.safe_dump(data) if not isinstance(data, str) else data)
    return str(path)


def run_cli(args, capsys):
    code = main(args)
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def with_change(path_keys, value, base=GOOD):
    import copy
    data = copy.deepcopy(base)
    node = data
    for k in path_keys[:-1]:
        node = node[k]
    if value is _DELETE:
        del node[path_keys[-1]]
    else:
        node[path_keys[-1]] = value
    return data


_DELETE = object()

CASES = [
    # (description, path, value, key expected in message, words expected)
    ("unknown top-level key", ["colour"], "red", "colour", "unknown key"),
    ("unknown workload key", ["workload", "rate"], 3, "workload.rate", "allowed here"),
    ("wrong type devices", ["devices"], "four", "devices", "expected an integer"),
    ("devices above profile max", ["devices"], 64, "devices", "<= 8"),
    ("missing model", ["model"], _DELETE, "model", "required"),
    ("missing workload requests", ["workload", "requests"], _DELETE, "workload.requests", "required"),
    ("unknown arrival kind", ["workload", "arrival", "kind"], "bursty", "workload.arrival.kind",
     "poisson"),
    ("negative rate", ["workload", "arrival", "rate_rps"], -1.0, "workload.arrival.rate_rps", "> 0"),
    ("unknown profile", ["hardware"], "a100-sxm9", "hardware", "unknown hardware profile"),
    ("unknown model preset", ["model"], "llama-9-1b", "model", "llama-2-7b"),
    ("tp does not divide heads", ["devices"], 3, "strategies[0]", "degrees that work"),
    ("unknown strategy", ["strategies"], ["warp"], "strategies[0].name", "available: "),
    ("unknown strategy param", ["strategies"], [{"name": "tp", "speed": 2}], "strategies[0].speed",
     "unknown key"),
    ("bool where int", ["seed"], True, "seed", "boolean"),
    ("fp8 on a GPU without FP8", ["model", "dtype"], "fp8", "model.dtype", "FP8 tensor cores"),
    ("unknown kv_dtype", ["model", "kv_dtype"], "e4m3", "model.kv_dtype", "fp8"),
    ("warmup too large", ["workload", "warmup"], 3, "workload.warmup", "less than requests"),
    ("bad distribution", ["workload", "prompt_tokens"], {"dist": "zipf"}, "workload.prompt_tokens.dist",
     "uniform"),
]


@pytest.mark.parametrize("desc,path,value,key,words", CASES, ids=[c[0] for c in CASES])
def test_bad_input_is_one_clear_line(tmp_path, capsys, desc, path, value, key, words):
    f = write(tmp_path, with_change(path, value))
    code, out, err = run_cli(["run", f, "--out", str(tmp_path / "out"), "--no-progress"], capsys)
    assert code == 2, (desc, out, err)
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("parasim: error: ")
    assert "Traceback" not in err
    if key:
        assert f": {key}:" in lines[0], lines[0]
    assert words in lines[0], lines[0]
    assert str(f) in lines[0] or "hardware" in lines[0]
    assert not os.path.exists(tmp_path / "out" / "summary.csv")


def test_model_that_does_not_fit(tmp_path, capsys):
    data = with_change(["model"], "llama-2-70b")
    data = with_change(["devices"], 1, data)
    f = write(tmp_path, data)
    code, _, err = run_cli(["run", f, "--out", str(tmp_path / "o"), "--no-progress"], capsys)
    assert code == 2
    assert ": model:" in err and "GiB" in err and "device has" in err


def test_not_yaml(tmp_path, capsys):
    f = write(tmp_path, "model: [unclosed\n")
    code, _, err = run_cli(["run", f], capsys)
    assert code == 2 and "not valid YAML" in err and len(err.strip().splitlines()) == 1


def test_missing_file(tmp_path, capsys):
    code, _, err = run_cli(["run", str(tmp_path / "nope.yaml")], capsys)
    assert code == 2 and "no such experiment file" in err


def test_bad_cli_arguments(capsys):
    code, _, err = run_cli(["cost", "--hardware", "a100-sxm4-80gb", "gemm", "--m", "0", "--n", "1",
                            "--k", "1"], capsys)
    assert code == 2 and "--m" in err
    code, _, err = run_cli(["frobnicate"], capsys)
    assert code == 2 and len(err.strip().splitlines()) == 1


def test_sweep_with_some_invalid_points_runs_the_rest(tmp_path):
    from simulator.runner import run_experiment
    data = with_change(["devices"], [2, 3])     # tp=3 does not divide 32 heads
    f = write(tmp_path, data)
    summary = run_experiment(f, str(tmp_path / "o"), progress=False, quiet=True)
    assert list(summary["devices"]) == [2, 3]
    assert summary["error"].iloc[0] == ""
    assert "degrees that work" in summary["error"].iloc[1]
    assert summary["jct_mean_s"].iloc[0] > 0


def test_console_script_exits_nonzero_without_traceback(tmp_path):
    f = write(tmp_path, with_change(["devices"], "x"))
    proc = subprocess.run([sys.executable, "-m", "simulator.cli", "run", f], capture_output=True,
                          text=True)
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr and ": devices:" in proc.stderr


# ---------------------------------------------------------------------------- property-based

scalars = st.one_of(st.none(), st.booleans(), st.integers(-10, 10**6), st.floats(allow_nan=True),
                    st.text(max_size=12))
values = st.recursive(scalars, lambda inner: st.one_of(
    st.lists(inner, max_size=3),
    st.dictionaries(st.sampled_from(["name", "kind", "dist", "rate_rps", "low", "high", "preset",
                                     "layers", "value", "x"]), inner, max_size=3)), max_leaves=8)
keys = st.sampled_from(["name", "model", "hardware", "devices", "seed", "strategies", "workload",
                        "outputs", "bogus"])


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.dictionaries(keys, values, max_size=7) | values)
def test_random_yaml_only_raises_config_error(tmp_path, data):
    f = write(tmp_path, yaml.safe_dump(data), "random.yaml")
    try:
        jobs = load_experiment(f)
        if len(jobs) <= 4:
            validate_jobs(jobs)
    except ConfigError as exc:
        line = exc.line()
        assert "\n" not in line and line.startswith(f)


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.sampled_from([("devices",), ("seed",), ("workload", "requests"), ("workload", "batch"),
                        ("workload", "prompt_tokens"), ("workload", "output_tokens"),
                        ("workload", "arrival", "rate_rps"), ("model", "layers"), ("hardware",)]),
       values)
def test_random_values_in_a_good_file_only_raise_config_error(tmp_path, path, value):
    data = with_change(list(path), value)
    f = write(tmp_path, yaml.safe_dump(data), "mut.yaml")
    try:
        jobs = load_experiment(f)
        if len(jobs) <= 4:
            for job in jobs:
                try:
                    build(job)
                except ConfigError:
                    pass
            validate_jobs(jobs)
    except ConfigError as exc:
        assert "\n" not in exc.line()
