"""Did the calibration runs see the machine the measured runs saw?

The closed loop predicts a strategy's measured runs from its calibration runs, taken in the same
minutes (validate.schedule). On a shared machine that is not always enough: in a disturbed
stretch the same kernels run two or three times slower for a while, and if that while holds the
calibration runs and not the measured runs (or the other way round), the prediction is off by as
much, whatever the simulator does (docs/validation.md, "Steadiness"). Both kinds of run time the
very same kernels (the model's GEMMs, attention and elementwise ops, the same shapes: decode
steps of every request), so the kernels themselves say how fast the machine was in each:

    kernel_slowdown = median over shapes of median(calibration times) / median(measured times)

over the compute shapes both kinds ran at least MIN_SAMPLES times. 1.0: the same machine; 1.5:
the calibration runs saw a machine half again as slow. It compares two measurements of the same
kernels, never a prediction. Medians, so a run's own contention tail (which the profile's means
carry) does not move it.
"""
from __future__ import annotations

import statistics
from collections import defaultdict

from .inrun import op_samples

COMPUTE_FAMILIES = ("gemm", "attention", "elementwise")
MIN_SAMPLES = 20        # samples of a shape in each kind of run that make its ratio count


def _times_by_shape(entries) -> dict:
    """(family, key) -> [seconds] of the compute ops in a tagged op log (entries end with
    their run's name)."""
    out = defaultdict(list)
    for s in op_samples(entries):
        if s.family in COMPUTE_FAMILIES:
            out[(s.family, s.key)].append(s.seconds)
    return out


def kernel_slowdown(calibration_entries, measured_entries) -> float | None:
    """How much slower the calibration runs ran the kernels both kinds of run ran (module doc);
    None when no shape has MIN_SAMPLES in both."""
    cal, meas = _times_by_shape(calibration_entries), _times_by_shape(measured_entries)
    ratios = [statistics.median(cal[k]) / statistics.median(meas[k])
              for k in cal.keys() & meas.keys()
              if len(cal[k]) >= MIN_SAMPLES and len(meas[k]) >= MIN_SAMPLES
              and statistics.median(meas[k]) > 0]
    return statistics.median(ratios) if ratios else None
