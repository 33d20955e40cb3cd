"""A request in Liger's window (strategies/liger.py): its flat program, how far it is launched, and
the tables the host program plans with, computed once (per request, or per step)."""
from __future__ import annotations

from dataclasses import replace
from functools import lru_cache, reduce
from itertools import compress
from operator import add, ne
from typing import Callable, Optional

import numpy as np

from simulator.ops import Gemm, Op

from .program import request_steps


class Flight:
    """A request (or, under continuous batching, a step's batch) in the window: its flat program
    and how far it has been launched. `rid` is the request its ops are launched for (-1 for a
    batch), `tag` names its events, `batch` is the Batch (None for a request).

    `comm[i]` and `prof[i]` are ops[i]'s class (communication or not) and profiled time;
    `done_parts` counts the 1/factor parts of ops[pos] already launched (0: untouched)."""
    __slots__ = ("rid", "tag", "batch", "ops", "step_of", "phases", "comm", "prof", "n", "pos",
                 "done_parts", "steps_done", "tail", "on_main", "runs", "tables")

    def __init__(self, rid, tag, ops, step_of, phases, comm, prof, batch=None):
        self.rid, self.tag, self.batch = rid, tag, batch
        self.ops, self.step_of, self.phases = ops, step_of, phases
        self.comm, self.prof, self.n = comm, prof, len(ops)
        self.pos = 0
        self.done_parts = 0
        # per finished step: [(event, streams it is recorded on)]; the step is done when all are
        self.steps_done: list[list] = []
        self.tail: Optional[list] = None       # per-device events after its last sub-stream op
        self.on_main = False                   # it has been the head (main-stream ops begun)
        self.runs = None                       # step_runs: steps' starts, or a batch's runs
        self.tables: Optional[list] = None     # per step its StepEntry (None for a batch)

    @property
    def launched(self) -> bool:
        return self.pos >= self.n

    def next_op(self, factor: int) -> Op:
        """ops[pos], or its pending remainder where `done_parts` of `factor` are launched."""
        op = self.ops[self.pos]
        if self.done_parts:
            return slice_gemm(op, self.done_parts, factor, factor)
        return op

    @classmethod
    def build(cls, req, tables: "StepTables") -> "Flight":
        """The request's steps' ops with their classes and profiled times, each step's from
        `tables` (the same lists for equal steps)."""
        ops: list[Op] = []
        step_of: list[int] = []
        comm: list[bool] = []
        prof: list[float] = []
        steps = request_steps(req.batch, req.prompt_tokens, req.output_tokens)
        entries = []
        for i, step in enumerate(steps):
            entry = tables.of(step)
            entries.append(entry)
            ops += entry.ops
            step_of += [i] * len(entry.ops)
            comm += entry.comm
            prof += entry.prof
        f = cls(req.id, f"r{req.id}", ops, step_of, [s.phase for s in steps], comm, prof)
        f.tables = entries
        return f

    @classmethod
    def of_batch(cls, batch, ops: list, profiled: Callable[[Op], float]) -> "Flight":
        """A continuous-batching step (simulator/batching.py) as a one-step program."""
        times: dict = {}
        prof = [times[id(op)] if id(op) in times else times.setdefault(id(op), profiled(op))
                for op in ops]
        return cls(-1, f"b{batch.id}", ops, [0] * len(ops), [batch.phase],
                   [op.comm for op in ops], prof, batch)

    def step_runs(self, step: int, factors: dict) -> tuple:
        """(where `step` starts in the program, its runs relative to that): the runs of a step
        from its StepTables entry (computed once per distinct step), or for a batch once."""
        if self.tables is not None:
            start = self.runs
            if start is None:
                start = self.runs = [0]
                for entry in self.tables[:-1]:
                    start.append(start[-1] + len(entry.ops))
            return start[step], self.tables[step].step_runs(factors)
        if self.runs is None:
            self.runs = run_table(self.comm, self.prof, factors)
        return 0, self.runs


class StepEntry:
    """One distinct step: its ops (one layer's op objects `layers` times, then the head's), their
    classes and profiled times, and its runs (`run_table`, once asked for)."""
    __slots__ = ("ops", "comm", "prof", "runs")

    def __init__(self, one: list, layers: int, tail: list, profiled: Callable[[Op], float]):
        self.ops = one * layers + tail
        self.comm = [op.comm for op in one] * layers + [op.comm for op in tail]
        self.prof = [profiled(op) for op in one] * layers + [profiled(op) for op in tail]
        self.runs: Optional[tuple] = None

    def step_runs(self, factors: dict) -> tuple:
        if self.runs is None:
            self.runs = run_table(self.comm, self.prof, factors)
        return self.runs


class StepTables:
    """StepEntry per distinct Step (a frozen value: batch, tokens, keys, phase), shared by the
    requests in flight: equal steps (decode steps at the same KV length) get the same op objects,
    classes, profiled times and runs. `step_parts(step)` gives (one layer's ops, layers, the
    head's ops). Equal ops of different steps are one object too (ops are values: a decode step
    differs from the next only in its attention), so that caches by identity find them. Bounded:
    cleared when it holds `limit` steps."""

    def __init__(self, step_parts: Callable, profiled: Callable[[Op], float], limit: int = 4096):
        self.step_parts, self.profiled, self.limit = step_parts, profiled, limit
        self.entries: dict = {}
        self.ops: dict = {}                    # op -> the one object of that value

    def of(self, step) -> StepEntry:
        entry = self.entries.get(step)
        if entry is None:
            if len(self.entries) >= self.limit:
                self.entries.clear()
                self.ops.clear()
            one, layers, tail = self.step_parts(step)
            same = self.ops.setdefault
            one, tail = [same(op, op) for op in one], [same(op, op) for op in tail]
            entry = self.entries[step] = StepEntry(one, layers, tail, self.profiled)
        return entry


def run_table(comm_of: list, prof: list, factors: dict) -> tuple:
    """A step's runs, maximal same-class, from its classes and profiled times: (starts, ends,
    classes, planned times summed in order from 0.0 as the host program sums them, budgets =
    planned x factors[class], and the classes and budgets as numpy arrays)."""
    end = len(comm_of)
    cuts = list(compress(range(1, end), map(ne, comm_of[:end - 1], comm_of[1:end])))
    starts, ends = [0] + cuts, cuts + [end]
    comms = [comm_of[a] for a in starts]
    planned = [reduce(add, prof[a:b], 0.0) for a, b in zip(starts, ends)]
    budgets = [t * factors[c] for t, c in zip(planned, comms)]
    return (starts, ends, comms, planned, budgets, np.array(comms, dtype=bool),
            np.array(budgets, dtype=float))


class Pieces:
    """The pieces of GEMMs split into `factor` parts along n, with their profiled times,
    remembered per op object and parts done."""

    def __init__(self, factor: int, profiled: Callable[[Op], float]):
        self.factor, self.profiled = factor, profiled
        self.cache: dict = {}                  # (id(op), lo) -> (op, pieces)

    def of(self, op: Gemm, lo: int) -> list:
        """[(piece, parts, profiled time)] of op's pieces from part `lo`, largest first (all but
        the whole rest)."""
        hit = self.cache.get((id(op), lo))
        if hit is None or hit[0] is not op:
            if len(self.cache) >= 4096:
                self.cache.clear()
            factor = self.factor
            out = []
            for n in range(factor - lo - 1, 0, -1):
                piece = slice_gemm(op, lo, lo + n, factor)
                out.append((piece, n, self.profiled(piece)))
            hit = self.cache[(id(op), lo)] = (op, out)
        return hit[1]


class Runs:
    """Runs of `ops` cut at `cuts` (run j is ops[cuts[j]:cuts[j+1]]), as a sequence of op lists
    sliced on demand (`launch_paced` may stop long before the last); `ops` starts at position
    `base` of the program. `flat()` hands the runtime the ops and cuts themselves."""
    __slots__ = ("ops", "cuts", "base")

    def __init__(self, ops: list, cuts: list, base: int = 0):
        self.ops, self.cuts, self.base = ops, cuts, base

    def __len__(self) -> int:
        return len(self.cuts) - 1

    def __getitem__(self, j: int) -> list:
        return self.ops[self.cuts[j]:self.cuts[j + 1]]

    def __iter__(self):
        cuts = self.cuts
        return map(self.ops.__getitem__, map(slice, cuts[:-1], cuts[1:]))

    def flat(self) -> tuple[list, list]:
        return self.ops, self.cuts


class OnceRuns(Runs):
    """Runs of a program paced once (a continuous-batching step): without flat(), so that the
    runtime keeps nothing of it."""
    __slots__ = ()
    flat = None


def when_all(rt, events: list, mark) -> None:
    """Call mark(the event that completed last) once every one of `events` has completed."""
    if len(events) == 1:
        mark(events[0])
        return
    times: dict = {}

    def seen(ev, t: float) -> None:
        times[id(ev)] = (t, ev)
        if len(times) == len(events):
            mark(max(times.values(), key=lambda pair: pair[0])[1])
    for ev in events:
        rt.when(ev, lambda t, ev=ev: seen(ev, t))


@lru_cache(maxsize=4096)
def slice_gemm(op: Gemm, lo: int, hi: int, parts: int) -> Gemm:
    """Parts [lo, hi) of `parts` equal slices of `op` along its output dimension n.

    Slice boundaries are floor(n * j / parts), so the slices of one GEMM tile n exactly and their
    flops add up to the original's (as `Gemm.split_n`, named `name[taken/parts]`). Cached: ops are
    values, and the same piece recurs every layer."""
    cols = op.n * hi // parts - op.n * lo // parts
    return replace(op, n=cols, name=f"{op.name}[{hi - lo}/{parts}]")
