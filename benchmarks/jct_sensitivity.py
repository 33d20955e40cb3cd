"""How much a strategy's simulated mean JCT moves when the machine is slower: the load's amplifier.

The closed loop compares mean JCTs, but what differs between two runs of a shared machine is how
fast it ran. Under queueing a small difference in op times becomes a larger JCT difference
(docs/validation.md, "Why a JCT error is larger than the op times' error here"). For each strategy
of the experiment this simulates its in-run profile from a `parasim validate` folder at the
experiment's arrival rate and at `scale` times that rate. With every time scaled by `scale`, the
second run is the first with every time the profile gives (ops, dispatch, reactions, host costs)
`scale` times as long, so

    amplification = (scale * JCT(rate * scale) / JCT(rate) - 1) / (scale - 1)

(1.0: JCT moves as the machine's times do; 1.6: a 10% slower machine gives a 16% longer JCT).
The host program plans with the same micro-benchmarked profile at both rates, so a program that
paces itself by profiled times (pp) can come out a little below 1. Also prints a lone request's
JCT and the load it implies (lone JCT x rate). Simulation only: no torch needed, a few seconds.
The experiment's workload must have Poisson arrivals (`arrival: {kind: poisson, rate_rps: R}`).

Usage: ``python benchmarks/jct_sensitivity.py VALIDATE_DIR [--experiment FILE] [--rate R]
[--scale 1.1]`` where VALIDATE_DIR holds `calibrated.yaml` and `calibrated-inrun-host-*.yaml`
(what `parasim validate` writes).
"""
from __future__ import annotations

import argparse
import os
import sys
from dataclasses import replace
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

EXPERIMENT = (Path(__file__).resolve().parent.parent / "experiments" / "validation"
              / "validate-cpu.yaml")


def mean_jct_s(job, profile: str, planning, rate_rps: float, requests: int | None = None) -> float:
    """The job's simulated mean JCT with `profile` as its hardware, planning with `planning`, at
    Poisson arrivals of `rate_rps` (and `requests` requests where given)."""
    from simulator.calibrate.validate import with_hardware
    from simulator.runner import run_job
    workload = dict(job.config["workload"])
    workload["arrival"] = {**workload["arrival"], "rate_rps": rate_rps}
    if requests is not None:
        workload["requests"] = requests
    res = run_job(with_hardware(replace(job, config={**job.config, "workload": workload}),
                                profile), planning=planning)
    if res.error:
        raise SystemExit(f"{job.label}: the simulator cannot run it: {res.error}")
    return res.row["jct_mean_s"]


def amplification(base_s: float, scaled_s: float, scale: float) -> float:
    """(scale * scaled_s / base_s - 1) / (scale - 1): the module doc's formula."""
    return (scale * scaled_s / base_s - 1.0) / (scale - 1.0)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("folder", help="a parasim validate output folder")
    p.add_argument("--experiment", default=str(EXPERIMENT))
    p.add_argument("--rate", type=float, default=None,
                   help="arrival rate in requests/s (default: the experiment's)")
    p.add_argument("--scale", type=float, default=1.1, help="op-time factor (default 1.1)")
    args = p.parse_args(argv)
    if args.scale <= 1.0:
        p.error("--scale must be > 1")
    from simulator.calibrate.inrun import variant_path
    from simulator.calibrate.validate import plan_validation
    from simulator.hardware import load_hardware
    planner = os.path.join(args.folder, "calibrated.yaml")
    if not os.path.isfile(planner):
        p.error(f"{planner}: no such file (the folder must be a parasim validate output)")
    planning = load_hardware(planner)
    _plan, jobs = plan_validation(args.experiment)
    for job in jobs:
        arrival = job.config["workload"].get("arrival", {})
        if arrival.get("kind") != "poisson":
            p.error(f"{args.experiment}: workload.arrival: needs kind poisson, got {arrival}")
        rate = args.rate or float(arrival["rate_rps"])
        profile = variant_path(args.folder, "calibrated", job.label)
        if not os.path.isfile(profile):
            profile = os.path.join(args.folder, "calibrated-inrun.yaml")
        base = mean_jct_s(job, profile, planning, rate)
        scaled = mean_jct_s(job, profile, planning, rate * args.scale)
        lone = mean_jct_s(job, profile, planning, rate, requests=1)
        print(f"{job.label:12s} JCT {base * 1e3:7.1f} ms at {rate:g} requests/s; "
              f"times x{args.scale:g}: {args.scale * scaled * 1e3:7.1f} ms, amplification "
              f"{amplification(base, scaled, args.scale):.2f}; one request alone "
              f"{lone * 1e3:6.1f} ms (load ~{lone * rate:.2f})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
