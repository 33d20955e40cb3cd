"""Fit hardware-profile parameters to AIConfigurator's measured kernel times, and print them.

Data: the AIConfigurator database (NVIDIA, Apache-2.0) in the optional ``aiconfigurator-core``
package (``pip install -e '.[aiconfigurator]'``), read through ``simulator/aiconfigurator.py``. The
fitted values are pasted by hand into ``hwprofiles/*.yaml``, whose source strings name this script;
the script only prints.

What is fitted, per GPU, from one framework's tables (``--framework``, default vllm):

* **GEMM** (bf16 rows of ``gemm_perf``): ``gemm_efficiency``, ``memory_efficiency`` and
  ``kernel_overhead_us`` (the per-kernel floor) minimise the median absolute log error of
  `CostModel` (tiles, waves, split-K); efficiencies on a 0.01 grid from 0.5, the floor on a
  0.5 us grid.
* **FP8 GEMM** (per-tensor ``fp8`` rows, input quantisation included as the engines run it):
  ``fp8_gemm_efficiency`` and ``fp8_quantize_us`` minimise the median absolute log error, the GEMM
  fit's memory efficiency and kernel overhead held (0.01 and 0.5 us grids).
* **Attention** (context and generation tables, 16-bit KV cache, no window): ``attention_efficiency``,
  ``attention_memory_efficiency``, ``attention_floor_us`` and ``attention_block_us`` minimise the
  median absolute log error of the cost model's attention time (cost.py `_attention_time`), the
  kernel overhead held at its GEMM fit; Nelder-Mead from a coarse grid's best point.
* **All-reduce, eager** (NCCL rows) and **graphs** (the engine's custom all-reduce captured in CUDA
  graphs): one or two alpha-beta regimes per group size with benchmarks/fit_vidur.py's
  `fit_regimes` (relative least squares; a second regime kept only where the data support it).

Usage: ``python benchmarks/fit_aiconfigurator.py [--profile h100-sxm5-80gb] [--framework vllm]``
"""
from __future__ import annotations

import argparse
import dataclasses
import sys
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "benchmarks"))

from fit_vidur import EFF_GRID, fit_regimes  # noqa: E402
from simulator import aiconfigurator as aic  # noqa: E402
from simulator.cost import (FP8_QUANT_BYTES_PER_ELEMENT, SPLIT_K, CostModel,  # noqa: E402
                            collective_factor)
from simulator.database_check import SYSTEMS, comparison, summary  # noqa: E402
from simulator.hardware import load_hardware  # noqa: E402
from simulator.ops import ATTENTION_Q_TILE, Gemm  # noqa: E402

OVERHEAD_GRID_US = np.arange(1.0, 12.0 + 1e-9, 0.5)


def gemm_fit(profile, ref) -> tuple:
    """(gemm_efficiency, memory_efficiency, kernel_overhead_us, median abs log error, rows)."""
    table = aic.gemm_table(ref)
    ops = [Gemm(m, n, k, d) for (n, k, d), m, _ in table.rows if d == "bf16"]
    measured = np.array([s for (n, k, d), m, s in table.rows if d == "bf16"])
    unit = dataclasses.replace(profile.device, gemm_efficiency=1.0, memory_efficiency=1.0,
                               kernel_overhead_s=0.0)
    cm = CostModel(dataclasses.replace(profile, device=unit, measured_tables={}))
    main = np.full((len(ops), len(SPLIT_K)), np.inf)
    reduce = np.zeros_like(main)
    for i, op in enumerate(ops):
        for j, plan in enumerate(cm.gemm_plans(op)):
            main[i, j], reduce[i, j] = plan.main_s, plan.reduce_s
    memory = np.array([op.bytes for op in ops]) / unit.memory_bandwidth_bytes_per_s
    log_t = np.log(measured)
    grid = EFF_GRID[(EFF_GRID >= 0.5) & (np.round(EFF_GRID * 200) % 2 == 0)]   # 0.01 steps
    inv_em = 1.0 / grid[:, None, None]
    best = (np.inf, 0.0, 0.0, 0.0)
    for eg in grid:
        core = (np.maximum(main[None] / eg, memory[None, :, None] * inv_em)
                + reduce[None] * inv_em).min(axis=2)                       # (grid, rows)
        for ov in OVERHEAD_GRID_US:
            err = np.median(np.abs(np.log(core + ov * 1e-6) - log_t[None, :]), axis=1)
            i = int(np.argmin(err))
            if err[i] < best[0]:
                best = (float(err[i]), float(eg), float(grid[i]), float(ov))
    return best[1], best[2], best[3], best[0], len(ops)


def fp8_fit(profile, ref) -> tuple | None:
    """(fp8_gemm_efficiency, fp8_quantize_us, median abs log error, rows) on the per-tensor FP8
    rows, the profile's memory efficiency and kernel overhead held; None without FP8 rows."""
    table = aic.gemm_table(ref)
    rows = [(m, n, k, s) for (n, k, d), m, s in table.rows if d == "fp8"]
    if not rows or "fp8" not in profile.device.peak_flops:
        return None
    dev = profile.device
    unit = dataclasses.replace(dev, fp8_gemm_efficiency=1.0, fp8_quantize_s=0.0, kernel_overhead_s=0.0)
    cm = CostModel(dataclasses.replace(profile, device=unit, measured_tables={}))
    mem_rate = dev.memory_bandwidth_bytes_per_s * dev.memory_efficiency
    main = np.full((len(rows), len(SPLIT_K)), np.inf)
    reduce = np.zeros_like(main)
    for i, (m, n, k, _) in enumerate(rows):
        for j, plan in enumerate(cm.gemm_plans(Gemm(m, n, k, "fp8", out_dtype="bf16"))):
            main[i, j], reduce[i, j] = plan.main_s, plan.reduce_s
    memory = np.array([Gemm(m, n, k, "fp8", out_dtype="bf16").bytes for m, n, k, _ in rows]) / mem_rate
    quant = np.array([FP8_QUANT_BYTES_PER_ELEMENT * m * k for m, _, k, _ in rows]) / mem_rate
    log_t = np.log([s for *_, s in rows])
    best = (np.inf, 0.0, 0.0)
    for eff in np.arange(0.20, 1.0 + 1e-9, 0.01):
        core = (np.maximum(main / eff, memory[:, None]) + reduce).min(axis=1)
        core = core + dev.kernel_overhead_s + quant
        for q in np.arange(0.0, 20.0 + 1e-9, 0.5):
            err = float(np.median(np.abs(np.log(core + q * 1e-6) - log_t)))
            if err < best[0]:
                best = (err, float(eff), float(q))
    return best[1], best[2], best[0], len(rows)


def attention_arrays(profile, ref) -> dict:
    """Per attention row: flops, bytes, tiles, blocks and the measured seconds."""
    cols = {k: [] for k in ("flops", "bytes", "tiles", "blocks", "seconds", "decode")}
    for df, _ in aic.attention_frames(ref):
        if df is None:
            continue
        b, q, kv = df["batch_size"].to_numpy(float), df["q_len"].to_numpy(float), df["kv_len"].to_numpy(float)
        h, kvh, d = (df[c].to_numpy(float) for c in ("num_heads", "num_key_value_heads", "head_dim"))
        pairs = q * (kv - q) + q * (q + 1) / 2
        decode = q == 1
        tiles = b * h * np.ceil(q / ATTENTION_Q_TILE)
        cols["flops"].append(4 * b * h * d * pairs)
        cols["bytes"].append(b * (2 * q * h + 2 * kv * kvh) * d * 2)
        cols["tiles"].append(tiles)
        cols["blocks"].append(np.where(decode, b * kvh, tiles))
        cols["seconds"].append(df["latency"].to_numpy(float) * 1e-3)
        cols["decode"].append(decode)
    return {k: np.concatenate(v) for k, v in cols.items()}


def attention_predict(a: dict, dev, peak: float, overhead_s: float, eff: float, mem_eff: float,
                      floor_s: float, block_s: float) -> np.ndarray:
    """cost.py `_attention_time`, vectorised over rows."""
    sms = dev.sms
    wave_eff = a["tiles"] / (sms * np.ceil(a["tiles"] / sms))
    compute = a["flops"] / (peak * eff * wave_eff)
    memory = a["bytes"] / (dev.memory_bandwidth_bytes_per_s * mem_eff)
    compute = compute + np.ceil(a["blocks"] / sms) * block_s
    return np.maximum(compute, memory) + overhead_s + floor_s


def attention_fit(profile, ref, overhead_s: float) -> tuple:
    """(efficiency, memory efficiency, floor_us, block_us, median abs log error, rows)."""
    from scipy.optimize import minimize
    a = attention_arrays(profile, ref)
    dev, peak = profile.device, profile.device.peak_flops["bf16"]
    log_t = np.log(a["seconds"])

    def err(x):
        eff, mem_eff, floor_us, block_us = x
        if not (0.05 <= eff <= 1 and 0.05 <= mem_eff <= 1 and floor_us >= 0 and block_us >= 0):
            return 10.0
        pred = attention_predict(a, dev, peak, overhead_s, eff, mem_eff, floor_us * 1e-6,
                                 block_us * 1e-6)
        return float(np.median(np.abs(np.log(pred) - log_t)))

    grid = [(e, m, f, b) for e in (0.3, 0.45, 0.6, 0.75) for m in (0.4, 0.6, 0.8)
            for f in (0.0, 4.0, 8.0) for b in (0.0, 1.0, 3.0)]
    start = min(grid, key=err)
    res = minimize(err, start, method="Nelder-Mead",
                   options={"xatol": 1e-3, "fatol": 1e-5, "maxiter": 2000})
    eff, mem_eff, floor_us, block_us = res.x
    return float(eff), float(mem_eff), float(floor_us), float(block_us), float(res.fun), len(log_t)


def allreduce_fit(ref, execution: str, max_devices: int) -> dict:
    """group size -> (regimes [(alpha_s, busbw)], why, rows, median abs error %)."""
    if execution == "graphs":
        frame, _ = aic.custom_allreduce_frame(ref)
        rows = [(n, b, t) for n, b, t in frame.itertuples(index=False)]
    else:
        frame, _ = aic.nccl_frame(ref)
        rows = [(n, b, t) for f, n, b, t in frame.itertuples(index=False) if f == "all_reduce"]
    out = {}
    for n in sorted({r[0] for r in rows}):
        if n > max_devices:
            continue
        nb = np.array([b for m, b, _ in rows if m == n], float)
        t = np.array([s for m, _, s in rows if m == n], float) * 1e-3
        moved = collective_factor("all_reduce", n) * nb
        regimes, why = fit_regimes(moved, t)
        pred = np.min([a + moved / bw for a, bw in regimes], axis=0)
        out[n] = (regimes, why, len(t), float(np.median(np.abs(pred / t - 1)) * 100))
    return out


def _fmt_regimes(n: int, fit, source: str) -> str:
    regimes, why, rows, err = fit
    head = f"    {n}:\n      regimes:\n" if len(regimes) > 1 else f"    {n}:\n"
    lines = [head.rstrip("\n")]
    for i, (alpha, bw) in enumerate(regimes):
        lead = "        - " if len(regimes) > 1 else "      "
        pad = "          " if len(regimes) > 1 else "      "
        src = f'{source}, n={n}, {rows} sizes, {why.split(" (")[0]}; median abs error {err:.1f}%'
        lines.append(f'{lead}alpha_us: {{value: {alpha * 1e6:.1f}, source: "{src}"}}')
        lines.append(f'{pad}busbw_gb_per_s: {{value: {bw / 1e9:.1f}, source: "{src}"}}')
    return "\n".join(lines)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--profile", action="append", help="profile(s) to fit (default: A100 and H100 SXM)")
    p.add_argument("--framework", default="vllm", choices=aic.FRAMEWORKS)
    args = p.parse_args(argv)
    if not aic.available():
        print(f"needs aiconfigurator-core: {aic.INSTALL_HINT}", file=sys.stderr)
        return 2
    for name in args.profile or ["a100-sxm4-80gb", "h100-sxm5-80gb"]:
        profile = load_hardware(name)
        ref = aic.DatabaseRef(SYSTEMS[name], args.framework)
        where = (f"fitted: benchmarks/fit_aiconfigurator.py on AIConfigurator {ref.system} "
                 f"{args.framework} tables (aiconfigurator-core {aic.package_version()})")
        print(f"# {name} ({ref.system}, {args.framework})")
        for ex in ("eager", "graphs") if profile.graphs else ("eager",):
            print(f"## before, {ex} (roofline alone)\n" + summary(comparison(profile, ref, ex))
                  .to_string(index=False))
        eg, em, ov, gerr, grows = gemm_fit(profile, ref)
        print(f"gemm: gemm_efficiency {eg:.3f}, memory_efficiency {em:.3f}, kernel_overhead_us "
              f"{ov:.1f}: median abs log error {gerr:.3f} over {grows} bf16 GEMMs")
        fitted = dataclasses.replace(profile, device=dataclasses.replace(
            profile.device, gemm_efficiency=eg, memory_efficiency=em, kernel_overhead_s=ov * 1e-6))
        f8 = fp8_fit(fitted, ref)
        if f8:
            print(f"fp8 gemm: fp8_gemm_efficiency {f8[0]:.2f}, fp8_quantize_us {f8[1]:.1f}: median abs "
                  f"log error {f8[2]:.3f} over {f8[3]} per-tensor FP8 GEMMs")
        ae, am, af, ab, aerr, arows = attention_fit(profile, ref, ov * 1e-6)
        print(f"attention: attention_efficiency {ae:.3f}, attention_memory_efficiency {am:.3f}, "
              f"attention_floor_us {af:.2f}, attention_block_us {ab:.2f}: median abs log error "
              f"{aerr:.3f} over {arows} kernels")
        for ex in ("eager", "graphs"):
            fits = allreduce_fit(ref, ex, profile.max_devices)
            kind = "NCCL all_reduce" if ex == "eager" else "custom all-reduce (CUDA graphs)"
            print(f"all_reduce {ex}:")
            for n, fit in fits.items():
                print(_fmt_regimes(n, fit, f"{where}, {kind}"))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
