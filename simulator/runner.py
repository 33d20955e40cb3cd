"""The experiment runner: the composition root that builds descriptions, strategies and runtimes.

Jobs (sweep points x strategies) are validated up front in this process, then run serially or in
worker processes; every finished job is cached under ``OUT/.cache`` by the hash of its
configuration, so a re-run (or a run interrupted and started again) skips what is done. Results do
not depend on the number of workers: each job is a pure function of its configuration and seed.
A job that fails while simulating is recorded with its error and the others go on.
"""
from __future__ import annotations

import os
import pickle
import sys
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass
from multiprocessing import get_context
from typing import Any, Optional

import numpy as np
import pandas as pd

import strategies as strategy_registry
from strategies.base import Strategy

from .engine import SimRuntime
from .errors import ConfigError, PointError, SimulationError
from .experiment import Job, load_experiment
from .hardware import HardwareProfile, load_hardware
from .io import atomic_path, write_csv
from .metrics import request_metrics, summarize
from .model import ModelSpec, check_fits, load_model
from .progress import Progress
from .schema import check_value
from .trace import KEEP_ALL, Trace
from .workload import Workload, parse_workload

SUMMARY_COLUMNS = ["experiment", "strategy", "model", "hardware", "devices", "requests",
                   "jct_mean_s", "jct_p50_s", "jct_p90_s", "jct_p99_s", "throughput_rps"]


@dataclass
class Built:
    model: ModelSpec
    hardware: HardwareProfile
    devices: int
    workload: Workload
    strategy: Strategy
    seed: int


def build(job: Job) -> Built:
    """Turn one job's plain configuration into validated objects (ConfigError on bad input)."""
    where, cfg = job.where, job.config
    hardware = load_hardware(_resolve(cfg["hardware"], job.base_dir), where=where, key="hardware")
    model_spec = cfg["model"]
    if isinstance(model_spec, str) and (model_spec.endswith(".json") or os.sep in model_spec):
        model_spec = _resolve(model_spec, job.base_dir)
    model = load_model(model_spec, where, "model")
    if model.dtype not in hardware.device.peak_flops:
        raise PointError(where, "model", f"model {model.name} computes in {model.dtype} but profile "
                         f"{hardware.name} has rates only for " + ", ".join(hardware.device.peak_flops)
                         + "; set the model's dtype, e.g. {preset: NAME, dtype: fp16}")
    devices = check_value(cfg["devices"], int, where, "devices", min=1, max=hardware.max_devices)
    seed = check_value(cfg.get("seed", 0), int, where, "seed", min=0)
    workload = parse_workload(cfg["workload"], where, "workload", base_dir=job.base_dir)
    strategy = make_strategy(job.strategy, model, devices, where, job.strategy_key)
    tp, pp = strategy.parallel_layout()
    batch = workload.batch * strategy.resident_requests()
    context = _max_context(workload, seed)
    try:
        check_fits(model, hardware.device.memory_bytes, tp, pp, batch, context, where, "model",
                   split=strategy.stage_layers())
    except ConfigError as exc:
        raise PointError(exc.where, exc.key, exc.message) from None
    return Built(model, hardware, devices, workload, strategy, seed)


def make_strategy(spec: dict, model: ModelSpec, devices: int, where: str, key: str) -> Strategy:
    name = spec.get("name")
    if name not in strategy_registry.REGISTRY:
        raise ConfigError(where, f"{key}.name", f"unknown strategy {name!r}; available: "
                          + ", ".join(strategy_registry.names()))
    cls = strategy_registry.REGISTRY[name]
    params = cls.Params.parse({k: v for k, v in spec.items() if k != "name"}, where, key)
    strategy = cls(model, devices, params)
    try:
        strategy.validate(where, key)
    except ConfigError as exc:
        raise PointError(exc.where, exc.key, exc.message) from None
    return strategy


def _resolve(path: Any, base_dir: str) -> Any:
    """A relative file path in an experiment (hardware YAML, model config.json) is relative to the
    experiment file's folder, as the CSVs it names are; a built-in name is left alone."""
    if isinstance(path, str) and (os.sep in path or path.endswith((".yaml", ".yml", ".json"))) \
            and not os.path.isabs(path):
        return os.path.normpath(os.path.join(base_dir, path))
    return path


def _max_context(workload: Workload, seed: int) -> int:
    reqs = workload.generate(np.random.default_rng(seed))
    return max(r.prompt_tokens + r.output_tokens for r in reqs) if reqs else 1


def simulate(built: Built, keep_ops: int = 0) -> Trace:
    """Run one built job in a fresh SimRuntime, keeping `keep_ops` full op rows (KEEP_ALL: all);
    metrics come from the recorder's totals either way."""
    rt = SimRuntime(built.hardware, built.devices, keep_ops=keep_ops)
    source = built.workload.source(np.random.default_rng(built.seed))
    return rt.run(built.strategy, source)


@dataclass
class JobResult:
    index: int
    row: dict
    requests: Optional[pd.DataFrame]
    trace: Optional[Trace]
    error: Optional[str]


def _base_row(job: Job) -> dict:
    base = {"experiment": job.experiment, "strategy": job.label,
            "model": _short(job.config.get("model")), "hardware": _short(job.config.get("hardware")),
            "devices": job.config.get("devices")}
    base.update(job.point)
    return base


def run_job(job: Job, keep_trace: bool = False) -> JobResult:
    base = _base_row(job)
    try:
        built = build(job)
        trace = simulate(built, KEEP_ALL if keep_trace else 0)
    except (ConfigError, SimulationError) as exc:
        return JobResult(job.index, {**base, "error": str(exc)}, None, None, str(exc))
    except Exception as exc:      # a bug, not bad input: record it with its type and go on
        msg = f"internal error ({type(exc).__name__}: {exc}); please report it"
        return JobResult(job.index, {**base, "error": msg}, None, None, msg)
    row = {**base, **summarize(trace), "error": ""}
    req = request_metrics(trace)
    for k, v in reversed(list(base.items())):
        req.insert(0, k, v)
    return JobResult(job.index, row, req, trace if keep_trace else None, None)


def _short(value: Any) -> str:
    if isinstance(value, dict):
        return str(value.get("preset") or value.get("name") or "custom")
    return os.path.basename(str(value)).removesuffix(".yaml").removesuffix(".json")


def _cached(out_dir: str, job: Job) -> Optional[JobResult]:
    path = os.path.join(out_dir, ".cache", job.cache_key() + ".pkl")
    if not os.path.isfile(path):
        return None
    try:
        with open(path, "rb") as fh:
            res = pickle.load(fh)
    except Exception:          # a corrupt cache entry is simply recomputed
        return None
    res.index = job.index
    return res


def _store(out_dir: str, job: Job, res: JobResult) -> None:
    path = os.path.join(out_dir, ".cache", job.cache_key() + ".pkl")
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as fh:
            pickle.dump(JobResult(res.index, res.row, res.requests, None, res.error), fh)


def _work(args):
    job, keep = args
    return run_job(job, keep)


def validate_jobs(jobs: list[Job]) -> list[Optional[str]]:
    """Validate every job; structural errors raise at once, point errors are returned per job."""
    errors: list[Optional[str]] = []
    for job in jobs:
        try:
            build(job)
            errors.append(None)
        except PointError as exc:
            errors.append(str(exc))
    if jobs and all(errors):
        build(jobs[0])          # every point is invalid: raise the first one's error
    return errors


def run_experiment(path: str, out_dir: str, workers: int = 1, progress: bool = True,
                   traced: Optional[set] = None, quiet: bool = False) -> pd.DataFrame:
    """Run every job of the experiment at `path`, write OUT/summary.csv and OUT/requests.csv."""
    jobs = load_experiment(path)
    _validate_outputs(path)
    point_errors = validate_jobs(jobs)
    traced = traced if traced is not None else _default_traced(jobs)
    results: dict[int, JobResult] = {}
    todo = []
    for job, err in zip(jobs, point_errors):
        if err:
            results[job.index] = JobResult(job.index, {**_base_row(job), "error": err}, None, None, err)
            continue
        hit = None if job.index in traced else _cached(out_dir, job)
        if hit is not None:
            results[job.index] = hit
        else:
            todo.append(job)
    bar = Progress(len(jobs), os.path.basename(path), enabled=progress)
    bar.update(len(jobs) - len(todo), "cached")
    args = [(job, job.index in traced) for job in todo]
    if workers > 1 and len(todo) > 1:
        with ProcessPoolExecutor(max_workers=workers, mp_context=get_context("fork")) as pool:
            futures = [pool.submit(_work, a) for a in args]
            for fut in as_completed(futures):       # cache each point as soon as it is done
                res = fut.result()
                _finish_one(out_dir, jobs[res.index], res, results, bar)
    else:
        for a in args:
            _finish_one(out_dir, a[0], _work(a), results, bar)
    ordered = [results[i] for i in range(len(jobs))]
    summary = _summary_frame(ordered, jobs)
    os.makedirs(out_dir, exist_ok=True)
    write_csv(os.path.join(out_dir, "summary.csv"), summary)
    reqs = [r.requests for r in ordered if r.requests is not None]
    write_csv(os.path.join(out_dir, "requests.csv"),
              pd.concat(reqs, ignore_index=True) if reqs else pd.DataFrame())
    _write_outputs(path, out_dir, jobs, ordered)
    failed = [r for r in ordered if r.error]
    if failed and not quiet:
        print(f"{len(failed)} of {len(jobs)} point(s) failed; see the 'error' column of "
              f"{os.path.join(out_dir, 'summary.csv')}", file=sys.stderr)
    return summary


def _finish_one(out_dir, job, res, results, bar):
    results[job.index] = res
    if res.error is None:
        _store(out_dir, job, res)
    bar.update(1, job.label)


def _default_traced(jobs: list[Job]) -> set:
    """Keep the trace of the first sweep point of each strategy (for timelines and trace.json)."""
    seen, out = set(), set()
    for job in jobs:
        if job.label not in seen:
            seen.add(job.label)
            out.add(job.index)
    return out


def _summary_frame(results: list[JobResult], jobs: list[Job]) -> pd.DataFrame:
    frame = pd.DataFrame([r.row for r in results])
    swept = [k for k in dict.fromkeys(k for j in jobs for k in j.point) if k not in SUMMARY_COLUMNS]
    for col in SUMMARY_COLUMNS + swept + ["error"]:
        if col not in frame.columns:
            frame[col] = np.nan
    rest = [c for c in frame.columns if c not in SUMMARY_COLUMNS and c not in swept and c != "error"]
    return frame[SUMMARY_COLUMNS + swept + rest + ["error"]]


def _validate_outputs(path: str) -> None:
    """Check the experiment's `outputs` mapping before anything runs."""
    try:
        from . import outputs
    except ImportError:
        return
    outputs.validate_outputs(path)


def _write_outputs(path: str, out_dir: str, jobs: list[Job], results: list[JobResult]) -> None:
    """Plots and trace files, when the outputs module is available."""
    try:
        from . import outputs
    except ImportError:
        return
    outputs.write_all(path, out_dir, jobs, results)
