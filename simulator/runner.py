"""The experiment runner: the composition root that validates a sweep, runs it and writes results.

Jobs (sweep points x strategies) are validated up front in this process (`plan_run`): a malformed
experiment, a bad ``outputs`` mapping, a sweep with no feasible point or an output folder that
cannot be written raises `ConfigError` before anything is simulated or written. Infeasible jobs
(a `PointError` at validation: a model that does not fit, a TP degree that does not divide the
heads) are skipped and recorded with ``infeasible: KEY: reason`` in the ``error`` column. Feasible
jobs run serially, in worker processes (`simulator.workers`) or as Ray tasks
(`simulator.ray_backend`, ``--backend ray``); every finished job is cached under
``OUT/.cache`` by the hash of its configuration, so a re-run (or a run interrupted and started
again) skips what is done. Results do not depend on the number of workers: each job is a pure
function of its configuration and seed. A feasible job that fails while simulating (a deadlock, an
internal error) is recorded with its error (status ``failed``) and the others go on.
"""
from __future__ import annotations

import os
import re
import pickle
import sys
import tempfile
from dataclasses import dataclass, field
from typing import Any, Optional

import numpy as np
import pandas as pd

from . import outputs
from .errors import ConfigError, SimulationError
from .experiment import Job, load_experiment
from .io import atomic_path, write_csv
from .jobs import (TORCH_RUNTIMES, Built, build, make_strategy, simulate,  # noqa: F401
                   torch_fit_problem, validate_jobs)  # (Built, make_strategy: re-exported)
from .batching import StepRecord
from .metrics import request_metrics, summarize
from .progress import Progress
from .trace import Trace
from .workers import open_backend

SUMMARY_COLUMNS = ["experiment", "strategy", "model", "hardware", "devices", "requests",
                   "jct_mean_s", "jct_p50_s", "jct_p90_s", "jct_p99_s", "throughput_rps"]
TRACE_ROWS = 200_000          # op rows a traced job keeps for the timeline and trace.json (bounded)
INTEGER_COLUMNS = ("devices", "requests", "ops", "steps", "preemptions")   # integers; empty if missing


STATUS_OK, STATUS_INFEASIBLE, STATUS_FAILED = "ok", "infeasible", "failed"
INFEASIBLE_PREFIX = "infeasible: "


@dataclass
class JobResult:
    """One job's outcome. `status`: ok, infeasible (rejected at validation, never simulated) or
    failed (a feasible job that failed while simulating: a deadlock or an internal error)."""
    index: int
    row: dict
    requests: Optional[pd.DataFrame]
    trace: Optional[Trace]
    error: Optional[str]
    status: str = STATUS_OK
    steps: Optional[pd.DataFrame] = None     # continuous batching: the scheduler's steps


def _base_row(job: Job) -> dict:
    base = {"experiment": job.experiment, "strategy": job.label,
            "model": _short(job.config.get("model")), "hardware": _short(job.config.get("hardware")),
            "devices": job.config.get("devices")}
    base.update(job.point)
    return base


def run_job(job: Job, keep_trace: bool = False, spill_path: Optional[str] = None,
            runtime: str = "sim", planning=None, run_log=None) -> JobResult:
    """Simulate one job; `keep_trace`: keep op rows for the timeline and trace.json;
    `spill_path`: write every op row there (outputs.trace: full); `runtime` "torch" ("torch-cuda"):
    run it for real on TorchRuntime (its first TRACE_ROWS rows are kept, never a re-run's
    middle), logging every op into the torchrt RunLog `run_log` if given."""
    base = _base_row(job)
    try:
        built = build(job)
        trace = simulate(built, TRACE_ROWS if keep_trace else 0, spill_path=spill_path,
                         runtime=runtime, planning=planning, run_log=run_log)
        if keep_trace and not trace.complete and runtime == "sim":
            trace = _middle_rows(job, trace, planning)
    except (ConfigError, SimulationError) as exc:
        return JobResult(job.index, {**base, "error": str(exc)}, None, None, str(exc), STATUS_FAILED)
    except Exception as exc:      # a bug, not bad input: record it with its type and go on
        msg = f"internal error ({type(exc).__name__}: {exc}); please report it"
        return JobResult(job.index, {**base, "error": msg}, None, None, msg, STATUS_FAILED)
    row = {**base, **summarize(trace, built.slo), "error": ""}
    req = request_metrics(trace, built.slo)
    for k, v in reversed(list(base.items())):
        req.insert(0, k, v)
    steps = None
    if trace.steps:
        steps = pd.DataFrame(trace.steps, columns=list(StepRecord._fields))
        for k, v in reversed(list(base.items())):
            steps.insert(0, k, v)
    trace_kept = trace if keep_trace else None
    if trace_kept is not None:
        trace_kept.steps, trace_kept.itl_s = [], []      # kept in the frame / summary already
    return JobResult(job.index, row, req, trace_kept, None, steps=steps)


def _middle_rows(job: Job, trace: Trace, planning=None) -> Trace:
    """A traced job with more ops than `TRACE_ROWS`: simulate it again (same seed, same result),
    keeping `TRACE_ROWS` rows from about the middle op on (mid-run the load is steady; the
    timeline and trace.json draw from these rows)."""
    start_s = trace.time_of_op(max(0, trace.total_ops // 2 - TRACE_ROWS // 2))
    again = simulate(build(job), TRACE_ROWS, start_s, planning=planning)
    trace.rows = again.rows
    trace.meta["rows_from_s"] = start_s
    return trace


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
    job, keep, spill, runtime = args
    if runtime == "sim":
        return run_job(job, keep, spill)
    return run_job(job, keep, spill, runtime)


def lost_job(args, message: str) -> JobResult:
    """The result of a job its backend could not run (Ray lost its task twice): failed, with
    the reason in the error column, like a point failing while simulating."""
    job = args[0]
    return JobResult(job.index, {**_base_row(job), "error": message}, None, None, message,
                     STATUS_FAILED)


def ops_file(out_dir: str, job: Job) -> str:
    """Where outputs.trace: full puts a traced job's op rows."""
    return os.path.join(out_dir, "ops", re.sub(r"[^A-Za-z0-9_.=,+-]+", "_", job.label) + ".csv.gz")


@dataclass(frozen=True)
class RunPlan:
    """A validated experiment, before anything runs: its jobs, which are infeasible and why
    (job index -> ``KEY: reason``), its output options and the timeline point."""
    path: str
    jobs: list
    infeasible: dict
    options: outputs.OutputOptions
    timeline: outputs.TimelineChoice

    @property
    def feasible(self) -> list:
        return [j for j in self.jobs if j.index not in self.infeasible]


@dataclass
class RunReport:
    """What a run produced: the summary (as written), the plan, the jobs that failed while
    simulating, and the output files with notes about them (e.g. a cut trace.json)."""
    plan: RunPlan
    summary: pd.DataFrame
    failed: list = field(default_factory=list)
    written: outputs.WrittenOutputs = field(default_factory=outputs.WrittenOutputs)


def plan_run(path: str, runtime: str = "sim") -> RunPlan:
    """Load and validate the experiment at `path` and every job of it, without simulating.
    With `runtime` "torch" or "torch-cuda" a point that does not fit this machine (its RAM, its
    GPUs) is infeasible too."""
    jobs = load_experiment(path)
    options = outputs.validate_outputs(path)
    errors = validate_jobs(jobs)
    infeasible = {job.index: err for job, err in zip(jobs, errors) if err}
    if runtime in TORCH_RUNTIMES:
        for job in jobs:
            if job.index not in infeasible:
                problem = torch_fit_problem(build(job), runtime=runtime)
                if problem:
                    infeasible[job.index] = problem
        if jobs and len(infeasible) == len(jobs):
            first = infeasible[jobs[0].index]
            raise ConfigError(jobs[0].where, "", f"no point can run with --runtime torch; first: "
                              f"{first}")
    timeline = outputs.choose_timeline_point(path, jobs, infeasible, options)
    return RunPlan(path, jobs, infeasible, options, timeline)


def check_out_dir(out_dir: str) -> None:
    """ConfigError unless `out_dir` is, or can be made, a writable folder. Leaves no trace: a
    folder created to find out is removed again, and so is the probe file."""
    key, allowed = "--out", "give a folder that exists or can be created"
    if os.path.exists(out_dir) and not os.path.isdir(out_dir):
        raise ConfigError("argument", key, f"{out_dir} is a file, not a folder; {allowed}")
    existing = os.path.abspath(out_dir)
    while not os.path.exists(existing) and os.path.dirname(existing) != existing:
        existing = os.path.dirname(existing)
    if not os.path.isdir(existing):
        raise ConfigError("argument", key, f"{out_dir} lies under {existing}, which is a file; "
                          f"{allowed}")
    created = os.path.abspath(out_dir) != existing
    try:
        if created:
            os.makedirs(out_dir)
        fd, probe = tempfile.mkstemp(prefix=".probe-", dir=out_dir)
        os.close(fd)
        os.remove(probe)
    except OSError as exc:
        raise ConfigError("argument", key, f"{out_dir} cannot be "
                          f"{'created' if created else 'written'} ({exc.strerror}); {allowed}") from None
    finally:
        if created:
            _remove_empty_dirs(os.path.abspath(out_dir), existing)


def _remove_empty_dirs(folder: str, stop: str) -> None:
    while folder != stop and os.path.isdir(folder):
        try:
            os.rmdir(folder)
        except OSError:
            return
        folder = os.path.dirname(folder)


def run_experiment(path: str, out_dir: str, workers: int = 1, progress: bool = True,
                   traced: Optional[set] = None, quiet: bool = False) -> pd.DataFrame:
    """Run every feasible job of the experiment at `path`; write OUT/summary.csv, requests.csv and
    the plots (see `execute`); return the summary. Unless `quiet`, print to stderr how many points
    were infeasible or failed."""
    report = execute(path, out_dir, workers=workers, progress=progress, traced=traced)
    if not quiet:
        from .console import print_problems
        print_problems(report, out_dir, sys.stderr)
    return report.summary


def execute(path: str, out_dir: str, workers: int = 1, progress: bool = True,
            traced: Optional[set] = None, plan: Optional[RunPlan] = None,
            runtime: str = "sim", backend: str = "local",
            ray_address: Optional[str] = None) -> RunReport:
    """Validate (`plan_run`, `check_out_dir`), run the feasible jobs (from the cache where it has
    them) and write every result file atomically. `traced`: job indices whose traces feed
    timeline.png and trace.json (default: the plan's timeline point). `runtime` "torch": run
    them for real on TorchRuntime, one at a time, never from or into the cache (a measurement
    is not a pure function of its configuration). `backend` "ray": the jobs run as Ray tasks
    (at `ray_address`; see `simulator.ray_backend`), except those writing op rows to OUT/ops
    (outputs.trace: full), which run here: a remote node would write them on its own disk."""
    plan = plan or plan_run(path, runtime)
    measured = runtime in TORCH_RUNTIMES
    if measured:
        workers = 1
        if backend != "local":
            raise ConfigError("argument", "--backend", "--runtime torch measures this machine; "
                              "it runs with --backend local only")
    check_out_dir(out_dir)
    jobs = plan.jobs
    traced = set(plan.timeline.indices) if traced is None else traced
    results: dict[int, JobResult] = {}
    todo = []
    for job in jobs:
        if job.index in plan.infeasible:
            err = INFEASIBLE_PREFIX + plan.infeasible[job.index]
            results[job.index] = JobResult(job.index, {**_base_row(job), "error": err}, None, None,
                                           err, STATUS_INFEASIBLE)
            continue
        hit = None if job.index in traced or measured else _cached(out_dir, job)
        if hit is not None:
            results[job.index] = hit
        else:
            todo.append(job)
    bar = Progress(len(plan.feasible), os.path.basename(path), enabled=progress)
    bar.update(len(plan.feasible) - len(todo), "cached")
    full = plan.options.trace == "full"
    args = [(job, job.index in traced, ops_file(out_dir, job) if full and job.index in traced
             and not measured else None, runtime) for job in todo]
    here = [a for a in args if a[2] is not None] if backend != "local" else []
    there = [a for a in args if backend == "local" or a[2] is None]

    def finish(res: JobResult) -> None:
        _finish_one(out_dir, jobs[res.index], res, results, bar, store=not measured)
    try:
        with open_backend(backend, workers, ray_address) as pool:
            pool.run(_work, there, on_result=finish, on_wait=bar.tick, lost=lost_job)
        for a in here:
            finish(_work(a))
    finally:
        bar.close()
    ordered = [results[i] for i in range(len(jobs))]
    summary = _summary_frame(ordered, jobs)
    os.makedirs(out_dir, exist_ok=True)
    write_csv(os.path.join(out_dir, "summary.csv"), summary)
    reqs = [r.requests for r in ordered if r.requests is not None]
    write_csv(os.path.join(out_dir, "requests.csv"),
              pd.concat(reqs, ignore_index=True) if reqs else pd.DataFrame())
    steps = [r.steps for r in ordered if r.steps is not None]
    steps_file = os.path.join(out_dir, "steps.csv")
    if steps:
        write_csv(steps_file, pd.concat(steps, ignore_index=True))
    elif os.path.exists(steps_file):
        os.remove(steps_file)
    written = outputs.write_all(plan.path, out_dir, jobs, ordered, plan.options, plan.timeline)
    failed = [r for r in ordered if r.status == STATUS_FAILED]
    return RunReport(plan, summary, failed, written)


def _finish_one(out_dir, job, res, results, bar, store: bool = True):
    results[job.index] = res
    if res.error is None and store:
        _store(out_dir, job, res)
    bar.update(1, job.label)


def _summary_frame(results: list[JobResult], jobs: list[Job]) -> pd.DataFrame:
    frame = pd.DataFrame([r.row for r in results])
    swept = [k for k in dict.fromkeys(k for j in jobs for k in j.point) if k not in SUMMARY_COLUMNS]
    for col in SUMMARY_COLUMNS + swept + ["error"]:
        if col not in frame.columns:
            frame[col] = np.nan
    for col in INTEGER_COLUMNS:         # NaN rows (infeasible points) must not turn 4 into 4.0
        if col not in frame.columns:    # no point ran (every feasible one failed)
            continue
        values = pd.to_numeric(frame[col], errors="coerce")
        if values.notna().any() and (values.dropna() % 1 == 0).all():
            frame[col] = values.astype("Int64")
    rest = [c for c in frame.columns if c not in SUMMARY_COLUMNS and c not in swept and c != "error"]
    return frame[SUMMARY_COLUMNS + swept + rest + ["error"]]
