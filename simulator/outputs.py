"""The files people open after a run, written into the run folder (each one atomically).

- ``latency_throughput.png``: mean (solid) and p90 (dashed) JCT against achieved throughput, one
  colour per strategy label (and per group of other swept settings, see `compare.group_columns`),
  points ordered by throughput. Failed points are left out; no file when no point succeeded.
- ``timeline.png``: one subplot per traced job (the first sweep point of each strategy), stacked
  vertically in strategy order; rows are device x stream, ops are bars coloured by op class
  (compute blue, memory green, communication red), with a communication op's spin time (from its
  start until every member has started, ``start_s..transfer_start_s``) drawn light and hatched.
  Gaps are bubbles; two busy rows of one device at the same time are overlap. Window: the
  experiment's ``outputs.timeline_window_s: [start, end]`` (seconds of simulated time, the same for
  every subplot), else, per subplot, the span of the first ``outputs.timeline_ops`` ops (default
  400) by start time. At most `MAX_DRAWN_OPS` ops are drawn per subplot.
- ``trace.json``: the traced jobs in the Chrome trace event format (opens in ui.perfetto.dev and
  chrome://tracing): one process per (strategy label, device), one thread per stream (tid =
  pid * 1000 + stream + 1), named by ``M`` metadata events; one complete (``X``) event per op
  with ``ts``/``dur`` in microseconds and ``args`` {request, phase, op_class, isolated_us,
  wait_us (communication only: the spin time)}. At most
  ``outputs.trace_max_events`` (default 50000) op events in all, shared equally by the traced jobs,
  each keeping its earliest ops; ``otherData`` says how many were written and whether any were cut.
- ``compare.csv``: `compare.compare_frame` of this run's rows (the table `parasim compare` prints)
  when the run has at least two strategy labels, with ``outputs.slo_s`` as the SLO when given.

A file this module did not produce in this run (e.g. no successful point) is removed, so a
re-used folder never shows a stale plot. Matplotlib draws through its Agg canvas; nothing is shown.
"""
from __future__ import annotations

import json
import math
import os
import warnings
from dataclasses import dataclass
from typing import Optional

import matplotlib
import numpy as np
import pandas as pd
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.patches import Patch

from . import __version__
from .compare import compare_frame, group_columns, successful
from .errors import ConfigError
from .experiment import read_yaml
from .io import atomic_path, write_csv, write_text

OUTPUT_KEYS = ("timeline_window_s", "timeline_ops", "trace_max_events", "slo_s")
FILES = ("latency_throughput.png", "timeline.png", "trace.json", "compare.csv")
MAX_DRAWN_OPS = 20_000
CLASS_COLORS = {"compute": "#1f77b4", "memory": "#2ca02c", "comm": "#d62728"}
SPIN_COLOR = "#f7b6b6"
OTHER_COLOR = "#7f7f7f"


@dataclass(frozen=True)
class OutputOptions:
    """The validated `outputs` mapping of an experiment."""
    timeline_window_s: Optional[tuple[float, float]] = None
    timeline_ops: int = 400
    trace_max_events: int = 50_000
    slo_s: Optional[float] = None


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
    return OutputOptions(**out)


def write_all(path: str, out_dir: str, jobs: list, results: list) -> list[str]:
    """Write every output file of a finished run into `out_dir`; return the paths written.

    `results` are the runner's JobResults in job order (`jobs[r.index]` is each one's job);
    those that carry a trace feed the timeline and trace.json.
    """
    opts = validate_outputs(path)
    written = []
    frame = pd.DataFrame([r.row for r in results])
    file = os.path.join(out_dir, "latency_throughput.png")
    if plot_latency_throughput(frame, file):
        written.append(file)
    traced = [(jobs[r.index], r.trace.ops()) for r in results if r.trace is not None and len(r.trace)]
    if traced:
        plot_timeline(traced, opts, os.path.join(out_dir, "timeline.png"))
        write_chrome_trace(traced, opts, os.path.join(out_dir, "trace.json"))
        written += [os.path.join(out_dir, "timeline.png"), os.path.join(out_dir, "trace.json")]
    if {"strategy", "throughput_rps", "jct_mean_s"} <= set(frame.columns) \
            and frame["strategy"].nunique() >= 2:
        file = os.path.join(out_dir, "compare.csv")
        write_csv(file, compare_frame(frame, opts.slo_s))
        written.append(file)
    for name in FILES:               # never leave a previous run's file beside this run's summary
        stale = os.path.join(out_dir, name)
        if stale not in written and os.path.exists(stale):
            os.remove(stale)
    return written


def _save(fig: Figure, file: str) -> None:
    with atomic_path(file) as tmp:
        fig.savefig(tmp, format="png", dpi=110)


def plot_latency_throughput(summary: pd.DataFrame, file: str) -> bool:
    """Draw the latency-throughput plot; False (and no file) when no point succeeded."""
    if "strategy" not in summary.columns or "throughput_rps" not in summary.columns:
        return False
    ok = successful(summary, "jct_mean_s")
    if len(ok) == 0:
        return False
    scale, unit = (1e3, "ms") if float(ok[["jct_mean_s", "jct_p90_s"]].max().max()) < 2 else (1.0, "s")
    groups = group_columns(summary)
    fig = Figure(figsize=(8, 5.2))
    ax = fig.add_subplot()
    cycle = [c["color"] for c in matplotlib.rcParams["axes.prop_cycle"]]
    keys = ["strategy"] + groups
    for i, (key, pts) in enumerate(ok.groupby(keys, sort=False)):
        key = key if isinstance(key, tuple) else (key,)
        name = str(key[0]) + ("" if not groups else
                              " (" + ", ".join(f"{g}={v}" for g, v in zip(groups, key[1:])) + ")")
        pts = pts.sort_values("throughput_rps", kind="stable")
        color = cycle[i % len(cycle)]
        x = pts["throughput_rps"].to_numpy(float)
        ax.plot(x, pts["jct_mean_s"].to_numpy(float) * scale, "-o", color=color, label=name)
        if "jct_p90_s" in pts:
            ax.plot(x, pts["jct_p90_s"].to_numpy(float) * scale, "--s", color=color, alpha=0.8,
                    markersize=4)
    ax.set_xlabel("achieved throughput (requests/s)")
    ax.set_ylabel(f"job completion time ({unit})")
    ax.set_title(f"Latency vs throughput: {summary['experiment'].iloc[0]}"
                 if "experiment" in summary.columns else "Latency vs throughput")
    ax.set_ylim(bottom=0)
    ax.grid(True, alpha=0.3)
    handles = ax.get_legend_handles_labels()[0]
    handles += [Line2D([], [], color="black", linestyle="-", marker="o", label="mean JCT"),
                Line2D([], [], color="black", linestyle="--", marker="s", markersize=4, label="p90 JCT")]
    ax.legend(handles=handles, fontsize=8)
    with warnings.catch_warnings():      # a long legend cannot always fit: keep the plot anyway
        warnings.simplefilter("ignore", UserWarning)
        fig.tight_layout()
    _save(fig, file)
    return True


def timeline_window(ops: pd.DataFrame, opts: OutputOptions) -> tuple[float, float]:
    """The configured window, else the span of the first `opts.timeline_ops` ops by start time."""
    if opts.timeline_window_s is not None:
        return opts.timeline_window_s
    if len(ops) == 0:
        return (0.0, 1.0)
    first = ops.sort_values("start_s", kind="stable").head(opts.timeline_ops)
    lo, hi = float(first["start_s"].min()), float(first["end_s"].max())
    return (lo, hi if hi > lo else lo + 1e-6)


def _rows(ops: pd.DataFrame) -> list[tuple[int, int, int]]:
    """(device, stream, priority) of every stream in the trace, sorted."""
    rows = ops[["device", "stream", "priority"]].drop_duplicates(["device", "stream"])
    return sorted((int(d), int(s), int(p)) for d, s, p in rows.itertuples(index=False))


def plot_timeline(traced: list, opts: OutputOptions, file: str) -> None:
    """One subplot per traced (job, ops frame), rows device x stream, in a window (module doc)."""
    heights = [max(len(_rows(ops)), 1) for _, ops in traced]
    fig = Figure(figsize=(14, 1.3 * len(traced) + 0.42 * sum(heights) + 0.6))
    axes = fig.subplots(len(traced), 1, squeeze=False, gridspec_kw={"height_ratios": heights})[:, 0]
    for ax, (job, ops) in zip(axes, traced):
        _draw_timeline(ax, job, ops, opts)
    handles = [Patch(facecolor=CLASS_COLORS["compute"], label="compute"),
               Patch(facecolor=CLASS_COLORS["memory"], label="memory-bound"),
               Patch(facecolor=CLASS_COLORS["comm"], label="communication (transfer)"),
               Patch(facecolor=SPIN_COLOR, hatch="////", edgecolor=CLASS_COLORS["comm"],
                     label="communication (spin: waiting for peers)")]
    fig.legend(handles=handles, loc="upper center", ncol=4, fontsize=9, frameon=False)
    fig.tight_layout(rect=(0, 0, 1, 1 - 0.45 / fig.get_figheight()))
    _save(fig, file)


def _draw_timeline(ax, job, ops: pd.DataFrame, opts: OutputOptions) -> None:
    rows = _rows(ops)
    index = {(d, s): i for i, (d, s, _) in enumerate(rows)}
    w0, w1 = timeline_window(ops, opts)
    sub = ops[(ops["end_s"] > w0) & (ops["start_s"] < w1)].sort_values("start_s", kind="stable")
    shown = sub.head(MAX_DRAWN_OPS)
    ms = 1e3
    y = np.array([index[(d, s)] for d, s in zip(shown["device"], shown["stream"])], dtype=float)
    start, end = shown["start_s"].to_numpy(float) * ms, shown["end_s"].to_numpy(float) * ms
    xfer = np.clip(shown["transfer_start_s"].to_numpy(float) * ms, start, end)
    cls = shown["op_class"].to_numpy(str)
    comm = cls == "comm"
    for c in set(cls):
        m = cls == c
        left = np.where(comm[m], xfer[m], start[m])
        ax.barh(y[m], end[m] - left, left=left, height=0.8, color=CLASS_COLORS.get(c, OTHER_COLOR),
                edgecolor="white", linewidth=0.3)
    spin = comm & (xfer > start)
    if spin.any():
        ax.barh(y[spin], xfer[spin] - start[spin], left=start[spin], height=0.8, color=SPIN_COLOR,
                hatch="////", edgecolor=CLASS_COLORS["comm"], linewidth=0.3)
    px_per_ms = ax.figure.get_figwidth() * 0.8 * ax.figure.dpi / ((w1 - w0) * ms)
    name_px = shown["name"].astype(str).str.len().to_numpy() * 4.5 + 4   # ~6 pt characters
    visible = np.minimum(end, w1 * ms) - np.maximum(start, w0 * ms)
    wide = np.flatnonzero(visible * px_per_ms > name_px)[:400]
    names = shown["name"].astype(str).to_numpy()
    for i in wide:
        mid = (max(start[i], w0 * ms) + min(end[i], w1 * ms)) / 2
        pale = comm[i] and (xfer[i] - start[i]) > (end[i] - xfer[i])     # mostly light spin
        ax.text(mid, y[i], names[i], ha="center", va="center", fontsize=6,
                color="black" if pale else "white", clip_on=True)
    for i in range(1, len(rows)):
        if rows[i][0] != rows[i - 1][0]:
            ax.axhline(i - 0.5, color="black", linewidth=0.6)
    ax.set_yticks(range(len(rows)), [f"device {d} / stream {s} (prio {p})" for d, s, p in rows],
                  fontsize=8)
    ax.set_ylim(len(rows) - 0.5, -0.5)
    ax.set_xlim(w0 * ms, w1 * ms)
    ax.set_xlabel("simulated time (ms)")
    point = ", ".join(f"{k.split('.')[-1]}={v}" for k, v in job.point.items())
    cut = f", first {MAX_DRAWN_OPS} drawn" if len(sub) > len(shown) else ""
    ax.set_title(f"{job.label}" + (f" ({point})" if point else "")
                 + f": {len(sub)} ops in {w0 * ms:.3f}-{w1 * ms:.3f} ms{cut}", fontsize=10, loc="left")
    ax.grid(True, axis="x", alpha=0.25)
    if len(sub) == 0:
        ax.text(0.5, 0.5, "no ops in this window", transform=ax.transAxes, ha="center")


def chrome_trace(traced: list, opts: OutputOptions) -> dict:
    """The Chrome trace event format object (module docstring) for traced (job, ops) pairs."""
    events, jobs_meta = [], []
    per_job = max(1, opts.trace_max_events // len(traced)) if traced else 0
    pid = 0
    for order, (job, ops) in enumerate(traced):
        kept = ops.sort_values("start_s", kind="stable").head(per_job)
        jobs_meta.append({"strategy": job.label, "point": job.point, "ops_total": int(len(ops)),
                          "ops_written": int(len(kept))})
        pids = {}
        for d, s, p in _rows(ops):
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
                          "note": "each traced job keeps its earliest ops by start time",
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
