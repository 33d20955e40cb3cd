"""The run's figures, drawn through matplotlib's Agg canvas (nothing is shown) and saved atomically
and reproducibly: PNGs carry no software version or date, and every loop over a set is sorted,
so identical runs give byte-identical files.

- ``latency_throughput.png``: one subplot (facet) per combination of the swept settings that are
  not the offered load (`compare.group_columns`: model, devices, hardware, prompt length, ...),
  one colour per strategy label (the same in every facet; one shared legend above the facets),
  mean JCT solid and p90 JCT dashed up to the saturation knee (`compare.unsaturated`), points past
  it as hollow markers (more offered load, no more throughput). The x axis is the achieved throughput when the offered load
  (arrival rate, clients) is swept; when it is not and a numeric setting is (e.g. the prompt
  length), that setting becomes the x axis instead of a facet, so a sweep of single requests
  reads as JCT against prompt length rather than as points piled at one throughput. Facets whose
  points all failed or were infeasible say so. No file when no point succeeded.
- ``timeline.png``: one subplot per traced job (the timeline point's strategies, in strategy
  order); rows are device x stream, ops are bars coloured by op class (compute blue, memory green,
  communication red), with a communication op's spin time (from its start until every member has
  started, ``start_s..transfer_start_s``) drawn light and hatched. Gaps are bubbles; two busy rows
  of one device at the same time are overlap. Window: ``outputs.timeline_window_s: [start, end]``
  (seconds of simulated time, the same for every subplot), else, per subplot, the span of
  ``outputs.timeline_ops`` consecutive ops (default 400, by start time) from the middle of the run
  (see `timeline_window`). At most `MAX_DRAWN_OPS` ops are drawn
  per subplot.
- ``serving.png`` (continuous batching only): for the timeline point's jobs, one colour per
  strategy, against simulated time: the running (admitted) requests, the requests waiting for
  admission, and the KV cache in use (percent of its blocks), with preemptions marked.
"""
from __future__ import annotations

import math
import warnings

import matplotlib
import numpy as np
import pandas as pd
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.patches import Patch

from .compare import group_columns, load_column, successful, unsaturated
from .io import atomic_path

MAX_DRAWN_OPS = 20_000
CLASS_COLORS = {"compute": "#1f77b4", "memory": "#2ca02c", "comm": "#d62728"}
SPIN_COLOR = "#f7b6b6"
OTHER_COLOR = "#7f7f7f"
BUSY_SPAN_FACTOR = 2.0
# PNG text chunks matplotlib would write: the software version (no date is written for PNG).
PNG_METADATA = {"Software": None}


def save_png(fig: Figure, file: str) -> None:
    with atomic_path(file) as tmp:
        fig.savefig(tmp, format="png", dpi=110, metadata=PNG_METADATA)


def _short(column: str) -> str:
    return str(column).split(".")[-1]


def _x_axis(summary: pd.DataFrame, ok: pd.DataFrame, groups: list[str]) -> str:
    """The x column: throughput when the load is swept, else the last swept numeric setting."""
    if load_column(ok) is not None:
        return "throughput_rps"
    numeric = [g for g in groups if "." in g
               and pd.to_numeric(summary[g], errors="coerce").notna().all()]
    return numeric[-1] if numeric else "throughput_rps"


def plot_latency_throughput(summary: pd.DataFrame, file: str) -> bool:
    """Draw the faceted latency plot (module doc); False (and no file) when no point succeeded."""
    if "strategy" not in summary.columns or "throughput_rps" not in summary.columns:
        return False
    ok = successful(summary, "jct_mean_s")
    if len(ok) == 0:
        return False
    groups = group_columns(summary)
    x_col = _x_axis(summary, ok, groups)
    facet_cols = [g for g in groups if g != x_col]
    facets = list(summary.groupby(facet_cols, sort=False, dropna=False)) if facet_cols \
        else [((), summary)]
    scale, unit = (1e3, "ms") if float(ok[["jct_mean_s", "jct_p90_s"]].max().max()) < 2 else (1.0, "s")
    ncols = 1 if len(facets) == 1 else 2 if len(facets) in (2, 4) else 3
    nrows = math.ceil(len(facets) / ncols)
    fig = Figure(figsize=(7.5 if ncols == 1 else 4.6 * ncols + 1.0, 3.3 * nrows + 1.0))
    axes = fig.subplots(nrows, ncols, squeeze=False).ravel()
    cycle = [c["color"] for c in matplotlib.rcParams["axes.prop_cycle"]]
    labels = list(dict.fromkeys(summary["strategy"].astype(str)))
    colors = {lab: cycle[i % len(cycle)] for i, lab in enumerate(labels)}
    for ax, (key, rows) in zip(axes, facets):
        key = key if isinstance(key, tuple) else (key,)
        _draw_facet(ax, ok.loc[ok.index.intersection(rows.index)], x_col, colors, scale)
        ax.set_title(", ".join(f"{_short(g)}={v}" for g, v in zip(facet_cols, key)), fontsize=9)
        ax.set_xlabel("achieved throughput (requests/s)" if x_col == "throughput_rps"
                      else _short(x_col).replace("_", " "), fontsize=9)
        ax.set_ylabel(f"job completion time ({unit})", fontsize=9)
    for ax in axes[len(facets):]:
        ax.set_visible(False)
    handles = [Line2D([], [], color=colors[lab], linestyle="-", marker="o", label=lab) for lab in labels]
    handles += [Line2D([], [], color="black", linestyle="-", marker="o", label="mean JCT"),
                Line2D([], [], color="black", linestyle="--", marker="s", markersize=4, label="p90 JCT")]
    if x_col == "throughput_rps" and len(ok) > len(_unsaturated_rows(ok)):
        handles.append(Line2D([], [], color="black", linestyle="", marker="o", markerfacecolor="none",
                              label="saturated (mean JCT)"))
    title = "Latency vs " + ("throughput" if x_col == "throughput_rps" else _short(x_col).replace("_", " "))
    if "experiment" in summary.columns:
        title += f": {summary['experiment'].iloc[0]}"
    fig.text(0.5, 1 - 0.08 / fig.get_figheight(), title, ha="center", va="top", fontsize=11)
    fig.legend(handles=handles, loc="upper center", bbox_to_anchor=(0.5, 1 - 0.35 / fig.get_figheight()),
               ncol=min(len(handles), 6), fontsize=8, frameon=False)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        fig.tight_layout(rect=(0, 0, 1, 1 - 0.7 / fig.get_figheight()))
    save_png(fig, file)
    return True


def _unsaturated_rows(ok: pd.DataFrame) -> pd.DataFrame:
    keys = ["strategy"] + group_columns(ok)
    return pd.concat([unsaturated(g) for _, g in ok.groupby(keys, sort=False, dropna=False)])


def _draw_facet(ax, ok: pd.DataFrame, x_col: str, colors: dict, scale: float) -> None:
    ax.grid(True, alpha=0.3)
    if len(ok) == 0:
        ax.text(0.5, 0.5, "no point ran here\n(infeasible or failed: see summary.csv)",
                transform=ax.transAxes, ha="center", va="center", fontsize=9, color="#555555")
        ax.set_xticks([])
        ax.set_yticks([])
        return
    for label, pts in ok.groupby(ok["strategy"].astype(str), sort=False):
        knee = unsaturated(pts) if x_col == "throughput_rps" else pts
        pts = pts.sort_values(x_col, kind="stable")
        line = knee.sort_values(x_col, kind="stable")
        x = line[x_col].to_numpy(float)
        ax.plot(x, line["jct_mean_s"].to_numpy(float) * scale, "-o", color=colors[label], markersize=4)
        if "jct_p90_s" in line:
            ax.plot(x, line["jct_p90_s"].to_numpy(float) * scale, "--s", color=colors[label],
                    alpha=0.8, markersize=3)
        past = pts.loc[pts.index.difference(knee.index)]
        if len(past):                       # saturated: more offered load, no more throughput
            ax.plot(past[x_col].to_numpy(float), past["jct_mean_s"].to_numpy(float) * scale, "o",
                    markerfacecolor="none", color=colors[label], markersize=5)
    x = ok[x_col].to_numpy(float)
    if x_col == "throughput_rps" and x.max() - x.min() < 0.1 * x.max():
        ax.set_xlim(left=0, right=x.max() * 1.1)      # a few close points: do not zoom into noise
    elif x_col != "throughput_rps" and x.min() > 0 and x.max() / x.min() >= 8:
        ax.set_xscale("log", base=2)
        ticks = sorted(set(x.tolist()))
        ax.set_xticks(ticks, [f"{v:g}" for v in ticks])
    ax.set_ylim(bottom=0)
    ax.tick_params(labelsize=8)


def timeline_window(ops: pd.DataFrame, opts) -> tuple[float, float]:
    """The configured window, else the span of `opts.timeline_ops` consecutive ops (by start time)
    from the middle of the run: of the busy windows (a span at most `BUSY_SPAN_FACTOR` x the
    shortest), the one that starts nearest the run's middle op. Mid-run, a loaded pipeline is full
    and overlapping streams work (at the start the first request runs alone); a busy window never
    spans idle time between requests that arrive far apart."""
    if opts.timeline_window_s is not None:
        return opts.timeline_window_s
    if len(ops) == 0:
        return (0.0, 1.0)
    ordered = ops.sort_values("start_s", kind="stable")
    n = min(opts.timeline_ops, len(ordered))
    starts = ordered["start_s"].to_numpy(float)
    last_end = ordered["end_s"].rolling(n, min_periods=1).max().to_numpy(float)
    spans = last_end[n - 1:] - starts[:len(starts) - n + 1]      # window i: ops i .. i + n - 1
    busy = np.flatnonzero(spans <= BUSY_SPAN_FACTOR * spans.min())
    middle = max(0, len(ordered) // 2 - n // 2)
    first = int(busy[np.argmin(np.abs(busy - middle))])
    lo, hi = float(starts[first]), float(last_end[first + n - 1])
    return (lo, hi if hi > lo else lo + 1e-6)


def stream_rows(ops: pd.DataFrame) -> list[tuple[int, int, int]]:
    """(device, stream, priority) of every stream in the trace, sorted."""
    rows = ops[["device", "stream", "priority"]].drop_duplicates(["device", "stream"])
    return sorted((int(d), int(s), int(p)) for d, s, p in rows.itertuples(index=False))


def plot_timeline(traced: list, opts, file: str) -> None:
    """One subplot per traced (job, ops frame), rows device x stream, in a window (module doc)."""
    heights = [max(len(stream_rows(ops)), 1) for _, ops in traced]
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
    save_png(fig, file)


def _draw_timeline(ax, job, ops: pd.DataFrame, opts) -> None:
    rows = stream_rows(ops)
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
    for c in sorted(set(cls)):
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


def plot_serving(steps: list, file: str) -> bool:
    """serving.png from [(label, steps frame)] (steps.csv's columns); False when none has steps."""
    steps = [(label, df) for label, df in steps if df is not None and len(df)]
    if not steps:
        return False
    fig = Figure(figsize=(10, 7.5))
    axes = fig.subplots(3, 1, sharex=True)
    colors = matplotlib.colormaps["tab10"]
    for i, (label, df) in enumerate(steps):
        c = colors(i % 10)
        t = df["time_s"].to_numpy()
        axes[0].plot(t, df["running"].to_numpy(), color=c, lw=0.8, label=label)
        axes[1].plot(t, df["waiting"].to_numpy(), color=c, lw=0.8)
        used = 100.0 * df["kv_blocks_used"].to_numpy() / np.maximum(df["kv_blocks_total"], 1)
        axes[2].plot(t, used, color=c, lw=0.8)
        hit = df["preempted"].to_numpy() > 0
        if hit.any():
            axes[2].plot(t[hit], used[hit], "x", color=c, ms=4)
    axes[0].set_ylabel("running requests")
    axes[1].set_ylabel("waiting requests")
    axes[2].set_ylabel("KV cache used (%)")
    axes[2].set_xlabel("simulated time (s)")
    axes[2].set_ylim(0, 105)
    axes[0].legend(loc="upper right", fontsize=8)
    axes[0].set_title("continuous batching: batch size, queue and KV cache (x: a preemption)")
    for ax in axes:
        ax.grid(alpha=0.3)
    fig.tight_layout()
    save_png(fig, file)
    return True


def plot_pareto(frame: pd.DataFrame, file: str, winner=None) -> bool:
    """pareto.png of a search: goodput per GPU against p90 end-to-end latency at each
    configuration's best rate, one colour per strategy, the Pareto front (no other configuration
    has more goodput per GPU and less latency) joined, the winner ringed. False when no
    configuration has a best rate."""
    ok = frame[frame["goodput_per_gpu_rps"].notna() & frame["jct_p90_s"].notna()]
    if ok.empty:
        return False
    fig = Figure(figsize=(8, 5.5))
    ax = fig.subplots()
    colors = matplotlib.colormaps["tab10"]
    for i, (label, df) in enumerate(sorted(ok.groupby("strategy"), key=lambda kv: kv[0])):
        ax.scatter(df["jct_p90_s"], df["goodput_per_gpu_rps"], color=colors(i % 10), label=label,
                   s=30, zorder=3)
    pts = ok.sort_values(["jct_p90_s", "goodput_per_gpu_rps"], ascending=[True, False])
    front, best = [], -math.inf
    for _, r in pts.iterrows():
        if r["goodput_per_gpu_rps"] > best:
            front.append((r["jct_p90_s"], r["goodput_per_gpu_rps"]))
            best = r["goodput_per_gpu_rps"]
    if len(front) > 1:
        ax.plot(*zip(*front), color="#444444", lw=1, ls="--", zorder=2, label="Pareto front")
    if winner is not None and winner in ok.index:
        w = ok.loc[winner]
        ax.scatter([w["jct_p90_s"]], [w["goodput_per_gpu_rps"]], s=160, facecolors="none",
                   edgecolors="black", lw=1.5, zorder=4, label="winner")
    ax.set_xlabel("p90 end-to-end latency at the best rate (s)")
    ax.set_ylabel("goodput per GPU (req/s)")
    ax.set_title("search: each configuration at the highest rate meeting the SLO")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="best")
    fig.tight_layout()
    save_png(fig, file)
    return True
