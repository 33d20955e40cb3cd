"""In-sample check of the closed loop: each run predicted from its own op log.

`parasim validate` predicts measured runs from *other* runs (its in-run calibration), so its error
mixes what the simulator gets wrong with how much two runs of this machine differ. Here every run
of every strategy of the experiment is logged (TorchRuntime.run_log), its own log becomes a
profile (the strategy's in-run variant: tables, jitter, reactions, member lags; inrun.py), and the
simulator predicts that very run (same requests, planning with the same micro-benchmarked
profile). What is left is the model's error: a run's time that the profile's numbers, put
together by the simulator, do not account for (docs/validation.md, "In-sample"). Prints each run's
error and, per strategy, their mean and spread. About 15 s a round per strategy on the 2-core
development machine. Needs torch: ``pip install -e '.[torch]'``.

Usage: ``python benchmarks/in_sample.py [--rounds 3] [--experiment FILE] [--csv FILE]``
"""
from __future__ import annotations

import argparse
import importlib.util
import os
import statistics
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

EXPERIMENT = Path(__file__).resolve().parent.parent / "experiments" / "validation" / "validate-cpu.yaml"


def logged_run(job, runtime: str = "torch"):
    """(mean JCT, RunLog) of one TorchRuntime run of `job`."""
    from simulator.jobs import build, simulate
    from simulator.metrics import summarize
    from simulator.torchrt.runtime import RunLog
    built = build(job)
    run_log = RunLog()
    trace = simulate(built, 0, runtime=runtime, run_log=run_log)
    return summarize(trace, built.slo)["jct_mean_s"], run_log


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--experiment", default=str(EXPERIMENT))
    p.add_argument("--csv", default=None, help="also write every run's row here")
    args = p.parse_args(argv)
    if importlib.util.find_spec("torch") is None:
        print("needs torch: pip install -e '.[torch]'", file=sys.stderr)
        return 2
    import pandas as pd
    from simulator.calibrate.insample import in_sample_prediction
    from simulator.calibrate.shapes import CI_GRID
    from simulator.hardware import load_hardware
    from simulator.calibrate.validate import calibrate_micro, plan_validation, with_hardware
    rows = []
    with tempfile.TemporaryDirectory(prefix="parasim-insample-") as out:
        _plan, jobs = plan_validation(args.experiment)
        micro = os.path.abspath(calibrate_micro(jobs, out, 3, CI_GRID, lambda line: None))
        planning = load_hardware(micro)
        for r in range(args.rounds):
            for job in jobs:
                job = with_hardware(job, micro)
                measured, run_log = logged_run(job)
                predicted = in_sample_prediction(job, run_log, micro, planning)
                err = predicted / measured - 1
                rows.append({"round": r, "strategy": job.label, "measured_jct_mean_s": measured,
                             "predicted_jct_mean_s": predicted, "jct_rel_error": err})
                print(f"round {r} {job.label}: measured {measured * 1e3:.1f} ms, predicted "
                      f"{predicted * 1e3:.1f} ms ({err:+.1%})", flush=True)
    frame = pd.DataFrame(rows)
    print()
    for label, group in frame.groupby("strategy", sort=False):
        errs = list(group["jct_rel_error"])
        spread = statistics.stdev(errs) if len(errs) > 1 else 0.0
        print(f"{label}: mean {statistics.fmean(errs):+.1%}, sd {spread:.1%}, "
              f"range {min(errs):+.1%} .. {max(errs):+.1%}")
    if args.csv:
        frame.to_csv(args.csv, index=False)
        print(f"wrote {args.csv}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
