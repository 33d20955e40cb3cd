"""`parasim validate`: each strategy of an experiment measured on TorchRuntime and predicted by the
simulator with a calibrated profile, on the same requests (the experiment's seed).

Writes OUT/validation.csv (one row per strategy: measured and predicted mean JCT and throughput,
their relative errors, the measured run-to-run noise, busy seconds per op class per device) and
OUT/validation_trace.json (Perfetto / chrome://tracing: for each strategy a "measured" and a
"predicted" process per device, side by side). Without a profile it first calibrates into
OUT/calibrated.yaml (the model's shapes plus every op a simulated run of the experiment costs).
"""
from __future__ import annotations

import json
import os
import statistics
from dataclasses import dataclass, replace
from types import SimpleNamespace

import pandas as pd

from simulator.errors import ConfigError
from simulator.io import write_csv, write_text
from simulator.jobs import TORCH_RUNTIMES, build
from simulator.outputs import OutputOptions, _ops_frame, chrome_trace
from simulator.runner import plan_run, run_job

CLASSES = ("compute", "memory", "comm")


@dataclass
class Validation:
    frame: pd.DataFrame
    files: list
    profile: str


def rel(pred: float, meas: float) -> float:
    return (pred - meas) / meas if meas else float("nan")


def busy_per_class(trace, devices: int) -> dict:
    """Seconds each op class kept a device busy (sum of op spans), averaged over devices."""
    out = {c: 0.0 for c in CLASSES}
    for r in trace.rows:
        out[r.op_class] = out.get(r.op_class, 0.0) + (r.end_s - r.start_s)
    return {c: v / max(1, devices) for c, v in out.items()}


def plan_validation(path: str, runtime: str = "torch"):
    """The experiment's feasible jobs on this machine (ConfigError, one line, if none fits);
    `runtime` "torch-cuda": on its GPUs."""
    plan = plan_run(path, runtime)
    jobs = plan.feasible
    if not jobs:                                        # pragma: no cover - plan_run raises
        raise ConfigError(path, "", "no point of the experiment can run on this machine")
    return plan, jobs


def calibrate_for(jobs, out_dir: str, reps: int, grid, log, runs: int = 1,
                  runtime: str = "torch") -> tuple:
    """Calibrate for the experiment: its model's shapes plus every op its simulated runs cost
    (micro-benchmarks), then, with `runs` > 0, in-run op times from `runs` TorchRuntime runs of
    each strategy on other requests (inrun.py). Returns (micro-benchmarked profile, the profile
    to predict with: the in-run one, or the same path with runs == 0, and label -> the in-run
    profile with that strategy's own host cost)."""
    from .profile import calibrate
    from .shapes import experiment_shapes, model_shapes
    builts = [build(j) for j in jobs]
    model, devices = builts[0].model, max(b.devices for b in builts)
    shapes = experiment_shapes(builts, model_shapes(model, devices, grid))
    log(f"calibrate: {shapes.sizes()} shapes for {model.name} on {devices} devices")
    path = os.path.join(out_dir, "calibrated.yaml")
    calibrate(model, devices, path, shapes, reps=reps, log=log,
              device_type=TORCH_RUNTIMES[runtime])
    if runs <= 0:
        return path, path, {}
    from .inrun import calibration_runs, jitter_ratios, measured_times, write_inrun_profile
    run_log, what = calibration_runs([with_hardware(j, os.path.abspath(path)) for j in jobs],
                                     runs, log, runtime)
    return (path, *write_inrun_profile(path, measured_times(run_log.ops), what, log,
                                     run_log.host, run_log.host_by_label,
                                     jitter_ratios(run_log.ops)))


def with_hardware(job, profile: str):
    """The job with the hardware profile at `profile` in place of its own. A measured run takes
    it too: a host program that plans with profiled times (liger's fill budget) must see the
    same times on both runtimes, or the two runs make different decisions."""
    return replace(job, config={**job.config, "hardware": profile})


def _predict(job, profile: str):
    """The job simulated with `profile` in place of its hardware (ConfigError if it cannot run)."""
    predicted = run_job(with_hardware(job, profile), keep_trace=True)
    if predicted.error:
        raise ConfigError(profile, "", f"{job.label}: the simulator cannot run it with this "
                          f"profile: {predicted.error}")
    return predicted


def validate(path: str, out_dir: str, profile: str | None = None, repeat: int = 2,
             reps: int = 5, grid=None, log=print, plan=None,
             calibration_runs: int = 2, runtime: str = "torch") -> Validation:
    """Measure and predict every feasible strategy of the experiment at `path` (module doc).
    `repeat`: measured runs per strategy (their spread is the noise); `calibration_runs`: in-run
    calibration runs per strategy when calibrating (0: micro-benchmarks only); `runtime`
    "torch-cuda": measure on this machine's GPUs."""
    from .shapes import Grid
    plan, jobs = plan or plan_validation(path, runtime)
    os.makedirs(out_dir, exist_ok=True)
    files = []
    microbench, per_strategy = None, {}
    if profile is None:
        microbench, profile, per_strategy = calibrate_for(jobs, out_dir, reps, grid or Grid(),
                                                          log, calibration_runs, runtime)
        files += sorted({microbench, profile, *per_strategy.values()})
        microbench = os.path.abspath(microbench) if microbench != profile else None
    profile = os.path.abspath(profile)
    rows, traced = [], []
    for job in jobs:
        own = os.path.abspath(per_strategy.get(job.label, profile))
        predicted = _predict(job, own)
        base = _predict(job, microbench) if microbench else None
        runs = []
        for i in range(repeat):      # the host program plans with the profile it is predicted with
            res = run_job(with_hardware(job, own), keep_trace=True, runtime=runtime)
            if res.error:
                raise ConfigError(path, job.strategy_key, f"the measured run failed: {res.error}")
            runs.append(res)
        jcts = [r.row["jct_mean_s"] for r in runs]
        thr = [r.row["throughput_rps"] for r in runs]
        meas_jct, meas_thr = statistics.mean(jcts), statistics.mean(thr)
        devices = job.config["devices"]
        mb = busy_per_class(runs[0].trace, devices)
        pb = busy_per_class(predicted.trace, devices)
        row = {"strategy": job.label, "measured_jct_mean_s": meas_jct,
               "predicted_jct_mean_s": predicted.row["jct_mean_s"],
               "jct_rel_error": rel(predicted.row["jct_mean_s"], meas_jct),
               "measured_jct_noise": (max(jcts) - min(jcts)) / meas_jct if meas_jct else 0.0,
               "measured_throughput_rps": meas_thr,
               "predicted_throughput_rps": predicted.row["throughput_rps"],
               "throughput_rel_error": rel(predicted.row["throughput_rps"], meas_thr),
               "measured_runs": repeat,
               "measured_jct_runs_s": " ".join(f"{j:.6g}" for j in jcts)}
        for c in CLASSES:
            row[f"measured_busy_{c}_s"] = mb[c]
            row[f"predicted_busy_{c}_s"] = pb[c]
        if base is not None:           # what the micro-benchmarks alone predicted
            row["microbench_jct_mean_s"] = base.row["jct_mean_s"]
            row["microbench_jct_rel_error"] = rel(base.row["jct_mean_s"], meas_jct)
        rows.append(row)
        log(f"validate: {job.label}: JCT measured {meas_jct * 1e3:.1f} ms "
            f"(runs {', '.join(f'{j * 1e3:.1f}' for j in jcts)}), predicted "
            f"{predicted.row['jct_mean_s'] * 1e3:.1f} ms ({row['jct_rel_error']:+.1%})")
        label = job.label
        traced.append((SimpleNamespace(label=f"{label} measured", point=job.point),
                       _ops_frame(runs[0].trace)))
        traced.append((SimpleNamespace(label=f"{label} predicted", point=job.point),
                       _ops_frame(predicted.trace)))
    frame = pd.DataFrame(rows)
    csv_path = os.path.join(out_dir, "validation.csv")
    write_csv(csv_path, frame)
    trace_path = os.path.join(out_dir, "validation_trace.json")
    doc = chrome_trace(traced, OutputOptions(trace_max_events=200_000))
    doc["otherData"]["profile"] = profile
    write_text(trace_path, json.dumps(doc, separators=(",", ":"), allow_nan=False))
    files += [csv_path, trace_path]
    return Validation(frame, files, profile)
