"""`parasim validate`: each strategy of an experiment measured on TorchRuntime and predicted by the
simulator with a calibrated profile, on the same requests (the experiment's seed).

Writes OUT/validation.csv (one row per strategy: measured and predicted mean JCT and throughput,
their relative errors, the measured run-to-run noise, busy seconds per op class per device, and
the in-sample error: each measured run predicted from its own op log, insample.py; and how much
slower the calibration runs ran the same kernels than the measured runs, steadiness.py) and
OUT/validation_trace.json (Perfetto / chrome://tracing: for each strategy a "measured" and a
"predicted" process per device, side by side). Without a profile it first micro-benchmarks into
OUT/calibrated.yaml (the model's shapes plus every op a simulated run of the experiment costs),
then (after optional unmeasured warm-up rounds) takes the measured runs and the in-run
calibration runs interleaved (`measure`, `schedule`), all planning with that profile, and
predicts with the in-run profiles (inrun.py) while the simulated host program plans with that
same micro-benchmarked profile.
"""
from __future__ import annotations

import json
import os
import statistics
import time
from dataclasses import dataclass, field, replace
from types import SimpleNamespace

import pandas as pd

from simulator.errors import ConfigError
from simulator.io import write_csv, write_text
from simulator.hardware import load_hardware
from simulator.jobs import TORCH_RUNTIMES, build
from simulator.outputs import OutputOptions, _ops_frame, chrome_trace
from simulator.runner import plan_run, run_job

from .insample import in_sample_prediction

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


def calibrate_micro(jobs, out_dir: str, reps: int, grid, log, runtime: str = "torch") -> str:
    """Micro-benchmark this machine for the experiment (its model's shapes plus every op its
    simulated runs cost) into OUT/calibrated.yaml; returns that path."""
    from .profile import calibrate
    from .shapes import experiment_shapes, model_shapes
    builts = [build(j) for j in jobs]
    model, devices = builts[0].model, max(b.devices for b in builts)
    shapes = experiment_shapes(builts, model_shapes(model, devices, grid))
    log(f"calibrate: {shapes.sizes()} shapes for {model.name} on {devices} devices")
    path = os.path.join(out_dir, "calibrated.yaml")
    calibrate(model, devices, path, shapes, reps=reps, log=log,
              device_type=TORCH_RUNTIMES[runtime])
    return path


@dataclass
class Measured:
    """Every strategy's measured runs (label -> JobResults) and, where there were calibration
    runs, their RunLog and its description for the sources."""
    runs: dict
    run_log: object = None
    what: str = ""
    logs: dict = field(default_factory=dict)   # label -> each measured run's own RunLog


def schedule(repeat: int, calibration: int) -> list:
    """The order of a sitting's runs: "measured" `repeat` times and "calibration" `calibration`
    times, each kind spread evenly over the sitting (run i of n at (i + 0.5) / n of it; a tie
    goes to the measured run), so that both kinds' runs are centred on the same moment: for 3
    and 2, measured, calibration, measured, calibration, measured."""
    slots = [((i + 0.5) / repeat, 0, "measured") for i in range(repeat)]
    slots += [((i + 0.5) / calibration, 1, "calibration") for i in range(calibration)]
    return [kind for _, _, kind in sorted(slots)]


WARM_UP_S = 0.0         # unmeasured rounds of every strategy before a sitting's schedule: none


def measure(jobs, planner: str, repeat: int, calibration: int, log,
            runtime: str = "torch", warm_up_s: float = WARM_UP_S) -> Measured:
    """First, with `warm_up_s` > 0, unmeasured rounds (one run of every strategy each) until that
    many seconds have passed. A sitting's first runs were often its slowest on this machine
    (three sittings at 3 requests/s: tp 224, 218, 196 ms in the first round against 160-176 ms
    later), but after 45 s of warm-up rounds the first measured run was still the slowest of
    three in five of eight (two sittings, four strategies), and the warm-up did not move the
    closed loop's errors over twelve sittings (docs/validation.md, "Warm-up"), so by default
    there is none; a GPU's clocks are another matter (gpu_check.sh).
    Then `repeat` measured runs (the experiment's requests, each logged as calibration runs are:
    the same work, and its own log for the in-sample prediction) and `calibration` in-run
    calibration runs (other requests; inrun.py) of every strategy, all planning with the profile
    at `planner`, in the order `schedule` gives, every strategy at each step of it. A shared
    machine's speed drifts (here, +-20% over a minute, and by a third within a minute after a
    pause): runs taken in the same minutes see the same machine, where calibrating first and
    measuring after compared two different minutes; and with both kinds centred on the same
    moment, a steady drift favours neither."""
    from .inrun import calibration_run, describe_runs
    from simulator.torchrt.runtime import RunLog
    out = Measured({j.label: [] for j in jobs}, RunLog() if calibration > 0 else None)
    started = time.perf_counter()
    while time.perf_counter() - started < warm_up_s:
        for job in jobs:
            res = run_job(with_hardware(job, planner), keep_trace=False, runtime=runtime)
            if res.error:
                raise ConfigError(job.where, job.strategy_key,
                                  f"the warm-up run failed: {res.error}")
            log(f"validate: {job.label}: warm-up run, JCT {res.row['jct_mean_s'] * 1e3:.1f} ms "
                "(not measured)")
    calibrated = 0
    for kind in schedule(repeat, calibration):
        for job in jobs:
            if kind == "calibration":
                calibration_run(with_hardware(job, planner), calibrated, out.run_log, log,
                                runtime)
                continue
            own = RunLog()
            res = run_job(with_hardware(job, planner), keep_trace=True, runtime=runtime,
                          run_log=own)
            if res.error:
                raise ConfigError(job.where, job.strategy_key,
                                  f"the measured run failed: {res.error}")
            out.runs[job.label].append(res)
            out.logs.setdefault(job.label, []).append(own)
        calibrated += kind == "calibration"
    if calibration > 0:
        out.what = describe_runs(jobs, calibration)
    return out


def with_hardware(job, profile: str):
    """The job with the hardware profile at `profile` in place of its own."""
    return replace(job, config={**job.config, "hardware": profile})


def _predict(job, profile: str, planning=None):
    """The job simulated with `profile` in place of its hardware, its host program planning with
    the HardwareProfile `planning` where given (ConfigError if it cannot run). A host program
    that plans with profiled times (liger's fill budget, iso's chunks, pp's pacing) must see the
    same times as in the measured run, or the two runs make different decisions."""
    predicted = run_job(with_hardware(job, profile), keep_trace=True, planning=planning)
    if predicted.error:
        raise ConfigError(profile, "", f"{job.label}: the simulator cannot run it with this "
                          f"profile: {predicted.error}")
    return predicted


def validate(path: str, out_dir: str, profile: str | None = None, repeat: int = 2,
             reps: int = 5, grid=None, log=print, plan=None,
             calibration_runs: int = 2, runtime: str = "torch",
             warm_up_s: float = WARM_UP_S) -> Validation:
    """Measure and predict every feasible strategy of the experiment at `path` (module doc).
    `repeat`: measured runs per strategy (their spread is the noise); `calibration_runs`: in-run
    calibration runs per strategy when calibrating (0: micro-benchmarks only); `runtime`
    "torch-cuda": measure on this machine's GPUs; `warm_up_s`: unmeasured rounds of every
    strategy for this long before the measured and calibration runs (`measure`)."""
    from .shapes import Grid
    plan, jobs = plan or plan_validation(path, runtime)
    os.makedirs(out_dir, exist_ok=True)
    files = []
    microbench, per_strategy, by_label = None, {}, {}
    if profile is None:
        microbench = os.path.abspath(calibrate_micro(jobs, out_dir, reps, grid or Grid(), log,
                                                     runtime))
    planner = microbench or os.path.abspath(profile)
    measured = measure(jobs, planner, repeat, calibration_runs if profile is None else 0, log,
                       runtime, warm_up_s)
    if profile is None:
        profile = microbench
        if measured.run_log is not None:
            from .inrun import jitter_ratios, measured_times, write_inrun_profile
            from .lags import member_lags
            run_log = measured.run_log
            by_label = {j.label: [e for e in run_log.ops if e[-1].rsplit("#", 1)[0] == j.label]
                        for j in jobs}
            profile, per_strategy = write_inrun_profile(
                microbench, measured_times(run_log.ops), measured.what, log, run_log.host,
                run_log.host_by_label, jitter_ratios(run_log.ops), by_label,
                member_lags(run_log.ops))
        files += sorted({microbench, profile, *per_strategy.values()})
    profile = os.path.abspath(profile)
    planning = load_hardware(planner)
    own_base = planner if os.path.isfile(planner) else None
    rows, traced = [], []
    for job in jobs:
        own = os.path.abspath(per_strategy.get(job.label, profile))
        predicted = _predict(job, own, planning if own != planner else None)
        base = _predict(job, microbench) if microbench and own != microbench else None
        runs = measured.runs[job.label]
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
               "measured_jct_sem": statistics.stdev(jcts) / len(jcts) ** 0.5 / meas_jct
               if len(jcts) > 1 and meas_jct else 0.0,
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
        if by_label.get(job.label):    # how fast the machine ran the same kernels (steadiness.py)
            from .steadiness import kernel_slowdown
            mine = [e + (f"{job.label}#m{i}",) for i, own_log in enumerate(measured.logs[job.label])
                    for e in own_log.ops]
            slowdown = kernel_slowdown(by_label[job.label], mine)
            if slowdown is not None:
                row["calibration_kernel_slowdown"] = slowdown
        if own_base is not None:       # each measured run from its own log (insample.py);
            # the median: one run in a few is predicted far off from its own log
            errors = [rel(in_sample_prediction(job, run_log, own_base, planning), jct)
                      for run_log, jct in zip(measured.logs[job.label], jcts)]
            row["insample_jct_rel_error"] = statistics.median(errors)
            row["insample_jct_rel_errors"] = " ".join(f"{e:+.4f}" for e in errors)
        rows.append(row)
        log(f"validate: {job.label}: JCT measured {meas_jct * 1e3:.1f} ms "
            f"(runs {', '.join(f'{j * 1e3:.1f}' for j in jcts)}), predicted "
            f"{predicted.row['jct_mean_s'] * 1e3:.1f} ms ({row['jct_rel_error']:+.1%})"
            + (f"; each run from its own log: {row['insample_jct_rel_error']:+.1%} (median)"
               if "insample_jct_rel_error" in row else "")
            + (f"; the calibration runs ran its kernels {row['calibration_kernel_slowdown']:.2f}x "
               "as long as the measured runs" if "calibration_kernel_slowdown" in row else ""))
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
