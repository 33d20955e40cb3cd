"""parasim calibrate / validate (simulator/calibrate): the closed loop on this machine's CPU."""
from __future__ import annotations

import os
import warnings
from pathlib import Path

import pandas as pd
import pytest

from simulator.cli import main

torch = pytest.importorskip("torch")
from simulator.calibrate.shapes import CI_GRID  # noqa: E402
from simulator.calibrate.validate import validate  # noqa: E402
from simulator.hardware import load_hardware  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
EXPERIMENT = REPO / "experiments" / "validation" / "validate-cpu.yaml"
TOLERANCE = 0.25


@pytest.fixture(scope="module")
def closed_loop(tmp_path_factory):
    out = tmp_path_factory.mktemp("validate")
    result = validate(str(EXPERIMENT), str(out), repeat=3, reps=3, grid=CI_GRID,
                      calibration_runs=2, log=lambda line: None)
    return out, result


def test_validate_writes_the_profile_the_csv_and_the_trace(closed_loop):
    out, result = closed_loop
    names = sorted(os.listdir(out))
    assert {"calibrated.yaml", "calibrated-inrun.yaml", "validation.csv",
            "validation_trace.json"} <= set(names)
    hw = load_hardware(str(out / "calibrated.yaml"))
    assert set(hw.measured_tables) >= {"gemm", "attention", "elementwise", "all_reduce",
                                       "all_gather", "send_recv"}
    for key, source in hw.sources.items():
        assert source.split(":")[0] in ("measured", "fitted", "assumed"), key
        if source.startswith(("measured", "fitted")):
            assert "parasim calibrate on" in source or "parasim calibrate from" in source
    frame = pd.read_csv(out / "validation.csv")
    assert list(frame["strategy"]) == ["tp", "pp[tp=1]", "iso", "liger"]
    for col in ("measured_jct_mean_s", "predicted_jct_mean_s", "jct_rel_error",
                "measured_throughput_rps", "predicted_throughput_rps", "throughput_rel_error",
                "measured_jct_noise", "measured_jct_sem", "measured_busy_compute_s",
                "predicted_busy_comm_s", "insample_jct_rel_error", "calibration_kernel_slowdown"):
        assert frame[col].notna().all(), col
    import json
    trace = json.loads((out / "validation_trace.json").read_text())
    procs = {e["args"]["name"] for e in trace["traceEvents"] if e.get("name") == "process_name"}
    assert "tp measured / device 0" in procs and "tp predicted / device 1" in procs


HARD_BOUND = 0.5          # however noisy the measured runs, never looser (docs/validation.md)
UNJUDGED_NOISE = 1.0      # measured runs of a strategy this far apart: no verdict on it


def bound(sem: float) -> float:
    """TOLERANCE widened by two standard errors of the measured mean (its ~95% interval): the
    same runs differ by up to 75% on the shared 2-core machine, so a sitting's measured mean is
    itself uncertain by that much over the square root of the runs; at most HARD_BOUND."""
    return min(HARD_BOUND, TOLERANCE + 2 * sem)


def why_not_judged(row) -> str | None:
    """Why a strategy's error says nothing about the simulator in this sitting, if it does not:
    its measured runs differ by more than UNJUDGED_NOISE of their mean (a disturbed stretch), or
    the calibration runs ran the very same kernels more than TOLERANCE faster or slower than the
    measured runs (steadiness.py: the machine itself changed speed by more than the tolerance
    between the runs predicted and the runs predicting them)."""
    if row.measured_jct_noise > UNJUDGED_NOISE:
        return f"measured runs {row.measured_jct_noise:.0%} apart"
    slowdown = getattr(row, "calibration_kernel_slowdown", float("nan"))
    if slowdown == slowdown and not 1 / (1 + TOLERANCE) <= slowdown <= 1 + TOLERANCE:
        return f"calibration runs ran the same kernels {slowdown:.2f}x as long"
    return None


def test_predicted_jct_within_tolerance_and_ranked_as_measured(closed_loop):
    """Every strategy within 25% of the measured mean JCT, widened by the measured mean's own
    uncertainty (`bound`), and every pair whose measured JCTs differ by more than the runs'
    spread ranked as measured; strategies `why_not_judged` names are left out of both."""
    _out, result = closed_loop
    frame = result.frame
    reasons = {r.strategy: why_not_judged(r) for r in frame.itertuples()}
    judged = frame[[reasons[s] is None for s in frame["strategy"]]]
    if judged.empty:
        pytest.skip("the machine was too unsteady to judge any strategy: " + "; ".join(
            f"{s}: {why}" for s, why in reasons.items()))
    if len(judged) < len(frame):
        warnings.warn("not judged: " + "; ".join(f"{s}: {why}" for s, why in reasons.items()
                                                 if why is not None))
    for row in judged.itertuples():
        assert abs(row.jct_rel_error) <= bound(row.measured_jct_sem), \
            (row.strategy, row.jct_rel_error, row.measured_jct_sem)
    noise = judged["measured_jct_noise"].max()
    meas = dict(zip(judged["strategy"], judged["measured_jct_mean_s"]))
    pred = dict(zip(judged["strategy"], judged["predicted_jct_mean_s"]))
    for a in meas:
        for b in meas:
            if meas[a] > meas[b] * (1 + noise):            # a clearly slower than b
                assert pred[a] > pred[b], (a, b, meas, pred)


@pytest.mark.xfail(strict=False, reason="not held: on the shared 2-core machine some strategy "
                   "misses a plain 25% in about one sitting in six (docs/validation.md, 'Errors "
                   "measured'); the held check widens it by the measured mean's uncertainty")
def test_every_strategy_within_plain_tolerance(closed_loop):
    _out, result = closed_loop
    errors = dict(zip(result.frame["strategy"], result.frame["jct_rel_error"]))
    assert all(abs(e) <= TOLERANCE for e in errors.values()), errors


IN_SAMPLE_TOLERANCE = 0.25


def test_each_measured_run_predicted_from_its_own_log_within_the_model_tolerance(closed_loop):
    """In-sample (simulator/calibrate/insample.py): each measured run predicted from its own op
    log, so how much two runs of the machine differ is out of it and what is left is the
    model's error. Its median over a strategy's runs within 25%, for the strategies judged
    above (docs/validation.md, "In-sample": 229 of 252 runs within 10% since runs no longer
    meet the garbage collector, but all three liger runs of one sitting +15..+29%); every run's
    error is in validation.csv."""
    _out, result = closed_loop
    for row in result.frame[result.frame["measured_jct_noise"] <= UNJUDGED_NOISE].itertuples():
        errors = sorted(float(e) for e in row.insample_jct_rel_errors.split())
        assert len(errors) == row.measured_runs
        assert row.insample_jct_rel_error == pytest.approx(errors[len(errors) // 2], abs=1e-4)
        assert abs(row.insample_jct_rel_error) <= IN_SAMPLE_TOLERANCE, \
            (row.strategy, row.insample_jct_rel_errors)


def test_bound_widens_with_the_measured_uncertainty_up_to_a_hard_limit():
    assert bound(0.0) == TOLERANCE
    assert bound(0.05) == pytest.approx(TOLERANCE + 0.1)
    assert bound(1.0) == HARD_BOUND


def test_a_strategy_is_not_judged_when_the_machine_was_not_steady():
    from types import SimpleNamespace as Row
    assert why_not_judged(Row(measured_jct_noise=0.4, calibration_kernel_slowdown=1.1)) is None
    assert why_not_judged(Row(measured_jct_noise=0.4, calibration_kernel_slowdown=0.85)) is None
    assert why_not_judged(Row(measured_jct_noise=0.4)) is None      # no calibration runs
    assert "apart" in why_not_judged(Row(measured_jct_noise=1.2, calibration_kernel_slowdown=1.0))
    assert "1.40x" in why_not_judged(Row(measured_jct_noise=0.1, calibration_kernel_slowdown=1.4))
    assert "0.70x" in why_not_judged(Row(measured_jct_noise=0.1, calibration_kernel_slowdown=0.7))


def test_calibrate_refuses_cuda_without_a_gpu(tmp_path, capsys):
    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    out = tmp_path / "p" / "prof.yaml"
    assert main(["calibrate", "--device", "cuda", "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "--device" in err and "no CUDA" in err
    assert not (tmp_path / "p").exists()


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_calibrate_cuda_path(tmp_path, capsys, monkeypatch):  # pragma: no cover - needs a GPU
    import simulator.calibrate.shapes as shapes
    monkeypatch.setattr(shapes, "Grid", lambda: CI_GRID)
    out = tmp_path / "p.yaml"
    assert main(["calibrate", "--device", "cuda", "--devices", "1", "--reps", "3",
                 "--out", str(out)]) == 0
    hw = load_hardware(str(out))
    assert hw.contention.model == "factor" and "gemm" in hw.measured_tables
    assert hw.device.name == torch.cuda.get_device_properties(0).name
    assert "two-stream contention" in capsys.readouterr().err


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_validate_cuda_one_gpu(tmp_path, capsys):             # pragma: no cover - needs a GPU
    exp = tmp_path / "one.yaml"
    exp.write_text(EXPERIMENT.read_text().replace("devices: 2", "devices: 1")
                   .replace("  - {name: pp, tp: 1}\n", ""))
    out = tmp_path / "out"
    assert main(["validate", str(exp), "--device", "cuda", "--repeat", "1",
                 "--calibration-runs", "1", "--out", str(out)]) == 0
    frame = pd.read_csv(out / "validation.csv")
    assert (frame["measured_jct_mean_s"] > 0).all() and (frame["predicted_jct_mean_s"] > 0).all()


def test_validate_refuses_a_model_that_does_not_fit(tmp_path, capsys):
    exp = tmp_path / "big.yaml"
    exp.write_text(EXPERIMENT.read_text().replace(
        "model: {preset: llama-2-7b, name: val-llama, layers: 2, hidden: 512, heads: 8, "
        "kv_heads: 8, ffn: 1376, vocab: 2000}", "model: llama-2-70b\nhardware_note: x")
        .replace("hardware_note: x\n", "").replace("hardware: a100-sxm4-80gb",
                                                   "hardware: h100-sxm5-80gb"))
    out = tmp_path / "out"
    assert main(["validate", str(exp), "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "torch" in err
    assert not out.exists()


def test_calibrate_cli_small(tmp_path, capsys, monkeypatch):
    """The command end to end (the default model, a CI-sized grid, one timed call per shape)."""
    import simulator.calibrate.shapes as shapes
    monkeypatch.setattr(shapes, "Grid", lambda: CI_GRID)
    out = tmp_path / "prof" / "cpu.yaml"
    assert main(["calibrate", "--device", "cpu", "--reps", "1", "--out", str(out)]) == 0
    hw = load_hardware(str(out))
    assert hw.max_devices == 2 and "gemm" in hw.measured_tables
    assert "calibrate: gemm:" in capsys.readouterr().err


def test_calibrate_refuses_a_model_too_big(tmp_path, capsys):
    out = tmp_path / "p" / "cpu.yaml"
    assert main(["calibrate", "--device", "cpu", "--model", "llama-2-70b", "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "--model" in err
    assert not (tmp_path / "p").exists()


# ------------------------------------------------------------------------ in-run calibration

def test_inrun_times_are_spans_and_transfers():
    from simulator.calibrate.inrun import measured_times
    from simulator.ops import Collective, Gemm, RaggedAttention, SendRecv
    g = Gemm(8, 64, 32, "fp32")
    ar = Collective("all_reduce", 1024.0, (0, 1))
    log = [(g, 0, 0, 1.0, 1.5, 1.5), (g, 1, 0, 2.0, 2.7, 2.7),
           (g, 0, 0, 3.0, 3.1, 3.1),
           (ar, 0, 0, 4.0, 4.9, 4.6), (ar, 1, 0, 4.5, 4.8, 4.6),        # joined at 4.6
           (SendRecv(64.0, 0, 1), 0, 0, 5.0, 5.2, 5.1),
           (RaggedAttention(2, 3, 4.0, 5, 2, 4, 4, 16, "fp32"), 0, 0, 6.0, 7.0, 7.0),
           (Gemm(8, 64, 32, "fp32", count=4), 0, 0, 8.0, 9.0, 9.0)]
    times = measured_times(log)
    assert sorted(times) == ["all_reduce", "gemm", "send_recv"]
    assert sorted(times["gemm"][("8", "64", "32", "fp32")]) == pytest.approx([0.1, 0.5, 0.7])
    # each member carries its group's transfer, to the first member's end (device 1 at 4.8);
    # device 0's 0.1 later is its lag (lags.py); a send/recv with one member logged keeps its own
    assert sorted(times["all_reduce"][("2", "1024")]) == pytest.approx([0.2, 0.2])
    assert times["send_recv"][("64",)] == pytest.approx([0.1])
    from simulator.calibrate.lags import member_lags
    assert sorted(member_lags(log)) == pytest.approx([0.0, 0.1])


def test_inrun_profile_takes_the_runs_means(closed_loop):
    out, result = closed_loop
    assert result.profile.endswith("calibrated-inrun.yaml")
    variants = sorted(p.name for p in out.glob("calibrated-inrun-host-*.yaml"))
    assert variants == ["calibrated-inrun-host-iso.yaml", "calibrated-inrun-host-liger.yaml",
                        "calibrated-inrun-host-pp_tp_1.yaml", "calibrated-inrun-host-tp.yaml"]
    host = {v: load_hardware(str(out / v)).launch_overhead_s for v in variants}
    assert all(h > load_hardware(str(out / "calibrated.yaml")).launch_overhead_s for h in
               host.values())                       # under load, above the idle micro-benchmark
    iso = load_hardware(str(out / "calibrated-inrun-host-iso.yaml"))
    own = pd.read_csv(out / "calibrated-iso-inrun-gemm.csv")     # iso's tables: its own runs
    assert own["source"].str.contains("calibration runs of iso alone").any()
    assert iso.measured_tables["gemm"].rows != load_hardware(result.profile).measured_tables["gemm"].rows
    assert "calibration runs of iso alone" in iso.sources["device.jitter.gemm"]
    micro, inrun = load_hardware(str(out / "calibrated.yaml")), load_hardware(result.profile)
    assert set(inrun.measured_tables) >= set(micro.measured_tables)
    frame = pd.read_csv(out / "calibrated-inrun-all_reduce.csv")
    runs = frame[frame["source"].str.startswith("measured: in-run")]
    bench = frame[~frame["source"].str.startswith("measured: in-run")]
    assert len(runs) >= 1 and len(bench) >= 1           # the runs' sizes, and the others kept
    assert (runs["samples"] >= 2).all()
    assert "kernel_s" not in frame and "dispatch_s" not in frame   # a stream's own time is apart:
    assert inrun.device.dispatch_s > micro.device.dispatch_s > 0    # device.dispatch_us
    for family in ("gemm", "attention"):
        f = pd.read_csv(out / f"calibrated-inrun-{family}.csv")
        assert f["source"].str.startswith("measured: in-run").any(), family
    v = pd.read_csv(out / "validation.csv")
    assert v["microbench_jct_mean_s"].notna().all() and v["microbench_jct_rel_error"].notna().all()
    liger = load_hardware(str(out / "calibrated-inrun-host-liger.yaml"))
    assert liger.wakeup_s > 0 and liger.callback_s > 0      # its loop blocks on events
    assert inrun.device.event_wait_s > 0                    # liger's sub stream waits on events
    assert "blocking wait" in liger.sources["host.wakeup_us"]
    assert micro.wakeup_s == 0 and micro.device.event_wait_s == 0


def test_measured_runs_plan_with_the_profile_they_are_predicted_with():
    """A host program that plans with profiled times (liger's fill budget) must see the same
    times on both runtimes: validate's measured runs take the calibrated profile too."""
    from simulator.calibrate.validate import plan_validation, with_hardware
    _plan, jobs = plan_validation(str(EXPERIMENT))
    job = with_hardware(jobs[0], "/x/calibrated-inrun.yaml")
    assert job.config["hardware"] == "/x/calibrated-inrun.yaml"
    assert jobs[0].config["hardware"] == "a100-sxm4-80gb"          # the original is untouched
    assert {k: v for k, v in job.config.items() if k != "hardware"} == \
        {k: v for k, v in jobs[0].config.items() if k != "hardware"}


@pytest.mark.parametrize("option", ["--calibration-runs", "--warm-up-s"])
def test_validate_refuses_negative_calibration_runs_or_warm_up(tmp_path, capsys, option):
    out = tmp_path / "out"
    assert main(["validate", str(EXPERIMENT), option, "-1", "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and option in err and ">= 0" in err
    assert not out.exists()
