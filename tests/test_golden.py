"""Seeded golden results of whole experiments (DESIGN §6, third level).

Every shipped experiment, reduced to a few seconds (tests/golden/__init__.py, REDUCTIONS), runs
through the normal runner and must reproduce its stored summary and per-request rows: numbers to a
relative 1e-9 (float noise only), everything else exactly, no row missing and none extra. A
deliberate 3% change of one built-in profile number must make them fail.

Regenerate after an intended change: ``python -m tests.golden --update`` (see tests/golden/README.md).
"""
from __future__ import annotations

import os

import pytest
import yaml

import golden
from golden import (REDUCTIONS, Difference, ReductionError, compare, compare_rows, detects,
                    golden_paths, profile_data, reduced_config, report, run_reduced, shipped_names)
from simulator.experiment import load_experiment

NAMES = sorted(REDUCTIONS)


def test_every_shipped_experiment_has_a_golden():
    assert shipped_names() == NAMES, "add a reduction to REDUCTIONS for each new experiment"
    for name in NAMES:
        for path in golden_paths(name).values():
            assert path.is_file(), f"{path} missing: run `python -m tests.golden --update {name}`"


@pytest.mark.parametrize("name", NAMES)
def test_reduction_keeps_every_strategy_and_only_shipped_points(name, tmp_path):
    shipped = load_experiment(os.path.join(golden.EXPERIMENTS, f"{name}.yaml"))
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(reduced_config(name), sort_keys=False))
    reduced = load_experiment(str(path))
    assert {j.label for j in reduced} == {j.label for j in shipped}
    shipped_points = [j.point for j in shipped]
    for job in reduced:
        assert job.point in shipped_points, f"{job.point} is not a sweep point of {name}"


@pytest.mark.parametrize("name", NAMES)
def test_golden_results(name, tmp_path):
    diffs = compare(run_reduced(name, str(tmp_path)))
    if diffs:
        pytest.fail(report(name, diffs), pytrace=False)


# ------------------------------------------------------------------------------ the machinery

@pytest.mark.parametrize("key, value, message", [
    ("strategies", ["tp"], "may not be overridden"),
    ("seed", 1, "may not be overridden"),
    ("workload.arrival.rate_rps", [3.0], "subset of the shipped sweep"),
    ("workload.requests", 1000, "may only shrink"),
    ("workload.no_such_key", 1, "is not in experiments/quickstart.yaml"),
])
def test_reduction_rules_are_enforced(monkeypatch, key, value, message):
    monkeypatch.setitem(REDUCTIONS, "quickstart", {key: value})
    with pytest.raises(ReductionError, match=message):
        reduced_config("quickstart")


def test_comparison_names_row_column_and_change():
    keys = ["strategy", "rate"]
    old = [{"strategy": "tp", "rate": 2.0, "jct_s": 1.0, "error": ""},
           {"strategy": "pp", "rate": 2.0, "jct_s": 2.0, "error": ""}]
    new = [{"strategy": "tp", "rate": 2.0, "jct_s": 1.0 + 1e-12, "error": ""},   # float noise: equal
           {"strategy": "iso", "rate": 2.0, "jct_s": 2.0, "error": ""}]
    assert compare_rows("summary", old, old, keys) == []
    diffs = compare_rows("summary", old, new, keys)
    assert [(d.row, d.column) for d in diffs] == [("strategy=pp, rate=2.0", ""),
                                                  ("strategy=iso, rate=2.0", "")]
    new[0]["jct_s"] = 1.03
    new[0]["error"] = "boom"
    text = report("demo", compare_rows("summary", old, new, keys))
    assert "summary [strategy=tp, rate=2.0] jct_s: golden 1.0, now 1.03 (+3%)" in text
    assert "summary [strategy=tp, rate=2.0] error: golden '', now 'boom'" in text
    assert "row missing now" in text and "extra row now" in text
    many = [Difference("requests", f"request={i}", "x", 1.0, 2.0) for i in range(50)]
    assert len(report("demo", many).splitlines()) == 1 + golden.MAX_SHOWN + 1


def test_nan_equals_nan_and_integers_compare_exactly():
    keys = ["strategy"]
    assert compare_rows("t", [{"strategy": "tp", "v": float("nan"), "n": 3}],
                        [{"strategy": "tp", "v": float("nan"), "n": 3}], keys) == []
    assert compare_rows("t", [{"strategy": "tp", "v": float("nan")}],
                        [{"strategy": "tp", "v": 0.0}], keys) != []
    assert compare_rows("t", [{"strategy": "tp", "n": 3}], [{"strategy": "tp", "n": 4}], keys) != []


# ------------------------------------------------------------------------------ sensitivity

@pytest.mark.parametrize("name, profile", [("liger-artifact-2xv100", "v100-sxm2-32gb"),
                                           ("liger-4-devices", "a100-pcie-40gb")])   # a swept hardware
def test_an_unchanged_copy_of_a_profile_reproduces_the_golden(name, profile, tmp_path):
    """Control for the tests below: the copy-and-replace mechanism alone changes nothing."""
    copy = tmp_path / "profile" / f"{profile}.yaml"
    copy.parent.mkdir()
    copy.write_text(yaml.safe_dump(profile_data(profile), sort_keys=False))
    diffs = compare(run_reduced(name, str(tmp_path / "run"), {profile: str(copy)}))
    assert diffs == [], report(name, diffs)


# (golden experiment, built-in profile, number): the cheapest golden that sees each key number.
# `python -m tests.golden --coverage` checks every sourced number of every profile the goldens use.
KEY_NUMBERS = [
    ("quickstart", "a100-sxm4-80gb", ("device", "peak_tflops", "fp16")),
    ("quickstart", "a100-sxm4-80gb", ("device", "memory_bandwidth_gb_per_s")),
    ("quickstart", "a100-sxm4-80gb", ("device", "gemm_efficiency")),
    ("quickstart", "a100-sxm4-80gb", ("device", "attention_efficiency")),
    ("quickstart", "a100-sxm4-80gb", ("device", "kernel_overhead_us")),
    ("quickstart", "a100-sxm4-80gb", ("host", "launch_overhead_us")),
    ("tp-vs-pp-a100-pcie", "a100-pcie-40gb", ("interconnect", "collectives", 4, "busbw_gb_per_s")),
    ("tp-vs-pp-a100-pcie", "a100-pcie-40gb", ("interconnect", "p2p", "bandwidth_gb_per_s")),
    ("liger-artifact-2xv100", "v100-sxm2-32gb",
     ("interconnect", "collectives", 2, "regimes", 1, "busbw_gb_per_s")),
    ("liger-artifact-2xv100", "v100-sxm2-32gb", ("contention", "slowdown", "compute_by_comm")),
    ("liger-artifact-2xv100", "v100-sxm2-32gb", ("contention", "slowdown", "comm_by_compute")),
]
# Not in this list because no golden (and no shipped experiment) exercises them: the contention
# model's low_priority_share, compute_by_memory and memory_by_compute; see tests/golden/README.md.


@pytest.mark.parametrize("name, profile, path", KEY_NUMBERS,
                         ids=[f"{p}:{'.'.join(map(str, k))}" for _, p, k in KEY_NUMBERS])
def test_a_3_percent_profile_change_fails_the_golden(name, profile, path, tmp_path):
    diffs = detects(name, profile, path, 1.03, work_dir=str(tmp_path))
    assert diffs, f"a 3% change of {profile} {'.'.join(map(str, path))} leaves {name}'s golden as is"
    assert all(d.column for d in diffs), "the change should move values, not rows:\n" + report(name, diffs)
