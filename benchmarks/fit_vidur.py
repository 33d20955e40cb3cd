"""Fit built-in hardware-profile parameters to the Vidur measurements, and print them with their errors.

Data: microsoft/vidur `data/profiling/` (MIT), read from ``../shared/data/vidur`` beside the repository
(never copied into it). The fitted values are pasted by hand into ``hwprofiles/*.yaml``, whose source
strings name this script. The script only prints: it writes nothing (there is no ``--write``).

What is fitted, and how:

* **Collectives** (`network/{a100_dgx,h100_dgx}/all_reduce.csv`, single node: ``devices_per_node ==
  num_workers``; group sizes 2, 4, 8): the cost model's ``t = min over regimes r of alpha_r + 2(n-1)/n
  * S / busbw_r`` with one or two protocol regimes. For one line both parameters enter linearly
  (alpha and 1/busbw), so the fit is a least-squares solve; rows are weighted by 1/t (relative least
  squares), so that a 4 KiB and a 64 MiB all-reduce count equally instead of the large messages (most
  of the rows) deciding alone. Two lines (`fit_two_regimes`): the same objective on their minimum,
  started from the best split of the rows by size and refined by giving each row to the lower line.
  The second regime is kept only where the data support it (`fit_regimes`: each regime the faster one
  on at least 5% of the rows, and the relative squared error down by at least 10%).
* **Send/recv** (`network/*/send_recv.csv`, both devices in one node: ``devices_per_node == 2``):
  ``t = alpha + S / bandwidth``, the same way.
* **PCIe ring** (`network/a100_pairwise_nvlink/all_reduce.csv`, n = 4: the ring of two NVLink pairs
  crosses PCIe Gen4 twice, so PCIe sets its bandwidth), for the ``a100-pcie-40gb`` profile, the same way.
* **H100 NVLink pairs and PCIe Gen5 ring** (`network/h100_pairwise_nvlink/{all_reduce,send_recv}.csv`):
  n = 2 (one NVLink-bridged pair) for ``h100-nvl-94gb``, n = 4 (the ring of two pairs crosses PCIe
  Gen5 twice) for ``h100-nvl-94gb`` and ``h100-pcie-80gb``, and the pair's send/recv alpha, the same way.
* **GEMM and memory efficiency** (`compute/{a100,h100}/Llama-2-{7b,70b}-hf/mlp.csv`): the four
  projection GEMMs of every row (every token count and tensor-parallel degree), shapes from the model
  columns (see `gemm_shape`). ``gemm_efficiency`` and ``memory_efficiency`` minimise the median absolute
  log error of `CostModel` predictions (grid search, step 0.005); ``kernel_overhead_us`` stays at 3 us (the
  Vidur-era profiles' assumption). Per split-K factor s, main-loop time scales exactly with 1/gemm_efficiency and the
  memory and split-K reduction times with 1/memory_efficiency, so the grid evaluates
  ``min_s max(C_s/eg, M/em) + R_s/em + overhead`` from one CostModel pass, and the final errors come
  from a fresh `CostModel` with the fitted values.

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

from simulator.cost import SPLIT_K, CostModel  # noqa: E402
from simulator.hardware import load_hardware  # noqa: E402
from simulator.ops import Collective, Gemm, SendRecv  # noqa: E402

DEFAULT_DATA = REPO.parent / "shared" / "data" / "vidur"
GEMM_FAMILIES = ("attn_pre_proj", "attn_post_proj", "mlp_up_proj", "mlp_down_proj")
MODELS = ("Llama-2-7b-hf", "Llama-2-70b-hf")
DEVICES = {"a100": "a100-sxm4-80gb", "h100": "h100-sxm5-80gb"}
NETWORKS = {"a100": "a100_dgx", "h100": "h100_dgx"}
GROUP_SIZES = (2, 4, 8)
LINE_RATE_GB_PER_S = {"a100_dgx": 300.0, "h100_dgx": 450.0}   # NVLink per direction (hardware.md §1)
# The per-kernel overhead the Vidur fit holds fixed (assumed: a few microseconds of launch-to-start
# and tail). The built-in A100/H100 profiles now carry benchmarks/fit_aiconfigurator.py's fitted floor.
VIDUR_KERNEL_OVERHEAD_S = 3e-6
EFF_GRID = np.round(np.arange(0.30, 1.0 + 1e-9, 0.005), 3)
# Support rule of a second collective regime (see fit_regimes).
MIN_REGIME_ROWS = 8
MIN_REGIME_SHARE = 0.05
MIN_SSE_GAIN = 0.10


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


def predict_regimes(regimes, moved_bytes: np.ndarray) -> np.ndarray:
    """The cost model's curve: the minimum over regimes of alpha + moved / bandwidth."""
    return np.min([alpha + moved_bytes / bw for alpha, bw in regimes], axis=0)


def rel_sse(regimes, moved_bytes: np.ndarray, seconds: np.ndarray) -> float:
    return float(np.sum((predict_regimes(regimes, moved_bytes) / seconds - 1.0) ** 2))


def fit_two_regimes(moved: np.ndarray, seconds: np.ndarray):
    """Two alpha-beta lines whose minimum fits the rows, relative least squares (the objective of
    `fit_alpha_beta`, applied to the minimum of the lines). Start: every split of the rows by size
    into a small and a large side, each side fitted alone; keep the split whose two lines' minimum
    has the smallest error. Then alternate: give each row to the line that is lower there, refit each
    line on its rows, while the error falls. Returns [(alpha, bw), (alpha, bw)] or None."""
    best = None
    sizes = np.unique(moved)
    for cut in sizes[1:]:
        small = moved < cut
        if small.sum() < MIN_REGIME_ROWS or (~small).sum() < MIN_REGIME_ROWS:
            continue
        lines = [fit_alpha_beta(moved[small], seconds[small]), fit_alpha_beta(moved[~small], seconds[~small])]
        if any(a < 0 or bw <= 0 for a, bw in lines):
            continue
        err = rel_sse(lines, moved, seconds)
        if best is None or err < best[0]:
            best = (err, lines)
    if best is None:
        return None
    err, lines = best
    for _ in range(100):
        owner = np.argmin([a + moved / bw for a, bw in lines], axis=0)
        if min((owner == i).sum() for i in range(2)) < MIN_REGIME_ROWS:
            break
        new = [fit_alpha_beta(moved[owner == i], seconds[owner == i]) for i in range(2)]
        if any(a < 0 or bw <= 0 for a, bw in new) or rel_sse(new, moved, seconds) >= err:
            break
        err, lines = rel_sse(new, moved, seconds), new
    return sorted(lines, key=lambda line: line[1])


def fit_regimes(moved: np.ndarray, seconds: np.ndarray):
    """One or two protocol regimes, [(alpha, bw), ...] in order of bandwidth, and why.

    Two regimes are kept only where the data support them: each must be the faster one for at
    least MIN_REGIME_SHARE of the rows (a regime that wins only beyond the measured sizes, or on a
    handful of tiny messages, is an extrapolation), and together they must cut the relative squared
    error by at least MIN_SSE_GAIN against one line."""
    one = [fit_alpha_beta(moved, seconds)]
    two = fit_two_regimes(moved, seconds)
    if two is None:
        return one, "one regime: no two-line fit with positive alphas and bandwidths"
    owner = np.argmin([a + moved / bw for a, bw in two], axis=0)
    share = min(float(np.mean(owner == i)) for i in range(2))
    gain = 1.0 - rel_sse(two, moved, seconds) / rel_sse(one, moved, seconds)
    why = f"two-line fit: the rarer regime wins {share:.1%} of rows, squared error {-gain:+.0%}"
    if share < MIN_REGIME_SHARE or gain < MIN_SSE_GAIN:
        return one, "one regime (" + why + ": not supported)"
    return two, "two regimes (" + why + ")"


def fit_gemm(profile, rows: pd.DataFrame) -> tuple[float, float]:
    """gemm_efficiency, memory_efficiency minimising the median |log(predicted / measured)|.

    One CostModel pass at unit efficiencies gives, per row and split-K factor s, the main-loop time
    C_s (best tile) and the reduction time R_s; the cost model's time at (eg, em) is then exactly
    ``min_s max(C_s / eg, M / em) + R_s / em + overhead`` (M: operand bytes at peak bandwidth)."""
    unit = dataclasses.replace(profile.device, gemm_efficiency=1.0, memory_efficiency=1.0,
                               kernel_overhead_s=0.0)
    cm = CostModel(dataclasses.replace(profile, device=unit))
    bw = unit.memory_bandwidth_bytes_per_s
    ops = [Gemm(m, n, k) for m, n, k in rows[["m", "n", "k"]].itertuples(index=False)]
    main = np.full((len(ops), len(SPLIT_K)), np.inf)
    reduce = np.zeros_like(main)
    for i, op in enumerate(ops):
        for j, plan in enumerate(cm.gemm_plans(op)):
            main[i, j], reduce[i, j] = plan.main_s, plan.reduce_s
    memory = np.array([op.bytes / bw for op in ops])
    log_t = np.log(rows["measured_s"].to_numpy())
    overhead = VIDUR_KERNEL_OVERHEAD_S
    best = (np.inf, 0.0, 0.0)
    inv_em = 1.0 / EFF_GRID[:, None, None]                          # (grid, 1, 1)
    for eg in EFF_GRID:
        pred = (np.maximum(main[None] / eg, memory[None, :, None] * inv_em)
                + reduce[None] * inv_em).min(axis=2) + overhead     # (grid, rows)
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


def report_regimes(label: str, nbytes: np.ndarray, factor: float, seconds: np.ndarray,
                   shipped: np.ndarray) -> None:
    """Fit one or two regimes (fit_regimes), print them, the crossover size (buffer bytes), their
    errors beside the one-line fit's, and the error of the profile as shipped."""
    moved = factor * nbytes
    one = [fit_alpha_beta(moved, seconds)]
    regimes, why = fit_regimes(moved, seconds)
    err1, err = abs_pct(predict_regimes(one, moved), seconds), abs_pct(predict_regimes(regimes, moved), seconds)
    print(f"  {label}: rows {len(seconds)}, sizes {size_label(nbytes.min())}..{size_label(nbytes.max())}; {why}")
    for i, (alpha, bw) in enumerate(regimes):
        print(f"    regime {i}: alpha_us {alpha * 1e6:6.2f}  busbw_gb_per_s {bw / 1e9:6.1f}")
    if len(regimes) == 2:
        (a0, b0), (a1, b1) = regimes
        print(f"    crossover at {size_label((a1 - a0) / (1 / b0 - 1 / b1) / factor)} (buffer)")
    print(f"    fit:  median abs err {np.median(err):5.1f}%  p90 {np.percentile(err, 90):5.1f}%"
          f"  [{band_errors(nbytes, err)}]")
    print(f"    one line (alpha_us {one[0][0] * 1e6:.1f}, busbw {one[0][1] / 1e9:.1f}): median abs err"
          f" {np.median(err1):5.1f}%  p90 {np.percentile(err1, 90):5.1f}%  [{band_errors(nbytes, err1)}]")
    shipped_err = abs_pct(shipped, seconds)
    print(f"    shipped profile: median abs err {np.median(shipped_err):5.1f}%"
          f"  p90 {np.percentile(shipped_err, 90):5.1f}%  [{band_errors(nbytes, shipped_err)}]")


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
    print("\nCollectives: t = min over regimes of alpha + 2(n-1)/n * bytes / busbw (relative least"
          " squares, single node); 'shipped': the built-in profile's errors on the same rows")
    for device, system in NETWORKS.items():
        for n in GROUP_SIZES:
            rows = network_rows(data, system, "all_reduce", n)
            nbytes = rows["bytes"].to_numpy()
            report_regimes(f"{DEVICES[device]} all_reduce n={n}", nbytes, 2 * (n - 1) / n,
                           rows["measured_s"].to_numpy(),
                           predict_collectives(DEVICES[device], "all_reduce", n, nbytes))
    rows = network_rows(data, "a100_pairwise_nvlink", "all_reduce", 4)
    nbytes = rows["bytes"].to_numpy()
    report_regimes("a100_pairwise_nvlink all_reduce n=4 (a100-pcie-40gb)", nbytes, 1.5,
                   rows["measured_s"].to_numpy(), predict_collectives("a100-pcie-40gb", "all_reduce", 4, nbytes))
    for n, profiles in ((2, ("h100-nvl-94gb",)), (4, ("h100-nvl-94gb", "h100-pcie-80gb"))):
        rows = network_rows(data, "h100_pairwise_nvlink", "all_reduce", n)
        nbytes = rows["bytes"].to_numpy()
        for profile in profiles:
            report_regimes(f"h100_pairwise_nvlink all_reduce n={n} ({profile})", nbytes, 2 * (n - 1) / n,
                           rows["measured_s"].to_numpy(), predict_collectives(profile, "all_reduce", n, nbytes))
    print("\nSend/recv: t = alpha + bytes / bandwidth (relative least squares, both devices in one node)")
    for device, system in NETWORKS.items():
        rows = network_rows(data, system, "send_recv", 2)
        nbytes = rows["bytes"].to_numpy()
        report_alpha_beta(f"{DEVICES[device]} send_recv", nbytes, 1.0, rows["measured_s"].to_numpy(),
                          predict_collectives(DEVICES[device], "send_recv", 2, nbytes))
    # h100-nvl-94gb takes only the alpha: the fitted bandwidth exceeds the bridges' 300 GB/s per
    # direction, so its p2p bandwidth is the n = 2 all-reduce busbw (see the profile)
    rows = network_rows(data, "h100_pairwise_nvlink", "send_recv", 2)
    nbytes = rows["bytes"].to_numpy()
    report_alpha_beta("h100_pairwise_nvlink send_recv", nbytes, 1.0, rows["measured_s"].to_numpy(),
                      predict_collectives("h100-nvl-94gb", "send_recv", 2, nbytes))


def report_gemm(data: Path) -> None:
    print("\nGEMMs: gemm_efficiency, memory_efficiency minimising the median |log error| of CostModel"
          f" (kernel_overhead_us held at {VIDUR_KERNEL_OVERHEAD_S * 1e6:g})")
    for device, name in DEVICES.items():
        profile = load_hardware(name)
        rows = gemm_rows(data, device)
        eg, em = fit_gemm(profile, rows)
        fitted = dataclasses.replace(profile, device=dataclasses.replace(
            profile.device, gemm_efficiency=eg, memory_efficiency=em,
            kernel_overhead_s=VIDUR_KERNEL_OVERHEAD_S))
        rows["err"] = abs_pct(predict_gemms(fitted, rows), rows["measured_s"])
        shipped = abs_pct(predict_gemms(profile, rows), rows["measured_s"])
        print(f"  {name}: gemm_efficiency {eg:.3f}  memory_efficiency {em:.3f}"
              f"  rows {len(rows)}"
              f"  median abs err {rows['err'].median():.1f}%  p90 {rows['err'].quantile(0.9):.1f}%"
              f"  (profile as shipped: {np.median(shipped):.1f}%)")
        table = rows.groupby(["family", "model"])["err"].median().unstack("model").round(1)
        table.columns.name, table.index.name = None, None
        print("    median abs err % by family:\n    " + table.to_string().replace("\n", "\n    "))
        worst = rows.loc[rows["err"].idxmax()]
        print(f"    worst row: {worst['model']} {worst['family']} tp {worst['tp']} (m, n, k) ="
              f" ({worst['m']}, {worst['n']}, {worst['k']}): measured {worst['measured_s'] * 1e6:.1f} us,"
              f" error {worst['err']:.1f}%  (profile as shipped: worst {np.max(shipped):.1f}%)")
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
