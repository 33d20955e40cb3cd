"""The calibration runs' arrivals: the measured workload's load, another arrival pattern.

In-run calibration runs each strategy on *other* requests than the ones it predicts (the
experiment's seed plus CALIBRATION_SEED_OFFSET + i), so that a prediction never sees its own
workload. But a short workload's realised load varies with its seed far more than its nominal
rate says: 20 Poisson arrivals at 5 requests/s span 5.3 s with the CI experiment's seed and
2.2 s with another, and on TorchRuntime's CPU devices every reaction time and contention the
calibration measures is that load's (docs/validation.md, "Errors measured"). `same_load` keeps
the calibration run's own requests (their lengths from its own seed) and gives them the
measured workload's inter-arrival gaps in an order drawn from that seed: the same offered load
and the same gaps, a different pattern of which requests overlap.
"""
from __future__ import annotations

from dataclasses import replace

import numpy as np

OPEN_LOOP = ("poisson", "fixed_rate", "trace")     # arrivals whose times a workload sets itself


def same_load(measured, own):
    """`own`'s workload (a jobs.Built: a calibration run's) with its requests arriving at
    `measured`'s inter-arrival gaps (`measured`: the Built whose runs are predicted), shuffled
    by `own`'s seed; unchanged where the arrivals are not open-loop (closed-loop clients and
    all-at-once set their load by themselves)."""
    w = own.workload
    if w.arrival not in OPEN_LOOP or measured.workload.arrival not in OPEN_LOOP:
        return w
    theirs = measured.workload.generate(np.random.default_rng(measured.seed))
    mine = w.generate(np.random.default_rng(own.seed))
    gaps = np.diff([r.arrival_s for r in theirs])
    order = np.random.default_rng([own.seed, len(gaps)]).permutation(len(gaps))
    times = np.concatenate([[0.0], np.cumsum(gaps[order])]) + theirs[0].arrival_s
    rows = tuple((float(t), r.prompt_tokens, r.output_tokens) for t, r in zip(times, mine))
    return replace(w, arrival="trace", trace_rows=rows, requests=len(rows))
