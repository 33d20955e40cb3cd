"""Devices and streams of TorchRuntime: events, and one FIFO worker thread per (device, stream).

A stream's thread takes its items in order:
- OP: prepares the op's tensors (and, for communication, its process group), then runs it. On
  CPU the kernel runs in the thread, timed by time.perf_counter around it; on CUDA it is enqueued
  on the stream's `torch.cuda.Stream` between two timing events (read at the end of the run).
- RECORD: the event completes when the stream gets there (CPU: the clock then; CUDA: a
  `torch.cuda.Event` recorded on the stream, which a completer thread synchronises on in order).
- WAIT: the stream blocks until the event has been reached (CPU) or recorded (CUDA, then
  ``stream.wait_event``), so a wait issued before its record still waits, as in SimRuntime.
A reached event is handed to the host thread (`Driver.post`), which marks it done and runs its
callbacks there, in time order.
"""
from __future__ import annotations

import threading
from collections import deque
from typing import NamedTuple, Optional

import torch

from simulator.ops import is_comm

OP, RECORD, WAIT = 0, 1, 2


class Item(NamedTuple):
    """One entry of a stream's FIFO."""
    kind: int                     # OP, RECORD or WAIT
    op: object                    # the op (OP)
    event: object                 # the TorchEvent (RECORD, WAIT)
    info: tuple                   # OP: (kind, op_class, isolated seconds) for its trace row
    request: int
    phase: str
    launched_s: float = 0.0       # the host's clock when it launched the item


class TorchEvent:
    """A CUDA-like event handle. Strategies read only `name`. `reached` is set by the stream
    that got to its record (device side), `done` by the host thread once it has taken note."""
    __slots__ = ("name", "device", "recorded", "reached", "issued", "time", "done", "callbacks",
                 "waiters", "cuda")

    def __init__(self, name: str = ""):
        self.name = name
        self.device: Optional[int] = None
        self.recorded = False
        self.reached = threading.Event()
        self.issued = threading.Event()       # CUDA: its torch.cuda.Event has been recorded
        self.time: Optional[float] = None
        self.done = False
        self.callbacks: list = []             # host callbacks fn(time) (`when`)
        self.waiters: list = []               # RealSignals of a host blocked on it
        self.cuda = None

    def __repr__(self) -> str:
        return f"TorchEvent({self.name!r}, done={self.done})"


class Stream:
    """A (device, stream) FIFO and its worker thread (module docstring)."""

    def __init__(self, rt, device: int, index: int, priority: int):
        self.rt, self.device, self.index, self.priority = rt, device, index, priority
        self.queue: deque = deque()
        self.cond = threading.Condition()
        self.pending = 0
        self.stopping = False
        self.free_s = 0.0                 # clock time the previous item (any kind) ended
        self.woke_s: Optional[float] = None   # when the thread woke for its item, if it was idle
        self.rows: list = []
        self.work = rt.make_work(device, index)
        self.thread = threading.Thread(target=self._loop, daemon=True,
                                       name=f"torchrt-dev{device}-s{index}")
        self.thread.start()

    def put(self, item: Item) -> None:
        with self.cond:
            self.queue.append(item)
            self.pending += 1
            self.cond.notify()

    def stop(self) -> None:
        with self.cond:
            self.stopping = True
            self.cond.notify()

    def head(self) -> Optional[Item]:
        q = self.queue
        return q[0] if q else None

    def _loop(self) -> None:
        rt = self.rt
        rt.enter_thread(self.device)
        while True:
            with self.cond:
                idle = not self.queue
                while not self.queue and not self.stopping:
                    self.cond.wait()
                if self.stopping:
                    return
                item = self.queue[0]
            self.woke_s = rt.clock.now if idle else None
            if idle and rt.run_log is not None and not rt.cuda:   # a thread's wake-up
                rt.run_log.host.idle_wakeups_s.append(self.woke_s - item.launched_s)
            try:
                if not self._execute(item):
                    return
            except BaseException as exc:        # handed to the host thread, which re-raises
                rt.fail(exc, self)
                return
            if item.kind != OP or rt.cuda:   # a CPU op's end is its own (TorchRuntime.run_op)
                self.free_s = rt.clock.now
            with self.cond:
                self.queue.popleft()
                self.pending -= 1
                idle = self.pending == 0
            rt.driver.activity = rt.clock.now
            if idle:
                rt.driver.poke()

    def _execute(self, item: Item) -> bool:
        """Run one item; False if the stream was stopped while it waited."""
        if item.kind == WAIT:
            ev = item.event
            gate = ev.issued if self.rt.cuda else ev.reached
            blocked = not gate.is_set()
            while not gate.wait(0.1):
                if self.stopping:
                    return False
            log = self.rt.run_log
            if blocked and log is not None and not self.rt.cuda:   # a thread's wake-up
                log.host.event_waits_s.append(self.rt.clock.now - ev.time)
            if self.rt.cuda:                         # pragma: no cover - needs CUDA
                self.rt.cuda_stream(self).wait_event(ev.cuda)
            return True
        if item.kind == RECORD:
            begin = self.rt.clock.now
            self.rt.reach(item.event, self)
            log = self.rt.run_log
            if log is not None and not self.rt.cuda:
                log.host.records_s.append(self.rt.clock.now - begin)
            return True
        self.rt.run_op(self, item)
        return True


class Completer:                                      # pragma: no cover - needs CUDA
    """CUDA: synchronises on a stream's recorded events in order and reports them reached."""

    def __init__(self, rt, stream: Stream):
        self.rt, self.stream = rt, stream
        self.queue: deque = deque()
        self.cond = threading.Condition()
        self.stopping = False
        self.thread = threading.Thread(target=self._loop, daemon=True,
                                       name=f"torchrt-done{stream.device}-s{stream.index}")
        self.thread.start()

    def put(self, ev: TorchEvent) -> None:
        with self.cond:
            self.queue.append(ev)
            self.cond.notify()

    def stop(self) -> None:
        with self.cond:
            self.stopping = True
            self.cond.notify()

    def _loop(self) -> None:
        while True:
            with self.cond:
                while not self.queue and not self.stopping:
                    self.cond.wait()
                if not self.queue:
                    return
                ev = self.queue.popleft()
            ev.cuda.synchronize()
            self.rt.reached(ev, self.rt.cuda_time(self.stream.device, ev.cuda))


def op_row(stream: Stream, item: Item, start: float, end: float, xfer: float) -> tuple:
    """An OpRecord-shaped row (trace.py) of `item` run on `stream`."""
    op = item.op
    family, op_class, isolated = item.info
    return (stream.device, stream.index, stream.priority, op.name, family, op_class, item.request,
            item.phase, start, end, xfer if is_comm(op) else start, isolated)


def cuda_events() -> tuple:                            # pragma: no cover - needs CUDA
    return torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
