"""How far the roofline cost model lands from AIConfigurator's measured kernel times.

For one hardware profile and one slice of the database (system, framework, version), every measured
row becomes the op parasim would launch (a GEMM, a prefill or decode attention, a collective), the
cost model prices it with the profile alone (no measured tables), and `comparison` returns one row
per op with both times. `summary` gives the median and 90th-percentile absolute relative error per
op family; `benchmarks/database_errors.py` prints it and `tests/test_cost_aiconfigurator.py` holds
the medians to the issue's bounds.
"""
from __future__ import annotations

from dataclasses import replace

import numpy as np
import pandas as pd

from . import aiconfigurator as aic
from .cost import CostModel
from .hardware import HardwareProfile
from .ops import Attention, Collective, Gemm

# profile name -> AIConfigurator system
SYSTEMS = {"a100-sxm4-80gb": "a100_sxm", "h100-sxm5-80gb": "h100_sxm",
           "h200-sxm-141gb": "h200_sxm", "b200-sxm-180gb": "b200_sxm", "l40s-48gb": "l40s"}
COLUMNS = ["family", "shape", "measured_s", "predicted_s"]


def _roofline(profile: HardwareProfile) -> CostModel:
    return CostModel(replace(profile, measured_tables={}))


def gemm_rows(cost: CostModel, ref: aic.DatabaseRef, dtypes=("bf16",), every: int = 1) -> list:
    table = aic.gemm_table(ref)
    rows = [row for row in table.rows if row[0][2] in dtypes][::every]
    out = []
    for (n, k, dtype), m, seconds in rows:
        op = Gemm(m, n, k, dtype, out_dtype="bf16")
        family = "gemm" if dtype != "fp8" else "gemm_fp8"
        out.append((family, f"m={m} n={n} k={k} {dtype}", seconds, cost.seconds(op)))
    return out


def attention_rows(cost: CostModel, ref: aic.DatabaseRef, every: int = 1) -> list:
    out = []
    for df, _ in aic.attention_frames(ref):
        if df is None:
            continue
        for r in df.iloc[::every].itertuples(index=False):
            decode = r.q_len == 1
            op = Attention(r.batch_size, r.q_len, r.kv_len, r.num_heads, r.num_key_value_heads,
                           r.head_dim, True, "bf16" if r.attn_dtype == "bfloat16" else "fp16")
            family = "attention_decode" if decode else "attention_prefill"
            out.append((family, f"b={r.batch_size} q={r.q_len} kv={r.kv_len} h={r.num_heads}/"
                        f"{r.num_key_value_heads}x{r.head_dim}", r.latency * 1e-3, cost.seconds(op)))
    return out


def allreduce_rows(cost: CostModel, ref: aic.DatabaseRef, execution: str) -> list:
    """All-reduces of the execution mode: NCCL (eager) or the custom all-reduce (graphs)."""
    if execution == "graphs":
        frame, _ = aic.custom_allreduce_frame(ref)
        rows = [] if frame is None else [(n, b, lat) for n, b, lat in frame.itertuples(index=False)]
    else:
        frame, _ = aic.nccl_frame(ref)
        rows = [] if frame is None else [
            (n, b, lat) for f, n, b, lat in frame.itertuples(index=False) if f == "all_reduce"]
    out = []
    for n, nbytes, lat in rows:
        if n > cost.hw.max_devices:
            continue
        op = Collective("all_reduce", float(nbytes), tuple(range(n)))
        out.append((f"all_reduce_{execution}", f"n={n} bytes={nbytes}", lat * 1e-3, cost.seconds(op)))
    return out


def comparison(profile: HardwareProfile, ref: aic.DatabaseRef, execution: str = "eager",
               every: int = 1) -> pd.DataFrame:
    """One row per measured op: family, shape, measured and predicted seconds (roofline only).
    `every`: keep every n-th GEMM and attention row (a quick, deterministic subsample)."""
    cost = _roofline(profile.for_execution(execution))
    rows = gemm_rows(cost, ref, every=every) + attention_rows(cost, ref, every=every)
    if "fp8" in cost.hw.device.peak_flops:
        rows += gemm_rows(cost, ref, ("fp8",), every=every)
    rows += allreduce_rows(cost, ref, execution)
    return pd.DataFrame(rows, columns=COLUMNS)


def summary(frame: pd.DataFrame) -> pd.DataFrame:
    """Per family: rows, median and p90 absolute relative error, and the median signed ratio
    predicted / measured (above 1: the model is slow)."""
    rel = frame["predicted_s"] / frame["measured_s"]
    frame = frame.assign(abs_err=np.abs(rel - 1.0), ratio=rel)
    g = frame.groupby("family")
    return pd.DataFrame({"rows": g.size(), "median_abs_err": g["abs_err"].median(),
                         "p90_abs_err": g["abs_err"].quantile(0.9),
                         "median_ratio": g["ratio"].median()}).reset_index()
