"""The closed loop's errors: predicted against measured mean JCT, per strategy, over sittings.

Each sitting is what `tests/test_validation.py` runs (docs/validation.md, "The closed loop"):
calibrate this machine on the CI grid, two in-run calibration runs per strategy, three measured
runs, on `experiments/validation/validate-cpu.yaml`. Prints each sitting's errors as it ends and
then, per strategy, the range and the mean of the error and of the runs' spread, and the range
of the in-sample error (each measured run predicted from its own log: the model's error apart
from run-to-run noise); `--csv` also writes every row. The test holds every strategy to 25%
widened by two standard errors of the measured mean (`measured_jct_sem`), at most 50%; the aim
is 10%. About 130 s a sitting on the 2-core development machine (plus `--warm-up-s`). Needs
torch: ``pip install -e '.[torch]'``.

Usage: ``python benchmarks/closed_loop.py [--sittings 3] [--csv FILE] [--experiment FILE]
[--repeat 3] [--calibration-runs 2] [--warm-up-s 0]``
"""
from __future__ import annotations

import argparse
import importlib.util
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import pandas as pd  # noqa: E402

EXPERIMENT = Path(__file__).resolve().parent.parent / "experiments" / "validation" / "validate-cpu.yaml"
COLUMNS = ["strategy", "measured_jct_mean_s", "predicted_jct_mean_s", "jct_rel_error",
           "measured_jct_noise", "measured_jct_sem", "throughput_rel_error",
           "microbench_jct_rel_error", "insample_jct_rel_error", "insample_jct_rel_errors",
           "calibration_kernel_slowdown"]


def sitting(index: int, experiment: Path = EXPERIMENT, repeat: int = 3,
            calibration_runs: int = 2, warm_up_s: float | None = None) -> pd.DataFrame:
    from simulator.calibrate.shapes import CI_GRID
    from simulator.calibrate.validate import WARM_UP_S, validate
    with tempfile.TemporaryDirectory(prefix="parasim-loop-") as out:
        result = validate(str(experiment), out, repeat=repeat, reps=3, grid=CI_GRID,
                          calibration_runs=calibration_runs, log=lambda line: None,
                          warm_up_s=WARM_UP_S if warm_up_s is None else warm_up_s)
    frame = result.frame[[c for c in COLUMNS if c in result.frame]].copy()
    frame.insert(0, "sitting", index)
    return frame


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--sittings", type=int, default=3)
    p.add_argument("--csv", default=None, help="also write every sitting's rows here")
    p.add_argument("--experiment", default=str(EXPERIMENT),
                   help="the experiment to validate (default: the CI's validate-cpu.yaml)")
    p.add_argument("--repeat", type=int, default=3,
                   help="measured runs per strategy and sitting (the test's: 3)")
    p.add_argument("--calibration-runs", type=int, default=2,
                   help="in-run calibration runs per strategy and sitting (the test's: 2)")
    p.add_argument("--warm-up-s", type=float, default=None,
                   help="seconds of unmeasured warm-up rounds (the test's: validate's default)")
    args = p.parse_args(argv)
    if importlib.util.find_spec("torch") is None:
        print("needs torch: pip install -e '.[torch]'", file=sys.stderr)
        return 2
    frames = []
    for i in range(1, args.sittings + 1):
        t0 = time.perf_counter()
        frame = sitting(i, Path(args.experiment), args.repeat, args.calibration_runs,
                        args.warm_up_s)
        frames.append(frame)
        print(f"sitting {i} ({time.perf_counter() - t0:.0f} s): " + ", ".join(
            f"{r.strategy} {r.jct_rel_error:+.1%} (in-sample {r.insample_jct_rel_error:+.1%}, "
            f"kernels {getattr(r, 'calibration_kernel_slowdown', float('nan')):.2f}x)"
            for r in frame.itertuples()), flush=True)
    rows = pd.concat(frames, ignore_index=True)
    summary = rows.groupby("strategy", sort=False).agg(
        measured_ms_min=("measured_jct_mean_s", lambda s: 1e3 * s.min()),
        measured_ms_max=("measured_jct_mean_s", lambda s: 1e3 * s.max()),
        error_min=("jct_rel_error", "min"), error_max=("jct_rel_error", "max"),
        error_mean=("jct_rel_error", "mean"),
        worst_abs_error=("jct_rel_error", lambda s: s.abs().max()),
        spread_max=("measured_jct_noise", "max"),
        insample_min=("insample_jct_rel_error", "min"),
        insample_max=("insample_jct_rel_error", "max"))
    print()
    print(summary.to_string(float_format=lambda v: f"{v:.3g}"))
    if args.csv:
        from simulator.io import write_csv
        write_csv(args.csv, rows)
        print(f"\nwrote {args.csv}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
