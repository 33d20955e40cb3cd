"""`parasim calibrate --device cuda`: a GPU's hardware profile measured through TorchRuntime's own
work (gpu.py's micro-benchmarks) and written like the CPU's (profile.py: tables beside the
profile, every number sourced).

What differs from the CPU profile (docs/validation.md, "On a GPU"):
- device name, SMs and memory are the GPU's own (torch.cuda.get_device_properties);
- peak_tflops per dtype: the fastest rate of a large square GEMM in that dtype or of any measured
  GEMM of it (fp8 runs as float16: TorchRuntime has no scaled-matmul path);
- contention: model factor; compute and memory slowdowns and low_priority_share measured on two
  streams of GPU 0; the pairs with comm come from the matching built-in profile where one
  matches (same GPU name, memory within 15%), else 1.0, said as assumed;
- interconnect: with --devices >= 2 every collective and send/recv is measured on NCCL and fitted;
  with one GPU nothing can be, so the matching built-in profile's links are copied with their
  sources (or placeholders, said as assumed, where none matches).
"""
from __future__ import annotations

import re
import time

from simulator.hardware import builtin_names
from simulator.ops import Gemm
from simulator.safe_yaml import parse_yaml

from . import bench, gpu
from .profile import (Calibration, _draft, _dtypes, _num, _profile_data, _source, emit,
                      measured_device, measured_links, time_families)

COMM_PAIRS = ("compute_by_comm", "comm_by_compute", "memory_by_comm", "comm_by_memory")


def calibrate_gpu(model, devices: int, out_path: str, shapes, reps: int = 5, log=print,
                  timing=None) -> Calibration:
    """Measure `shapes` on GPUs 0..devices-1 (module doc). `timing`: gpu.CudaTiming(0) by
    default; gpu.HostTiming drives the same steps on this CPU (the tests)."""
    t_start = time.perf_counter()
    timing = timing or gpu.CudaTiming(0)                        # pragma: no cover - needs CUDA
    compute = time_families(shapes, lambda ops: gpu.time_ops(timing, ops, reps),
                            str(timing.device), log)
    peaks = {}
    for dt in _dtypes(model):
        big = gpu.time_ops(timing, [gpu.peak_gemm(model.hidden, dt)], reps)[0]
        rates = [t.op.flops / t.seconds for t in compute
                 if isinstance(t.op, Gemm) and t.op.dtype == dt] + [big.op.flops / big.seconds]
        peaks[dt] = max(rates)
    log("calibrate: peak GEMM rates: " + ", ".join(f"{d} {r / 1e12:.3g} TFLOP/s"
                                                    for d, r in peaks.items()))
    comm = []
    if devices > 1:
        t0 = time.perf_counter()
        comm = bench.time_comm(devices, sorted(shapes.comm, key=repr), reps,
                               device_type=timing.name)
        log(f"calibrate: collectives and send/recv: {len(comm)} (kind, group, size) "
            f"({time.perf_counter() - t0:.1f} s)")
    t0 = time.perf_counter()
    cont = gpu.contention(timing, model.hidden, model.dtype, reps)
    log(f"calibrate: two-stream contention ({time.perf_counter() - t0:.1f} s)")
    overheads = bench.runtime_overheads(_draft(devices, _dtypes(model)), devices,
                                        device_type=timing.name)
    log(f"calibrate: runtime: launch {overheads['launch_s'] * 1e6:.1f} us per op on the host, "
        f"gap {overheads['gap_s'] * 1e6:.1f} us between kernels")
    facts = gpu.device_facts(timing)
    data = gpu_profile_data(model, devices, compute, comm, cont, overheads, peaks, facts)
    return emit(model, devices, out_path, data, compute + comm, overheads, cont,
                time.perf_counter() - t_start, log)


def gpu_profile_data(model, devices: int, compute, comm, cont: dict, overheads: dict,
                     peaks: dict, facts: dict) -> dict:
    """The profile's data from what was measured (module doc)."""
    meas = _source("measured")
    dev = measured_device(model, devices, compute, overheads, peaks, sms=facts["sms"])
    coll, p2p = measured_links(devices, comm)
    match = matching_builtin(facts)
    data = _profile_data(devices, dev, coll, p2p, factor_contention(cont, match), {})
    slug = re.sub(r"[^a-z0-9]+", "-", facts["name"].lower()).strip("-") or "gpu"
    data["name"] = f"{slug}-calibrated"
    data["description"] = (f"{facts['name']} x{devices}, measured by parasim calibrate through "
                           f"TorchRuntime's CUDA work")
    d = data["device"]
    d["name"] = facts["name"]
    d["sms"] = _num(int(facts["sms"]), f"{meas} ({facts['source']})")
    if facts.get("memory_bytes"):
        d["memory_gib"] = _num(facts["memory_bytes"] / 2**30, f"{meas} ({facts['source']})")
    d["peak_tflops"] = {k: _num(v / 1e12, meas + ", the fastest GEMM rate in " + k
                                + (" (run as float16)" if k == "fp8" else ""))
                        for k, v in peaks.items()}
    d["dispatch_us"]["source"] = meas + ": the gap between two back-to-back kernels of a stream"
    if devices == 1:
        data["interconnect"] = single_gpu_links(match)
    else:
        data["interconnect"]["topology"] = match["interconnect"]["topology"] if match \
            else "pcie_p2p"
        data["interconnect"]["shared_link"] = False
    return data


def matching_builtin(facts: dict) -> dict | None:
    """The raw data of the built-in profile of this GPU, with its name under '_name', or None.
    It matches when its device name's model number (its first word with a digit: H200, A100,
    MI300X) is a word of the CUDA name, its form factor agrees (a PCIe or NVL profile needs the
    word in the CUDA name; an SXM one needs neither of them there) and its memory is within 15%;
    of several, the closest memory."""
    from importlib import resources
    name, mem = facts["name"].upper().replace("-", " "), facts.get("memory_bytes")
    if not mem:
        return None
    best = None
    for builtin in builtin_names():
        raw = parse_yaml(resources.files("hwprofiles").joinpath(f"{builtin}.yaml").read_bytes(),
                         builtin)
        words = str(raw["device"]["name"]).upper().split()
        model_no = next((w for w in words if re.search(r"\d", w)), None)
        if model_no is None or not re.search(rf"\b{re.escape(model_no)}\b", name):
            continue
        forms = [f for f in ("PCIE", "NVL") if f in words]
        if any(f not in name for f in forms) or (not forms and re.search(r"PCIE|NVL", name)):
            continue
        off = abs(mem / (raw["device"]["memory_gib"]["value"] * 2**30) - 1)
        if off < 0.15 and (best is None or off < best[0]):
            best = (off, {**raw, "_name": builtin})
    return best[1] if best else None


def factor_contention(cont: dict, match: dict | None) -> dict:
    """contention: model factor from the two-stream measurements; comm pairs from `match`."""
    meas = _source("measured")
    slowdown = {f"{a}_by_{b}": _num(max(1.0, r), meas + f": median time of a {a} op beside a "
                                    f"looping {b} op on a second stream, over its time alone "
                                    f"(ratio {r:.3g})")
                for (a, b), r in ((k, v) for k, v in cont.items() if isinstance(k, tuple))}
    theirs = match["contention"].get("slowdown", {}) if match and \
        match.get("contention", {}).get("model") == "factor" else {}
    for key in COMM_PAIRS:
        if key in theirs:
            slowdown[key] = {"value": theirs[key]["value"], "source": theirs[key]["source"]
                             + f" (from built-in profile {match['_name']})"}
        else:
            slowdown[key] = _num(1.0, "assumed: not measured (calibrate measures compute and "
                                 "memory pairs only) and no built-in profile of this GPU")
    share = cont["low_priority_share"]
    kept = min(0.5, max(share, 1e-3))
    return {"model": "factor", "slowdown": slowdown,
            "low_priority_share": _num(kept, meas + ": a GEMM's time alone over its time on a "
                                       "low-priority stream beside the same GEMM looping on a "
                                       "high-priority one" + ("" if kept == share else
                                       f" ({share:.3g}, kept within [0.001, 0.5]: a lower "
                                       "priority gets at most an even share)"))}


def single_gpu_links(match: dict | None) -> dict:
    """One GPU measures no link: the built-in profile's, else placeholders said as assumed."""
    if match:
        links = dict(match["interconnect"])
        links.pop("graphs", None)
        return links
    why = "assumed: placeholder, one GPU measures no link (calibrate with --devices >= 2)"
    return {"topology": "nvswitch",
            "collectives": {2: {"alpha_us": _num(10.0, why), "busbw_gb_per_s": _num(100.0, why)}},
            "p2p": {"alpha_us": _num(10.0, why), "bandwidth_gb_per_s": _num(100.0, why)},
            "shared_link": False}
