"""What-if helpers for notebooks and scripts: change one thing of a profile, run one point.

These are thin compositions of the runner's pieces so that notebooks define no cost logic of their
own: `with_interconnect` scales a profile's link parameters (a what-if machine: its provenance says
so), and `simulate_point` runs one strategy on one workload and returns the summary row.
"""
from __future__ import annotations

from dataclasses import replace
from types import MappingProxyType
from typing import Any, Optional

import numpy as np

import strategies as registry

from .engine import SimRuntime
from .hardware import HardwareProfile, LinkParams, load_hardware
from .metrics import summarize
from .model import ModelSpec, load_model
from .workload import parse_workload

COMM_FAMILIES = ("all_reduce", "all_gather", "reduce_scatter", "all_to_all", "send_recv")


def _scaled(p: LinkParams, bw_factor: float, alpha_factor: float) -> LinkParams:
    kwargs = {"alpha_s": p.alpha_s * alpha_factor,
              "bandwidth_bytes_per_s": p.bandwidth_bytes_per_s * bw_factor}
    regimes = getattr(p, "regimes", None)
    if regimes:
        kwargs["regimes"] = tuple(_scaled(r, bw_factor, alpha_factor) for r in regimes)
    return replace(p, **kwargs)


def with_interconnect(profile: HardwareProfile | str, bandwidth_factor: float = 1.0,
                      alpha_factor: float = 1.0) -> HardwareProfile:
    """A copy of `profile` whose collective and p2p bandwidths are multiplied by
    `bandwidth_factor` and latencies by `alpha_factor` (a what-if machine, named as such)."""
    hw = load_hardware(profile) if isinstance(profile, str) else profile
    ic = hw.interconnect
    coll = {n: _scaled(p, bandwidth_factor, alpha_factor) for n, p in ic.collectives.items()}
    ic = replace(ic, collectives=MappingProxyType(coll),
                 p2p=_scaled(ic.p2p, bandwidth_factor, alpha_factor))
    sources = dict(hw.sources)
    sources["interconnect.what_if"] = (f"assumed: what-if, bandwidths x{bandwidth_factor:g}, "
                                       f"latencies x{alpha_factor:g} of {hw.name}")
    # measured communication times no longer hold on the what-if links: drop those tables
    tables = {f: t for f, t in getattr(hw, "measured_tables", {}).items() if f not in COMM_FAMILIES}
    return replace(hw, name=f"{hw.name}*bw{bandwidth_factor:g}", interconnect=ic,
                   sources=MappingProxyType(sources), measured_tables=MappingProxyType(tables))


def simulate_point(model: ModelSpec | str | dict, hardware: HardwareProfile | str, devices: int,
                   strategy: str, workload: dict, params: Optional[dict] = None,
                   seed: int = 0) -> dict[str, Any]:
    """Run `strategy` (with `params`) for `workload` (the YAML mapping) and return its summary row."""
    m = model if isinstance(model, ModelSpec) else load_model(model)
    hw = load_hardware(hardware) if isinstance(hardware, str) else hardware
    cls = registry.REGISTRY[strategy]
    p = cls.Params.parse(params or {}, "what-if", strategy)
    strat = cls(m, devices, p)
    strat.validate("what-if", strategy)
    wl = parse_workload(workload, "what-if")
    trace = SimRuntime(hw, devices, keep_ops=0).run(strat, wl.source(np.random.default_rng(seed)))
    return {"strategy": strategy, "hardware": hw.name, "devices": devices, **summarize(trace)}
