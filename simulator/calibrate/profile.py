"""`parasim calibrate`: measure this machine through TorchRuntime's own work and write a hardware
profile (YAML, every number sourced) plus measured tables (cost_tables CSVs) beside it.

What becomes what (docs/validation.md, "Calibrate"):
- tables: every measured op, its kernel's median time; dispatch_us: the stream thread's gap
  between two ops (TorchRuntime's per-op bookkeeping, measured), which the simulator adds to every
  op, so that a stream of simulated ops is as long as the real stream's;
- peak_tflops: the fastest measured GEMM rate; memory bandwidth: the fastest elementwise rate;
  gemm/attention/memory efficiencies: fitted so that the roofline (used outside the tables) meets
  the median measured op; kernel_overhead_us: the measured time of a tiny op;
- launch_overhead_us: the host thread's time per TorchRuntime.launch;
- collectives / p2p: alpha (median of the two smallest sizes) and bus bandwidth (largest size)
  fitted from the measured all_reduce / send_recv rows;
- contention: model cores (contention.CoreContention): the devices' threads share this machine's
  CPUs, each op using torch's intra-op threads; the class-pair measurements (two threads per
  device) are noted in its source.
"""
from __future__ import annotations

import csv
import datetime
import io
import math
import os
import platform
import statistics
import sys
import time
from dataclasses import dataclass

import torch

from simulator.cost import CostModel, collective_factor
from simulator.hardware import HardwareProfile, _parse
from simulator.io import write_text
from simulator.jobs import HOST_MEMORY_FRACTION, host_memory_bytes
from simulator.model import ModelSpec
from simulator.ops import Attention, Collective, Elementwise, Gemm, SendRecv
from simulator.torchrt.runtime import cpu_count

from . import bench
from .shapes import ShapeSet

TABLE_FAMILIES = ("gemm", "attention", "elementwise", "all_reduce", "all_gather",
                  "reduce_scatter", "all_to_all", "send_recv")


@dataclass
class Calibration:
    """What a calibration measured and wrote."""
    profile_path: str
    files: list
    rows: dict            # family -> rows written
    overheads: dict
    contention: dict
    seconds: float


def _source(kind: str) -> str:
    host = platform.node() or "this host"
    day = datetime.date.today().isoformat()
    what = "parasim calibrate" if kind == "measured" else \
        "parasim calibrate from the calibration's measurements"
    return f"{kind}: {what} on {host}, torch {torch.__version__}, {day}"


def _num(value: float, source: str) -> dict:
    return {"value": value if isinstance(value, int) else float(f"{value:.6g}"), "source": source}


def _csv_text(family: str, rows: list) -> str:
    keys = {"gemm": ("m", "n", "k", "dtype"),
            "attention": ("batch", "q_len", "kv_len", "heads", "kv_heads", "head_dim", "causal",
                          "dtype", "kv_dtype"),
            "elementwise": ("bytes",), "send_recv": ("bytes",)}.get(family, ("devices", "bytes"))
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(keys + ("seconds", "samples", "source"))
    for key, kernel, samples in sorted(rows, key=lambda r: tuple(str(x) for x in r[0])):
        w.writerow(list(key) + [f"{kernel:.9g}", samples, _source("measured")])
    return buf.getvalue()


def _key(op) -> tuple:
    if isinstance(op, Gemm):
        return "gemm", (op.m, op.n, op.k, op.dtype)
    if isinstance(op, Attention):
        return "attention", (op.batch, op.q_len, op.kv_len, op.heads, op.kv_heads, op.head_dim,
                             str(op.causal).lower(), op.dtype, op.kv_dtype or op.dtype)
    if isinstance(op, Elementwise):
        return "elementwise", (f"{op.bytes:.9g}",)
    if isinstance(op, SendRecv):
        return "send_recv", (f"{op.bytes:.9g}",)
    return op.kind, (len(op.group), f"{op.bytes:.9g}")


def _alpha_beta(timed: list, kind: str) -> tuple:
    """(alpha_s, bandwidth B/s) of t = alpha + factor * bytes / bw: alpha the median of the two
    smallest sizes, bw from the largest size's time beyond alpha."""
    pts = sorted((t.op.bytes, t.seconds, len(getattr(t.op, "group", (0, 1)))) for t in timed)
    alpha = statistics.median(s for _, s, _ in pts[:2])
    b, s, n = pts[-1]
    factor = collective_factor(kind, n) if kind != "send_recv" else 1.0
    return alpha, factor * b / max(s - alpha, s * 0.05)


def _efficiency(timed: list, model_s) -> float:
    """The efficiency e (<= 1) for which the roofline at e matches the median op: the median of
    (roofline time at efficiency 1) / measured time."""
    ratios = [model_s(t.op) / t.seconds for t in timed if t.seconds > 0]
    return min(1.0, max(1e-4, statistics.median(ratios))) if ratios else 1.0


def calibrate(model: ModelSpec, devices: int, out_path: str, shapes: ShapeSet, reps: int = 5,
              device_type: str = "cpu", log=print) -> Calibration:
    """Measure `shapes` on `devices` device threads (on `devices` GPUs with device_type "cuda":
    gpu_profile.py) and write the profile at `out_path` and its tables in the profile's folder
    (named PROFILE-FAMILY.csv)."""
    if device_type != "cpu":
        from .gpu_profile import calibrate_gpu
        return calibrate_gpu(model, devices, out_path, shapes, reps=reps, log=log)
    t_start = time.perf_counter()
    threads_before = torch.get_num_threads()
    torch.set_num_threads(max(1, cpu_count() // devices))
    try:
        pool = bench.DeviceThreads(devices)
        compute = time_families(shapes, lambda ops: bench.time_compute(pool, ops, reps),
                                f"{devices} device threads", log)
        t0 = time.perf_counter()
        comm = bench.time_comm(devices, sorted(shapes.comm, key=repr), reps)
        log(f"calibrate: collectives and send/recv: {len(comm)} (kind, group, size) "
            f"({time.perf_counter() - t0:.1f} s)")
        t0 = time.perf_counter()
        cont = bench.contention(devices, model.hidden, model.dtype, reps) if devices > 1 else {}
        log(f"calibrate: contention of op-class pairs ({time.perf_counter() - t0:.1f} s)")
    finally:
        torch.set_num_threads(threads_before)
    overheads = bench.runtime_overheads(_draft(devices, _dtypes(model)), devices)
    log(f"calibrate: runtime: launch {overheads['launch_s'] * 1e6:.1f} us per op on the host, "
        f"stream gap {overheads['gap_s'] * 1e6:.1f} us between ops")
    return _write(model, devices, out_path, compute, comm, cont, overheads,
                  time.perf_counter() - t_start, log)


def time_families(shapes: ShapeSet, time_ops, where: str, log) -> list:
    """`time_ops(ops)` over each compute family of `shapes` (sorted), with a line per family."""
    compute = []
    for family in ("gemm", "attention", "elementwise"):
        ops = sorted(getattr(shapes, family), key=repr)
        t0 = time.perf_counter()
        compute += time_ops(ops)
        log(f"calibrate: {family}: {len(ops)} shapes on {where} "
            f"({time.perf_counter() - t0:.1f} s)")
    return compute


def _dtypes(model) -> list[str]:
    """The dtypes a calibrated profile lists rates for: fp16 (a profile needs it), fp32 and the
    model's weight, activation and KV-cache dtypes."""
    return sorted({"fp16", "fp32", model.weight_dtype, model.activation_dtype,
                   model.kv_cache_dtype})


def _draft(devices: int, dtypes: list[str], **device) -> HardwareProfile:
    """A profile of placeholder numbers (for the runtime probe and the efficiency fits)."""
    return _parse(_profile_data(devices, {"peak": {d: 1.0 for d in dtypes}, "bw": 1e9,
                                          "gemm_eff": 1.0, "attn_eff": 1.0, "mem_eff": 1.0,
                                          "kernel_s": 0.0, "launch_s": 0.0, **device},
                                {}, {}, None, {}), "calibration draft")


def _profile_data(devices: int, dev: dict, coll: dict, p2p: dict, cont: dict | None,
                  tables: dict) -> dict:
    meas, fit = _source("measured"), _source("fitted")
    ram = host_memory_bytes() * HOST_MEMORY_FRACTION / devices
    threads = max(1, cpu_count() // devices)
    data = {
        "name": f"cpu-{platform.node() or 'host'}",
        "description": f"this machine's CPU as {devices} TorchRuntime devices of {threads} "
                       f"thread(s) each (torch {torch.__version__})",
        "max_devices": _num(devices, meas + f" (--devices {devices})"),
        "device": {
            "name": f"{platform.processor() or platform.machine()} x{threads} threads",
            "sms": _num(dev.get("sms", 1), "assumed: one execution unit: CPU kernels have no "
                        "thread-block waves"),
            "peak_tflops": {k: _num(v / 1e12, meas + ", the fastest GEMM rate"
                                    + (" (fp16 runs as float32 on CPU)" if k == "fp16" else ""))
                            for k, v in dev["peak"].items()},
            "memory_gib": _num(ram / 2**30, meas + f": {HOST_MEMORY_FRACTION:.0%} of the RAM over "
                               "the devices (what --runtime torch allows)"),
            "memory_bandwidth_gb_per_s": _num(dev["bw"] / 1e9, meas + ", the fastest elementwise "
                                              "rate (bytes touched per second)"),
            "gemm_efficiency": _num(dev["gemm_eff"], fit + " (median GEMM against its roofline)"),
            "attention_efficiency": _num(dev["attn_eff"], fit + " (median attention)"),
            "memory_efficiency": _num(dev["mem_eff"], fit + " (median elementwise op)"),
            "kernel_overhead_us": _num(dev["kernel_s"] * 1e6, meas + ": a tiny op's time"),
            "dispatch_us": _num(dev.get("dispatch_s", 0.0) * 1e6, meas + ": the stream thread's "
                                "gap between two back-to-back ops (its bookkeeping, the next "
                                "op's preparation)"),
        },
        "host": {"launch_overhead_us": _num(dev["launch_s"] * 1e6, meas + ": host time per "
                                            "TorchRuntime.launch")},
        "interconnect": {
            "topology": "pcie_host",
            "collectives": coll or {2: {"alpha_us": _num(100.0, "assumed: draft"),
                                        "busbw_gb_per_s": _num(1.0, "assumed: draft")}},
            "p2p": p2p or {"alpha_us": _num(100.0, "assumed: draft"),
                           "bandwidth_gb_per_s": _num(1.0, "assumed: draft")},
            "shared_link": True,
        },
        "contention": {"model": "factor", "slowdown": {}, "low_priority_share": _num(
            0.5, "assumed: draft")},
    }
    if cont:
        data["contention"] = cont
    if tables:
        data["measured_tables"] = tables
    return data


def measured_device(model, devices, compute, overheads, peaks: dict | None = None,
                    sms: int = 1) -> dict:
    """The device numbers measured ops make: peak per dtype (`peaks`, else the fastest GEMM
    rate for every dtype), memory bandwidth, overheads, and the efficiencies fitted against the
    roofline of a device of `sms` execution units."""
    gemms = [t for t in compute if isinstance(t.op, Gemm)]
    attns = [t for t in compute if isinstance(t.op, Attention)]
    elems = [t for t in compute if isinstance(t.op, Elementwise)]
    fastest = max((t.op.flops / t.seconds for t in gemms), default=1e9)
    dev = {"peak": peaks or {d: fastest for d in _dtypes(model)},
           "bw": max((t.op.bytes / t.seconds for t in elems), default=1e9),
           "kernel_s": overheads["tiny_op_s"], "launch_s": overheads["launch_s"],
           "dispatch_s": overheads["gap_s"], "sms": sms}
    unit = CostModel(_draft(devices, list(dev["peak"]), **dev))
    dev["gemm_eff"] = _efficiency(gemms, unit.seconds)
    dev["attn_eff"] = _efficiency(attns, unit.seconds)
    dev["mem_eff"] = _efficiency(elems, unit.seconds)
    return dev


def measured_links(devices, comm) -> tuple[dict, dict]:
    """(collectives by group size, p2p) alpha-beta fits of the measured all_reduce and send/recv
    rows ({} where none were measured)."""
    fit = _source("fitted")
    coll = {}
    for n in range(2, devices + 1):
        rows = [t for t in comm if isinstance(t.op, Collective) and t.op.kind == "all_reduce"
                and len(t.op.group) == n]
        if rows:
            a, b = _alpha_beta(rows, "all_reduce")
            src = fit + f" (alpha-beta of the measured all_reduce, {n} devices)"
            coll[n] = {"alpha_us": _num(a * 1e6, src), "busbw_gb_per_s": _num(b / 1e9, src)}
    sr = [t for t in comm if isinstance(t.op, SendRecv)]
    p2p = {}
    if sr:
        a, b = _alpha_beta(sr, "send_recv")
        src = fit + " (alpha-beta of the measured send/recv)"
        p2p = {"alpha_us": _num(a * 1e6, src), "bandwidth_gb_per_s": _num(b / 1e9, src)}
    return coll, p2p


def _write(model, devices, out_path, compute, comm, cont, overheads, seconds, log) -> Calibration:
    meas = _source("measured")
    dev = measured_device(model, devices, compute, overheads)
    coll, p2p = measured_links(devices, comm)
    contention = None
    if cont:
        pairs = ", ".join(f"{a} beside {b} {r:.3g}" for (a, b), r in
                          ((k, v) for k, v in cont.items() if isinstance(k, tuple))
                          if math.isfinite(r))
        threads = max(1, cpu_count() // devices)
        contention = {
            "model": "cores",
            "cores": _num(cpu_count(), meas + f": the CPUs this process may run on (op time "
                          f"with an op of another class on a second thread of each of {devices} "
                          f"devices over its time alone: {pairs}; two compute ops per device "
                          f"each ran at {cont.get('share', float('nan')):.3g} of its speed alone)"),
            "threads_per_op": _num(threads, f"assumed: TorchRuntime's setting, torch's intra-op "
                                   f"threads = CPUs // devices = {threads}")}
    data = _profile_data(devices, dev, coll, p2p, contention, {})
    return emit(model, devices, out_path, data, compute + comm, overheads, cont, seconds, log)


def emit(model, devices, out_path, data: dict, timed: list, overheads, cont, seconds,
         log) -> Calibration:
    """Write `timed`'s tables beside `out_path` (PROFILE-FAMILY.csv), name them in `data`'s
    measured_tables and write the profile."""
    by_family: dict = {}
    for t in timed:
        family, key = _key(t.op)
        by_family.setdefault(family, []).append((key, t.seconds, t.samples))
    folder = os.path.dirname(os.path.abspath(out_path))
    stem = os.path.splitext(os.path.basename(out_path))[0]
    tables, files, counts = {}, [], {}
    for family in TABLE_FAMILIES:
        rows = by_family.get(family)
        if not rows:
            continue
        name = f"{stem}-{family}.csv"
        write_text(os.path.join(folder, name), _csv_text(family, rows))
        files.append(os.path.join(folder, name))
        tables[family] = {"csv": name, "source": _source("measured")}
        counts[family] = len(rows)
    import yaml
    if tables:
        data["measured_tables"] = tables
    header = (f"# Calibrated by parasim calibrate on {platform.node()} ({devices} devices, model "
              f"{model.name}), torch {torch.__version__}, {datetime.datetime.now():%Y-%m-%d %H:%M}"
              f", {seconds:.0f} s.\n# Tables beside this file; docs/validation.md says what each "
              "number is.\n")
    write_text(out_path, header + yaml.safe_dump(data, sort_keys=False, width=120))
    files.insert(0, out_path)
    log(f"calibrate: wrote {out_path} and {len(files) - 1} tables ({seconds:.0f} s)")
    return Calibration(out_path, files, counts, overheads, cont, seconds)


def main_log(line: str) -> None:
    print(line, file=sys.stderr, flush=True)
