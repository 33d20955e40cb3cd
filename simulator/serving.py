"""The serving layer: arrivals, the request queue, first-token and finish marks, per-request records.

Runtime-neutral (DESIGN §1): it keeps time only through a `HostClock` (simulator/runtime.py), so the
simulated runtime and a real one share it. A workload's source (simulator/workload.py) is a
generator function of a `Serving`: it sleeps with ``yield from serving.sleep(seconds)`` and calls
``serving.arrive(request)``, then ``serving.sources_done()``. The strategy's host program takes
requests with ``next_request`` (blocking) or ``try_next_request``, and marks a request's first token
and finish by events through the runtime (``first_token_when`` / ``finish_when``), which land here
as `mark_first_token` / `mark_finish`. A batch scheduler plugs in between arrivals and the host.
"""
from __future__ import annotations

from collections import deque
from typing import Callable, Generator, Optional

from .runtime import HostClock
from .trace import RequestRecord


class _Pending:
    """One request's times while the run goes."""
    __slots__ = ("request", "arrival_s", "start_s", "first_token_s", "finish_s")

    def __init__(self, request, arrival_s: float):
        self.request, self.arrival_s = request, arrival_s
        self.start_s: Optional[float] = None      # set by a batch scheduler (first scheduled)
        self.first_token_s: Optional[float] = None
        self.finish_s: Optional[float] = None


class Serving:
    """Arrivals and the FCFS request queue of one run."""

    def __init__(self, clock: HostClock):
        self.clock = clock
        self._queue: deque = deque()
        self._waiter = None
        self._sources_done = False
        self._requests: dict[int, _Pending] = {}
        self._finish_listeners: list[Callable] = []
        self.host_state = "running"          # what the host is blocked on (for deadlock reports)
        self.next_arrival_s: Optional[float] = None   # see expect()
        self.scheduler = None                # a batching.Scheduler with continuous batching

    # ------------------------------------------------------------------------------ sources
    @property
    def now(self) -> float:
        return self.clock.now

    def sleep(self, seconds: float) -> Generator:
        """For sources: let `seconds` pass."""
        return self.clock.sleep(seconds)

    def call_later(self, seconds: float, fn: Callable[[], None]) -> None:
        self.clock.call_later(seconds, fn)

    def expect(self, arrival_s: Optional[float]) -> None:
        """A source says when its next request will arrive (None: it cannot know, e.g. closed-loop
        clients that wait for finishes). A runtime may use it to skip host work that only an
        arrival could change (SimRuntime.launch_paced)."""
        self.next_arrival_s = arrival_s

    def arrive(self, request) -> None:
        """`request` arrives now."""
        self._requests[request.id] = _Pending(request, self.clock.now)
        self._queue.append(request)
        self._wake()

    def sources_done(self) -> None:
        """No more requests will arrive."""
        self._sources_done = True
        self.next_arrival_s = float("inf")
        self._wake()

    def on_finish(self, fn: Callable) -> None:
        """Call fn(request, time) whenever a request finishes (closed-loop clients)."""
        self._finish_listeners.append(fn)

    def _wake(self) -> None:
        w = self._waiter
        if w is not None:
            self._waiter = None
            w.fire()

    # ------------------------------------------------------------------------------ host side
    def next_request(self) -> Generator:
        """Host blocks until a request arrives; returns it, or None once no more will arrive."""
        while not self._queue:
            if self._sources_done:
                return None
            self._waiter = self.clock.new_signal()
            self.host_state = "waiting for a request"
            yield from self._waiter.wait()
            self.host_state = "running"
        return self._queue.popleft()

    def try_next_request(self):
        """The next arrived request without blocking, or None if none is waiting."""
        return self._queue.popleft() if self._queue else None

    def waiting(self) -> int:
        """Requests that have arrived and not been taken by the host."""
        return len(self._queue)

    def host_program(self, strategy, rt, scheduler=None) -> Generator:
        """The strategy's host program on runtime `rt`: `batch_host` with a batch `scheduler`
        (which this serving layer then feeds), else `host`."""
        if scheduler is None:
            return strategy.host(rt)
        self.scheduler = scheduler
        scheduler.serving = self
        return strategy.batch_host(rt)

    # ------------------------------------------------------------------------------ batches
    def next_batch(self, woken: Callable[[], bool], parts: int = 1) -> Generator:
        """Host blocks until the scheduler has a step to run (returns its Batch) or `woken()`
        says the host has something else to do (returns None); also None once every request has
        been served and no more will arrive."""
        sched = self.scheduler
        while True:
            batch = sched.schedule(self.clock.now, parts)
            if batch is not None:
                return batch
            if woken() or (self._sources_done and not self._queue and sched.idle()):
                return None
            self._waiter = self.clock.new_signal()
            self.host_state = "waiting for a batch"
            yield from self._waiter.wait()
            self.host_state = "running"

    def try_next_batch(self, parts: int = 1):
        """The next step's Batch without blocking, or None if no request can take part now."""
        return self.scheduler.schedule(self.clock.now, parts)

    def commit(self, batch, t: float) -> None:
        """`batch`'s step ended at `t` (its tokens exist): the scheduler takes them, and a host
        blocked in next_batch looks again."""
        self.scheduler.commit(batch, t)
        self._wake()

    def wake(self) -> None:
        """Let a host blocked in next_batch look again (a runtime's wake-up events fire it)."""
        self._wake()

    def mark_start(self, request: int, t: float) -> None:
        self._requests[request].start_s = t

    def mark_first_token(self, request: int, t: float) -> None:
        self._requests[request].first_token_s = t

    def mark_finish(self, request: int, t: float) -> None:
        rec = self._requests[request]
        rec.finish_s = t
        for fn in self._finish_listeners:
            fn(rec.request, t)

    # ------------------------------------------------------------------------------ results
    def add_batching(self, trace) -> None:
        """With a batch scheduler: its steps, inter-token gaps, preemptions and KV blocks go into
        `trace` (a runtime's finished Trace)."""
        sched = self.scheduler
        if sched is None:
            return
        trace.steps, trace.itl_s = sched.steps, sched.itl_s
        trace.meta["preemptions"] = sched.preemptions
        trace.meta["kv_blocks"] = sched.kv_blocks

    def unfinished(self) -> list[int]:
        return [rid for rid, rec in self._requests.items() if rec.finish_s is None]

    def records(self, first_start: Callable[[int], Optional[float]]) -> list[RequestRecord]:
        """One RequestRecord per arrived request; its start is when a batch scheduler first
        scheduled it, else `first_start(id)`, its first op's start (None if it ran no op: then
        its finish)."""
        out = []
        for rid, rec in self._requests.items():
            req, finish = rec.request, rec.finish_s
            start = rec.start_s if rec.start_s is not None else first_start(rid)
            out.append(RequestRecord(rid, rec.arrival_s, finish if start is None else start,
                                     finish if rec.first_token_s is None else rec.first_token_s,
                                     finish, req.prompt_tokens, req.output_tokens, req.batch,
                                     req.measured))
        return out


class ServingVerbs:
    """The Runtime's request and batch verbs, shared by every runtime: each delegates to
    `self.serving` (a Serving) and learns event completions through the runtime's own `when`
    and `query`."""
    serving: Serving

    def next_request(self) -> Generator:
        """Host blocks until a request arrives; returns it, or None once no more will arrive."""
        return self.serving.next_request()

    def try_next_request(self):
        """The next arrived request without blocking, or None if none is waiting."""
        return self.serving.try_next_request()

    def waiting(self) -> int:
        return self.serving.waiting()

    def next_batch(self, wake=(), parts: int = 1) -> Generator:
        """Host blocks until the scheduler has a step (its Batch), or one of `wake` completes or
        the run is over (None)."""
        serving, query = self.serving, self.query
        for ev in wake:
            if not query(ev):
                self.when(ev, lambda _t: serving.wake())
        return serving.next_batch(lambda: any(query(ev) for ev in wake), parts)

    def try_next_batch(self, parts: int = 1):
        return self.serving.try_next_batch(parts)

    def batch_done_when(self, batch, event) -> None:
        commit = self.serving.commit
        self.when(event, lambda t: commit(batch, t))

    def first_token_when(self, request: int, event) -> None:
        mark = self.serving.mark_first_token
        self.when(event, lambda t: mark(request, t))

    def finish_when(self, request: int, event) -> None:
        mark = self.serving.mark_finish
        self.when(event, lambda t: mark(request, t))
