"""simulator/calibrate/steadiness.py: how much slower the calibration runs ran the same kernels."""
from __future__ import annotations

import pytest

from simulator.calibrate.steadiness import MIN_SAMPLES, kernel_slowdown
from simulator.ops import Collective, Elementwise, Gemm

DECODE = Gemm(1, 512, 512, "fp32", "qkv")
PREFILL = Gemm(128, 1376, 512, "fp32", "ffn_up")
NORM = Elementwise(4096.0, "norm")


def _log(ops_seconds, run: str, n: int = MIN_SAMPLES, outliers: int = 0) -> list:
    """An op log (TorchRuntime.run_log entries tagged with their run): each (op, seconds) `n`
    times, back to back on device 0, stream 0, the first `outliers` of each 50 times as long."""
    entries, t = [], 0.0
    for op, seconds in ops_seconds:
        for i in range(n):
            took = seconds * (50 if i < outliers else 1)
            entries.append((op, 0, 0, t, t + took, t, run))
            t += took + 1e-6
    return entries


def test_the_same_kernels_run_half_again_as_long_read_as_1_5():
    measured = _log([(DECODE, 100e-6), (PREFILL, 2e-3), (NORM, 20e-6)], "tp#m0")
    calibration = _log([(DECODE, 150e-6), (PREFILL, 3e-3), (NORM, 30e-6)], "tp#0")
    assert kernel_slowdown(calibration, measured) == pytest.approx(1.5)
    assert kernel_slowdown(measured, calibration) == pytest.approx(1 / 1.5)
    assert kernel_slowdown(measured, measured) == pytest.approx(1.0)


def test_it_is_the_median_over_shapes_of_median_ratios():
    """One shape far off (a kernel that really changed) and a run's tail of slow calls (a
    contention tail the profile's means carry) do not move it."""
    measured = _log([(DECODE, 100e-6), (PREFILL, 2e-3), (NORM, 20e-6)], "tp#m0")
    calibration = _log([(DECODE, 110e-6), (PREFILL, 2.2e-3), (NORM, 200e-6)], "tp#0",
                       outliers=MIN_SAMPLES // 4)
    assert kernel_slowdown(calibration, measured) == pytest.approx(1.1)


def test_shapes_with_too_few_samples_and_collectives_do_not_count():
    ar = Collective("all_reduce", 4096.0, (0, 1), "ar")
    measured = _log([(DECODE, 100e-6)], "tp#m0", n=MIN_SAMPLES - 1) + \
        _log([(ar, 1e-3)], "tp#m0") + _log([(PREFILL, 2e-3)], "tp#m0")
    calibration = _log([(DECODE, 500e-6)], "tp#0") + _log([(ar, 9e-3)], "tp#0") + \
        _log([(PREFILL, 3e-3)], "tp#0", n=MIN_SAMPLES - 1)
    assert kernel_slowdown(calibration, measured) is None       # no shape in both, enough times
    assert kernel_slowdown(calibration + _log([(NORM, 40e-6)], "tp#0"),
                           measured + _log([(NORM, 20e-6)], "tp#m0")) == pytest.approx(2.0)


def test_shapes_only_one_kind_ran_do_not_count():
    measured = _log([(DECODE, 100e-6), (NORM, 20e-6)], "tp#m0")
    calibration = _log([(PREFILL, 9e-3), (NORM, 25e-6)], "tp#0")
    assert kernel_slowdown(calibration, measured) == pytest.approx(1.25)
    assert kernel_slowdown([], measured) is None
