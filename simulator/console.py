"""What `parasim run` prints: the summary table, infeasible and failed points, the dry-run plan and
the strategy listing. Tables go to stdout, problems to stderr; numbers are formatted one way per
unit (times in ms, rates with three decimals, fractions as percentages, integers as integers) and
a missing value is ``-``.
"""
from __future__ import annotations

import math
import os
import re
import sys
from dataclasses import MISSING, fields
from typing import Optional, TextIO

import pandas as pd

MISSING_MARK = "-"
# (summary column, header, kind) in display order, after strategy/model/hardware/devices/swept
METRIC_COLUMNS = [
    ("requests", "requests", "int"),
    ("jct_mean_s", "jct_mean_ms", "ms"), ("jct_p50_s", "jct_p50_ms", "ms"),
    ("jct_p90_s", "jct_p90_ms", "ms"), ("jct_p99_s", "jct_p99_ms", "ms"),
    ("throughput_rps", "throughput_rps", "rate"), ("goodput_rps", "goodput_rps", "rate"),
    ("ttft_mean_s", "ttft_mean_ms", "ms"), ("tpot_mean_s", "tpot_mean_ms", "ms"),
    ("busy_fraction", "busy_%", "pct"),
    ("exposed_comm_s", "exposed_comm_ms", "ms"), ("exposed_comm_fraction", "exposed_comm_%", "pct"),
]
DESCRIPTOR_COLUMNS = ("experiment", "strategy", "model", "hardware", "devices")
SHOWN_WHEN_SET = ("goodput_rps",)        # only when some row has a value (an experiment with slo)


def fmt(value, kind: str) -> str:
    """One cell: `kind` is ms (seconds shown in ms), rate, pct (a fraction), int or text."""
    if value is None or value is pd.NA or (isinstance(value, float) and math.isnan(value)):
        return MISSING_MARK
    if kind == "text":
        return str(value)
    try:
        v = float(value)
    except (TypeError, ValueError):
        return str(value)
    if not math.isfinite(v):
        return MISSING_MARK
    if kind == "ms":
        return f"{v * 1e3:.2f}"
    if kind == "rate":
        return f"{v:.3f}"
    if kind == "pct":
        return f"{v * 100:.1f}"
    if kind == "int":
        return f"{int(round(v)):d}"
    return f"{v:g}"


def status_of(error) -> str:
    text = "" if error is None or error is pd.NA or error != error else str(error)
    if not text:
        return "ok"
    return "infeasible" if text.startswith("infeasible: ") else "failed"


def summary_table(summary: pd.DataFrame) -> str:
    """The summary as an aligned text table (module docstring), one row per job."""
    swept = [c for c in summary.columns if "." in str(c)]
    cols = [("strategy", "strategy", "text"), ("model", "model", "text")]
    if "hardware" in summary and summary["hardware"].nunique() > 1:
        cols.append(("hardware", "hardware", "text"))
    cols.append(("devices", "devices", "int"))
    if "execution" in summary:                  # a swept execution mode (eager | graphs)
        cols.append(("execution", "execution", "text"))
    cols += [(c, str(c).split(".")[-1], "num") for c in swept]
    cols += [c for c in METRIC_COLUMNS if c[0] in summary.columns and not (
        c[0] in SHOWN_WHEN_SET and pd.to_numeric(summary[c[0]], errors="coerce").isna().all())]
    table = pd.DataFrame({head: [fmt(v, kind) for v in summary[col]] for col, head, kind in cols})
    table["status"] = [status_of(e) for e in summary.get("error", pd.Series([""] * len(summary)))]
    return table.to_string(index=False)


def print_summary(summary: pd.DataFrame, stream: Optional[TextIO] = None) -> None:
    print(summary_table(summary), file=stream or sys.stdout)


def print_problems(report, out_dir: str, stream: Optional[TextIO] = None) -> None:
    """Infeasible points as a count and their distinct reasons; failed points one by one."""
    stream = stream or sys.stderr
    jobs = report.plan.jobs
    csv = os.path.join(out_dir, "summary.csv")
    if report.plan.infeasible:
        print(f"{len(report.plan.infeasible)} of {len(jobs)} job(s) (sweep point x strategy) infeasible, "
              f"skipped (the "
              f"'error' column of {csv} has each one's reason):", file=stream)
        for line in infeasible_lines(jobs, report.plan.infeasible):
            print(f"  {line}", file=stream)
    if report.failed:
        print(f"{len(report.failed)} of {len(jobs)} job(s) failed while simulating "
              "(exit status 1):", file=stream)
        for res in report.failed:
            print(f"  {_point_name(jobs[res.index])}: {res.error}", file=stream)


def infeasible_lines(jobs: list, infeasible: dict) -> list[str]:
    """Infeasible jobs grouped by reason (numbers aside): the count, the settings they share, and
    the first reason in full."""
    groups: dict = {}
    for index, reason in infeasible.items():
        groups.setdefault(re.sub(r"\d+(\.\d+)?", "#", reason), []).append(index)
    lines = []
    for members in groups.values():
        points = [jobs[i].point for i in members]
        shared = [f"{k.split('.')[-1]}={v}" for k, v in points[0].items()
                  if all(p.get(k) == v for p in points)]
        variants = len({infeasible[i] for i in members})
        more = f" (and {variants - 1} similar)" if variants > 1 else ""
        lines.append(f"{len(members)} x" + (f" at {', '.join(shared)}" if shared else "")
                     + f": {infeasible[members[0]]}{more}")
    return lines


def _point_name(job) -> str:
    point = ", ".join(f"{k.split('.')[-1]}={v}" for k, v in job.point.items())
    return job.label + (f" ({point})" if point else "")


def print_plan(plan, stream: Optional[TextIO] = None) -> None:
    """The dry run: every sweep point with its index, and each infeasible job's reason."""
    stream = stream or sys.stdout
    from .outputs import sweep_points
    points = sweep_points(plan.jobs)
    width = len(points[0]) if points else 0
    print(f"{plan.path}: {len(plan.jobs)} job(s) = {len(points)} sweep point(s) x {width} "
          f"strateg{'y' if width == 1 else 'ies'}; {len(plan.jobs) - len(plan.infeasible)} "
          f"feasible, {len(plan.infeasible)} infeasible", file=stream)
    for i, group in enumerate(points):
        settings = ", ".join(f"{k}={v}" for k, v in group[0].point.items()) or "(no swept axis)"
        bad = [j for j in group if j.index in plan.infeasible]
        state = "ok" if not bad else "all infeasible" if len(bad) == len(group) else "partly infeasible"
        print(f"  point {i}: {settings}: {state}", file=stream)
        for j in bad:
            print(f"    {j.label}: infeasible: {plan.infeasible[j.index]}", file=stream)
    print(f"timeline point: {plan.timeline.describe()}", file=stream)


def strategy_lines() -> list[str]:
    """Each registered strategy with its parameters, types and defaults (from its Params)."""
    import importlib

    import strategies
    lines = []
    for name in strategies.names():
        cls = strategies.get(name)
        doc = (importlib.import_module(cls.__module__).__doc__ or "").strip().splitlines()
        first = (doc[0] if doc else "").removeprefix(f"`{name}`: ")
        lines.append(f"{name}: {first}".rstrip())
        for f in fields(cls.Params):
            default = f.default if f.default is not MISSING else "(required)"
            lines.append(f"    {f.name}: {f.type} = {default!r}" if default != "(required)"
                         else f"    {f.name}: {f.type} (required)")
    return lines
