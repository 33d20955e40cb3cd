"""Metrics computed from a trace (the seam shared by simulated and measured runs).

Per request: JCT (job completion time, the end-to-end latency: finish - arrival), TTFT (first
token - arrival), TPOT (time per output token after the first: (finish - first token) /
(output_tokens - 1), none for a single-pass request), queueing delay (first op's start - arrival)
and, with an SLO (`Slo`, the experiment's ``slo`` key), whether it met every bound given
(``meets_slo``). Per run: JCT mean/p50/p90/p99, throughput (measured requests over the span from the
first measured arrival to the last measured finish; and, as the Liger artifact counts it, from the
first measured request's start), TTFT, TPOT and queueing percentiles, input and output tokens per
second and goodput (requests meeting the SLO) over the same span, the fraction of the run each
device is busy, and the exposed communication time: per device, the time some communication op
transfers while no compute or memory op runs. A collective's spin (from its start on a device
until every member has started it) is reported apart, as `spin_s`: the device holds the op but
moves no data. Percentiles interpolate linearly between ranks (numpy's default).
Warm-up requests (``measured == False``) are left out of every request metric.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Optional

import numpy as np
import pandas as pd

from .errors import ConfigError
from .schema import Section
from .trace import Trace

SLO_KEYS = ("ttft_s", "tpot_s")


@dataclass(frozen=True)
class Slo:
    """Per-request latency bounds (seconds); None: no bound on that metric. A request meets the
    SLO when its TTFT <= ttft_s and its TPOT <= tpot_s; a single-pass request (no TPOT) meets any
    TPOT bound."""
    ttft_s: Optional[float] = None
    tpot_s: Optional[float] = None

    def met(self, ttft_s: np.ndarray, tpot_s: np.ndarray) -> np.ndarray:
        ok = np.ones(len(ttft_s), dtype=bool)
        if self.ttft_s is not None:
            ok &= ttft_s <= self.ttft_s
        if self.tpot_s is not None:
            ok &= np.isnan(tpot_s) | (tpot_s <= self.tpot_s)
        return ok


def parse_slo(value: Any, where: str, key: str = "slo") -> Optional[Slo]:
    """The experiment's ``slo`` mapping: ``{ttft_s: X, tpot_s: Y}``, either or both, each a
    positive finite number of seconds; None when absent."""
    if value is None:
        return None
    sec = Section(value, where, key)
    bounds = {k: sec.get(k, float, None, min=0.0, min_open=True) for k in SLO_KEYS}
    sec.done()
    if all(v is None for v in bounds.values()):
        raise ConfigError(where, key, "give ttft_s, tpot_s or both (seconds > 0), or leave slo out")
    return Slo(**bounds)


def request_metrics(trace: Trace, slo: Optional[Slo] = None) -> pd.DataFrame:
    """The trace's requests with jct_s, ttft_s, queue_s, tpot_s and, with an SLO, meets_slo."""
    df = trace.request_frame()
    if df.empty:
        empty = dict(jct_s=[], ttft_s=[], tpot_s=[], queue_s=[])
        return df.assign(**empty, **({"meets_slo": []} if slo else {}))
    df["jct_s"] = df["finish_s"] - df["arrival_s"]
    df["ttft_s"] = df["first_token_s"] - df["arrival_s"]
    df["queue_s"] = df["start_s"] - df["arrival_s"]
    gen = df["output_tokens"] > 1
    df["tpot_s"] = np.where(gen, (df["finish_s"] - df["first_token_s"])
                            / np.maximum(df["output_tokens"] - 1, 1), np.nan)
    if slo is not None:
        df["meets_slo"] = slo.met(df["ttft_s"].to_numpy(float), df["tpot_s"].to_numpy(float))
    return df


def union_length(starts: np.ndarray, ends: np.ndarray) -> float:
    """Total length of the union of intervals [starts[i], ends[i])."""
    if len(starts) == 0:
        return 0.0
    order = np.argsort(starts, kind="stable")
    s = starts[order]
    e = np.maximum.accumulate(ends[order])
    # a new merged segment starts where s exceeds every earlier end
    new = np.empty(len(s), dtype=bool)
    new[0] = True
    new[1:] = s[1:] > e[:-1]
    seg_start = s[new]
    idx = np.flatnonzero(new)
    seg_end = e[np.r_[idx[1:] - 1, len(s) - 1]]
    return float(np.sum(seg_end - seg_start))


def device_metrics(trace: Trace) -> pd.DataFrame:
    """Per device: busy time (compute or transferring), compute time, communication (transfer)
    time, exposed communication time and spin time (waiting for a collective's peers), from the
    totals the recorder accumulated over every op of the run (kept rows or not)."""
    span = float(trace.meta.get("makespan_s", 0.0)) or 1.0
    rows = [{"device": s.device, "busy_s": s.busy_s, "busy_fraction": s.busy_s / span,
             "compute_s": s.compute_s, "comm_s": s.comm_s, "exposed_comm_s": s.busy_s - s.compute_s,
             "spin_s": s.spin_s} for s in trace.devices]
    return pd.DataFrame(rows, columns=["device", "busy_s", "busy_fraction", "compute_s", "comm_s",
                                       "exposed_comm_s", "spin_s"])


def _pct(x: np.ndarray, q: float) -> float:
    return float(np.percentile(x, q)) if len(x) else math.nan


def summarize(trace: Trace, slo: Optional[Slo] = None) -> dict:
    """One row of run metrics (seconds, requests per second, tokens per second)."""
    req = request_metrics(trace, slo)
    m = req[req["measured"]] if len(req) else req
    out: dict = {"requests": int(len(m))}
    if len(m):
        jct = m["jct_s"].to_numpy()
        out.update(jct_mean_s=float(jct.mean()), jct_p50_s=float(np.percentile(jct, 50)),
                   jct_p90_s=float(np.percentile(jct, 90)), jct_p99_s=float(np.percentile(jct, 99)))
        span = float(m["finish_s"].max() - m["arrival_s"].min())
        per_s = (1.0 / span) if span > 0 else math.nan
        out["throughput_rps"] = len(m) * per_s
        # the Liger artifact's definition: from the first measured request's start (so that
        # warm-up requests' service does not count when all arrive at once)
        served = float(m["finish_s"].max() - m["start_s"].min())
        out["throughput_from_start_rps"] = len(m) / served if served > 0 else float("nan")
        out["ttft_mean_s"] = float(m["ttft_s"].mean())
        out["ttft_p90_s"] = float(np.percentile(m["ttft_s"], 90))
        tpot = m["tpot_s"].dropna()
        out["tpot_mean_s"] = float(tpot.mean()) if len(tpot) else float("nan")
        ttft, queue = m["ttft_s"].to_numpy(float), m["queue_s"].to_numpy(float)
        tpot = tpot.to_numpy(float)
        out.update(ttft_p50_s=_pct(ttft, 50), ttft_p99_s=_pct(ttft, 99),
                   tpot_p50_s=_pct(tpot, 50), tpot_p90_s=_pct(tpot, 90), tpot_p99_s=_pct(tpot, 99),
                   queue_mean_s=float(queue.mean()), queue_p90_s=_pct(queue, 90),
                   queue_p99_s=_pct(queue, 99))
        batch = m["batch"].to_numpy(np.int64)          # tokens of every sequence of a request
        for name, col in (("input", "prompt_tokens"), ("output", "output_tokens")):
            out[f"{name}_tokens_per_s"] = float((m[col].to_numpy(np.int64) * batch).sum()) * per_s
        out["goodput_rps"] = float(m["meets_slo"].sum()) * per_s if slo is not None else math.nan
    dev = device_metrics(trace)
    if len(dev):
        out["busy_fraction"] = float(dev["busy_fraction"].mean())
        out["exposed_comm_s"] = float(dev["exposed_comm_s"].mean())
        out["spin_s"] = float(dev["spin_s"].mean())
        out["exposed_comm_fraction"] = float((dev["exposed_comm_s"] / dev["busy_s"].clip(lower=1e-30)).mean())
    out.update(batching_metrics(trace))
    out["makespan_s"] = float(trace.meta.get("makespan_s", 0.0))
    out["ops"] = trace.total_ops
    return out


def batching_metrics(trace: Trace) -> dict:
    """Continuous batching only (empty otherwise): inter-token latency over every gap between
    consecutive tokens of a request (mean, p50, p90, p99), steps, mean sequences per step, mean
    and peak KV-cache use (fraction of its blocks, per step) and preemptions."""
    if not trace.steps:
        return {}
    out: dict = {}
    gaps = np.asarray(trace.itl_s, dtype=float)
    if len(gaps):
        out.update(itl_mean_s=float(gaps.mean()), itl_p50_s=float(np.percentile(gaps, 50)),
                   itl_p90_s=float(np.percentile(gaps, 90)),
                   itl_p99_s=float(np.percentile(gaps, 99)))
    seqs = np.fromiter((s.seqs for s in trace.steps), float, len(trace.steps))
    used = np.fromiter((s.kv_blocks_used / max(s.kv_blocks_total, 1) for s in trace.steps), float,
                       len(trace.steps))
    out.update(steps=len(trace.steps), batch_seqs_mean=float(seqs.mean()),
               kv_used_mean_fraction=float(used.mean()), kv_used_peak_fraction=float(used.max()),
               preemptions=int(trace.meta.get("preemptions", 0)))
    return out
