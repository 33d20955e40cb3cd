"""Engine speed: simulated ops per wall second of the op-level machine on a tensor-parallel run of
>= 1M ops (segments and mirroring off, no rows kept: every op on every device is simulated one
by one and folded into the totals), beside the rate of a bare SimPy timeout loop measured in the
same process (the ceiling for any SimPy model). The same run with mirrored devices, and with
segments too, is reported after.

    python benchmarks/engine_speed.py [--ops 1000000] [--devices 2]

Prints figures; it is a benchmark, not a timed test.
"""
from __future__ import annotations

import argparse
import time

import numpy as np
import simpy

from simulator.engine import SimRuntime
from simulator.hardware import load_hardware
from simulator.metrics import summarize
from simulator.model import load_model
from simulator.workload import LengthDist, Workload
from strategies.tp import TP


def bare_simpy_rate(n: int) -> float:
    env = simpy.Environment()

    def loop():
        for _ in range(n):
            yield env.timeout(1.0)

    env.process(loop())
    t0 = time.perf_counter()
    env.run()
    return n / (time.perf_counter() - t0)


def engine_rate(target_ops: int, devices: int, segments: bool = False,
                mirror: bool = False) -> tuple[int, float, float, float]:
    """(ops, wall s of the run, ops/s of the run, ops/s of the run and its metrics)."""
    hw = load_hardware("a100-sxm4-80gb")
    model = load_model("llama-2-7b")
    # ops per request: (layers * ops per layer + head) * steps * devices
    per_layer = 10 if devices > 1 else 8
    steps = 32
    per_request = (model.layers * per_layer + 3) * steps * devices
    requests = max(1, -(-target_ops // per_request))
    wl = Workload(requests, "poisson", 50.0, 1, LengthDist("fixed", 256, 256, 256),
                  LengthDist("fixed", steps, steps, steps))
    rt = SimRuntime(hw, devices, keep_ops=0, segments=segments, mirror=mirror)
    t0 = time.perf_counter()
    trace = rt.run(TP(model, devices), wl.source(np.random.default_rng(0)))
    wall = time.perf_counter() - t0
    summarize(trace)
    total = time.perf_counter() - t0
    return trace.total_ops, wall, trace.total_ops / wall, trace.total_ops / total


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--ops", type=int, default=1_000_000)
    ap.add_argument("--devices", type=int, default=2)
    ap.add_argument("--repeat", type=int, default=3, help="runs of each; best and median reported")
    args = ap.parse_args()
    bare, runs = [], []
    for _ in range(args.repeat):          # interleaved, so that machine noise hits both alike
        bare.append(bare_simpy_rate(1_000_000))
        runs.append(engine_rate(args.ops, args.devices))
    ops = runs[0][0]
    rates = sorted(r[2] for r in runs)
    bare.sort()
    print(f"tp run: {ops} ops on {args.devices} devices, {args.repeat} runs: "
          f"best {rates[-1]:,.0f}, median {rates[len(rates) // 2]:,.0f} simulated ops/s "
          f"(best wall {min(r[1] for r in runs):.2f} s)")
    print(f"bare SimPy timeout loop: best {bare[-1]:,.0f}, median {bare[len(bare) // 2]:,.0f} events/s")
    with_metrics = sorted(r[3] for r in runs)
    print(f"run and its metrics (summarize): median {with_metrics[len(with_metrics) // 2]:,.0f} ops/s")
    print(f"ratio engine/bare (medians): {rates[len(rates) // 2] / bare[len(bare) // 2]:.3f}")
    mir = engine_rate(args.ops, args.devices, mirror=True)
    print(f"same run with mirrored devices: {mir[2]:,.0f} simulated ops/s ({mir[1]:.2f} s)")
    seg = engine_rate(args.ops, args.devices, segments=True, mirror=True)
    print(f"same run with segments and mirrored devices: {seg[2]:,.0f} simulated ops/s "
          f"({seg[1]:.2f} s)")


if __name__ == "__main__":
    main()
