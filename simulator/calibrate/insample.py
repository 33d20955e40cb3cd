"""In-sample prediction: a measured run predicted from its own op log.

`parasim validate` predicts the measured runs from *other* runs (the in-run calibration), so its
error mixes what the simulator gets wrong with how much two runs of the machine differ (on the
shared 2-core development machine, the same run varies by 2-100% of its time). Here a measured
run's own log (TorchRuntime.run_log: every op's times, the host's costs and reactions) becomes a
profile exactly as in-run calibration writes one (the strategy's variant: tables, jitter,
reactions, member lags; inrun.py), and the simulator predicts that very run: the same requests,
the host program planning with the same profile. What is left is the model's error, the part of
a run's time that the profile's numbers, put together by the simulator, do not account for
(docs/validation.md, "In-sample").
"""
from __future__ import annotations

import os
import shutil
import tempfile

from simulator.errors import ConfigError


def in_sample_prediction(job, run_log, base: str, planning=None) -> float:
    """The mean JCT the simulator predicts for `job` from the profile written from `run_log` (the
    log of one run of `job`, its entries not yet tagged with a run) over the profile at `base`
    (a calibrated profile file, its tables beside it), in a scratch folder; `planning`: the
    HardwareProfile the host program plans with, as in the measured run."""
    from simulator.runner import run_job
    from .inrun import jitter_ratios, measured_times, write_inrun_profile
    from .lags import member_lags
    from .validate import with_hardware
    ops = [entry + (f"{job.label}#0",) for entry in run_log.ops]
    here = os.path.dirname(os.path.abspath(base))
    stem = os.path.splitext(os.path.basename(base))[0]
    with tempfile.TemporaryDirectory(prefix="parasim-insample-") as folder:
        for name in os.listdir(here):
            if name.startswith(stem) and "-inrun" not in name:
                shutil.copy(os.path.join(here, name), folder)
        _, variants = write_inrun_profile(
            os.path.join(folder, os.path.basename(base)), measured_times(ops), "one run",
            lambda line: None, run_log.host, {job.label: run_log.host}, jitter_ratios(ops),
            {job.label: ops}, member_lags(ops))
        res = run_job(with_hardware(job, variants[job.label]), planning=planning)
    if res.error:
        raise ConfigError(base, "", f"{job.label}: the simulator cannot run it with its own "
                          f"run's profile: {res.error}")
    return res.row["jct_mean_s"]
