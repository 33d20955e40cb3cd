"""Strategy comparisons people quote, computed from a run's summary.csv.

For every ordered pair of strategies (A, B) -- rows grouped by the `strategy` label -- within each
group of the other swept settings (see `group_columns`), each strategy's latency-throughput curve is
the piecewise-linear interpolation of its JCT statistic (`jct_mean_s` by default, `jct_p90_s` with
``stat="p90"``) over `throughput_rps`, its successful points sorted by throughput (points that share
a throughput are averaged; points are never extrapolated). Columns of the result:

- Curves end at the saturation knee when the summary sweeps the offered load (see `curve`).
- ``throughput_at_rps``: the common throughput the JCTs are read at. ``at="max"`` (default): the
  highest throughput both curves reach, ``min(max_A, max_B)``; ``at="mid"``: the middle of the
  overlap ``[max(min_A, min_B), min(max_A, max_B)]``.
- ``jct_a_s``, ``jct_b_s``: the interpolated JCTs there; ``jct_ratio_at_equal_throughput`` =
  JCT_A / JCT_B and ``jct_reduction_pct`` = (1 - ratio) * 100 ("A has 36% lower JCT than B at the
  same throughput"). NaN, with a ``reason``, when the curves do not overlap in throughput.
- ``max_throughput_a_rps``, ``max_throughput_b_rps``, ``max_throughput_ratio`` = max_A / max_B
  ("A reaches 1.34x the throughput of B").
- With ``slo_s``: ``max_throughput_under_slo_a_rps`` / ``_b_rps``: the largest throughput at which
  the JCT statistic is <= slo_s: the larger of the highest-throughput *measured* point that meets
  the SLO (every successful point counts, also those past the saturation knee that the curve
  leaves out) and the SLO crossing interpolated on the curve (NaN when no measured point meets
  it); ``max_throughput_under_slo_ratio`` = A / B.
- ``jct_stat``: the summary column used; ``reason``: why a value is NaN, or a caveat (an SLO
  throughput that is only a lower bound because the highest measured point still meets the SLO);
  '' when there is none.

`compare_dir` also writes the table to ``compare.csv`` beside summary.csv (atomically).
"""
from __future__ import annotations

import math
import os
from typing import Optional

import numpy as np
import pandas as pd

from .errors import ConfigError
from .io import write_csv

STATS = {"mean": "jct_mean_s", "p50": "jct_p50_s", "p90": "jct_p90_s", "p99": "jct_p99_s"}
AT_CHOICES = ("max", "mid")
# Swept settings that move a strategy along its latency-throughput curve (the load), rather than
# define a different scenario: arrival rate, closed-loop clients and think time, batch size.
LOAD_PREFIXES = ("workload.arrival.", "workload.batch")
# Descriptor columns the runner writes for every row; a sweep over them defines separate groups.
CONFIG_COLUMNS = ("experiment", "model", "hardware", "devices", "seed")
BASE_COLUMNS = ["strategy_a", "strategy_b", "throughput_at_rps", "jct_a_s", "jct_b_s",
                "jct_ratio_at_equal_throughput", "jct_reduction_pct", "max_throughput_a_rps",
                "max_throughput_b_rps", "max_throughput_ratio"]
SLO_COLUMNS = ["slo_s", "max_throughput_under_slo_a_rps", "max_throughput_under_slo_b_rps",
               "max_throughput_under_slo_ratio"]


def group_columns(summary: pd.DataFrame) -> list[str]:
    """Columns whose values split a summary into separately compared groups.

    These are the descriptor columns (experiment, model, hardware, devices, seed) and every swept
    path column (a dotted name such as ``workload.prompt_tokens.value``) except the load axes in
    `LOAD_PREFIXES`; only columns that take more than one value in `summary` are returned.
    """
    cols = []
    for c in summary.columns:
        c = str(c)
        if c in CONFIG_COLUMNS or ("." in c and not c.startswith(LOAD_PREFIXES)):
            if summary[c].nunique(dropna=False) > 1:
                cols.append(c)
    return cols


def successful(summary: pd.DataFrame, y_col: str = "jct_mean_s") -> pd.DataFrame:
    """Rows without an error and with finite throughput and `y_col`."""
    ok = pd.Series(True, index=summary.index)
    if "error" in summary.columns:
        ok &= summary["error"].astype(object).fillna("").astype(str).str.len() == 0
    for c in ("throughput_rps", y_col):
        ok &= np.isfinite(pd.to_numeric(summary[c], errors="coerce"))
    return summary[ok]


# A point whose throughput does not exceed every lower-load point's by this fraction is past the
# saturation knee: more offered load only queues. Such points leave the curve (they would make it
# fold back on itself), though they still count for the maximum throughput.
SATURATION_GAIN = 0.01
# With an open-loop arrival-rate sweep, a point that serves less than this fraction of its offered
# rate is saturated (below saturation a queue keeps up with its arrivals).
SATURATED_FRACTION = 0.9


def load_column(points: pd.DataFrame) -> Optional[str]:
    """The swept offered-load column (arrival rate, clients), if the summary has exactly one."""
    cols = [c for c in points.columns if str(c).startswith("workload.arrival.")
            and points[c].nunique() > 1]
    return cols[0] if len(cols) == 1 else None


def unsaturated(points: pd.DataFrame) -> pd.DataFrame:
    """The points of a load sweep up to the saturation knee (all points when no load is swept).

    Taken in order of the offered load, a point is kept only while throughput still rises (by more
    than SATURATION_GAIN over every lighter-load point) and, for an arrival-rate sweep, while it
    serves at least SATURATED_FRACTION of its offered rate.
    """
    load = load_column(points)
    if load is None:
        return points
    ordered = points.sort_values(load, kind="stable")
    keep, best = [], -math.inf
    offered = ordered[load].astype(float) if load.endswith("rate_rps") else None
    for i, (idx, x) in enumerate(zip(ordered.index, ordered["throughput_rps"].astype(float))):
        if offered is not None and keep and x < SATURATED_FRACTION * offered.iloc[i]:
            continue
        if x > best * (1.0 + SATURATION_GAIN) or best == -math.inf:
            keep.append(idx)
            best = x
    return points.loc[keep]


def curve(points: pd.DataFrame, y_col: str) -> tuple[np.ndarray, np.ndarray]:
    """(throughput, jct) arrays sorted by throughput, points with equal throughput averaged.

    When the points come from a sweep of offered load, only the `unsaturated` ones: the curve ends
    at the saturation knee instead of running along the saturated plateau or folding back.
    """
    points = unsaturated(points)
    xy = points[["throughput_rps", y_col]].astype(float).groupby("throughput_rps", sort=True)[y_col].mean()
    return xy.index.to_numpy(float), xy.to_numpy(float)


def max_x_under(x: np.ndarray, y: np.ndarray, limit: float) -> float:
    """The largest x at which the piecewise-linear y(x) is <= limit, within [x[0], x[-1]].

    Beyond the last point with y <= limit every later point exceeds it, so the answer is that
    point when it is the last one, else the crossing inside the segment that follows it.
    """
    below = np.flatnonzero(y <= limit)
    if len(below) == 0:
        return math.nan
    i = int(below[-1])
    if i == len(x) - 1:
        return float(x[i])
    frac = (limit - y[i]) / (y[i + 1] - y[i])
    return float(x[i] + frac * (x[i + 1] - x[i]))


def compare_pair(xa, ya, xb, yb, at: str = "max", max_a: Optional[float] = None,
                 max_b: Optional[float] = None) -> dict:
    """Compare curve A with curve B (arrays from `curve`); see the module docstring for columns.
    `max_a`/`max_b`: the highest throughputs measured (default: the curves' last points)."""
    row = dict.fromkeys(BASE_COLUMNS[2:], math.nan)
    reasons = []
    if len(xa) == 0 or len(xb) == 0:
        return {**row, "reason": "no successful points for " + ("A" if len(xa) == 0 else "B")}
    max_a = float(xa[-1]) if max_a is None else float(max_a)
    max_b = float(xb[-1]) if max_b is None else float(max_b)
    row["max_throughput_a_rps"], row["max_throughput_b_rps"] = max_a, max_b
    row["max_throughput_ratio"] = _ratio(max_a, max_b)
    lo, hi = max(xa[0], xb[0]), min(xa[-1], xb[-1])
    if lo > hi:
        reasons.append(f"throughput ranges do not overlap (A {xa[0]:.4g}-{xa[-1]:.4g} rps, "
                       f"B {xb[0]:.4g}-{xb[-1]:.4g} rps)")
    else:
        x = float(hi if at == "max" else (lo + hi) / 2)
        ja, jb = float(np.interp(x, xa, ya)), float(np.interp(x, xb, yb))
        ratio = _ratio(ja, jb)
        row.update(throughput_at_rps=x, jct_a_s=ja, jct_b_s=jb, jct_ratio_at_equal_throughput=ratio,
                   jct_reduction_pct=(1.0 - ratio) * 100.0)
    row["reason"] = "; ".join(reasons)
    return row


def compare_frame(summary_df: pd.DataFrame, slo_s: Optional[float] = None, stat: str = "mean",
                  at: str = "max") -> pd.DataFrame:
    """The comparison table for every ordered pair of strategies within each group of a summary.

    `stat` picks the JCT statistic (mean, p50, p90, p99), `at` where equal-throughput JCTs are read
    (max or mid of the overlap). Rows: group columns (only those that vary), then the module's
    columns, pairs in order of first appearance of the strategies.
    """
    if stat not in STATS:
        raise ConfigError("argument", "stat", f"unknown JCT statistic {stat!r}; allowed: "
                          + ", ".join(STATS))
    if at not in AT_CHOICES:
        raise ConfigError("argument", "at", f"expected one of {', '.join(AT_CHOICES)}, got {at!r}")
    if slo_s is not None and not (isinstance(slo_s, (int, float)) and slo_s > 0):
        raise ConfigError("argument", "--slo-s", f"must be a number > 0, got {slo_s!r}")
    y_col = STATS[stat]
    missing = [c for c in ("strategy", "throughput_rps", y_col) if c not in summary_df.columns]
    if missing:
        raise ConfigError("summary", missing[0], "column missing from the summary")
    groups = group_columns(summary_df)
    columns = groups + BASE_COLUMNS + (SLO_COLUMNS if slo_s is not None else []) + ["jct_stat", "reason"]
    ok = successful(summary_df, y_col)
    rows = []
    keyed = summary_df.groupby(groups, sort=False, dropna=False) if groups else [((), summary_df)]
    for key, frame in keyed:
        key = key if isinstance(key, tuple) else (key,)
        labels = list(dict.fromkeys(frame["strategy"].astype(str)))
        good = ok.loc[ok.index.intersection(frame.index)]
        mine = {lab: good[good["strategy"].astype(str) == lab] for lab in labels}
        curves = {lab: curve(mine[lab], y_col) for lab in labels}
        measured = {lab: (mine[lab]["throughput_rps"].to_numpy(float), mine[lab][y_col].to_numpy(float))
                    for lab in labels}
        peaks = {lab: good.loc[good["strategy"].astype(str) == lab, "throughput_rps"].astype(float).max()
                 for lab in labels}
        for a in labels:
            for b in labels:
                if a == b:
                    continue
                row = {**dict(zip(groups, key)), "strategy_a": a, "strategy_b": b,
                       **compare_pair(*curves[a], *curves[b], at=at, max_a=peaks[a],
                                      max_b=peaks[b]), "jct_stat": y_col}
                if slo_s is not None:
                    _add_slo(row, (curves[a], measured[a]), (curves[b], measured[b]), float(slo_s))
                rows.append(row)
    return pd.DataFrame(rows, columns=columns)


def max_throughput_under_slo(curve_xy, measured_xy, slo_s: float) -> float:
    """The largest throughput whose JCT statistic meets `slo_s`: the best measured point that
    meets it (saturated points included) or the crossing interpolated on the curve, if higher."""
    x, y = measured_xy
    meets = x[y <= slo_s]
    best = float(meets.max()) if len(meets) else math.nan
    crossing = max_x_under(*curve_xy, slo_s) if len(curve_xy[0]) else math.nan
    return float(np.nanmax([best, crossing])) if not (math.isnan(best) and math.isnan(crossing)) \
        else math.nan


def _add_slo(row: dict, a, b, slo_s: float) -> None:
    """`a`, `b`: (curve, measured points) of each strategy, each an (x, y) pair of arrays."""
    ta, tb = max_throughput_under_slo(*a, slo_s), max_throughput_under_slo(*b, slo_s)
    row.update(slo_s=slo_s, max_throughput_under_slo_a_rps=ta, max_throughput_under_slo_b_rps=tb,
               max_throughput_under_slo_ratio=_ratio(ta, tb))
    for name, t, (_, (x, y)) in (("A", ta, a), ("B", tb, b)):
        note = ""
        if math.isnan(t) and len(a[1][0]) and len(b[1][0]):
            note = f"no measured point of {name} meets the SLO of {slo_s:g} s"
        elif len(x) and (y <= slo_s).all():
            note = f"every measured point of {name} meets the SLO (its value is a lower bound)"
        elif len(x) and t >= x.max():
            note = (f"{name}'s highest-throughput measured point meets the SLO (its value is a "
                    "lower bound)")
        if note:
            row["reason"] = f"{row['reason']}; {note}" if row["reason"] else note


def _ratio(a: float, b: float) -> float:
    a, b = float(a), float(b)
    if math.isnan(a) or math.isnan(b) or b == 0:
        return math.nan
    return a / b


def compare_dir(dir: str, slo_s: Optional[float] = None, stat: str = "mean",
                at: str = "max") -> pd.DataFrame:
    """Read DIR/summary.csv, write DIR/compare.csv (atomically) and return the comparison table."""
    path = os.path.join(dir, "summary.csv")
    if not os.path.isfile(path):
        raise ConfigError(dir, "", "no summary.csv in this folder; run `parasim run` first")
    try:
        summary = pd.read_csv(path, keep_default_na=True)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as exc:
        raise ConfigError(path, "", f"cannot read the summary: {exc}") from None
    if "error" in summary.columns:
        summary["error"] = summary["error"].astype(object).fillna("")
    try:
        table = compare_frame(summary, slo_s, stat, at)
    except ConfigError as exc:
        if exc.where == "summary":
            raise ConfigError(path, exc.key, exc.message) from None
        raise
    write_csv(os.path.join(dir, "compare.csv"), table)
    return table
