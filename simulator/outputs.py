"""The files people open after a run, written into the run folder (each one atomically, each one
byte-identical across identical runs).

- ``latency_throughput.png`` and ``timeline.png``: see `simulator.plots`.
- ``trace.json``: the traced jobs in the Chrome trace event format (opens in ui.perfetto.dev and
  chrome://tracing): one process per (strategy label, device), one thread per stream (tid =
  pid * 1000 + stream + 1), named by ``M`` metadata events; one complete (``X``) event per op
  with ``ts``/``dur`` in microseconds and ``args`` {request, phase, op_class, isolated_us,
  wait_us (communication only: the spin time)}. At most
  ``outputs.trace_max_events`` (default 50000) op events in all, shared equally by the traced jobs,
  each keeping its earliest ops (a run with more than the runner's `TRACE_ROWS` ops keeps rows
  from about its middle op on, `rows_from_s`); ``otherData`` says how many were written and whether any were cut,
  and `WrittenOutputs.notes` says it on the console.
- ``compare.csv``: `compare.compare_frame` of this run's rows (the table `parasim compare` prints)
  when the run has at least two strategy labels, with ``outputs.slo_s`` as the SLO when given.

The traced jobs are those of one sweep point, the *timeline point* (`choose_timeline_point`):
``outputs.timeline_point`` picks it (a 0-based index into the sweep points in sweep order, as
``parasim run FILE --dry-run`` lists them, or a mapping ``{axis: value}`` of swept axes, named by
their full dotted path or its last part, e.g. ``{rate_rps: 4}``). By default, and among the
points a mapping matches, it is a point where every strategy is feasible (else where the most
are): the one with the highest offered load when exactly one load axis (``workload.arrival.*``,
e.g. the arrival rate) is swept, first in sweep order among equals, since under load the
strategies differ most (pipelines fill, Liger's second stream works); otherwise the middle one in
sweep order (the median point).

A file this module did not produce in this run (e.g. no successful point) is removed, so a
re-used folder never shows a stale plot.
"""
from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass
from typing import Optional, Union

import numpy as np
import pandas as pd

from . import __version__
from .compare import compare_frame
from .errors import ConfigError
from .experiment import read_yaml
from .io import write_csv, write_text
from .plots import (plot_latency_throughput, plot_serving, plot_timeline, stream_rows,  # noqa: F401
                    timeline_window)

OUTPUT_KEYS = ("timeline_window_s", "timeline_ops", "timeline_point", "trace_max_events", "slo_s",
               "trace")
TRACE_MODES = ("window", "full")
FILES = ("latency_throughput.png", "timeline.png", "trace.json", "compare.csv", "serving.png")
POINT_KEY = "outputs.timeline_point"


@dataclass(frozen=True)
class OutputOptions:
    """The validated `outputs` mapping of an experiment."""
    timeline_window_s: Optional[tuple[float, float]] = None
    timeline_ops: int = 400
    trace_max_events: int = 50_000
    slo_s: Optional[float] = None
    timeline_point: Union[None, int, tuple] = None     # an index, or ((axis, value), ...)
    trace: str = "window"        # "full": every op row of the traced jobs to OUT/ops/LABEL.csv.gz


@dataclass(frozen=True)
class TimelineChoice:
    """The sweep point whose traces feed timeline.png and trace.json: its index in sweep order,
    its feasible jobs' indices (strategy order), its settings and why it was chosen."""
    point: int
    indices: tuple
    settings: tuple            # ((swept path, value), ...)
    rule: str

    def describe(self) -> str:
        where = ", ".join(f"{k.split('.')[-1]}={v}" for k, v in self.settings) or "the only point"
        return f"point {self.point} ({where}; {self.rule})"


@dataclass(frozen=True)
class WrittenOutputs:
    """The output files a run wrote and notes a user should read about them."""
    files: tuple = ()
    notes: tuple = ()


def validate_outputs(path: str) -> OutputOptions:
    """Read and check the experiment's `outputs` mapping; ConfigError names the bad key.

    Cheap and side-effect free: call it before running so a typo fails before the simulation.
    """
    data = read_yaml(path)
    raw = data.get("outputs", {}) if isinstance(data, dict) else {}
    raw = {} if raw is None else raw
    if not isinstance(raw, dict):
        raise ConfigError(path, "outputs", "expected a mapping of output options")
    for k in raw:
        if k not in OUTPUT_KEYS:
            raise ConfigError(path, f"outputs.{k}", "unknown key; allowed here: " + ", ".join(OUTPUT_KEYS))
    window = raw.get("timeline_window_s")
    if window is not None:
        key = "outputs.timeline_window_s"
        if not isinstance(window, list) or len(window) != 2:
            raise ConfigError(path, key, f"expected [start, end] in seconds, got {window!r}")
        if not all(isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)
                   for v in window):
            raise ConfigError(path, key, f"start and end must be finite numbers, got {window!r}")
        if not 0 <= window[0] < window[1]:
            raise ConfigError(path, key, f"need 0 <= start < end, got {window!r}")
        window = (float(window[0]), float(window[1]))
    out = {"timeline_window_s": window}
    if "trace" in raw:
        if raw["trace"] not in TRACE_MODES:
            raise ConfigError(path, "outputs.trace", f"expected one of {', '.join(TRACE_MODES)}, "
                              f"got {raw['trace']!r}")
        out["trace"] = raw["trace"]
    for k, lo in (("timeline_ops", 1), ("trace_max_events", 1)):
        if k in raw:
            v = raw[k]
            if not isinstance(v, int) or isinstance(v, bool) or v < lo:
                raise ConfigError(path, f"outputs.{k}", f"expected an integer >= {lo}, got {v!r}")
            out[k] = v
    if raw.get("slo_s") is not None:
        v = raw["slo_s"]
        if not isinstance(v, (int, float)) or isinstance(v, bool) or not (math.isfinite(v) and v > 0):
            raise ConfigError(path, "outputs.slo_s", f"expected a number > 0 (seconds), got {v!r}")
        out["slo_s"] = float(v)
    if raw.get("timeline_point") is not None:
        out["timeline_point"] = _parse_point(path, raw["timeline_point"])
    return OutputOptions(**out)


def _parse_point(path: str, value):
    allowed = "a sweep point index >= 0 or a mapping of swept axes to values, e.g. {rate_rps: 4}"
    if isinstance(value, int) and not isinstance(value, bool):
        if value < 0:
            raise ConfigError(path, POINT_KEY, f"got {value}; expected {allowed}")
        return value
    if not isinstance(value, dict) or not value:
        raise ConfigError(path, POINT_KEY, f"got {value!r}; expected {allowed}")
    for k, v in value.items():
        if not isinstance(k, str) or not (v is None or isinstance(v, (bool, int, float, str))):
            raise ConfigError(path, f"{POINT_KEY}.{k}", f"expected one swept value, got {v!r}")
    return tuple(value.items())


def sweep_points(jobs: list) -> list[list]:
    """The jobs grouped by sweep point, in sweep order (each group in strategy order)."""
    width = len(dict.fromkeys(j.label for j in jobs)) or 1
    return [jobs[i:i + width] for i in range(0, len(jobs), width)]


def choose_timeline_point(path: str, jobs: list, infeasible: dict,
                          opts: OutputOptions) -> TimelineChoice:
    """The timeline point (module docstring); ConfigError when `outputs.timeline_point` names no
    swept value or a point where no strategy is feasible."""
    points = sweep_points(jobs)
    if not points:
        return TimelineChoice(0, (), (), "no points")
    settings = [tuple(p[0].point.items()) for p in points]
    feasible = [[j.index for j in p if j.index not in infeasible] for p in points]
    wanted = opts.timeline_point
    if isinstance(wanted, int):
        if wanted >= len(points):
            raise ConfigError(path, POINT_KEY, f"point {wanted} does not exist; the sweep has "
                              f"{len(points)} point(s), 0 to {len(points) - 1} (see --dry-run)")
        candidates, rule = [wanted], "outputs.timeline_point"
    elif wanted:
        candidates, rule = _matching(path, wanted, settings), "outputs.timeline_point"
    else:
        candidates, rule = list(range(len(points))), ""
    if not any(feasible[i] for i in candidates):
        raise ConfigError(path, POINT_KEY, "every strategy is infeasible at that point; choose "
                          "another (`parasim run FILE --dry-run` lists them)")
    most = max(len(feasible[i]) for i in candidates)
    best = [i for i in candidates if len(feasible[i]) == most]
    load = _load_axis(settings)
    if len(best) == 1:
        chosen = best[0]
    elif load is not None:
        chosen = max(best, key=lambda i: (float(dict(settings[i])[load]), -i))
        rule = rule or f"highest {load.split('.')[-1]} where every strategy is feasible"
    else:
        chosen = best[len(best) // 2]
        rule = rule or "median sweep point where every strategy is feasible"
    return TimelineChoice(chosen, tuple(feasible[chosen]), settings[chosen],
                          rule or "the only point where every strategy is feasible")


def _matching(path: str, wanted: tuple, settings: list) -> list[int]:
    axes = [k for k, _ in settings[0]]
    fixed = {}
    for name, value in wanted:
        hits = [a for a in axes if a == name or a.split(".")[-1] == name]
        if len(hits) != 1:
            what = "is not a swept axis" if not hits else "matches several axes; use the full path"
            raise ConfigError(path, f"{POINT_KEY}.{name}", f"{what}; swept axes: "
                              + (", ".join(axes) or "none"))
        values = list(dict.fromkeys(dict(s)[hits[0]] for s in settings))
        if value not in values:
            raise ConfigError(path, f"{POINT_KEY}.{name}", f"{value!r} is not a swept value; "
                              "swept values: " + ", ".join(str(v) for v in values))
        fixed[hits[0]] = value
    return [i for i, s in enumerate(settings) if all(dict(s)[a] == v for a, v in fixed.items())]


def _load_axis(settings: list) -> Optional[str]:
    """The swept offered-load axis (arrival rate, clients) when exactly one is swept."""
    axes = [k for k, _ in settings[0] if k.startswith("workload.arrival.")
            and len({dict(s)[k] for s in settings}) > 1
            and all(isinstance(dict(s)[k], (int, float)) for s in settings)]
    return axes[0] if len(axes) == 1 else None


def write_all(path: str, out_dir: str, jobs: list, results: list,
              opts: Optional[OutputOptions] = None,
              timeline: Optional[TimelineChoice] = None) -> WrittenOutputs:
    """Write every output file of a finished run into `out_dir`.

    `results` are the runner's JobResults in job order (`jobs[r.index]` is each one's job);
    those that carry a trace feed the timeline and trace.json.
    """
    opts = opts or validate_outputs(path)
    written, notes = [], []
    frame = pd.DataFrame([r.row for r in results])
    file = os.path.join(out_dir, "latency_throughput.png")
    if plot_latency_throughput(frame, file):
        written.append(file)
    traced = [(jobs[r.index], _ops_frame(r.trace)) for r in results
              if r.trace is not None and len(r.trace)]
    shown = set(timeline.indices) if timeline is not None else {r.index for r in results}
    served = [(jobs[r.index].label, r.steps) for r in results
              if r.index in shown and getattr(r, "steps", None) is not None]
    file = os.path.join(out_dir, "serving.png")
    if plot_serving(served, file):
        written.append(file)
    if traced:
        plot_timeline(traced, opts, os.path.join(out_dir, "timeline.png"))
        trace = chrome_trace(traced, opts)
        write_text(os.path.join(out_dir, "trace.json"),
                   json.dumps(trace, separators=(",", ":"), allow_nan=False))
        written += [os.path.join(out_dir, "timeline.png"), os.path.join(out_dir, "trace.json")]
        notes += trace_notes(trace, timeline)
    if {"strategy", "throughput_rps", "jct_mean_s"} <= set(frame.columns) \
            and frame["strategy"].nunique() >= 2:
        file = os.path.join(out_dir, "compare.csv")
        write_csv(file, compare_frame(frame, opts.slo_s))
        written.append(file)
    for name in FILES:               # never leave a previous run's file beside this run's summary
        stale = os.path.join(out_dir, name)
        if stale not in written and os.path.exists(stale):
            os.remove(stale)
    return WrittenOutputs(tuple(written), tuple(notes))


def _ops_frame(trace) -> pd.DataFrame:
    """The kept op rows of a traced job; `attrs` say how many ops the job had in all and from which
    time on rows were kept (a long run keeps a bounded stretch from its middle)."""
    ops = trace.ops()
    ops.attrs["ops_total"] = trace.total_ops
    ops.attrs["rows_from_s"] = float(trace.meta.get("rows_from_s", 0.0))
    return ops


def trace_notes(trace: dict, timeline: Optional[TimelineChoice]) -> list[str]:
    """One console line when trace.json was cut to `trace_max_events`."""
    meta = trace["otherData"]
    if not meta["truncated"]:
        return []
    cut = [j for j in meta["jobs"] if j["ops_written"] < j["ops_total"]]
    where = timeline.describe() if timeline else "the traced point"
    parts = ", ".join(f"{j['ops_written']:,} of {j['ops_total']:,} ops of {j['strategy']}"
                      + (f" (from t={j['rows_from_s']:.3f} s)" if j["rows_from_s"] else "")
                      for j in cut)
    return [f"trace.json: the first {parts} at {where}; raise outputs.trace_max_events "
            f"(now {meta['max_op_events']:,}) for more"]


def chrome_trace(traced: list, opts: OutputOptions) -> dict:
    """The Chrome trace event format object (module docstring) for traced (job, ops) pairs."""
    events, jobs_meta = [], []
    per_job = max(1, opts.trace_max_events // len(traced)) if traced else 0
    pid = 0
    for order, (job, ops) in enumerate(traced):
        kept = ops.sort_values("start_s", kind="stable").head(per_job)
        jobs_meta.append({"strategy": job.label, "point": job.point,
                          "ops_total": int(ops.attrs.get("ops_total", len(ops))),
                          "ops_written": int(len(kept)),
                          "rows_from_s": float(ops.attrs.get("rows_from_s", 0.0))})
        pids = {}
        for d, s, p in stream_rows(ops):
            tid = _tid(pid + 1 if d not in pids else pids[d], s)
            if d not in pids:
                pid += 1
                pids[d] = pid
                events.append(_meta("process_name", pid, tid, {"name": f"{job.label} / device {d}"}))
                events.append(_meta("process_sort_index", pid, tid, {"sort_index": pid}))
            events.append(_meta("thread_name", pids[d], tid, {"name": f"stream {s} (priority {p})"}))
            events.append(_meta("thread_sort_index", pids[d], tid, {"sort_index": s}))
        events.extend(_op_events(kept, pids))
    written = sum(j["ops_written"] for j in jobs_meta)
    total = sum(j["ops_total"] for j in jobs_meta)
    return {"traceEvents": events, "displayTimeUnit": "ms",
            "otherData": {"generator": f"parasim {__version__}", "time_unit": "us",
                          "max_op_events": opts.trace_max_events, "op_events_written": written,
                          "op_events_total": total, "truncated": written < total,
                          "note": "each traced job keeps its earliest ops by start time (from "
                                  "rows_from_s on: a long run keeps a stretch from its middle)",
                          "jobs": json.loads(json.dumps(jobs_meta, default=str))}}


def _tid(pid: int, stream: int) -> int:
    """Thread id of a stream: unique across processes and never 0 (Perfetto's JSON importer has
    merged tid 0 with tid 1 and may key threads by tid alone)."""
    return pid * 1000 + stream + 1


def _meta(name: str, pid: int, tid: int, args: dict) -> dict:
    return {"name": name, "ph": "M", "pid": pid, "tid": tid, "args": args}


def _op_events(ops: pd.DataFrame, pids: dict) -> list[dict]:
    start_us = ops["start_s"].to_numpy(float) * 1e6
    ts = np.round(start_us, 3)
    dur = np.round(np.maximum(np.round(ops["end_s"].to_numpy(float) * 1e6, 3) - ts, 0.0), 3)
    wait = np.round(np.maximum(ops["transfer_start_s"].to_numpy(float) * 1e6 - start_us, 0.0), 3)
    iso = np.round(ops["isolated_s"].to_numpy(float) * 1e6, 3)
    pid = [pids[d] for d in ops["device"].tolist()]
    tids = [_tid(p, st) for p, st in zip(pid, ops["stream"].tolist())]
    req = [r if isinstance(r, int) else _num(r) for r in ops["request"].tolist()]
    out = []
    cols = zip(pid, tids, ops["name"].astype(str).tolist(),
               ops["kind"].astype(str).tolist(), ops["op_class"].astype(str).tolist(), req,
               ops["phase"].astype(str).tolist(), ts.tolist(), dur.tolist(),
               [_num(v) for v in iso.tolist()], wait.tolist())
    for p, t_id, name, kind, cls, r, phase, t, du, i, w in cols:
        args = {"request": r, "phase": phase, "op_class": cls, "isolated_us": i}
        if cls == "comm":
            args["wait_us"] = w
        out.append({"name": name, "cat": kind, "ph": "X", "ts": t, "dur": du, "pid": p,
                    "tid": t_id, "args": args})
    return out


def _num(v):
    """A JSON-safe number: ints stay ints, non-finite values (and None) become null."""
    if v is None or isinstance(v, bool):
        return None
    if isinstance(v, (int, np.integer)):
        return int(v)
    v = float(v)
    return v if math.isfinite(v) else None


def write_chrome_trace(traced: list, opts: OutputOptions, file: str) -> None:
    """Write `chrome_trace` as compact JSON (NaN never reaches the file)."""
    write_text(file, json.dumps(chrome_trace(traced, opts), separators=(",", ":"), allow_nan=False))
