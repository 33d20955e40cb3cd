"""`liger`: interleaved parallelism (Du et al., "Liger", PPoPP 2024), as its public artifact does.

Source: the artifact `MachineLearningSystem/24PPOPP-Liger` (commit dfde116), `src/schedule.h::
run_stream_sync` and `src/init.h::Sample`; summarised in shared/research/liger.md §2.3-2.5.

Weights are sharded as in Megatron tensor parallelism over all devices (as `tp`). Each device has a
high-priority *main* stream and a low-priority *sub* stream. A request's program is the flat list of
the ops of all its steps (prefill, then decode steps; `strategies/program.py`). A *segment* is a
maximal run of ops of one class: `comm` (collectives) or `compute` (everything else).

The host keeps an FCFS *window* of at most `window` requests; the oldest is the *head*. Each
iteration of the host loop:

1. the host synchronises on the previous iteration's Wait event (recorded *before* the last op of
   the previous main segment, so the host wakes when that op starts and launch latency is hidden);
2. the sub stream waits on the previous iteration's Main event (recorded *after* that segment), so
   sub work of iteration k never starts before main segment k-1 has ended;
3. the head's next segment is launched on the main stream; its planned time is the sum of the ops'
   profiled (isolated) times;
4. the fill budget is planned x `contention_factor` (the artifact's constant 0.8);
5. the other window requests, in window order, fill the sub stream with ops of the *opposite* class:
   a request whose next op has the main segment's class is skipped; an op that fits is launched and
   its profiled time charged; a collective is charged the whole remaining budget (so at most one
   overlaps a segment; `comm_budget: profiled` charges its profiled time instead); a GEMM that does
   not fit is decomposed along its output dimension into `decompose_factor` parts: the largest
   piece of n parts (1 <= n < parts left) whose profiled time fits is launched and the rest stays
   pending (it may be split again later); any other op that does not fit ends the fill.

Every op is launched on every device, in one order (one host program for all devices), so
collectives issued from either stream match across devices. A request leaves the window when all its
ops are launched and it is the head (`retire: head`, the artifact) or at once (`retire: any`).
As in the artifact nothing orders a request's ops across the two streams when it becomes the head:
its first main-stream op may start before its last sub-stream op has ended (`handoff_wait: true`
adds that dependency). A step counts as done (first token, finish, decode gating) only once all of
its ops have ended, on both streams.

Decode steps (the artifact has none): with `host_sync` (default) a step's ops need the previous
step's output token, so a segment never crosses a step boundary; the head at a boundary blocks the
host on its previous step's completion (as `tp` does after each step), and a window request at a
boundary is skipped by the fill until its previous step has completed (a non-blocking event query).
With one request in the window the host program issues the same ops in the same order as `tp`.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Generator, Optional

from simulator.model import check_tp_degree
from simulator.ops import Gemm, Op

from .base import Params, Strategy
from .liger_flight import Flight, Pieces, Runs, StepTables, when_all
from .liger_quiet import quiet_runs
from .program import batch_step_ops, step_parts

COMM_BUDGETS = ("remaining", "profiled")
RETIRE = ("head", "any")


@dataclass(frozen=True)
class LigerParams(Params):
    """Knobs; the defaults are the artifact's (liger.md §2.3-2.5)."""
    window: int = 6                            # schedule_deep: requests in flight
    contention_factor: float | str = 0.8       # fill budget / planned time; or "profile"
    decompose_factor: int = 8                  # GEMM pieces are multiples of 1/factor; 1 = off
    comm_budget: str = "remaining"             # a sub-stream collective costs: remaining | profiled
    retire: str = "head"                       # who leaves the window when launched: head | any
    host_sync: bool = True                     # decode steps wait for the previous step's token
    handoff_wait: bool = False                 # a new head's main ops wait for its sub-stream ops
    main_priority: int = -4                    # cudaStreamCreateWithPriority of the artifact
    sub_priority: int = 0
    micro_batches: int = 2                     # continuous batching: steps in the window

    def check(self) -> tuple[str, str] | None:
        if self.window < 1:
            return "window", f"must be >= 1, got {self.window}"
        if self.micro_batches < 1:
            return "micro_batches", f"must be >= 1, got {self.micro_batches}"
        cf = self.contention_factor
        if isinstance(cf, str):
            if cf != "profile":
                return "contention_factor", f"must be a number > 0 or 'profile', got {cf!r}"
        elif not cf > 0:
            return "contention_factor", f"must be > 0, got {cf}"
        if self.decompose_factor < 1:
            return "decompose_factor", \
                f"must be >= 1 (1 = no decomposition), got {self.decompose_factor}"
        if self.comm_budget not in COMM_BUDGETS:
            return "comm_budget", f"{self.comm_budget!r} is not allowed; choose one of: " \
                + ", ".join(COMM_BUDGETS)
        if self.retire not in RETIRE:
            return "retire", f"{self.retire!r} is not allowed; choose one of: " + ", ".join(RETIRE)
        return None


class Liger(Strategy):
    name = "liger"
    Params = LigerParams

    def __init__(self, model, devices, params=None):
        super().__init__(model, devices, params)
        self.group = tuple(range(devices))
        self.main: list[int] = []
        self.sub: list[int] = []
        self.factors = {True: 1.0, False: 1.0}
        self.uniform = False                   # every device's main (sub) stream has one index
        self.profiled: dict = {}               # id(op) -> (op, rt.profiled_seconds(op))
        self.pieces: Optional[Pieces] = None   # GEMM pieces and their profiled times
        self.tables: Optional[StepTables] = None   # per distinct step: ops, times, runs
        # Test and analysis hook: set to a list to get one dict per host-loop iteration.
        self.plan_log: Optional[list] = None

    def resident_requests(self) -> int:
        """Every request in the window has its KV cache on the devices."""
        return self.params.window

    def concurrent_steps(self) -> int:
        """Two streams: two requests' kernels in flight at once."""
        return 2

    def validate(self, where: str, key: str) -> None:
        check_tp_degree(self.model, self.devices, where, key)

    def setup(self, rt) -> None:
        p = self.params
        self.main = [rt.create_stream(d, p.main_priority) for d in self.group]
        self.sub = [rt.create_stream(d, p.sub_priority) for d in self.group]
        rt.mirror(self.group)                  # one host program for all devices, in group order
        self.uniform = len(set(self.main)) == 1 and len(set(self.sub)) == 1
        self.profiled = {}
        self.pieces = Pieces(p.decompose_factor, lambda op: self._profiled(rt, op))
        self.factors = {comm: self._budget_factor(rt, comm) for comm in (True, False)}
        self.tables = StepTables(lambda s: step_parts(self.model, self.devices, s, self.group),
                                 lambda op: self._profiled(rt, op))

    def _budget_factor(self, rt, main_comm: bool) -> float:
        """The artifact's constant, or with 'profile' the ratio of the main segment's slowdown to
        the fill's slowdown as the runtime's overlapped profile reports them (both run side by
        side, so fill work W fits a segment of planned time T when W * s_fill <= T * s_main)."""
        cf = self.params.contention_factor
        if not isinstance(cf, str):
            return float(cf)
        main, fill = ("comm", "compute") if main_comm else ("compute", "comm")
        return rt.profiled_slowdown(main, fill) / rt.profiled_slowdown(fill, main)

    # ------------------------------------------------------------------------------ host program
    def host(self, rt) -> Generator:
        return self._serve(rt, rt.try_next_request, rt.next_request, self.params.window,
                           lambda req: Flight.build(req, self.tables))

    def batch_host(self, rt) -> Generator:
        """Continuous batching: the window holds up to `micro_batches` steps over disjoint sets
        of requests (NanoFlow's nano-batches: no data dependence between them), each asked for
        as 1/micro_batches of the step budget; a step's ops are a one-step program, interleaved
        as requests' programs are."""
        parts = self.params.micro_batches
        flight = lambda batch: Flight.of_batch(   # noqa: E731
            batch, batch_step_ops(self.model, self.devices, batch, self.group),
            lambda op: self._profiled(rt, op))
        return self._serve(rt, lambda: rt.try_next_batch(parts),
                           lambda: rt.next_batch(parts=parts), parts, flight)

    def _commit_when(self, rt, batch, ev) -> None:
        rt.batch_done_when(batch, ev)
        self._pending.add(batch.id)
        rt.when(ev, lambda _t: self._ended(batch.id))

    def _ended(self, batch_id: int) -> None:
        self._pending.discard(batch_id)
        self._commits += 1

    def _no_commit_pending(self, window: list) -> bool:
        """Under continuous batching, a step that ends frees requests for a new micro-batch,
        which the loop takes at its next iteration when the window has room; paced launches
        check only arrivals, so they are used only where no launched step can end meanwhile,
        and none has ended since the window was last filled."""
        return window[0].batch is None or len(window) >= self._size or \
            (not self._pending and self._commits == self._filled_at)

    def _serve(self, rt, take, wait, size: int, flight) -> Generator:
        """The host loop: fill the window (`take`, non-blocking) up to `size`, block in `wait`
        when it is empty, else run one iteration."""
        self._size = size
        self._pending: set = set()             # batches launched whose step has not ended
        self._commits = self._filled_at = 0    # steps ended: in all, and when last filled
        window: list[Flight] = []
        prev = None                            # (Wait events, Main events) of the last iteration
        while True:
            self._retire(window)
            while len(window) < size:
                item = take()
                if item is None:
                    break
                window.append(flight(item))
            self._filled_at = self._commits
            if not window:
                item = yield from wait()
                if item is None:
                    return
                window.append(flight(item))
                continue
            prev = yield from self._iteration(rt, window, prev)

    def _retire(self, window: list) -> None:
        if self.params.retire == "any":
            window[:] = [f for f in window if not f.launched]
        else:
            while window and window[0].launched:
                window.pop(0)

    def _iteration(self, rt, window: list, prev) -> Generator:
        head = window[0]
        if prev is not None:                   # 1. CPU-GPU sync on the previous Wait event
            last = None
            for ev in prev[0]:
                if ev is not last:             # (record_all may give devices one handle)
                    yield from rt.synchronize(ev)
                    last = ev
        if not self._ready(rt, head):          # decode: the head needs its previous token
            for ev, _streams in head.steps_done[head.step_of[head.pos] - 1]:
                yield from rt.synchronize(ev)
        if not head.on_main:
            head.on_main = True
            if head.tail is not None and self.params.handoff_wait:   # its sub-stream ops first
                for d, ev in zip(self.group, head.tail):
                    rt.wait(d, self.main[d], ev)
        self.fill_idle = False                 # _quiet_runs: this iteration's fill launches nothing
        runs = self._quiet_runs(rt, window, head) if self._no_commit_pending(window) else None
        if runs:
            # Nothing to fill: these iterations are each a run launched after the previous run's
            # Wait, which is what launch_paced does (up to an arrival the loop would take).
            n, waits, mains = yield from rt.launch_paced(
                runs, self.group, self.main[0], head.rid, head.phases[head.step_of[head.pos]],
                until_arrival=len(window) < self._size)
            head.pos = runs.base + runs.cuts[n]
            return waits, mains
        segment = self._segment(head)
        main_comm = head.comm[head.pos]
        entry = None
        if self.plan_log is not None:
            entry = {"head": head.rid, "main_comm": main_comm, "main": [], "sub": []}
            self.plan_log.append(entry)
        tag = head.tag
        factor = self.params.decompose_factor
        planned = 0.0
        last = len(segment) - 1
        for i, op in enumerate(segment):       # 3. the head's segment on the main stream
            if i == last:
                waits = self._record_all(rt, f"wait.{tag}", self.main)
            t = self._profiled(rt, op) if head.done_parts else head.prof[head.pos]
            planned += t
            if entry is not None:
                self._log(entry, "main", head, op, t, t)
            self._launch(rt, head, op, self.main, factor - head.done_parts)
        mains = self._record_all(rt, f"main.{tag}", self.main)
        budget = planned * self.factors[main_comm]         # 4. contention factor
        if entry is not None:
            entry.update(planned_s=planned, budget_s=budget)
        if len(window) > 1 and not self.fill_idle:   # 5.
            self._fill(rt, window, main_comm, budget, prev[1] if prev else None, entry)
        return waits, mains

    def _quiet_runs(self, rt, window: list, f: Flight) -> Optional[Runs]:
        """The head's next iterations that fill nothing, for launch_paced (liger_quiet.py)."""
        return quiet_runs(self, rt, window, f)

    @staticmethod
    def _log(entry, where: str, f: Flight, op: Op, profiled_s: float, charged_s: float) -> None:
        if entry is not None:
            entry[where].append({"request": f.rid, "index": f.pos, "op": op,
                                 "original": f.ops[f.pos], "profiled_s": profiled_s,
                                 "charged_s": charged_s})

    def _ready(self, rt, f: Flight) -> bool:
        """False when f's next op starts a step whose previous step is not done (host_sync)."""
        pos = f.pos
        if not pos or f.done_parts or pos >= f.n or not self.params.host_sync:
            return True
        step = f.step_of[pos]
        return step == f.step_of[pos - 1] or all(rt.query(ev) for ev, _ in f.steps_done[step - 1])

    def _segment(self, f: Flight) -> list[Op]:
        """f's next maximal run of same-class ops (not crossing a step boundary with host_sync);
        the first is the pending remainder of a decomposed GEMM if there is one."""
        p = f.pos
        comm, n = f.comm, f.n
        c = comm[p]
        q = p + 1
        if self.params.host_sync:
            step_of = f.step_of
            step = step_of[p]
            while q < n and comm[q] == c and step_of[q] == step:
                q += 1
        else:
            while q < n and comm[q] == c:
                q += 1
        out = f.ops[p:q]
        if f.done_parts:
            out[0] = f.next_op(self.params.decompose_factor)
        return out

    def _fill(self, rt, window: list, main_comm: bool, budget: float, prev_main, entry) -> None:
        """Step 5: opposite-class ops of the other window requests onto the sub stream."""
        p = self.params
        factor = p.decompose_factor
        take_rest = not main_comm and p.comm_budget == "remaining"
        waited = prev_main is None
        for f in window[1:]:
            launched = False
            while budget > 0 and f.pos < f.n and self._ready(rt, f):
                pos = f.pos
                if f.comm[pos] == main_comm:
                    break                      # same class as the main segment: next request
                if f.done_parts:
                    piece = f.next_op(self.params.decompose_factor)
                    t = self._profiled(rt, piece)
                else:
                    piece = f.ops[pos]
                    t = f.prof[pos]
                parts = factor - f.done_parts
                if take_rest:
                    charge = budget            # artifact: a collective takes what is left
                elif t <= budget:
                    charge = t
                else:
                    op = f.ops[pos]
                    split = self._split(rt, f, op, budget) if isinstance(op, Gemm) else None
                    if split is None:
                        budget = 0.0           # does not fit and cannot be split: stop filling
                        break
                    piece, parts, charge = split
                    t = charge
                if not waited:                 # 2. inter-stream sync, before the first sub op
                    for d in self.group:
                        rt.wait(d, self.sub[d], prev_main[d])
                    waited = True
                if entry is not None:
                    self._log(entry, "sub", f, piece, t, charge)
                self._launch(rt, f, piece, self.sub, parts)
                budget -= charge
                launched = True
            if launched:
                f.tail = self._record_all(rt, f"tail.{f.tag}", self.sub)

    def _split(self, rt, f: Flight, op: Gemm, budget: float):
        """(piece, parts, profiled time) of the largest piece of the pending GEMM that fits."""
        factor = self.params.decompose_factor
        if op.n < factor:
            return None
        for piece, n, t in self.pieces.of(op, f.done_parts):
            if t <= budget:
                return piece, n, t
        return None

    def _record_all(self, rt, name: str, streams: list) -> list:
        """A new event recorded on `streams` of every device (one per device, in group order)."""
        if self.uniform:
            return rt.record_all(name, self.group, streams[0])
        events = [rt.new_event(name) for _ in self.group]
        for d in self.group:
            rt.record(events[d], d, streams[d])
        return events

    def _profiled(self, rt, op: Op) -> float:
        """rt.profiled_seconds(op), remembered per op object (a layer's ops recur every layer)."""
        hit = self.profiled.get(id(op))
        if hit is None or hit[0] is not op:
            if len(self.profiled) >= 4096:
                self.profiled.clear()
            hit = self.profiled[id(op)] = (op, rt.profiled_seconds(op))
        return hit[1]

    def _launch(self, rt, f: Flight, op: Op, streams: list, parts: int) -> None:
        """Launch `op` (f's next op, or `parts` parts of it) on `streams` of every device; when it
        completes a step, record the step's event after it.

        A step is done when its last op and, if that op is on the main stream, the request's last
        sub-stream op have ended (without handoff_wait a new head's main-stream ops may overtake
        its sub-stream ops): that marks the first token and the finish, and gates decode steps.
        Without host_sync the first op of a step still needs the previous step's token (sampled on
        the device): this stream waits for the events of the previous step on other streams."""
        pos = f.pos
        step_of = f.step_of
        step = step_of[pos]
        phase = f.phases[step]
        rid = f.rid
        if step and not f.done_parts and step_of[pos - 1] != step:
            for ev, where in f.steps_done[step - 1]:
                if where is not streams and not rt.query(ev):
                    for d in self.group:
                        rt.wait(d, streams[d], ev)
        if self.uniform:                       # the same launch on every device, leader first
            rt.launch_seq((op,), self.group, streams[0], rid, phase)
        else:
            for d in self.group:
                rt.launch(op, d, streams[d], rid, phase)
        if f.done_parts + parts < self.params.decompose_factor:
            f.done_parts += parts
            return
        pos += 1
        f.pos = pos
        f.done_parts = 0
        if pos >= f.n or step_of[pos] != step:
            done = rt.new_event(f"{f.tag}.step{step}")
            rt.record(done, self.group[0], streams[self.group[0]])
            events = [(done, streams)]
            if streams is self.main and f.tail is not None and not rt.query(f.tail[0]):
                events.append((f.tail[0], self.sub))
            f.steps_done.append(events)
            if f.batch is not None:
                when_all(rt, [ev for ev, _ in events], lambda ev: self._commit_when(rt, f.batch, ev))
                return
            if step == 0:
                when_all(rt, [ev for ev, _ in events], lambda ev: rt.first_token_when(rid, ev))
            if pos >= f.n:
                when_all(rt, [ev for ev, _ in events], lambda ev: rt.finish_when(rid, ev))
