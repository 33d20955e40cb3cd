"""Op-time jitter: how much an op's time varies from one run of it to the next.

The cost model gives each op one time, its mean. Real ops vary (a CPU thread's wake-up, clocks,
caches), and where devices meet in a collective the faster ones wait for the slowest: with
variation, a bulk-synchronous step takes longer than the sum of its ops' means. A profile's
`device.jitter_cv` gives, per op family, the coefficient of variation (standard deviation over
mean) of the op's time; the simulator then multiplies each op's time on each device by its own
lognormal draw with mean 1 and that CV (a collective's transfer: one draw for the group), from a
generator seeded by the run's seed, so a run is reproducible. In-run calibration measures the CVs
(docs/validation.md); built-in profiles have none, and then nothing here runs.
"""
from __future__ import annotations

import math
from typing import Mapping

import numpy as np

_BATCH = 4096          # standard normal draws made at once
_STREAM = 0x6A17       # with the run's seed: a stream of its own, apart from the workload's


class Jitter:
    """Seeded multipliers of op times per family (module docstring)."""

    def __init__(self, cv: Mapping[str, float], seed: int):
        self.params = {}
        for family, c in cv.items():
            if c > 0:
                s2 = math.log1p(c * c)             # lognormal: E = 1, sd / E = c
                self.params[family] = (-s2 / 2.0, math.sqrt(s2))
        self.rng = np.random.default_rng([seed, _STREAM])
        self.normals: list = []

    def scale(self, family: str, seconds: float) -> float:
        """`seconds` times a fresh draw for `family` (unchanged for a family without jitter)."""
        p = self.params.get(family)
        if p is None:
            return seconds
        if not self.normals:
            self.normals = self.rng.standard_normal(_BATCH).tolist()
        return seconds * math.exp(p[0] + p[1] * self.normals.pop())
