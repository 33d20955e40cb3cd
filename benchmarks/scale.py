"""Scale: wall time and peak memory of serving-sized runs, one case per child process.

    python benchmarks/scale.py [--cases 13b,70b,7b,cb70b,offline8b] [--requests-scale 1.0]
                               [--timeout-s 900]

Cases (what the scale issue asks of the simulator):
- 13b: Llama-2-13B on 4 x A100 SXM, 1000 requests, Poisson 2 req/s, prompts uniform 128-1024,
  16-64 output tokens; tp, pp, iso and liger (aims: <= 20 s, <= 1 GiB each).
- 70b: Llama-2-70B liger on 8 x A100 SXM, 1000 requests at 0.25 req/s, prompts 128-1024,
  32-128 output tokens (aim: <= 60 s).
- 7b: Llama-2-7B tp on 2 x A100 SXM, single-pass 128-token requests at 50 req/s, 1k / 10k / 100k
  requests (aims: time linear in requests, <= 1 GiB at 100k).
- cb70b: continuous batching, Llama-3-70B tp 8 on 8 x H100 SXM, 10,000 requests with Azure
  conversation lengths (prompts clipped to 6144) at 6 req/s, below tp8's saturation (aim: 60 s,
  2 GB).
- offline8b: continuous batching, Llama-3-8B on one H100, 30,000 requests of 128 prompt and 128
  output tokens all at once (an offline throughput benchmark; aim: 60 s).
`--requests-scale` multiplies every request count (for a quick look). Each run keeps no op rows
(as the runner does for untraced points). Peak memory is the child's maximum resident set size
(the interpreter and libraries included, about 100 MiB). A case over `--timeout-s` is reported as
such. Prints a table; it is a benchmark, not a timed test.
"""
from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import resource
import time

CASES = {
    "13b": [dict(model="llama-2-13b", hardware="a100-sxm4-80gb", devices=4, strategy=s,
                 requests=1000, rate_rps=2.0, prompt=(128, 1024), output=(16, 64))
            for s in ("tp", "pp", "iso", "liger")],
    "70b": [dict(model="llama-2-70b", hardware="a100-sxm4-80gb", devices=8, strategy="liger",
                 requests=1000, rate_rps=0.25, prompt=(128, 1024), output=(32, 128))],
    "7b": [dict(model="llama-2-7b", hardware="a100-sxm4-80gb", devices=2, strategy="tp",
                requests=n, rate_rps=50.0, prompt=(128, 128), output=(1, 1))
           for n in (1_000, 10_000, 100_000)],
    # continuous batching (serving: {scheduler: continuous}, its defaults)
    "cb70b": [dict(model="llama-3-70b", hardware="h100-sxm5-80gb", devices=8, strategy="tp",
                   requests=10_000, rate_rps=6.0, lengths="azure-conv-2023", continuous=True)],
    "offline8b": [dict(model="llama-3-8b", hardware="h100-sxm5-80gb", devices=1, strategy="tp",
                       requests=30_000, rate_rps=0.0, prompt=(128, 128), output=(128, 128),
                       continuous=True)],
}


def run_case(case: dict) -> dict:
    """Simulate one case in this process; returns its figures."""
    import numpy as np

    from simulator.batching import Scheduler, ServingConfig, kv_cache_blocks
    from simulator.engine import SimRuntime
    from simulator.hardware import load_hardware
    from simulator.model import load_model
    from simulator.runner import make_strategy
    from simulator.workload import parse_workload

    hw = load_hardware(case["hardware"])
    model = load_model(case["model"])
    spec = {"requests": case["requests"],
            "arrival": {"kind": "poisson", "rate_rps": case["rate_rps"]} if case["rate_rps"]
            else {"kind": "all_at_once"}}
    if "lengths" in case:
        spec["lengths"] = {"dataset": case["lengths"], "max_prompt_tokens": 6144}
    else:
        (lo, hi), (olo, ohi) = case["prompt"], case["output"]
        spec["prompt_tokens"] = {"dist": "uniform", "low": lo, "high": hi}
        spec["output_tokens"] = {"dist": "uniform", "low": olo, "high": ohi}
    wl = parse_workload(spec, "scale")
    strategy = make_strategy({"name": case["strategy"]}, model, case["devices"], "scale", "strategy")
    scheduler = None
    if case.get("continuous"):
        cfg = ServingConfig(scheduler="continuous")
        tp, pp = strategy.parallel_layout()
        blocks, _ = kv_cache_blocks(model, hw.device.memory_bytes, tp, pp, None, cfg,
                                    cfg.max_num_batched_tokens)
        scheduler = Scheduler(cfg, blocks)
    t0 = time.perf_counter()
    trace = SimRuntime(hw, case["devices"], keep_ops=0).run(
        strategy, wl.source(np.random.default_rng(0)), scheduler)
    wall = time.perf_counter() - t0
    return {"ops": trace.total_ops, "wall_s": wall,
            "peak_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0,
            "simulated_s": trace.meta["makespan_s"]}


def _child(case: dict, conn) -> None:
    try:
        conn.send(run_case(case))
    except BaseException as exc:          # reported in the table, not raised
        conn.send({"error": f"{type(exc).__name__}: {exc}"})


def measure(case: dict, timeout_s: float) -> dict:
    ctx = mp.get_context("spawn")          # a fresh interpreter: peak memory is the case's own
    parent, child = ctx.Pipe(duplex=False)
    proc = ctx.Process(target=_child, args=(case, child))
    t0 = time.perf_counter()
    proc.start()
    out = parent.recv() if parent.poll(timeout_s) else {"error": f"over {timeout_s:.0f} s"}
    proc.kill()
    proc.join()
    out.setdefault("total_s", time.perf_counter() - t0)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--cases", default="13b,70b,7b,cb70b,offline8b")
    ap.add_argument("--strategies", default="", help="comma-separated: only these strategies")
    ap.add_argument("--requests-scale", type=float, default=1.0)
    ap.add_argument("--timeout-s", type=float, default=900.0)
    ap.add_argument("--json", action="store_true", help="one JSON object per case instead of a table")
    args = ap.parse_args()
    print(f"{'case':5s} {'model':12s} {'dev':>3s} {'strategy':8s} {'requests':>9s} {'ops':>12s} "
          f"{'wall_s':>8s} {'peak_mib':>9s} {'ops/s':>10s}")
    for name in args.cases.split(","):
        for case in CASES[name]:
            if args.strategies and case["strategy"] not in args.strategies.split(","):
                continue
            case = dict(case, requests=max(1, round(case["requests"] * args.requests_scale)))
            res = measure(case, args.timeout_s)
            if args.json:
                print(json.dumps({"case": name, **case, **res}))
                continue
            if "error" in res:
                print(f"{name:5s} {case['model']:12s} {case['devices']:3d} {case['strategy']:8s} "
                      f"{case['requests']:9d}  {res['error']}")
                continue
            print(f"{name:5s} {case['model']:12s} {case['devices']:3d} {case['strategy']:8s} "
                  f"{case['requests']:9d} {res['ops']:12,d} {res['wall_s']:8.1f} "
                  f"{res['peak_mib']:9.0f} {res['ops'] / res['wall_s']:10,.0f}", flush=True)


if __name__ == "__main__":
    main()
