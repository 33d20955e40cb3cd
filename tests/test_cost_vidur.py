"""The built-in A100 SXM and H100 SXM profiles against Vidur's measurements (microsoft/vidur, MIT).

Predicted by `CostModel` with the shipped profiles, compared with Vidur's median kernel times:
the four projection GEMMs of Llama-2-7b and -70b (every row: 1-4096 tokens, tensor parallel 1-8),
single-node all-reduce at n = 2, 4, 8, and send/recv between two devices of one node. The data are
read from ``../shared/data/vidur`` beside the repository (never copied into it); the module is
skipped where that folder is absent. Vidur's network ``size`` column is in bytes (see
benchmarks/fit_vidur.py for why). Each test attaches its median absolute percentage error with
``record_property``; ``python benchmarks/fit_vidur.py`` prints the full error tables.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

import dataclasses
import sys

from simulator.cost import CostModel, collective_factor
from simulator.hardware import LinkParams, Regime, load_hardware
from simulator.ops import Collective, Gemm, SendRecv

DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "vidur"
if not (DATA / "network").is_dir() or not (DATA / "compute").is_dir():
    pytest.skip(f"Vidur measurements not found at {DATA} (they live beside the repository, in "
                "../shared/data/vidur; a plain clone has none)", allow_module_level=True)

DEVICES = {"a100": ("a100-sxm4-80gb", "a100_dgx"), "h100": ("h100-sxm5-80gb", "h100_dgx")}
# The built-in A100 and H100 profiles carry the fit to AIConfigurator's newer measurements
# (benchmarks/fit_aiconfigurator.py; docs/hardware.md has both fits' errors). What is tested here is
# that the cost model's structure explains Vidur's measurements too: the profile with the numbers
# benchmarks/fit_vidur.py fits to them (GEMM and memory efficiency with a 3 us kernel overhead;
# all-reduce regimes fitted here with its `fit_regimes`). Send/recv has only Vidur's data, so the
# profile's own numbers are tested.
VIDUR_GEMM_FIT = {"a100": (0.795, 0.735), "h100": (0.775, 0.82)}
VIDUR_KERNEL_OVERHEAD_S = 3e-6
MODELS = ("Llama-2-7b-hf", "Llama-2-70b-hf")
FAMILIES = ("attn_pre_proj", "attn_post_proj", "mlp_up_proj", "mlp_down_proj")

# Bounds on the median absolute percentage error, with the reason for each.
# GEMM: the roofline with tile, wave and split-K plans, after fitting two efficiencies, lands at 5.5%
# (A100) and 7.2% (H100) over all 8352 GEMMs; per family (both models) 4.9-6.9% (A100) and 5.7-9.4%
# (H100). The bounds leave ~1.5 points of room for refits: a regression of the plan model breaks them.
GEMM_FAMILY_BOUND_PCT = 11.0
GEMM_ALL_BOUND_PCT = 8.0
# Worst single row: before split-K the 1-64 token QKV GEMM of Llama-2-70b at TP 8 was predicted at
# 2.3x its measured 19 us (A100); with split-K the worst rows are 42% (A100) and 50% (H100), mid-size
# (64-272 token) GEMMs that cuBLAS runs slower than the tile model expects.
GEMM_WORST_BOUND_PCT = 55.0
# TP decode: Llama-2-70b QKV at TP 8 with 1-64 tokens (measured 19 us A100, 12-13 us H100), the case
# split-K exists for: median abs error 7.2% (A100) and 11.0% (H100), both under-predictions.
TP_DECODE_QKV_BOUND_PCT = 20.0
# All-reduce: the minimum over (up to) two protocol regimes per group size: medians 1.9/3.0/2.5%
# (A100 n = 2/4/8) and 4.8/5.1/2.0% (H100; n = 4 has one regime, the data support no second one).
ALL_REDUCE_BOUND_PCT = 6.0
# Send/recv: A100 bandwidth peaks at 16-32 MiB (258 GB/s) and falls at 64 MiB (228), which a
# constant bandwidth cannot follow: 9.5% median after the fit (H100 1.7%).
SEND_RECV_BOUND_PCT = 10.5


def gemm_shape(row, family: str) -> tuple[int, int, int]:
    """(m, n, k) of one projection GEMM on one device of the tensor-parallel group."""
    tp = int(row["num_tensor_parallel_workers"])
    head_dim = int(row["n_embd"]) // int(row["n_head"])
    m, embd, ffn = int(row["num_tokens"]), int(row["n_embd"]), int(row["n_expanded_embd"])
    return {
        "attn_pre_proj": (m, (int(row["n_head"]) + 2 * int(row["n_kv_head"])) * head_dim // tp, embd),
        "attn_post_proj": (m, embd, int(row["n_head"]) * head_dim // tp),
        "mlp_up_proj": (m, ffn * (2 if bool(row["use_gated_mlp"]) else 1) // tp, embd),
        "mlp_down_proj": (m, embd, ffn // tp),
    }[family]


def pct_errors(pred, measured) -> np.ndarray:
    return np.abs(np.asarray(pred, float) / np.asarray(measured, float) - 1.0) * 100.0


@pytest.fixture(scope="module")
def gemm_errors() -> pd.DataFrame:
    """One row per (device, model, family, CSV row): the shape, tp and the absolute percentage error."""
    out = []
    for device, (profile, _) in DEVICES.items():
        cm = CostModel(vidur_profile(device))
        for model in MODELS:
            df = pd.read_csv(DATA / "compute" / device / model / "mlp.csv")
            for _, row in df.iterrows():
                for family in FAMILIES:
                    m, n, k = gemm_shape(row, family)
                    measured = row[f"time_stats.{family}.median"] * 1e-3
                    err = float(pct_errors(cm.seconds(Gemm(m, n, k)), measured))
                    out.append((device, model, family, int(row["num_tensor_parallel_workers"]), m, n, k, err))
    return pd.DataFrame(out, columns=["device", "model", "family", "tp", "m", "n", "k", "err"])


def vidur_profile(device: str):
    """The device's profile with the GEMM numbers fitted to Vidur's measurements."""
    hw = load_hardware(DEVICES[device][0])
    eg, em = VIDUR_GEMM_FIT[device]
    return dataclasses.replace(hw, device=dataclasses.replace(
        hw.device, gemm_efficiency=eg, memory_efficiency=em, kernel_overhead_s=VIDUR_KERNEL_OVERHEAD_S))


def vidur_regimes(system: str, n: int, df: pd.DataFrame) -> LinkParams:
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
    from fit_vidur import fit_regimes
    moved = collective_factor("all_reduce", n) * df["size"].to_numpy(float)
    regimes, _ = fit_regimes(moved, df["time_stats.all_reduce.median"].to_numpy(float) * 1e-3)
    return LinkParams.of_regimes(Regime(a, bw) for a, bw in regimes)


def network(system: str, kind: str, n: int) -> pd.DataFrame:
    df = pd.read_csv(DATA / "network" / system / f"{kind}.csv")
    return df[(df["num_workers"] == n) & (df["devices_per_node"] == n)]


@pytest.fixture(scope="module")
def comm_errors() -> pd.DataFrame:
    """Median absolute percentage error per (device, op): all_reduce n=2/4/8 and send_recv."""
    out = []
    for device, (profile, system) in DEVICES.items():
        hw = load_hardware(profile)
        cm = CostModel(hw)
        for n in (2, 4, 8):
            df = network(system, "all_reduce", n)
            assert len(df) > 500, f"expected the single-node rows of {system} n={n}"
            group = tuple(range(n))
            fitted = dataclasses.replace(hw, interconnect=dataclasses.replace(
                hw.interconnect, collectives={n: vidur_regimes(system, n, df)}))
            measured = df["time_stats.all_reduce.median"].to_numpy(float) * 1e-3
            ops = [Collective("all_reduce", float(s), group) for s in df["size"]]
            pred = [CostModel(fitted).seconds(op) for op in ops]
            ratio = np.median(np.array([cm.seconds(op) for op in ops]) / measured)
            out.append((device, f"all_reduce n={n}", len(df),
                        float(np.median(pct_errors(pred, measured))), float(ratio)))
        df = network(system, "send_recv", 2)
        pred = [cm.seconds(SendRecv(float(s), 0, 1)) for s in df["size"]]
        out.append((device, "send_recv", len(df),
                    float(np.median(pct_errors(pred, df["time_stats.send_recv.median"] * 1e-3))),
                    float("nan")))
    return pd.DataFrame(out, columns=["device", "op", "rows", "median_abs_pct", "profile_ratio"])


def test_error_tables_cover_every_case(gemm_errors, comm_errors, record_property):
    """Every (device, model, family) has its 1044 GEMM rows and every communication case its row,
    each with a finite error, so the bounds below judge complete tables. (The tables themselves
    are printed by benchmarks/fit_vidur.py.)"""
    counts = gemm_errors.groupby(["device", "model", "family"]).size()
    assert len(counts) == len(DEVICES) * len(MODELS) * len(FAMILIES)
    assert (counts == 1044).all(), counts[counts != 1044]
    assert np.isfinite(gemm_errors["err"]).all() and (gemm_errors["err"] >= 0).all()
    ops = ("all_reduce n=2", "all_reduce n=4", "all_reduce n=8", "send_recv")
    assert sorted(zip(comm_errors["device"], comm_errors["op"])) == \
        sorted((d, op) for d in DEVICES for op in ops)
    assert np.isfinite(comm_errors["median_abs_pct"]).all()
    for device, err in gemm_errors.groupby("device")["err"].median().items():
        record_property(f"gemm_{device}_median_abs_pct", round(float(err), 2))


@pytest.mark.parametrize("device", sorted(DEVICES))
@pytest.mark.parametrize("family", FAMILIES)
def test_gemm_family_median_error(gemm_errors, record_property, device, family):
    rows = gemm_errors[(gemm_errors["device"] == device) & (gemm_errors["family"] == family)]
    assert len(rows) == 2 * 1044
    err = float(rows["err"].median())
    record_property("median_abs_pct", round(err, 2))
    assert err <= GEMM_FAMILY_BOUND_PCT, f"{device} {family}: median abs error {err:.1f}%"


@pytest.mark.parametrize("device", sorted(DEVICES))
def test_gemm_all_rows_median_error(gemm_errors, record_property, device):
    err = float(gemm_errors[gemm_errors["device"] == device]["err"].median())
    record_property("median_abs_pct", round(err, 2))
    assert err <= GEMM_ALL_BOUND_PCT, f"{device}: median abs error {err:.1f}% over all GEMMs"


@pytest.mark.parametrize("device", sorted(DEVICES))
def test_gemm_worst_row_error(gemm_errors, record_property, device):
    err = float(gemm_errors[gemm_errors["device"] == device]["err"].max())
    record_property("max_abs_pct", round(err, 2))
    assert err <= GEMM_WORST_BOUND_PCT, f"{device}: worst GEMM error {err:.1f}%"


@pytest.mark.parametrize("device", sorted(DEVICES))
def test_tp_decode_qkv_uses_split_k(gemm_errors, record_property, device):
    """Few output tiles and a long k: without split-K the tile model charges a whole wave of
    full-length tiles (A100: 44.5 us predicted against 19 us measured)."""
    rows = gemm_errors[(gemm_errors["device"] == device) & (gemm_errors["model"] == "Llama-2-70b-hf")
                       & (gemm_errors["family"] == "attn_pre_proj") & (gemm_errors["tp"] == 8)
                       & (gemm_errors["m"] <= 64)]
    assert len(rows) > 10 and set(rows["k"]) == {8192}
    err = float(rows["err"].median())
    record_property("median_abs_pct", round(err, 2))
    assert err <= TP_DECODE_QKV_BOUND_PCT, f"{device} 70b QKV tp8 decode: median abs error {err:.1f}%"
    profile = DEVICES[device][0]
    assert CostModel(load_hardware(profile)).gemm_plan(Gemm(16, 1280, 8192)).split_k > 1
    assert CostModel(vidur_profile(device)).gemm_plan(Gemm(16, 1280, 8192)).split_k > 1


@pytest.mark.parametrize("device", sorted(DEVICES))
@pytest.mark.parametrize("n", [2, 4, 8])
def test_all_reduce_median_error(comm_errors, record_property, device, n):
    row = comm_errors[(comm_errors["device"] == device) & (comm_errors["op"] == f"all_reduce n={n}")]
    err = float(row["median_abs_pct"].iloc[0])
    record_property("median_abs_pct", round(err, 2))
    assert err <= ALL_REDUCE_BOUND_PCT, f"{device} all_reduce n={n}: median abs error {err:.1f}%"


@pytest.mark.parametrize("device", sorted(DEVICES))
@pytest.mark.parametrize("n", [2, 4, 8])
def test_profile_all_reduce_near_vidur_in_median(comm_errors, record_property, device, n):
    """The profile's eager all-reduce follows NCCL 2.27-2.29 kernel times (AIConfigurator). Over Vidur's
    sizes (2 KiB..64 MiB) the two campaigns agree in median within 25% (profile / Vidur 0.79-1.01
    when fitted); they part at small messages, where Vidur's times (an older NCCL, and the wait for
    the slowest peer, which the simulator models itself) are up to twice as long."""
    row = comm_errors[(comm_errors["device"] == device) & (comm_errors["op"] == f"all_reduce n={n}")]
    ratio = float(row["profile_ratio"].iloc[0])
    record_property("median_profile_over_vidur", round(ratio, 3))
    assert 0.75 < ratio < 1.1, f"{device} all_reduce n={n}: profile / Vidur median {ratio:.2f}"


@pytest.mark.parametrize("device", sorted(DEVICES))
def test_send_recv_median_error(comm_errors, record_property, device):
    row = comm_errors[(comm_errors["device"] == device) & (comm_errors["op"] == "send_recv")]
    err = float(row["median_abs_pct"].iloc[0])
    record_property("median_abs_pct", round(err, 2))
    assert err <= SEND_RECV_BOUND_PCT, f"{device} send_recv: median abs error {err:.1f}%"
