"""Malformed input of every kind a user has sent: one line on stderr naming the file and the key,
exit status 2, no traceback, nothing written in the output folder. Every case fails at load time,
before any simulation, so the module runs in seconds."""
from __future__ import annotations

import copy
import json
import os
import subprocess
import sys
import time

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import strategies as strategy_registry
from simulator.cli import main
from simulator.errors import ConfigError
from simulator.experiment import TOP_KEYS, load_experiment
from simulator.runner import validate_jobs
from simulator.safe_yaml import MAX_DEPTH, parse_yaml
from tests.test_config_errors import _DELETE as DELETE
from tests.test_config_errors import GOOD, with_change      # the same minimal experiment and editor

GOOD_TEXT = yaml.safe_dump(GOOD, sort_keys=False)
HW_TEXT = open(os.path.join(os.path.dirname(__file__), "..", "hwprofiles", "a100-sxm4-80gb.yaml"),
               encoding="utf-8").read()
BOMB = "a: &a [x, x, x, x, x, x, x, x, x]\n" + "".join(
    f"{chr(98 + i)}: &{chr(98 + i)} [" + ", ".join([f"*{chr(97 + i)}"] * 9) + "]\n" for i in range(8))
HF = {"num_hidden_layers": 2, "hidden_size": 4096, "num_attention_heads": 32,
      "intermediate_size": 11008, "vocab_size": 32000, "model_type": "llama"}


def changed(*changes, base=GOOD) -> dict:
    """GOOD with (dotted.path, value) changes; value DELETE removes the key."""
    data = base
    for path, value in changes:
        data = with_change(path.split("."), value, base=data)
    return data


def put(folder, name: str, content) -> str:
    path = folder / name
    if isinstance(content, bytes):
        path.write_bytes(content)
    elif isinstance(content, str):
        path.write_text(content, encoding="utf-8")
    else:
        path.write_text(yaml.safe_dump(content, sort_keys=False), encoding="utf-8")
    return str(path)


def experiment(*changes, files=None, text=None):
    """A case that runs `parasim run` on GOOD with `changes` (or on `text`), beside `files`."""
    def setup(tmp):
        for name, content in (files or {}).items():
            put(tmp, name, content)
        return put(tmp, "exp.yaml", text if text is not None else changed(*changes))
    return setup


# id -> (setup(tmp) -> experiment path, file named in the line ("exp" = the experiment), key, words)
RUN_CASES = {
    # tracebacks before
    "strategy-name-int": (experiment(("strategies", [{"name": 2}])), "exp", "strategies[0].name",
                          "strategy name"),
    "strategy-name-list": (experiment(("strategies", [{"name": ["tp", "iso"]}])), "exp",
                           "strategies[0].name", "own entry"),
    "hardware-not-utf8": (experiment(("hardware", "hw.yaml"), files={"hw.yaml": b"name: \xff\xfe\n"}),
                          "exp", "hardware", "UTF-8"),
    "trace-not-utf8": (experiment(("workload.arrival", {"kind": "trace", "csv": "t.csv"}),
                                  ("workload.requests", DELETE),
                                  files={"t.csv": b"arrival_s,prompt_tokens,output_tokens\n0,\xff,1\n"}),
                       "exp", "workload.arrival.csv", "UTF-8"),
    "empirical-csv-not-utf8": (experiment(("workload.prompt_tokens", {"dist": "empirical", "csv": "l.csv",
                                                                      "column": "n"}),
                                          files={"l.csv": b"n\n\xe9\n"}),
                               "exp", "workload.prompt_tokens.csv", "UTF-8"),
    "trace-row-missing-field": (experiment(("workload.arrival", {"kind": "trace", "csv": "t.csv"}),
                                           ("workload.requests", DELETE),
                                           files={"t.csv": "arrival_s,prompt_tokens,output_tokens\n0,5\n"}),
                                "exp", "workload.arrival.csv", "row 2"),
    "trace-arrival-inf": (experiment(("workload.arrival", {"kind": "trace", "csv": "t.csv"}),
                                     ("workload.requests", DELETE),
                                     files={"t.csv": "arrival_s,prompt_tokens,output_tokens\ninf,5,1\n"}),
                          "exp", "workload.arrival.csv", "finite"),
    "rate-underflows": (experiment(("workload.arrival.rate_rps", 1e-300)), "exp",
                        "workload.arrival.rate_rps", "rate_rps >="),
    "name-escapes": (experiment(("name", "../../escaped")), "exp", "name", "allowed: letters"),
    "name-dotdot": (experiment(("name", "..")), "exp", "name", "allowed: letters"),
    "name-dot": (experiment(("name", ".")), "exp", "name", "allowed: letters"),
    "length-high-2**63": (experiment(("workload.prompt_tokens", {"dist": "uniform", "low": 1,
                                                                 "high": 2**63})),
                          "exp", "workload.prompt_tokens.high", "<= 10000000"),
    "requests-1e9": (experiment(("workload.requests", 10**9)), "exp", "workload.requests",
                     "<= 1000000"),
    "alias-bomb": (experiment(text=BOMB + GOOD_TEXT), "exp", "f", "aliases are expanded"),
    "deep-nesting": (experiment(text=GOOD_TEXT + "description: " + "[" * 5000 + "]" * 5000 + "\n"),
                     "exp", "description", f"at most {MAX_DEPTH} levels"),
    "alias-cycle": (experiment(text=GOOD_TEXT + "outputs: &o {x: *o}\n"), "exp", "outputs.x", "cycles"),
    # silently accepted before
    "duplicate-key": (experiment(text=GOOD_TEXT + "devices: 4\n"), "exp", "devices", "duplicate key"),
    "duplicate-nested-key": (experiment(text=GOOD_TEXT.replace("  requests: 3\n",
                                                               "  requests: 3\n  requests: 9\n")),
                             "exp", "workload.requests", "duplicate key"),
    "trace-arrival-nan": (experiment(("workload.arrival", {"kind": "trace", "csv": "t.csv"}),
                                     ("workload.requests", DELETE),
                                     files={"t.csv": "arrival_s,prompt_tokens,output_tokens\nnan,5,1\n"}),
                          "exp", "workload.arrival.csv", "finite"),
    "trace-shorter-than-requests": (experiment(("workload.arrival", {"kind": "trace", "csv": "t.csv"}),
                                               ("workload.requests", 5),
                                               files={"t.csv": "arrival_s,prompt_tokens,output_tokens\n"
                                                               "0,5,1\n1,5,1\n"}),
                                    "exp", "workload.requests", "only 2 rows"),
    "empirical-values-inf": (experiment(("workload.prompt_tokens", {"dist": "empirical",
                                                                    "values": [5, float("inf")]})),
                             "exp", "workload.prompt_tokens.values", "finite"),
    "empirical-values-nan": (experiment(("workload.prompt_tokens", {"dist": "empirical",
                                                                    "values": [float("nan")]})),
                             "exp", "workload.prompt_tokens.values", "finite"),
    "empirical-csv-inf": (experiment(("workload.prompt_tokens", {"dist": "empirical", "csv": "l.csv",
                                                                 "column": "n"}),
                                     files={"l.csv": "n\n5\ninf\n"}),
                          "exp", "workload.prompt_tokens.column", "finite"),
    "hf-kv-heads-zero": (experiment(("model", "hf.json"),
                                    files={"hf.json": json.dumps(HF | {"num_key_value_heads": 0})}),
                         "hf.json", "num_key_value_heads", "positive"),
    "hf-heads-not-multiple-of-kv": (experiment(("model", "hf.json"), files={
        "hf.json": json.dumps(HF | {"num_key_value_heads": 5})}),
        "hf.json", "num_key_value_heads", "multiple"),
    "model-heads-not-multiple-of-kv": (experiment(("model.kv_heads", 5)), "exp", "model", "multiple"),
    "fp8-on-a100": (experiment(("model.dtype", "fp8")), "exp", "model.dtype",
                    "needs FP8 tensor cores, which hardware 'a100-sxm4-80gb' lacks"),
    "fp8-kv-cache-on-a100": (experiment(("model.kv_dtype", "fp8")), "exp", "model.kv_dtype",
                             "leave kv_dtype out"),
    "kv-dtype-unknown": (experiment(("model.kv_dtype", "int8")), "exp", "model.kv_dtype", "fp8"),
    "hf-fp8-checkpoint-on-a100": (experiment(("model", "hf.json"), files={"hf.json": json.dumps(
        HF | {"quantization_config": {"quant_method": "fp8"}})}), "exp", "model",
        "dtype fp8 needs FP8 tensor cores"),
    # wrong before
    "multiple-of-above-high": (experiment(("workload.prompt_tokens", {"dist": "uniform", "low": 1,
                                                                      "high": 10, "multiple_of": 16})),
                               "exp", "workload.prompt_tokens.multiple_of", "no multiple of 16"),
    "fixed-not-a-multiple": (experiment(("workload.prompt_tokens", {"dist": "fixed", "value": 10,
                                                                    "multiple_of": 16})),
                             "exp", "workload.prompt_tokens.value", "no multiple of 16"),
    "unknown-strategy-param": (experiment(("strategies", [{"name": "pp", "stagse": 2}])), "exp",
                               "strategies[0].stagse", "did you mean 'stages'"),
    "description-list": (experiment(("description", ["a", "b"])), "exp", "description", "string"),
    "label-list": (experiment(("strategies", [{"name": "tp", "label": ["a", "b"]}])), "exp",
                   "strategies[0].label", "string"),
    "sweep-too-large": (experiment(("seed", list(range(200))), ("devices", [1, 2] * 30)), "exp", "devices",
                        "at most 10,000"),
    "empirical-csv-missing": (experiment(("workload.prompt_tokens", {"dist": "empirical",
                                                                     "csv": "none.csv", "column": "n"})),
                              "exp", "workload.prompt_tokens.csv", "experiment file's folder"),
    # handled before; kept handled
    "unknown-top-key": (experiment(("colour", "red")), "exp", "colour", "unknown key"),
    "unknown-workload-key": (experiment(("workload.rate", 3)), "exp", "workload.rate", "allowed here"),
    "wrong-type": (experiment(("devices", "four")), "exp", "devices", "expected an integer"),
    "missing-key": (experiment(("workload.requests", DELETE)), "exp", "workload.requests", "required"),
    "bool-for-int": (experiment(("seed", True)), "exp", "seed", "boolean"),
    "unknown-hardware": (experiment(("hardware", "a100-sxm9")), "exp", "hardware", "built-in"),
    "hardware-file-missing": (experiment(("hardware", "nope.yaml")), "exp", "hardware", "no such"),
    "hardware-bad-key": (experiment(("hardware", "hw.yaml"), files={"hw.yaml": HW_TEXT + "colour: red\n"}),
                         "hw.yaml", "colour", "unknown key"),
    "hardware-duplicate-key": (experiment(("hardware", "hw.yaml"),
                                          files={"hw.yaml": HW_TEXT + "name: again\n"}),
                               "hw.yaml", "name", "duplicate key"),
    "hardware-alias-bomb": (experiment(("hardware", "hw.yaml"), files={"hw.yaml": BOMB + HW_TEXT}),
                            "hw.yaml", "f", "aliases are expanded"),
    "unknown-model": (experiment(("model", "llama-9-1b")), "exp", "model", "choose one of"),
    "tp-does-not-divide-heads": (experiment(("devices", 3)), "exp", "strategies[0]", "degrees"),
    "model-does-not-fit": (experiment(("model", "llama-2-70b"), ("devices", 1)), "exp", "model", "GiB"),
    "unknown-arrival": (experiment(("workload.arrival.kind", "bursty")), "exp", "workload.arrival.kind",
                        "poisson"),
    "unknown-strategy": (experiment(("strategies", ["warp"])), "exp", "strategies[0].name", "available"),
    "experiment-not-yaml": (experiment(text="model: [unclosed\n"), "exp", "", "not valid YAML"),
    # serving workloads and metrics
    "all-at-once-with-rate": (experiment(("workload.arrival.kind", "all_at_once")), "exp",
                              "workload.arrival.rate_rps", "not of all_at_once"),
    "unknown-length-dataset": (experiment(("workload.lengths", {"dataset": "sharegpt"}),
                                          ("workload.prompt_tokens", DELETE),
                                          ("workload.output_tokens", DELETE)),
                               "exp", "workload.lengths.dataset", "available: azure-conv-2023"),
    "lengths-beside-prompt-tokens": (experiment(("workload.lengths", {"dataset": "azure-conv-2023"})),
                                     "exp", "workload.prompt_tokens", "cannot be given with lengths"),
    "unknown-dist-dataset": (experiment(("workload.prompt_tokens", {"dist": "dataset", "name": "x"})),
                             "exp", "workload.prompt_tokens.name", "available: azure-conv-2023"),
    "slo-negative": (experiment(("slo", {"ttft_s": -1})), "exp", "slo.ttft_s", "> 0"),
    "slo-nan": (experiment(("slo", {"tpot_s": float("nan")})), "exp", "slo.tpot_s", "finite"),
    "slo-unknown-key": (experiment(("slo", {"e2e_s": 1})), "exp", "slo.e2e_s", "allowed here"),
    "slo-empty": (experiment(("slo", {})), "exp", "slo", "give ttft_s, tpot_s or both"),
    "slo-not-mapping": (experiment(("slo", 0.5)), "exp", "slo", "expected a mapping"),
}
# written as bytes: the experiment file itself is not UTF-8
RUN_CASES["experiment-not-utf8"] = (lambda tmp: put(tmp, "exp.yaml", GOOD_TEXT.encode() + b"# \xff\n"),
                                    "exp", "", "UTF-8")


def assert_one_line(code: int, err: str, file: str, key: str, words: str) -> str:
    assert code == 2, err
    assert "Traceback" not in err
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    line = lines[0]
    assert line.startswith("parasim: error: "), line
    assert file in line, line
    if key:       # the key, or a path inside it (a nesting or alias limit names where it hit)
        assert f": {key}:" in line or f": {key}[" in line or f": {key}." in line, line
    assert words in line, line
    return line


def out_is_empty(out) -> bool:
    return not os.path.exists(out) or not os.listdir(out)


@pytest.mark.parametrize("case", list(RUN_CASES), ids=list(RUN_CASES))
def test_run_rejects_at_load_time(tmp_path, capsys, case):
    setup, file, key, words = RUN_CASES[case]
    path = setup(tmp_path)
    out = tmp_path / "out"
    start = time.perf_counter()
    code = main(["run", path, "--out", str(out), "--no-progress"])
    err = capsys.readouterr().err
    named = path if file == "exp" else os.path.join(str(tmp_path), file)
    assert_one_line(code, err, named, key, words)
    assert out_is_empty(out)
    assert time.perf_counter() - start < 10


def cli_case(argv, where, key, words, files=None):
    def setup(tmp):
        for name, content in (files or {}).items():
            put(tmp, name, content)
        return [a.replace("TMP", str(tmp)) for a in argv], where.replace("TMP", str(tmp))
    return setup, key, words


CLI_CASES = {
    "hardware-show-not-utf8": cli_case(["hardware", "show", "TMP/hw.yaml"], "TMP/hw.yaml", "", "UTF-8",
                                       files={"hw.yaml": b"name: \xff\n"}),
    "hardware-show-duplicate-key": cli_case(["hardware", "show", "TMP/hw.yaml"], "TMP/hw.yaml", "name",
                                            "duplicate", files={"hw.yaml": HW_TEXT + "name: x\n"}),
    "cost-hardware-not-utf8": cli_case(["cost", "--hardware", "TMP/hw.yaml", "gemm", "--m", "1", "--n",
                                        "1", "--k", "1"], "argument", "--hardware", "UTF-8",
                                       files={"hw.yaml": b"name: \xff\n"}),
    "cost-bytes-nan": cli_case(["cost", "--hardware", "a100-sxm4-80gb", "all-reduce", "--bytes", "nan",
                                "--devices", "2"], "argument", "--bytes", "finite"),
    "cost-bytes-inf": cli_case(["cost", "--hardware", "a100-sxm4-80gb", "elementwise", "--bytes", "inf"],
                               "argument", "--bytes", "finite"),
    "cost-bytes-negative": cli_case(["cost", "--hardware", "a100-sxm4-80gb", "send-recv", "--bytes",
                                     "-5"], "argument", "--bytes", ">= 0"),
    "compare-slo-inf": cli_case(["compare", "TMP", "--slo-s", "inf"], "argument", "--slo-s", "finite"),
    "compare-slo-nan": cli_case(["compare", "TMP", "--slo-s", "nan"], "argument", "--slo-s", "finite"),
    "compare-slo-zero": cli_case(["compare", "TMP", "--slo-s", "0"], "argument", "--slo-s", "> 0"),
    "compare-slo-negative": cli_case(["compare", "TMP", "--slo-s=-1"], "argument", "--slo-s", "> 0"),
}


@pytest.mark.parametrize("case", list(CLI_CASES), ids=list(CLI_CASES))
def test_cli_arguments_rejected(tmp_path, capsys, case):
    setup, key, words = CLI_CASES[case]
    argv, where = setup(tmp_path)
    code = main(argv)
    assert_one_line(code, capsys.readouterr().err, where, key, words)


@pytest.mark.parametrize("case", ["alias-bomb", "deep-nesting"])
def test_console_script_fails_fast(tmp_path, case):
    setup, _, key, words = RUN_CASES[case]
    path = setup(tmp_path)
    out = tmp_path / "out"
    proc = subprocess.run([sys.executable, "-m", "simulator.cli", "run", path, "--out", str(out)],
                          capture_output=True, text=True, timeout=60)
    assert_one_line(proc.returncode, proc.stderr, path, key, words)
    assert out_is_empty(out)


def test_paths_are_relative_to_the_experiment(tmp_path, monkeypatch):
    """Trace and empirical CSVs, like hardware files, are read from the experiment's folder, not
    from the working directory."""
    (tmp_path / "exp").mkdir()
    (tmp_path / "cwd").mkdir()
    put(tmp_path / "exp", "t.csv", "arrival_s,prompt_tokens,output_tokens\n0,8,1\n0.5,8,1\n")
    put(tmp_path / "exp", "l.csv", "n\n16\n")
    put(tmp_path / "exp", "hw.yaml", HW_TEXT)
    path = put(tmp_path / "exp", "e.yaml", changed(
        ("hardware", "hw.yaml"), ("workload.requests", DELETE),
        ("workload.arrival", {"kind": "trace", "csv": "t.csv"}),
        ("workload.output_tokens", {"dist": "empirical", "csv": "l.csv", "column": "n"})))
    monkeypatch.chdir(tmp_path / "cwd")
    jobs = load_experiment(path)
    assert validate_jobs(jobs) == [None]


# ---------------------------------------------------------------------------- property-based

def _real_keys() -> list:
    keys = set(TOP_KEYS) | {"requests", "batch", "arrival", "prompt_tokens", "output_tokens",
                            "warmup", "kind", "rate_rps", "csv", "clients", "think_s", "dist",
                            "value", "low", "high", "mean", "std", "values", "column", "multiple_of",
                            "preset", "layers", "hidden", "heads", "kv_heads", "ffn", "vocab",
                            "dtype", "kv_dtype", "head_dim", "gated_mlp", "label", "timeline_window_s",
                            "slo_s", "timeline_ops", "trace_max_events", "slo", "ttft_s", "tpot_s",
                            "lengths", "dataset", "max_prompt_tokens", "max_output_tokens"}
    for cls in strategy_registry.REGISTRY.values():
        keys |= set(cls.Params.__dataclass_fields__)
    return sorted(keys)


KEYS = st.sampled_from(_real_keys())
SCALARS = st.one_of(
    st.none(), st.booleans(), st.integers(-3, 300),
    st.sampled_from([0, -1, 2**31, 2**63, 10**9, 10**30, 1e-300, 1e300, float("inf"), float("-inf"),
                     float("nan"), 0.5, "", "..", "../x", "tp", "pp", "iso", "liger", "poisson",
                     "trace", "uniform", "empirical", "a100-sxm4-80gb", "llama-2-7b", "x.csv",
                     "x.yaml", "x.json", "fp16", "fp8", "balanced"]),
    st.floats(allow_nan=True, allow_infinity=True), st.text(max_size=8))
VALUES = st.recursive(SCALARS, lambda inner: st.one_of(
    st.lists(inner, max_size=3), st.dictionaries(KEYS, inner, max_size=4)), max_leaves=10)

def _shaped(required: dict, optional: list) -> st.SearchStrategy:
    """Mappings that look like the real one: its required keys, some optional keys, odd values."""
    return st.fixed_dictionaries(required, optional={k: SCALARS for k in optional})


STRATEGY_PARAMS = sorted({f for cls in strategy_registry.REGISTRY.values()
                          for f in cls.Params.__dataclass_fields__})
_STRATEGY_MAPPING = st.fixed_dictionaries(
    {"name": st.one_of(st.sampled_from(strategy_registry.names()), VALUES)},
    optional={k: st.one_of(SCALARS, st.lists(SCALARS, max_size=3)) for k in ["label"] + STRATEGY_PARAMS})
STRATEGY_ENTRY = st.one_of(st.sampled_from(strategy_registry.names()), SCALARS, _STRATEGY_MAPPING,
                           _STRATEGY_MAPPING)
LENGTH = st.one_of(SCALARS, _shaped({"dist": st.sampled_from(["fixed", "uniform", "normal", "lognormal",
                                                               "empirical", "dataset", "zipf"])},
                                    ["value", "low", "high", "mean", "std", "multiple_of", "csv", "name",
                                     "column"]),
                   st.fixed_dictionaries({"dist": st.just("empirical"), "values": st.lists(SCALARS)}))
# a path of GOOD and what to put there
MUTATIONS = st.one_of(
    st.tuples(st.sampled_from(["name", "description", "model", "hardware", "devices", "seed",
                               "workload", "outputs", "workload.requests", "workload.batch",
                               "workload.warmup", "model.layers", "model.kv_heads"]), VALUES),
    st.tuples(st.just("strategies"), st.one_of(SCALARS, st.lists(STRATEGY_ENTRY, max_size=3))),
    st.tuples(st.just("strategies"), st.lists(STRATEGY_ENTRY, min_size=1, max_size=2)),
    st.tuples(st.sampled_from(["workload.prompt_tokens", "workload.output_tokens"]), LENGTH),
    st.tuples(st.just("workload.arrival"), _shaped(
        {"kind": st.sampled_from(["all_at_once", "fixed_rate", "poisson", "trace", "closed_loop",
                                  "bursty"])}, ["rate_rps", "csv", "clients", "think_s"])),
    st.tuples(st.just("model"), _shaped({"preset": st.sampled_from(["llama-2-7b", "opt-30b", "x"])},
                                        ["layers", "hidden", "heads", "kv_heads", "ffn", "vocab",
                                         "dtype", "kv_dtype", "head_dim", "gated_mlp", "name"])),
    st.tuples(st.just("outputs"), _shaped({}, ["timeline_window_s", "slo_s", "timeline_ops",
                                               "trace_max_events", "colour"])),
    st.tuples(st.just("slo"), st.one_of(SCALARS, _shaped({}, ["ttft_s", "tpot_s", "jct_s"]))),
    st.tuples(st.just("workload.lengths"), st.one_of(SCALARS, _shaped(
        {"dataset": st.one_of(st.sampled_from(["azure-conv-2023", "azure-code-2023"]), SCALARS)},
        ["max_prompt_tokens", "max_output_tokens", "low"]))))


def check_loads_or_config_error(path: str) -> None:
    from simulator.outputs import validate_outputs
    try:
        jobs = load_experiment(path)
        validate_outputs(path)
        if len(jobs) <= 4:
            validate_jobs(jobs)
    except ConfigError as exc:          # PointError is a ConfigError too
        line = exc.line()
        assert "\n" not in line and line.startswith(exc.where)


SETTINGS = dict(deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])


@settings(max_examples=300, **SETTINGS)
@given(st.lists(MUTATIONS, min_size=1, max_size=3))
def test_mutated_experiments_raise_only_config_errors(tmp_path, mutations):
    """GOOD with odd values at real paths (shaped like the real mappings): loading and validating
    raise nothing but ConfigError."""
    data = copy.deepcopy(GOOD)
    for dotted, value in mutations:
        node, keys = data, dotted.split(".")
        for k in keys[:-1]:
            node = node.get(k) if isinstance(node, dict) else None
        if isinstance(node, dict):
            node[keys[-1]] = value
    check_loads_or_config_error(put(tmp_path, "fuzz.yaml", yaml.safe_dump(data)))


@settings(max_examples=100, **SETTINGS)
@given(st.one_of(st.dictionaries(KEYS, VALUES, max_size=8), VALUES))
def test_random_structures_raise_only_config_errors(tmp_path, data):
    """Random nested structures over the real key set raise nothing but ConfigError."""
    check_loads_or_config_error(put(tmp_path, "fuzz.yaml", yaml.safe_dump(data)))


@settings(max_examples=200, deadline=None)
@given(st.lists(st.sampled_from(list("ab:- \n[]{},&*!'\"#|>?<.0\t") + [
    "*a", "&a ", "*b", "&b ", "<<: ", "!!binary ", "!!python/object ", "!!set ", "? ", "\xff", "\x00"]),
    max_size=40).map("".join))
def test_random_yaml_text_raises_only_config_errors(text):
    """The loader turns any text (anchors, merges, tags, bad bytes) into data or a ConfigError."""
    try:
        parse_yaml(text.encode(), "f.yaml")
    except ConfigError as exc:
        assert "\n" not in exc.line()
