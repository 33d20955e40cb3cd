"""Op-time jitter: how much an op's time varies from one run of it to the next.

The cost model gives each op one time, its mean. Real ops vary (a CPU thread's wake-up, clocks,
caches), and where devices meet in a collective the faster ones wait for the slowest: with
variation, a bulk-synchronous step takes longer than the sum of its ops' means. A profile's
`device.jitter` says, per op family, how an op's time varies, in one of two forms:

- a number, the coefficient of variation (standard deviation over mean): each time is multiplied
  by a lognormal draw with mean 1 and that spread (a form to write by hand: "kernels vary 3%");
- a list of ratios of an op's time to its mean, say its quantiles (what in-run calibration
  measures, docs/validation.md): each time is multiplied by one of them, drawn uniformly (the
  loader scales them to mean 1). Measured times are far from lognormal (a bulk of quick runs and
  a tail of thread wake-ups), and a list keeps their shape.

Each op on each device takes its own draw (a collective's transfer: one draw for the group),
from a generator seeded by the run's seed, so a run is reproducible. The same generator draws
the host's and the streams' reaction times where a profile gives them as lists of times
(`host.wakeup_us`, `device.event_wait_us`, `device.dispatch_us`; HardwareProfile.spreads): a
stream's dispatch is drawn apart from its op's kernel time, which the jitter scales. Built-in
profiles have neither, and then nothing here runs.
"""
from __future__ import annotations

import math
from typing import Mapping

import numpy as np

_BATCH = 4096          # draws made at once
_STREAM = 0x6A17       # with the run's seed: a stream of its own, apart from the workload's


class Jitter:
    """Seeded multipliers of op times per family (module docstring)."""

    def __init__(self, jitter: Mapping[str, object], seed: int):
        self.draws: dict = {}                  # family -> ratios (list) or (mu, sigma)
        for family, spec in jitter.items():
            if isinstance(spec, (tuple, list)):
                self.draws[family] = list(spec)
            elif spec > 0:
                s2 = math.log1p(spec * spec)           # lognormal: E = 1, sd / E = spec
                self.draws[family] = (-s2 / 2.0, math.sqrt(s2))
        self.rng = np.random.default_rng([seed, _STREAM])
        self.uniforms: list = []
        self.normals: list = []

    def scale(self, family: str, seconds: float) -> float:
        """`seconds` times a fresh draw for `family` (unchanged for a family without jitter)."""
        d = self.draws.get(family)
        if d is None:
            return seconds
        if type(d) is list:
            if not self.uniforms:
                self.uniforms = self.rng.random(_BATCH).tolist()
            return seconds * d[int(self.uniforms.pop() * len(d))]
        if not self.normals:
            self.normals = self.rng.standard_normal(_BATCH).tolist()
        return seconds * math.exp(d[0] + d[1] * self.normals.pop())

    def pick(self, values) -> float:
        """One of `values`, drawn uniformly (a reaction time: the profile's `spreads`)."""
        if not self.uniforms:
            self.uniforms = self.rng.random(_BATCH).tolist()
        return values[int(self.uniforms.pop() * len(values))]
