"""Liger's quiet iterations (strategies/liger.py): the head's next runs whose fill would launch
nothing, so that `launch_paced` issues them exactly as the per-iteration loop would.

`self` is the `Liger` strategy: these read its parameters, budget factors and helpers.
"""
from __future__ import annotations

import bisect
from functools import reduce
from operator import add
from typing import Optional

import numpy as np

from simulator.ops import Gemm

from .liger_flight import Flight, OnceRuns, Runs

_NEVER = float("inf")


def quiet_runs(self, rt, window: list, f: Flight) -> Optional[Runs]:
    """The head f's next iterations that launch one same-class run each and fill nothing: the
    runs from f.pos up to the first whose fill would launch something, and not including the
    run that ends the step, for `launch_paced` (which is exactly those iterations; it stops
    where a request arrives). Nothing is filled while f is alone, or while the fill
    (`_fill_bound`) needs more budget than a run gives: the fillers then stay as they are.
    A step's first run counts too: with host_sync the head has synchronised on its previous
    step's events before this (`_iteration`), so `_launch` issues no cross-stream wait there
    (checked: None if one of them has not completed). None where an iteration does more: a
    decomposed remainder, the plan log, or per-device stream numbers. Where only the next run
    would fill, this one fills nothing: `self.fill_idle` says so, and its iteration skips
    `_fill` (which would find nothing to launch and issue nothing)."""
    if not self.params.host_sync or f.done_parts or self.plan_log is not None \
            or not self.uniform:
        return None
    pos, step_of = f.pos, f.step_of
    step = step_of[pos]
    if pos and step_of[pos - 1] != step and not all(
            rt.query(ev) for ev, _where in f.steps_done[step - 1]):
        return None
    base, (starts, ends, comms, _planned, budgets, comm_arr, budget_arr) = \
        f.step_runs(step, self.factors)
    rel = pos - base                       # positions in the step
    i = bisect.bisect_right(starts, rel) - 1
    last = len(starts) - 1                 # the step's last run: the usual path takes it
    if last - i < 2:
        return None
    stop = last
    if len(window) > 1:                    # would an iteration's fill launch anything?
        bound: dict = {}
        comm, budget = comms[i], budgets[i]
        if starts[i] < rel:                # f stopped inside this run as a filler
            budget = reduce(add, f.prof[pos:base + ends[i]], 0.0) * self.factors[comm]
        bound[comm] = fill_bound(self, rt, window, comm)
        if budget > 0 and bound[comm][0] <= budget:
            return None
        comm, budget = comms[i + 1], budgets[i + 1]
        if comm not in bound:
            bound[comm] = fill_bound(self, rt, window, comm)
        if budget > 0 and bound[comm][1] <= budget:
            self.fill_idle = True          # this run fills nothing, the next may: skip its _fill
            return None
        if len(bound) < 2:
            bound[not comm] = fill_bound(self, rt, window, not comm)
        later = slice(i + 2, last)         # the rest at once
        least = np.where(comm_arr[later], bound[True][1], bound[False][1])
        fills = np.flatnonzero((budget_arr[later] > 0) & (least <= budget_arr[later]))
        if len(fills):
            stop = i + 2 + int(fills[0])
    if f.tables is None:                   # a batch's one step: met once
        return OnceRuns(f.ops, [rel] + ends[i:stop], base)
    return Runs(f.tables[step].ops, [rel] + ends[i:stop], base)   # the step's ops, kept as is

def fill_bound(self, rt, window: list, main_comm: bool) -> tuple[float, float]:
    """The least budget with which `_fill` launches something beside a main segment of class
    `main_comm`, the fillers being as they are now: (in this iteration, in later ones). The
    first ready filler whose next op has the other class decides: its op or, for a GEMM, its
    smallest piece fits from that budget on (a collective charged the remaining budget fits
    any). A filler not ready now (its previous step is not done) may be ready later, so from
    the next iteration on any budget counts as launching once such a filler comes first."""
    p = self.params
    take_rest = not main_comm and p.comm_budget == "remaining"
    later = None
    for f in window[1:]:
        if f.pos >= f.n:
            continue
        if not self._ready(rt, f):
            if later is None:
                later = 0.0
            continue
        if f.comm[f.pos] == main_comm:
            continue
        if take_rest:
            least = 0.0
        else:
            least = self._profiled(rt, f.next_op(self.params.decompose_factor)) if f.done_parts else f.prof[f.pos]
            op = f.ops[f.pos]
            if isinstance(op, Gemm) and op.n >= p.decompose_factor:
                for _piece, _parts, t in self.pieces.of(op, f.done_parts):
                    least = min(least, t)
        return least, least if later is None else later
    return _NEVER, _NEVER if later is None else later
