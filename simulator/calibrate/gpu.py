"""GPU micro-benchmarks for `parasim calibrate --device cuda` (docs/validation.md, "On a GPU").

Kernels are timed as TorchRuntime times them on CUDA: between two CUDA events recorded on the
op's stream around the prepared kernel (`torchrt.work.Work`). Before each timed series the stream
is held by a sleep kernel while the host enqueues the whole series, so the events measure the
kernels back to back and not the host's launch rate (the launch cost is measured apart, on a
TorchRuntime). A measurement is the median over `reps` calls after one warm-up call.

Contention on one GPU: an op of class a timed on one stream while ops of class b loop on a second
stream, over its time alone, for compute (a GEMM) and memory (an elementwise add) ops; the
profile's `contention.slowdown` takes these. `low_priority_share`: a GEMM on a low-priority stream
while the same GEMM loops on a high-priority one, its time alone over its time there.

Everything goes through a `Timing` (CudaTiming on a GPU): the events, the streams, the hold and
the sync. `HostTiming` implements the same calls for synchronous CPU work, which lets the tests
drive every benchmark here on a machine without a GPU (its "streams" run one after the other, so
its contention ratios are about 1 and mean nothing).
"""
from __future__ import annotations

import contextlib
import math
import statistics
import time
from typing import Callable, Sequence

import torch

from simulator.ops import Elementwise, Gemm
from simulator.torchrt.work import Work

from .bench import Timed

HOLD_S = 0.02                  # how long a held stream waits for the host to enqueue a series
PAIR_CLASSES = ("compute", "memory")


class HostTiming:
    """Timing of synchronous work on this CPU: a mark is the time it is taken (module doc)."""

    name = "cpu"

    def __init__(self):
        self.device = torch.device("cpu")

    def work(self) -> Work:
        return Work(self.device)

    def stream(self, high_priority: bool = False):
        return None

    def scope(self, stream):
        return contextlib.nullcontext()

    def mark(self, stream):
        return time.perf_counter()

    @staticmethod
    def seconds(a, b) -> float:
        return b - a

    def hold(self, stream, seconds: float = HOLD_S) -> None:
        pass

    def follow(self, stream, leader) -> None:
        pass

    def sync(self) -> None:
        pass


class CudaTiming(HostTiming):                                   # pragma: no cover - needs CUDA
    """Timing on GPU `index`: CUDA events on `torch.cuda.Stream`s (module doc)."""

    name = "cuda"

    def __init__(self, index: int = 0):
        self.device = torch.device("cuda", index)
        torch.cuda.set_device(self.device)
        self._cycles_per_s = None

    def stream(self, high_priority: bool = False):
        least, greatest = torch.cuda.Stream.priority_range()
        return torch.cuda.Stream(self.device, priority=greatest if high_priority else least)

    def scope(self, stream):
        return torch.cuda.stream(stream)

    def mark(self, stream):
        ev = torch.cuda.Event(enable_timing=True)
        ev.record(stream)
        return ev

    @staticmethod
    def seconds(a, b) -> float:
        return a.elapsed_time(b) / 1e3

    def hold(self, stream, seconds: float = HOLD_S) -> None:
        """A sleep kernel of about `seconds` on `stream` (the host enqueues behind it)."""
        if self._cycles_per_s is None:
            s = self.stream()
            with torch.cuda.stream(s):
                a = self.mark(s)
                torch.cuda._sleep(10_000_000)
                b = self.mark(s)
            b.synchronize()
            self._cycles_per_s = 10_000_000 / max(self.seconds(a, b), 1e-6)
        with torch.cuda.stream(stream):
            torch.cuda._sleep(int(seconds * self._cycles_per_s))

    def follow(self, stream, leader) -> None:
        stream.wait_stream(leader)

    def sync(self) -> None:
        torch.cuda.synchronize(self.device)


def series(timing, stream, fn: Callable[[], object], reps: int) -> list[float]:
    """`reps` timed calls of fn on `stream`, enqueued behind a hold; seconds each."""
    timing.hold(stream)
    marks = []
    with timing.scope(stream):
        for _ in range(reps):
            a = timing.mark(stream)
            fn()
            marks.append((a, timing.mark(stream)))
    timing.sync()
    return [timing.seconds(a, b) for a, b in marks]


def time_ops(timing, ops: Sequence, reps: int,
             progress: Callable[[int, int], None] | None = None) -> list[Timed]:
    """Each compute op alone on one stream: median seconds over `reps` calls."""
    work, stream, out = timing.work(), timing.stream(), []
    for i, op in enumerate(ops):
        fn = work.prepare(op)
        with timing.scope(stream):
            fn()                                          # warm-up: first-use costs
        timing.sync()
        out.append(Timed(op, statistics.median(series(timing, stream, fn, reps)), reps))
        if progress is not None:
            progress(i + 1, len(ops))
    return out


def peak_gemm(hidden: int, dtype: str) -> Gemm:
    """A GEMM large enough to reach a GPU's tensor rate (or a CPU's best), for the peak."""
    side = max(1024, 8 * hidden)
    return Gemm(side, side, side, dtype, "peak_gemm")


def class_op(cls: str, hidden: int, dtype: str) -> object:
    if cls == "compute":
        return Gemm(2048, 4 * hidden, hidden, dtype, "contention_gemm")
    return Elementwise(float(64 * 2**20), "contention_add")


def beside(timing, fg_op, bg_op, reps: int, alone: dict, *,
           fg_high: bool = False, bg_high: bool = False) -> float:
    """Median time of fg_op on one stream while bg_op loops on another, both released together
    (the background stream follows the held foreground one) and the loop outlasting the series."""
    fg_work, bg_work = timing.work(), timing.work()
    fg, bg = fg_work.prepare(fg_op), bg_work.prepare(bg_op)
    s_fg, s_bg = timing.stream(fg_high), timing.stream(bg_high)
    for s, fn in ((s_fg, fg), (s_bg, bg)):
        with timing.scope(s):
            fn()
    timing.sync()
    iters = max(3, math.ceil(1.5 * (reps + 1) * alone[fg_op] / max(alone[bg_op], 1e-9)))
    timing.hold(s_fg)
    timing.follow(s_bg, s_fg)
    with timing.scope(s_bg):
        for _ in range(iters):
            bg()
    marks = []
    with timing.scope(s_fg):
        for _ in range(reps + 1):
            a = timing.mark(s_fg)
            fg()
            marks.append((a, timing.mark(s_fg)))
    timing.sync()
    return statistics.median(timing.seconds(a, b) for a, b in marks[1:])


def contention(timing, hidden: int, dtype: str, reps: int) -> dict:
    """{(a, b): slowdown of class a beside class b} for compute and memory, 'low_priority_share'
    and 'alone' (class -> seconds); module doc."""
    ops = {c: class_op(c, hidden, dtype) for c in PAIR_CLASSES}
    alone = {t.op: t.seconds for t in time_ops(timing, list(ops.values()), reps)}
    out: dict = {"alone": {c: alone[op] for c, op in ops.items()}}
    for a in PAIR_CLASSES:
        for b in PAIR_CLASSES:
            if a != b:
                out[(a, b)] = beside(timing, ops[a], ops[b], reps, alone) / alone[ops[a]]
    gemm = ops["compute"]
    low = beside(timing, gemm, gemm, reps, alone, bg_high=True)
    out["low_priority_share"] = min(1.0, alone[gemm] / low)
    return out


def device_facts(timing) -> dict:
    """What the device says of itself: name, SMs, memory (CUDA's device properties)."""
    if timing.name != "cuda":
        import platform
        return {"name": platform.processor() or platform.machine(), "sms": 1,
                "memory_bytes": None, "source": "this CPU"}
    props = torch.cuda.get_device_properties(timing.device)        # pragma: no cover
    return {"name": props.name, "sms": props.multi_processor_count,  # pragma: no cover
            "memory_bytes": float(props.total_memory),
            "source": "torch.cuda.get_device_properties"}
