"""Fit built-in hardware-profile parameters to the Vidur measurements, and print them with their errors.

Data: microsoft/vidur `data/profiling/` (MIT), read from ``../shared/data/vidur`` beside the repository
(never copied into it). The fitted values are pasted by hand into ``hwprofiles/*.yaml``, whose source
strings name this script. The script only prints: it writes nothing (there is no ``--write``).

What is fitted, and how:

* **Collectives** (`network/{a100_dgx,h100_dgx}/all_reduce.csv`, single node: ``devices_per_node ==
  num_workers``; group sizes 2, 4, 8): the cost model's ``t = alpha + 2(n-1)/n * S / busbw``. Both
  parameters enter linearly (alpha and 1/busbw), so the fit is a least-squares solve; rows are
  weighted by 1/t (relative least squares), so that a 4 KiB and a 64 MiB all-reduce count equally
  instead of the large messages (most of the rows) deciding alone.
* **Send/recv** (`network/*/send_recv.csv`, both devices in one node: ``devices_per_node == 2``):
  ``t = alpha + S / bandwidth``, the same way.
* **PCIe ring** (`network/a100_pairwise_nvlink/all_reduce.csv`, n = 4: the ring of two NVLink pairs
  crosses PCIe Gen4 twice, so PCIe sets its bandwidth), for the ``a100-pcie-40gb`` profile.
* **GEMM and memory efficiency** (`compute/{a100,h100}/Llama-2-{7b,70b}-hf/mlp.csv`): the four
  projection GEMMs of every row (every token count and tensor-parallel degree), shapes from the model
  columns (see `gemm_shape`). ``gemm_efficiency`` and ``memory_efficiency`` minimise the median absolute
  log error of `CostModel` predictions (grid search, step 0.005); ``kernel_overhead_us`` stays at the
  profile's value. Compute time scales exactly with 1/gemm_efficiency and memory time with
  1/memory_efficiency, so the grid evaluates ``max(C/eg, M/em) + overhead`` from one CostModel pass,
  and the final errors come from a fresh `CostModel` with the fitted values.

Unit of ``size`` in the network CSVs: **bytes**. Vidur's README-level description says fp16 elements,
but read as elements the data are physically impossible (A100 n = 8 would reach 348 GB/s busbw, above
NVLink3's 300 GB/s per direction; H100 n = 2 would reach 548 GB/s, above NVLink4's 450, where a 2-GPU
ring can reach at most the link rate), while Vidur's own predictor converts ``size`` as bytes
(``num_tokens = size / embedding_dim / 2``). The script prints this check.

Usage: ``python benchmarks/fit_vidur.py [--data DIR]``
"""
from __future__ import annotations

import argparse
import dataclasses
import sys
from pathlib import Path

import numpy as np
import pandas as pd

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from simulator.cost import CostModel  # noqa: E402
from simulator.hardware import load_hardware  # noqa: E402
from simulator.ops import Collective, Gemm, SendRecv  # noqa: E402

DEFAULT_DATA = REPO.parent / "shared" / "data" / "vidur"
GEMM_FAMILIES = ("attn_pre_proj", "attn_post_proj", "mlp_up_proj", "mlp_down_proj")
MODELS = ("Llama-2-7b-hf", "Llama-2-70b-hf")
DEVICES = {"a100": "a100-sxm4-80gb", "h100": "h100-sxm5-80gb"}
NETWORKS = {"a100": "a100_dgx", "h100": "h100_dgx"}
GROUP_SIZES = (2, 4, 8)
LINE_RATE_GB_PER_S = {"a100_dgx": 300.0, "h100_dgx": 450.0}   # NVLink per direction (hardware.md §1)
EFF_GRID = np.round(np.arange(0.30, 1.0 + 1e-9, 0.005), 3)


# ------------------------------------------------------------------------------------------- data

def gemm_shape(row, family: str) -> tuple[int, int, int]:
    """(m, n, k) of one projection GEMM on one device of a tensor-parallel group of `row`."""
    tp = int(row["num_tensor_parallel_workers"])
    head_dim = int(row["n_embd"]) // int(row["n_head"])
    m, embd = int(row["num_tokens"]), int(row["n_embd"])
    if family == "attn_pre_proj":
        return m, (int(row["n_head"]) + 2 * int(row["n_kv_head"])) * head_dim // tp, embd
    if family == "attn_post_proj":
        return m, embd, int(row["n_head"]) * head_dim // tp
    if family == "mlp_up_proj":
        gated = 2 if bool(row["use_gated_mlp"]) else 1
        return m, int(row["n_expanded_embd"]) * gated // tp, embd
    if family == "mlp_down_proj":
        return m, embd, int(row["n_expanded_embd"]) // tp
    raise ValueError(f"unknown GEMM family {family!r}")


def gemm_rows(data: Path, device: str) -> pd.DataFrame:
    """One row per (CSV row, family): model, family, tp, m, n, k, measured_s (median kernel time)."""
    out = []
    for model in MODELS:
        df = pd.read_csv(data / "compute" / device / model / "mlp.csv")
        for _, row in df.iterrows():
            for family in GEMM_FAMILIES:
                m, n, k = gemm_shape(row, family)
                out.append((model, family, int(row["num_tensor_parallel_workers"]), m, n, k,
                            row[f"time_stats.{family}.median"] * 1e-3))
    return pd.DataFrame(out, columns=["model", "family", "tp", "m", "n", "k", "measured_s"])


def network_rows(data: Path, system: str, kind: str, n: int) -> pd.DataFrame:
    """Single-node rows of one collective CSV for group size `n`: bytes, measured_s."""
    df = pd.read_csv(data / "network" / system / f"{kind}.csv")
    df = df[(df["num_workers"] == n) & (df["devices_per_node"] == n)]
    return pd.DataFrame({"bytes": df["size"].to_numpy(float),
                         "measured_s": df[f"time_stats.{kind}.median"].to_numpy(float) * 1e-3})


# -------------------------------------------------------------------------------------------- fits

def fit_alpha_beta(moved_bytes: np.ndarray, seconds: np.ndarray) -> tuple[float, float]:
    """(alpha_s, bandwidth_bytes_per_s) of ``t = alpha + moved / bandwidth``, least squares on the
    relative error (each row weighted by 1/t)."""
    w = 1.0 / seconds
    a = np.column_stack([np.ones_like(moved_bytes), moved_bytes]) * w[:, None]
    (alpha, inv_bw), *_ = np.linalg.lstsq(a, seconds * w, rcond=None)
    return float(alpha), float(1.0 / inv_bw)


def abs_pct(pred, measured) -> np.ndarray:
    return np.abs(np.asarray(pred) / np.asarray(measured) - 1.0) * 100.0


def fit_gemm(profile, rows: pd.DataFrame) -> tuple[float, float]:
    """gemm_efficiency, memory_efficiency minimising the median |log(predicted / measured)|."""
    unit = dataclasses.replace(profile.device, gemm_efficiency=1.0, memory_efficiency=1.0,
                               kernel_overhead_s=0.0)
    cm = CostModel(dataclasses.replace(profile, device=unit))
    bw = unit.memory_bandwidth_bytes_per_s
    ops = [Gemm(m, n, k) for m, n, k in rows[["m", "n", "k"]].itertuples(index=False)]
    compute = np.array([cm.gemm_compute_seconds(op) for op in ops])
    memory = np.array([op.bytes / bw for op in ops])
    log_t = np.log(rows["measured_s"].to_numpy())
    overhead = profile.device.kernel_overhead_s
    best = (np.inf, 0.0, 0.0)
    mem_grid = memory[None, :] / EFF_GRID[:, None]                 # (grid, rows)
    for eg in EFF_GRID:
        pred = np.maximum(compute[None, :] / eg, mem_grid) + overhead
        err = np.median(np.abs(np.log(pred) - log_t[None, :]), axis=1)
        i = int(np.argmin(err))
        if err[i] < best[0]:
            best = (float(err[i]), float(eg), float(EFF_GRID[i]))
    return best[1], best[2]


def predict_gemms(profile, rows: pd.DataFrame) -> np.ndarray:
    cm = CostModel(profile)
    return np.array([cm.seconds(Gemm(m, n, k)) for m, n, k in rows[["m", "n", "k"]].itertuples(index=False)])


# ----------------------------------------------------------------------------------------- reports

def size_label(nbytes: float) -> str:
    for unit, scale in (("MiB", 2**20), ("KiB", 2**10)):
        if nbytes >= scale:
            return f"{nbytes / scale:g} {unit}"
    return f"{nbytes:g} B"


def band_errors(nbytes: np.ndarray, err: np.ndarray) -> str:
    bands = ((0, 2**20, "<1MiB"), (2**20, 2**23, "1-8MiB"), (2**23, np.inf, ">=8MiB"))
    return "  ".join(f"{name} {np.median(err[(nbytes >= lo) & (nbytes < hi)]):5.1f}%"
                     for lo, hi, name in bands if ((nbytes >= lo) & (nbytes < hi)).any())


def report_alpha_beta(label: str, nbytes: np.ndarray, factor: float, seconds: np.ndarray,
                      shipped: np.ndarray) -> None:
    """Fit, print the fit and its errors, and the error of the profile as shipped (`shipped`: its
    CostModel predictions for the same rows), which should match once the YAML holds the fit."""
    alpha, bw = fit_alpha_beta(factor * nbytes, seconds)
    err = abs_pct(alpha + factor * nbytes / bw, seconds)
    print(f"  {label:<34} alpha_us {alpha * 1e6:6.1f}  bw_gb_per_s {bw / 1e9:6.1f}  rows {len(seconds):5d}"
          f"  sizes {size_label(nbytes.min())}..{size_label(nbytes.max())}"
          f"  median abs err {np.median(err):5.1f}%  p90 {np.percentile(err, 90):5.1f}%"
          f"  [{band_errors(nbytes, err)}]  shipped {np.median(abs_pct(shipped, seconds)):5.1f}%")


def predict_collectives(profile_name: str, kind: str, n: int, nbytes: np.ndarray) -> np.ndarray:
    cm = CostModel(load_hardware(profile_name))
    if kind == "send_recv":
        return np.array([cm.seconds(SendRecv(float(s), 0, 1)) for s in nbytes])
    return np.array([cm.seconds(Collective(kind, float(s), tuple(range(n)))) for s in nbytes])


def report_size_unit(data: Path) -> None:
    print("Unit check of `size` (all_reduce, largest size, single node):"
          " implied busbw if bytes / if fp16 elements")
    for system, line_rate in LINE_RATE_GB_PER_S.items():
        for n in GROUP_SIZES:
            rows = network_rows(data, system, "all_reduce", n)
            i = int(np.argmax(rows["bytes"].to_numpy()))
            s, t = rows["bytes"].iloc[i], rows["measured_s"].iloc[i]
            bus = 2 * (n - 1) / n * s / t / 1e9
            print(f"  {system} n={n}: {bus:6.1f} / {2 * bus:6.1f} GB/s"
                  f"   (NVLink line rate {line_rate:.0f} per direction)")


def report_network(data: Path) -> None:
    print("\nCollectives: t = alpha + 2(n-1)/n * bytes / busbw (relative least squares, single node);"
          " 'shipped': the built-in profile's median abs error on the same rows")
    for device, system in NETWORKS.items():
        for n in GROUP_SIZES:
            rows = network_rows(data, system, "all_reduce", n)
            nbytes = rows["bytes"].to_numpy()
            report_alpha_beta(f"{DEVICES[device]} all_reduce n={n}", nbytes, 2 * (n - 1) / n,
                              rows["measured_s"].to_numpy(),
                              predict_collectives(DEVICES[device], "all_reduce", n, nbytes))
    rows = network_rows(data, "a100_pairwise_nvlink", "all_reduce", 4)
    nbytes = rows["bytes"].to_numpy()
    report_alpha_beta("a100_pairwise_nvlink all_reduce n=4", nbytes, 1.5, rows["measured_s"].to_numpy(),
                      predict_collectives("a100-pcie-40gb", "all_reduce", 4, nbytes))
    print("\nSend/recv: t = alpha + bytes / bandwidth (relative least squares, both devices in one node)")
    for device, system in NETWORKS.items():
        rows = network_rows(data, system, "send_recv", 2)
        nbytes = rows["bytes"].to_numpy()
        report_alpha_beta(f"{DEVICES[device]} send_recv", nbytes, 1.0, rows["measured_s"].to_numpy(),
                          predict_collectives(DEVICES[device], "send_recv", 2, nbytes))


def report_gemm(data: Path) -> None:
    print("\nGEMMs: gemm_efficiency, memory_efficiency minimising the median |log error| of CostModel"
          " (kernel_overhead_us from the profile)")
    for device, name in DEVICES.items():
        profile = load_hardware(name)
        rows = gemm_rows(data, device)
        eg, em = fit_gemm(profile, rows)
        fitted = dataclasses.replace(profile, device=dataclasses.replace(
            profile.device, gemm_efficiency=eg, memory_efficiency=em))
        rows["err"] = abs_pct(predict_gemms(fitted, rows), rows["measured_s"])
        shipped = abs_pct(predict_gemms(profile, rows), rows["measured_s"])
        print(f"  {name}: gemm_efficiency {eg:.3f}  memory_efficiency {em:.3f}"
              f"  (kernel_overhead_us {profile.device.kernel_overhead_s * 1e6:g})  rows {len(rows)}"
              f"  median abs err {rows['err'].median():.1f}%  p90 {rows['err'].quantile(0.9):.1f}%"
              f"  (profile as shipped: {np.median(shipped):.1f}%)")
        table = rows.groupby(["family", "model"])["err"].median().unstack("model").round(1)
        table.columns.name, table.index.name = None, None
        print("    median abs err % by family:\n    " + table.to_string().replace("\n", "\n    "))
        rows["tokens"] = pd.cut(rows["m"], [0, 64, 256, 1024, 4096])
        by_m = rows.groupby("tokens", observed=True)["err"].median().round(1)
        print("    by num_tokens: " + ", ".join(f"{k} {v}%" for k, v in by_m.items()))


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA,
                        help="the Vidur data folder (default: ../shared/data/vidur beside the repository)")
    args = parser.parse_args(argv)
    if not (args.data / "network").is_dir():
        print(f"no Vidur data at {args.data}", file=sys.stderr)
        return 2
    report_size_unit(args.data)
    report_network(args.data)
    report_gemm(args.data)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
